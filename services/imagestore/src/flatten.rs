//! Flattening layers into one tar stream, exactly as a container runtime
//! flattens them into a tree: `.wh.NAME` whiteouts, `.wh..wh..opq` opaque
//! directories, later layers winning, numeric owners, modes (setuid,
//! sticky), xattrs, hardlinks (also across layers), symlinks, device nodes,
//! fifos and mtimes — but nothing is written on the host: the index is
//! written straight into an ext4 by the in-process writer
//! ([`Flattener::write_ext4`], [`crate::ext4w`]), or emitted as one tar
//! stream `mke2fs -d -` turns into the ext4 ([`Flattener::emit`],
//! [`crate::ext4`]). Both walk the index in the same order and read the
//! layers the same way.
//!
//! How: **bottom-up into an in-memory index, then emit** (the tar order
//! below; the ext4 writer follows steps 1 and 2, and links names as it
//! meets them). Each layer is
//! read once as it downloads (in order), headers only, and applied to an
//! index of the final tree (paths, metadata, and for each regular file
//! *where* its bytes are: layer and member number). Nothing unverified is
//! ever emitted: the emit pass starts after every layer's digest checked
//! out, and reads file contents from the verified blobs in the cache. It
//! writes, in this order:
//!
//! 1. every directory, symlink, device, fifo and empty file, parents
//!    before children (a pre-order walk of the index);
//! 2. the regular files with content, layer by layer, each layer blob
//!    decompressed once more and only the surviving members copied
//!    (a layer whose files were all shadowed is not read again);
//! 3. the other names of hardlinked inodes, as hardlink entries carrying
//!    the inode's own metadata (mke2fs lets a link's header override it).
//!
//! A layer whose file contents fit [`Limits::memory`] keeps them from the
//! index pass (all or nothing per layer), so it is decompressed once; step
//! 2 then only reads the layers that did not fit.
//!
//! Top-down flattening (highest layer first, skipping shadowed paths)
//! would read each layer once, but only once every layer has arrived (or by
//! buffering layers' content), and emits children of lower directories
//! before the directories, hardlinks before their targets: it needs the
//! same index and more bookkeeping. Decompressing a layer twice costs less
//! than holding it: the blobs are on disk anyway, and the image's size is
//! known from the index before mke2fs starts (no second pass to measure).
//!
//! Every path is resolved inside the index (symlinks are followed as if the
//! image's root were `/`, so no member, fact or guest file can reach the
//! host), entries, entries per directory and content bytes are capped, and
//! names and xattrs ext4 cannot hold are refused up front.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tar::EntryType;

use crate::error::Error;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const MAX_SYMLINKS: usize = 40;
/// ext4's longest file name.
pub const MAX_NAME: usize = 255;
/// What one inode's xattrs may take: they must fit the inode's extra space
/// plus one 4 KiB block (no `ea_inode`); counted as ext4 lays them out
/// (16-byte entry header, name and value rounded to 4 bytes).
pub const MAX_XATTR_BYTES: usize = 4096 - 32;
/// Longest symlink target (PATH_MAX; ext4 allows a block).
const MAX_SYMLINK: usize = 4095;

/// What a flattening may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// File content bytes, summed over every layer.
    pub bytes: u64,
    /// Tar members, summed over every layer.
    pub entries: u64,
    /// Entries in one directory.
    pub entries_per_dir: u64,
    /// The sum over directories of their entry count squared: mke2fs links
    /// each new name with a linear scan of its directory, so populating a
    /// directory of n entries costs ~n² (40k empty files in one directory:
    /// ~3 min here); this bounds the whole image's cost, checked before
    /// mke2fs starts.
    pub dir_work: u64,
    /// File content kept in memory while indexing, so the emit pass need
    /// not decompress its layer again. All or nothing per layer: a layer
    /// whose files do not fit is read again from its blob.
    pub memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bytes: 16 << 30,
            entries: 1_000_000,
            entries_per_dir: 65_536,
            dir_work: 1 << 29,
            memory: 256 << 20,
        }
    }
}

/// Owner, mode and times of an inode, and its xattrs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits incl. setuid/setgid/sticky (no file type).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Sub-second part of the mtime (PAX `mtime`).
    pub mtime_nsec: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Member `ordinal` of layer `layer`.
    Layer { layer: usize, ordinal: u64 },
    /// A file of the guest bundle (host side, read by us).
    Host(PathBuf),
    /// Read while indexing member `ordinal` of layer `layer` and kept (see
    /// [`Limits::memory`]).
    Memory {
        layer: usize,
        ordinal: u64,
        data: Arc<[u8]>,
    },
}

/// An inode's type.
#[derive(Debug, Clone)]
pub enum Kind {
    File { size: u64, source: Source },
    Symlink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Debug, Clone)]
struct Inode {
    meta: Meta,
    kind: Kind,
}

#[derive(Debug)]
enum What {
    Dir {
        meta: Meta,
        children: HashMap<Vec<u8>, usize>,
    },
    Leaf(usize),
}

#[derive(Debug)]
struct Node {
    name: Vec<u8>,
    parent: usize,
    /// The last layer that created or went through this node (opaque dirs
    /// keep what their own layer put there).
    stamp: usize,
    what: What,
}

/// The index of the flattened tree.
#[derive(Debug)]
pub struct Flattener {
    nodes: Vec<Node>,
    inodes: Vec<Inode>,
    limits: Limits,
    seen_entries: u64,
    seen_bytes: u64,
    layer: usize,
    /// Bytes held by [`Source::Memory`].
    memory: u64,
    /// Whether the current layer's files are still being kept in memory,
    /// and which inodes hold them.
    keeping: bool,
    kept: Vec<usize>,
}

/// What the ext4 needs for a flattened tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks of file content, directories and long symlinks, in bytes.
    pub bytes: u64,
    /// Inodes (hardlinks once).
    pub inodes: u64,
    /// Bytes of regular file content (hardlinks once).
    pub content: u64,
    /// Sum over directories of their entry count squared (see [`Limits::dir_work`]).
    pub dir_work: u64,
}

const ROOT: usize = 0;

fn dir_meta() -> Meta {
    Meta {
        mode: 0o755,
        ..Meta::default()
    }
}

impl Flattener {
    /// An empty tree (a root directory `0755 root:root`).
    pub fn new(limits: Limits) -> Flattener {
        Flattener {
            nodes: vec![Node {
                name: Vec::new(),
                parent: ROOT,
                stamp: 0,
                what: What::Dir {
                    meta: dir_meta(),
                    children: HashMap::new(),
                },
            }],
            inodes: Vec::new(),
            limits,
            seen_entries: 0,
            seen_bytes: 0,
            layer: 0,
            memory: 0,
            keeping: true,
            kept: Vec::new(),
        }
    }

    /// Applies the next layer (gzip, zstd or plain tar) from `source`;
    /// `layer` names it in errors. Layers must come bottom first.
    pub fn add_layer(
        &mut self,
        source: impl Read + Send + 'static,
        layer: &str,
    ) -> Result<(), Error> {
        let bad = |reason: String| Error::BadLayer {
            layer: layer.to_owned(),
            reason,
        };
        let stream = decompress_ahead(source).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let mut archive = tar::Archive::new(stream);
        let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
        for (ordinal, entry) in entries.enumerate() {
            let entry = entry.map_err(|e| bad(format!("cannot read the tar stream: {e}")))?;
            self.seen_entries += 1;
            if self.seen_entries > self.limits.entries {
                return Err(Error::TooManyEntries {
                    limit: self.limits.entries,
                    what: "in the image",
                });
            }
            self.entry(entry, ordinal as u64).map_err(|e| match e {
                EntryError::Bad(reason) => bad(reason),
                EntryError::Limit(e) => e,
            })?;
        }
        self.layer += 1;
        self.keeping = true;
        self.kept.clear();
        Ok(())
    }

    /// Gives up keeping the current layer's files in memory: they will be
    /// read from the blob again.
    fn stop_keeping(&mut self) {
        self.keeping = false;
        for i in std::mem::take(&mut self.kept) {
            if let Kind::File { source, .. } = &mut self.inodes[i].kind
                && let Source::Memory {
                    layer,
                    ordinal,
                    data,
                } = source
            {
                self.memory -= data.len() as u64;
                *source = Source::Layer {
                    layer: *layer,
                    ordinal: *ordinal,
                };
            }
        }
    }

    fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        ordinal: u64,
    ) -> Result<(), EntryError> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let comps = clean(&raw)?;
        let header = entry.header().clone();
        let blank = header.as_old().mode.iter().all(|&b| b == 0 || b == b' ');
        let mode = match header.mode() {
            Ok(m) => m & 0o7777,
            // Blank means 0, as in GNU tar and Go's archive/tar.
            Err(_) if blank => 0,
            Err(e) => return Err(bad(e.to_string())),
        };
        // Some writers leave numeric fields blank; blank means 0 as in GNU tar.
        let mut uid = header.uid().unwrap_or(0);
        let mut gid = header.gid().unwrap_or(0);
        let mut mtime = header.mtime().unwrap_or(0) as i64;
        let mut mtime_nsec = 0;
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| bad(e.to_string()))? {
            for ext in pax {
                let ext = ext.map_err(|e| bad(e.to_string()))?;
                let Ok(key) = ext.key() else { continue };
                let value = || ext.value().ok().map(str::trim);
                if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.retain(|(k, _)| k != attr);
                    xattrs.push((attr.to_owned(), ext.value_bytes().to_vec()));
                } else if key == "uid" {
                    uid = value().and_then(|v| v.parse().ok()).unwrap_or(uid);
                } else if key == "gid" {
                    gid = value().and_then(|v| v.parse().ok()).unwrap_or(gid);
                } else if key == "mtime"
                    && let Some((s, ns)) = value().and_then(parse_pax_time)
                {
                    (mtime, mtime_nsec) = (s, ns);
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| bad(format!("uid {uid} too large")))?;
        let gid = u32::try_from(gid).map_err(|_| bad(format!("gid {gid} too large")))?;
        check_xattrs(&comps, &xattrs)?;
        let mode = acl_mode(mode, &xattrs);
        let meta = Meta {
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            xattrs,
        };
        let Some((name, parent_comps)) = comps.split_last() else {
            // The root itself: only a directory entry may describe it.
            if kind == EntryType::Directory {
                if let What::Dir { meta: m, .. } = &mut self.nodes[ROOT].what {
                    *m = meta;
                }
                return Ok(());
            }
            return Err(bad(format!("a {kind:?} member replaces the root")));
        };

        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            if name.as_slice() != OPAQUE && (target.is_empty() || target == b"." || target == b"..")
            {
                return Err(bad(format!(
                    "whiteout {} would remove the root or a parent",
                    show(&raw)
                )));
            }
            // A whiteout in a directory that does not exist hides nothing.
            let Some(parent) = self.walk(parent_comps, false)? else {
                return Ok(());
            };
            if name.as_slice() == OPAQUE {
                self.opaque(parent);
            } else if let Some(child) = self.child(parent, target) {
                self.remove(parent, child);
            }
            return Ok(());
        }

        let parent = self
            .walk(parent_comps, true)?
            .expect("walk with create always finds a directory");
        let leaf = |inode| What::Leaf(inode);
        let new = match kind {
            EntryType::Directory => {
                if let Some(child) = self.child(parent, name)
                    && let What::Dir { meta: m, .. } = &mut self.nodes[child].what
                {
                    *m = meta;
                    self.nodes[child].stamp = self.layer;
                    return Ok(());
                }
                What::Dir {
                    meta,
                    children: HashMap::new(),
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                let size = header.size().map_err(|e| bad(e.to_string()))?;
                self.seen_bytes = self.seen_bytes.saturating_add(size);
                if self.seen_bytes > self.limits.bytes {
                    return Err(EntryError::Limit(Error::TooLarge {
                        limit: self.limits.bytes,
                    }));
                }
                if self.keeping && size > 0 && self.memory + size > self.limits.memory {
                    self.stop_keeping();
                }
                let source = if self.keeping && size > 0 {
                    let mut data = Vec::with_capacity(size as usize);
                    (&mut entry)
                        .take(size)
                        .read_to_end(&mut data)
                        .map_err(|e| bad(format!("cannot read the tar stream: {e}")))?;
                    if data.len() as u64 != size {
                        return Err(bad(format!(
                            "{} is shorter than its header says",
                            show(&raw)
                        )));
                    }
                    self.memory += size;
                    Source::Memory {
                        layer: self.layer,
                        ordinal,
                        data: data.into(),
                    }
                } else {
                    Source::Layer {
                        layer: self.layer,
                        ordinal,
                    }
                };
                let kept = matches!(source, Source::Memory { .. });
                let inode = self.inode(meta, Kind::File { size, source });
                if kept {
                    self.kept.push(inode);
                }
                leaf(inode)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(format!("symlink {} has no target", show(&raw))))?
                    .into_owned();
                if target.is_empty() || target.len() > MAX_SYMLINK {
                    return Err(bad(format!(
                        "symlink {} has an empty or too long target",
                        show(&raw)
                    )));
                }
                leaf(self.inode(meta, Kind::Symlink(target)))
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad(format!("hardlink {} has no target", show(&raw))))?
                    .into_owned();
                let target_comps = clean(&target)?;
                let found = match target_comps.split_last() {
                    None => None,
                    Some((tname, tparent)) => self
                        .walk(tparent, false)?
                        .and_then(|d| self.child(d, tname))
                        .filter(|&n| matches!(self.nodes[n].what, What::Leaf(_))),
                };
                let Some(target_node) = found else {
                    return Err(bad(format!(
                        "hardlink {} points to {}, which is missing (deleted by a later layer?) or a directory",
                        show(&raw),
                        show(&target)
                    )));
                };
                if self.child(parent, name) == Some(target_node) {
                    return Ok(());
                }
                let What::Leaf(inode) = self.nodes[target_node].what else {
                    unreachable!("filtered to leaves above")
                };
                leaf(inode)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let k = match kind {
                    EntryType::Char => Kind::Char(major, minor),
                    EntryType::Block => Kind::Block(major, minor),
                    _ => Kind::Fifo,
                };
                leaf(self.inode(meta, k))
            }
            other => {
                return Err(bad(format!(
                    "{} has an unsupported entry type {other:?}",
                    show(&raw)
                )));
            }
        };
        self.put(parent, name, new)
    }

    fn inode(&mut self, meta: Meta, kind: Kind) -> usize {
        self.inodes.push(Inode { meta, kind });
        self.inodes.len() - 1
    }

    fn child(&self, dir: usize, name: &[u8]) -> Option<usize> {
        match &self.nodes[dir].what {
            What::Dir { children, .. } => children.get(name).copied(),
            What::Leaf(_) => None,
        }
    }

    /// Puts `what` at `parent/name`, replacing whatever was there.
    fn put(&mut self, parent: usize, name: &[u8], what: What) -> Result<(), EntryError> {
        if let Some(old) = self.child(parent, name) {
            self.remove(parent, old);
        }
        let What::Dir { children, .. } = &self.nodes[parent].what else {
            unreachable!("parents are directories")
        };
        if children.len() as u64 >= self.limits.entries_per_dir {
            return Err(EntryError::Limit(Error::TooManyEntries {
                limit: self.limits.entries_per_dir,
                what: "in one directory",
            }));
        }
        self.nodes.push(Node {
            name: name.to_vec(),
            parent,
            stamp: self.layer,
            what,
        });
        let id = self.nodes.len() - 1;
        if let What::Dir { children, .. } = &mut self.nodes[parent].what {
            children.insert(name.to_vec(), id);
        }
        Ok(())
    }

    /// Unlinks `node` (and so its subtree) from `parent`.
    fn remove(&mut self, parent: usize, node: usize) {
        let name = self.nodes[node].name.clone();
        if let What::Dir { children, .. } = &mut self.nodes[parent].what {
            children.remove(&name);
        }
    }

    /// Removes what lower layers left under the opaque `dir`: everything
    /// not stamped by the current layer, recursively.
    fn opaque(&mut self, dir: usize) {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let What::Dir { children, .. } = &self.nodes[d].what else {
                continue;
            };
            let list: Vec<usize> = children.values().copied().collect();
            for c in list {
                if self.nodes[c].stamp != self.layer {
                    self.remove(d, c);
                } else if matches!(self.nodes[c].what, What::Dir { .. }) {
                    stack.push(c);
                }
            }
        }
    }

    /// Resolves the directory `comps` inside the tree, following symlinks
    /// as if the root were `/` (absolute targets restart at the root, `..`
    /// stops at it). With `create`, missing directories are made (0755,
    /// root-owned) as runtimes do, and every directory passed is stamped
    /// with the current layer. `None` when something is missing.
    fn walk(&mut self, comps: &[Vec<u8>], create: bool) -> Result<Option<usize>, EntryError> {
        let mut pending: Vec<Vec<u8>> = comps.iter().rev().cloned().collect();
        let mut cur = ROOT;
        let mut links = 0;
        while let Some(part) = pending.pop() {
            if part == b".." {
                cur = self.nodes[cur].parent;
                continue;
            }
            if part == b"." || part.is_empty() {
                continue;
            }
            match self.child(cur, &part) {
                Some(n) => match &self.nodes[n].what {
                    What::Dir { .. } => {
                        if create {
                            self.nodes[n].stamp = self.layer;
                        }
                        cur = n;
                    }
                    What::Leaf(i) => match &self.inodes[*i].kind {
                        Kind::Symlink(target) => {
                            links += 1;
                            if links > MAX_SYMLINKS {
                                return Err(bad("too many symlinks resolving a path".into()));
                            }
                            if target.starts_with(b"/") {
                                cur = ROOT;
                            }
                            pending.extend(
                                target
                                    .split(|&b| b == b'/')
                                    .rev()
                                    .filter(|c| !c.is_empty())
                                    .map(<[u8]>::to_vec),
                            );
                        }
                        _ if create => {
                            return Err(bad(format!("{} is not a directory", show(&part))));
                        }
                        _ => return Ok(None),
                    },
                },
                None if create => {
                    if part.len() > MAX_NAME {
                        return Err(bad(format!(
                            "name {} is longer than 255 bytes",
                            show(&part)
                        )));
                    }
                    self.put(
                        cur,
                        &part,
                        What::Dir {
                            meta: dir_meta(),
                            children: HashMap::new(),
                        },
                    )?;
                    cur = self.nodes.len() - 1;
                }
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Resolves `path` fully (also its last component) inside the tree, the
    /// way the guest would see it. `None` when missing or looping.
    fn lookup(&mut self, path: &str) -> Option<usize> {
        let mut comps: Vec<Vec<u8>> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect();
        for _ in 0..MAX_SYMLINKS {
            let (name, parent) = comps.split_last()?;
            let dir = self.walk(parent, false).ok()??;
            let node = if name == b".." {
                self.nodes[dir].parent
            } else if name == b"." {
                dir
            } else {
                self.child(dir, name)?
            };
            let What::Leaf(i) = self.nodes[node].what else {
                return Some(node);
            };
            let Kind::Symlink(target) = &self.inodes[i].kind else {
                return Some(node);
            };
            // Re-resolve the target from the link's directory.
            let mut next: Vec<Vec<u8>> = if target.starts_with(b"/") {
                Vec::new()
            } else {
                self.path_of(dir)
            };
            next.extend(
                target
                    .split(|&b| b == b'/')
                    .filter(|c| !c.is_empty())
                    .map(<[u8]>::to_vec),
            );
            comps = next;
        }
        None
    }

    fn path_of(&self, mut node: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while node != ROOT {
            out.push(self.nodes[node].name.clone());
            node = self.nodes[node].parent;
        }
        out.reverse();
        out
    }

    /// The regular file `path` resolves to inside the image (symlinks
    /// followed inside the tree only), if it is one and at most `cap` bytes.
    pub fn regular_file(&mut self, path: &str, cap: u64) -> Option<FileRef> {
        let node = self.lookup(path)?;
        let What::Leaf(i) = self.nodes[node].what else {
            return None;
        };
        match self.inodes[i].kind {
            Kind::File { size, .. } if size <= cap => Some(FileRef(i)),
            _ => None,
        }
    }

    /// Whether `path` exists (followed inside the tree).
    pub fn exists(&mut self, path: &str) -> bool {
        self.lookup(path).is_some()
    }

    /// The final name `path` resolves to (e.g. `systemd` for `/sbin/init`).
    pub fn resolved_name(&mut self, path: &str) -> Option<Vec<u8>> {
        let node = self.lookup(path)?;
        Some(self.nodes[node].name.clone())
    }

    /// Adds a host file (guest bits) at `path`, root-owned with `mode`,
    /// creating missing directories; symlinks on the way are followed
    /// inside the tree.
    pub fn add_host_file(&mut self, path: &str, from: &Path, mode: u32) -> Result<(), Error> {
        let size = std::fs::metadata(from)
            .map_err(Error::io("cannot read guest file", from))?
            .len();
        let meta = Meta {
            mode,
            mtime: now(),
            ..Meta::default()
        };
        let kind = Kind::File {
            size,
            source: Source::Host(from.to_path_buf()),
        };
        self.add_synthetic(path, meta, kind)
    }

    /// Adds a root-owned symlink `path` → `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), Error> {
        let meta = Meta {
            mode: 0o777,
            mtime: now(),
            ..Meta::default()
        };
        self.add_synthetic(path, meta, Kind::Symlink(target.as_bytes().to_vec()))
    }

    fn add_synthetic(&mut self, path: &str, meta: Meta, kind: Kind) -> Result<(), Error> {
        let fail = |e: EntryError| match e {
            EntryError::Bad(reason) => Error::Inject(format!("cannot place /{path}: {reason}")),
            EntryError::Limit(e) => e,
        };
        let comps: Vec<Vec<u8>> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let (name, parent) = comps
            .split_last()
            .ok_or_else(|| Error::Inject("empty guest path".into()))?;
        let dir = self.walk(parent, true).map_err(fail)?.expect("created");
        let inode = self.inode(meta, kind);
        self.put(dir, name, What::Leaf(inode)).map_err(fail)
    }

    /// [`Flattener::stats`], refused when populating would cost more than
    /// [`Limits::dir_work`].
    pub fn checked_stats(&self) -> Result<Stats, Error> {
        let stats = self.stats();
        if stats.dir_work > self.limits.dir_work {
            return Err(Error::DirectoriesTooLarge {
                work: stats.dir_work,
                limit: self.limits.dir_work,
            });
        }
        Ok(stats)
    }

    /// Sizes of what the ext4 will hold.
    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        let mut seen = vec![false; self.inodes.len()];
        let mut stack = vec![ROOT];
        while let Some(n) = stack.pop() {
            match &self.nodes[n].what {
                What::Dir { children, .. } => {
                    stats.inodes += 1;
                    // A directory entry is 8 bytes + the name, 4-byte aligned.
                    let entries: u64 = children
                        .keys()
                        .map(|k| (8 + k.len() as u64).div_ceil(4) * 4)
                        .sum();
                    stats.bytes += (entries + 24).div_ceil(4096).max(1) * 4096;
                    let n = children.len() as u64;
                    stats.dir_work = stats.dir_work.saturating_add(n * n);
                    stack.extend(children.values().copied());
                }
                What::Leaf(i) => {
                    if std::mem::replace(&mut seen[*i], true) {
                        continue;
                    }
                    stats.inodes += 1;
                    match &self.inodes[*i].kind {
                        Kind::File { size, .. } => {
                            stats.content += size;
                            stats.bytes += size.div_ceil(4096) * 4096;
                        }
                        Kind::Symlink(t) if t.len() >= 60 => stats.bytes += 4096,
                        _ => {}
                    }
                    if !self.inodes[*i].meta.xattrs.is_empty() {
                        stats.bytes += 4096;
                    }
                }
            }
        }
        stats
    }

    /// Writes the flattened tree as one tar stream into `out`, reading file
    /// contents through `open` (a layer index → its verified blob). Files
    /// named in `capture` are also returned (their bytes, by [`FileRef`]).
    /// Returns what mke2fs's tar reader cannot carry and must be fixed up
    /// afterwards (see [`Fixup`]).
    pub fn emit(
        &self,
        out: impl Write,
        open: &dyn Fn(usize) -> Result<Box<dyn Read>, Error>,
        capture: &[FileRef],
        cancel: &AtomicBool,
    ) -> Result<Emitted, Error> {
        let mut tar = tar::Builder::new(CancelWriter { out, cancel });
        tar.mode(tar::HeaderMode::Complete);
        let failed = |e: io::Error| {
            if cancelled(cancel) {
                Error::Cancelled
            } else {
                Error::Mkfs(format!("cannot feed mke2fs: {e}"))
            }
        };
        let mut emitted = Emitted::default();
        let mut primary: Vec<Option<PathBuf>> = vec![None; self.inodes.len()];
        let mut links: Vec<(PathBuf, usize)> = Vec::new();
        // Per layer: member ordinal → inode.
        let mut from_layer: HashMap<usize, HashMap<u64, usize>> = HashMap::new();
        let root = match &self.nodes[ROOT].what {
            What::Dir { meta, .. } => meta,
            What::Leaf(_) => unreachable!("the root is a directory"),
        };
        emitted.fixups.push(Fixup::root(root));

        // 1. Pre-order walk: directories before their children.
        let mut stack: Vec<(usize, PathBuf)> = vec![(ROOT, PathBuf::new())];
        while let Some((n, path)) = stack.pop() {
            match &self.nodes[n].what {
                What::Dir { meta, children } => {
                    if n != ROOT {
                        let h = header(EntryType::Directory, meta, 0);
                        append(&mut tar, h, &path, meta, io::empty()).map_err(failed)?;
                        emitted.fixups.push(Fixup::of(&path, meta));
                    }
                    let mut names: Vec<(&Vec<u8>, &usize)> = children.iter().collect();
                    // Reverse order on the stack pops them sorted.
                    names.sort_unstable_by(|a, b| b.0.cmp(a.0));
                    for (name, &c) in names {
                        stack.push((
                            c,
                            path.join(
                                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name),
                            ),
                        ));
                    }
                }
                What::Leaf(i) => {
                    let i = *i;
                    if primary[i].is_some() {
                        links.push((path, i));
                        continue;
                    }
                    primary[i] = Some(path.clone());
                    let inode = &self.inodes[i];
                    let meta = &inode.meta;
                    emitted.fixups.push(Fixup::of(&path, meta));
                    match &inode.kind {
                        Kind::File {
                            size,
                            source: Source::Layer { layer, ordinal },
                        } if *size > 0 => {
                            from_layer.entry(*layer).or_default().insert(*ordinal, i);
                        }
                        Kind::File { size, source } => {
                            let h = header(EntryType::Regular, meta, *size);
                            let data: Box<dyn Read> = match source {
                                Source::Host(p) => Box::new(
                                    std::fs::File::open(p)
                                        .map_err(Error::io("cannot read guest file", p))?
                                        .take(*size),
                                ),
                                Source::Memory { data, .. } => Box::new(&data[..]),
                                Source::Layer { .. } => Box::new(io::empty()),
                            };
                            let data = capture_if(capture, i, data, &mut emitted.captured);
                            append(&mut tar, h, &path, meta, data).map_err(failed)?;
                        }
                        Kind::Symlink(target) => {
                            let mut h = header(EntryType::Symlink, meta, 0);
                            h.set_mode(0o777);
                            let target = Path::new(
                                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                                    target,
                                ),
                            );
                            write_pax(&mut tar, &xattr_pax(meta)).map_err(failed)?;
                            tar.append_link(&mut h, &path, target).map_err(failed)?;
                        }
                        Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                            let t = if matches!(inode.kind, Kind::Char(..)) {
                                EntryType::Char
                            } else {
                                EntryType::Block
                            };
                            let mut h = header(t, meta, 0);
                            h.set_device_major(*ma).map_err(failed)?;
                            h.set_device_minor(*mi).map_err(failed)?;
                            append(&mut tar, h, &path, meta, io::empty()).map_err(failed)?;
                        }
                        Kind::Fifo => {
                            let h = header(EntryType::Fifo, meta, 0);
                            append(&mut tar, h, &path, meta, io::empty()).map_err(failed)?;
                        }
                    }
                }
            }
        }

        // 2. File contents, layer by layer, from the verified blobs.
        self.layer_contents(from_layer, open, |i, entry, bad| {
            let inode = &self.inodes[i];
            let Kind::File { size, .. } = inode.kind else {
                unreachable!("only files are read from layers")
            };
            let path = primary[i].as_ref().expect("walked above");
            let h = header(EntryType::Regular, &inode.meta, size);
            let data = capture_if(
                capture,
                i,
                Box::new(Read::take(entry, size)),
                &mut emitted.captured,
            );
            append(&mut tar, h, path, &inode.meta, data).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    bad(format!(
                        "{} is shorter than its header says",
                        path.display()
                    ))
                } else {
                    failed(e)
                }
            })
        })?;

        // 3. The other names of hardlinked inodes.
        for (path, i) in links {
            let inode = &self.inodes[i];
            let mut h = header(EntryType::Link, &inode.meta, 0);
            let target = primary[i].as_ref().expect("walked above");
            tar.append_link(&mut h, &path, target).map_err(failed)?;
        }
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(failed)?;
        emitted.fixups.retain(|f| !f.is_empty());
        Ok(emitted)
    }

    /// Reads the wanted members (`layer` → member ordinal → inode) of each
    /// layer, in layer order, each layer blob decompressed once, and hands
    /// each to `f` (with the layer's error constructor).
    fn layer_contents(
        &self,
        from_layer: HashMap<usize, HashMap<u64, usize>>,
        open: &dyn Fn(usize) -> Result<Box<dyn Read>, Error>,
        mut f: impl FnMut(usize, &mut dyn Read, &dyn Fn(String) -> Error) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut layers: Vec<_> = from_layer.into_iter().collect();
        layers.sort_by_key(|(l, _)| *l);
        for (layer, wanted) in layers {
            let bad = |reason: String| Error::BadLayer {
                layer: format!("#{}", layer + 1),
                reason,
            };
            let stream = decompress(open(layer)?).map_err(|e| bad(e.to_string()))?;
            let mut archive = tar::Archive::new(stream);
            let mut left = wanted.len();
            for (ordinal, entry) in archive
                .entries()
                .map_err(|e| bad(e.to_string()))?
                .enumerate()
            {
                let mut entry =
                    entry.map_err(|e| bad(format!("cannot read the tar stream: {e}")))?;
                let Some(&i) = wanted.get(&(ordinal as u64)) else {
                    continue;
                };
                f(i, &mut entry, &bad)?;
                left -= 1;
                if left == 0 {
                    break;
                }
            }
            if left > 0 {
                return Err(bad("it changed between reading and building".into()));
            }
        }
        Ok(())
    }

    /// The root directory's owner, mode, times and xattrs.
    pub fn root_meta(&self) -> &Meta {
        match &self.nodes[ROOT].what {
            What::Dir { meta, .. } => meta,
            What::Leaf(_) => unreachable!("the root is a directory"),
        }
    }

    /// Writes the flattened tree into `w` (the in-process ext4 writer,
    /// its root made from [`Flattener::root_meta`]): every inode and name
    /// in a pre-order walk (directories before their children), content
    /// from memory or the host at once, then the files of each layer in
    /// the order they come out of its blob. Files named in `capture` are
    /// returned; nothing needs fixing up afterwards.
    pub fn write_ext4(
        &self,
        w: &mut crate::ext4w::Writer,
        open: &dyn Fn(usize) -> Result<Box<dyn Read>, Error>,
        capture: &[FileRef],
        cancel: &AtomicBool,
    ) -> Result<Emitted, Error> {
        use crate::ext4w::Special;
        let mut emitted = Emitted::default();
        // Index inode → ext4 inode number (0: not written yet).
        let mut ino = vec![0u32; self.inodes.len()];
        let mut from_layer: HashMap<usize, HashMap<u64, usize>> = HashMap::new();
        let mut layer_paths: HashMap<usize, PathBuf> = HashMap::new();
        let fail = |path: &Path, e: crate::ext4w::Error| Error::Ext4Write {
            path: format!("/{}", path.display()),
            source: e,
        };
        let mut in_memory: Vec<InMemory<'_>> = Vec::new();
        let mut stack: Vec<(usize, u32, PathBuf)> = vec![(ROOT, 2, PathBuf::new())];
        while let Some((n, dir_ino, path)) = stack.pop() {
            if cancelled(cancel) {
                return Err(Error::Cancelled);
            }
            let node = &self.nodes[n];
            match &node.what {
                What::Dir { meta, children } => {
                    let me = if n == ROOT {
                        dir_ino
                    } else {
                        w.mkdir(dir_ino, &node.name, attrs(meta))
                            .map_err(|e| fail(&path, e))?
                    };
                    let mut names: Vec<(&Vec<u8>, &usize)> = children.iter().collect();
                    names.sort_unstable_by(|a, b| b.0.cmp(a.0));
                    for (name, &c) in names {
                        stack.push((
                            c,
                            me,
                            path.join(
                                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name),
                            ),
                        ));
                    }
                }
                What::Leaf(i) => {
                    let i = *i;
                    if ino[i] != 0 {
                        w.link(dir_ino, &node.name, ino[i])
                            .map_err(|e| fail(&path, e))?;
                        continue;
                    }
                    let inode = &self.inodes[i];
                    let a = attrs(&inode.meta);
                    let name = &node.name;
                    ino[i] = match &inode.kind {
                        Kind::File { size, source } => {
                            let f = w
                                .file(dir_ino, name, a, *size)
                                .map_err(|e| fail(&path, e))?;
                            let data: Option<Box<dyn Read>> = match source {
                                _ if *size == 0 => None,
                                Source::Layer { layer, ordinal } => {
                                    from_layer.entry(*layer).or_default().insert(*ordinal, i);
                                    layer_paths.insert(i, path.clone());
                                    None
                                }
                                Source::Host(p) => Some(Box::new(
                                    std::fs::File::open(p)
                                        .map_err(Error::io("cannot read guest file", p))?
                                        .take(*size),
                                )),
                                Source::Memory { data, .. } => {
                                    // Written after the walk, on two threads.
                                    let runs = w.place(f).map_err(|e| fail(&path, e))?;
                                    if capture.contains(&FileRef(i)) {
                                        let n = data.len().min(1 << 20);
                                        emitted.captured.push((FileRef(i), data[..n].to_vec()));
                                    }
                                    in_memory.push((runs, &data[..], path.clone()));
                                    None
                                }
                            };
                            if let Some(data) = data {
                                let mut data = capture_if(capture, i, data, &mut emitted.captured);
                                w.write_data(f, &mut data).map_err(|e| fail(&path, e))?;
                            } else if *size == 0 {
                                // An empty file named for capture: nothing to read.
                                let _ = capture_if(
                                    capture,
                                    i,
                                    Box::new(io::empty()),
                                    &mut emitted.captured,
                                );
                            }
                            Ok(f)
                        }
                        Kind::Symlink(t) => w.special(dir_ino, name, a, Special::Symlink(t)),
                        Kind::Char(ma, mi) => w.special(dir_ino, name, a, Special::Char(*ma, *mi)),
                        Kind::Block(ma, mi) => {
                            w.special(dir_ino, name, a, Special::Block(*ma, *mi))
                        }
                        Kind::Fifo => w.special(dir_ino, name, a, Special::Fifo),
                    }
                    .map_err(|e| fail(&path, e))?;
                }
            }
        }
        write_in_memory(&w.placed(), &in_memory, cancel)?;
        self.layer_contents(from_layer, open, |i, entry, bad| {
            if cancelled(cancel) {
                return Err(Error::Cancelled);
            }
            let Kind::File { size, .. } = self.inodes[i].kind else {
                unreachable!("only files are read from layers")
            };
            let data = CancelReader {
                inner: Read::take(entry, size),
                cancel,
            };
            let mut data = capture_if(capture, i, Box::new(data), &mut emitted.captured);
            let path = &layer_paths[&i];
            w.write_data(ino[i], &mut data).map_err(|e| match e {
                _ if cancelled(cancel) => Error::Cancelled,
                crate::ext4w::Error::Short => bad(format!(
                    "{} is shorter than its header says",
                    path.display()
                )),
                crate::ext4w::Error::Read(e) => bad(format!("cannot read the tar stream: {e}")),
                e => fail(path, e),
            })
        })?;
        Ok(emitted)
    }
}

