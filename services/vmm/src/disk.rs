//! The VM's own disk: a writable copy of the image's ext4 (a reflink where
//! the filesystem allows, else a sparse copy), grown to the requested size,
//! with the per-VM identity written into it before the first boot with
//! `debugfs -w` — no mount, no privilege (DESIGN §5).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use banger_proto::guest::{IDENTITY_APPLIED_PATH, IDENTITY_PATH, STATE_DIR};

use crate::error::{Error, Result};

/// How a disk copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// FICLONE: shares extents, instant.
    Reflink,
    /// Only the data extents were copied; holes stay holes.
    Sparse,
}

impl std::fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::Sparse => "sparse copy",
        })
    }
}

/// Copies `src` to a new file `dst` (which must not exist): a reflink
/// (FICLONE) where the filesystem shares extents (XFS, Btrfs), else a
/// sparse copy. On failure `dst` is removed (a full disk leaves nothing).
pub fn copy_image(src: &Path, dst: &Path) -> Result<CopyMethod> {
    let input = File::open(src).map_err(Error::io("cannot open image", src))?;
    // What a sparse copy writes at most: the image's allocated blocks. A
    // reflink needs none of it, so on a filesystem that can share extents
    // this is only checked once the clone is refused.
    let needed = input
        .metadata()
        .map_err(Error::io("cannot stat image", src))?
        .blocks()
        * 512;
    let output = File::options()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(Error::io("cannot create disk", dst))?;
    if reflink(&input, &output) {
        return Ok(CopyMethod::Reflink);
    }
    // Not fsynced here: the identity write that follows at create
    // (`debugfs -w`, whose close flushes and fsyncs the whole file) makes
    // the copy durable together with the identity, in one sync instead of
    // two; a host crash before then leaves a `creating` record, which
    // reconcile rolls back.
    if let Err(full) = banger_proto::fsutil::ensure_room(dst, needed) {
        let _ = std::fs::remove_file(dst);
        return Err(Error::NoSpace(full));
    }
    if let Err(e) = sparse_copy(&input, &output) {
        // Ours since create_new: a full disk leaves no partial copy behind.
        let err = Error::io("cannot copy image to", dst)(e);
        let _ = std::fs::remove_file(dst);
        return Err(match err {
            // Measured once the partial copy is gone: what is really free.
            Error::NoSpace(_) => Error::NoSpace(banger_proto::fsutil::NoSpace::at(dst, needed)),
            e => e,
        });
    }
    Ok(CopyMethod::Sparse)
}

/// FICLONE: `output` shares all of `input`'s extents. False where the
/// filesystem cannot (ext4, tmpfs: EOPNOTSUPP; across filesystems: EXDEV).
fn reflink(input: &File, output: &File) -> bool {
    // FICLONE = _IOW(0x94, 9, int)
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds
    // are open for the duration of the call and nothing else is passed.
    unsafe { libc::ioctl(output.as_raw_fd(), FICLONE, input.as_raw_fd()) == 0 }
}

/// Copies the data extents of `input` (SEEK_DATA/SEEK_HOLE), and within them
/// skips all-zero blocks, so the copy stays as sparse as the image.
fn sparse_copy(input: &File, output: &File) -> std::io::Result<()> {
    use nix::unistd::{Whence, lseek};
    let len = input.metadata()?.len();
    output.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        let data = match lseek(input, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole remains
            // No SEEK_DATA support: treat the whole rest as data.
            Err(nix::errno::Errno::EINVAL) => pos,
            Err(e) => return Err(e.into()),
        };
        let hole = match lseek(input, data, Whence::SeekHole) {
            Ok(h) => h,
            Err(_) => len as i64,
        };
        let mut off = data;
        while off < hole {
            let want = ((hole - off) as usize).min(buf.len());
            let n = input.read_at(&mut buf[..want], off as u64)?;
            if n == 0 {
                break;
            }
            for (i, block) in buf[..n].chunks(4096).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    output.write_all_at(block, off as u64 + (i * 4096) as u64)?;
                }
            }
            off += n as i64;
        }
        pos = hole;
    }
    Ok(())
}

