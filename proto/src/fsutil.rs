//! The one atomic-write helper (records and manifests are replaced whole or
//! not at all, so a crash never leaves a half-written file behind) and the
//! one home of "is there room": [`NoSpace`], [`available`], [`ensure_room`].

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `data` to `path` atomically: a temporary file of its own in the
/// same directory (a random name, created exclusively, so concurrent
/// writers — threads or processes — never share one), fsync, rename over
/// `path`, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let (tmp, mut f) = create_temp_beside(dir, file_name)?;
    let result = (|| {
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `.<name>.tmp-<random>` in `dir` with O_EXCL, retrying on the
/// (unlikely) collision with another writer's name.
fn create_temp_beside(
    dir: &Path,
    name: &std::ffi::OsStr,
) -> io::Result<(std::path::PathBuf, File)> {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..16 {
        // RandomState keys come from the OS (once per thread), stepped per
        // instance: distinct across threads, calls and processes.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{:016x}", h.finish()));
        let tmp = dir.join(tmp_name);
        match File::options().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not pick an unused temporary name",
    ))
}

/// Serializes `value` as pretty JSON and writes it with [`write_atomic`].
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomic(path, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("record.json");
        write_atomic(&p, b"first, longer content").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
    }

    /// Threads of one process replacing the same file: every write lands
    /// whole (never two writers in one temp file), none fails, no temp is
    /// left. With a per-process temp name they shared one file: writes
    /// interleaved, and a rename of a temp another thread had already
    /// renamed failed with ENOENT.
    #[test]
    fn concurrent_writers_never_share_a_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.json");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 64 << 10]).collect();
        std::thread::scope(|s| {
            for content in &contents {
                let (path, contents) = (&path, &contents);
                s.spawn(move || {
                    for _ in 0..25 {
                        write_atomic(path, content).unwrap();
                        let now = fs::read(path).unwrap();
                        assert!(
                            contents.contains(&now),
                            "a torn file: {} bytes starting {:?}",
                            now.len(),
                            &now[..now.len().min(8)]
                        );
                    }
                });
            }
        });
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary files left behind: {names:?}");
    }
}

/// Not enough room on the filesystem that holds `path`: the one shape of
/// "disk full" every service's error enum wraps (and maps to
/// RESOURCE_EXHAUSTED at its edge).
#[cfg(feature = "host")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSpace {
    /// What we were writing (or about to write).
    pub path: std::path::PathBuf,
    /// Bytes the operation needs there; 0 when only the kernel's ENOSPC
    /// told us (the size of what was being written is unknown).
    pub needed: u64,
    /// Bytes free there for us, measured when it failed.
    pub available: u64,
}

#[cfg(feature = "host")]
impl std::fmt::Display for NoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no space left for {}: ", self.path.display(),)?;
        if self.needed > 0 {
            write!(f, "{} MiB needed, ", self.needed.div_ceil(1 << 20))?;
        }
        write!(f, "{} MiB free on its filesystem", self.available >> 20)
    }
}

#[cfg(feature = "host")]
impl NoSpace {
    /// The fact for `path`, with what is free there now.
    pub fn at(path: &Path, needed: u64) -> NoSpace {
        NoSpace {
            path: path.to_path_buf(),
            needed,
            available: available(path).unwrap_or(0),
        }
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding
/// `path` (or its nearest existing ancestor: `path` may not exist yet).
#[cfg(feature = "host")]
pub fn available(path: &Path) -> io::Result<u64> {
    let mut probe = path;
    loop {
        match nix::sys::statvfs::statvfs(probe) {
            Ok(st) => return Ok(st.blocks_available() * st.fragment_size()),
            Err(nix::errno::Errno::ENOENT) => match probe.parent() {
                Some(p) if !p.as_os_str().is_empty() => probe = p,
                _ => return Err(io::Error::from(io::ErrorKind::NotFound)),
            },
            Err(e) => return Err(e.into()),
        }
    }
}

/// Refuses up front when the filesystem holding `path` has less than
/// `needed` bytes free; an unmeasurable filesystem is let through (the
/// write itself will say).
#[cfg(feature = "host")]
pub fn ensure_room(path: &Path, needed: u64) -> Result<(), NoSpace> {
    match available(path) {
        Ok(free) if free < needed => Err(NoSpace {
            path: path.to_path_buf(),
            needed,
            available: free,
        }),
        _ => Ok(()),
    }
}

/// True for the kernel's "disk full" (ENOSPC) and "quota exceeded"
/// (EDQUOT), also when wrapped (tempfile adds the path and keeps only the
/// kind).
#[cfg(feature = "host")]
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(c) if c == nix::libc::ENOSPC || c == nix::libc::EDQUOT)
}
