//! The VM lifecycle: create (with full rollback), start, stop, restart,
//! delete, readiness, supervision of hypervisor processes, and reconcile
//! after a vmm restart.
//!
//! Every operation on one VM holds that VM's lock. A supervisor task per
//! running VM waits for its hypervisor to exit (a child it can reap, or an
//! adopted pid it polls), cleans up after it and records the exit unless an
//! operation already did.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_proto::agent::v1::agent_client::AgentClient;
use banger_proto::rpc::hybrid_vsock::{self, AGENT_PORT};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::cmdline::{self, CmdlineSpec};
use crate::config::{Backend, VmmConfig};
use crate::disk::{self, Identity};
use crate::error::{Error, Result};
use crate::hypervisor::{self, Hypervisor, LaunchSpec};
use crate::peers::Peers;
use crate::record::{self, Store, VmRecord, VmState};

/// Lines of console log returned with a failed boot.
const CONSOLE_TAIL_LINES: usize = 30;

/// What a create asks for (defaults already applied by nothing: 0 / None
/// mean "use the configured default").
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

/// One event of a create.
#[derive(Debug, Clone)]
pub enum CreateEvent {
    /// A phase started (`seconds` = None) or ended (`seconds` = its duration).
    Phase {
        phase: &'static str,
        message: String,
        seconds: Option<f64>,
    },
    /// The VM as created.
    Done(Box<VmView>),
}

/// A record plus the live readiness probes, as clients see it.
#[derive(Debug, Clone)]
pub struct VmView {
    pub vm: VmRecord,
    pub probes: Vec<Probe>,
    pub vsock_path: PathBuf,
}

/// The result of one readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub capability: &'static str,
    pub state: &'static str,
    pub detail: String,
}

/// The VM manager.
#[derive(Debug, Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: VmmConfig,
    store: Store,
    peers: Arc<dyn Peers>,
    backends: HashMap<Backend, Arc<dyn Hypervisor>>,
    tsc_khz: Option<u32>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    probes: Mutex<HashMap<String, Vec<Probe>>>,
}

impl Manager {
    /// A manager over `store`, reaching peers through `peers` and booting
    /// with `backends`.
    pub fn new(
        cfg: VmmConfig,
        store: Store,
        peers: Arc<dyn Peers>,
        backends: Vec<Arc<dyn Hypervisor>>,
    ) -> Manager {
        let tsc_khz = if cfg.tsc_khz > 0 {
            Some(cfg.tsc_khz)
        } else {
            cmdline::host_tsc_khz()
        };
        Manager {
            inner: Arc::new(Inner {
                cfg,
                store,
                peers,
                backends: backends.into_iter().map(|b| (b.backend(), b)).collect(),
                tsc_khz,
                locks: Mutex::default(),
                probes: Mutex::default(),
            }),
        }
    }

    /// The record store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn lock_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .locks
            .lock()
            .expect("lock table poisoned")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn backend(&self, b: Backend) -> Result<Arc<dyn Hypervisor>> {
        self.inner.backends.get(&b).cloned().ok_or_else(|| {
            Error::FailedPrecondition(format!("the {b} backend is not available in this vmm"))
        })
    }

    fn view(&self, vm: VmRecord) -> VmView {
        let probes = self
            .inner
            .probes
            .lock()
            .expect("probe table poisoned")
            .get(&vm.id)
            .cloned()
            .unwrap_or_default();
        let vsock_path = self.inner.store.paths_of(&vm).vsock();
        VmView {
            vm,
            probes,
            vsock_path,
        }
    }

    fn load(&self, name: &str) -> Result<VmRecord> {
        banger_proto::names::validate("vm", name)?;
        self.inner
            .store
            .load(name)?
            .ok_or_else(|| Error::NotFound(name.to_owned()))
    }

    /// One VM.
    pub fn get(&self, name: &str) -> Result<VmView> {
        Ok(self.view(self.load(name)?))
    }

