//! An ext4 writer in-process: the flattened index ([`crate::flatten`])
//! becomes an ext4 image file without mke2fs, without a tree on the host,
//! in time linear in the number of entries (mke2fs's tar reader links each
//! name with a scan of its directory: quadratic in a wide directory).
//!
//! The layout is fixed up front from the index's accounting: 4 KiB blocks,
//! 32768-block groups without `flex_bg` (each group holds its own bitmaps
//! and inode table; groups 0, 1 and powers of 3, 5, 7 a superblock and
//! descriptor copy), 256-byte inodes with nanosecond times. Blocks are
//! handed out by one cursor that only moves forward, so file data is
//! written straight into place as it arrives (once, contiguous but for the
//! group metadata it steps over) and the block bitmaps are "everything
//! before the cursor". Inodes, directories and bitmaps are kept in memory
//! and written at [`Writer::finish`]; directories are linear ext4
//! directory blocks built per directory in one pass (valid ext4 without an
//! htree index: the kernel indexes a one-block directory itself when it
//! outgrows its block, while a directory written with many blocks stays
//! linear, so a lookup there scans it, until `e2fsck -fD` indexes it;
//! distro images have no such directories).
//!
//! Features: `has_journal` (a clean jbd2 journal costs one written block:
//! the image file is sparse), `ext_attr`, `dir_index`, `filetype`,
//! `extent`, `sparse_super`, `large_file`, `huge_file`, `dir_nlink`,
//! `extra_isize`. No `metadata_csum` (nothing here needs it, and it would
//! make every metadata block's checksum mandatory), no `64bit` (16 TiB is
//! far above any image cap), no `resize_inode` (resize2fs grows a
//! filesystem offline without it, as the VM manager does).
//!
//! Times: mtime as the layer says (nanoseconds kept), atime = mtime (what
//! umoci's `Lutimes` leaves), ctime and crtime the build time (a runtime
//! cannot set them either).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

const BS: u64 = 4096;
const BPG: u64 = 32768;
const INODE_SIZE: u64 = 256;
const IPB: u64 = BS / INODE_SIZE;
/// The bytes of an inode past the 128-byte base that the fields use.
const EXTRA_ISIZE: usize = 32;
const ROOT_INO: u32 = 2;
const JOURNAL_INO: u32 = 8;
const LOST_FOUND_INO: u32 = 11;
const FIRST_INO: u32 = 11;
/// Blocks in one initialized extent.
const MAX_EXTENT: u64 = 32768;
/// Extents in one tree block (after the 12-byte header).
const EXTENTS_PER_BLOCK: usize = (BS as usize - 12) / 12;
/// ext4's link count limit (`EXT4_LINK_MAX`).
const LINK_MAX: u32 = 65000;
const EXTENTS_FL: u32 = 0x80000;
/// Where xattrs live inside an inode, and how much room they have.
const IBODY_START: usize = 128 + EXTRA_ISIZE;
const IBODY_SPACE: usize = INODE_SIZE as usize - IBODY_START - 4;
const XATTR_MAGIC: u32 = 0xEA02_0000;

/// What can go wrong writing the image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The filesystem's precomputed size is too small for what came.
    #[error("the filesystem ran out of {0}")]
    Full(&'static str),
    /// An xattr ext4 cannot store (name prefix, size, malformed ACL).
    #[error("{0}")]
    Unsupported(String),
    /// A file delivered fewer bytes than announced.
    #[error("its content is shorter than its header says")]
    Short,
    /// Reading a file's content failed.
    #[error("cannot read its content: {0}")]
    Read(io::Error),
    /// Writing the image failed.
    #[error("cannot write the ext4 image: {0}")]
    Write(io::Error),
}

type Result<T> = std::result::Result<T, Error>;

/// Owner, permission bits (incl. setuid/setgid/sticky, no type), times and
/// xattrs of a new inode.
#[derive(Debug, Clone, Copy)]
pub struct Attrs<'a> {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: &'a [(String, Vec<u8>)],
}

/// A non-directory inode's type.
#[derive(Debug, Clone, Copy)]
pub enum Special<'a> {
    Symlink(&'a [u8]),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// The fixed layout.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    blocks: u64,
    groups: u64,
    ipg: u64,
    gdt_blocks: u64,
    itable_blocks: u64,
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

impl Geometry {
    fn new(bytes: u64, inodes: u64) -> Geometry {
        let mut blocks = (bytes / BS).max(1024);
        // At most 32768 inodes per group (one bitmap block's bits; their
        // table takes 2048 of the group's 32768 blocks).
        let groups = blocks.div_ceil(BPG).max(inodes.div_ceil(BS * 8));
        blocks = blocks.max((groups - 1) * BPG + 1024);
        let ipg = inodes.div_ceil(groups).max(IPB).div_ceil(IPB) * IPB;
        let mut g = Geometry {
            blocks,
            groups,
            ipg,
            gdt_blocks: (groups * 32).div_ceil(BS),
            itable_blocks: ipg / IPB,
        };
        // A last group too small for its own metadata plus some data grows.
        let rem = g.blocks % BPG;
        let need = g.overhead(groups - 1) + 256;
        if rem != 0 && rem < need {
            g.blocks += need - rem;
        }
        g
    }

    fn has_super(g: u64) -> bool {
        g <= 1 || is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
    }

    fn super_blocks(&self, g: u64) -> u64 {
        if Self::has_super(g) {
            1 + self.gdt_blocks
        } else {
            0
        }
    }

    fn overhead(&self, g: u64) -> u64 {
        self.super_blocks(g) + 2 + self.itable_blocks
    }

    fn block_bitmap(&self, g: u64) -> u64 {
        g * BPG + self.super_blocks(g)
    }

    fn inode_table(&self, g: u64) -> u64 {
        self.block_bitmap(g) + 2
    }

    fn data_start(&self, g: u64) -> u64 {
        g * BPG + self.overhead(g)
    }

    fn group_end(&self, g: u64) -> u64 {
        ((g + 1) * BPG).min(self.blocks)
    }

    fn inodes(&self) -> u64 {
        self.ipg * self.groups
    }
}

/// Where an inode's bytes are.
#[derive(Debug, Clone)]
enum Body {
    /// Runs of blocks `(start, len)` in logical order (extent-mapped).
    Extents(Vec<(u64, u64)>),
    /// The 60 bytes of `i_block` as they are (fast symlink, device, fifo).
    Raw([u8; 60]),
}

#[derive(Debug, Clone)]
struct Inode {
    /// Type and permission bits.
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    links: u32,
    size: u64,
    body: Body,
    /// Extent tree blocks (written at finish, counted in `i_blocks`).
    tree: Vec<u64>,
    xattr_block: u64,
    ibody_xattrs: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Dir {
    parent: u32,
    /// Subdirectories (for the link count).
    subdirs: u32,
    entries: Vec<(Vec<u8>, u32, u8)>,
}

/// An ext4 image being written to a file.
pub struct Writer {
    file: File,
    geo: Geometry,
    label: [u8; 16],
    uuid: [u8; 16],
    hash_seed: [u8; 16],
    now: i64,
    /// Inode `n` is `inodes[n - 1]`; `None` for the unused reserved ones.
    inodes: Vec<Option<Inode>>,
    /// Directories by inode number.
    dirs: std::collections::HashMap<u32, Dir>,
    /// The next free block (never moves back).
    cursor: u64,
    journal_blocks: u64,
    /// Copy buffer for file data.
    buf: Vec<u8>,
    /// File data written by [`Writer::write_data`], not yet kicked.
    pending: Pending,
    flusher: Option<Flusher>,
}

/// How much file data is written between two writeback kicks.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Writes the content of placed files ([`Writer::place`]); one per
/// writer thread, all sharing the image file.
pub struct Placed<'a> {
    file: &'a File,
    flusher: Option<&'a Flusher>,
}

impl Placed<'_> {
    /// Writes `data` (exactly the placed file's size) into `runs`; returns
    /// the span of the image's bytes it covers.
    pub fn write(&self, runs: &[(u64, u64)], data: &[u8]) -> Result<(u64, u64)> {
        let blocks: u64 = runs.iter().map(|r| r.1).sum();
        if (data.len() as u64).div_ceil(BS) != blocks {
            return Err(Error::Short);
        }
        let mut off = 0usize;
        for &(start, len) in runs {
            let n = usize::try_from(len * BS)
                .unwrap_or(usize::MAX)
                .min(data.len() - off);
            write_sparse(self.file, &data[off..off + n], start * BS)?;
            off += n;
        }
        Ok(match (runs.first(), runs.last()) {
            (Some(first), Some(last)) => (first.0 * BS, (last.0 + last.1) * BS),
            _ => (0, 0),
        })
    }

    /// Starts the host's writeback of bytes `from..to` of the image (see
    /// [`Pending`]).
    pub fn kick(&self, from: u64, to: u64) {
        if let Some(f) = self.flusher {
            f.kick(from, to);
        }
    }
}

