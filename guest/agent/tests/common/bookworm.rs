//! Cached Debian bookworm trees for the first-boot tests (nspawn.rs,
//! qemu.rs): debootstrapped on first use into `target/test-cache/`, and a
//! local apt repository with what a minbase lacks for an init and sshd.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache")
}

/// A cached bookworm rootfs (`minbase` plus `include`), debootstrapped on
/// first use into `target/test-cache/<name>`.
pub fn debootstrap(name: &str, include: Option<&str>) -> PathBuf {
    let cache = cache_dir();
    let rootfs = cache.join(name);
    if rootfs.join("etc/os-release").exists() {
        return rootfs;
    }
    banger_test_support::require_program("debootstrap", "debootstrap");
    let partial = cache.join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&cache).unwrap();
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "debootstrap", "--variant=minbase"]);
    if let Some(include) = include {
        cmd.arg(format!("--include={include}"));
    }
    let status = cmd
        .arg("bookworm")
        .arg(&partial)
        .arg("http://deb.debian.org/debian")
        .status()
        .expect("run debootstrap");
    assert!(status.success(), "debootstrap failed: {status}");
    std::fs::rename(&partial, &rootfs).unwrap();
    rootfs
}

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