    /// All VMs, sorted by name.
    pub fn list(&self) -> Result<Vec<VmView>> {
        Ok(self
            .inner
            .store
            .list()?
            .0
            .into_iter()
            .map(|vm| self.view(vm))
            .collect())
    }

    /// Creates a VM, sending events to `events`; on failure everything made
    /// is rolled back and the error carries the console's tail.
    #[tracing::instrument(skip_all, fields(vm = %spec.name))]
    pub async fn create(
        &self,
        spec: CreateSpec,
        events: mpsc::Sender<CreateEvent>,
    ) -> Result<VmView> {
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
            return Err(Error::InvalidArgument(format!(
                "vcpus must be 1-64 and memory at least 64 MiB (got {vcpus} vCPUs, {memory_mib} MiB)"
            )));
        }
        let backend = spec.backend.unwrap_or(cfg.hypervisor);
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
                && matches!(existing.state, VmState::Running | VmState::Stopped);
            if same {
                return Ok(self.view(existing));
            }
            return Err(Error::AlreadyExists(spec.name));
        }
        let mut vm = VmRecord {
            id: record::new_id(),
            name: spec.name.clone(),
            state: VmState::Creating,
            image: crate::record::ImageInfo {
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
            created_unix: record::now_unix(),
            started_unix: None,
            error: None,
        };
        // Saved first: a crash from here on leaves a `creating` record that
        // reconcile rolls back.
        self.inner.store.save(&vm)?;
        let result = self.create_steps(&mut vm, &spec, &events).await;
        match result {
            Ok(view) => Ok(view),
            Err(e) => {
                let tail = console_tail(&self.inner.store.paths_of(&vm).console_log());
                tracing::warn!(error = %e, "create failed; rolling back");
                self.rollback(&vm).await;
                Err(match e {
                    Error::Boot { .. } => e,
                    e if vm.pid.is_some() || !tail.is_empty() => Error::Boot {
                        cause: e.to_string(),
                        console_tail: tail,
                    },
                    e => e,
                })
            }
        }
    }

    async fn create_steps(
        &self,
        vm: &mut VmRecord,
        spec: &CreateSpec,
        events: &mpsc::Sender<CreateEvent>,
    ) -> Result<VmView> {
        let store = &self.inner.store;
        let peers = &self.inner.peers;
        let phase = Phases::new(events, &vm.name);

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
        .map_err(|e| Error::Hypervisor(format!("disk task failed: {e}")))??;
        vm.disk_bytes = std::fs::metadata(paths.disk())
            .map_err(Error::io("cannot stat", paths.disk()))?
            .len();
        store.save(vm)?;
        tracing::info!(?method, bytes = vm.disk_bytes, "disk ready");
        phase.end().await;

        phase.start("identity", String::new()).await;
        let identity = Identity {
            hostname: vm.name.clone(),
            ssh_authorized_keys: vm.ssh_authorized_keys.clone(),
            dns: lease.dns.clone(),
            ip: Some(format!("{}/{}", lease.ip, lease.prefix_len)),
            gateway: Some(lease.gateway.clone()),
        };
        let disk_path = paths.disk();
        let host_key =
            tokio::task::spawn_blocking(move || disk::write_identity(&disk_path, &identity))
                .await
                .map_err(|e| Error::Hypervisor(format!("identity task failed: {e}")))??;
        vm.ssh_host_key = Some(host_key);
        store.save(vm)?;
        phase.end().await;

        if spec.no_start {
            vm.state = VmState::Stopped;
            store.save(vm)?;
            let view = self.view(vm.clone());
            let _ = events.send(CreateEvent::Done(Box::new(view.clone()))).await;
            return Ok(view);
        }
        let timeout = self.ready_timeout(spec.ready_timeout_secs);
        self.boot(vm, &phase, timeout).await?;
        let view = self.view(vm.clone());
        let _ = events.send(CreateEvent::Done(Box::new(view.clone()))).await;
        Ok(view)
    }

    fn ready_timeout(&self, secs: u32) -> Duration {
        Duration::from_secs(u64::from(if secs == 0 {
            self.inner.cfg.ready_timeout_secs
        } else {
            secs
        }))
    }

    /// Launches the hypervisor, waits for readiness and records `running`.
    /// On failure the process is gone again (the caller decides the state).
    async fn boot(&self, vm: &mut VmRecord, phase: &Phases<'_>, timeout: Duration) -> Result<()> {
        let store = &self.inner.store;
        let backend = self.backend(vm.backend)?;
        let paths = store.paths_of(vm);
        phase
            .start("booting", format!("{} backend", vm.backend))
            .await;
        vm.cmdline = cmdline::build(&CmdlineSpec {
            hostname: &vm.name,
            lease: vm.lease.as_ref(),
            direct_boot: vm.image.direct_boot,
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
        vm.started_unix = Some(record::now_unix());
        vm.error = None;
        store.save(vm)?;
        self.supervise(vm, Some(launched.child));
        phase.end().await;

        phase
            .start("waiting", "for the guest to be ready".into())
            .await;
        let pid = launched.pid;
        let ready = tokio::select! {
            r = self.probe(vm, timeout).instrument(phase.span()) => r,
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
                self.inner
                    .probes
                    .lock()
                    .expect("probe table poisoned")
                    .insert(vm.id.clone(), probes);
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

    /// Readiness: the agent where the image has it, else SSH where it has
    /// an SSH server; capabilities the image cannot have are skipped.
    async fn probe(&self, vm: &VmRecord, timeout: Duration) -> Result<Vec<Probe>> {
        let paths = self.inner.store.paths_of(vm);
        let started = Instant::now();
        let mut probes = Vec::new();
        if vm.image.has_agent {
            let ping = hybrid_vsock::wait_ready(&paths.vsock(), AGENT_PORT, timeout)
                .await
                .map_err(|e| Error::Timeout(e.to_string()))?;
            probes.push(Probe {
                capability: "agent",
                state: "ready",
                detail: format!(
                    "banger-agent {} after {:.1}s",
                    ping.version,
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
                wait_ssh(&lease.ip, remaining).await?;
                probes.push(Probe {
                    capability: "ssh",
                    state: "ready",
                    detail: format!(
                        "{}:22 answers after {:.1}s",
                        lease.ip,
                        started.elapsed().as_secs_f64()
                    ),
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
            let log = paths.console_log();
            let deadline = tokio::time::Instant::now() + timeout;
            while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) == 0 {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Timeout(format!(
                        "the guest kernel wrote nothing to its console within {timeout:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            probes.push(Probe {
                capability: "console",
                state: "ready",
                detail: "the kernel is writing to the console".into(),
            });
        }
        Ok(probes)
    }

    /// Waits until a VM is ready (for `WaitReady`).
    pub async fn wait_ready(&self, name: &str, timeout_secs: u32) -> Result<VmView> {
        let vm = self.load(name)?;
        if vm.state != VmState::Running {
            return Err(Error::FailedPrecondition(format!(
                "VM {name} is {:?}, not running; start it with `banger vm start {name}`",
                vm.state
            )));
        }
        let probes = self.probe(&vm, self.ready_timeout(timeout_secs)).await?;
        self.inner
            .probes
            .lock()
            .expect("probe table poisoned")
            .insert(vm.id.clone(), probes);
        Ok(self.view(vm))
    }

    /// Watches the hypervisor of `vm` until it exits, then cleans up and
    /// records the exit unless an operation already did.
    fn supervise(&self, vm: &VmRecord, child: Option<tokio::process::Child>) {
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
            if vm.state == VmState::Creating {
                return;
            }
            if let Err(e) = this.inner.store.save(&vm) {
                tracing::error!(vm = %name, "cannot record exit: {e}");
            }
            tracing::info!(vm = %name, state = ?vm.state, "hypervisor exited");
        });
    }

    /// Kills the VM's processes at once and cleans up after them.
    async fn kill_vm(&self, vm: &mut VmRecord) {
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

    /// Undoes a create: process, sockets, disk, lease, holds, record.
    async fn rollback(&self, vm: &VmRecord) {
        let mut vm = vm.clone();
        self.kill_vm(&mut vm).await;
        self.release_all(&vm).await;
        if let Err(e) = self.inner.store.remove(&vm) {
            tracing::error!(vm = %vm.name, "rollback cannot remove files: {e}");
        }
        self.inner
            .probes
            .lock()
            .expect("probe table poisoned")
            .remove(&vm.id);
    }

    async fn release_all(&self, vm: &VmRecord) {
        let peers = &self.inner.peers;
        if let Err(e) = peers.release_lease(&vm.id).await {
            tracing::warn!(vm = %vm.name, "cannot release lease: {e}");
        }
        if !vm.kernel.name.is_empty()
            && let Err(e) = peers.release_kernel(&vm.kernel.name, &vm.id).await
        {
            tracing::warn!(vm = %vm.name, "cannot release kernel hold: {e}");
        }
        if let Err(e) = peers.release_image(&vm.image.name, &vm.id).await {
            tracing::warn!(vm = %vm.name, "cannot release image hold: {e}");
        }
    }

    /// Starts a stopped VM and waits for readiness.
    #[tracing::instrument(skip(self))]
    pub async fn start(&self, name: &str, ready_timeout_secs: u32) -> Result<VmView> {
        let lock = self.lock_of(name);
        let _guard = lock.lock().await;
        let mut vm = self.load(name)?;
        match vm.state {
            VmState::Running => return Ok(self.view(vm)),
            VmState::Stopped | VmState::Error => {}
            s => {
                return Err(Error::FailedPrecondition(format!(
                    "VM {name} is {s:?}; wait for that to finish"
                )));
            }
        }
        let (tx, _rx) = mpsc::channel(16);
        let phases = Phases::new(&tx, &vm.name);
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
        let mut vm = self.load(name)?;
        if vm.state != VmState::Running {
            return match vm.state {
                VmState::Stopped | VmState::Error => Ok(self.view(vm)),
                s => Err(Error::FailedPrecondition(format!(
                    "VM {name} is {s:?}; wait for that to finish"
                ))),
            };
        }
        let timeout = Duration::from_secs(u64::from(if timeout_secs == 0 {
            self.inner.cfg.stop_timeout_secs
        } else {
            timeout_secs
        }));
        self.shutdown(&mut vm, force, timeout).await;
        vm.state = VmState::Stopped;
        vm.error = None;
        self.inner.store.save(&vm)?;
        self.inner
            .probes
            .lock()
            .expect("probe table poisoned")
            .remove(&vm.id);
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
                let agent = async {
                    let ch =
                        hybrid_vsock::connect(&paths.vsock(), AGENT_PORT, Duration::from_secs(3))
                            .await
                            .map_err(|e| e.to_string())?;
                    AgentClient::new(ch)
                        .shutdown(banger_proto::agent::v1::ShutdownRequest { reboot: false })
                        .await
                        .map_err(|s| s.message().to_owned())
                };
                if let Err(e) = tokio::time::timeout(Duration::from_secs(5), agent).await {
                    tracing::debug!("agent shutdown: {e}");
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
        let mut vm = self.load(name)?;
        if vm.state == VmState::Running && !force {
            return Err(Error::FailedPrecondition(format!(
                "VM {name} is running; stop it first (`banger vm stop {name}`) or use --force"
            )));
        }
        vm.state = VmState::Deleting;
        self.inner.store.save(&vm)?;
        self.finish_delete(&mut vm).await
    }

    async fn finish_delete(&self, vm: &mut VmRecord) -> Result<()> {
        self.kill_vm(vm).await;
        self.release_all(vm).await;
        self.inner.store.remove(vm)?;
        self.inner
            .probes
            .lock()
            .expect("probe table poisoned")
            .remove(&vm.id);
        Ok(())
    }

    /// The console log of `name` (for `ConsoleLog`).
    pub fn console_path(&self, name: &str) -> Result<PathBuf> {
        let vm = self.load(name)?;
        Ok(self.inner.store.paths_of(&vm).console_log())
    }

    /// A channel to the agent of a running VM (for `Exec`).
    pub async fn agent(&self, name: &str) -> Result<tonic::transport::Channel> {
        let vm = self.load(name)?;
        if vm.state != VmState::Running {
            return Err(Error::FailedPrecondition(format!(
                "VM {name} is {:?}, not running",
                vm.state
            )));
        }
        if !vm.image.has_agent {
            return Err(Error::FailedPrecondition(format!(
                "image {} has no banger agent; use `banger vm ssh {name}`",
                vm.image.name
            )));
        }
        let paths = self.inner.store.paths_of(&vm);
        hybrid_vsock::connect(&paths.vsock(), AGENT_PORT, Duration::from_secs(10))
            .await
            .map_err(|e| Error::Agent(e.to_string()))
    }

    /// Reconciles records with reality after a (re)start: adopts live
    /// hypervisors, marks dead ones, rolls back half-done creates and
    /// finishes half-done deletes, removes dirs without a record.
    pub async fn reconcile(&self) -> Result<()> {
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
                    self.finish_delete(&mut vm).await?;
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

/// Sends phase start/end events with durations.
struct Phases<'a> {
    tx: &'a mpsc::Sender<CreateEvent>,
    vm: String,
    /// The running phase, when it started, and its span: one span per step,
    /// so an operator reads `vm create` step by step in one trace.
    current: Mutex<Option<(&'static str, Instant, tracing::Span)>>,
}

impl<'a> Phases<'a> {
    fn new(tx: &'a mpsc::Sender<CreateEvent>, vm: &str) -> Self {
        Phases {
            tx,
            vm: vm.to_owned(),
            current: Mutex::new(None),
        }
    }

    /// The running phase's span; calls to other services made under it
    /// become its children in the trace.
    fn span(&self) -> tracing::Span {
        self.current
            .lock()
            .expect("phase lock")
            .as_ref()
            .map(|(_, _, span)| span.clone())
            .unwrap_or_else(tracing::Span::none)
    }

    async fn start(&self, phase: &'static str, message: String) {
        let span = tracing::info_span!(
            "step",
            otel.name = %format!("vm {phase}"),
            step = phase,
            vm = %self.vm,
        );
        *self.current.lock().expect("phase lock") = Some((phase, Instant::now(), span));
        tracing::info!(phase, "{message}");
        let _ = self
            .tx
            .send(CreateEvent::Phase {
                phase,
                message,
                seconds: None,
            })
            .await;
    }

    async fn end(&self) {
        let cur = self.current.lock().expect("phase lock").take();
        if let Some((phase, started, _span)) = cur {
            let _ = self
                .tx
                .send(CreateEvent::Phase {
                    phase,
                    message: String::new(),
                    seconds: Some(started.elapsed().as_secs_f64()),
                })
                .await;
        }
    }
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
    Err(Error::Timeout(format!(
        "SSH on {ip}:22 did not answer within {timeout:?} (last: {last})"
    )))
}

/// The last [`CONSOLE_TAIL_LINES`] lines of a console log.
pub fn console_tail(path: &std::path::Path) -> String {
    tail_lines(path, CONSOLE_TAIL_LINES)
}

/// The last `n` lines of a text file, empty if unreadable.
fn tail_lines(path: &std::path::Path, n: usize) -> String {
    let Ok(data) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&data);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ImageInfo, KernelInfo, Lease};

    /// Peers double that records calls.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        image: PathBuf,
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn log(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
    }

    #[tonic::async_trait]
    impl Peers for Recorder {
        async fn resolve_image(&self, name: &str, holder: &str) -> Result<ImageInfo> {
            self.log(format!("resolve_image {name} {holder}"));
            if name == "missing" {
                return Err(Error::Peer {
                    service: "imagestore",
                    code: tonic::Code::NotFound,
                    message: "no image missing".into(),
                });
            }
            Ok(ImageInfo {
                name: name.into(),
                ext4_path: self.image.clone(),
                size_bytes: 4 << 20,
                ..Default::default()
            })
        }
        async fn release_image(&self, name: &str, holder: &str) -> Result<()> {
            self.log(format!("release_image {name} {holder}"));
            Ok(())
        }
        async fn resolve_kernel(&self, name: &str, holder: &str) -> Result<KernelInfo> {
            self.log(format!("resolve_kernel {name} {holder}"));
            Ok(KernelInfo {
                name: name.into(),
                vmlinux_path: "/k".into(),
                ..Default::default()
            })
        }
        async fn release_kernel(&self, name: &str, holder: &str) -> Result<()> {
            self.log(format!("release_kernel {name} {holder}"));
            Ok(())
        }
        async fn allocate(&self, vm_id: &str, nat: bool) -> Result<Lease> {
            self.log(format!("allocate {vm_id} {nat}"));
            Ok(Lease {
                tap: "bg-test".into(),
                ip: "10.1.0.2".into(),
                prefix_len: 24,
                gateway: "10.1.0.1".into(),
                mac: "06:00:00:00:00:02".into(),
                dns: vec![],
                nat,
            })
        }
        async fn release_lease(&self, vm_id: &str) -> Result<()> {
            self.log(format!("release_lease {vm_id}"));
            Ok(())
        }
    }

    /// Hypervisor double: a `sh` whose command line names the VM's run dir
    /// (so `is_ours` recognises it) and writes a console line; or a failure.
    #[derive(Debug)]
    struct FakeHv {
        fail: bool,
    }

    #[tonic::async_trait]
    impl Hypervisor for FakeHv {
        fn backend(&self) -> Backend {
            Backend::Qemu
        }
        fn emulated(&self) -> bool {
            true
        }
        async fn launch(&self, spec: &LaunchSpec) -> Result<hypervisor::Launched> {
            if self.fail {
                return Err(Error::Hypervisor("fake launch failure".into()));
            }
            std::fs::create_dir_all(&spec.paths.run).unwrap();
            std::fs::write(spec.paths.vsock(), b"").unwrap();
            let mut cmd = hypervisor::detached("sh");
            cmd.arg("-c")
                .arg(format!(
                    "echo booted >> {}; sleep 30; :",
                    spec.paths.console_log().display()
                ))
                .arg(&spec.paths.run);
            let child = hypervisor::spawn(cmd, "sh").unwrap();
            Ok(hypervisor::Launched {
                pid: child.id().unwrap(),
                helper_pid: None,
                accel: Some("tcg".into()),
                child,
            })
        }
        async fn request_stop(&self, _: &record::VmPaths) -> Result<()> {
            Ok(())
        }
    }

    fn setup(fail: bool) -> (tempfile::TempDir, Manager, Arc<Recorder>) {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.ext4");
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .arg("4M")
            .status()
            .expect("mkfs.ext4 (apt-get install e2fsprogs)");
        assert!(st.success());
        let peers = Arc::new(Recorder {
            image,
            ..Default::default()
        });
        let mgr = manager_over(dir.path(), peers.clone(), fail);
        (dir, mgr, peers)
    }

    fn manager_over(dir: &std::path::Path, peers: Arc<Recorder>, fail: bool) -> Manager {
        Manager::new(
            VmmConfig {
                tsc_khz: 1_000_000,
                disk_headroom_mib: 4,
                ..Default::default()
            },
            Store::new(&dir.join("state/vms"), &dir.join("run")),
            peers,
            vec![Arc::new(FakeHv { fail })],
        )
    }

    fn spec(name: &str, image: &str) -> CreateSpec {
        CreateSpec {
            name: name.into(),
            image: image.into(),
            nat: true,
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA k".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn create_stop_delete_with_doubles() {
        let (dir, mgr, peers) = setup(false);
        let (tx, mut rx) = mpsc::channel(64);
        let view = mgr.create(spec("a", "img"), tx).await.unwrap();
        let mut phases = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let CreateEvent::Phase {
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
        assert_eq!(vm.kernel.name, "generic-6.12", "configured default kernel");
        assert_eq!(vm.disk_bytes, 8 << 20, "image size plus headroom");
        assert!(vm.cmdline.contains("tsc_early_khz=1000000"));
        assert!(
            vm.cmdline
                .contains("ip=10.1.0.2::10.1.0.1:255.255.255.0:a:eth0:off")
        );
        let pid = vm.pid.unwrap();
        assert_eq!(
            peers.calls(),
            [
                format!("resolve_image img {}", vm.id),
                format!("resolve_kernel generic-6.12 {}", vm.id),
                format!("allocate {} true", vm.id),
            ]
        );
        let stopped = mgr.stop("a", true, 0).await.unwrap();
        assert_eq!(stopped.vm.state, VmState::Stopped);
        assert!(!hypervisor::pid_alive(pid));
        assert!(!mgr.store().paths_of(&vm).run.exists(), "sockets left");
        mgr.delete("a", false).await.unwrap();
        assert!(!dir.path().join("state/vms/a").exists());
        let calls = peers.calls();
        assert!(calls.contains(&format!("release_lease {}", vm.id)));
        assert!(calls.contains(&format!("release_kernel generic-6.12 {}", vm.id)));
        assert!(calls.contains(&format!("release_image img {}", vm.id)));
    }

    #[tokio::test]
    async fn failures_roll_back_everything() {
        let (dir, mgr, peers) = setup(true);
        let (tx, _rx) = mpsc::channel(64);
        let err = mgr.create(spec("b", "img"), tx).await.unwrap_err();
        assert!(err.to_string().contains("fake launch failure"), "{err}");
        assert!(!dir.path().join("state/vms/b").exists());
        let calls = peers.calls();
        for p in ["release_lease", "release_kernel", "release_image"] {
            assert!(
                calls.iter().any(|c| c.starts_with(p)),
                "{p} missing: {calls:?}"
            );
        }
        // A peer error keeps its code and also rolls back.
        let (tx, _rx) = mpsc::channel(64);
        let err = mgr.create(spec("c", "missing"), tx).await.unwrap_err();
        assert_eq!(
            banger_proto::rpc::GrpcError::grpc_code(&err),
            tonic::Code::NotFound
        );
        assert!(mgr.list().unwrap().is_empty());
        let (tx, _rx) = mpsc::channel(64);
        let err = mgr.create(spec("Bad_Name", "img"), tx).await.unwrap_err();
        assert_eq!(
            banger_proto::rpc::GrpcError::grpc_code(&err),
            tonic::Code::InvalidArgument
        );
    }

    #[tokio::test]
    async fn reconcile_adopts_marks_and_rolls_back() {
        let (dir, mgr, peers) = setup(false);
        let (tx, _rx) = mpsc::channel(64);
        let live = mgr.create(spec("live", "img"), tx).await.unwrap().vm;
        let (tx, _rx) = mpsc::channel(64);
        let half = mgr.create(spec("half", "img"), tx).await.unwrap().vm;
        let (tx, _rx) = mpsc::channel(64);
        let dead = mgr.create(spec("dead", "img"), tx).await.unwrap().vm;
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
        std::fs::create_dir_all(dir.path().join("state/vms/orphan")).unwrap();
        // Undo what the first manager's supervisor may have recorded.
        let mut d = mgr.store().load("dead").unwrap().unwrap();
        d.state = VmState::Running;
        d.pid = dead.pid;
        mgr.store().save(&d).unwrap();

        let restarted = manager_over(dir.path(), peers.clone(), false);
        restarted.reconcile().await.unwrap();
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
        assert!(!dir.path().join("state/vms/half").exists());
        assert!(!dir.path().join("state/vms/gone").exists());
        assert!(!dir.path().join("state/vms/orphan").exists());
        assert!(
            peers
                .calls()
                .contains(&format!("release_lease {}", half.id))
        );
        assert!(
            peers
                .calls()
                .contains(&format!("release_lease {}", gone.id))
        );
        restarted.delete("live", true).await.unwrap();
        assert!(!hypervisor::pid_alive(live.pid.unwrap()));
    }
}
