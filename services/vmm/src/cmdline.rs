//! The guest kernel command line (DESIGN §5) and the host TSC frequency that
//! TCG boots need.

use std::net::Ipv4Addr;

use crate::record::Lease;

/// Path of the first-boot init inside every image banger builds.
pub const FIRST_BOOT: &str = banger_proto::guest::FIRST_BOOT_PATH;

/// The init of an image that has systemd (imagestore's `has_systemd` is
/// exactly "`/sbin/init` resolves to systemd").
pub const SYSTEMD_INIT: &str = "/sbin/init";

/// Units masked by default on the command line of a VM that boots its
/// systemd directly (`[vmm] masked_units` overrides): each has no job in a
/// banger microVM — a fresh copy of an image, one virtio disk, no LVM, no
/// firmware, no hardware, booted to be reached over SSH or the agent.
/// Masking one from the command line touches nothing in the disk and
/// lasts one boot: `[vmm] masked_units = []` brings them all back.
pub const DEFAULT_MASKED_UNITS: &[&str] = &[
    // Reaps e2scrub's leftover LVM snapshots: a VM disk is no LVM volume.
    "e2scrub_reap.service",
    // Weekly e2scrub of ext4 on LVM: none here, and the image is checked at build.
    "e2scrub_all.timer",
    // Archives crash records from EFI variables / ACPI ERST: microvm has neither.
    "systemd-pstore.service",
    // Preloads loop, fuse, drm, dm_mod, efi_pstore and configfs for their
    // users: the kernel loads modules on demand (banger's kernels have the
    // virtio drivers built in or in the initramfs), so nothing waits on it.
    // (Masking the template masks every instance.)
    "modprobe@.service",
    // Pseudo-filesystems for hardware and debugging a microVM has no use
    // for at boot: huge pages (hugetlbfs), POSIX message queues (mq_open
    // works without the mount), debugfs, tracefs, the FUSE control fs
    // (FUSE itself works) and configfs (USB gadgets, LIO targets).
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    // Remounts / with the fstab's options: the kernel mounted it `rw` from
    // banger's command line, and images carry no fstab entry for it.
    "systemd-remount-fs.service",
    // Creates the system users of sysusers.d: the packages that ship them
    // created them when the image was built (or prepared); on the path to
    // sshd under TCG.
    "systemd-sysusers.service",
    // Loads and refreshes the image's saved random seed: every VM of an
    // image would load the same seed, which adds nothing per VM; the
    // kernel seeds its RNG itself (RDRAND, jitter entropy).
    "systemd-random-seed.service",
    // Unattended package downloads and upgrades: a VM lives for a task and
    // may have no route out; updates belong in the image.
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    // Daily dpkg status backup, man page index: the image is the backup,
    // and nobody reads man pages in a microVM at boot.
    "dpkg-db-backup.timer",
    "man-db.timer",
    // Weekly TRIM: the VM's virtio disk does not pass discards to the host.
    "fstrim.timer",
];

/// A VM that boots its image's systemd directly.
#[derive(Debug, Clone, Copy)]
pub struct SystemdCmdline<'a> {
    /// `systemd.mask=` each of these.
    pub masked_units: &'a [String],
    /// The image has udevd; without it no device unit ever appears, so the
    /// ones systemd would wait 90 s for are masked too.
    pub has_udev: bool,
}

/// What goes into one VM's command line.
#[derive(Debug, Clone, Default)]
pub struct CmdlineSpec<'a> {
    pub hostname: &'a str,
    pub lease: Option<&'a Lease>,
    /// Images without an initrd start `banger-first-boot` as PID 1.
    pub direct_boot: bool,
    /// Set on every TCG boot: host TSC frequency in kHz.
    pub tsc_khz: Option<u32>,
    /// Set when vmm prepared the disk for a direct systemd boot
    /// (`init=/sbin/init`, no first boot before it, trimmed units).
    pub systemd: Option<SystemdCmdline<'a>>,
}

/// Builds the kernel command line.
pub fn build(spec: &CmdlineSpec<'_>) -> String {
    let mut args: Vec<String> = [
        "console=ttyS0",
        "reboot=k",
        "panic=1",
        "root=/dev/vda",
        "rw",
    ]
    .map(String::from)
    .into();
    if let Some(lease) = spec.lease {
        args.push(ip_arg(lease, spec.hostname));
    }
    match &spec.systemd {
        Some(_) => args.push(format!("init={SYSTEMD_INIT}")),
        None if spec.direct_boot => args.push(format!("init={FIRST_BOOT}")),
        None => {}
    }
    if let Some(khz) = spec.tsc_khz {
        args.push(format!("tsc_early_khz={khz}"));
    }
    let no_udev = match &spec.systemd {
        Some(s) => {
            args.extend(
                s.masked_units
                    .iter()
                    .filter(|u| is_unit_name(u))
                    .map(|u| format!("systemd.mask={u}")),
            );
            !s.has_udev
        }
        // Unknown: first boot's images may lack udev.
        None => true,
    };
    if no_udev {
        // Guests without udev events otherwise wait 90 s for these devices.
        // With udev they appear, and masking dev-ttyS0 would fail
        // serial-getty@ttyS0 (no console login), so only without.
        args.push("systemd.mask=dev-ttyS0.device".into());
        args.push("systemd.mask=dev-vdb.device".into());
    }
    args.join(" ")
}

