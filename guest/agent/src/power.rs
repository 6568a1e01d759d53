//! Powering the guest off or rebooting it, behind a small trait so the
//! service logic is tested with a recording double and only the real
//! implementation touches the machine.
//!
//! How [`SystemPower`] does it, by init system:
//! - systemd is PID 1: `systemctl poweroff|reboot`. systemd then stops the
//!   services (sshd, the user's workloads) and unmounts filesystems in order;
//!   calling reboot(2) behind its back would skip all of that.
//! - openrc: the distro's `poweroff` / `reboot`, which go through init for
//!   the same reason.
//! - banger-first-boot supervising the agent (busybox images): poweroff is
//!   SIGPWR to PID 1, which stops everything, remounts `/` read-only and
//!   powers off;
//! - anything else (a busybox initramfs, a bare `/bin/sh` init): there is no
//!   service manager to ask, so `sync(2)` then `reboot(2)` with
//!   `RB_POWER_OFF` / `RB_AUTOBOOT` — what `poweroff -f` does.
//!
//! If the polite way fails, the direct way is the fallback.

use std::path::Path;
use std::process::Command;

use crate::AgentError;
use crate::system::{InitSystem, detect_init};

/// Powers the machine off or reboots it.
pub trait Power: Send + Sync + 'static {
    /// Starts a poweroff (`reboot == false`) or a reboot. May not return
    /// on success.
    fn shutdown(&self, reboot: bool) -> Result<(), AgentError>;
}

/// The real implementation; see the module docs.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemPower;

impl Power for SystemPower {
    #[tracing::instrument(skip(self))]
    fn shutdown(&self, reboot: bool) -> Result<(), AgentError> {
        let action = if reboot { "reboot" } else { "poweroff" };
        let polite = match detect_init(Path::new("/")) {
            InitSystem::Systemd => Some(Command::new("systemctl").arg(action).status()),
            InitSystem::Openrc => Some(Command::new(action).status()),
            // banger-first-boot supervising us (busybox images): it stops
            // everything and remounts / read-only before powering off.
            InitSystem::Other if !reboot && pid1_is_first_boot() => {
                match nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(1),
                    nix::sys::signal::Signal::SIGPWR,
                ) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(%e, "cannot signal banger-first-boot; powering off directly");
                        None
                    }
                }
            }
            InitSystem::Other => None,
        };
        match polite {
            Some(Ok(status)) if status.success() => return Ok(()),
            Some(other) => {
                tracing::warn!(?other, "asking init failed; powering off directly")
            }
            None => {}
        }
        nix::unistd::sync();
        let mode = if reboot {
            nix::sys::reboot::RebootMode::RB_AUTOBOOT
        } else {
            nix::sys::reboot::RebootMode::RB_POWER_OFF
        };
        // reboot(2) only returns on failure.
        let err = nix::sys::reboot::reboot(mode).unwrap_err();
        Err(AgentError::Power {
            action,
            detail: err.to_string(),
        })
    }
}

/// Whether PID 1 is banger-first-boot's supervisor (`comm` is cut at 15 bytes).
fn pid1_is_first_boot() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "banger-first-bo")
}

/// A test double that records requests instead of acting on them.
#[derive(Debug, Default)]
pub struct RecordingPower {
    /// Every `reboot` argument received, in order.
    pub calls: std::sync::Mutex<Vec<bool>>,
}

impl Power for RecordingPower {
    fn shutdown(&self, reboot: bool) -> Result<(), AgentError> {
        self.calls.lock().expect("not poisoned").push(reboot);
        Ok(())
    }
}
