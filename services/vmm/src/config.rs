//! `[vmm]` of banger.toml: which hypervisor, where its binaries are, and the
//! defaults of a VM. Every field has a default, so an absent section works.

use serde::{Deserialize, Serialize};

/// Hypervisor backend of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Firecracker, configured through its API socket.
    Firecracker,
    /// QEMU `-M microvm`.
    Qemu,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Firecracker => "firecracker",
            Backend::Qemu => "qemu",
        })
    }
}

/// `[vmm] hypervisor`: a backend, or `auto` to let the vmm choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendSetting {
    /// Firecracker when its binary starts and KVM can run guests, QEMU
    /// otherwise (see [`crate::hypervisor::choose`]).
    #[default]
    Auto,
    Firecracker,
    Qemu,
}

/// How QEMU accelerates guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QemuAccel {
    /// KVM when it can run guests, else TCG with a warning (DESIGN §7).
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG (software emulation).
    Tcg,
}

/// The `[vmm]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmmConfig {
    /// Default backend (`auto`: chosen at vmm start from what this host
    /// offers); `banger vm create --hypervisor` overrides it per VM.
    pub hypervisor: BackendSetting,
    /// QEMU acceleration.
    pub qemu_accel: QemuAccel,
    /// QEMU binary (name on PATH or absolute path).
    pub qemu_binary: String,
    /// Firecracker binary.
    pub firecracker_binary: String,
    /// rust-vmm's `vhost-device-vsock` (QEMU's hybrid-vsock provider).
    pub vhost_vsock_binary: String,
    /// Host TSC frequency in kHz passed as `tsc_early_khz=` on TCG boots;
    /// 0 = detect from the host kernel log or /proc/cpuinfo.
    pub tsc_khz: u32,
    /// Kernel used when neither the request nor the image names one.
    pub default_kernel: String,
    /// vCPUs of a VM when the request says 0.
    pub default_vcpus: u32,
    /// Memory of a VM when the request says 0.
    pub default_memory_mib: u32,
    /// Extra space added to the image's size when the request gives no disk size.
    pub disk_headroom_mib: u64,
    /// Seconds to wait for a VM to become ready.
    pub ready_timeout_secs: u32,
    /// Seconds a graceful stop may take before the VM is killed.
    pub stop_timeout_secs: u32,
    /// Units masked (`systemd.mask=`) on the command line of VMs whose image
    /// boots its systemd directly: jobs a banger microVM has no use for.
    /// Default: [`crate::cmdline::DEFAULT_MASKED_UNITS`], each justified
    /// there; `[]` masks none.
    pub masked_units: Vec<String>,
    /// Drop Debian's `ssh.service` `sshd -t` pre-check in such VMs
    /// (see [`crate::disk::SystemdPrep`]).
    pub skip_sshd_config_check: bool,
}

impl Default for VmmConfig {
    fn default() -> Self {
        VmmConfig {
            hypervisor: BackendSetting::Auto,
            qemu_accel: QemuAccel::Auto,
            qemu_binary: "qemu-system-x86_64".into(),
            firecracker_binary: "firecracker".into(),
            vhost_vsock_binary: "vhost-device-vsock".into(),
            tsc_khz: 0,
            default_kernel: banger_proto::config::DEFAULT_KERNEL.into(),
            default_vcpus: 1,
            default_memory_mib: 1024,
            disk_headroom_mib: 1024,
            ready_timeout_secs: 120,
            stop_timeout_secs: 30,
            masked_units: crate::cmdline::DEFAULT_MASKED_UNITS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            skip_sshd_config_check: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_take_defaults() {
        let cfg = banger_proto::config::Config::parse(
            "[vmm]\nhypervisor = \"firecracker\"\nqemu_accel = \"tcg\"\n",
            "t.toml",
        )
        .unwrap();
        let vmm: VmmConfig = cfg.section("vmm").unwrap();
        assert_eq!(vmm.hypervisor, BackendSetting::Firecracker);
        assert_eq!(vmm.qemu_accel, QemuAccel::Tcg);
        assert_eq!(vmm.default_memory_mib, 1024);
        assert_eq!(vmm.ready_timeout_secs, 120);
        assert_eq!(vmm.default_kernel, "debian-6.12");
        let none = banger_proto::config::Config::parse("", "t.toml").unwrap();
        let vmm: VmmConfig = none.section("vmm").unwrap();
        assert_eq!(vmm.hypervisor, BackendSetting::Auto, "auto is the default");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let cfg =
            banger_proto::config::Config::parse("[vmm]\nhypervisr = \"qemu\"\n", "t.toml").unwrap();
        assert!(cfg.section::<VmmConfig>("vmm").is_err());
    }
}
