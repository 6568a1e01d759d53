//! Supervision: one task per running VM waits for its hypervisor to exit
//! (a child it can reap, or an adopted pid it polls), cleans up after it
//! and records the exit, unless an operation already handled it.

use std::time::Duration;

use super::{Manager, console_tail};
use crate::hypervisor;
use crate::record::{VmRecord, VmState};

impl Manager {
    /// Watches the hypervisor of `vm` until it exits, then cleans up and
    /// records the exit unless an operation already did.
    pub(super) fn supervise(&self, vm: &VmRecord, child: Option<tokio::process::Child>) {
        let Some(pid) = vm.pid else { return };
        let (name, id, helper) = (vm.name.clone(), vm.id.clone(), vm.helper_pid);
        let this = self.clone();
        tokio::spawn(async move {
            let status = match child {
                Some(mut c) => c.wait().await.ok(),
                None => {
                    while hypervisor::pid_alive(pid) {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    None
                }
            };
            let lock = this.lock_of(&name);
            let _guard = lock.lock().await;
            let Ok(Some(mut vm)) = this.inner.store.load(&name) else {
                return;
            };
            if vm.id != id || vm.pid != Some(pid) {
                return; // an operation already handled this exit
            }
            if vm.state.is_busy() {
                // The create rolls back, the delete finishes (or reconcile
                // or the sweeper does): a `deleting` record never turns
                // back into `error`.
                return;
            }
            let paths = this.inner.store.paths_of(&vm);
            hypervisor::cleanup_after_exit(&paths, helper);
            vm.pid = None;
            vm.helper_pid = None;
            match status {
                Some(s) if s.success() => vm.state = VmState::Stopped,
                other => {
                    vm.state = VmState::Error;
                    vm.error = Some(format!(
                        "the {} process exited unexpectedly ({}); last console lines:\n{}",
                        vm.backend,
                        other.map_or("status unknown".into(), |s| s.to_string()),
                        console_tail(&paths.console_log())
                    ));
                }
            }
            if let Err(e) = this.inner.store.save(&vm) {
                tracing::error!(vm = %name, "cannot record exit: {e}");
            }
            tracing::info!(vm = %name, state = ?vm.state, "hypervisor exited");
        });
    }
}