/// A file kept in memory, placed in the image: its blocks, its bytes, its
/// path (for errors).
type InMemory<'a> = (Vec<(u64, u64)>, &'a [u8], PathBuf);

/// Writes the contents the index pass kept in memory into their placed
/// blocks, on two threads (half of the bytes each): copying ~200 MB into
/// the page cache is the longest step left once the layers are read, and
/// it parallelizes (the blocks are disjoint). Each thread starts the
/// host's writeback of what it wrote every 16 MiB.
fn write_in_memory(
    placed: &crate::ext4w::Placed<'_>,
    files: &[InMemory<'_>],
    cancel: &AtomicBool,
) -> Result<(), Error> {
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    let mut acc = 0;
    let split = files
        .iter()
        .position(|f| {
            acc += f.1.len();
            acc * 2 >= total
        })
        .map_or(files.len(), |p| p + 1);
    let (low, high) = files.split_at(split);
    let run = |files: &[InMemory<'_>]| -> Result<(), Error> {
        let mut pending = crate::ext4w::Pending::default();
        for (runs, data, path) in files {
            if cancelled(cancel) {
                return Err(Error::Cancelled);
            }
            let span = placed.write(runs, data).map_err(|e| Error::Ext4Write {
                path: format!("/{}", path.display()),
                source: e,
            })?;
            pending.wrote(placed, span);
        }
        pending.kick_rest(placed);
        Ok(())
    };
    std::thread::scope(|s| {
        let other = s.spawn(|| run(high));
        let mine = run(low);
        let other = other.join().expect("writer thread panicked");
        mine.and(other)
    })
}

/// An inode of the index (for capturing its content while emitting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRef(usize);

/// What [`Flattener::emit`] returns.
#[derive(Debug, Default)]
pub struct Emitted {
    /// Captured file contents.
    pub captured: Vec<(FileRef, Vec<u8>)>,
    /// What mke2fs's tar reader drops, per path.
    pub fixups: Vec<Fixup>,
}

/// What must be set on one path after mke2fs: xattrs other than
/// `security.capability` (mke2fs keeps only that one), the sub-second
/// mtime, and the root directory's owner and mode.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fixup {
    /// Path inside the image, relative (empty: the root).
    pub path: PathBuf,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// The root's (mode, uid, gid, mtime) when they differ from mke2fs's.
    pub root: Option<(u32, u32, u32, i64)>,
}