/// The span of file data one thread wrote and has not yet handed to the
/// host's writeback, kicked once it covers [`WRITEBACK_EVERY`]: the image
/// is made durable once written ([`crate::ext4::check`]), and the disk
/// then writes while the rest of the data is copied instead of all of it
/// after (bookworm: that sync waited ~150 ms for 200 MB). The kick runs on
/// a thread of its own ([`Flusher`]) because `sync_file_range` blocks
/// while the device's queue is full. Advisory: a filesystem that cannot do
/// it just syncs it all at the end. One thread's writes go forward in the
/// image (its files were placed in order), so one span covers them.
#[derive(Debug, Default)]
pub struct Pending(Option<(u64, u64)>);

impl Pending {
    /// Notes bytes `start..end` written (what [`Placed::write`] returns).
    pub fn wrote(&mut self, placed: &Placed<'_>, (start, end): (u64, u64)) {
        let from = self.0.map_or(start, |p| p.0.min(start));
        if end.saturating_sub(from) >= WRITEBACK_EVERY {
            placed.kick(from, end);
            self.0 = None;
        } else {
            self.0 = Some((from, end));
        }
    }

    /// Kicks what is left.
    pub fn kick_rest(&mut self, placed: &Placed<'_>) {
        if let Some((from, to)) = self.0.take() {
            placed.kick(from, to);
        }
    }
}

/// A thread that asks the host to start writing ranges of the image
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) on its own copy of the fd.
/// Dropping it lets the thread finish the ranges it was given and end.
struct Flusher {
    ranges: std::sync::mpsc::Sender<(u64, u64)>,
}

impl Flusher {
    fn start(file: &File) -> Option<Flusher> {
        let file = file.try_clone().ok()?;
        let (ranges, rx) = std::sync::mpsc::channel::<(u64, u64)>();
        std::thread::Builder::new()
            .name("ext4-writeback".into())
            .spawn(move || {
                use std::os::fd::AsRawFd;
                for (from, to) in rx {
                    // SAFETY: sync_file_range only reads its integer
                    // arguments; the fd is this thread's own open copy.
                    unsafe {
                        libc::sync_file_range(
                            file.as_raw_fd(),
                            from as libc::off64_t,
                            (to - from) as libc::off64_t,
                            libc::SYNC_FILE_RANGE_WRITE,
                        );
                    }
                }
            })
            .ok()?;
        Some(Flusher { ranges })
    }

    fn kick(&self, from: u64, to: u64) {
        let _ = self.ranges.send((from, to));
    }
}

fn io_err(e: io::Error) -> Error {
    Error::Write(e)
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// ext4's `_extra` time field: nanoseconds << 2, and in the low two bits
/// the epoch that extends the signed 32-bit seconds.
pub(crate) fn time_extra(secs: i64, nsec: u32) -> u32 {
    let epoch = ((secs - i64::from(secs as i32)) >> 32) as u32 & 3;
    (nsec << 2) | epoch
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        // Unique enough for a UUID if urandom is unavailable.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = (t ^ u128::from(std::process::id())).to_le_bytes();
    }
    b
}

fn file_type(mode: u16) -> u8 {
    match mode & 0o170000 {
        0o100000 => 1,
        0o040000 => 2,
        0o020000 => 3,
        0o060000 => 4,
        0o010000 => 5,
        0o140000 => 6,
        0o120000 => 7,
        _ => 0,
    }
}

/// The size of the image [`Writer::new`] makes for `bytes` and `inodes`
/// (more than `bytes` when the inodes need more groups).
pub fn image_bytes(bytes: u64, inodes: u64) -> u64 {
    Geometry::new(bytes, inodes + u64::from(FIRST_INO)).blocks * BS
}

