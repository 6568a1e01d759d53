//! VM records: one `vm.json` per VM in `$STATE/vms/<name>/`, replaced
//! atomically, beside the VM's disk and console log. Sockets live under
//! `$RUN/vmm/<id>/` instead: unix socket paths are limited to 108 bytes and
//! a 63-character VM name in a deep state dir would not fit (vhost-device-vsock
//! also appends `_<port>` to the vsock path).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Backend;
use crate::error::{Error, Result};

/// Lifecycle state of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Being created; a crash leaves this behind for reconcile to roll back.
    Creating,
    /// The hypervisor runs.
    Running,
    /// No hypervisor runs; disk and lease are kept.
    Stopped,
    /// The hypervisor died or a start failed; see `error`.
    Error,
    /// Being deleted; reconcile finishes the job.
    Deleting,
    /// A hypervisor of this vmm's run dir that has no (readable) record:
    /// found at reconcile and recorded from what its process shows, so it
    /// is listed and `vm rm --force` can stop it and free its lease.
    Orphaned,
}

/// The state rules: which operation may act on a VM in which state. Each
/// operation asks here instead of matching states itself.
impl VmState {
    /// A create or delete is under way (or was cut short and waits for
    /// reconcile): other operations must wait for it.
    pub fn is_busy(self) -> bool {
        matches!(self, VmState::Creating | VmState::Deleting)
    }

    /// `start` boots a VM in this state (a running one is left as it is).
    pub fn can_start(self) -> bool {
        matches!(self, VmState::Stopped | VmState::Error)
    }

    /// `stop` has a hypervisor to stop (a stopped or failed VM is left as
    /// it is).
    pub fn can_stop(self) -> bool {
        self == VmState::Running
    }

    /// `delete` may go ahead; a running (or orphaned) VM only with `force`.
    pub fn can_delete(self, force: bool) -> bool {
        force || !matches!(self, VmState::Running | VmState::Orphaned)
    }

    /// The guest can be reached (exec, wait-ready).
    pub fn can_reach_guest(self) -> bool {
        self == VmState::Running
    }

    /// A create of the same spec may answer with this VM as it is.
    pub fn can_answer_create(self) -> bool {
        matches!(self, VmState::Running | VmState::Stopped)
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Creating => "creating",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Error => "in error",
            VmState::Deleting => "deleting",
            VmState::Orphaned => "orphaned",
        })
    }
}

/// A VM's network lease from netd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub tap: String,
    pub ip: String,
    pub prefix_len: u32,
    pub gateway: String,
    pub mac: String,
    pub dns: Vec<String>,
    pub nat: bool,
}

/// What imagestore said about the VM's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageInfo {
    pub name: String,
    pub ext4_path: PathBuf,
    pub digest: String,
    /// Boots without an initrd: `init=banger-first-boot`.
    pub direct_boot: bool,
    pub default_kernel: String,
    pub size_bytes: u64,
    /// The agent and first-boot script are in the image.
    pub has_agent: bool,
    pub has_ssh_server: bool,
    /// systemd is the image's init (absent in records before preparation existed).
    #[serde(default)]
    pub has_systemd: bool,
    /// os-release `ID` (empty: none, e.g. busybox).
    #[serde(default)]
    pub os_id: String,
    /// os-release `ID_LIKE` words.
    #[serde(default)]
    pub os_id_like: Vec<String>,
    /// The VM's disk is a copy of the image's prepared filesystem (an init
    /// and sshd installed once for this digest), not of the image itself.
    #[serde(default)]
    pub prepared: bool,
}

/// What kernelcat said about the VM's kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KernelInfo {
    pub name: String,
    pub vmlinux_path: PathBuf,
    /// Absent when the kernel has none.
    pub initrd_path: Option<PathBuf>,
    pub kernel_version: String,
}

