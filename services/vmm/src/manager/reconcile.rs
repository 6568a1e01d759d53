//! Reconcile after a (re)start of the vmm: records are matched with the
//! processes that really run, and operations a crash cut short are
//! finished or undone.

use std::collections::{BTreeMap, HashSet};

use super::{Manager, console_tail};
use crate::config::Backend;
use crate::error::Result;
use crate::hypervisor::{self, VmProcess};
use crate::record::{self, VmRecord, VmState};

impl Manager {
    /// Reconciles records with reality after a (re)start: adopts live
    /// hypervisors, marks dead ones, rolls back half-done creates and
    /// finishes half-done deletes, removes dirs without a record.
    pub async fn reconcile(&self) -> Result<()> {
        self.reconcile_preparations().await;
        self.record_orphans().await?;
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
                VmState::Orphaned if alive => {
                    tracing::warn!(vm = %vm.name, pid = ?vm.pid, "an orphaned hypervisor still runs");
                    self.complete_orphan(&mut vm).await;
                    self.inner.store.save(&vm)?;
                }
                VmState::Orphaned => {
                    hypervisor::cleanup_after_exit(&paths, vm.helper_pid);
                    vm.state = VmState::Error;
                    vm.error = Some(format!(
                        "this VM had lost its record; its {} process has exited since. `banger vm rm {}` frees its lease",
                        vm.backend, vm.name
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
    /// Finds hypervisors of this vmm (their command line names a run dir
    /// under `$RUN/vmm`) that no readable record knows — the record was
    /// deleted or is corrupt, the home was removed under them — and records
    /// each as [`VmState::Orphaned`], so `vm list` shows it and
    /// `vm rm --force` stops it and frees its tap and lease (netd keys
    /// both by the VM id, which the run dir's name is). The name is the
    /// one the process names under `$STATE/vms/` when that is free, else
    /// `orphan-<id>`; a corrupt record is kept beside as `vm.json.corrupt`.
    /// The peers say which image and kernel the id holds and its lease
    /// ([`Manager::complete_orphan`]), so the rm gives those back too.
    /// Preparation VMs (`prep-…`) are reconcile_preparations' own.
    async fn record_orphans(&self) -> Result<()> {
        let store = &self.inner.store;
        let mut by_id: BTreeMap<String, Vec<VmProcess>> = BTreeMap::new();
        for p in hypervisor::vm_processes(store.run_root()) {
            if !p.id.starts_with("prep-") {
                by_id.entry(p.id.clone()).or_default().push(p);
            }
        }
        if by_id.is_empty() {
            return Ok(());
        }
        let (vms, _) = store.list()?;
        let known: HashSet<&str> = vms.iter().map(|v| v.id.as_str()).collect();
        let mut taken: HashSet<String> = vms.iter().map(|v| v.name.clone()).collect();
        for (id, procs) in by_id {
            if known.contains(id.as_str()) {
                continue;
            }
            let main = procs
                .iter()
                .find(|p| p.is_hypervisor())
                .unwrap_or(&procs[0]);
            let helper = procs.iter().find(|p| p.pid != main.pid).map(|p| p.pid);
            let named = main
                .component_after(store.root())
                .filter(|n| banger_proto::names::validate("vm", n).is_ok() && !taken.contains(n));
            let name = named.unwrap_or_else(|| format!("orphan-{}", &id[..id.len().min(12)]));
            let record = store.paths(&name, &id).record();
            if record.exists() {
                // Unreadable (it is not in `vms`): keep it for a person.
                let aside = record.with_extension("json.corrupt");
                let _ = std::fs::rename(&record, &aside);
            }
            let backend = if main.comm == "firecracker" {
                Backend::Firecracker
            } else {
                Backend::Qemu
            };
            let mut vm = VmRecord {
                id: id.clone(),
                name: name.clone(),
                state: VmState::Orphaned,
                image: Default::default(),
                kernel: Default::default(),
                vcpus: 0,
                memory_mib: 0,
                disk_bytes: 0,
                backend,
                ssh_authorized_keys: vec![],
                ssh_host_key: None,
                nat: false,
                lease: None,
                pid: Some(main.pid),
                helper_pid: helper,
                cmdline: String::new(),
                accel: None,
                backend_why: None,
                accel_why: None,
                systemd_boot: None,
                created_unix: record::now_unix(),
                started_unix: None,
                error: Some(format!(
                    "a {backend} process of this home (pid {}, run dir {}) runs without a readable record; `banger vm rm --force {name}` stops it and frees its tap and lease",
                    main.pid,
                    store.run_root().join(&id).display()
                )),
                stop_requested: false,
            };
            tracing::warn!(vm = %name, id, pid = main.pid, "recording an orphaned hypervisor");
            self.complete_orphan(&mut vm).await;
            store.save(&vm)?;
            taken.insert(name);
        }
        Ok(())
    }
}

impl Manager {
    /// Fills in what an orphan's record lacks (image, kernel, lease) from
    /// what the peers hold for its id. At the vmm's start they may not be
    /// up yet: then `vm rm` asks again, before it releases anything.
    pub(super) async fn complete_orphan(&self, vm: &mut VmRecord) {
        if !vm.image.name.is_empty() && !vm.kernel.name.is_empty() && vm.lease.is_some() {
            return;
        }
        match self.inner.peers.holds_of(&vm.id).await {
            Ok(holds) => {
                if vm.image.name.is_empty() {
                    vm.image.name = holds.image.unwrap_or_default();
                }
                if vm.kernel.name.is_empty() {
                    vm.kernel.name = holds.kernel.unwrap_or_default();
                }
                if vm.lease.is_none() {
                    vm.nat = holds.lease.as_ref().is_some_and(|l| l.nat);
                    vm.lease = holds.lease;
                }
            }
            Err(e) => {
                tracing::warn!(vm = %vm.name, "cannot ask the peers what an orphan holds (yet): {e}");
            }
        }
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
    async fn hypervisors_without_a_record_are_listed_as_orphans_and_rm_force_ends_them() {
        let t = Doubles::new(false);
        let mut vms = Vec::new();
        for name in ["lost", "corrupt", "wiped"] {
            vms.push(
                t.mgr
                    .create(testing::spec(name, "img"), &NoProgress)
                    .await
                    .unwrap()
                    .vm,
            );
        }
        let state = t.dir.path().join("state/vms");
        // One record deleted, one corrupt, one VM dir removed whole (as
        // when the home's state is deleted under running VMs).
        std::fs::remove_file(state.join("lost/vm.json")).unwrap();
        std::fs::write(state.join("corrupt/vm.json"), b"{ not json").unwrap();
        std::fs::remove_dir_all(state.join("wiped")).unwrap();
        assert_eq!(t.mgr.list().unwrap().len(), 0);

        // The vmm starts before imagestore answers (`banger up` starts
        // them together): the orphans are recorded without their holds.
        t.peers
            .imagestore_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let restarted = t.restarted();
        restarted.reconcile().await.unwrap();
        t.peers
            .imagestore_down
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let listed = restarted.list().unwrap();
        let names: Vec<&str> = listed.iter().map(|v| v.vm.name.as_str()).collect();
        assert_eq!(names, ["corrupt", "lost", "wiped"]);
        assert!(
            listed
                .iter()
                .all(|v| v.vm.image.name.is_empty() && v.vm.lease.is_none())
        );
        for (view, created) in listed.iter().zip([&vms[1], &vms[0], &vms[2]]) {
            let vm = &view.vm;
            assert_eq!(vm.state, VmState::Orphaned, "{vm:?}");
            assert_eq!((vm.pid, &vm.id), (created.pid, &created.id));
            let why = vm.error.clone().unwrap();
            assert!(
                why.contains(&format!("pid {}", created.pid.unwrap()))
                    && why.contains(&format!("banger vm rm --force {}", vm.name)),
                "{why}"
            );
            assert!(hypervisor::pid_alive(created.pid.unwrap()));
        }
        assert!(state.join("corrupt/vm.json.corrupt").is_file());

        // Not without --force; with it: process gone, dir gone, and what the
        // peers (up by now) hold for its id given back.
        assert!(matches!(
            restarted.delete("lost", false).await,
            Err(crate::error::Error::WrongState { .. })
        ));
        for (name, vm) in [("lost", &vms[0]), ("corrupt", &vms[1]), ("wiped", &vms[2])] {
            restarted.delete(name, true).await.unwrap();
            assert!(!hypervisor::pid_alive(vm.pid.unwrap()), "{name} still runs");
            assert!(!state.join(name).exists(), "{name}'s dir is left");
            let calls = t.peers.calls();
            for call in [
                format!("release_lease {}", vm.id),
                format!("release_image img {}", vm.id),
                format!("release_kernel {} {}", vm.kernel.name, vm.id),
            ] {
                assert!(calls.contains(&call), "no {call}: {calls:?}");
            }
        }
        assert!(restarted.list().unwrap().is_empty());
        // A second restart finds nothing left to adopt.
        let again = t.restarted();
        again.reconcile().await.unwrap();
        assert!(again.list().unwrap().is_empty());
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