impl Writer {
    /// Starts an image of `bytes` (rounded down to whole blocks) with room
    /// for `inodes` inodes and a `journal_bytes` journal, in `file` (which
    /// must be empty: unwritten blocks are read as zeros). Creates the root
    /// (with `root`'s attributes) and `lost+found`.
    pub fn new(
        file: File,
        bytes: u64,
        inodes: u64,
        journal_bytes: u64,
        label: &str,
        root: Attrs<'_>,
    ) -> Result<Writer> {
        let geo = Geometry::new(bytes, inodes + u64::from(FIRST_INO));
        file.set_len(geo.blocks * BS).map_err(io_err)?;
        let mut l = [0u8; 16];
        let n = label.len().min(16);
        l[..n].copy_from_slice(&label.as_bytes()[..n]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut w = Writer {
            file,
            geo,
            label: l,
            uuid: random16(),
            hash_seed: random16(),
            now,
            inodes: vec![None; FIRST_INO as usize],
            dirs: Default::default(),
            cursor: geo.data_start(0),
            journal_blocks: journal_bytes / BS,
            buf: vec![0; 1 << 20],
            pending: Pending::default(),
            flusher: None,
        };
        w.flusher = Flusher::start(&w.file);
        w.uuid[6] = (w.uuid[6] & 0x0f) | 0x40;
        w.uuid[8] = (w.uuid[8] & 0x3f) | 0x80;
        let root_inode = w.inode(0o040000, root)?;
        w.inodes[ROOT_INO as usize - 1] = Some(root_inode);
        w.dirs.insert(
            ROOT_INO,
            Dir {
                parent: ROOT_INO,
                ..Dir::default()
            },
        );
        if w.journal_blocks > 0 {
            w.journal()?;
        }
        let lf = Attrs {
            mode: 0o700,
            uid: 0,
            gid: 0,
            mtime: now,
            mtime_nsec: 0,
            xattrs: &[],
        };
        w.inodes[LOST_FOUND_INO as usize - 1] = Some(w.inode(0o040000, lf)?);
        w.add_entry(ROOT_INO, b"lost+found", LOST_FOUND_INO, 0o040000);
        w.dirs.get_mut(&ROOT_INO).expect("root").subdirs += 1;
        w.dirs.insert(
            LOST_FOUND_INO,
            Dir {
                parent: ROOT_INO,
                ..Dir::default()
            },
        );
        Ok(w)
    }

    /// The image's own `/lost+found`: a directory takes over ours (inode
    /// 11, where e2fsck looks), anything else replaces it.
    fn lost_found(&mut self, parent: u32, name: &[u8], dir: Option<Inode>) -> Option<u32> {
        if parent != ROOT_INO || name != b"lost+found" {
            return None;
        }
        match dir {
            Some(inode) => {
                self.inodes[LOST_FOUND_INO as usize - 1] = Some(inode);
                Some(LOST_FOUND_INO)
            }
            None => {
                let root = self.dirs.get_mut(&ROOT_INO).expect("root");
                root.entries.retain(|(n, _, _)| n != b"lost+found");
                root.subdirs -= 1;
                self.dirs.remove(&LOST_FOUND_INO);
                self.inodes[LOST_FOUND_INO as usize - 1] = None;
                None
            }
        }
    }

    fn journal(&mut self) -> Result<()> {
        let runs = self.alloc(self.journal_blocks)?;
        let mut sb = [0u8; 1024];
        let be =
            |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_be_bytes());
        be(&mut sb, 0, 0xC03B_3998);
        be(&mut sb, 4, 4); // superblock v2
        be(&mut sb, 0xC, BS as u32);
        be(&mut sb, 0x10, self.journal_blocks as u32);
        be(&mut sb, 0x14, 1); // s_first
        be(&mut sb, 0x18, 1); // s_sequence
        sb[0x30..0x40].copy_from_slice(&self.uuid);
        be(&mut sb, 0x40, 1); // s_nr_users
        self.file
            .write_all_at(&sb, runs[0].0 * BS)
            .map_err(io_err)?;
        let size = self.journal_blocks * BS;
        let attrs = Attrs {
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: self.now,
            mtime_nsec: 0,
            xattrs: &[],
        };
        let mut j = self.inode(0o100000, attrs)?;
        j.size = size;
        j.body = Body::Extents(runs);
        self.tree(&mut j)?;
        self.inodes[JOURNAL_INO as usize - 1] = Some(j);
        Ok(())
    }

    /// A new in-memory inode (not yet numbered) with its xattrs placed.
    fn inode(&mut self, kind: u16, a: Attrs<'_>) -> Result<Inode> {
        let mut inode = Inode {
            mode: kind | (a.mode & 0o7777) as u16,
            uid: a.uid,
            gid: a.gid,
            mtime: a.mtime,
            mtime_nsec: a.mtime_nsec.min(999_999_999),
            links: 1,
            size: 0,
            body: Body::Extents(Vec::new()),
            tree: Vec::new(),
            xattr_block: 0,
            ibody_xattrs: None,
        };
        if !a.xattrs.is_empty() {
            let entries = xattr_entries(a.xattrs)?;
            if let Some(ibody) = ibody_xattrs(&entries) {
                inode.ibody_xattrs = Some(ibody);
            } else {
                let block = block_xattrs(&entries).ok_or_else(|| {
                    Error::Unsupported(
                    "xattrs larger than ext4 holds (an inode's spare room plus one 4 KiB block)"
                        .into(),
                )
                })?;
                let at = self.alloc1()?;
                self.file.write_all_at(&block, at * BS).map_err(io_err)?;
                inode.xattr_block = at;
            }
        }
        Ok(inode)
    }

    fn number(&mut self, inode: Inode) -> Result<u32> {
        if self.inodes.len() as u64 >= self.geo.inodes() {
            return Err(Error::Full("inodes"));
        }
        self.inodes.push(Some(inode));
        Ok(self.inodes.len() as u32)
    }