/// The persisted record of one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Random 16-hex-digit id; the holder id at kernelcat/imagestore and the
    /// lease key at netd.
    pub id: String,
    pub name: String,
    pub state: VmState,
    pub image: ImageInfo,
    pub kernel: KernelInfo,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub backend: Backend,
    pub nat: bool,
    pub ssh_authorized_keys: Vec<String>,
    /// The VM's SSH host public key (`ssh-ed25519 AAAA… name`), made on the
    /// host at create; absent in records older than host-key pinning.
    #[serde(default)]
    pub ssh_host_key: Option<String>,
    /// Set once netd allocated the network.
    pub lease: Option<Lease>,
    /// Hypervisor pid while running.
    pub pid: Option<u32>,
    /// Helper daemon pid (vhost-device-vsock under QEMU) while running.
    pub helper_pid: Option<u32>,
    /// The kernel command line of the last boot.
    pub cmdline: String,
    /// `kvm` or `tcg` (Firecracker: always `kvm`), set at each boot.
    pub accel: Option<String>,
    /// Why [`Self::backend`]: the request's `--hypervisor`, the config, or
    /// what `auto` found on this host. Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_why: Option<String>,
    /// Why [`Self::accel`] (e.g. TCG because /dev/kvm is kvm_pvm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel_why: Option<String>,
    /// Set when create prepared the disk for booting the image's systemd
    /// directly (identity applied, see [`crate::disk::prepare`]); absent:
    /// first boot runs before the init, as in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd_boot: Option<SystemdBoot>,
    pub created_unix: i64,
    pub started_unix: Option<i64>,
    pub error: Option<String>,
    /// A stop was asked for and is under way: a hypervisor found gone (or
    /// still there) after a vmm crash is then a stopped VM, not a failed
    /// one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_requested: bool,
}

/// What the direct systemd boot of a VM's disk needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemdBoot {
    /// The image has udevd (else device units never appear and the
    /// command line masks the ones systemd would wait for).
    pub udev: bool,
}

/// Where a VM's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// `$STATE/vms/<name>`: record, disk, console log.
    pub dir: PathBuf,
    /// `$RUN/vmm/<id>`: sockets.
    pub run: PathBuf,
}

impl VmPaths {
    pub fn record(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("rootfs.ext4")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// Hybrid-vsock socket the host dials to reach the guest agent.
    pub fn vsock(&self) -> PathBuf {
        self.run.join("vsock.sock")
    }
    /// vhost-user socket between vhost-device-vsock and QEMU.
    pub fn vhost_user(&self) -> PathBuf {
        self.run.join("vhost.sock")
    }
    /// QEMU's QMP socket.
    pub fn qmp(&self) -> PathBuf {
        self.run.join("qmp.sock")
    }
    /// Firecracker's API socket.
    pub fn api(&self) -> PathBuf {
        self.run.join("fc.sock")
    }
    /// Firecracker's own log.
    pub fn hypervisor_log(&self) -> PathBuf {
        self.dir.join("hypervisor.log")
    }
}

/// The directory of all VM records.
#[derive(Debug, Clone)]
pub struct Store {
    vms: PathBuf,
    run: PathBuf,
}

impl Store {
    /// Records under `vms` (`$STATE/vms`), sockets under `run` (`$RUN/vmm`).
    pub fn new(vms: &Path, run: &Path) -> Store {
        Store {
            vms: vms.to_path_buf(),
            run: run.to_path_buf(),
        }
    }

    /// `$STATE/vms`.
    pub fn root(&self) -> &Path {
        &self.vms
    }

    /// `$RUN/vmm`.
    pub fn run_root(&self) -> &Path {
        &self.run
    }

    /// Paths of the VM named `name` with id `id`.
    pub fn paths(&self, name: &str, id: &str) -> VmPaths {
        VmPaths {
            dir: self.vms.join(name),
            run: self.run.join(id),
        }
    }

    /// Paths of `vm`.
    pub fn paths_of(&self, vm: &VmRecord) -> VmPaths {
        self.paths(&vm.name, &vm.id)
    }

    /// Writes the record atomically, creating its dirs.
    pub fn save(&self, vm: &VmRecord) -> Result<()> {
        let paths = self.paths_of(vm);
        std::fs::create_dir_all(&paths.dir).map_err(Error::io("cannot create", &paths.dir))?;
        banger_proto::fsutil::write_json_atomic(&paths.record(), vm)
            .map_err(Error::io("cannot write", paths.record()))
    }

    /// The record of `name`, if any.
    pub fn load(&self, name: &str) -> Result<Option<VmRecord>> {
        let path = self.vms.join(name).join("vm.json");
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", path)(e)),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| Error::io("corrupt record", path)(std::io::Error::other(e)))
    }

