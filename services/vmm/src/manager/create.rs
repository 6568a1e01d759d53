//! Create: a record saved first (so a crash leaves a `creating` record for
//! reconcile to roll back), then resolve, network, disk, identity and boot,
//! each a phase; any failure rolls back everything made so far.

use tracing::Instrument;

use super::progress::{Phases, Progress};
use super::{Manager, VmView, console_tail, needs_preparation};
use crate::config::Backend;
use crate::disk::{self, Identity};
use crate::error::{Error, Result};
use crate::record::{self, ImageInfo, VmRecord, VmState};

/// What a create asks for (0 / None mean "use the configured default").
#[derive(Debug, Clone, Default)]
pub struct CreateSpec {
    pub name: String,
    pub image: String,
    pub kernel: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub nat: bool,
    pub no_start: bool,
    pub backend: Option<Backend>,
    pub ssh_authorized_keys: Vec<String>,
    pub ready_timeout_secs: u32,
}

impl Manager {
    /// Creates a VM, reporting its phases to `progress`; on failure
    /// everything made is rolled back and the error carries the console's
    /// tail. A create of an existing VM with the same spec answers with it.
    #[tracing::instrument(skip_all, fields(vm = %spec.name))]
    pub async fn create(&self, spec: CreateSpec, progress: &dyn Progress) -> Result<VmView> {
        banger_proto::names::validate("vm", &spec.name)?;
        banger_proto::names::validate("image", &spec.image)?;
        // Kernel names (dotted: `generic-6.12`), sizes, timeouts and SSH keys
        // are checked at the API edge (service.rs, validate.rs).
        let cfg = &self.inner.cfg;
        let vcpus = if spec.vcpus == 0 {
            cfg.default_vcpus
        } else {
            spec.vcpus
        };
        let memory_mib = if spec.memory_mib == 0 {
            cfg.default_memory_mib
        } else {
            spec.memory_mib
        };
        if !(1..=64).contains(&vcpus) || memory_mib < 64 {
            return Err(Error::InvalidSize { vcpus, memory_mib });
        }
        let (backend, backend_why) = match spec.backend {
            Some(b) => (b, format!("requested (--hypervisor {b})")),
            None => {
                let d = &self.inner.default_backend;
                (d.backend, d.why.clone())
            }
        };
        self.backend(backend)?;
        let lock = self.lock_of(&spec.name);
        let _guard = lock.lock().await;
        if let Some(existing) = self.inner.store.load(&spec.name)? {
            let same = existing.image.name == spec.image
                && spec
                    .kernel
                    .as_ref()
                    .is_none_or(|k| *k == existing.kernel.name)
                && existing.vcpus == vcpus
                && existing.memory_mib == memory_mib
                && existing.nat == spec.nat
                && existing.backend == backend
                && existing.state.can_answer_create();
            if same {
                return Ok(self.view(existing));
            }
            return Err(Error::AlreadyExists { name: spec.name });
        }
        let mut vm = VmRecord {
            id: record::new_id(),
            name: spec.name.clone(),
            state: VmState::Creating,
            image: ImageInfo {
                name: spec.image.clone(),
                ..Default::default()
            },
            kernel: Default::default(),
            vcpus,
            memory_mib,
            disk_bytes: spec.disk_bytes,
            backend,
            nat: spec.nat,
            ssh_authorized_keys: spec.ssh_authorized_keys.clone(),
            ssh_host_key: None,
            lease: None,
            pid: None,
            helper_pid: None,
            cmdline: String::new(),
            accel: None,
            backend_why: Some(backend_why),
            accel_why: None,
            systemd_boot: None,
            created_unix: record::now_unix(),
            started_unix: None,
            stop_requested: false,
            error: None,
        };
        // A new attempt replaces the evidence of an older failed one.
        self.forget_evidence(&spec.name);
        // Saved first: a crash from here on leaves a `creating` record that
        // reconcile rolls back.
        self.inner.store.save(&vm)?;
        let result = self.create_steps(&mut vm, &spec, progress).await;
        match result {
            Ok(view) => Ok(view),
            Err(e) => {
                let tail = console_tail(&self.inner.store.paths_of(&vm).console_log());
                tracing::warn!(error = %e, "create failed; rolling back");
                let e = match e {
                    Error::Boot { .. }
                    | Error::FirstBootFailed { .. }
                    | Error::CallerGone { .. } => e,
                    e if vm.pid.is_some() || !tail.is_empty() => Error::Boot {
                        cause: e.to_string(),
                        console_tail: tail.clone(),
                    },
                    e => e,
                };
                // The guest's console says why; keep it past the rollback
                // (a failed preparation's is the preparation VM's).
                let kept = match &e {
                    // Nothing failed: nobody is left to read the evidence.
                    Error::CallerGone { .. } => false,
                    Error::PreparationFailed { log, .. } => {
                        self.keep_evidence_from(&vm, log, &e.to_string())
                    }
                    _ => !tail.is_empty() && self.keep_evidence(&vm, &e.to_string()),
                };
                self.rollback(&vm).await;
                Err(if kept {
                    Error::EvidenceKept {
                        name: vm.name.clone(),
                        source: Box::new(e),
                    }
                } else {
                    e
                })
            }
        }
    }

