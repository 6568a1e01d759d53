//! Flattening layers into one tree exactly as a container runtime does:
//! `.wh.NAME` whiteouts, `.wh..wh..opq` opaque directories, later layers
//! winning, numeric owners, modes (setuid, sticky), xattrs (including
//! `security.capability`), hardlinks, symlinks, device nodes, fifos and
//! mtimes. Every path is resolved inside the root (symlinks are followed
//! as if the root were `/`), members escaping it are refused, and the
//! unpacked size is capped.
//!
//! A layer is decompressed and unpacked in one pass straight from its
//! verified blob; the compression is sniffed from the magic bytes, so
//! gzip, zstd and plain tar all work whatever the media type says.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::error::Error;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const MAX_SYMLINKS: usize = 40;

/// Unpacks layers, bottom first, into one root.
#[derive(Debug)]
pub struct Unpacker {
    root: PathBuf,
    limit: u64,
    used: u64,
    /// Directory mtimes, applied once at the end (adding children changes them).
    dir_times: HashMap<PathBuf, i64>,
}

impl Unpacker {
    /// An unpacker into `root` (which must exist) refusing more than
    /// `limit` bytes of file content.
    pub fn new(root: &Path, limit: u64) -> Unpacker {
        Unpacker {
            root: root.to_path_buf(),
            limit,
            used: 0,
            dir_times: HashMap::new(),
        }
    }