    /// A name a directory entry can hold: 1 to 255 bytes, no `/` or NUL,
    /// not `.` or `..`.
    fn check_name(name: &[u8]) -> Result<()> {
        if name.is_empty()
            || name.len() > 255
            || name == b"."
            || name == b".."
            || name.iter().any(|&b| b == b'/' || b == 0)
        {
            return Err(Error::Unsupported(format!(
                "the name {:?} cannot be an ext4 directory entry (1 to 255 bytes, no '/' or NUL)",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(())
    }

    fn add_entry(&mut self, parent: u32, name: &[u8], ino: u32, mode: u16) {
        if mode & 0o170000 != 0o040000 && self.dirs.contains_key(&LOST_FOUND_INO) {
            self.lost_found(parent, name, None);
        }
        let dir = self.dirs.get_mut(&parent).expect("parent is a directory");
        dir.entries.push((name.to_vec(), ino, file_type(mode)));
    }

    /// A directory `name` in `parent`; returns its inode number.
    pub fn mkdir(&mut self, parent: u32, name: &[u8], a: Attrs<'_>) -> Result<u32> {
        Self::check_name(name)?;
        let inode = self.inode(0o040000, a)?;
        if self.dirs.contains_key(&LOST_FOUND_INO)
            && let Some(ino) = self.lost_found(parent, name, Some(inode.clone()))
        {
            return Ok(ino);
        }
        let ino = self.number(inode)?;
        self.add_entry(parent, name, ino, 0o040000);
        self.dirs.get_mut(&parent).expect("parent").subdirs += 1;
        self.dirs.insert(
            ino,
            Dir {
                parent,
                ..Dir::default()
            },
        );
        Ok(ino)
    }

    /// A symlink, device node or fifo `name` in `parent`.
    pub fn special(
        &mut self,
        parent: u32,
        name: &[u8],
        a: Attrs<'_>,
        kind: Special<'_>,
    ) -> Result<u32> {
        Self::check_name(name)?;
        let mut raw = [0u8; 60];
        let (mode, body, size) = match kind {
            Special::Symlink(t) if t.len() < 60 => {
                raw[..t.len()].copy_from_slice(t);
                (0o120000, Body::Raw(raw), t.len() as u64)
            }
            Special::Symlink(t) => {
                if t.len() > BS as usize {
                    return Err(Error::Unsupported(
                        "a symlink target longer than a block".into(),
                    ));
                }
                let at = self.alloc1()?;
                self.file.write_all_at(t, at * BS).map_err(io_err)?;
                (0o120000, Body::Extents(vec![(at, 1)]), t.len() as u64)
            }
            Special::Char(ma, mi) | Special::Block(ma, mi) => {
                if ma < 256 && mi < 256 {
                    put32(&mut raw, 0, (ma << 8) | mi);
                } else {
                    put32(&mut raw, 4, (mi & 0xff) | (ma << 8) | ((mi & !0xff) << 12));
                }
                let t = if matches!(kind, Special::Char(..)) {
                    0o020000
                } else {
                    0o060000
                };
                (t, Body::Raw(raw), 0)
            }
            Special::Fifo => (0o010000, Body::Raw(raw), 0),
        };
        let mut inode = self.inode(mode, a)?;
        inode.body = body;
        inode.size = size;
        if mode == 0o120000 {
            // A symlink's own permission bits are always 0777.
            inode.mode = 0o120777;
        }
        let ino = self.number(inode)?;
        self.add_entry(parent, name, ino, mode);
        Ok(ino)
    }

    /// A regular file `name` in `parent` whose `size` bytes come later
    /// ([`Writer::write_data`]; an empty file needs none).
    pub fn file(&mut self, parent: u32, name: &[u8], a: Attrs<'_>, size: u64) -> Result<u32> {
        Self::check_name(name)?;
        let mut inode = self.inode(0o100000, a)?;
        inode.size = size;
        let ino = self.number(inode)?;
        self.add_entry(parent, name, ino, 0o100000);
        Ok(ino)
    }

    /// Another name for the non-directory `ino`.
    pub fn link(&mut self, parent: u32, name: &[u8], ino: u32) -> Result<()> {
        Self::check_name(name)?;
        let inode = self.inodes[ino as usize - 1].as_mut().expect("an inode");
        if inode.links >= LINK_MAX {
            return Err(Error::Unsupported(format!(
                "more than {LINK_MAX} hard links (ext4's limit)"
            )));
        }
        inode.links += 1;
        let mode = inode.mode;
        self.add_entry(parent, name, ino, mode);
        Ok(())
    }

    /// Places file `ino`'s content (its announced size) in contiguous
    /// blocks at the cursor without writing it: [`Placed::write`] writes
    /// the bytes later, from any thread.
    pub fn place(&mut self, ino: u32) -> Result<Vec<(u64, u64)>> {
        let size = self.inodes[ino as usize - 1].as_ref().expect("inode").size;
        let runs = self.alloc(size.div_ceil(BS))?;
        let mut inode = self.inodes[ino as usize - 1].take().expect("inode");
        inode.body = Body::Extents(runs.clone());
        let r = self.tree(&mut inode);
        self.inodes[ino as usize - 1] = Some(inode);
        r.map(|()| runs)
    }

    /// Writes data [`Writer::place`]d, shareable between threads.
    pub fn placed(&self) -> Placed<'_> {
        Placed {
            file: &self.file,
            flusher: self.flusher.as_ref(),
        }
    }

    /// Writes the content of file `ino` (its announced size, no more)
    /// from `data`, into contiguous blocks at the cursor.
    pub fn write_data(&mut self, ino: u32, data: &mut dyn Read) -> Result<()> {
        let size = self.inodes[ino as usize - 1].as_ref().expect("inode").size;
        let runs = self.alloc(size.div_ceil(BS))?;
        let mut buf = std::mem::take(&mut self.buf);
        let mut left = size;
        let result = (|| {
            for &(start, len) in &runs {
                let mut pos = start * BS;
                let mut run_left = (len * BS).min(left);
                while run_left > 0 {
                    let want = (buf.len() as u64).min(run_left) as usize;
                    let mut got = 0;
                    while got < want {
                        match data.read(&mut buf[got..want]) {
                            Ok(0) => return Err(Error::Short),
                            Ok(n) => got += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(Error::Read(e)),
                        }
                    }
                    write_sparse(&self.file, &buf[..want], pos)?;
                    pos += want as u64;
                    run_left -= want as u64;
                    left -= want as u64;
                }
            }
            Ok(())
        })();
        self.buf = buf;
        result?;
        if let (Some(first), Some(last)) = (runs.first(), runs.last()) {
            let placed = Placed {
                file: &self.file,
                flusher: self.flusher.as_ref(),
            };
            self.pending
                .wrote(&placed, (first.0 * BS, (last.0 + last.1) * BS));
        }
        let mut inode = self.inodes[ino as usize - 1].take().expect("inode");
        inode.body = Body::Extents(runs);
        let r = self.tree(&mut inode);
        self.inodes[ino as usize - 1] = Some(inode);
        r
    }

    fn alloc1(&mut self) -> Result<u64> {
        Ok(self.alloc(1)?[0].0)
    }

    /// `n` blocks at the cursor, as runs around group metadata.
    fn alloc(&mut self, mut n: u64) -> Result<Vec<(u64, u64)>> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        while n > 0 {
            let g = self.cursor / BPG;
            if g >= self.geo.groups {
                return Err(Error::Full("blocks"));
            }
            // A cursor at a group's first block steps over its metadata.
            self.cursor = self.cursor.max(self.geo.data_start(g));
            let end = self.geo.group_end(g);
            if self.cursor >= end {
                if g + 1 >= self.geo.groups {
                    return Err(Error::Full("blocks"));
                }
                self.cursor = self.geo.data_start(g + 1);
                continue;
            }
            let take = n.min(end - self.cursor);
            match runs.last_mut() {
                Some(last) if last.0 + last.1 == self.cursor => last.1 += take,
                _ => runs.push((self.cursor, take)),
            }
            self.cursor += take;
            n -= take;
        }
        Ok(runs)
    }

    /// Lays out `inode`'s extent tree: in the inode for up to 4 extents,
    /// else one level of leaf blocks (up to 4 × 340 extents, far beyond
    /// what the size caps allow).
    fn tree(&mut self, inode: &mut Inode) -> Result<()> {
        let Body::Extents(runs) = &inode.body else {
            return Ok(());
        };
        let n = extents(runs).len();
        if n > 4 {
            let leaves = n.div_ceil(EXTENTS_PER_BLOCK);
            if leaves > 4 {
                return Err(Error::Unsupported(
                    "a file too fragmented for the extent tree".into(),
                ));
            }
            inode.tree = self
                .alloc(leaves as u64)?
                .iter()
                .flat_map(|&(s, l)| s..s + l)
                .collect();
        }
        Ok(())
    }

    /// Writes directories, the inode tables, bitmaps, descriptors and
    /// superblocks; returns the image's size in bytes.
    pub fn finish(mut self) -> Result<u64> {
        // Directories, in inode order.
        let mut dir_inos: Vec<u32> = self.dirs.keys().copied().collect();
        dir_inos.sort_unstable();
        for ino in dir_inos {
            let dir = self.dirs.remove(&ino).expect("listed");
            let mut blocks = dir_blocks(ino, &dir);
            if ino == LOST_FOUND_INO {
                // Room e2fsck can reconnect files into without allocating.
                for _ in 0..3 {
                    let mut b = vec![0u8; BS as usize];
                    put16(&mut b, 4, BS as u16);
                    blocks.extend_from_slice(&b);
                }
            }
            let n = blocks.len() as u64 / BS;
            let runs = self.alloc(n)?;
            let mut off = 0usize;
            for &(start, len) in &runs {
                let bytes = (len * BS) as usize;
                self.file
                    .write_all_at(&blocks[off..off + bytes], start * BS)
                    .map_err(io_err)?;
                off += bytes;
            }
            let mut inode = self.inodes[ino as usize - 1].take().expect("dir inode");
            inode.size = n * BS;
            inode.links = if dir.subdirs + 2 > LINK_MAX {
                1
            } else {
                dir.subdirs + 2
            };
            inode.body = Body::Extents(runs);
            self.tree(&mut inode)?;
            self.inodes[ino as usize - 1] = Some(inode);
        }
        self.write_inodes()?;
        self.write_groups()?;
        // All of it goes to the disk while e2fsck reads the image; the sync
        // that makes it durable comes after ([`crate::ext4::check`]).
        self.placed().kick(0, self.geo.blocks * BS);
        Ok(self.geo.blocks * BS)
    }

    fn write_inodes(&mut self) -> Result<()> {
        let geo = self.geo;
        let mut table = vec![0u8; (geo.itable_blocks * BS) as usize];
        let used = self.inodes.len() as u64;
        for g in 0..geo.groups {
            let first = g * geo.ipg;
            if first >= used {
                break;
            }
            let last = (first + geo.ipg).min(used);
            table.fill(0);
            for i in first..last {
                let Some(inode) = &self.inodes[i as usize] else {
                    continue;
                };
                let off = ((i - first) * INODE_SIZE) as usize;
                let mut tree_blocks: Vec<Vec<u8>> = Vec::new();
                encode_inode(
                    inode,
                    self.now,
                    &mut table[off..off + INODE_SIZE as usize],
                    &mut tree_blocks,
                );
                for (b, at) in tree_blocks.iter().zip(&inode.tree) {
                    self.file.write_all_at(b, at * BS).map_err(io_err)?;
                }
            }
            let bytes = ((last - first) * INODE_SIZE).div_ceil(BS) * BS;
            self.file
                .write_all_at(&table[..bytes as usize], geo.inode_table(g) * BS)
                .map_err(io_err)?;
        }
        Ok(())
    }

    fn write_groups(&mut self) -> Result<()> {
        let geo = self.geo;
        let used_inodes = self.inodes.len() as u64;
        let cursor_group = self.cursor / BPG;
        let mut gdt = vec![0u8; (geo.gdt_blocks * BS) as usize];
        let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
        let mut dirs_per_group = vec![0u32; geo.groups as usize];
        for (i, inode) in self.inodes.iter().enumerate() {
            if let Some(inode) = inode
                && inode.mode & 0o170000 == 0o040000
            {
                dirs_per_group[i / geo.ipg as usize] += 1;
            }
        }
        for g in 0..geo.groups {
            let start = g * BPG;
            let end = geo.group_end(g);
            // Used: metadata, then data up to the cursor.
            let used_to = if g < cursor_group {
                end
            } else if g == cursor_group {
                self.cursor.max(geo.data_start(g))
            } else {
                geo.data_start(g)
            };
            let used = used_to - start;
            let mut bitmap = vec![0u8; BS as usize];
            set_bits(&mut bitmap, 0, used);
            // Past the end of the filesystem (the last group): in use.
            set_bits(&mut bitmap, end - start, BPG);
            self.file
                .write_all_at(&bitmap, geo.block_bitmap(g) * BS)
                .map_err(io_err)?;
            let free_b = end - used_to;
            let mut ibitmap = vec![0u8; BS as usize];
            let mut inodes_used = 0;
            let first = g * geo.ipg;
            for i in first..(first + geo.ipg).min(used_inodes) {
                // The reserved inodes are in use whether written or not.
                if i < u64::from(FIRST_INO) - 1 || self.inodes[i as usize].is_some() {
                    set_bits(&mut ibitmap, i - first, i - first + 1);
                    inodes_used += 1;
                }
            }
            set_bits(&mut ibitmap, geo.ipg, BPG);
            self.file
                .write_all_at(&ibitmap, (geo.block_bitmap(g) + 1) * BS)
                .map_err(io_err)?;
            let free_i = geo.ipg - inodes_used;
            free_blocks += free_b;
            free_inodes += free_i;
            let d = &mut gdt[(g * 32) as usize..(g * 32 + 32) as usize];
            put32(d, 0, geo.block_bitmap(g) as u32);
            put32(d, 4, (geo.block_bitmap(g) + 1) as u32);
            put32(d, 8, geo.inode_table(g) as u32);
            put16(d, 0xC, free_b as u16);
            put16(d, 0xE, free_i as u16);
            put16(d, 0x10, dirs_per_group[g as usize] as u16);
        }
        for g in 0..geo.groups {
            if !Geometry::has_super(g) {
                continue;
            }
            let sb = self.superblock(g, free_blocks, free_inodes);
            let (at, off) = if g == 0 { (0, 1024) } else { (g * BPG * BS, 0) };
            self.file.write_all_at(&sb, at + off).map_err(io_err)?;
            self.file
                .write_all_at(&gdt, (g * BPG + 1) * BS)
                .map_err(io_err)?;
        }
        Ok(())
    }

    fn superblock(&self, group: u64, free_blocks: u64, free_inodes: u64) -> Vec<u8> {
        let geo = self.geo;
        let mut s = vec![0u8; 1024];
        put32(&mut s, 0x0, geo.inodes() as u32);
        put32(&mut s, 0x4, geo.blocks as u32);
        put32(&mut s, 0xC, free_blocks as u32);
        put32(&mut s, 0x10, free_inodes as u32);
        put32(&mut s, 0x14, 0); // first data block
        put32(&mut s, 0x18, 2); // 4 KiB blocks
        put32(&mut s, 0x1C, 2);
        put32(&mut s, 0x20, BPG as u32);
        put32(&mut s, 0x24, BPG as u32);
        put32(&mut s, 0x28, geo.ipg as u32);
        put32(&mut s, 0x30, self.now as u32); // wtime
        put16(&mut s, 0x36, 0xFFFF); // max mount count: no forced checks
        put16(&mut s, 0x38, 0xEF53);
        put16(&mut s, 0x3A, 1); // clean
        put16(&mut s, 0x3C, 1); // errors: continue
        put32(&mut s, 0x40, self.now as u32); // lastcheck
        put32(&mut s, 0x4C, 1); // dynamic revision
        put32(&mut s, 0x54, FIRST_INO);
        put16(&mut s, 0x58, INODE_SIZE as u16);
        put16(&mut s, 0x5A, group as u16);
        let journal = self.journal_blocks > 0;
        // ext_attr, dir_index (+ has_journal)
        put32(&mut s, 0x5C, 0x8 | 0x20 | if journal { 0x4 } else { 0 });
        // filetype, extents
        put32(&mut s, 0x60, 0x2 | 0x40);
        // sparse_super, large_file, huge_file, dir_nlink, extra_isize
        put32(&mut s, 0x64, 0x1 | 0x2 | 0x8 | 0x20 | 0x40);
        s[0x68..0x78].copy_from_slice(&self.uuid);
        s[0x78..0x88].copy_from_slice(&self.label);
        if journal {
            put32(&mut s, 0xE0, JOURNAL_INO);
            s[0xFD] = 1; // s_jnl_blocks holds a copy of the journal's i_block
            let j = self.inodes[JOURNAL_INO as usize - 1]
                .as_ref()
                .expect("journal");
            let mut raw = [0u8; 128];
            encode_inode(j, self.now, &mut raw, &mut Vec::new());
            s[0x10C..0x10C + 60].copy_from_slice(&raw[0x28..0x28 + 60]);
            put32(&mut s, 0x10C + 60, (j.size >> 32) as u32);
            put32(&mut s, 0x10C + 64, j.size as u32);
        }
        s[0xEC..0xFC].copy_from_slice(&self.hash_seed);
        s[0xFC] = 1; // half_md4
        put32(&mut s, 0x108, self.now as u32); // mkfs time
        put16(&mut s, 0x15C, EXTRA_ISIZE as u16);
        put16(&mut s, 0x15E, EXTRA_ISIZE as u16);
        put32(&mut s, 0x160, 1); // signed directory hash (x86)
        s
    }
}

fn set_bits(bitmap: &mut [u8], from: u64, to: u64) {
    let to = to.min(bitmap.len() as u64 * 8);
    let mut i = from;
    while i < to {
        if i.is_multiple_of(8) && i + 8 <= to {
            let full = ((to - i) / 8) as usize;
            bitmap[(i / 8) as usize..(i / 8) as usize + full].fill(0xFF);
            i += full as u64 * 8;
        } else {
            bitmap[(i / 8) as usize] |= 1 << (i % 8);
            i += 1;
        }
    }
}

/// Writes `data` at `pos`, skipping whole zero blocks (the file is sparse).
fn write_sparse(file: &File, data: &[u8], pos: u64) -> Result<()> {
    static ZERO: [u8; BS as usize] = [0; BS as usize];
    // Slice equality is a memcmp, fast in every profile.
    let zero = |b: &[u8]| b == &ZERO[..b.len()];
    let mut start = 0;
    while start < data.len() {
        let end = (start + BS as usize).min(data.len());
        if zero(&data[start..end]) {
            start = end;
            continue;
        }
        // Extend over the following non-zero blocks.
        let mut stop = end;
        while stop < data.len() {
            let next = (stop + BS as usize).min(data.len());
            if zero(&data[stop..next]) {
                break;
            }
            stop = next;
        }
        file.write_all_at(&data[start..stop], pos + start as u64)
            .map_err(io_err)?;
        start = stop;
    }
    Ok(())
}

/// Runs split into extents (`logical, start, len`) of at most 32768 blocks.
fn extents(runs: &[(u64, u64)]) -> Vec<(u32, u64, u16)> {
    let mut out = Vec::new();
    let mut logical = 0u64;
    for &(start, len) in runs {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_EXTENT);
            out.push((
                (logical + done) as u32,
                start + done,
                if n == MAX_EXTENT { 0x8000 } else { n as u16 },
            ));
            done += n;
        }
        logical += len;
    }
    out
}

