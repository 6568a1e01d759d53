//! The API filesystems PID 1 needs before anything else (what the kernel
//! leaves to init): `/proc`, `/sys`, `/dev` (devtmpfs), `/run`, each only
//! if not mounted yet (the initramfs moves its own in), and `/` writable.

use nix::mount::{MsFlags, mount};

use super::error::{FirstBootError, io};
use super::events::Console;

fn mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(target))
    })
}

fn mount_fs(
    fstype: &str,
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
    console: &Console,
) -> Result<(), FirstBootError> {
    if target == "/proc" && std::path::Path::new("/proc/self").exists() {
        return Ok(());
    }
    if mounted(target) {
        return Ok(());
    }
    let _ = std::fs::create_dir_all(target);
    console.log(format!("mounting {fstype} on {target}"));
    match mount(Some(fstype), target, Some(fstype), flags, data) {
        // The kernel's CONFIG_DEVTMPFS_MOUNT got there first.
        Ok(()) | Err(nix::Error::EBUSY) => Ok(()),
        Err(errno) => Err(FirstBootError::Mount {
            what: format!("{fstype} on {target}"),
            errno,
        }),
    }
}

/// Mounts what is missing and makes `/` writable.
pub fn mount_all(console: &Console) -> Result<(), FirstBootError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", nosuid_nodev_noexec, None, console)?;
    mount_fs("sysfs", "/sys", nosuid_nodev_noexec, None, console)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
        console,
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
        console,
    )?;
    // The kernel command line says `rw`, but be sure before writing.
    let probe = "/etc/.banger-rw";
    if std::fs::write(probe, b"").is_err() {
        console.log("remounting / read-write");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|errno| FirstBootError::Mount {
            what: "/ read-write (remount)".into(),
            errno,
        })?;
        std::fs::write(probe, b"").map_err(io("cannot write", probe))?;
    }
    let _ = std::fs::remove_file(probe);
    Ok(())
}
