//! Tiny guests for the real-hypervisor tier: a busybox-static root ext4
//! whose `/init` prints a marker and powers off, made with `mkfs.ext4 -d`.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The marker the guest's init prints on the console.
pub const MARKER: &str = "BANGER-TEST-GUEST-UP";

/// Builds `dir/guest.ext4` (64 MiB): busybox, and `/init` that prints
/// [`MARKER`] plus `extra` shell lines, then `poweroff -f`.
pub fn busybox_ext4(dir: &Path, extra: &str) -> PathBuf {
    banger_test_support::require_program("mkfs.ext4", "e2fsprogs");
    banger_test_support::require_program("busybox", "busybox-static");
    let tree = dir.join("guest-tree");
    for d in ["bin", "sbin", "proc", "sys", "dev", "etc", "tmp", "root"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap();
    std::fs::copy(busybox, tree.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).unwrap();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         echo {MARKER} hostname=$(/bin/busybox cat /etc/hostname)\n\
         {extra}\n\
         /bin/busybox poweroff -f\n"
    );
    std::fs::write(tree.join("init"), init).unwrap();
    std::fs::set_permissions(tree.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Kernels boot /sbin/init when the command line names no init.
    std::os::unix::fs::symlink("/init", tree.join("sbin/init")).unwrap();
    let img = dir.join("guest.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("64M")
        .status()
        .unwrap();
    assert!(status.success(), "mkfs.ext4 failed");
    img
}

/// Polls `path` until it contains `needle` or `secs` pass.
pub async fn wait_for_text(path: &Path, needle: &str, secs: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}
