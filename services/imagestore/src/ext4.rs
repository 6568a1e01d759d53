//! Building the ext4 root filesystem without a tree and without privilege,
//! in one of two ways (`[imagestore] ext4_writer`): [`build_builtin`] hands
//! the flattened index to the in-process writer ([`crate::ext4w`]; linear
//! in the number of entries, nothing to fix up), or [`build`] pipes the
//! flattened tar stream ([`crate::flatten`]) into
//! `mke2fs -d -` (e2fsprogs ≥ 1.47.1 with libarchive), sized from the
//! stream's own accounting plus headroom; what mke2fs's tar reader drops
//! (xattrs other than `security.capability`, sub-second mtimes, the root's
//! owner and mode) is set afterwards in one batched `debugfs -w -f` run;
//! `e2fsck -fn` checks the result. Owners, modes and devices are only bytes
//! in the image file, so none of this needs a capability.
//!
//! Every child process dies with imagestore (`PR_SET_PDEATHSIG`) and is
//! killed when its build is stopped (the service stopping).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::error::Error;
use crate::ext4w::time_extra;
use crate::flatten::{Fixup, Stats};

/// The ext4 file size for `stats`: content, inode tables, a journal and
/// the configured headroom, rounded up to 4 MiB; and the inode count.
pub fn image_size(stats: Stats, headroom_percent: u64, min_headroom_mib: u64) -> (u64, u64) {
    let inodes = (stats.inodes + stats.inodes / 2).max(8192);
    let metadata = inodes * 256 + stats.bytes / 32;
    let headroom = (stats.bytes * headroom_percent / 100).max(min_headroom_mib << 20);
    let base = stats.bytes + metadata + headroom;
    let size = (base + journal_bytes(base)).div_ceil(4 << 20) * (4 << 20);
    (size, inodes)
}

/// mke2fs's default journal size for a filesystem of `size` bytes.
fn journal_bytes(size: u64) -> u64 {
    match size {
        s if s < 128 << 20 => 4 << 20,
        s if s < 1 << 30 => 16 << 20,
        s if s < 2 << 30 => 32 << 20,
        _ => 64 << 20,
    }
}

/// Builds `out` with the in-process writer ([`crate::ext4w`]): the same
/// sizing as [`build`], the tree written by `write` (which gets the open
/// writer); one retry with more room if the estimate was short.
pub fn build_builtin<T>(
    out: &Path,
    label: &str,
    stats: Stats,
    (headroom_percent, min_headroom_mib, max_bytes): (u64, u64, u64),
    root: &crate::flatten::Meta,
    mut write: impl FnMut(&mut crate::ext4w::Writer) -> Result<T, Error>,
) -> Result<(u64, T), Error> {
    let (mut size, inodes) = image_size(stats, headroom_percent, min_headroom_mib);
    let root = crate::ext4w::Attrs {
        mode: root.mode,
        uid: root.uid,
        gid: root.gid,
        mtime: root.mtime,
        mtime_nsec: root.mtime_nsec,
        xattrs: &root.xattrs,
    };
    let mut inodes = inodes;
    let needed = host_bytes(stats);
    for attempt in 0..2 {
        let real = crate::ext4w::image_bytes(size, inodes);
        if real > max_bytes {
            return Err(Error::ImageTooLarge {
                size: real,
                limit: max_bytes,
            });
        }
        let _ = std::fs::remove_file(out);
        // Refused before a byte is written when it cannot fit, as for mke2fs.
        banger_proto::fsutil::ensure_room(out, needed).map_err(Error::NoSpace)?;
        let file = std::fs::File::create(out).map_err(Error::io("cannot create", out))?;
        let result =
            crate::ext4w::Writer::new(file, size, inodes, journal_bytes(size), label, root)
                .map_err(|e| Error::Ext4Write {
                    path: "/".into(),
                    source: e,
                })
                .and_then(|mut w| {
                    let t = write(&mut w)?;
                    let size = w.finish().map_err(|e| Error::Ext4Write {
                        path: "the filesystem's metadata".into(),
                        source: e,
                    })?;
                    Ok((size, t))
                });
        match result {
            Ok(done) => return Ok(done),
            Err(Error::Ext4Write {
                source: crate::ext4w::Error::Full(what),
                ..
            }) if attempt == 0 => {
                tracing::warn!(
                    size,
                    what,
                    "the ext4 estimate was short; retrying with more room"
                );
                size = size.saturating_mul(3) / 2;
                inodes = inodes.saturating_mul(3) / 2;
            }
            // The host's disk ran out under the writer (not the image's
            // own room): the same NoSpace as everywhere else.
            Err(Error::Ext4Write {
                source: crate::ext4w::Error::Write(e),
                ..
            }) if banger_proto::fsutil::is_no_space(&e) => {
                let _ = std::fs::remove_file(out);
                return Err(no_space(out, needed));
            }
            Err(e) => {
                let _ = std::fs::remove_file(out);
                return Err(e);
            }
        }
    }
    let _ = std::fs::remove_file(out);
    Err(Error::Mkfs(
        "the filesystem estimate was short twice".into(),
    ))
}