impl Fixup {
    fn of(path: &Path, meta: &Meta) -> Fixup {
        Fixup {
            path: path.to_path_buf(),
            xattrs: meta
                .xattrs
                .iter()
                .filter(|(k, _)| k != "security.capability")
                .cloned()
                .collect(),
            mtime: meta.mtime,
            mtime_nsec: meta.mtime_nsec,
            root: None,
        }
    }

    fn root(meta: &Meta) -> Fixup {
        let mut f = Fixup::of(Path::new(""), meta);
        f.xattrs = meta.xattrs.clone();
        // mke2fs gives the root 0755 root:root (`-E root_owner=0:0`) and
        // the time of the build; the image says otherwise (or 0, as umoci).
        f.root = Some((meta.mode, meta.uid, meta.gid, meta.mtime));
        f
    }

    fn is_empty(&self) -> bool {
        self.xattrs.is_empty() && self.mtime_nsec == 0 && self.root.is_none()
    }
}

fn capture_if<'a>(
    capture: &[FileRef],
    i: usize,
    data: Box<dyn Read + 'a>,
    out: &mut Vec<(FileRef, Vec<u8>)>,
) -> Box<dyn Read + 'a> {
    if !capture.contains(&FileRef(i)) {
        return data;
    }
    let mut bytes = Vec::new();
    if data.take(1 << 20).read_to_end(&mut bytes).is_err() {
        bytes.clear();
    }
    out.push((FileRef(i), bytes.clone()));
    Box::new(io::Cursor::new(bytes))
}