    /// All records, sorted by name. Dirs without a record (a crash before
    /// the first save) are returned in `orphans`.
    pub fn list(&self) -> Result<(Vec<VmRecord>, Vec<PathBuf>)> {
        let mut vms = Vec::new();
        let mut orphans = Vec::new();
        let entries = match std::fs::read_dir(&self.vms) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vms, orphans)),
            Err(e) => return Err(Error::io("cannot list", &self.vms)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io("cannot list", &self.vms))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // `.prepared`, `.failed`: vmm's own, never a VM (VM names
                // are DNS labels).
                continue;
            }
            match self.load(&name) {
                Ok(Some(vm)) => vms.push(vm),
                Ok(None) => orphans.push(entry.path()),
                Err(e) => tracing::warn!(vm = %name, "skipping unreadable record: {e}"),
            }
        }
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((vms, orphans))
    }

    /// Removes everything the VM has on disk: its dir and its run dir.
    pub fn remove(&self, vm: &VmRecord) -> Result<()> {
        let paths = self.paths_of(vm);
        remove_dir_all(&paths.run)?;
        remove_dir_all(&paths.dir)
    }
}

/// `rm -rf` that is fine with absence.
pub fn remove_dir_all(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", path)(e)),
    }
}

/// A fresh VM id: 16 hex digits.
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

pub use banger_proto::host::now_unix;

#[cfg(test)]
pub(crate) fn sample(name: &str) -> VmRecord {
    VmRecord {
        id: new_id(),
        name: name.into(),
        state: VmState::Creating,
        image: ImageInfo {
            name: "debian-bookworm".into(),
            direct_boot: true,
            ..Default::default()
        },
        kernel: KernelInfo {
            name: "generic-6.12".into(),
            ..Default::default()
        },
        vcpus: 1,
        memory_mib: 256,
        disk_bytes: 1 << 30,
        backend: Backend::Qemu,
        nat: true,
        ssh_authorized_keys: vec!["ssh-ed25519 AAAA test".into()],
        ssh_host_key: None,
        lease: None,
        pid: None,
        helper_pid: None,
        cmdline: String::new(),
        accel: None,
        backend_why: None,
        accel_why: None,
        systemd_boot: None,
        created_unix: now_unix(),
        started_unix: None,
        stop_requested: false,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("state/vms"), &dir.path().join("run"));
        let mut b = sample("b");
        let a = sample("a");
        store.save(&b).unwrap();
        store.save(&a).unwrap();
        b.state = VmState::Running;
        b.pid = Some(42);
        store.save(&b).unwrap();
        assert_eq!(store.load("b").unwrap().unwrap(), b);
        assert_eq!(store.load("zzz").unwrap(), None);
        std::fs::create_dir_all(dir.path().join("state/vms/orphan")).unwrap();
        let (vms, orphans) = store.list().unwrap();
        assert_eq!(
            vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(orphans, [dir.path().join("state/vms/orphan")]);
        store.remove(&b).unwrap();
        assert_eq!(store.load("b").unwrap(), None);
        assert!(!store.paths_of(&b).dir.exists());
    }

    #[test]
    fn state_rules() {
        use VmState::*;
        let row = |s: VmState| {
            [
                s.is_busy(),
                s.can_start(),
                s.can_stop(),
                s.can_delete(false),
                s.can_delete(true),
                s.can_reach_guest(),
                s.can_answer_create(),
            ]
        };
        //                 busy   start  stop   delete force  reach  reuse
        assert_eq!(
            row(Creating),
            [true, false, false, true, true, false, false]
        );
        assert_eq!(row(Running), [false, false, true, false, true, true, true]);
        assert_eq!(row(Stopped), [false, true, false, true, true, false, true]);
        assert_eq!(row(Error), [false, true, false, true, true, false, false]);
        assert_eq!(
            row(Deleting),
            [true, false, false, true, true, false, false]
        );
    }

    #[test]
    fn record_json_is_stable() {
        let vm = sample("x");
        let json = serde_json::to_value(&vm).unwrap();
        assert_eq!(json["state"], "creating");
        assert_eq!(json["backend"], "qemu");
    }

    #[test]
    fn ids_are_hex_and_distinct() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