    async fn create_steps(
        &self,
        vm: &mut VmRecord,
        spec: &CreateSpec,
        progress: &dyn Progress,
    ) -> Result<VmView> {
        let store = &self.inner.store;
        let peers = &self.inner.peers;
        let phase = Phases::new(progress, &vm.name);

        // A create is work only its caller wanted: once the caller went
        // away, it stops before its next step (or during a long wait) and
        // rolls back (proto/README.md, "Long operations and cancellation").
        phase.check()?;
        phase
            .start("resolving", format!("image {}", spec.image))
            .await;
        vm.image = peers
            .resolve_image(&spec.image, &vm.id)
            .instrument(phase.span())
            .await?;
        store.save(vm)?;
        let kernel = spec
            .kernel
            .clone()
            .or_else(|| Some(vm.image.default_kernel.clone()).filter(|k| !k.is_empty()))
            .unwrap_or_else(|| self.inner.cfg.default_kernel.clone());
        vm.kernel.name = kernel.clone();
        store.save(vm)?;
        vm.kernel = peers
            .resolve_kernel(&kernel, &vm.id)
            .instrument(phase.span())
            .await?;
        store.save(vm)?;
        phase.end().await;

        if needs_preparation(&vm.image) {
            // Once per image digest: later VMs find it done and only copy it
            // (no `preparing` phase then).
            let prepared = match self.prepared_store().get(&vm.image.digest) {
                Some(done) => done,
                None => {
                    phase.check()?;
                    phase
                        .start(
                            "preparing",
                            format!(
                                "{} has no {}: preparing it once for every VM of it",
                                vm.image.name,
                                if vm.image.has_systemd {
                                    "SSH server"
                                } else {
                                    "init"
                                }
                            ),
                        )
                        .await;
                    let p = self
                        .prepared(&vm.image, &vm.kernel, false, &phase)
                        .instrument(phase.span())
                        .await?;
                    phase.end().await;
                    p
                }
            };
            vm.image.ext4_path = prepared.rootfs.clone();
            vm.image.size_bytes = prepared.size_bytes;
            vm.image.has_systemd = prepared.has_systemd;
            vm.image.has_ssh_server = prepared.has_ssh_server;
            vm.image.prepared = true;
            store.save(vm)?;
        }

        phase.check()?;
        phase.start("network", String::new()).await;
        vm.lease = Some(
            peers
                .allocate(&vm.id, vm.nat)
                .instrument(phase.span())
                .await?,
        );
        store.save(vm)?;
        let lease = vm.lease.clone().expect("just set");
        phase.end().await;

        phase.check()?;
        phase
            .start("disk", format!("copying {}", vm.image.ext4_path.display()))
            .await;
        let paths = store.paths_of(vm);
        let size = if vm.disk_bytes == 0 {
            vm.image.size_bytes + (self.inner.cfg.disk_headroom_mib << 20)
        } else {
            vm.disk_bytes
        };
        let (src, dst) = (vm.image.ext4_path.clone(), paths.disk());
        let method = tokio::task::spawn_blocking(move || -> Result<disk::CopyMethod> {
            let m = disk::copy_image(&src, &dst)?;
            disk::grow(&dst, size)?;
            Ok(m)
        })
        .await
        .map_err(Error::task("disk"))??;
        vm.disk_bytes = std::fs::metadata(paths.disk())
            .map_err(Error::io("cannot stat", paths.disk()))?
            .len();
        store.save(vm)?;
        tracing::info!(%method, bytes = vm.disk_bytes, "disk ready");
        phase.end_with(method.to_string()).await;

        phase.check()?;
        phase.start("identity", String::new()).await;
        let identity = Identity {
            hostname: vm.name.clone(),
            ssh_authorized_keys: vm.ssh_authorized_keys.clone(),
            dns: lease.dns.clone(),
            ip: Some(format!("{}/{}", lease.ip, lease.prefix_len)),
            gateway: Some(lease.gateway.clone()),
            // A VM of an image nobody prepared (or one that lost packages)
            // may still install at first boot: it needs the same settings.
            network: self.inner.cfg.guest.network(),
            ..Identity::default()
        };
        let disk_path = paths.disk();
        // An image with systemd boots it directly: what first boot would
        // do is written into the disk here (cmdline.rs masks the rest).
        let systemd = vm.image.has_systemd.then_some(disk::SystemdPrep {
            skip_sshd_config_check: self.inner.cfg.skip_sshd_config_check,
        });
        let prepared =
            tokio::task::spawn_blocking(move || disk::prepare(&disk_path, &identity, systemd))
                .await
                .map_err(Error::task("identity"))??;
        vm.ssh_host_key = Some(prepared.host_key);
        vm.systemd_boot = prepared
            .systemd_has_udev
            .map(|udev| record::SystemdBoot { udev });
        store.save(vm)?;
        phase.end().await;

        if spec.no_start {
            vm.state = VmState::Stopped;
            store.save(vm)?;
        } else {
            let timeout = self.ready_timeout(spec.ready_timeout_secs);
            self.boot(vm, &phase, timeout).await?;
        }
        Ok(self.view(vm.clone()))
    }