/// What the ext4 writer needs of `meta`.
fn attrs(meta: &Meta) -> crate::ext4w::Attrs<'_> {
    crate::ext4w::Attrs {
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        mtime: meta.mtime,
        mtime_nsec: meta.mtime_nsec,
        xattrs: &meta.xattrs,
    }
}

fn header(kind: EntryType, meta: &Meta, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode);
    h.set_uid(meta.uid.into());
    h.set_gid(meta.gid.into());
    h.set_mtime(meta.mtime.max(0) as u64);
    h.set_size(size);
    h
}

/// `security.capability` goes through the stream (mke2fs keeps it and
/// nothing else); every other xattr is a [`Fixup`].
fn xattr_pax(meta: &Meta) -> Vec<(String, Vec<u8>)> {
    meta.xattrs
        .iter()
        .filter(|(k, _)| k == "security.capability")
        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
        .collect()
}

fn write_pax<W: Write>(tar: &mut tar::Builder<W>, pax: &[(String, Vec<u8>)]) -> io::Result<()> {
    if pax.is_empty() {
        return Ok(());
    }
    tar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    mut h: tar::Header,
    path: &Path,
    meta: &Meta,
    data: impl Read,
) -> io::Result<()> {
    write_pax(tar, &xattr_pax(meta))?;
    let size = h.size()?;
    let mut counted = Exact {
        inner: data,
        left: size,
    };
    tar.append_data(&mut h, path, &mut counted)?;
    if counted.left > 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Refuses to end before `left` bytes (a member shorter than its header).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

/// Fails reads once the pull is cancelled (a big file stops mid-copy).
struct CancelReader<'a, R> {
    inner: R,
    cancel: &'a AtomicBool,
}

