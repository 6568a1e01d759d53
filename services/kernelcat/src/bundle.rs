//! Unpacking a kernel bundle (`.tar.zst` holding `vmlinux` and optionally
//! `initrd` and `config`) into a staging dir, refusing anything that could
//! write outside it.
//!
//! Rules: members whose normalised path escapes the target, and symlinks
//! whose target escapes, are refused; writes through a symlinked parent
//! are refused; hardlinks, devices and fifos are skipped; the total
//! uncompressed size is capped; a bundle without a regular `vmlinux` at its
//! top is refused. Only `vmlinux`, `initrd` (or `initrd.img`) and `config`
//! are kept; the rest of the bundle is discarded with its scratch dir.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::error::{Error, Result};
use crate::store::{CONFIG, INITRD, VMLINUX};

/// Scratch dir inside the staging dir the bundle is unpacked into.
const SCRATCH: &str = ".bundle";

/// What an unpacked bundle provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// `initrd` was present and moved into place.
    pub has_initrd: bool,
    /// `config` was present and moved into place.
    pub has_config: bool,
    /// Members skipped (hardlinks, devices, fifos), for the log.
    pub skipped: Vec<String>,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadBundle {
        reason: reason.into(),
    }
}

/// Lexically normalises a member path: `.` dropped, `..` applied. `None`
/// when the path is absolute or climbs above the target.
pub fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Unpacks the zstd-compressed tar read from `reader` into `staging`, whose
/// top then holds `vmlinux` (and `initrd`, `config` when the bundle has them).
pub fn unpack(reader: impl Read, staging: &Path, max_unpacked_bytes: u64) -> Result<Unpacked> {
    let scratch = staging.join(SCRATCH);
    fs::create_dir(&scratch).map_err(Error::io("cannot create", &scratch))?;
    let decoder = zstd::stream::read::Decoder::new(reader)
        .map_err(|e| bad(format!("it is not a zstd stream: {e}")))?;
    let mut archive = tar::Archive::new(decoder);
    let mut total = 0u64;
    let mut skipped = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("it is not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar stream: {e}")))?;
        let raw = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
        let shown = raw.display().to_string();
        let rel = normalise(&raw).ok_or_else(|| {
            bad(format!(
                "member {shown:?} escapes the kernel directory (absolute path or `..`)"
            ))
        })?;
        if rel.as_os_str().is_empty() {
            continue; // `./` itself
        }
        let dest = scratch.join(&rel);
        match entry.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                total = total.saturating_add(size);
                if total > max_unpacked_bytes {
                    return Err(Error::TooLarge {
                        what: "the bundle's unpacked content".into(),
                        limit: max_unpacked_bytes,
                    });
                }
                prepare_parent(&scratch, &rel, &shown)?;
                clear_path(&dest, &shown)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)
                    .map_err(Error::io("cannot create", &dest))?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut out)
                    .map_err(|e| bad(format!("cannot read member {shown:?}: {e}")))?;
                if copied != size {
                    return Err(bad(format!(
                        "member {shown:?} is truncated ({copied} of {size} bytes)"
                    )));
                }
            }
            EntryType::Directory => {
                prepare_parent(&scratch, &rel, &shown)?;
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(bad(format!("directory {shown:?} clashes with a file"))),
                    Err(_) => fs::create_dir(&dest).map_err(Error::io("cannot create", &dest))?,
                }
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| PathBuf::from(OsStr::from_bytes(&b)))
                    .ok_or_else(|| bad(format!("symlink {shown:?} has no target")))?;
                let parent = rel.parent().unwrap_or(Path::new(""));
                if target.is_absolute() || normalise(&parent.join(&target)).is_none() {
                    return Err(bad(format!(
                        "symlink {shown:?} -> {:?} points outside the kernel directory",
                        target.display().to_string()
                    )));
                }
                prepare_parent(&scratch, &rel, &shown)?;
                clear_path(&dest, &shown)?;
                std::os::unix::fs::symlink(&target, &dest)
                    .map_err(Error::io("cannot create symlink", &dest))?;
            }
            other => {
                // Hardlinks, devices, fifos and exotic types have no place in
                // a kernel bundle and could alias or expose host files.
                tracing::warn!(member = %shown, kind = ?other, "skipping bundle member");
                skipped.push(shown);
            }
        }
    }
    let vmlinux = scratch.join(VMLINUX);
    if !fs::symlink_metadata(&vmlinux).is_ok_and(|m| m.is_file()) {
        return Err(bad(
            "it has no regular file `vmlinux` at its top; a kernel bundle holds vmlinux \
             (uncompressed) and optionally initrd and config",
        ));
    }
    move_into(&vmlinux, &staging.join(VMLINUX))?;
    let mut has_initrd = false;
    for candidate in [INITRD, "initrd.img"] {
        let path = scratch.join(candidate);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            move_into(&path, &staging.join(INITRD))?;
            has_initrd = true;
            break;
        }
    }
    let config = scratch.join(CONFIG);
    let has_config = fs::symlink_metadata(&config).is_ok_and(|m| m.is_file());
    if has_config {
        move_into(&config, &staging.join(CONFIG))?;
    }
    fs::remove_dir_all(&scratch).map_err(Error::io("cannot remove", &scratch))?;
    Ok(Unpacked {
        has_initrd,
        has_config,
        skipped,
    })
}

