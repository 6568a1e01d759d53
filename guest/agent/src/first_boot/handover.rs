//! The image's init and what it must start: find systemd or openrc, enable
//! `banger-agent` and the SSH server with symlinks (what `systemctl enable`
//! / `rc-update add` would do, without running them), give the serial
//! console a login that does not wait for udev, and exec the init.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;

use super::error::FirstBootError;
use super::events::Console;
use super::root::Root;

const AGENT_UNIT: &str = "/etc/systemd/system/banger-agent.service";
const AGENT_OPENRC: &str = "/etc/init.d/banger-agent";
const GETTY: &str = "/etc/systemd/system/serial-getty@ttyS0.service";
const GETTY_UNIT: &str = include_str!("../../../units/serial-getty@ttyS0.service");

/// The init first boot hands over to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// systemd at this guest path.
    Systemd(String),
    /// openrc-init (or `/sbin/init` of an openrc system) at this path.
    Openrc(String),
}

impl Init {
    pub fn path(&self) -> &str {
        match self {
            Init::Systemd(p) | Init::Openrc(p) => p,
        }
    }
}

/// The image's init, if it has one first boot knows.
pub fn find(root: &Root) -> Option<Init> {
    for p in ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"] {
        if root.is_executable(p) {
            return Some(Init::Systemd(p.into()));
        }
    }
    let has_openrc = ["/sbin/openrc", "/usr/sbin/openrc", "/sbin/openrc-run"]
        .iter()
        .any(|p| root.is_executable(p));
    if has_openrc {
        for p in ["/sbin/openrc-init", "/usr/sbin/openrc-init", "/sbin/init"] {
            if root.is_executable(p) || root.exists_no_follow(p) {
                return Some(Init::Openrc(p.into()));
            }
        }
    }
    None
}

/// Whether the image has an SSH server.
pub fn has_ssh_server(root: &Root) -> bool {
    ["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"]
        .iter()
        .any(|p| root.is_executable(p))
}

fn link(root: &Root, console: &Console, target: &str, at: &str) -> Result<(), FirstBootError> {
    if root.link(target, at)? {
        console.log(format!("linked {at} -> {target}"));
    }
    Ok(())
}

/// The first existing unit file among `names`.
fn find_unit(root: &Root, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        [
            "/etc/systemd/system",
            "/usr/lib/systemd/system",
            "/lib/systemd/system",
        ]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| root.is_file(p))
    })
}

/// Enables what a banger VM needs under `init`.
pub fn setup(root: &Root, init: &Init, console: &Console) -> Result<(), FirstBootError> {
    match init {
        Init::Systemd(_) => setup_systemd(root, console),
        Init::Openrc(_) => setup_openrc(root, console),
    }
}

fn setup_systemd(root: &Root, console: &Console) -> Result<(), FirstBootError> {
    // The optional second disk never gets a udev event: without the mask
    // anything waiting on it stalls boot for 90 s. dev-ttyS0.device is not
    // masked: the console getty below does not need it.
    link(
        root,
        console,
        "/dev/null",
        "/etc/systemd/system/dev-vdb.device",
    )?;
    if root.is_file(AGENT_UNIT) {
        link(
            root,
            console,
            AGENT_UNIT,
            "/etc/systemd/system/sysinit.target.wants/banger-agent.service",
        )?;
    } else {
        console.warn(format!(
            "{AGENT_UNIT} is missing; the host will fall back to SSH for readiness"
        ));
    }
    match find_unit(root, &["ssh.service", "sshd.service"]) {
        Some(unit) => {
            let name = unit.rsplit('/').next().unwrap_or_default().to_owned();
            link(
                root,
                console,
                &unit,
                &format!("/etc/systemd/system/multi-user.target.wants/{name}"),
            )?;
        }
        None => {
            console.warn("no ssh.service or sshd.service in the image; SSH will not be available")
        }
    }
    if root.is_executable("/sbin/agetty") && !root.exists_no_follow(GETTY) {
        root.write(GETTY, GETTY_UNIT.as_bytes(), 0o644)?;
        console.log(format!("wrote {GETTY} (console login without udev)"));
    }
    if root.is_file(GETTY) {
        link(
            root,
            console,
            GETTY,
            "/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service",
        )?;
    }
    Ok(())
}

fn setup_openrc(root: &Root, console: &Console) -> Result<(), FirstBootError> {
    if root.is_file(AGENT_OPENRC) {
        link(
            root,
            console,
            AGENT_OPENRC,
            "/etc/runlevels/default/banger-agent",
        )?;
    } else {
        console.warn(format!(
            "{AGENT_OPENRC} is missing; the host will fall back to SSH for readiness"
        ));
    }
    if root.is_file("/etc/init.d/sshd") {
        link(
            root,
            console,
            "/etc/init.d/sshd",
            "/etc/runlevels/default/sshd",
        )?;
    } else {
        console.warn("no /etc/init.d/sshd; SSH will not be available");
    }
    for svc in ["devfs", "sysfs"] {
        let script = format!("/etc/init.d/{svc}");
        if root.is_file(&script) {
            link(
                root,
                console,
                &script,
                &format!("/etc/runlevels/sysinit/{svc}"),
            )?;
        }
    }
    Ok(())
}

/// Generates SSH host keys only when the image has none at all (vmm
/// normally injects the VM's own key, so this is a fallback).
pub fn ssh_host_keys(root: &Root, console: &Console) {
    if !root.is_system() || !has_ssh_server(root) {
        return;
    }
    let has_key = root
        .list("/etc/ssh")
        .iter()
        .any(|n| n.starts_with("ssh_host_") && n.ends_with("_key"));
    if has_key {
        return;
    }
    let Some(keygen) = super::install::find_program(root, "ssh-keygen") else {
        return;
    };
    console.log("no SSH host key in the image; generating them (ssh-keygen -A)");
    match std::process::Command::new(keygen).arg("-A").status() {
        Ok(s) if s.success() => {}
        other => console.warn(format!("ssh-keygen -A failed: {other:?}")),
    }
}

/// Execs `init` with the kernel's leftover arguments; returns only on failure.
pub fn exec(root: &Root, init: &str, args: &[OsString]) -> FirstBootError {
    let source = std::process::Command::new(root.resolve(init))
        .arg0(init)
        .args(args)
        .env("PATH", super::distro::PATH)
        .exec();
    FirstBootError::Exec {
        init: init.into(),
        source,
    }
}