impl<R: Read> Read for CancelReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if cancelled(self.cancel) {
            return Err(io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}

/// Fails writes once the pull is cancelled, so mke2fs is stopped at once.
struct CancelWriter<'a, W> {
    out: W,
    cancel: &'a AtomicBool,
}

impl<W: Write> Write for CancelWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if cancelled(self.cancel) {
            return Err(io::Error::other("cancelled"));
        }
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A cancellation flag shared with whoever may stop the build.
pub type Cancel = Arc<AtomicBool>;

/// Set once the service is stopping: every build stops and kills its
/// child processes, so shutting down never waits for a long mke2fs.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Stops every build (the service received SIGTERM/SIGINT).
pub fn stop_all() {
    STOPPING.store(true, Ordering::Relaxed);
}

/// Whether a build must stop: its caller went away or the service is stopping.
pub fn cancelled(cancel: &AtomicBool) -> bool {
    cancel.load(Ordering::Relaxed) || STOPPING.load(Ordering::Relaxed)
}

/// Wraps `source` in the decompressor its magic bytes name (gzip, zstd,
/// else plain tar), whatever the media type says.
pub fn decompress<'a>(source: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let (reader, kind) = sniff(source)?;
    decoder(reader, kind)
}

/// What a layer's first bytes say it is compressed with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    Plain,
}

/// A layer after [`sniff`]: its first bytes, then the rest of it.
type Sniffed<R> = BufReader<io::Chain<io::Cursor<Vec<u8>>, R>>;

/// The longest magic number [`sniff`] looks for (zstd's).
const MAGIC_LEN: usize = 4;