fn extent_header(b: &mut [u8], entries: usize, max: usize, depth: u16) {
    put16(b, 0, 0xF30A);
    put16(b, 2, entries as u16);
    put16(b, 4, max as u16);
    put16(b, 6, depth);
}

fn put_extent(b: &mut [u8], (logical, start, len): (u32, u64, u16)) {
    put32(b, 0, logical);
    put16(b, 4, len);
    put16(b, 6, (start >> 32) as u16);
    put32(b, 8, start as u32);
}

/// Fills the 256 bytes of `inode`; pushes its extent leaf blocks.
fn encode_inode(inode: &Inode, now: i64, b: &mut [u8], leaves: &mut Vec<Vec<u8>>) {
    put16(b, 0x0, inode.mode);
    put16(b, 0x2, inode.uid as u16);
    put32(b, 0x4, inode.size as u32);
    put32(b, 0x8, inode.mtime as u32); // atime = mtime, as umoci leaves it
    put32(b, 0xC, now as u32);
    put32(b, 0x10, inode.mtime as u32);
    put16(b, 0x18, inode.gid as u16);
    put16(b, 0x1A, inode.links as u16);
    let mut blocks: u64 = inode.tree.len() as u64 + u64::from(inode.xattr_block != 0);
    let mut flags = 0u32;
    match &inode.body {
        Body::Raw(raw) => b[0x28..0x28 + 60].copy_from_slice(raw),
        Body::Extents(runs) => {
            flags |= EXTENTS_FL;
            blocks += runs.iter().map(|r| r.1).sum::<u64>();
            let ext = extents(runs);
            let root = &mut b[0x28..0x28 + 60];
            if ext.len() <= 4 {
                extent_header(root, ext.len(), 4, 0);
                for (k, e) in ext.iter().enumerate() {
                    put_extent(&mut root[12 + 12 * k..], *e);
                }
            } else {
                let chunks: Vec<_> = ext.chunks(EXTENTS_PER_BLOCK).collect();
                extent_header(root, chunks.len(), 4, 1);
                for (k, (chunk, &at)) in chunks.iter().zip(&inode.tree).enumerate() {
                    let idx = &mut root[12 + 12 * k..24 + 12 * k];
                    put32(idx, 0, chunk[0].0);
                    put32(idx, 4, at as u32);
                    put16(idx, 8, (at >> 32) as u16);
                    let mut leaf = vec![0u8; BS as usize];
                    extent_header(&mut leaf, chunk.len(), EXTENTS_PER_BLOCK, 0);
                    for (j, e) in chunk.iter().enumerate() {
                        put_extent(&mut leaf[12 + 12 * j..], *e);
                    }
                    leaves.push(leaf);
                }
            }
        }
    }
    put32(b, 0x1C, (blocks * 8) as u32);
    put32(b, 0x20, flags);
    put32(b, 0x68, inode.xattr_block as u32);
    put32(b, 0x6C, (inode.size >> 32) as u32);
    put16(b, 0x74, ((blocks * 8) >> 32) as u16);
    put16(b, 0x78, (inode.uid >> 16) as u16);
    put16(b, 0x7A, (inode.gid >> 16) as u16);
    if b.len() < INODE_SIZE as usize {
        return;
    }
    put16(b, 0x80, EXTRA_ISIZE as u16);
    put32(b, 0x84, time_extra(now, 0));
    put32(b, 0x88, time_extra(inode.mtime, inode.mtime_nsec));
    put32(b, 0x8C, time_extra(inode.mtime, inode.mtime_nsec));
    put32(b, 0x90, now as u32); // crtime
    put32(b, 0x94, time_extra(now, 0));
    if let Some(x) = &inode.ibody_xattrs {
        b[IBODY_START..IBODY_START + x.len()].copy_from_slice(x);
    }
}

