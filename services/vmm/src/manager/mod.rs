//! The VM lifecycle, one file per job: [`create`](Manager::create) with full
//! rollback (`create.rs`); start, stop, restart and delete (`lifecycle.rs`);
//! readiness probes (`readiness.rs`); supervision of hypervisor processes
//! (`supervise.rs`); reconcile after a vmm restart (`reconcile.rs`); and
//! the progress a create reports ([`progress`]); prepared images, made
//! once per digest by a one-off VM (`prepare.rs`); the console logs of
//! failed creates (`evidence.rs`). This file holds the
//! [`Manager`] itself, its per-VM locks, and the read-only operations.
//!
//! Every operation on one VM holds that VM's lock. A supervisor task per
//! running VM waits for its hypervisor to exit (a child it can reap, or an
//! adopted pid it polls), cleans up after it and records the exit unless an
//! operation already did. The manager sees the other services through
//! [`Peers`] and the guest through [`Guest`]: no proto type reaches it.

mod create;
mod evidence;
mod lifecycle;
pub mod prepare;
pub mod progress;
mod readiness;
mod reconcile;
mod supervise;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cmdline;
use crate::config::{Backend, VmmConfig};
use crate::error::{Error, Result, Want};
use crate::guest::Guest;
use crate::hypervisor::{self, BackendChoice, Hypervisor};
use crate::peers::Peers;
use crate::record::{Store, VmRecord, VmState};

pub use create::CreateSpec;
pub use prepare::{FailedPreparation, Prepared, needs_preparation};
pub use progress::{NoProgress, PhaseEvent, Progress};
pub use readiness::Probe;

/// Lines of console log returned with a failed boot.
const CONSOLE_TAIL_LINES: usize = 30;

/// A record plus the live readiness probes, as clients see it.
#[derive(Debug, Clone)]
pub struct VmView {
    pub vm: VmRecord,
    pub probes: Vec<Probe>,
    pub vsock_path: PathBuf,
}

/// [`Manager::hypervisors`].
#[derive(Debug, Clone)]
pub struct HypervisorReport {
    pub default: BackendChoice,
    pub backends: Vec<(Backend, hypervisor::Availability, hypervisor::AccelChoice)>,
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
    guest: Arc<dyn Guest>,
    backends: HashMap<Backend, Arc<dyn Hypervisor>>,
    /// The backend of VMs whose create names none, and why.
    default_backend: BackendChoice,
    tsc_khz: Option<u32>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    probes: Mutex<HashMap<String, Vec<Probe>>>,
    /// Preparations under way, by image digest.
    preparing: prepare::Preparing,
}

impl Manager {
    /// A manager over `store`, reaching peers through `peers`, guests
    /// through `guest`, and booting with `backends`.
    pub fn new(
        cfg: VmmConfig,
        store: Store,
        peers: Arc<dyn Peers>,
        guest: Arc<dyn Guest>,
        backends: Vec<Arc<dyn Hypervisor>>,
    ) -> Manager {
        let tsc_khz = if cfg.tsc_khz > 0 {
            Some(cfg.tsc_khz)
        } else {
            cmdline::host_tsc_khz()
        };
        let default_backend = hypervisor::choose(
            cfg.hypervisor,
            &backends.iter().map(|b| b.as_ref()).collect::<Vec<_>>(),
        );
        tracing::info!(backend = %default_backend.backend, why = %default_backend.why, "default hypervisor");
        Manager {
            inner: Arc::new(Inner {
                cfg,
                store,
                peers,
                guest,
                backends: backends.into_iter().map(|b| (b.backend(), b)).collect(),
                default_backend,
                tsc_khz,
                locks: Mutex::default(),
                probes: Mutex::default(),
                preparing: Mutex::default(),
            }),
        }
    }

    /// The record store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The lock every operation on the VM `name` holds.
    fn lock_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .locks
            .lock()
            .expect("lock table poisoned")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// What `banger doctor` shows: the default backend and why, and each
    /// backend's availability and accelerator.
    pub fn hypervisors(&self) -> HypervisorReport {
        let mut backends: Vec<_> = self
            .inner
            .backends
            .values()
            .map(|b| (b.backend(), b.availability(), b.accelerator()))
            .collect();
        backends.sort_by_key(|(b, _, _)| b.to_string());
        HypervisorReport {
            default: self.inner.default_backend.clone(),
            backends,
        }
    }