/// A systemd unit name that is safe as one command-line word: no
/// whitespace, quotes or `=`, a known unit suffix.
pub fn is_unit_name(u: &str) -> bool {
    const SUFFIXES: [&str; 7] = [
        ".service", ".timer", ".mount", ".socket", ".target", ".path", ".device",
    ];
    !u.is_empty()
        && u.len() <= 255
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@:._-\\".contains(&b))
        && SUFFIXES.iter().any(|s| u.ends_with(s) && u.len() > s.len())
}

/// `ip=<ip>::<gw>:<mask>:<hostname>:eth0:off[:<dns0>[:<dns1>]]`: the kernel
/// brings eth0 up before init, so images without iproute2 have a network.
fn ip_arg(lease: &Lease, hostname: &str) -> String {
    let mut s = format!(
        "ip={}::{}:{}:{}:eth0:off",
        lease.ip,
        lease.gateway,
        prefix_to_mask(lease.prefix_len),
        hostname
    );
    for dns in lease.dns.iter().take(2) {
        s.push(':');
        s.push_str(dns);
    }
    s
}

/// `24` → `255.255.255.0`.
pub fn prefix_to_mask(prefix: u32) -> Ipv4Addr {
    let prefix = prefix.min(32);
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ipv4Addr::from(bits)
}

/// The host's TSC frequency in kHz, for `tsc_early_khz=`.
///
/// Under TCG the guest's `rdtsc` reads the host TSC, so the host's rate is
/// exactly the guest's; passing it skips the guest's TSC calibration, which
/// on `-M microvm` (no HPET, no PM timer) hangs about one boot in six.
/// Sources, best first: the host kernel's own calibration in its log
/// (`tsc: Refined TSC clocksource calibration: X MHz`, else
/// `tsc: Detected X MHz processor`) — the value the host itself trusts;
/// then `/proc/cpuinfo`: the nominal `@ X.XXGHz` of the model name (the TSC
/// rate on constant-TSC CPUs), then `cpu MHz` (exact in VMs, approximate on
/// bare metal with frequency scaling — still far better than no hint).
/// The kernel log may be unreadable to an unprivileged vmm (`dmesg_restrict`).
pub fn host_tsc_khz() -> Option<u32> {
    let dmesg = std::process::Command::new("dmesg")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    tsc_khz_from(&dmesg, &cpuinfo)
}