/// What building the ext4 for `stats` writes to the host's disk (the file
/// is sparse: the headroom costs nothing until a VM's copy uses it): the
/// content, its metadata and a margin for the journal and inode tables.
pub fn host_bytes(stats: Stats) -> u64 {
    stats.bytes + stats.bytes / 32 + stats.inodes * 256 + (4 << 20)
}

/// The host's disk ran out under mke2fs (not the image's own room, which
/// the caller retries): told by the kernel's ENOSPC text in mke2fs's
/// errors, or by a filesystem with (almost) nothing left. Asked before the
/// partial file is removed; what is free is reported after.
fn host_full(out: &Path, stderr: &str) -> bool {
    let free = banger_proto::fsutil::available(out).unwrap_or(u64::MAX);
    stderr.contains("No space left on device") || free < 1 << 20
}

fn no_space(out: &Path, needed: u64) -> Error {
    Error::NoSpace(banger_proto::fsutil::NoSpace::at(out, needed))
}

/// A command whose process is killed when imagestore dies.
fn command(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it is all that runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Waits for `child`, killing it as soon as `cancel` is set.
fn wait(child: &mut Child, cancel: &AtomicBool) -> Result<std::process::ExitStatus, Error> {
    loop {
        if crate::flatten::cancelled(cancel) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Cancelled);
        }
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(Error::Mkfs(format!("cannot wait for mke2fs: {e}"))),
        }
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

fn mke2fs(out: &Path, label: &str, inodes: u64, stdin: Stdio) -> Command {
    mke2fs_program("mke2fs", out, label, inodes, stdin)
}

fn mke2fs_program(program: &str, out: &Path, label: &str, inodes: u64, stdin: Stdio) -> Command {
    let mut cmd = command(program);
    cmd.args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-L")
        .arg(label)
        .args(["-E", "root_owner=0:0", "-d", "-"])
        .arg(out)
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Checks once per process that the host's mke2fs reads a tar from stdin
/// (e2fsprogs ≥ 1.47.1 built with libarchive, and libarchive13 installed).
pub fn probe(scratch: &Path) -> Result<(), Error> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| probe_once("mke2fs", scratch))
        .clone()
        .map_err(Error::MkfsCannotReadTar)
}

