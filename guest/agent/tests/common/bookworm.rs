//! Cached Debian bookworm trees for the first-boot tests (priv_nspawn.rs,
//! priv_qemu.rs): debootstrapped on first use into `target/test-cache/`, and a
//! local apt repository with what a minbase lacks for an init and sshd.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A cached bookworm rootfs (`minbase` plus `include`), debootstrapped on
/// first use; one recipe for every crate's tests.
pub use banger_test_support::fixtures::debootstrap;
/// `target/test-cache/`, shared with every crate's tests.
pub use banger_test_support::fixtures::test_cache_dir as cache_dir;

/// Bookworm with systemd (the image case "systemd present").
pub fn bookworm() -> PathBuf {
    debootstrap("bookworm-systemd", Some("systemd,systemd-sysv,dbus"))
}

/// A local apt repository (`Packages` + .debs) with everything a minbase
/// bookworm lacks for `systemd-sysv openssh-server`, built once with
/// `apt-get install --download-only` in a chroot (the Debian mirror is the
/// allowed registry) and `dpkg-scanpackages`; the container that installs
/// from it has no network.
pub fn init_repo(minbase: &Path) -> PathBuf {
    let repo = cache_dir().join("bookworm-init-repo");
    if repo.join("Packages").exists() {
        return repo;
    }
    banger_test_support::require_program("dpkg-scanpackages", "dpkg-dev");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    copy_tree(minbase, &root);
    let _ = std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"));
    let status = Command::new("chroot")
        .arg(&root)
        .args([
            "sh",
            "-c",
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -q -y \
             --download-only --no-install-recommends systemd-sysv openssh-server",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "apt-get --download-only failed: {status}");
    let partial = cache_dir().join("bookworm-init-repo.partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).unwrap();
    for entry in std::fs::read_dir(root.join("var/cache/apt/archives")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "deb") {
            std::fs::copy(&path, partial.join(path.file_name().unwrap())).unwrap();
        }
    }
    let out = Command::new("dpkg-scanpackages")
        .args([".", "/dev/null"])
        .current_dir(&partial)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-scanpackages failed");
    std::fs::write(partial.join("Packages"), out.stdout).unwrap();
    std::fs::rename(&partial, &repo).unwrap();
    repo
}

pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a {} failed", from.display());
}