/// Grows the ext4 in `disk` to `bytes` (never shrinks).
pub fn grow(disk: &Path, bytes: u64) -> Result<()> {
    let file = File::options()
        .write(true)
        .open(disk)
        .map_err(Error::io("cannot open disk", disk))?;
    let len = file
        .metadata()
        .map_err(Error::io("cannot stat disk", disk))?
        .len();
    if bytes <= len {
        return Ok(());
    }
    file.set_len(bytes)
        .map_err(Error::io("cannot extend disk", disk))?;
    drop(file);
    let resize = || run_tool(Command::new("resize2fs").arg(disk));
    if resize().is_err() {
        // resize2fs wants a freshly checked filesystem; check and retry.
        let _ = run_tool(Command::new("e2fsck").arg("-fp").arg(disk));
        resize()?;
    }
    Ok(())
}

/// The per-VM identity: one type shared with the guest's first boot.
pub use banger_proto::guest::Identity;

/// Where sshd finds the VM's host key, and the image's own host keys that
/// are removed so sshd serves only the VM's.
const HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key";

/// Writes `identity` and everything first boot would make of it into the
/// ext4 at `disk`: `/etc/hostname`, the `127.0.1.1` line of `/etc/hosts`,
/// `/etc/resolv.conf` (when the identity names DNS servers; a symlink there
/// is replaced), root's `authorized_keys` (0600 in a 0700 dir, owned by
/// root), a fresh SSH host key made here on the host
/// (`/etc/ssh/ssh_host_ed25519_key`, 0600, and its `.pub`, 0644; the
/// image's own host keys are removed, so no two VMs of an image share one
/// and the guest never runs keygen), and — for an ordinary VM — the
/// applied stamp ([`IDENTITY_APPLIED_PATH`]), so first boot finds nothing
/// left to do. Reads `identity.json` and the public key back to prove they
/// landed, and returns the public key (one `ssh-ed25519 AAAA… <hostname>`
/// line) for clients to verify the guest by.
pub fn write_identity(disk: &Path, identity: &Identity) -> Result<String> {
    Ok(prepare(disk, identity, None)?.host_key)
}

/// How to prepare an image that has systemd for booting it directly
/// (`init=` systemd, no first boot before it).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemdPrep {
    /// Drop Debian's `ssh.service` `ExecStartPre=sshd -t`: a second sshd
    /// run that only re-checks the image's own, unchanged sshd_config
    /// (sshd refuses a broken one at start anyway); about a second of
    /// every TCG boot, on the path to SSH.
    pub skip_sshd_config_check: bool,
}

/// What [`prepare`] did and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The VM's SSH host public key line.
    pub host_key: String,
    /// Set when prepared for a direct systemd boot: whether the image has
    /// udevd (without it no device unit ever appears, so the command line
    /// must mask the ones systemd would wait for).
    pub systemd_has_udev: Option<bool>,
}

/// Where udevd lives in the images banger knows (merged /usr or not).
const UDEVD: [&str; 3] = [
    "/usr/lib/systemd/systemd-udevd",
    "/lib/systemd/systemd-udevd",
    "/sbin/udevd",
];
/// Debian's SSH unit, whose `sshd -t` pre-check [`SystemdPrep`] drops.
const SSH_UNITS: [&str; 2] = [
    "/usr/lib/systemd/system/ssh.service",
    "/lib/systemd/system/ssh.service",
];
const SSH_DROPIN_DIR: &str = "/etc/systemd/system/ssh.service.d";

