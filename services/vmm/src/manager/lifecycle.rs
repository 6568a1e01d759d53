//! Start, stop, restart and delete, and the boot and teardown they share
//! with create and reconcile. Which operation may act on which state is
//! [`VmState`]'s to say.

use std::time::Duration;

use tracing::Instrument;

use super::progress::{NoProgress, Phases};
use super::{Manager, VmView, console_tail, readiness, tail_lines};
use crate::cmdline::{self, CmdlineSpec};
use crate::error::{Error, Result, Want};
use crate::hypervisor::{self, LaunchSpec};
use crate::record::{self, VmRecord, VmState};

impl Manager {
    /// Launches the hypervisor, waits for readiness and records `running`.
    /// On failure the process is gone again (the caller decides the state).
    pub(super) async fn boot(
        &self,
        vm: &mut VmRecord,
        phase: &Phases<'_>,
        timeout: Duration,
    ) -> Result<()> {
        let store = &self.inner.store;
        let backend = self.backend(vm.backend)?;
        let paths = store.paths_of(vm);
        let accel = backend.accelerator();
        phase.check()?;
        phase
            .start(
                "booting",
                format!(
                    "{} ({}): {}",
                    vm.backend,
                    accel.name,
                    vm.backend_why.as_deref().unwrap_or("configured")
                ),
            )
            .await;
        vm.cmdline = cmdline::build(&CmdlineSpec {
            hostname: &vm.name,
            lease: vm.lease.as_ref(),
            direct_boot: vm.image.direct_boot,
            systemd: vm.systemd_boot.map(|b| cmdline::SystemdCmdline {
                masked_units: &self.inner.cfg.masked_units,
                has_udev: b.udev,
            }),
            tsc_khz: if backend.emulated() {
                self.inner.tsc_khz
            } else {
                None
            },
        });
        // A fresh console log per boot keeps failure tails about this boot.
        let _ = std::fs::write(paths.console_log(), b"");
        let launched = backend
            .launch(&LaunchSpec {
                id: vm.id.clone(),
                kernel: vm.kernel.vmlinux_path.clone(),
                initrd: vm.kernel.initrd_path.clone(),
                cmdline: vm.cmdline.clone(),
                disk: paths.disk(),
                vcpus: vm.vcpus,
                memory_mib: vm.memory_mib,
                net: vm.lease.as_ref().map(|l| (l.tap.clone(), l.mac.clone())),
                vsock: true,
                paths: paths.clone(),
            })
            .instrument(phase.span())
            .await?;
        vm.pid = Some(launched.pid);
        vm.helper_pid = launched.helper_pid;
        vm.accel = launched.accel.clone();
        vm.accel_why = Some(backend.accelerator().why).filter(|w| !w.is_empty());
        vm.started_unix = Some(record::now_unix());
        vm.error = None;
        store.save(vm)?;
        self.supervise(vm, Some(launched.child));
        phase.end().await;

        phase
            .start("waiting", "for the guest to be ready".into())
            .await;
        let pid = launched.pid;
        let console = paths.console_log();
        let ready = tokio::select! {
            r = self.probe(vm, timeout).instrument(phase.span()) => r,
            // A caller that went away ends a create's wait (the VM is killed
            // and rolled back); never a start's, which has no caller to lose.
            e = phase.gone() => Err(e),
            // A first boot that says it failed ends the wait at once.
            failure = readiness::first_boot_failure(&console, phase) => {
                Err(Error::FirstBootFailed { vm: vm.name.clone(), failure })
            }
            _ = hypervisor::wait_gone(pid, Duration::from_secs(365 * 86_400)) => Err(Error::Boot {
                cause: format!(
                    "the {} process exited during boot; its log ends:\n{}",
                    vm.backend,
                    tail_lines(&paths.hypervisor_log(), 10)
                ),
                console_tail: console_tail(&paths.console_log()),
            }),
        };
        match ready {
            Ok(probes) => {
                self.set_probes(&vm.id, probes);
                phase.end().await;
                vm.state = VmState::Running;
                store.save(vm)?;
                phase.start("ready", String::new()).await;
                Ok(())
            }
            Err(e) => {
                self.kill_vm(vm).await;
                Err(e)
            }
        }
    }

    /// Kills the VM's processes at once and cleans up after them.
    pub(super) async fn kill_vm(&self, vm: &mut VmRecord) {
        let paths = self.inner.store.paths_of(vm);
        if let Some(pid) = vm.pid
            && hypervisor::is_ours(pid, &paths)
        {
            hypervisor::kill(pid);
            hypervisor::wait_gone(pid, Duration::from_secs(10)).await;
        }
        hypervisor::cleanup_after_exit(&paths, vm.helper_pid);
        vm.pid = None;
        vm.helper_pid = None;
    }