/// [`host_tsc_khz`] over given texts (unit-testable).
pub fn tsc_khz_from(kernel_log: &str, cpuinfo: &str) -> Option<u32> {
    let mhz_after = |text: &str, marker: &str| {
        text.lines().rev().find_map(|l| {
            let rest = &l[l.find(marker)? + marker.len()..];
            let num: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            num.parse::<f64>().ok()
        })
    };
    let mhz = mhz_after(kernel_log, "Refined TSC clocksource calibration:")
        .or_else(|| mhz_after(kernel_log, "tsc: Detected"))
        .or_else(|| {
            let model = cpuinfo.lines().find(|l| l.starts_with("model name"))?;
            let ghz = model.rsplit_once('@')?.1.trim().strip_suffix("GHz")?;
            ghz.trim().parse::<f64>().ok().map(|g| g * 1000.0)
        })
        .or_else(|| {
            let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
            line.split_once(':')?.1.trim().parse::<f64>().ok()
        })?;
    let khz = (mhz * 1000.0).round();
    (khz >= 1.0 && khz < u32::MAX as f64).then_some(khz as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            tap: "bg-1234".into(),
            ip: "172.30.0.5".into(),
            prefix_len: 24,
            gateway: "172.30.0.1".into(),
            mac: "06:00:ac:1e:00:05".into(),
            dns: vec!["1.1.1.1".into(), "9.9.9.9".into(), "8.8.8.8".into()],
            nat: true,
        }
    }

    #[test]
    fn direct_boot_tcg_cmdline() {
        let lease = lease();
        let line = build(&CmdlineSpec {
            hostname: "testbox",
            lease: Some(&lease),
            direct_boot: true,
            tsc_khz: Some(2_599_998),
            systemd: None,
        });
        assert_eq!(
            line,
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw \
             ip=172.30.0.5::172.30.0.1:255.255.255.0:testbox:eth0:off:1.1.1.1:9.9.9.9 \
             init=/usr/local/libexec/banger-first-boot tsc_early_khz=2599998 \
             systemd.mask=dev-ttyS0.device systemd.mask=dev-vdb.device"
        );
    }

    #[test]
    fn initrd_kvm_cmdline_without_network() {
        let line = build(&CmdlineSpec {
            hostname: "x",
            lease: None,
            direct_boot: false,
            tsc_khz: None,
            systemd: None,
        });
        assert!(!line.contains("init="));
        assert!(!line.contains("tsc_early_khz"));
        assert!(!line.contains(" ip="));
        assert!(line.starts_with("console=ttyS0 reboot=k panic=1 root=/dev/vda rw "));
    }

    /// Modular kernels (Debian's) load their drivers from the initrd:
    /// `nomodule` would leave them without a disk, network and vsock.
    #[test]
    fn never_nomodule() {
        let lease = lease();
        for direct_boot in [false, true] {
            for l in [None, Some(&lease)] {
                for tsc_khz in [None, Some(1)] {
                    let line = build(&CmdlineSpec {
                        hostname: "nomodule",
                        lease: l,
                        direct_boot,
                        tsc_khz,
                        systemd: None,
                    });
                    assert!(
                        !line
                            .split(' ')
                            .any(|w| w == "nomodule" || w.starts_with("nomodule=")),
                        "{line}"
                    );
                }
            }
        }
    }

    #[test]
    fn systemd_boots_directly_with_the_trimmed_units() {
        let lease = lease();
        let masked: Vec<String> = DEFAULT_MASKED_UNITS.iter().map(|s| s.to_string()).collect();
        for direct_boot in [false, true] {
            let line = build(&CmdlineSpec {
                hostname: "sd",
                lease: Some(&lease),
                direct_boot,
                tsc_khz: None,
                systemd: Some(SystemdCmdline {
                    masked_units: &masked,
                    has_udev: true,
                }),
            });
            let words: Vec<&str> = line.split(' ').collect();
            assert!(words.contains(&"init=/sbin/init"), "{line}");
            assert!(!line.contains(FIRST_BOOT), "{line}");
            assert!(words.contains(&"systemd.mask=e2scrub_reap.service"));
            assert!(words.contains(&"systemd.mask=modprobe@.service"));
            // With udev, the serial console's device appears: not masked,
            // so serial-getty@ttyS0 (console login) can start.
            assert!(!line.contains("dev-ttyS0"), "{line}");
        }
        // Without udev, device units never appear: mask what would stall.
        let none: Vec<String> = Vec::new();
        let line = build(&CmdlineSpec {
            hostname: "sd",
            lease: None,
            direct_boot: true,
            tsc_khz: None,
            systemd: Some(SystemdCmdline {
                masked_units: &none,
                has_udev: false,
            }),
        });
        assert!(
            line.ends_with(
                "init=/sbin/init systemd.mask=dev-ttyS0.device systemd.mask=dev-vdb.device"
            ),
            "{line}"
        );
    }

    #[test]
    fn unit_names() {
        for ok in DEFAULT_MASKED_UNITS {
            assert!(is_unit_name(ok), "{ok}");
        }
        assert!(is_unit_name("serial-getty@ttyS0.service"));
        for bad in [
            "",
            ".service",
            "a b.service",
            "x.service init=/bin/sh",
            "a=b.service",
            "noext",
            "q\"x.timer",
        ] {
            assert!(!is_unit_name(bad), "{bad}");
        }
    }

    #[test]
    fn dns_is_optional() {
        let mut l = lease();
        l.dns.clear();
        assert!(ip_arg(&l, "h").ends_with(":h:eth0:off"));
        l.dns = vec!["10.0.0.53".into()];
        assert!(ip_arg(&l, "h").ends_with(":h:eth0:off:10.0.0.53"));
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_to_mask(24).to_string(), "255.255.255.0");
        assert_eq!(prefix_to_mask(16).to_string(), "255.255.0.0");
        assert_eq!(prefix_to_mask(30).to_string(), "255.255.255.252");
        assert_eq!(prefix_to_mask(0).to_string(), "0.0.0.0");
        assert_eq!(prefix_to_mask(32).to_string(), "255.255.255.255");
    }

    #[test]
    fn tsc_sources_in_order() {
        let log = "[0.000056] tsc: Detected 2599.998 MHz processor\n\
                   [1.2] tsc: Refined TSC clocksource calibration: 2600.001 MHz\n";
        let cpuinfo =
            "model name\t: Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz\ncpu MHz\t\t: 1200.000\n";
        assert_eq!(tsc_khz_from(log, cpuinfo), Some(2_600_001));
        assert_eq!(
            tsc_khz_from("[0.0] tsc: Detected 2599.998 MHz processor", cpuinfo),
            Some(2_599_998)
        );
        assert_eq!(tsc_khz_from("", cpuinfo), Some(2_600_000));
        assert_eq!(
            tsc_khz_from(
                "",
                "model name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2599.998\n"
            ),
            Some(2_599_998)
        );
        assert_eq!(tsc_khz_from("", ""), None);
    }

    #[test]
    fn this_host_has_a_tsc_rate() {
        assert!(host_tsc_khz().is_some_and(|k| k > 100_000));
    }
}