/// Reads the first [`MAGIC_LEN`] bytes (fewer only at EOF: a live
/// download may hand them over one at a time) and names the compression;
/// the returned reader yields the whole stream, those bytes included.
fn sniff<R: Read>(mut source: R) -> io::Result<(Sniffed<R>, Compression)> {
    let mut magic = Vec::with_capacity(MAGIC_LEN);
    while magic.len() < MAGIC_LEN {
        let mut byte = [0u8; MAGIC_LEN];
        match source.read(&mut byte[..MAGIC_LEN - magic.len()]) {
            Ok(0) => break,
            Ok(n) => magic.extend_from_slice(&byte[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind = if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Plain
    };
    let reader = BufReader::with_capacity(1 << 20, io::Cursor::new(magic).chain(source));
    Ok((reader, kind))
}

fn decoder<'a, R: BufRead + 'a>(reader: R, kind: Compression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        Compression::Plain => Box::new(reader),
    })
}

/// [`decompress`] on a thread of its own, a few chunks ahead of the
/// reader: the index pass is otherwise one thread that inflates, parses
/// tar and copies contents in turn, and inflating is half of it (bookworm:
/// 75 MB of gzip into 192 MB of tar). Plain tar is read in place. At most
/// [`AHEAD`] chunks are decompressed beyond what the reader took, so a
/// decompression bomb is still stopped by the reader's limits, and a
/// reader that stops early (error, limit, cancellation) ends the thread at
/// its next chunk; dropping the reader waits for that (see [`Ahead`]'s
/// `Drop`), boundedly, as a live download may keep the thread in a read
/// until more bytes come.
pub fn decompress_ahead(source: impl Read + Send + 'static) -> io::Result<Box<dyn Read + Send>> {
    let (reader, kind) = sniff(source)?;
    if kind == Compression::Plain {
        return Ok(Box::new(reader));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(AHEAD);
    let (back, spare) = std::sync::mpsc::channel::<Vec<u8>>();
    let (ended, done) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("decompress".into())
        .spawn(move || {
            // Declared first, dropped last: once the reader sees it gone,
            // the source (an open blob) is closed.
            let _ended = ended;
            let mut stream = match decoder(reader, kind) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Chunk::Failed(e));
                    return;
                }
            };
            loop {
                // Buffers come back from the reader: no fresh pages per chunk.
                let mut buf = spare.try_recv().unwrap_or_default();
                buf.resize(CHUNK, 0);
                let mut filled = 0;
                let end = loop {
                    match stream.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(true),
                        Ok(n) => {
                            filled += n;
                            if filled == CHUNK {
                                break Ok(false);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let sent = match end {
                    Ok(end) => {
                        let data = if filled > 0 {
                            tx.send(Chunk::Data(buf)).is_ok()
                        } else {
                            true
                        };
                        if end {
                            let _ = tx.send(Chunk::End);
                            return;
                        }
                        data
                    }
                    Err(e) => {
                        let _ = tx.send(Chunk::Failed(e));
                        return;
                    }
                };
                if !sent {
                    return;
                }
            }
        })
        .map_err(io::Error::other)?;
    Ok(Box::new(Ahead {
        rx: Some(rx),
        done,
        back,
        chunk: Vec::new(),
        pos: 0,
        ended: false,
    }))
}

/// Bytes per chunk, and chunks decompressed ahead of the reader.
const CHUNK: usize = 1 << 20;
const AHEAD: usize = 4;

enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// The reading end of [`decompress_ahead`].
struct Ahead {
    rx: Option<std::sync::mpsc::Receiver<Chunk>>,
    /// Disconnected once the thread ended.
    done: std::sync::mpsc::Receiver<()>,
    back: std::sync::mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for Ahead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.ended {
                return Ok(0);
            }
            let Some(rx) = &self.rx else {
                return Ok(0);
            };
            match rx.recv() {
                Ok(Chunk::Data(next)) => {
                    let used = std::mem::replace(&mut self.chunk, next);
                    let _ = self.back.send(used);
                    self.pos = 0;
                }
                Ok(Chunk::End) => self.ended = true,
                Ok(Chunk::Failed(e)) => return Err(e),
                // The thread ended without saying so: it panicked.
                Err(_) => return Err(io::Error::other("the decompressor stopped")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Ahead {
    /// Ends the thread (its next send fails) and waits for it, so whoever
    /// dropped the reader knows the source is closed (a failed pull gives
    /// its partial blob's space back before it answers). Only a source
    /// stuck in a read longer than the wait (a stalled download) is left
    /// to end by itself.
    fn drop(&mut self) {
        self.rx = None;
        let _ = self.done.recv_timeout(std::time::Duration::from_secs(2));
    }
}

/// Why one entry failed.
enum EntryError {
    Bad(String),
    Limit(Error),
}

fn bad(reason: String) -> EntryError {
    EntryError::Bad(reason)
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// A member path split into components, lexically normalized; refused when
/// `..` would climb above the root or a name is longer than ext4 allows.
fn clean(raw: &[u8]) -> Result<Vec<Vec<u8>>, EntryError> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(bad(format!("member {} escapes the root", show(raw))));
                }
            }
            n if n.len() > MAX_NAME => {
                return Err(bad(format!(
                    "member {} has a name longer than {MAX_NAME} bytes (ext4's limit)",
                    show(raw)
                )));
            }
            n => out.push(n.to_vec()),
        }
    }
    Ok(out)
}

fn check_xattrs(comps: &[Vec<u8>], xattrs: &[(String, Vec<u8>)]) -> Result<(), EntryError> {
    let used: usize = xattrs
        .iter()
        .map(|(k, v)| 16 + k.len().div_ceil(4) * 4 + v.len().div_ceil(4) * 4)
        .sum();
    if used > MAX_XATTR_BYTES || xattrs.iter().any(|(k, _)| k.len() > 255 || k.is_empty()) {
        return Err(bad(format!(
            "{} has {used} bytes of xattrs; ext4 holds at most {MAX_XATTR_BYTES} per file",
            show(&comps.join(&b'/'))
        )));
    }
    Ok(())
}

/// The mode a kernel gives a file whose `system.posix_acl_access` is set
/// (what a runtime unpacking with `lsetxattr` ends up with): owner, group
/// (the mask when there is one) and other bits follow the ACL.
fn acl_mode(mode: u32, xattrs: &[(String, Vec<u8>)]) -> u32 {
    let Some((_, acl)) = xattrs.iter().find(|(k, _)| k == "system.posix_acl_access") else {
        return mode;
    };
    if acl.len() < 4 || (acl.len() - 4) % 8 != 0 || acl[..4] != [2, 0, 0, 0] {
        return mode;
    }
    let (mut user, mut group, mut mask, mut other) = (None, None, None, None);
    for e in acl[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u32::from(u16::from_le_bytes([e[2], e[3]]) & 7);
        match tag {
            0x01 => user = Some(perm),
            0x04 => group = Some(perm),
            0x10 => mask = Some(perm),
            0x20 => other = Some(perm),
            _ => {}
        }
    }
    let (Some(u), Some(g), Some(o)) = (user, mask.or(group), other) else {
        return mode;
    };
    (mode & 0o7000) | (u << 6) | (g << 3) | o
}

/// A PAX time `SECONDS[.FRACTION]`.
fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (s, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = s.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nsec = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some((secs, nsec))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out one byte per read, as a download that just started may.
    struct Trickle(io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn compression_is_named_by_four_bytes_even_when_they_trickle_in() {
        let tar = layer(|b| file(b, "etc/hostname", b"trickle\n"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::stream::encode_all(&tar[..], 1).unwrap();
        for (what, bytes) in [("plain", tar.clone()), ("gzip", gz), ("zstd", zst)] {
            for ahead in [false, true] {
                let source = Trickle(io::Cursor::new(bytes.clone()));
                let mut out = Vec::new();
                if ahead {
                    decompress_ahead(source)
                        .unwrap()
                        .read_to_end(&mut out)
                        .unwrap();
                } else {
                    decompress(source).unwrap().read_to_end(&mut out).unwrap();
                }
                assert!(
                    out == tar,
                    "{what} (ahead: {ahead}) came out as {} other bytes",
                    out.len()
                );
            }
        }
    }

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn entry(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_000_000);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        entry(b, EntryType::Regular, path, data);
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, path, target).unwrap();
    }

    fn flat(layers: &[Vec<u8>]) -> Result<Flattener, Error> {
        flat_with(layers, Limits::default())
    }

    fn flat_with(layers: &[Vec<u8>], limits: Limits) -> Result<Flattener, Error> {
        let mut f = Flattener::new(limits);
        for (i, l) in layers.iter().enumerate() {
            f.add_layer(io::Cursor::new(l.clone()), &format!("l{i}"))?;
        }
        Ok(f)
    }

    /// The emitted stream's members: (path, type, link target, content).
    fn emitted(f: &Flattener, layers: &[Vec<u8>]) -> Vec<(String, EntryType, String, Vec<u8>)> {
        let mut out = Vec::new();
        let layers = layers.to_vec();
        let open = move |i: usize| -> Result<Box<dyn Read>, Error> {
            Ok(Box::new(io::Cursor::new(layers[i].clone())))
        };
        f.emit(&mut out, &open, &[], &AtomicBool::new(false))
            .unwrap();
        let mut a = tar::Archive::new(&out[..]);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let t = e.header().entry_type();
                let target = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, t, target, data)
            })
            .collect()
    }

    #[test]
    fn the_builtin_writer_writes_the_index_and_stops_when_cancelled() {
        let l1 = layer(|b| {
            entry(b, EntryType::Directory, "a", b"");
            file(b, "a/keep", b"1");
            file(b, "big", &vec![3u8; 300_000]);
            link(b, EntryType::Link, "other", "big");
        });
        let l2 = layer(|b| {
            file(b, "a/keep", b"2");
            file(b, "n/m/child", b"c");
        });
        let layers = vec![l1, l2];
        let f = flat(&layers).unwrap();
        let open = |i: usize| -> Result<Box<dyn Read>, Error> {
            Ok(Box::new(io::Cursor::new(layers[i].clone())))
        };
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let build = |cancel: &AtomicBool| {
            crate::ext4::build_builtin(&img, "t", f.stats(), (20, 8, 1 << 30), f.root_meta(), |w| {
                f.write_ext4(w, &open, &[], cancel)
            })
        };
        build(&AtomicBool::new(false)).unwrap();
        crate::ext4::check(&img, &AtomicBool::new(false)).unwrap();
        let cat = |p: &str| {
            std::process::Command::new("debugfs")
                .args(["-R", &format!("cat {p}")])
                .arg(&img)
                .output()
                .unwrap()
                .stdout
        };
        assert_eq!(cat("/a/keep"), b"2");
        assert_eq!(cat("/other").len(), 300_000);
        assert_eq!(cat("/n/m/child"), b"c");
        let err = build(&AtomicBool::new(true)).unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err:?}");
        assert!(!img.exists(), "a cancelled build leaves nothing");
    }

    /// The builtin writer is linear in a directory's size (mke2fs is
    /// quadratic): 10k, 50k and 100k empty files in one directory, timed
    /// from the index to the finished image; 10× the entries may cost at
    /// most 25× the time plus a second (quadratic would be 100×).
    #[test]
    fn a_flat_directory_of_100k_entries_is_written_in_linear_time() {
        let mut times = Vec::new();
        for n in [10_000u32, 50_000, 100_000] {
            let l = layer(|b| {
                entry(b, EntryType::Directory, "flat", b"");
                for i in 0..n {
                    file(b, &format!("flat/f{i:06}"), b"");
                }
                file(b, "flat/last", b"last");
            });
            let limits = Limits {
                entries_per_dir: 200_000,
                ..Limits::default()
            };
            let f = flat_with(std::slice::from_ref(&l), limits).unwrap();
            let open = |_: usize| -> Result<Box<dyn Read>, Error> {
                Ok(Box::new(io::Cursor::new(l.clone())))
            };
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("img");
            let t = std::time::Instant::now();
            crate::ext4::build_builtin(
                &img,
                "t",
                f.stats(),
                (20, 8, 4 << 30),
                f.root_meta(),
                |w| f.write_ext4(w, &open, &[], &AtomicBool::new(false)),
            )
            .unwrap();
            let took = t.elapsed();
            eprintln!("{n} entries in one directory: {took:?}");
            times.push(took);
            crate::ext4::check(&img, &AtomicBool::new(false)).unwrap();
            let ls = std::process::Command::new("debugfs")
                .args(["-R", "ls /flat"])
                .arg(&img)
                .output()
                .unwrap();
            let names = String::from_utf8_lossy(&ls.stdout)
                .split_whitespace()
                .filter(|w| w.starts_with("f0") || *w == "last")
                .count();
            assert_eq!(names, n as usize + 1);
        }
        // Slack for a busy machine: a quadratic writer misses this by far
        // (mke2fs: 40k entries in one directory take minutes).
        assert!(
            times[2] < times[0] * 25 + std::time::Duration::from_secs(1),
            "{times:?}"
        );
    }

    #[test]
    fn whiteouts_opaque_dirs_and_order() {
        let l1 = layer(|b| {
            entry(b, EntryType::Directory, "a", b"");
            file(b, "a/keep", b"1");
            file(b, "a/gone", b"1");
            file(b, "o/lower", b"1");
            file(b, "o/sub/deep", b"1");
            file(b, "orig", b"data");
            link(b, EntryType::Link, "other", "orig");
        });
        let l2 = layer(|b| {
            file(b, "a/.wh.gone", b"");
            file(b, "o/upper", b"2");
            file(b, "o/.wh..wh..opq", b"");
            file(b, "a/keep", b"2");
            file(b, ".wh.orig", b"");
            // A child before its directory, in a new tree.
            file(b, "n/m/child", b"c");
        });
        let layers = vec![l1, l2];
        let f = flat(&layers).unwrap();
        let out = emitted(&f, &layers);
        let names: Vec<&str> = out.iter().map(|(p, ..)| p.as_str()).collect();
        for gone in ["a/gone", "o/lower", "o/sub", "o/sub/deep", "orig"] {
            assert!(!names.contains(&gone), "{gone} in {names:?}");
        }
        let find = |p: &str| out.iter().find(|(n, ..)| n == p).unwrap();
        assert_eq!(find("a/keep").3, b"2");
        assert_eq!(find("other").3, b"data");
        assert_eq!(find("o/upper").3, b"2");
        // Every directory comes before what it holds.
        for (i, (p, ..)) in out.iter().enumerate() {
            if let Some((parent, _)) = p.rsplit_once('/') {
                let at = names.iter().position(|n| *n == parent).unwrap();
                assert!(at < i, "{p} before {parent}");
            }
        }
    }

    #[test]
    fn memory_or_a_second_read_give_the_same_stream() {
        let l1 = layer(|b| {
            file(b, "a", b"first layer, kept");
            file(b, "b", &[1u8; 3000]);
        });
        let l2 = layer(|b| {
            file(b, "c", &[2u8; 3000]);
            file(b, "d", &[3u8; 3000]);
            link(b, EntryType::Link, "e", "a");
        });
        let layers = vec![l1, l2];
        let all = flat(&layers).unwrap();
        // 4000 bytes: the first layer fits, the second stops half-way.
        let some = flat_with(
            &layers,
            Limits {
                memory: 4000,
                ..Limits::default()
            },
        )
        .unwrap();
        assert_eq!(some.memory, 3017);
        let none = flat_with(
            &layers,
            Limits {
                memory: 0,
                ..Limits::default()
            },
        )
        .unwrap();
        assert_eq!(none.memory, 0);
        let sorted = |mut v: Vec<(String, EntryType, String, Vec<u8>)>| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let a = sorted(emitted(&all, &layers));
        assert_eq!(a, sorted(emitted(&some, &layers)));
        assert_eq!(a, sorted(emitted(&none, &layers)));
        assert_eq!(a.iter().find(|e| e.0 == "d").unwrap().3, vec![3u8; 3000]);
    }

    #[test]
    fn hardlinks_come_after_their_target_with_its_metadata() {
        let l1 = layer(|b| {
            file(b, "z-target", b"x");
            link(b, EntryType::Link, "a-link", "z-target");
        });
        let layers = vec![l1];
        let f = flat(&layers).unwrap();
        let out = emitted(&f, &layers);
        // Sorted walk: a-link is met first and becomes the file; z-target links to it.
        assert_eq!(out[0].0, "a-link");
        assert_eq!(out[0].1, EntryType::Regular);
        assert_eq!(out[1].0, "z-target");
        assert_eq!(out[1].1, EntryType::Link);
        assert_eq!(out[1].2, "a-link");
    }

    #[test]
    fn escapes_are_followed_inside_the_image_only() {
        let l = layer(|b| {
            link(b, EntryType::Symlink, "link", "/etc");
            link(b, EntryType::Symlink, "up", "../../../../x");
            file(b, "link/file", b"x");
            file(b, "up/y", b"y");
        });
        let layers = vec![l];
        let f = flat(&layers).unwrap();
        let names: Vec<String> = emitted(&f, &layers).into_iter().map(|e| e.0).collect();
        assert!(names.contains(&"etc/file".to_owned()), "{names:?}");
        assert!(names.contains(&"x/y".to_owned()), "{names:?}");
        // `..` members are refused (written into the header by hand: the tar
        // crate refuses to build them).
        let mut raw = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        raw.append(&h, &b"x"[..]).unwrap();
        let bytes = raw.into_inner().unwrap();
        assert!(matches!(flat(&[bytes]), Err(Error::BadLayer { .. })));
    }

    #[test]
    fn facts_resolve_inside_the_image_only() {
        let l = layer(|b| {
            link(b, EntryType::Symlink, "etc/os-release", "/host/os-release");
            link(
                b,
                EntryType::Symlink,
                "usr/lib/os-release",
                "../../etc/fifo",
            );
            entry(b, EntryType::Fifo, "etc/fifo", b"");
            file(b, "usr/lib/systemd/systemd", b"");
            link(b, EntryType::Symlink, "sbin", "usr/sbin");
            link(
                b,
                EntryType::Symlink,
                "usr/sbin/init",
                "/usr/lib/systemd/systemd",
            );
        });
        let mut f = flat(&[l]).unwrap();
        // Neither a dangling host path nor a fifo is an os-release.
        assert!(f.regular_file("etc/os-release", 1 << 16).is_none());
        assert!(f.regular_file("usr/lib/os-release", 1 << 16).is_none());
        assert_eq!(f.resolved_name("sbin/init").unwrap(), b"systemd");
        assert!(!f.exists("usr/sbin/sshd"));
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let reason = |layers: Vec<Vec<u8>>| match flat(&layers) {
            Err(Error::BadLayer { reason, .. }) => reason,
            other => panic!("expected a bad layer, got {other:?}"),
        };
        // A hardlink to a path a later layer deleted.
        let l1 = layer(|b| file(b, "a", b"x"));
        let l2 = layer(|b| file(b, ".wh.a", b""));
        let l3 = layer(|b| link(b, EntryType::Link, "b", "a"));
        assert!(reason(vec![l1, l2, l3]).contains("missing"));
        // A whiteout of the root.
        let l = layer(|b| file(b, "x/.wh..", b""));
        assert!(reason(vec![l]).contains("root"));
        // A name longer than 255 bytes.
        let long = format!("d/{}", "n".repeat(256));
        let l = layer(|b| file(b, &long, b"x"));
        assert!(reason(vec![l]).contains("255"));
        // An xattr larger than ext4 holds.
        let big = vec![b'v'; 5000];
        let l = layer(|b| {
            b.append_pax_extensions([("SCHILY.xattr.user.big", &big[..])])
                .unwrap();
            file(b, "f", b"x");
        });
        assert!(reason(vec![l]).contains("xattrs"));
        // A member whose header claims more bytes than the layer has.
        let mut l = layer(|b| file(b, "f", &[7u8; 4096]));
        l.truncate(512 + 1000);
        let r = reason(vec![l]);
        assert!(
            r.contains("shorter") || r.contains("tar stream"),
            "truncated: {r}"
        );
    }

    #[test]
    fn inode_bombs_hit_the_caps() {
        let l = layer(|b| {
            for i in 0..50 {
                file(b, &format!("d/{i}"), b"");
            }
        });
        let mut f = Flattener::new(Limits {
            entries_per_dir: 20,
            ..Limits::default()
        });
        assert!(matches!(
            f.add_layer(io::Cursor::new(l.clone()), "l"),
            Err(Error::TooManyEntries { limit: 20, .. })
        ));
        let mut f = Flattener::new(Limits {
            entries: 30,
            ..Limits::default()
        });
        assert!(matches!(
            f.add_layer(io::Cursor::new(l.clone()), "l"),
            Err(Error::TooManyEntries { limit: 30, .. })
        ));
        let mut f = Flattener::new(Limits {
            bytes: 10,
            ..Limits::default()
        });
        let l = layer(|b| file(b, "big", &[0u8; 11]));
        assert!(matches!(
            f.add_layer(io::Cursor::new(l.clone()), "l"),
            Err(Error::TooLarge { limit: 10 })
        ));
    }

    #[test]
    fn pax_times_and_acl_modes() {
        assert_eq!(parse_pax_time("12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
        assert_eq!(parse_pax_time("x"), None);
        let acl = [
            2u8, 0, 0, 0, 1, 0, 7, 0, 0, 0, 0, 0, 4, 0, 5, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0,
        ];
        let x = vec![("system.posix_acl_access".to_owned(), acl.to_vec())];
        assert_eq!(acl_mode(0o4777, &x), 0o4750);
    }

    #[test]
    fn compressed_layers() {
        use std::io::Write;
        let l = layer(|b| file(b, "f", b"zz"));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), Default::default());
        enc.write_all(&l).unwrap();
        let gz = enc.finish().unwrap();
        let zst = zstd::encode_all(&l[..], 3).unwrap();
        for blob in [gz, zst] {
            let layers = vec![blob];
            let f = flat(&layers).unwrap();
            assert_eq!(emitted(&f, &layers)[0].3, b"zz");
        }
    }
}
