//! `[vmm]` of banger.toml: which hypervisor, where its binaries are, and the
//! defaults of a VM. Every field has a default, so an absent section works.

use std::collections::BTreeMap;

use banger_proto::guest::GuestNetwork;
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
    /// Seconds the one-off VM that prepares an image (installs an init and
    /// sshd with the guest's package manager) may take: separate from, and
    /// much longer than, the readiness timeout of a boot.
    pub prepare_timeout_secs: u32,
    /// Space added to an image for its preparation's installs.
    pub prepare_headroom_mib: u64,
    /// Console logs of failed creates kept for `banger vm logs` (oldest
    /// dropped first).
    pub failed_creates_kept: usize,
    /// `[guest]` of banger.toml (its own section: it is about guests, not
    /// the vmm process); filled by the service from the config.
    #[serde(skip)]
    pub guest: GuestConfig,
    /// Units masked (`systemd.mask=`) on the command line of VMs whose image
    /// boots its systemd directly: jobs a banger microVM has no use for.
    /// Default: [`crate::cmdline::DEFAULT_MASKED_UNITS`], each justified
    /// there; `[]` masks none.
    pub masked_units: Vec<String>,
    /// Drop Debian's `ssh.service` `sshd -t` pre-check in such VMs
    /// (see [`crate::disk::SystemdPrep`]).
    pub skip_sshd_config_check: bool,
}

/// The `[guest]` section: how a guest's first boot reaches package mirrors.
/// First boot applies it to apt, dnf/yum, apk, pacman and zypper; the DNS
/// servers come from `[netd] dns`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuestConfig {
    /// `http://host:port` for plain-HTTP fetches.
    pub http_proxy: String,
    pub https_proxy: String,
    /// Comma-separated hosts that bypass the proxy.
    pub no_proxy: String,
    /// Per family (`debian`, `fedora`, `alpine`, `arch`, `suse`): URL
    /// prefix as the image's sources name it → the prefix to use instead.
    /// `[guest.mirrors.debian] "http://deb.debian.org/debian" = "http://mirror.lan/debian"`
    pub mirrors: BTreeMap<String, BTreeMap<String, String>>,
}

/// The families `[guest.mirrors]` may name (first boot's table).
pub const MIRROR_FAMILIES: &[&str] = &["debian", "fedora", "alpine", "arch", "suse"];

/// A bad `[guest]` setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid [guest] {key} = {value:?}: {why}")]
pub struct InvalidGuestConfig {
    pub key: String,
    pub value: String,
    pub why: &'static str,
}

impl GuestConfig {
    /// Refuses values first boot could not use: the guest treats them as
    /// data, but a URL with a newline or without a scheme is a mistake.
    pub fn validate(&self) -> Result<(), InvalidGuestConfig> {
        let url = |key: &str, value: &str| {
            let bad = |why| InvalidGuestConfig {
                key: key.into(),
                value: value.into(),
                why,
            };
            if value.chars().any(|c| c.is_whitespace() || c.is_control()) || value.len() > 1024 {
                return Err(bad("no spaces or control characters, at most 1024 bytes"));
            }
            if !(value.starts_with("http://") || value.starts_with("https://")) {
                return Err(bad("must start with http:// or https://"));
            }
            Ok(())
        };
        for (key, value) in [
            ("http_proxy", &self.http_proxy),
            ("https_proxy", &self.https_proxy),
        ] {
            if !value.is_empty() {
                url(key, value)?;
            }
        }
        if self
            .no_proxy
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(InvalidGuestConfig {
                key: "no_proxy".into(),
                value: self.no_proxy.clone(),
                why: "comma-separated hosts, no spaces",
            });
        }
        for (family, rules) in &self.mirrors {
            if !MIRROR_FAMILIES.contains(&family.as_str()) {
                return Err(InvalidGuestConfig {
                    key: format!("mirrors.{family}"),
                    value: String::new(),
                    why: "the families are debian, fedora, alpine, arch, suse",
                });
            }
            for (from, to) in rules {
                url(&format!("mirrors.{family} key"), from)?;
                url(&format!("mirrors.{family}.{from:?}"), to)?;
            }
        }
        Ok(())
    }

    /// What the guest's `identity.json` carries.
    pub fn network(&self) -> GuestNetwork {
        let some = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
        GuestNetwork {
            http_proxy: some(&self.http_proxy),
            https_proxy: some(&self.https_proxy),
            no_proxy: some(&self.no_proxy),
            mirrors: self.mirrors.clone(),
        }
    }
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
            prepare_timeout_secs: 1800,
            prepare_headroom_mib: 2048,
            failed_creates_kept: 20,
            guest: GuestConfig::default(),
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
    fn guest_settings_are_checked_and_become_the_identitys_network() {
        let cfg = banger_proto::config::Config::parse(
            "[guest]\nhttp_proxy = \"http://proxy:3128\"\n[guest.mirrors.debian]\n\"http://deb.debian.org/debian\" = \"http://m/debian\"\n",
            "t.toml",
        )
        .unwrap();
        let guest: GuestConfig = cfg.section("guest").unwrap();
        guest.validate().unwrap();
        let net = guest.network();
        assert_eq!(net.http_proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!(net.https_proxy, None);
        assert_eq!(
            net.mirrors["debian"]["http://deb.debian.org/debian"],
            "http://m/debian"
        );
        for bad in [
            "[guest]\nhttp_proxy = \"proxy:3128\"\n",
            "[guest]\nhttp_proxy = \"http://p\\nX\"\n",
            "[guest.mirrors.gentoo]\n\"http://a\" = \"http://b\"\n",
            "[guest.mirrors.debian]\n\"http://a\" = \"ftp://b\"\n",
        ] {
            let cfg = banger_proto::config::Config::parse(bad, "t.toml").unwrap();
            let guest: GuestConfig = cfg.section("guest").unwrap();
            assert!(guest.validate().is_err(), "{bad}");
        }
        let cfg =
            banger_proto::config::Config::parse("[guest]\nproxy = \"x\"\n", "t.toml").unwrap();
        assert!(cfg.section::<GuestConfig>("guest").is_err());
    }

    #[test]
    fn the_shipped_config_is_the_default() {
        let text = include_str!("../../../configs/banger.toml");
        let cfg = banger_proto::config::Config::parse(text, "configs/banger.toml").unwrap();
        let vmm: VmmConfig = cfg.section("vmm").unwrap();
        assert_eq!(
            vmm.prepare_timeout_secs,
            VmmConfig::default().prepare_timeout_secs
        );
        let guest: GuestConfig = cfg.section("guest").unwrap();
        assert_eq!(guest, GuestConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let cfg =
            banger_proto::config::Config::parse("[vmm]\nhypervisr = \"qemu\"\n", "t.toml").unwrap();
        assert!(cfg.section::<VmmConfig>("vmm").is_err());
    }
}