fn probe_once(program: &str, scratch: &Path) -> Result<(), String> {
    let img = tempfile::Builder::new()
        .prefix("mke2fs-probe-")
        .tempfile_in(scratch)
        .map_err(|e| format!("cannot create a probe file in {}: {e}", scratch.display()))?;
    img.as_file()
        .set_len(4 << 20)
        .map_err(|e| format!("cannot size the probe file: {e}"))?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(5);
    tar.append_data(&mut h, "probe", &b"probe"[..])
        .map_err(|e| e.to_string())?;
    let bytes = tar.into_inner().map_err(|e| e.to_string())?;
    let mut child = mke2fs_program(program, img.path(), "probe", 64, Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run mke2fs: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let _ = stdin.write_all(&bytes);
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| format!("cannot run mke2fs: {e}"))?;
    if !output.status.success() {
        let version = Command::new(program)
            .arg("-V")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default();
        return Err(format!(
            "{version}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let cat = Command::new("debugfs")
        .args(["-R", "cat /probe"])
        .arg(img.path())
        .output()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    if cat.stdout != b"probe" {
        return Err("the probe file did not come out of the tar".into());
    }
    // And e2fsck, so a sandbox that breaks any of the three tools (the
    // unit's syscall filter) stops imagestore at start, not at a pull.
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(img.path())
        .output()
        .map_err(|e| format!("cannot run e2fsck: {e}"))?;
    if !fsck.status.success() {
        return Err(format!(
            "e2fsck fails on a fresh filesystem: {}",
            String::from_utf8_lossy(&fsck.stdout).trim()
        ));
    }
    Ok(())
}

/// Builds `out` (label `label`) from the tar stream `feed` writes, sized for
/// `stats`; returns the file's size and what `feed` returned. One retry
/// with more room (feeding again) if mke2fs ran out of space on an odd tree.
pub fn build<T>(
    out: &Path,
    label: &str,
    stats: Stats,
    (headroom_percent, min_headroom_mib, max_bytes): (u64, u64, u64),
    mut feed: impl FnMut(&mut dyn Write) -> Result<T, Error>,
    cancel: &AtomicBool,
) -> Result<(u64, T), Error> {
    let (mut size, inodes) = image_size(stats, headroom_percent, min_headroom_mib);
    let label: String = label.chars().take(16).collect();
    let needed = host_bytes(stats);
    for attempt in 0..2 {
        if size > max_bytes {
            return Err(Error::ImageTooLarge {
                size,
                limit: max_bytes,
            });
        }
        let _ = std::fs::remove_file(out);
        // Refused before mke2fs writes a byte when it cannot fit.
        banger_proto::fsutil::ensure_room(out, needed).map_err(Error::NoSpace)?;
        let file = std::fs::File::create(out).map_err(Error::io("cannot create", out))?;
        file.set_len(size).map_err(Error::io("cannot size", out))?;
        drop(file);
        let mut child = mke2fs(out, &label, inodes, Stdio::piped())
            .spawn()
            .map_err(|e| Error::Mkfs(format!("cannot run mke2fs (install e2fsprogs): {e}")))?;
        let stderr = drain(child.stderr.take().expect("piped"));
        let stdin = child.stdin.take().expect("piped");
        // A larger pipe: fewer switches between us and mke2fs (best effort).
        let _ = nix::fcntl::fcntl(&stdin, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        let mut stdin = std::io::BufWriter::with_capacity(1 << 20, stdin);
        let fed = feed(&mut stdin).and_then(|t| {
            stdin
                .flush()
                .map_err(|e| Error::Mkfs(format!("cannot feed mke2fs: {e}")))?;
            Ok(t)
        });
        drop(stdin);
        let fed = match fed {
            Ok(t) => t,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.join().unwrap_or_default();
                let full = host_full(out, &err);
                let _ = std::fs::remove_file(out);
                if full {
                    return Err(no_space(out, needed));
                }
                return Err(match e {
                    Error::Mkfs(m) if !err.trim().is_empty() => {
                        Error::Mkfs(format!("{m}: mke2fs: {}", err.trim()))
                    }
                    e => e,
                });
            }
        };
        let status = wait(&mut child, cancel).inspect_err(|_| {
            let _ = std::fs::remove_file(out);
        })?;
        let err = stderr.join().unwrap_or_default();
        if status.success() {
            return Ok((size, fed));
        }
        let full = host_full(out, &err);
        let _ = std::fs::remove_file(out);
        if full {
            return Err(no_space(out, needed));
        }
        let space = ["space", "allocate", "inode"]
            .iter()
            .any(|w| err.to_lowercase().contains(w));
        if attempt == 1 || !space {
            return Err(Error::Mkfs(format!("mke2fs failed: {}", err.trim())));
        }
        tracing::warn!(size, stderr = %err.trim(), "the ext4 estimate was short; retrying with more room");
        size = size.saturating_mul(3) / 2;
    }
    unreachable!("the loop returns")
}

/// Quotes `s` for a debugfs command line (ss's parser: `"` doubled
/// inside double quotes; any other byte is taken as is). `None` for a name
/// a line-based command file cannot carry (a line break).
fn quote(s: &[u8]) -> Option<Vec<u8>> {
    if s.iter().any(|&b| b == b'\n' || b == b'\r' || b == 0) {
        return None;
    }
    let mut out = vec![b'"'];
    for &b in s {
        out.push(b);
        if b == b'"' {
            out.push(b'"');
        }
    }
    out.push(b'"');
    Some(out)
}

/// Sets what mke2fs dropped, in one `debugfs -w -f` run; values go through
/// files in `scratch` (binary-safe). No-op without fixups.
pub fn fix_up(
    img: &Path,
    fixups: &[Fixup],
    scratch: &Path,
    cancel: &AtomicBool,
) -> Result<(), Error> {
    if fixups.is_empty() {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("fixup-")
        .tempdir_in(scratch)
        .map_err(Error::io("cannot create a temp dir in", scratch))?;
    let mut cmds: Vec<u8> = Vec::new();
    let mut values = 0usize;
    for f in fixups {
        let mut raw = b"/".to_vec();
        raw.extend_from_slice(f.path.as_os_str().as_encoded_bytes());
        let Some(path) = quote(&raw) else {
            if !f.xattrs.is_empty() {
                return Err(Error::Unsupported {
                    reference: f.path.display().to_string(),
                    what: "file name with a line break that carries xattrs".into(),
                });
            }
            tracing::warn!(path = %f.path.display(), "sub-second mtime not kept: the name has a line break");
            continue;
        };
        let mut line = |parts: &[&[u8]]| {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    cmds.push(b' ');
                }
                cmds.extend_from_slice(p);
            }
            cmds.push(b'\n');
        };
        if let Some((mode, uid, gid, mtime)) = f.root {
            let mode = format!("0{:o}", 0o040000 | mode);
            line(&[b"set_inode_field / mode", mode.as_bytes()]);
            line(&[b"set_inode_field / uid", uid.to_string().as_bytes()]);
            line(&[b"set_inode_field / gid", gid.to_string().as_bytes()]);
            let mtime = format!("@{}", mtime.max(0));
            line(&[b"set_inode_field / mtime", mtime.as_bytes()]);
            let extra = time_extra(f.mtime, f.mtime_nsec).to_string();
            line(&[b"set_inode_field / mtime_extra", extra.as_bytes()]);
        }
        if f.mtime_nsec > 0 {
            let extra = time_extra(f.mtime, f.mtime_nsec).to_string();
            line(&[b"set_inode_field", &path, b"mtime_extra", extra.as_bytes()]);
        }
        for (name, value) in &f.xattrs {
            let file = dir.path().join(values.to_string());
            values += 1;
            std::fs::write(&file, value).map_err(Error::io("cannot write", &file))?;
            let file = quote(file.as_os_str().as_encoded_bytes()).expect("our own temp path");
            let Some(name) = quote(name.as_bytes()) else {
                return Err(Error::Unsupported {
                    reference: f.path.display().to_string(),
                    what: "xattr name with a line break".into(),
                });
            };
            line(&[b"ea_set -f", &file, &path, &name]);
        }
    }
    let script = dir.path().join("commands");
    std::fs::write(&script, &cmds).map_err(Error::io("cannot write", &script))?;
    let mut child = command("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(img)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Mkfs(format!("cannot run debugfs (install e2fsprogs): {e}")))?;
    let stderr = drain(child.stderr.take().expect("piped"));
    let status = wait(&mut child, cancel)?;
    let err = stderr.join().unwrap_or_default();
    // debugfs exits 0 even when a command fails; its complaints are on stderr.
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !status.success() || !complaints.is_empty() {
        return Err(Error::Mkfs(format!(
            "setting xattrs and times with debugfs failed: {}",
            complaints.join("; ")
        )));
    }
    Ok(())
}

/// `e2fsck -fn`: the new filesystem must be clean; then it is made
/// durable, before imagestore records it (a crash must not leave a record
/// of an image whose blocks never reached the disk).
pub fn check(img: &Path, cancel: &AtomicBool) -> Result<(), Error> {
    let mut child = command("e2fsck")
        .args(["-f", "-n"])
        .arg(img)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Mkfs(format!("cannot run e2fsck (install e2fsprogs): {e}")))?;
    let stdout = drain(child.stdout.take().expect("piped"));
    let status = wait(&mut child, cancel)?;
    let out = stdout.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::Mkfs(format!(
            "e2fsck found problems in the new filesystem: {}",
            out.trim()
        )));
    }
    std::fs::File::open(img)
        .and_then(|f| f.sync_data())
        .map_err(Error::io("cannot sync", img))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_with_content_and_headroom() {
        let small = image_size(
            Stats {
                bytes: 1 << 20,
                inodes: 10,
                content: 1 << 20,
                dir_work: 0,
            },
            20,
            64,
        );
        assert!(small.0 >= 65 << 20, "{small:?}");
        assert_eq!(small.0 % (4 << 20), 0);
        assert_eq!(small.1, 8192);
        let big = image_size(
            Stats {
                bytes: 300 << 20,
                inodes: 20_000,
                content: 300 << 20,
                dir_work: 0,
            },
            20,
            64,
        );
        assert!(big.0 > 360 << 20, "{big:?}");
        assert_eq!(big.1, 30_000);
    }

    #[test]
    fn an_old_mke2fs_is_named_in_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // What e2fsprogs 1.47.0 (or one without libarchive) answers.
        let fake = dir.path().join("mke2fs");
        std::fs::write(
            &fake,
            "#!/bin/sh\n[ \"$1\" = -V ] && { echo 'mke2fs 1.47.0 (5-Feb-2023)' >&2; exit 0; }\n\
             echo '__populate_fs: No such file or directory while changing working directory to \"-\"' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = probe_once(fake.to_str().unwrap(), dir.path()).unwrap_err();
        assert!(
            err.contains("1.47.0") && err.contains("__populate_fs"),
            "{err}"
        );
        let shown = Error::MkfsCannotReadTar(err).to_string();
        assert!(
            shown.contains("1.47.1") && shown.contains("libarchive13"),
            "{shown}"
        );
        // The host's own passes (scripts/setup.sh installs it).
        probe_once("mke2fs", dir.path()).unwrap();
    }

    #[test]
    fn debugfs_quoting_and_times() {
        assert_eq!(quote(b"/a b").unwrap(), b"\"/a b\"");
        assert_eq!(quote(b"/q\"x").unwrap(), b"\"/q\"\"x\"");
        assert_eq!(quote(b"/\xff").unwrap(), b"\"/\xff\"");
        assert!(quote(b"/a\nb").is_none());
        assert_eq!(time_extra(1_600_000_000, 5), 20);
        // 2040: past the signed 32-bit seconds, epoch 1.
        assert_eq!(time_extra(2_208_988_800, 0), 1);
    }
}