    fn backend(&self, b: Backend) -> Result<Arc<dyn Hypervisor>> {
        self.inner
            .backends
            .get(&b)
            .cloned()
            .ok_or(Error::BackendUnavailable { backend: b })
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

    /// Remembers the probes of the VM with id `id`'s latest readiness check.
    fn set_probes(&self, id: &str, probes: Vec<Probe>) {
        self.inner
            .probes
            .lock()
            .expect("probe table poisoned")
            .insert(id.to_owned(), probes);
    }

    /// Forgets them (the VM stopped or is gone).
    fn forget_probes(&self, id: &str) {
        self.inner
            .probes
            .lock()
            .expect("probe table poisoned")
            .remove(id);
    }

    fn load(&self, name: &str) -> Result<VmRecord> {
        banger_proto::names::validate("vm", name)?;
        self.inner.store.load(name)?.ok_or_else(|| Error::NotFound {
            name: name.to_owned(),
        })
    }

    /// `vm` if its state passes `rule`, else [`Error::WrongState`] saying
    /// what the operation wants.
    fn require(vm: VmRecord, rule: impl Fn(VmState) -> bool, want: Want) -> Result<VmRecord> {
        if rule(vm.state) {
            Ok(vm)
        } else {
            Err(Error::WrongState {
                name: vm.name,
                state: vm.state,
                want,
            })
        }
    }

    /// The readiness timeout: `secs`, or the configured one for 0.
    fn ready_timeout(&self, secs: u32) -> Duration {
        Duration::from_secs(u64::from(if secs == 0 {
            self.inner.cfg.ready_timeout_secs
        } else {
            secs
        }))
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

    /// The console log of `name` (for `ConsoleLog`): the VM's, or when no
    /// VM has that name, the kept log of its last failed create.
    pub fn console_path(&self, name: &str) -> Result<PathBuf> {
        match self.load(name) {
            Ok(vm) => Ok(self.inner.store.paths_of(&vm).console_log()),
            Err(e @ Error::NotFound { .. }) => self.evidence_of(name).ok_or(e),
            Err(e) => Err(e),
        }
    }

    /// A channel to the agent of a running VM (for `Exec`).
    pub async fn agent(&self, name: &str) -> Result<tonic::transport::Channel> {
        let vm = Self::require(self.load(name)?, VmState::can_reach_guest, Want::Running)?;
        if !vm.image.has_agent {
            return Err(Error::NoAgent {
                name: vm.name,
                image: vm.image.name,
            });
        }
        let paths = self.inner.store.paths_of(&vm);
        self.inner.guest.exec_channel(&paths.vsock()).await
    }
}

/// The last [`CONSOLE_TAIL_LINES`] lines of a console log.
pub fn console_tail(path: &std::path::Path) -> String {
    tail_lines(path, CONSOLE_TAIL_LINES)
}

/// The last `n` lines of a text file as a person reads them, empty if
/// unreadable.
fn tail_lines(path: &std::path::Path, n: usize) -> String {
    let Ok(data) = std::fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&data);
    // What a terminal would show: a progress bar redraws its line after
    // each `\r`, so only the last state of a line counts; escape sequences
    // and other control bytes are dropped; first-boot's event lines are
    // for vmm, not for people.
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let shown = l
                .trim_end_matches('\r')
                .rsplit('\r')
                .find(|seg| !seg.trim().is_empty())
                .unwrap_or("");
            crate::firstboot::clean(shown, 500)
        })
        .filter(|l| !l.trim().is_empty() && !l.contains(banger_proto::guest::EVENT_MARKER.trim()))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_console_tail_shows_what_a_terminal_would() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let event = banger_proto::guest::FirstBootEvent::Handover {
            init: "/sbin/init".into(),
        }
        .to_console_line();
        std::fs::write(
            &log,
            format!(
                "one\r\n\r\nProgress: [ 10%]\rProgress: [ 90%]\rSetting up sshd\r\n\x1b[1;31mred\x1b[0m\n{event}\nlast\n"
            ),
        )
        .unwrap();
        assert_eq!(
            super::tail_lines(&log, 30),
            "one\nSetting up sshd\nred\nlast"
        );
        assert_eq!(super::tail_lines(&log, 1), "last");
    }
}
