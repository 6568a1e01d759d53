//! Facts about this host that several banger processes check, each with one
//! home: whether a process is alive, the clock in Unix seconds, and whether
//! KVM can run guests (vmm chooses a backend by it, `banger doctor` reports
//! it).

use std::path::Path;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Whether `pid` exists and has not exited: a zombie (`Z`, or `X` while it
/// is being reaped) has exited, only its parent's wait is missing.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself
        // contain `)`: split at the last one.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// What `/dev/kvm` offers this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kvm {
    /// Opens read-write and speaks the stable KVM API: guests run.
    Usable,
    /// No `/dev/kvm` (no virtualization, or the module is not loaded).
    Absent,
    /// `kvm_pvm` (nested clouds): the device works, but unmodified guest
    /// kernels die with KVM_EXIT_INTERNAL_ERROR.
    Pvm,
    /// It exists but this process cannot use it (permissions, wrong API).
    Unusable { reason: String },
}

impl Kvm {
    /// Whether unmodified guests run on it (Firecracker, QEMU `-accel kvm`).
    pub fn runs_guests(&self) -> bool {
        *self == Kvm::Usable
    }

    /// One sentence for users: what was found.
    pub fn describe(&self) -> String {
        match self {
            Kvm::Usable => "/dev/kvm is usable".into(),
            Kvm::Absent => "/dev/kvm is absent (no hardware virtualization here, or kvm_intel/kvm_amd not loaded)".into(),
            Kvm::Pvm => "/dev/kvm is kvm_pvm, which cannot run unmodified guest kernels".into(),
            Kvm::Unusable { reason } => format!("/dev/kvm cannot be used: {reason}"),
        }
    }
}

/// Probes `/dev/kvm` as this process sees it.
pub fn probe_kvm() -> Kvm {
    let pvm = Path::new("/sys/module/kvm_pvm").exists()
        || std::fs::read_to_string("/proc/modules")
            .is_ok_and(|m| m.lines().any(|l| l.starts_with("kvm_pvm ")));
    probe_kvm_at(Path::new("/dev/kvm"), pvm)
}

/// [`probe_kvm`] for a given device path and kvm_pvm fact (testable).
pub fn probe_kvm_at(device: &Path, kvm_pvm_loaded: bool) -> Kvm {
    use std::os::fd::AsRawFd;
    if !device.exists() {
        return Kvm::Absent;
    }
    if kvm_pvm_loaded {
        return Kvm::Pvm;
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
    {
        Ok(f) => f,
        Err(e) => {
            return Kvm::Unusable {
                reason: format!(
                    "cannot open it read-write ({e}); add the user to group kvm (`usermod -aG kvm banger`)"
                ),
            };
        }
    };
    // KVM_GET_API_VERSION = _IO(KVMIO 0xAE, 0x00); 12 since Linux 2.6.22.
    nix::ioctl_none!(kvm_get_api_version, 0xAE, 0x00);
    // SAFETY: an argument-less ioctl on an fd we own for the whole call; a
    // non-KVM device answers ENOTTY, which is handled below.
    match unsafe { kvm_get_api_version(file.as_raw_fd()) } {
        Ok(12) => Kvm::Usable,
        Ok(v) => Kvm::Unusable {
            reason: format!("it speaks KVM API version {v}, not 12"),
        },
        Err(e) => Kvm::Unusable {
            reason: format!("it does not answer KVM_GET_API_VERSION ({e}): not a KVM device"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_liveness() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped: a zombie is not alive.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pid_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "child never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
    }

    #[test]
    fn clock() {
        assert!(now_unix() > 1_700_000_000);
    }

    #[test]
    fn kvm_probe_names_each_case() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(probe_kvm_at(&dir.path().join("kvm"), false), Kvm::Absent);
        // A device that exists but is not KVM (a regular file).
        let fake = dir.path().join("fake-kvm");
        std::fs::write(&fake, b"").unwrap();
        assert_eq!(probe_kvm_at(&fake, true), Kvm::Pvm);
        let k = probe_kvm_at(&fake, false);
        assert!(
            matches!(&k, Kvm::Unusable { reason } if reason.contains("KVM_GET_API_VERSION")),
            "{k:?}"
        );
        assert!(!k.runs_guests());
        assert!(Kvm::Pvm.describe().contains("kvm_pvm"));
        // This machine: whatever it is, the probe answers without panicking,
        // and kvm_pvm (the CI host) is never called usable.
        let here = probe_kvm();
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(here, Kvm::Pvm);
        }
    }
}