    /// Unpacks one layer blob (gzip, zstd or plain tar). `layer` names it in errors.
    pub fn unpack_file(&mut self, blob: &Path, layer: &str) -> Result<(), Error> {
        let file = File::open(blob).map_err(Error::io("cannot open layer", blob))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let magic = reader
            .fill_buf()
            .map_err(Error::io("cannot read layer", blob))?
            .get(..4)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let stream: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(reader))
        } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
            Box::new(
                zstd::stream::read::Decoder::with_buffer(reader)
                    .map_err(Error::io("cannot read layer", blob))?,
            )
        } else {
            Box::new(reader)
        };
        self.unpack(stream, layer)
    }

    /// Unpacks one uncompressed tar stream.
    pub fn unpack(&mut self, stream: impl Read, layer: &str) -> Result<(), Error> {
        let bad = |reason: String| Error::BadLayer {
            layer: layer.to_owned(),
            reason,
        };
        let mut archive = tar::Archive::new(stream);
        let mut touched: HashSet<PathBuf> = HashSet::new();
        let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| bad(format!("cannot read the tar stream: {e}")))?;
            self.entry(entry, &mut touched).map_err(|e| match e {
                EntryError::Bad(reason) => bad(reason),
                EntryError::Io(what, path, source) => bad(format!(
                    "{what} {}: {source}",
                    path.strip_prefix(&self.root).unwrap_or(&path).display()
                )),
                EntryError::TooLarge => Error::TooLarge { limit: self.limit },
            })?;
        }
        Ok(())
    }

    /// Applies the deferred directory mtimes; call after the last layer.
    pub fn finish(self) -> Result<u64, Error> {
        let mut dirs: Vec<_> = self.dir_times.into_iter().collect();
        // Deepest first, so setting a child does not disturb its parent.
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, mtime) in dirs {
            if path.is_dir() {
                let _ = set_mtime(&path, mtime);
            }
        }
        Ok(self.used)
    }

    fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        touched: &mut HashSet<PathBuf>,
    ) -> Result<(), EntryError> {
        let raw = entry
            .path()
            .map_err(|e| EntryError::Bad(e.to_string()))?
            .into_owned();
        let rel = clean(&raw)?;
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
        let name = rel.file_name().map(|n| n.to_string_lossy().into_owned());
        let parent_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();

        if let Some(name) = &name
            && let Some(target) = name.strip_prefix(WHITEOUT_PREFIX)
        {
            let parent = resolve(&self.root, &parent_rel, true)?;
            if name == OPAQUE {
                opaque(&parent, &parent_rel, touched)?;
            } else if !target.is_empty() && target != "." && target != ".." {
                remove_any(&parent.join(target))?;
            }
            return Ok(());
        }

        let path = match &name {
            None => self.root.clone(),
            Some(n) => resolve(&self.root, &parent_rel, true)?.join(n),
        };
        touched.insert(rel.clone());
        let header = entry.header().clone();
        let mode = header.mode().map_err(|e| EntryError::Bad(e.to_string()))? & 0o7777;
        // Some writers leave numeric fields blank; blank means 0 as in GNU tar.
        let mut uid = header.uid().unwrap_or(0);
        let mut gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0) as i64;
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| EntryError::Bad(e.to_string()))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| EntryError::Bad(e.to_string()))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((attr.to_owned(), ext.value_bytes().to_vec()));
                } else if key == "uid" {
                    uid = ext.value().ok().and_then(|v| v.parse().ok()).unwrap_or(uid);
                } else if key == "gid" {
                    gid = ext.value().ok().and_then(|v| v.parse().ok()).unwrap_or(gid);
                }
            }
        }
        let io = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |e: io::Error| EntryError::Io(what, p, e)
        };

        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry
                    .header()
                    .size()
                    .map_err(|e| EntryError::Bad(e.to_string()))?;
                if self.used.saturating_add(size) > self.limit {
                    return Err(EntryError::TooLarge);
                }
                remove_any(&path)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io("cannot create", &path))?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut file)
                    .map_err(io("cannot write", &path))?;
                self.used += copied;
            }
            EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&path)?;
                        fs::create_dir(&path).map_err(io("cannot create directory", &path))?;
                    }
                    Err(_) => {
                        fs::create_dir(&path).map_err(io("cannot create directory", &path))?
                    }
                }
                self.dir_times.insert(path.clone(), mtime);
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| EntryError::Bad(e.to_string()))?
                    .ok_or_else(|| {
                        EntryError::Bad(format!("symlink {} has no target", rel.display()))
                    })?
                    .into_owned();
                remove_any(&path)?;
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(io("cannot create symlink", &path))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| EntryError::Bad(e.to_string()))?
                    .ok_or_else(|| {
                        EntryError::Bad(format!("hardlink {} has no target", rel.display()))
                    })?
                    .into_owned();
                let target_rel = clean(&target)?;
                let Some(target_name) = target_rel.file_name() else {
                    return Err(EntryError::Bad(format!(
                        "hardlink {} to the root",
                        rel.display()
                    )));
                };
                let target_path = resolve(
                    &self.root,
                    target_rel.parent().unwrap_or(Path::new("")),
                    false,
                )?
                .join(target_name);
                if target_path == path {
                    return Ok(());
                }
                match fs::symlink_metadata(&target_path) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(EntryError::Bad(format!(
                            "hardlink {} points to {}, which is missing or a directory",
                            rel.display(),
                            target_rel.display()
                        )));
                    }
                }
                remove_any(&path)?;
                fs::hard_link(&target_path, &path).map_err(io("cannot create hardlink", &path))?;
                // A hardlink shares its target's inode and metadata.
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_any(&path)?;
                mknod(
                    &path,
                    sflag,
                    Mode::from_bits_truncate(mode),
                    makedev(major.into(), minor.into()),
                )
                .map_err(|e| EntryError::Io("cannot create device node", path.clone(), e.into()))?;
            }
            other => {
                return Err(EntryError::Bad(format!(
                    "{} has an unsupported entry type {other:?}",
                    rel.display()
                )));
            }
        }

        // Owner first (chown clears setuid bits and file capabilities), then
        // mode, then xattrs, then mtime.
        let uid =
            u32::try_from(uid).map_err(|_| EntryError::Bad(format!("uid {uid} too large")))?;
        let gid =
            u32::try_from(gid).map_err(|_| EntryError::Bad(format!("gid {gid} too large")))?;
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(io("cannot chown", &path))?;
        if kind != EntryType::Symlink {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .map_err(io("cannot chmod", &path))?;
        }
        for (attr, value) in &xattrs {
            xattr::set(&path, attr, value).map_err(io("cannot set xattr on", &path))?;
        }
        if kind != EntryType::Directory {
            set_mtime(&path, mtime).map_err(io("cannot set mtime of", &path))?;
        }
        Ok(())
    }
}

/// Why one entry failed (turned into [`Error`] with the layer name).
pub(crate) enum EntryError {
    Bad(String),
    Io(&'static str, PathBuf, io::Error),
    TooLarge,
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io("cannot unpack", PathBuf::new(), e)
    }
}

/// A member path made relative and lexically normalized; refused when
/// `..` would climb above the root.
fn clean(raw: &Path) -> Result<PathBuf, EntryError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(EntryError::Bad(format!(
                        "member {} escapes the root",
                        raw.display()
                    )));
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

