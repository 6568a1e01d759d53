//! The guest filesystem as first boot sees it: `/` in a VM, a directory
//! given by `BANGER_ROOT` in tests. Paths are guest paths (`/etc/hosts`);
//! symlinks are resolved *inside* the root (an absolute target means the
//! root's `/`, `..` stops at the root), so a test root never reaches the
//! host's files, and reads open regular files only (`O_NOFOLLOW |
//! O_NONBLOCK`: a FIFO or device never blocks or streams) and stop at a cap.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Read as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use super::error::{FirstBootError, io};

/// Symlink hops before giving up (the kernel's limit).
const MAX_HOPS: usize = 40;

/// The guest root.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Root {
        Root { dir: dir.into() }
    }

    /// Whether this is the running system's own `/` (mounts, the kernel
    /// hostname and power-off only happen then).
    pub fn is_system(&self) -> bool {
        self.dir == Path::new("/")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `guest` as a host path, every symlink on the way resolved inside the
    /// root. A missing component ends the resolution (the rest is appended
    /// as is, so the caller sees NotFound or creates it).
    pub fn resolve(&self, guest: impl AsRef<Path>) -> PathBuf {
        self.resolve_inner(guest.as_ref(), true)
    }

    /// Like [`Root::resolve`] but the last component is not followed (to
    /// replace a symlink, or read one).
    pub fn resolve_parent(&self, guest: impl AsRef<Path>) -> PathBuf {
        self.resolve_inner(guest.as_ref(), false)
    }

    fn resolve_inner(&self, guest: &Path, follow_last: bool) -> PathBuf {
        let mut todo: VecDeque<OsString> = components(guest).collect();
        let mut done: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(part) = todo.pop_front() {
            if part == ".." {
                done.pop();
                continue;
            }
            let here = self.join(&done).join(&part);
            let is_last = todo.is_empty();
            match std::fs::symlink_metadata(&here) {
                Ok(meta) if meta.file_type().is_symlink() && (follow_last || !is_last) => {
                    hops += 1;
                    let Ok(target) = std::fs::read_link(&here) else {
                        done.push(part);
                        continue;
                    };
                    if hops > MAX_HOPS {
                        // A loop: leave it to the open to fail (ELOOP).
                        done.push(part);
                        continue;
                    }
                    if target.is_absolute() {
                        done.clear();
                    }
                    for (i, c) in components(&target).enumerate() {
                        todo.insert(i, c);
                    }
                }
                Ok(_) => done.push(part),
                Err(_) => {
                    done.push(part);
                    done.extend(todo.drain(..));
                }
            }
        }
        self.join(&done)
    }

    fn join(&self, parts: &[OsString]) -> PathBuf {
        let mut p = self.dir.clone();
        for part in parts {
            p.push(part);
        }
        p
    }

    /// Reads a regular file of at most `cap` bytes; `None` if it does not
    /// exist. Anything else (FIFO, device, directory, larger) is an error.
    pub fn read_capped(&self, guest: &str, cap: u64) -> Result<Option<Vec<u8>>, FirstBootError> {
        let path = self.resolve(guest);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot open", guest)(e)),
        };
        let meta = file.metadata().map_err(io("cannot stat", guest))?;
        if !meta.is_file() {
            return Err(FirstBootError::BadFile {
                path: guest.into(),
                detail: format!("not a regular file ({:?}); not read", meta.file_type()),
            });
        }
        let mut data = Vec::new();
        file.take(cap + 1)
            .read_to_end(&mut data)
            .map_err(io("cannot read", guest))?;
        if data.len() as u64 > cap {
            return Err(FirstBootError::BadFile {
                path: guest.into(),
                detail: format!("larger than {cap} bytes; not read"),
            });
        }
        Ok(Some(data))
    }

    /// [`Root::read_capped`] as text (invalid UTF-8 replaced).
    pub fn read_text(&self, guest: &str, cap: u64) -> Result<Option<String>, FirstBootError> {
        Ok(self
            .read_capped(guest, cap)?
            .map(|d| String::from_utf8_lossy(&d).into_owned()))
    }

    /// Replaces `guest` atomically with `data` and `mode` (a symlink there
    /// is replaced, never followed), creating missing parent directories.
    pub fn write(&self, guest: &str, data: &[u8], mode: u32) -> Result<(), FirstBootError> {
        let path = self.resolve_parent(guest);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create the directory of", guest))?;
        }
        banger_proto::fsutil::write_atomic(&path, data).map_err(io("cannot write", guest))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io("cannot chmod", guest))
    }

    /// Creates a directory (and parents) with `mode` on the last one.
    pub fn mkdir(&self, guest: &str, mode: u32) -> Result<(), FirstBootError> {
        let path = self.resolve(guest);
        std::fs::create_dir_all(&path).map_err(io("cannot create", guest))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io("cannot chmod", guest))
    }

    /// Whether `guest` is an executable regular file (after symlinks).
    pub fn is_executable(&self, guest: &str) -> bool {
        std::fs::metadata(self.resolve(guest))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }

    pub fn is_file(&self, guest: &str) -> bool {
        std::fs::metadata(self.resolve(guest)).is_ok_and(|m| m.is_file())
    }

    /// Whether anything (even a dangling symlink) is at `guest`.
    pub fn exists_no_follow(&self, guest: &str) -> bool {
        std::fs::symlink_metadata(self.resolve_parent(guest)).is_ok()
    }

    /// The target of the symlink at `guest`, if it is one.
    pub fn read_link(&self, guest: &str) -> Option<PathBuf> {
        std::fs::read_link(self.resolve_parent(guest)).ok()
    }

    /// Makes `guest` a symlink to `target` unless it already is one; says
    /// whether it changed anything.
    pub fn link(&self, target: &str, guest: &str) -> Result<bool, FirstBootError> {
        if self.read_link(guest).as_deref() == Some(Path::new(target)) {
            return Ok(false);
        }
        let path = self.resolve_parent(guest);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create the directory of", guest))?;
        }
        let tmp = path.with_file_name(format!(
            ".{}.banger-link",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).map_err(io("cannot link", guest))?;
        std::fs::rename(&tmp, &path).map_err(io("cannot link", guest))?;
        Ok(true)
    }

    /// Removes a file or symlink; a missing one is fine.
    pub fn remove(&self, guest: &str) -> Result<(), FirstBootError> {
        match std::fs::remove_file(self.resolve_parent(guest)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("cannot remove", guest)(e)),
        }
    }

    /// The names in a guest directory (empty if it does not exist).
    pub fn list(&self, guest: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.resolve(guest))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}

