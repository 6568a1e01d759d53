//! Reconcile after a (re)start of the vmm: records are matched with the
//! processes that really run, and operations a crash cut short are
//! finished or undone.

use super::{Manager, console_tail};
use crate::error::Result;
use crate::hypervisor;
use crate::record::{self, VmState};

impl Manager {
    /// Reconciles records with reality after a (re)start: adopts live
    /// hypervisors, marks dead ones, rolls back half-done creates and
    /// finishes half-done deletes, removes dirs without a record.
    pub async fn reconcile(&self) -> Result<()> {
        self.reconcile_preparations().await;
        let (vms, orphans) = self.inner.store.list()?;
        for dir in orphans {
            tracing::warn!(dir = %dir.display(), "removing VM dir without a record");
            record::remove_dir_all(&dir)?;
        }
        for mut vm in vms {
            let paths = self.inner.store.paths_of(&vm);
            let alive = vm.pid.is_some_and(|p| hypervisor::is_ours(p, &paths));
            match vm.state {
                VmState::Creating => {
                    tracing::warn!(vm = %vm.name, "rolling back an interrupted create");
                    self.rollback(&vm).await;
                }
                VmState::Deleting => {
                    tracing::warn!(vm = %vm.name, "finishing an interrupted delete");
                    // A peer not up yet: the sweeper retries.
                    if let Err(e) = self.finish_delete(&mut vm).await {
                        tracing::warn!(vm = %vm.name, "delete left for the sweeper: {e}");
                    }
                }
                VmState::Running if vm.stop_requested => {
                    // A stop cut short: finish it.
                    tracing::warn!(vm = %vm.name, "finishing an interrupted stop");
                    self.kill_vm(&mut vm).await;
                    vm.state = VmState::Stopped;
                    vm.error = None;
                    vm.stop_requested = false;
                    self.inner.store.save(&vm)?;
                }
                VmState::Running if alive => {
                    tracing::info!(vm = %vm.name, pid = ?vm.pid, "adopting running VM");
                    self.supervise(&vm, None);
                }
                VmState::Running => {
                    hypervisor::cleanup_after_exit(&paths, vm.helper_pid);
                    vm.state = VmState::Error;
                    vm.error = Some(format!(
                        "the {} process exited while the vmm was down; last console lines:\n{}",
                        vm.backend,
                        console_tail(&paths.console_log())
                    ));
                    vm.pid = None;
                    vm.helper_pid = None;
                    self.inner.store.save(&vm)?;
                }
                VmState::Stopped | VmState::Error => {
                    if alive {
                        // A stop that was cut short: finish it.
                        self.kill_vm(&mut vm).await;
                    }
                    if vm.pid.is_some() {
                        vm.pid = None;
                        vm.helper_pid = None;
                        self.inner.store.save(&vm)?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Manager {
    /// Retries, every [`SWEEP_EVERY`], the deletes and rolled-back creates
    /// that a peer could not finish (its release failed while it was down):
    /// the lease and holds are dropped once it is back.
    pub fn spawn_sweeper(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                this.sweep_deletes().await;
            }
        });
    }

    /// One pass of the sweeper: every `deleting` record no operation holds.
    pub async fn sweep_deletes(&self) {
        let Ok((vms, _)) = self.inner.store.list() else {
            return;
        };
        for vm in vms.into_iter().filter(|v| v.state == VmState::Deleting) {
            let lock = self.lock_of(&vm.name);
            // A delete or create in flight owns it.
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            let Ok(Some(mut vm)) = self.inner.store.load(&vm.name) else {
                continue;
            };
            if vm.state != VmState::Deleting {
                continue;
            }
            match self.finish_delete(&mut vm).await {
                Ok(()) => tracing::info!(vm = %vm.name, "finished a delete left pending"),
                Err(e) => tracing::debug!(vm = %vm.name, "delete still pending: {e}"),
            }
        }
    }
}

/// How often the sweeper retries pending deletes.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::hypervisor;
    use crate::manager::NoProgress;
    use crate::record::{self, VmState};
    use crate::testing::{self, Doubles};

    #[tokio::test]
    async fn reconcile_adopts_marks_and_rolls_back() {
        let t = Doubles::new(false);
        let mgr = &t.mgr;
        let create = async |name: &str| {
            mgr.create(testing::spec(name, "img"), &NoProgress)
                .await
                .unwrap()
                .vm
        };
        let live = create("live").await;
        let half = create("half").await;
        let dead = create("dead").await;
        // "halting" was being stopped when the vmm died: its guest went
        // down (or not) while nobody watched.
        let halting = create("halting").await;
        let mut s = mgr.store().load("halting").unwrap().unwrap();
        s.stop_requested = true;
        mgr.store().save(&s).unwrap();
        hypervisor::kill(halting.pid.unwrap());
        hypervisor::wait_gone(halting.pid.unwrap(), Duration::from_secs(5)).await;
        // Let its supervisor record the exit first, then undo that.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut s = mgr.store().load("halting").unwrap().unwrap();
        s.state = VmState::Running;
        s.pid = halting.pid;
        mgr.store().save(&s).unwrap();

        // "half" looks like a create cut short by a crash, "dead" lost its
        // process while the vmm was down, "gone" was being deleted.
        let mut h = mgr.store().load("half").unwrap().unwrap();
        h.state = VmState::Creating;
        mgr.store().save(&h).unwrap();
        hypervisor::kill(dead.pid.unwrap());
        hypervisor::wait_gone(dead.pid.unwrap(), Duration::from_secs(5)).await;
        let mut gone = record::sample("gone");
        gone.state = VmState::Deleting;
        mgr.store().save(&gone).unwrap();
        std::fs::create_dir_all(t.dir.path().join("state/vms/orphan")).unwrap();
        // Undo what the first manager's supervisor may have recorded.
        let mut d = mgr.store().load("dead").unwrap().unwrap();
        d.state = VmState::Running;
        d.pid = dead.pid;
        mgr.store().save(&d).unwrap();

        let restarted = t.restarted();
        restarted.reconcile().await.unwrap();
        let h = restarted.get("halting").unwrap().vm;
        assert_eq!((h.state, h.pid), (VmState::Stopped, None), "{:?}", h.error);
        assert!(h.error.is_none() && !h.stop_requested);
        restarted.delete("halting", true).await.unwrap();
        let names: Vec<String> = restarted
            .list()
            .unwrap()
            .into_iter()
            .map(|v| v.vm.name)
            .collect();
        assert_eq!(names, ["dead", "live"]);
        let l = restarted.get("live").unwrap().vm;
        assert_eq!((l.state, l.pid), (VmState::Running, live.pid));
        let d = restarted.get("dead").unwrap().vm;
        assert_eq!(d.state, VmState::Error);
        assert!(d.error.unwrap().contains("exited while the vmm was down"));
        assert!(
            !hypervisor::pid_alive(half.pid.unwrap()),
            "half-created VM's process survived"
        );
        assert!(!t.dir.path().join("state/vms/half").exists());
        assert!(!t.dir.path().join("state/vms/gone").exists());
        assert!(!t.dir.path().join("state/vms/orphan").exists());
        let calls = t.peers.calls();
        assert!(calls.contains(&format!("release_lease {}", half.id)));
        assert!(calls.contains(&format!("release_lease {}", gone.id)));
        restarted.delete("live", true).await.unwrap();
        assert!(!hypervisor::pid_alive(live.pid.unwrap()));
    }

    #[tokio::test]
    async fn a_release_a_peer_cannot_take_is_retried_not_forgotten() {
        use std::sync::atomic::Ordering;
        let t = Doubles::new(false);
        let vm = t
            .mgr
            .create(testing::spec("held", "img"), &NoProgress)
            .await
            .unwrap()
            .vm;
        // imagestore is down (killed) while the VM is removed.
        t.peers.imagestore_down.store(true, Ordering::Relaxed);
        let err = t.mgr.delete("held", true).await.unwrap_err();
        assert!(err.to_string().contains("imagestore"), "{err}");
        // Its supervisor saw the process go: the record stays `deleting`.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let left = t.mgr.store().load("held").unwrap().expect("record kept");
        assert_eq!(left.state, VmState::Deleting);
        assert!(!hypervisor::pid_alive(vm.pid.unwrap()), "the VM is stopped");
        t.mgr.sweep_deletes().await;
        assert!(t.mgr.store().load("held").unwrap().is_some(), "still down");
        // Back up: the sweeper drops the hold and the record.
        t.peers.imagestore_down.store(false, Ordering::Relaxed);
        t.mgr.sweep_deletes().await;
        assert!(t.mgr.store().load("held").unwrap().is_none());
        assert!(
            t.peers
                .calls()
                .contains(&format!("release_image img {}", vm.id)),
            "{:?}",
            t.peers.calls()
        );
    }
}