/// [`write_identity`], and with `systemd` also what a direct systemd boot
/// needs in the disk (see [`SystemdPrep`]).
pub fn prepare(disk: &Path, identity: &Identity, systemd: Option<SystemdPrep>) -> Result<Prepared> {
    let tmp = tempfile::Builder::new()
        .prefix(".identity-")
        .tempdir_in(disk.parent().unwrap_or(Path::new("/tmp")))
        .map_err(Error::io("cannot create temp dir beside", disk))?;
    let mut json = serde_json::to_string_pretty(identity).expect("identity serializes");
    json.push('\n');
    let keys: String = identity
        .ssh_authorized_keys
        .iter()
        .map(|k| format!("{}\n", k.trim()))
        .collect();
    let hosts = hosts_with(
        &String::from_utf8_lossy(&read_file(disk, "/etc/hosts").unwrap_or_default()),
        &identity.hostname,
    );
    let resolv: String = identity
        .dns
        .iter()
        .map(|d| format!("nameserver {d}\n"))
        .collect();
    let stamp = banger_proto::guest::identity_applied_stamp(json.as_bytes());
    let files = [
        ("identity.json", json.as_str()),
        ("hostname", &format!("{}\n", identity.hostname)),
        ("authorized_keys", keys.as_str()),
        ("hosts", hosts.as_str()),
        ("resolv.conf", resolv.as_str()),
        ("applied", stamp.as_str()),
    ];
    for (name, content) in files {
        std::fs::write(tmp.path().join(name), content)
            .map_err(Error::io("cannot write", tmp.path().join(name)))?;
    }
    let host_public = generate_host_key(&tmp.path().join("host_key"), &identity.hostname)?;
    let host = |n: &str| tmp.path().join(n).display().to_string();
    // debugfs parses its command file by whitespace; our temp path has none
    // unless the state dir does, which we refuse rather than mis-write.
    if tmp.path().to_string_lossy().contains(char::is_whitespace) {
        return Err(Error::UnusableStateDir {
            path: tmp.path().to_path_buf(),
        });
    }
    let mut script = String::new();
    // debugfs's mkdir of an existing directory leaks an inode and corrupts
    // link counts (e2fsprogs 1.47), so only make the ones that are missing.
    for dir in [
        "/etc",
        "/etc/banger",
        "/etc/ssh",
        "/root",
        "/root/.ssh",
        "/var",
        "/var/lib",
        STATE_DIR,
    ] {
        if !exists(disk, dir)? {
            script.push_str(&format!("mkdir {dir}\n"));
        }
    }
    for name in image_host_keys(disk)? {
        script.push_str(&format!("rm /etc/ssh/{name}\n"));
    }
    let mut systemd_has_udev = None;
    let mut ssh_dropin = false;
    if let Some(prep) = systemd {
        let mut has_udev = false;
        for path in UDEVD {
            has_udev |= exists(disk, path)?;
        }
        systemd_has_udev = Some(has_udev);
        let mut has_ssh_unit = false;
        for path in SSH_UNITS {
            has_ssh_unit |= exists(disk, path)?;
        }
        if prep.skip_sshd_config_check && has_ssh_unit {
            std::fs::write(
                tmp.path().join("ssh-dropin"),
                "# banger: the image's sshd_config is unchanged; sshd checks it at start.\n\
                 [Service]\nExecStartPre=\n",
            )
            .map_err(Error::io("cannot write", tmp.path().join("ssh-dropin")))?;
            for dir in ["/etc/systemd", "/etc/systemd/system", SSH_DROPIN_DIR] {
                if !exists(disk, dir)? {
                    script.push_str(&format!("mkdir {dir}\n"));
                }
            }
            ssh_dropin = true;
        }
    }
    let mut put = |guest: &str, local: &str, mode: &str| {
        script.push_str(&format!(
            "rm {guest}\nwrite {} {guest}\nsif {guest} mode {mode}\nsif {guest} uid 0\nsif {guest} gid 0\n",
            host(local)
        ));
    };
    put(IDENTITY_PATH, "identity.json", "0100644");
    put("/etc/hostname", "hostname", "0100644");
    put("/root/.ssh/authorized_keys", "authorized_keys", "0100600");
    put(HOST_KEY, "host_key", "0100600");
    put(&format!("{HOST_KEY}.pub"), "host_key.pub", "0100644");
    if ssh_dropin {
        put(
            &format!("{SSH_DROPIN_DIR}/banger-no-config-check.conf"),
            "ssh-dropin",
            "0100644",
        );
    }
    put("/etc/hosts", "hosts", "0100644");
    if !identity.dns.is_empty() {
        put("/etc/resolv.conf", "resolv.conf", "0100644");
    }
    // Only where the identity is all there is to apply: a preparation VM
    // or one with first-boot network settings leaves first boot its work.
    if identity.purpose == banger_proto::guest::Purpose::Vm && identity.network.is_empty() {
        put(IDENTITY_APPLIED_PATH, "applied", "0100644");
    }
    script.push_str("sif /root/.ssh mode 040700\nsif /root/.ssh uid 0\nsif /root/.ssh gid 0\n");
    let script_path = tmp.path().join("commands");
    File::create(&script_path)
        .and_then(|mut f| f.write_all(script.as_bytes()))
        .map_err(Error::io("cannot write", &script_path))?;
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(disk)
        .output()
        .map_err(|e| tool_missing("debugfs", e))?;
    // debugfs exits 0 even when a command fails; its complaints are on
    // stderr. "not found" (rm of a file the image lacks) is expected;
    // anything else is a real failure.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .filter(|l| !l.contains("File not found by ext2_lookup"))
        .collect();
    if !out.status.success() || !problems.is_empty() {
        return Err(Error::tool(
            "debugfs",
            format!(
                "writing the VM identity into {} failed: {}",
                disk.display(),
                problems.join("; ")
            ),
        ));
    }
    let back = read_file(disk, IDENTITY_PATH)?;
    let key_back = read_file(disk, &format!("{HOST_KEY}.pub"))?;
    if back != json.as_bytes() || key_back != format!("{host_public}\n").as_bytes() {
        return Err(Error::tool(
            "debugfs",
            format!(
                "identity.json or the SSH host key read back from {} differs from what was written",
                disk.display()
            ),
        ));
    }
    Ok(Prepared {
        host_key: host_public,
        systemd_has_udev,
    })
}