/// The normal components of a path (`.` and the root dropped, `..` kept).
fn components(p: &Path) -> impl Iterator<Item = OsString> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::write(r.join("usr/lib/os-release"), "ID=inside\n").unwrap();
        let root = Root::new(r);
        // Absolute target: the root's /usr/lib, not the host's.
        symlink("/usr/lib/os-release", r.join("etc/os-release")).unwrap();
        assert_eq!(
            root.resolve("/etc/os-release"),
            r.join("usr/lib/os-release")
        );
        // `..` past the top stays at the root.
        symlink("../../../../usr/lib/os-release", r.join("etc/up")).unwrap();
        assert_eq!(root.resolve("/etc/up"), r.join("usr/lib/os-release"));
        // A host path that does not exist in the root is not found.
        symlink("/etc/hostname", r.join("etc/host-file")).unwrap();
        assert_eq!(root.read_text("/etc/host-file", 100).unwrap(), None);
        // A loop ends (as an error from open), not a hang.
        symlink("/etc/loop", r.join("etc/loop")).unwrap();
        assert!(root.read_text("/etc/loop", 100).is_err());
    }

    #[test]
    fn reads_refuse_fifos_directories_and_huge_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let root = Root::new(r);
        nix::unistd::mkfifo(
            &r.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        // Would block forever with a plain open.
        let err = root.read_text("/fifo", 100).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(root.read_text("/", 100).is_err());
        std::fs::write(r.join("big"), vec![b'x'; 101]).unwrap();
        let err = root.read_text("/big", 100).unwrap_err().to_string();
        assert!(err.contains("larger than 100"), "{err}");
        std::fs::write(r.join("ok"), vec![b'x'; 100]).unwrap();
        assert_eq!(root.read_text("/ok", 100).unwrap().unwrap().len(), 100);
    }

    #[test]
    fn writes_replace_symlinks_instead_of_following_them() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        symlink(&victim, r.join("etc/resolv.conf")).unwrap();
        let root = Root::new(r);
        root.write("/etc/resolv.conf", b"nameserver 1.1.1.1\n", 0o644)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!r.join("etc/resolv.conf").is_symlink());
        assert!(root.link("/dev/null", "/etc/x").unwrap());
        assert!(!root.link("/dev/null", "/etc/x").unwrap());
    }
}