/// Resolves `rel` inside `root` following symlinks as if `root` were `/`
/// (absolute targets restart at `root`, `..` stops at it), so no path can
/// leave the tree. With `create`, missing directories are made (0755,
/// root-owned) as runtimes do for members whose parents are not in the layer.
pub(crate) fn resolve(root: &Path, rel: &Path, create: bool) -> Result<PathBuf, EntryError> {
    let mut done: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = rel
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(EntryError::Bad(format!(
                        "too many symlinks resolving {}",
                        rel.display()
                    )));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    done.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(m) if m.is_dir() => done.push(part),
            Ok(_) => {
                return Err(EntryError::Bad(format!(
                    "{} is not a directory",
                    candidate.strip_prefix(root).unwrap_or(&candidate).display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&candidate)
                    .map_err(|e| EntryError::Io("cannot create directory", candidate.clone(), e))?;
                done.push(part);
            }
            Err(e) => return Err(EntryError::Io("cannot resolve", candidate, e)),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

/// Resolves `rel` in `root` (following symlinks inside it); `None` when
/// something on the way is missing.
pub fn resolve_existing(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel.trim_start_matches('/'));
    let name = rel.file_name()?;
    let parent = resolve(root, rel.parent().unwrap_or(Path::new("")), false).ok()?;
    let path = parent.join(name);
    fs::symlink_metadata(&path).ok()?;
    Some(path)
}

/// Removes lower-layer children of the opaque directory `dir` (entries this
/// layer created are kept).
fn opaque(dir: &Path, dir_rel: &Path, touched: &HashSet<PathBuf>) -> Result<(), EntryError> {
    let Ok(read) = fs::read_dir(dir) else {
        return Ok(());
    };
    for child in read {
        let child = child?;
        let rel = dir_rel.join(child.file_name());
        if touched.contains(&rel) {
            if child.file_type()?.is_dir() {
                opaque(&child.path(), &rel, touched)?;
            }
        } else {
            remove_any(&child.path())?;
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (file, link, node or whole directory).
fn remove_any(path: &Path) -> Result<(), EntryError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| EntryError::Io("cannot replace", path.to_path_buf(), e))
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let t = TimeSpec::new(mtime, 0);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_000_000);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o755);
        b.append_data(&mut h, path, &b""[..]).unwrap();
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, path, target).unwrap();
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let root = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(root.path(), 1 << 30);
        let l1 = layer(|b| {
            dir(b, "a");
            file(b, "a/keep", b"1");
            file(b, "a/gone", b"1");
            dir(b, "o");
            file(b, "o/lower", b"1");
        });
        let l2 = layer(|b| {
            file(b, "a/.wh.gone", b"");
            dir(b, "o");
            file(b, "o/upper", b"2");
            file(b, "o/.wh..wh..opq", b"");
            file(b, "a/keep", b"2");
        });
        u.unpack(&l1[..], "l1").unwrap();
        u.unpack(&l2[..], "l2").unwrap();
        u.finish().unwrap();
        let r = root.path();
        assert_eq!(fs::read(r.join("a/keep")).unwrap(), b"2");
        assert!(!r.join("a/gone").exists());
        assert!(!r.join("o/lower").exists());
        assert!(r.join("o/upper").exists());
        assert!(!r.join("o/.wh..wh..opq").exists());
    }

    #[test]
    fn escapes_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(root.path(), 1 << 30);
        // `..` members: the tar crate refuses to build them, so write the
        // name into the header directly.
        let mut raw = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        raw.append(&h, &b"x"[..]).unwrap();
        let bytes = raw.into_inner().unwrap();
        assert!(matches!(
            u.unpack(&bytes[..], "evil"),
            Err(Error::BadLayer { .. })
        ));
        // A symlink to an absolute host path is followed inside the root.
        let l = layer(|b| {
            symlink(b, "link", outside.path().to_str().unwrap());
            file(b, "link/file", b"x");
        });
        u.unpack(&l[..], "l").unwrap();
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(
            root.path()
                .join(outside.path().strip_prefix("/").unwrap())
                .join("file")
                .is_file()
        );
    }

    #[test]
    fn size_cap() {
        let root = tempfile::tempdir().unwrap();
        let mut u = Unpacker::new(root.path(), 10);
        let l = layer(|b| file(b, "big", &[0u8; 11]));
        assert!(matches!(
            u.unpack(&l[..], "l"),
            Err(Error::TooLarge { limit: 10 })
        ));
    }

    #[test]
    fn compressed_layers() {
        use std::io::Write;
        let l = layer(|b| file(b, "f", b"zz"));
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), Default::default());
        enc.write_all(&l).unwrap();
        enc.finish().unwrap();
        let zst = dir.path().join("zst");
        fs::write(&zst, zstd::encode_all(&l[..], 3).unwrap()).unwrap();
        for blob in [gz, zst] {
            let root = tempfile::tempdir().unwrap();
            let mut u = Unpacker::new(root.path(), 1 << 20);
            u.unpack_file(&blob, "l").unwrap();
            assert_eq!(fs::read(root.path().join("f")).unwrap(), b"zz");
        }
    }
}