/// The linear directory blocks of `dir` (inode `ino`).
fn dir_blocks(ino: u32, dir: &Dir) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(BS as usize);
    let mut block = vec![0u8; BS as usize];
    let mut used = 0usize;
    let mut last = 0usize;
    let dots: [(&[u8], u32, u8); 2] = [(b".", ino, 2), (b"..", dir.parent, 2)];
    let all = dots
        .iter()
        .copied()
        .chain(dir.entries.iter().map(|(n, i, t)| (n.as_slice(), *i, *t)));
    for (name, ino, ft) in all {
        let len = (8 + name.len()).div_ceil(4) * 4;
        if used + len > BS as usize {
            let rl = (BS as usize - last) as u16;
            put16(&mut block, last + 4, rl);
            out.extend_from_slice(&block);
            block.fill(0);
            used = 0;
        }
        put32(&mut block, used, ino);
        put16(&mut block, used + 4, len as u16);
        block[used + 6] = name.len() as u8;
        block[used + 7] = ft;
        block[used + 8..used + 8 + name.len()].copy_from_slice(name);
        last = used;
        used += len;
    }
    put16(&mut block, last + 4, (BS as usize - last) as u16);
    out.extend_from_slice(&block);
    out
}

/// One xattr as ext4 stores it: name index, name suffix, value.
struct XEntry {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

fn xattr_entries(xattrs: &[(String, Vec<u8>)]) -> Result<Vec<XEntry>> {
    let unsupported = Error::Unsupported;
    let mut out = Vec::with_capacity(xattrs.len());
    for (name, value) in xattrs {
        let (index, suffix) = match name.as_str() {
            "system.posix_acl_access" => (2, ""),
            "system.posix_acl_default" => (3, ""),
            n => {
                if let Some(s) = n.strip_prefix("user.") {
                    (1, s)
                } else if let Some(s) = n.strip_prefix("trusted.") {
                    (4, s)
                } else if let Some(s) = n.strip_prefix("security.") {
                    (6, s)
                } else {
                    return Err(unsupported(format!(
                        "xattr {name:?} has a namespace ext4 does not store"
                    )));
                }
            }
        };
        if suffix.len() > 255 {
            return Err(unsupported(format!("xattr name {name:?} is too long")));
        }
        let value = if index == 2 || index == 3 {
            acl_to_disk(value)
                .ok_or_else(|| unsupported(format!("malformed POSIX ACL in {name}")))?
        } else {
            value.clone()
        };
        out.push(XEntry {
            index,
            name: suffix.as_bytes().to_vec(),
            value,
        });
    }
    // The kernel searches a block's entries in this order.
    out.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    Ok(out)
}

/// A POSIX ACL in the xattr format (version 2, 8-byte entries) in ext4's
/// on-disk format (version 1; owner, group-owner, mask and other entries
/// without the id).
fn acl_to_disk(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) || v[..4] != [2, 0, 0, 0] {
        return None;
    }
    let mut out = vec![1, 0, 0, 0];
    for e in v[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[..4]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {}
            0x02 | 0x08 => out.extend_from_slice(&e[4..8]),
            _ => return None,
        }
    }
    Some(out)
}