/// Creates the member's parent dirs, refusing to pass through a symlink
/// (which could lead outside the scratch dir) or a file.
fn prepare_parent(scratch: &Path, rel: &Path, shown: &str) -> Result<()> {
    let mut dir = scratch.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad(format!(
                    "member {shown:?} would be written through a symlink"
                )));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(bad(format!("member {shown:?} is below a file"))),
            Err(_) => fs::create_dir(&dir).map_err(Error::io("cannot create", &dir))?,
        }
    }
    Ok(())
}

/// Removes a file or symlink a later member replaces; a directory in the
/// way is an error.
fn clear_path(dest: &Path, shown: &str) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(bad(format!("member {shown:?} clashes with a directory"))),
        Ok(_) => fs::remove_file(dest).map_err(Error::io("cannot replace", dest)),
        Err(_) => Ok(()),
    }
}

fn move_into(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(Error::io("cannot move into place", to))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use banger_test_support::tar::{Member, tar_zst};

    fn run(members: &[Member]) -> (tempfile::TempDir, Result<Unpacked>) {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        fs::create_dir(&staging).unwrap();
        let data = tar_zst(members);
        let result = unpack(&data[..], &staging, 1 << 20);
        (dir, result)
    }

    fn reason(result: Result<Unpacked>) -> String {
        match result {
            Err(Error::BadBundle { reason }) => reason,
            other => panic!("expected a refused bundle, got {other:?}"),
        }
    }

    /// Nothing may appear beside the staging dir.
    fn assert_nothing_outside(dir: &tempfile::TempDir) {
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("staging")]);
    }

    #[test]
    fn keeps_vmlinux_initrd_config_only() {
        use Member::*;
        let (dir, r) = run(&[
            Dir("./"),
            File("./vmlinux", b"kernel"),
            File("initrd.img", b"rd"),
            File("config", b"CONFIG_X=y"),
            Dir("docs"),
            File("docs/README", b"hi"),
            Symlink("docs/link", "../vmlinux"),
        ]);
        let u = r.unwrap();
        assert!(u.has_initrd && u.has_config);
        let staging = dir.path().join("staging");
        assert_eq!(fs::read(staging.join("vmlinux")).unwrap(), b"kernel");
        assert_eq!(fs::read(staging.join("initrd")).unwrap(), b"rd");
        let mut names: Vec<_> = fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["config", "initrd", "vmlinux"]);
    }

    #[test]
    fn normalised_paths_inside_are_fine() {
        use Member::*;
        let (_d, r) = run(&[Dir("a"), File("a/../vmlinux", b"k")]);
        assert!(!r.unwrap().has_initrd);
    }

    #[test]
    fn refuses_parent_escape() {
        use Member::*;
        let (dir, r) = run(&[File("vmlinux", b"k"), File("../escape", b"x")]);
        assert!(reason(r).contains("escapes"));
        assert_nothing_outside(&dir);
        let (dir, r) = run(&[File("a/../../escape", b"x")]);
        assert!(reason(r).contains("escapes"));
        assert_nothing_outside(&dir);
    }

    #[test]
    fn refuses_absolute_path() {
        use Member::*;
        let (dir, r) = run(&[File("/tmp/banger-escape-test", b"x")]);
        assert!(reason(r).contains("escapes"));
        assert!(!Path::new("/tmp/banger-escape-test").exists());
        assert_nothing_outside(&dir);
    }

    #[test]
    fn refuses_escaping_symlinks() {
        use Member::*;
        let (dir, r) = run(&[Symlink("evil", "../../etc")]);
        assert!(reason(r).contains("points outside"));
        assert_nothing_outside(&dir);
        let (_d, r) = run(&[Symlink("evil", "/etc/passwd")]);
        assert!(reason(r).contains("points outside"));
        let (_d, r) = run(&[Dir("a"), Symlink("a/evil", "../../x")]);
        assert!(reason(r).contains("points outside"));
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        use Member::*;
        // The symlink itself stays inside, but writing below it must not
        // follow it (it could be swapped for one pointing anywhere).
        let (dir, r) = run(&[Dir("d"), Symlink("s", "d"), File("s/vmlinux", b"k")]);
        assert!(reason(r).contains("through a symlink"));
        assert_nothing_outside(&dir);
    }

    #[test]
    fn a_symlinked_vmlinux_is_not_a_kernel() {
        use Member::*;
        let (_d, r) = run(&[File("real", b"k"), Symlink("vmlinux", "real")]);
        assert!(reason(r).contains("no regular file `vmlinux`"));
    }

    #[test]
    fn skips_hardlinks_devices_fifos() {
        use Member::*;
        let (dir, r) = run(&[
            File("vmlinux", b"k"),
            Hardlink("hard", "/etc/shadow"),
            Fifo("fifo"),
            CharDevice("null"),
        ]);
        let u = r.unwrap();
        assert_eq!(u.skipped, ["hard", "fifo", "null"]);
        let staging = dir.path().join("staging");
        assert!(!staging.join("hard").exists());
        assert!(fs::symlink_metadata(staging.join(".bundle")).is_err());
    }

    #[test]
    fn refuses_missing_vmlinux() {
        use Member::*;
        let (_d, r) = run(&[File("bzImage", b"k"), Dir("vmlinux")]);
        assert!(reason(r).contains("no regular file `vmlinux`"));
    }

    #[test]
    fn refuses_oversized_bundle() {
        use Member::*;
        let big = vec![0u8; 600 * 1024];
        let (_d, r) = run(&[File("vmlinux", &big), File("initrd", &big)]);
        assert!(
            matches!(r, Err(Error::TooLarge { limit: 1048576, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let r = unpack(&b"not zstd at all"[..], dir.path(), 1 << 20);
        assert!(matches!(r, Err(Error::BadBundle { .. })), "{r:?}");
    }

    #[test]
    fn normalise_rules() {
        assert_eq!(
            normalise(Path::new("./a/b/../c")),
            Some(PathBuf::from("a/c"))
        );
        assert_eq!(normalise(Path::new("a/..")), Some(PathBuf::new()));
        assert_eq!(normalise(Path::new("a/../..")), None);
        assert_eq!(normalise(Path::new("/a")), None);
    }
}