    /// Drops the VM's lease and holds (the peers treat a repeated release
    /// as done). Every release is tried; the first failure is returned, so
    /// the caller keeps the record (`deleting`) for a later retry instead of
    /// forgetting a hold that a peer still keeps.
    pub(super) async fn release_all(&self, vm: &VmRecord) -> Result<()> {
        let peers = &self.inner.peers;
        let mut first = None;
        if let Err(e) = peers.release_lease(&vm.id).await {
            tracing::warn!(vm = %vm.name, "cannot release lease: {e}");
            first.get_or_insert(e);
        }
        if !vm.kernel.name.is_empty()
            && let Err(e) = peers.release_kernel(&vm.kernel.name, &vm.id).await
        {
            tracing::warn!(vm = %vm.name, "cannot release kernel hold: {e}");
            first.get_or_insert(e);
        }
        // An orphaned VM's record (see reconcile) knows no image or kernel.
        if !vm.image.name.is_empty()
            && let Err(e) = peers.release_image(&vm.image.name, &vm.id).await
        {
            tracing::warn!(vm = %vm.name, "cannot release image hold: {e}");
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Starts a stopped VM and waits for readiness.
    #[tracing::instrument(skip(self))]
    pub async fn start(&self, name: &str, ready_timeout_secs: u32) -> Result<VmView> {
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        let mut vm = Self::require(self.load(name)?, |s| !s.is_busy(), Want::Settled)?;
        if !vm.state.can_start() {
            return Ok(self.view(vm)); // already running
        }
        let phases = Phases::new(&NoProgress, &vm.name);
        let timeout = self.ready_timeout(ready_timeout_secs);
        if let Err(e) = self.boot(&mut vm, &phases, timeout).await {
            vm.state = VmState::Error;
            vm.error = Some(e.to_string());
            self.inner.store.save(&vm)?;
            return Err(e);
        }
        Ok(self.view(vm))
    }

    /// Stops a VM: agent shutdown and the backend's own request, a kill
    /// after `timeout_secs`; or a kill at once with `force`.
    #[tracing::instrument(skip(self))]
    pub async fn stop(&self, name: &str, force: bool, timeout_secs: u32) -> Result<VmView> {
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        let mut vm = Self::require(self.load(name)?, |s| !s.is_busy(), Want::Settled)?;
        if !vm.state.can_stop() {
            return Ok(self.view(vm)); // already stopped, or failed
        }
        let timeout = Duration::from_secs(u64::from(if timeout_secs == 0 {
            self.inner.cfg.stop_timeout_secs
        } else {
            timeout_secs
        }));
        // Recorded first: a vmm killed mid-stop finds the VM stopped, not failed.
        vm.stop_requested = true;
        self.inner.store.save(&vm)?;
        self.shutdown(&mut vm, force, timeout).await;
        vm.state = VmState::Stopped;
        vm.error = None;
        vm.stop_requested = false;
        self.inner.store.save(&vm)?;
        self.forget_probes(&vm.id);
        Ok(self.view(vm))
    }

    async fn shutdown(&self, vm: &mut VmRecord, force: bool, timeout: Duration) {
        let paths = self.inner.store.paths_of(vm);
        if let Some(pid) = vm.pid.filter(|p| hypervisor::is_ours(*p, &paths))
            && !force
        {
            // Both clean paths, best effort: the agent powers the guest off
            // (the clean path under microvm, which has no ACPI button the
            // guest always honours); the backend's own request covers
            // guests without an agent.
            if vm.image.has_agent {
                let vsock = paths.vsock();
                let asked = self.inner.guest.shutdown(&vsock);
                match tokio::time::timeout(Duration::from_secs(5), asked).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!("agent shutdown: {e}"),
                    Err(e) => tracing::debug!("agent shutdown: {e}"),
                }
            }
            if let Ok(backend) = self.backend(vm.backend)
                && let Err(e) = backend.request_stop(&paths).await
            {
                tracing::debug!("backend stop request: {e}");
            }
            if !hypervisor::wait_gone(pid, timeout).await {
                tracing::warn!(vm = %vm.name, "did not stop within {timeout:?}; killing it");
            }
        }
        self.kill_vm(vm).await;
    }

    /// Stop then start.
    pub async fn restart(
        &self,
        name: &str,
        timeout_secs: u32,
        ready_timeout_secs: u32,
    ) -> Result<VmView> {
        self.stop(name, false, timeout_secs).await?;
        self.start(name, ready_timeout_secs).await
    }

    /// Deletes a VM and everything it owns.
    #[tracing::instrument(skip(self))]
    pub async fn delete(&self, name: &str, force: bool) -> Result<()> {
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        let vm = match self.load(name) {
            // `vm rm` of a name whose last create failed drops its kept log.
            Err(Error::NotFound { .. }) if self.evidence_of(name).is_some() => {
                self.forget_evidence(name);
                return Ok(());
            }
            r => r?,
        };
        let mut vm = Self::require(vm, |s| s.can_delete(force), Want::NotRunning)?;
        if vm.state == VmState::Orphaned {
            // What it holds, if reconcile could not ask the peers yet.
            self.complete_orphan(&mut vm).await;
        }
        vm.state = VmState::Deleting;
        self.inner.store.save(&vm)?;
        self.finish_delete(&mut vm).await
    }

    /// The part of a delete after `deleting` is recorded; reconcile
    /// repeats it for a delete cut short.
    /// A release a peer could not take (it was down) leaves the record
    /// `deleting`, retried by [`Manager::sweep_deletes`].
    pub(super) async fn finish_delete(&self, vm: &mut VmRecord) -> Result<()> {
        self.kill_vm(vm).await;
        vm.state = VmState::Deleting;
        // Unsaved (e.g. disk full), the releases and removal still run.
        if let Err(e) = self.inner.store.save(vm) {
            tracing::warn!(vm = %vm.name, "cannot record `deleting`: {e}");
        }
        self.release_all(vm).await?;
        self.inner.store.remove(vm)?;
        self.forget_probes(&vm.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::hypervisor;
    use crate::manager::PhaseEvent;
    use crate::record::VmState;
    use crate::testing::{self, Doubles};

    #[tokio::test]
    async fn create_stop_delete_with_doubles() {
        let t = Doubles::new(false);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let view = t.mgr.create(testing::spec("a", "img"), &tx).await.unwrap();
        let mut phases = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let PhaseEvent {
                phase,
                seconds: Some(_),
                ..
            } = ev
            {
                phases.push(phase);
            }
        }
        assert_eq!(
            phases,
            [
                "resolving",
                "network",
                "disk",
                "identity",
                "booting",
                "waiting"
            ]
        );
        let vm = view.vm;
        assert_eq!(vm.state, VmState::Running);
        assert_eq!(vm.kernel.name, "debian-6.12", "configured default kernel");
        assert_eq!(vm.disk_bytes, 8 << 20, "image size plus headroom");
        assert!(vm.cmdline.contains("tsc_early_khz=1000000"));
        assert!(
            vm.cmdline
                .contains("ip=10.99.0.5::10.99.0.1:255.255.255.0:a:eth0:off")
        );
        let pid = vm.pid.unwrap();
        assert_eq!(
            t.peers.calls(),
            [
                format!("resolve_image img {}", vm.id),
                format!("resolve_kernel debian-6.12 {}", vm.id),
                format!("allocate {} true", vm.id),
            ]
        );
        // The image has no agent: the guest double was never asked.
        assert!(t.guest.calls().is_empty());
        let err = t.mgr.delete("a", false).await.unwrap_err();
        assert!(matches!(err, Error::WrongState { .. }), "{err}");
        let stopped = t.mgr.stop("a", true, 0).await.unwrap();
        assert_eq!(stopped.vm.state, VmState::Stopped);
        assert!(!hypervisor::pid_alive(pid));
        assert!(!t.mgr.store().paths_of(&vm).run.exists(), "sockets left");
        let err = t.mgr.agent("a").await.unwrap_err();
        assert!(err.to_string().contains("banger vm start a"), "{err}");
        t.mgr.delete("a", false).await.unwrap();
        assert!(!t.dir.path().join("state/vms/a").exists());
        let calls = t.peers.calls();
        assert!(calls.contains(&format!("release_lease {}", vm.id)));
        assert!(calls.contains(&format!("release_kernel debian-6.12 {}", vm.id)));
        assert!(calls.contains(&format!("release_image img {}", vm.id)));
    }

    #[tokio::test]
    async fn the_agent_answers_readiness_and_is_asked_to_power_off() {
        let t = Doubles::with_agent(true);
        let view = t
            .mgr
            .create(testing::spec("g", "img"), &crate::manager::NoProgress)
            .await
            .unwrap();
        let agent = view.probes.iter().find(|p| p.capability == "agent");
        assert_eq!(agent.map(|p| p.state), Some("ready"), "{:?}", view.probes);
        // A graceful stop asks the agent first; the double's guest ignores
        // it, so the timeout kills the process.
        let stopped = t.mgr.stop("g", false, 1).await.unwrap();
        assert_eq!(stopped.vm.state, VmState::Stopped);
        assert!(stopped.probes.is_empty(), "probes of a stopped VM");
        assert_eq!(t.guest.calls(), ["ping", "shutdown"]);
        let err = t.mgr.start("g", 0).await;
        assert!(err.is_ok(), "{err:?}");
        t.mgr.delete("g", true).await.unwrap();
    }
}