fn entry_len(e: &XEntry) -> usize {
    (16 + e.name.len()).div_ceil(4) * 4
}

fn value_len(e: &XEntry) -> usize {
    e.value.len().div_ceil(4) * 4
}

fn entry_hash(e: &XEntry) -> u32 {
    let mut h: u32 = 0;
    for &c in &e.name {
        // The kernel hashes `char`, signed on x86.
        h = (h << 5) ^ (h >> 27) ^ (c as i8 as i32 as u32);
    }
    let mut padded = e.value.clone();
    padded.resize(value_len(e), 0);
    for w in padded.chunks_exact(4) {
        h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
    }
    h
}

/// Writes the entries at `entries_at` and values downwards from
/// `area.len()`, offsets relative to `base`; `false` if they do not fit.
fn layout_xattrs(
    area: &mut [u8],
    entries_at: usize,
    base: usize,
    xs: &[XEntry],
    hash: bool,
) -> bool {
    let need: usize = xs
        .iter()
        .map(|e| entry_len(e) + value_len(e))
        .sum::<usize>()
        + 4;
    if entries_at + need > area.len() {
        return false;
    }
    let mut at = entries_at;
    let mut value_end = area.len();
    for e in xs {
        value_end -= value_len(e);
        area[value_end..value_end + e.value.len()].copy_from_slice(&e.value);
        area[at] = e.name.len() as u8;
        area[at + 1] = e.index;
        put16(area, at + 2, (value_end - base) as u16);
        put32(area, at + 8, e.value.len() as u32);
        put32(area, at + 12, if hash { entry_hash(e) } else { 0 });
        area[at + 16..at + 16 + e.name.len()].copy_from_slice(&e.name);
        at += entry_len(e);
    }
    true
}