    /// Undoes a create: process, sockets, disk, lease, holds, record. When
    /// a peer cannot take a release (it is down), the record stays as
    /// `deleting` and the sweeper finishes the job once it is back.
    pub(super) async fn rollback(&self, vm: &VmRecord) {
        let mut vm = vm.clone();
        if let Err(e) = self.finish_delete(&mut vm).await {
            tracing::warn!(vm = %vm.name, "rollback left for the sweeper: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::manager::NoProgress;
    use crate::testing::{self, Doubles};

    #[tokio::test]
    async fn failures_roll_back_everything() {
        let t = Doubles::new(true);
        let err = t
            .mgr
            .create(testing::spec("b", "img"), &NoProgress)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("fake launch failure"), "{err}");
        assert!(!t.dir.path().join("state/vms/b").exists());
        assert!(t.peers.unreleased().is_empty(), "{:?}", t.peers.calls());
        // A peer error keeps its code and also rolls back.
        let err = t
            .mgr
            .create(testing::spec("c", "missing"), &NoProgress)
            .await
            .unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::NotFound);
        assert!(t.mgr.list().unwrap().is_empty());
        let err = t
            .mgr
            .create(testing::spec("Bad_Name", "img"), &NoProgress)
            .await
            .unwrap_err();
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[tokio::test]
    async fn the_backend_and_accelerator_are_recorded_with_why() {
        let t = Doubles::new(false);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let view = t.mgr.create(testing::spec("a", "img"), &tx).await.unwrap();
        // `[vmm] hypervisor` defaults to auto; these doubles have no Firecracker.
        assert_eq!(
            view.vm.backend_why.as_deref(),
            Some("auto: this vmm has no Firecracker backend")
        );
        assert_eq!(view.vm.accel.as_deref(), Some("tcg"));
        let mut booting = None;
        while let Ok(ev) = rx.try_recv() {
            if ev.phase == "booting" && ev.seconds.is_none() {
                booting = Some(ev.message);
            }
        }
        let booting = booting.expect("a booting event");
        assert!(booting.starts_with("qemu (tcg): auto:"), "{booting}");
        // An explicit request says so.
        let mut spec = testing::spec("b", "img");
        spec.backend = Some(crate::config::Backend::Qemu);
        let view = t
            .mgr
            .create(spec, &crate::manager::NoProgress)
            .await
            .unwrap();
        assert_eq!(
            view.vm.backend_why.as_deref(),
            Some("requested (--hypervisor qemu)")
        );
    }

    #[tokio::test]
    async fn an_agent_that_never_answers_rolls_back_with_the_console() {
        let t = Doubles::with_agent(false);
        let mut spec = testing::spec("quiet", "img");
        spec.ready_timeout_secs = 1;
        let err = t.mgr.create(spec, &NoProgress).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("did not answer"), "{msg}");
        assert!(msg.contains("booted"), "console tail missing: {msg}");
        assert!(!t.dir.path().join("state/vms/quiet").exists());
        assert_eq!(t.guest.calls(), ["ping"]);
        // The console log outlives the rollback, with the reason in front…
        assert!(msg.contains("`banger vm logs quiet`"), "{msg}");
        let kept = t.mgr.console_path("quiet").unwrap();
        let text = std::fs::read_to_string(&kept).unwrap();
        assert!(
            text.starts_with("banger: the console log of a failed `vm create quiet`"),
            "{text}"
        );
        assert!(
            text.contains("did not answer") && text.contains("booted"),
            "{text}"
        );
        // …and so is the hypervisor's own log beside it…
        let hypervisor = std::fs::read_to_string(kept.with_file_name("hypervisor.log")).unwrap();
        assert_eq!(hypervisor, "fake-hypervisor-started\n");
        assert!(t.mgr.list().unwrap().is_empty(), "evidence is not a VM");
        // …until `vm rm` of the name drops it.
        t.mgr.delete("quiet", false).await.unwrap();
        assert!(t.mgr.console_path("quiet").is_err());
        assert!(!kept.exists());
    }
}