/// `/etc/hosts` with `127.0.1.1` naming `hostname` (the Debian convention
/// first boot follows): that line replaced, or added; localhost lines
/// added when the file had none.
fn hosts_with(existing: &str, hostname: &str) -> String {
    let mut out = String::new();
    if !existing
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("localhost"))
    {
        out.push_str("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n");
    }
    let mut replaced = false;
    for line in existing.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            if !replaced {
                out.push_str(&format!("127.0.1.1\t{hostname}\n"));
                replaced = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    out
}

/// Makes an ed25519 key pair at `path` and `path.pub` with `ssh-keygen`
/// (no passphrase, `comment` as its comment) and returns the public line.
fn generate_host_key(path: &Path, comment: &str) -> Result<String> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Error::tool(
                "ssh-keygen",
                format!(
                    "cannot run it ({e}); install openssh-client (`apt-get install openssh-client`)"
                ),
            )
        })?;
    if !out.status.success() {
        return Err(Error::tool(
            "ssh-keygen",
            format!(
                "making the VM's SSH host key failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let public = path.with_extension("pub");
    let line = std::fs::read_to_string(&public).map_err(Error::io("cannot read", &public))?;
    Ok(line.trim().to_owned())
}

/// The image's SSH host key files in `/etc/ssh` (`ssh_host_*_key` and
/// `.pub`); names outside that pattern are never handed to debugfs.
fn image_host_keys(disk: &Path) -> Result<Vec<String>> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg("ls -p /etc/ssh")
        .arg(disk)
        .output()
        .map_err(|e| tool_missing("debugfs", e))?;
    // `ls -p` prints `/inode/mode/uid/gid/name/size/` per entry; a missing
    // /etc/ssh prints nothing on stdout.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split('/').nth(5).map(str::to_owned))
        .filter(|name| is_host_key_name(name))
        .collect())
}

/// `ssh_host_<type>_key` or `ssh_host_<type>_key.pub`, `<type>` of
/// `[a-z0-9_]`.
fn is_host_key_name(name: &str) -> bool {
    let base = name.strip_suffix(".pub").unwrap_or(name);
    base.strip_prefix("ssh_host_")
        .and_then(|t| t.strip_suffix("_key"))
        .is_some_and(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Checks and repairs the ext4 at `disk` (`e2fsck -fy`): after a guest
/// that may have been killed rather than shut down.
pub fn repair(disk: &Path) -> Result<()> {
    let out = Command::new("e2fsck")
        .arg("-fy")
        .arg(disk)
        .output()
        .map_err(|e| tool_missing("e2fsck", e))?;
    // 0: clean, 1: errors corrected. Anything else is a filesystem we
    // cannot hand to VMs.
    match out.status.code() {
        Some(0 | 1) => Ok(()),
        _ => Err(Error::tool(
            "e2fsck",
            format!(
                "{} is damaged beyond repair: {}",
                disk.display(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        )),
    }
}

/// Whether `guest_path` exists in the ext4 image.
pub fn exists(disk: &Path, guest_path: &str) -> Result<bool> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {guest_path}"))
        .arg(disk)
        .output()
        .map_err(|e| tool_missing("debugfs", e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("File not found") {
        return Ok(false);
    }
    if !out.status.success() || !out.stdout.starts_with(b"Inode:") {
        return Err(Error::tool(
            "debugfs",
            format!("cannot inspect {}: {}", disk.display(), stderr.trim()),
        ));
    }
    Ok(true)
}

/// Reads a file out of an ext4 image (`debugfs -R cat`).
pub fn read_file(disk: &Path, guest_path: &str) -> Result<Vec<u8>> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {guest_path}"))
        .arg(disk)
        .output()
        .map_err(|e| tool_missing("debugfs", e))?;
    if !out.status.success() {
        return Err(Error::tool(
            "debugfs",
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(out.stdout)
}

fn tool_missing(tool: &str, e: std::io::Error) -> Error {
    Error::tool(
        tool,
        format!("cannot run it ({e}); install e2fsprogs (`apt-get install e2fsprogs`)"),
    )
}

fn run_tool(cmd: &mut Command) -> Result<()> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| tool_missing(&tool, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::tool(
            tool,
            format!(
                "failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mkfs(dir: &Path, size: &str) -> std::path::PathBuf {
        banger_test_support::require_program("mkfs.ext4", "e2fsprogs");
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), "image-default\n").unwrap();
        std::fs::write(tree.join("etc/os-release"), "ID=test\n").unwrap();
        // The host keys every VM of this image would share without ours.
        std::fs::create_dir_all(tree.join("etc/ssh")).unwrap();
        for key in [
            "ssh_host_rsa_key",
            "ssh_host_rsa_key.pub",
            "ssh_host_ecdsa_key",
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
        ] {
            std::fs::write(tree.join("etc/ssh").join(key), "image's own key\n").unwrap();
        }
        std::fs::write(tree.join("etc/ssh/sshd_config"), "# kept\n").unwrap();
        let img = dir.join("image.ext4");
        run_tool(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&tree)
                .arg(&img)
                .arg(size),
        )
        .unwrap();
        img
    }

    fn identity() -> Identity {
        Identity {
            hostname: "testbox".into(),
            ssh_authorized_keys: vec![
                "ssh-ed25519 AAAAC3Nza one@host".into(),
                "ssh-rsa AAAAB two".into(),
            ],
            dns: vec!["1.1.1.1".into()],
            ip: Some("172.30.0.5/24".into()),
            gateway: Some("172.30.0.1".into()),
            ..Identity::default()
        }
    }

    #[test]
    fn copy_grow_and_identity_on_a_real_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let img = mkfs(dir.path(), "16M");
        let disk = dir.path().join("rootfs.ext4");
        copy_image(&img, &disk).unwrap();
        assert_eq!(
            std::fs::metadata(&disk).unwrap().len(),
            std::fs::metadata(&img).unwrap().len()
        );
        grow(&disk, 64 << 20).unwrap();
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 64 << 20);
        // The filesystem itself grew: dumpe2fs reports 64 MiB of blocks.
        let out = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&disk)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let blocks: u64 = field(&text, "Block count:").parse().unwrap();
        let bsize: u64 = field(&text, "Block size:").parse().unwrap();
        assert_eq!(blocks * bsize, 64 << 20);

        let id = identity();
        let first_key = write_identity(&disk, &id).unwrap();
        // Twice: the second write replaces, it does not fail on existing files.
        let host_key = write_identity(&disk, &id).unwrap();
        assert!(host_key.starts_with("ssh-ed25519 AAAA"), "{host_key}");
        assert_ne!(first_key, host_key, "a fresh host key per write");
        assert_eq!(
            read_file(&disk, "/etc/ssh/ssh_host_ed25519_key.pub").unwrap(),
            format!("{host_key}\n").as_bytes()
        );
        let private = read_file(&disk, "/etc/ssh/ssh_host_ed25519_key").unwrap();
        assert!(
            private.starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----"),
            "{}",
            String::from_utf8_lossy(&private)
        );
        // sshd serves only ours: the image's other host keys are gone, the
        // rest of /etc/ssh stays.
        for gone in [
            "ssh_host_rsa_key",
            "ssh_host_rsa_key.pub",
            "ssh_host_ecdsa_key",
        ] {
            assert!(
                !exists(&disk, &format!("/etc/ssh/{gone}")).unwrap(),
                "{gone} left in the VM's disk"
            );
        }
        assert_eq!(
            read_file(&disk, "/etc/ssh/sshd_config").unwrap(),
            b"# kept\n"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&read_file(&disk, "/etc/banger/identity.json").unwrap())
                .unwrap();
        assert_eq!(json["hostname"], "testbox");
        assert_eq!(json["ip"], "172.30.0.5/24");
        assert_eq!(json["gateway"], "172.30.0.1");
        assert_eq!(json["dns"][0], "1.1.1.1");
        assert_eq!(json["ssh_authorized_keys"][1], "ssh-rsa AAAAB two");
        assert_eq!(read_file(&disk, "/etc/hostname").unwrap(), b"testbox\n");
        assert_eq!(
            read_file(&disk, "/root/.ssh/authorized_keys").unwrap(),
            b"ssh-ed25519 AAAAC3Nza one@host\nssh-rsa AAAAB two\n"
        );
        assert_eq!(read_file(&disk, "/etc/os-release").unwrap(), b"ID=test\n");
        let stat = |p: &str| {
            let out = Command::new("debugfs")
                .arg("-R")
                .arg(format!("stat {p}"))
                .arg(&disk)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let keys = stat("/root/.ssh/authorized_keys");
        assert!(keys.contains("Mode:  0600"), "{keys}");
        assert!(keys.contains("User:     0   Group:     0"), "{keys}");
        let ssh = stat("/root/.ssh");
        assert!(ssh.contains("Mode:  0700"), "{ssh}");
        let private = stat("/etc/ssh/ssh_host_ed25519_key");
        assert!(private.contains("Mode:  0600"), "{private}");
        assert!(private.contains("User:     0   Group:     0"), "{private}");
        let public = stat("/etc/ssh/ssh_host_ed25519_key.pub");
        assert!(public.contains("Mode:  0644"), "{public}");
        // The image itself was never written.
        assert_eq!(
            read_file(&img, "/etc/hostname").unwrap(),
            b"image-default\n"
        );
        // fsck agrees the result is a clean filesystem.
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&disk)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }

    #[test]
    fn prepare_for_systemd_writes_what_first_boot_would() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc/ssh")).unwrap();
        std::fs::create_dir_all(tree.join("usr/lib/systemd/system")).unwrap();
        std::fs::write(
            tree.join("etc/hosts"),
            "127.0.0.1 localhost\n127.0.1.1 image-default\n10.1.1.1 other\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            tree.join("etc/resolv.conf"),
        )
        .unwrap();
        std::fs::write(
            tree.join("usr/lib/systemd/system/ssh.service"),
            "[Service]\n",
        )
        .unwrap();
        std::fs::write(tree.join("usr/lib/systemd/systemd-udevd"), "").unwrap();
        let disk = dir.path().join("d.ext4");
        run_tool(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&tree)
                .arg(&disk)
                .arg("16M"),
        )
        .unwrap();
        let id = identity();
        let p = prepare(
            &disk,
            &id,
            Some(SystemdPrep {
                skip_sshd_config_check: true,
            }),
        )
        .unwrap();
        assert_eq!(p.systemd_has_udev, Some(true));
        let text = |p: &str| String::from_utf8(read_file(&disk, p).unwrap()).unwrap();
        assert_eq!(
            text("/etc/hosts"),
            "127.0.0.1 localhost\n127.0.1.1\ttestbox\n10.1.1.1 other\n"
        );
        assert_eq!(text("/etc/resolv.conf"), "nameserver 1.1.1.1\n");
        assert!(
            text("/etc/systemd/system/ssh.service.d/banger-no-config-check.conf")
                .contains("[Service]\nExecStartPre=\n")
        );
        // The stamp first boot compares with: nothing left for it to do.
        let json = read_file(&disk, IDENTITY_PATH).unwrap();
        assert_eq!(
            text(IDENTITY_APPLIED_PATH),
            banger_proto::guest::identity_applied_stamp(&json)
        );
        // Without udevd, and for a VM whose first boot has work (network
        // settings), no stamp.
        let dir2 = tempfile::tempdir().unwrap();
        let bare = mkfs(dir2.path(), "16M");
        let mut busy = identity();
        busy.network.http_proxy = Some("http://proxy:3128".into());
        let p = prepare(&bare, &busy, Some(SystemdPrep::default())).unwrap();
        assert_eq!(p.systemd_has_udev, Some(false));
        assert!(!exists(&bare, IDENTITY_APPLIED_PATH).unwrap());
        assert!(!exists(&bare, SSH_DROPIN_DIR).unwrap());
        // A file-less /etc/hosts gets localhost lines too.
        assert!(text_of(&bare, "/etc/hosts").starts_with("127.0.0.1\tlocalhost\n"));
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&disk)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }

    fn text_of(disk: &Path, p: &str) -> String {
        String::from_utf8(read_file(disk, p).unwrap()).unwrap()
    }

    #[test]
    fn sparse_copy_keeps_holes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(32 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 16 << 20).unwrap();
        f.write_all_at(&[0u8; 8192], 20 << 20).unwrap(); // zero data: stays a hole
        drop(f);
        let dst = dir.path().join("dst");
        let input = File::open(&src).unwrap();
        let output = File::create(&dst).unwrap();
        sparse_copy(&input, &output).unwrap();
        drop(output);
        let data = std::fs::read(&dst).unwrap();
        assert_eq!(data.len(), 32 << 20);
        assert_eq!(&data[..4], b"head");
        assert_eq!(&data[16 << 20..(16 << 20) + 6], b"middle");
        let meta = std::fs::metadata(&dst).unwrap();
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "copy is not sparse: {} blocks",
            meta.blocks()
        );
    }

    #[test]
    fn only_host_key_names_are_removed() {
        for ok in [
            "ssh_host_rsa_key",
            "ssh_host_ecdsa_key.pub",
            "ssh_host_ed25519_key",
        ] {
            assert!(is_host_key_name(ok), "{ok}");
        }
        for other in [
            "sshd_config",
            "moduli",
            "ssh_host__key",
            "ssh_host_rsa_key.bak",
            "ssh_host_a b_key",
            "ssh_host_x_key\nrm /etc/passwd",
        ] {
            assert!(!is_host_key_name(other), "{other}");
        }
    }

    #[test]
    fn copy_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        assert!(copy_image(&a, &a).is_err());
    }

    fn field<'a>(text: &'a str, name: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
    }
}