/// The in-inode xattr area (magic, entries, values), if all fit.
fn ibody_xattrs(xs: &[XEntry]) -> Option<Vec<u8>> {
    let mut area = vec![0u8; IBODY_SPACE + 4];
    put32(&mut area, 0, XATTR_MAGIC);
    layout_xattrs(&mut area, 4, 4, xs, false).then_some(area)
}

/// An xattr block, if all fit.
fn block_xattrs(xs: &[XEntry]) -> Option<Vec<u8>> {
    let mut b = vec![0u8; BS as usize];
    put32(&mut b, 0, XATTR_MAGIC);
    put32(&mut b, 4, 1); // refcount
    put32(&mut b, 8, 1); // blocks
    if !layout_xattrs(&mut b, 32, 0, xs, true) {
        return None;
    }
    let mut h: u32 = 0;
    for e in xs {
        h = (h << 16) ^ (h >> 16) ^ entry_hash(e);
    }
    put32(&mut b, 0xC, h);
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn attrs(mode: u32) -> Attrs<'static> {
        Attrs {
            mode,
            uid: 1000,
            gid: 100_000,
            mtime: 1_700_000_000,
            mtime_nsec: 123_456_789,
            xattrs: &[],
        }
    }

    /// `e2fsck -fn` on `img`: its output, and whether it was clean.
    pub(crate) fn fsck(img: &std::path::Path) -> (bool, String) {
        let out = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn debugfs(img: &std::path::Path, cmd: &str) -> String {
        let out = Command::new("debugfs")
            .args(["-R", cmd])
            .arg(img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_small_tree_is_clean_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let file = File::create(&img).unwrap();
        let mut w = Writer::new(file, 64 << 20, 64, 4 << 20, "test", attrs(0o755)).unwrap();
        let etc = w.mkdir(ROOT_INO, b"etc", attrs(0o755)).unwrap();
        let f = w.file(etc, b"hosts", attrs(0o644), 10_000).unwrap();
        w.write_data(f, &mut &[7u8; 10_000][..]).unwrap();
        w.link(ROOT_INO, b"hosts-link", f).unwrap();
        let caps = vec![
            (
                "security.capability".to_string(),
                vec![1, 0, 0, 2, 0, 0, 0, 0],
            ),
            ("user.big".to_string(), vec![b'x'; 1000]),
        ];
        let mut a = attrs(0o4755);
        a.xattrs = &caps;
        w.file(etc, b"empty", a, 0).unwrap();
        let small = vec![("user.a".to_string(), b"b".to_vec())];
        let mut a = attrs(0o644);
        a.xattrs = &small;
        w.special(etc, b"short", a, Special::Symlink(b"hosts"))
            .unwrap();
        w.special(etc, b"long", attrs(0), Special::Symlink(&[b'a'; 200]))
            .unwrap();
        w.special(ROOT_INO, b"null", attrs(0o666), Special::Char(1, 3))
            .unwrap();
        w.special(ROOT_INO, b"big", attrs(0o666), Special::Block(259, 300_000))
            .unwrap();
        w.special(ROOT_INO, b"fifo", attrs(0o600), Special::Fifo)
            .unwrap();
        w.finish().unwrap();
        let (ok, out) = fsck(&img);
        assert!(ok, "{out}");
        let ls = debugfs(&img, "ls -l /etc");
        assert!(ls.contains("hosts") && ls.contains("long"), "{ls}");
        let stat = debugfs(&img, "stat /etc/hosts");
        assert!(stat.contains("Links: 2"), "{stat}");
        assert!(debugfs(&img, "cat /etc/hosts").len() == 10_000);
        let ea = debugfs(&img, "ea_list /etc/empty");
        assert!(
            ea.contains("user.big") && ea.contains("security.capability"),
            "{ea}"
        );
    }

    #[test]
    fn what_ext4_cannot_hold_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("img")).unwrap();
        let mut w = Writer::new(file, 64 << 20, 64, 0, "test", attrs(0o755)).unwrap();
        let long = vec![b'n'; 256];
        let err = w.file(ROOT_INO, &long, attrs(0o644), 0).unwrap_err();
        assert!(err.to_string().contains("255 bytes"), "{err}");
        w.file(ROOT_INO, &long[..255], attrs(0o644), 0).unwrap();
        let huge = vec![("user.big".to_string(), vec![0u8; 4096 - 32 - 16 - 4])];
        let mut a = attrs(0o644);
        a.xattrs = &huge;
        let err = w.file(ROOT_INO, b"x", a, 0).unwrap_err();
        assert!(err.to_string().contains("larger than ext4 holds"), "{err}");
        let odd = vec![("os2.name".to_string(), vec![1])];
        a.xattrs = &odd;
        assert!(w.file(ROOT_INO, b"y", a, 0).is_err());
        let bad_acl = vec![("system.posix_acl_access".to_string(), vec![9, 9])];
        a.xattrs = &bad_acl;
        assert!(w.file(ROOT_INO, b"z", a, 0).is_err());
        // Exactly a block's worth fits.
        let full = vec![("user.big".to_string(), vec![0u8; 4096 - 32 - 16 - 4 - 4])];
        a.xattrs = &full;
        w.file(ROOT_INO, b"full", a, 0).unwrap();
        let size = w.finish().unwrap();
        assert_eq!(size % BS, 0);
        let (ok, out) = fsck(&dir.path().join("img"));
        assert!(ok, "{out}");
    }

    #[test]
    fn a_file_spanning_groups_gets_an_extent_tree() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let file = File::create(&img).unwrap();
        // 9 groups; a 700 MiB file steps over 5 groups' metadata, and
        // 32768-block extents: more than 4 extents.
        let mut w = Writer::new(file, 1200 << 20, 64, 16 << 20, "test", attrs(0o755)).unwrap();
        let f = w.file(ROOT_INO, b"big", attrs(0o644), 700 << 20).unwrap();
        let mut data = std::io::repeat(1).take(700 << 20);
        w.write_data(f, &mut data).unwrap();
        w.finish().unwrap();
        let (ok, out) = fsck(&img);
        assert!(ok, "{out}");
        let stat = debugfs(&img, "stat /big");
        assert!(stat.contains("(ETB0)"), "{stat}");
    }
}
