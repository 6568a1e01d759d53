//! Readiness: what proves a booted guest is usable. The agent answers
//! where the image has it, SSH where it has an SSH server; a guest with
//! neither must at least write to its console. Capabilities the image
//! cannot have are reported as skipped. With an agent, "sshd listens" is
//! what the guest's own socket table says (the agent's WaitListening), so
//! the host never probes port 22; agent-less images (and agents older
//! than that call) get the TCP probe. All of it runs while the console is
//! watched for a first-boot failure (lifecycle.rs).

use std::time::{Duration, Instant};

use banger_proto::guest::FirstBootEvent;

use super::progress::Phases;
use super::{Manager, VmView};
use crate::error::{Error, Result, Want};
use crate::firstboot::{ConsoleFollower, GuestFailure};
use crate::guest::Listening;
use crate::record::{VmRecord, VmState};

/// The result of one readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub capability: &'static str,
    pub state: &'static str,
    pub detail: String,
}

impl Manager {
    /// Probes every capability the image declares, within `timeout` in all.
    pub(super) async fn probe(&self, vm: &VmRecord, timeout: Duration) -> Result<Vec<Probe>> {
        let paths = self.inner.store.paths_of(vm);
        let started = Instant::now();
        let mut probes = Vec::new();
        if vm.image.has_agent {
            let version = self.inner.guest.ping(&paths.vsock(), timeout).await?;
            probes.push(Probe {
                capability: "agent",
                state: "ready",
                detail: format!(
                    "banger-agent {version} after {:.1}s",
                    started.elapsed().as_secs_f64()
                ),
            });
        } else {
            probes.push(Probe {
                capability: "agent",
                state: "skipped",
                detail: "the image has no banger agent".into(),
            });
        }
        // Every capability the image declares must answer: sshd too, so a
        // `vm ssh` right after create works.
        match (&vm.lease, vm.image.has_ssh_server) {
            (Some(lease), true) => {
                let remaining = timeout.saturating_sub(started.elapsed());
                let seen = if vm.image.has_agent {
                    self.ssh_listening_inside(vm, &lease.ip, remaining).await?
                } else {
                    None
                };
                let how = match seen {
                    Some(address) => format!("sshd listens on {address} inside the guest"),
                    None => {
                        let remaining = timeout.saturating_sub(started.elapsed());
                        wait_ssh(&lease.ip, remaining).await?;
                        format!("{}:22 answers", lease.ip)
                    }
                };
                probes.push(Probe {
                    capability: "ssh",
                    state: "ready",
                    detail: format!("{how} after {:.1}s", started.elapsed().as_secs_f64()),
                });
            }
            _ => probes.push(Probe {
                capability: "ssh",
                state: "skipped",
                detail: "the image has no SSH server".into(),
            }),
        }
        if probes.iter().all(|p| p.state == "skipped") {
            // Nothing in the guest can answer: the least we can know is
            // that the kernel runs and writes to its console.
            wait_console(&paths.console_log(), timeout).await?;
            probes.push(Probe {
                capability: "console",
                state: "ready",
                detail: "the kernel is writing to the console".into(),
            });
        }
        Ok(probes)
    }

    /// Asks the agent (which has answered already) to wait until sshd
    /// listens, as the guest's own socket table shows it: no TCP probe
    /// from the host, so sshd forks no throwaway child under a slow guest.
    /// `None` when the agent is too old to tell: probe TCP instead.
    async fn ssh_listening_inside(
        &self,
        vm: &VmRecord,
        ip: &str,
        timeout: Duration,
    ) -> Result<Option<String>> {
        let vsock = self.inner.store.paths_of(vm).vsock();
        match self.inner.guest.wait_listening(&vsock, 22, timeout).await? {
            Listening::Yes { address } => Ok(Some(address)),
            Listening::Unsupported => Ok(None),
            Listening::No => Err(Error::SshNotReady {
                ip: ip.into(),
                timeout,
                last: "the guest agent saw nothing listening on port 22".into(),
            }),
        }
    }

    /// Waits until a VM is ready (for `WaitReady`).
    pub async fn wait_ready(&self, name: &str, timeout_secs: u32) -> Result<VmView> {
        let vm = Self::require(self.load(name)?, VmState::can_reach_guest, Want::Running)?;
        let probes = self.probe(&vm, self.ready_timeout(timeout_secs)).await?;
        self.set_probes(&vm.id, probes);
        Ok(self.view(vm))
    }
}

/// Follows first boot on the console until it reports a failure (never
/// returns otherwise), passing on what an install in this boot reports.
pub(super) async fn first_boot_failure(
    console: &std::path::Path,
    phase: &Phases<'_>,
) -> GuestFailure {
    let mut follower = ConsoleFollower::new(console);
    loop {
        for event in follower.poll() {
            if let Some(failure) = GuestFailure::from_event(&event) {
                return failure;
            }
            match event {
                FirstBootEvent::Installing { manager, packages } => {
                    let msg = format!("first boot installs {} with {manager}", packages.join(", "));
                    phase.update(msg, 0, 0).await;
                }
                FirstBootEvent::Progress {
                    step,
                    done,
                    total,
                    detail,
                } => {
                    let msg = format!("first boot: {step} {detail}").trim_end().to_owned();
                    phase.update(msg, done, total).await;
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the console log is not empty.
async fn wait_console(log: &std::path::Path, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) == 0 {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::ConsoleSilent { timeout });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// TCP connect to `ip:22` and read an `SSH-` banner, retrying until `timeout`.
async fn wait_ssh(ip: &str, timeout: Duration) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no attempt");
    while tokio::time::Instant::now() < deadline {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect((ip, 22)).await?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await?;
            if &buf == b"SSH-" {
                Ok(())
            } else {
                Err(std::io::Error::other("not an SSH banner"))
            }
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(Error::SshNotReady {
        ip: ip.into(),
        timeout,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_console_times_out_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let err = wait_console(&log, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("wrote nothing to its console"),
            "{err}"
        );
        std::fs::write(&log, "Linux version").unwrap();
        wait_console(&log, Duration::from_millis(100))
            .await
            .unwrap();
    }
}
