//! What the initramfs init reads, parsed without touching the machine: the
//! kernel command line (`root=`, `rw`/`ro`, `init=`, `rootfstype=`, `ip=`),
//! the module list and `initramfs.json` (see INITRAMFS contract in the
//! kernelcat docs). Everything here is pure so hostile inputs are unit
//! tested; [`super`] does the syscalls.

use std::net::Ipv4Addr;

use serde::Deserialize;

use super::InitError;

/// The root device when `root=` is absent: banger's disk is always the
/// first virtio-blk device.
pub const DEFAULT_ROOT: &str = "/dev/vda";
/// The real root's init when `init=` is absent (the kernel's own first choice).
pub const DEFAULT_INIT: &str = "/sbin/init";
/// The root filesystem type when `rootfstype=` is absent: banger images are ext4.
pub const DEFAULT_ROOTFSTYPE: &str = "ext4";
/// Longest command line we accept (the kernel's own limit on x86 is 2048;
/// a larger /proc/cmdline means something else is being fed to us).
const MAX_CMDLINE: usize = 64 * 1024;
/// Most modules one initramfs lists (the Debian cloud kernel needs 8).
const MAX_MODULES: usize = 256;

/// `/etc/banger/initramfs.json`, written by kernelcat's generator.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitramfsInfo {
    /// `uname -r` of the kernel the modules were built for.
    pub kernel_version: String,
    /// The kernel configures `ip=` itself (CONFIG_IP_PNP).
    pub ip_pnp: bool,
}

impl InitramfsInfo {
    /// Parses the JSON text.
    pub fn parse(text: &str) -> Result<Self, InitError> {
        serde_json::from_str(text).map_err(|e| InitError::Parse {
            what: "/etc/banger/initramfs.json",
            detail: e.to_string(),
        })
    }
}

/// What the init takes from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// Root device node (`root=`), e.g. `/dev/vda`.
    pub root: String,
    /// `rootfstype=`.
    pub rootfstype: String,
    /// Mount the root read-only (`ro`; the last of `rw`/`ro` wins, as in the
    /// kernel; neither means read-only, as the kernel does).
    pub read_only: bool,
    /// `init=`: the real root's init.
    pub init: String,
    /// `ip=`, when given in the `<ip>::<gw>:<mask>:<host>:<dev>:off` form.
    pub ip: Option<IpConfig>,
}

impl Cmdline {
    /// Parses the text of `/proc/cmdline`.
    ///
    /// The kernel splits on spaces and honours double quotes (`a="b c"`);
    /// so do we. An `ip=` we cannot read is an error, not ignored: booting
    /// without the network the host expects would only fail later, less
    /// clearly. Everything after `--` belongs to init, not to us.
    pub fn parse(text: &str) -> Result<Self, InitError> {
        if text.len() > MAX_CMDLINE {
            return Err(InitError::Parse {
                what: "/proc/cmdline",
                detail: format!("{} bytes, more than {MAX_CMDLINE}", text.len()),
            });
        }
        let mut line = Cmdline {
            root: DEFAULT_ROOT.into(),
            rootfstype: DEFAULT_ROOTFSTYPE.into(),
            read_only: true,
            init: DEFAULT_INIT.into(),
            ip: None,
        };
        for word in split_words(text) {
            if word == "--" {
                break;
            }
            match word.split_once('=') {
                None if word == "rw" => line.read_only = false,
                None if word == "ro" => line.read_only = true,
                None => {}
                Some(("root", v)) => line.root = absolute("root=", v)?,
                Some(("init", v)) => line.init = absolute("init=", v)?,
                Some(("rootfstype", v)) => {
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return Err(InitError::Parse {
                            what: "rootfstype=",
                            detail: format!("{v:?} is not a filesystem type name"),
                        });
                    }
                    line.rootfstype = v.into();
                }
                Some(("ip", v)) => line.ip = IpConfig::parse(v)?,
                Some(_) => {}
            }
        }
        Ok(line)
    }
}

/// The kernel's word splitting: spaces (and other ASCII whitespace) separate
/// words, double quotes group and are dropped.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_ascii_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// A path argument: absolute, no NUL, no `..` (it is looked up in the new
/// root, never outside it).
fn absolute(what: &'static str, v: &str) -> Result<String, InitError> {
    if !v.starts_with('/') || v.contains('\0') || v.split('/').any(|c| c == "..") {
        return Err(InitError::Parse {
            what,
            detail: format!("{v:?}: give an absolute path without `..` (e.g. /dev/vda)"),
        });
    }
    Ok(v.into())
}

/// `ip=<ip>::<gw>:<mask>:<hostname>:<device>:off[:<dns0>[:<dns1>]]`, the
/// form vmm writes (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Ipv4Addr,
    /// Absent when the field is empty (no default route then).
    pub gateway: Option<Ipv4Addr>,
    pub prefix_len: u8,
    pub hostname: Option<String>,
    pub device: String,
    pub dns: Vec<Ipv4Addr>,
}

impl IpConfig {
    /// Parses the value of `ip=`. `Ok(None)` for the autoconfiguration
    /// keywords (`dhcp`, `off`, …) that mean "nothing for us to set".
    pub fn parse(v: &str) -> Result<Option<Self>, InitError> {
        if matches!(
            v,
            "" | "off" | "none" | "dhcp" | "on" | "any" | "bootp" | "rarp" | "both"
        ) {
            return Ok(None);
        }
        let bad = |detail: String| InitError::Parse {
            what: "ip=",
            detail: format!("{v:?}: {detail}"),
        };
        let fields: Vec<&str> = v.split(':').collect();
        if fields.len() < 7 || fields.len() > 9 {
            return Err(bad(format!(
                "{} fields; want <ip>::<gw>:<mask>:<host>:<dev>:off[:<dns0>[:<dns1>]]",
                fields.len()
            )));
        }
        let ip = |s: &str, what: &str| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| bad(format!("{what} {s:?} is not an IPv4 address")))
        };
        let address = ip(fields[0], "address")?;
        let gateway = match fields[2] {
            "" => None,
            g => Some(ip(g, "gateway")?),
        };
        let prefix_len = mask_to_prefix(ip(fields[3], "netmask")?)
            .ok_or_else(|| bad(format!("netmask {:?} is not contiguous", fields[3])))?;
        let hostname = match fields[4] {
            "" => None,
            h if valid_hostname(h) => Some(h.to_owned()),
            h => return Err(bad(format!("hostname {h:?} is not a valid host name"))),
        };
        let device = fields[5];
        if device.is_empty()
            || device.len() >= 16
            || !device
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(bad(format!("device {device:?} is not an interface name")));
        }
        if fields[6] != "off" && fields[6] != "none" {
            return Err(bad(format!(
                "autoconf {:?}: only static configuration (`off`) is supported",
                fields[6]
            )));
        }
        let dns = fields[7..]
            .iter()
            .filter(|d| !d.is_empty())
            .map(|d| ip(d, "DNS server"))
            .collect::<Result<_, _>>()?;
        Ok(Some(IpConfig {
            address,
            gateway,
            prefix_len,
            hostname,
            device: device.into(),
            dns,
        }))
    }
}

/// RFC 1123 host name: labels of letters, digits and `-`, at most 64 bytes
/// in all (what `sethostname(2)` accepts).
pub fn valid_hostname(h: &str) -> bool {
    h.len() <= 64
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `255.255.255.0` → 24; `None` for a mask whose ones are not contiguous.
pub fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

/// `/etc/banger/modules`: one absolute path per line, in load order; empty
/// lines and `#` comments ignored. Paths must stay under `/lib/modules/`.
pub fn parse_modules(text: &str) -> Result<Vec<String>, InitError> {
    let mut modules = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |detail: &str| InitError::Parse {
            what: "/etc/banger/modules",
            detail: format!("line {}: {line:?}: {detail}", n + 1),
        };
        let path = absolute("/etc/banger/modules", line).map_err(|_| bad("not absolute"))?;
        if !path.starts_with("/lib/modules/") {
            return Err(bad("not under /lib/modules/"));
        }
        if module_compression(&path).is_none() && !path.ends_with(".ko") {
            return Err(bad("not a .ko, .ko.xz, .ko.zst or .ko.gz file"));
        }
        modules.push(path);
        if modules.len() > MAX_MODULES {
            return Err(bad(&format!("more than {MAX_MODULES} modules")));
        }
    }
    Ok(modules)
}

/// `Some(ext)` for a module the kernel must decompress
/// (`MODULE_INIT_COMPRESSED_FILE`), `None` for a plain `.ko`.
pub fn module_compression(path: &str) -> Option<&'static str> {
    ["xz", "zst", "gz"]
        .into_iter()
        .find(|ext| path.strip_suffix(ext).is_some_and(|p| p.ends_with(".ko.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BANGER: &str = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw \
        ip=172.30.0.5::172.30.0.1:255.255.255.0:testbox:eth0:off:1.1.1.1:9.9.9.9 \
        init=/usr/local/libexec/banger-first-boot tsc_early_khz=2599998 \
        systemd.mask=dev-ttyS0.device systemd.mask=dev-vdb.device\n";

    #[test]
    fn banger_cmdline() {
        let c = Cmdline::parse(BANGER).unwrap();
        assert_eq!(c.root, "/dev/vda");
        assert!(!c.read_only);
        assert_eq!(c.init, "/usr/local/libexec/banger-first-boot");
        assert_eq!(c.rootfstype, "ext4");
        let ip = c.ip.unwrap();
        assert_eq!(ip.address, Ipv4Addr::new(172, 30, 0, 5));
        assert_eq!(ip.gateway, Some(Ipv4Addr::new(172, 30, 0, 1)));
        assert_eq!(ip.prefix_len, 24);
        assert_eq!(ip.hostname.as_deref(), Some("testbox"));
        assert_eq!(ip.device, "eth0");
        assert_eq!(
            ip.dns,
            vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(9, 9, 9, 9)]
        );
    }

    #[test]
    fn defaults_and_last_flag_wins() {
        let c = Cmdline::parse("").unwrap();
        assert_eq!(
            c,
            Cmdline {
                root: DEFAULT_ROOT.into(),
                rootfstype: "ext4".into(),
                read_only: true,
                init: DEFAULT_INIT.into(),
                ip: None,
            }
        );
        assert!(!Cmdline::parse("ro rw").unwrap().read_only);
        assert!(Cmdline::parse("rw ro").unwrap().read_only);
        assert_eq!(
            Cmdline::parse("root=/dev/vdb root=/dev/vdc").unwrap().root,
            "/dev/vdc"
        );
        // Words after `--` are init's.
        assert_eq!(
            Cmdline::parse("rw -- init=/evil ro").unwrap(),
            Cmdline {
                read_only: false,
                ..Cmdline::parse("").unwrap()
            }
        );
        // Look-alikes are not ours.
        let c = Cmdline::parse("xroot=/dev/sda noinit=/x rootwait rwx ip6=::1").unwrap();
        assert_eq!(c, Cmdline::parse("").unwrap());
    }

    #[test]
    fn quotes_and_whitespace() {
        let c = Cmdline::parse("  \t\"init=/sbin/my init\"\n root=\"/dev/vda\"  ").unwrap();
        assert_eq!(c.init, "/sbin/my init");
        assert_eq!(c.root, "/dev/vda");
        // An unterminated quote runs to the end, as in the kernel.
        assert_eq!(
            Cmdline::parse("init=\"/sbin/a b").unwrap().init,
            "/sbin/a b"
        );
        assert_eq!(split_words("a \"\" b"), vec!["a", "", "b"]);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "root=vda",
            "root=",
            "root=../dev/vda",
            "root=/dev/../../etc/shadow",
            "init=sbin/init",
            "init=/sbin/../../x",
            "init=/a\0b",
            "rootfstype=ext4,nodev",
            "rootfstype=",
            "rootfstype=../x",
        ] {
            assert!(Cmdline::parse(bad).is_err(), "{bad:?} accepted");
        }
        let huge = "a".repeat(MAX_CMDLINE + 1);
        assert!(Cmdline::parse(&huge).is_err());
        // Non-ASCII and control bytes elsewhere are someone else's business.
        assert!(Cmdline::parse("é=\u{7} \u{1b}[0m root=/dev/vda").is_ok());
    }

    #[test]
    fn ip_forms() {
        assert_eq!(IpConfig::parse("off").unwrap(), None);
        assert_eq!(IpConfig::parse("dhcp").unwrap(), None);
        assert_eq!(IpConfig::parse("").unwrap(), None);
        let ip = IpConfig::parse("10.0.0.2:::255.255.255.252::eth1:off")
            .unwrap()
            .unwrap();
        assert_eq!(ip.gateway, None);
        assert_eq!(ip.prefix_len, 30);
        assert_eq!(ip.hostname, None);
        assert_eq!(ip.device, "eth1");
        assert!(ip.dns.is_empty());
        let ip = IpConfig::parse("10.0.0.2::10.0.0.1:255.0.0.0:h:eth0:off::10.0.0.53")
            .unwrap()
            .unwrap();
        assert_eq!(ip.dns, vec![Ipv4Addr::new(10, 0, 0, 53)]);
    }

    #[test]
    fn hostile_ip_values_are_refused() {
        for bad in [
            "172.30.0.5",
            "172.30.0.5::172.30.0.1:255.255.255.0:h:eth0",
            "172.30.0.5::172.30.0.1:255.255.255.0:h:eth0:off:1.1.1.1:2.2.2.2:3.3.3.3",
            "172.30.0.256::172.30.0.1:255.255.255.0:h:eth0:off",
            "::172.30.0.1:255.255.255.0:h:eth0:off",
            "fe80::1::172.30.0.1:255.255.255.0:h:eth0:off",
            "172.30.0.5::gw:255.255.255.0:h:eth0:off",
            "172.30.0.5::172.30.0.1:255.0.255.0:h:eth0:off",
            "172.30.0.5::172.30.0.1:24:h:eth0:off",
            "172.30.0.5::172.30.0.1:255.255.255.0:h;rm -rf /:eth0:off",
            "172.30.0.5::172.30.0.1:255.255.255.0:-h:eth0:off",
            "172.30.0.5::172.30.0.1:255.255.255.0:h..x:eth0:off",
            "172.30.0.5::172.30.0.1:255.255.255.0:h::off",
            "172.30.0.5::172.30.0.1:255.255.255.0:h:eth0/../lo:off",
            "172.30.0.5::172.30.0.1:255.255.255.0:h:averyveryverylongname:off",
            "172.30.0.5::172.30.0.1:255.255.255.0:h:eth0:dhcp",
            "172.30.0.5::172.30.0.1:255.255.255.0:h:eth0:off:dns",
        ] {
            assert!(IpConfig::parse(bad).is_err(), "{bad:?} accepted");
            assert!(Cmdline::parse(&format!("ip={bad}")).is_err(), "{bad:?}");
        }
        assert!(IpConfig::parse(" 172.30.0.5::172.30.0.1:255.255.255.0:h:eth0:off").is_err());
        let long = format!(
            "172.30.0.5::172.30.0.1:255.255.255.0:{}:eth0:off",
            "a".repeat(65)
        );
        assert!(IpConfig::parse(&long).is_err());
    }

    #[test]
    fn masks_to_prefixes() {
        for p in 0..=32u32 {
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            assert_eq!(mask_to_prefix(Ipv4Addr::from(mask)), Some(p as u8), "{p}");
        }
        for bad in ["0.0.0.1", "255.0.255.0", "255.255.255.253", "127.0.0.0"] {
            assert_eq!(mask_to_prefix(bad.parse().unwrap()), None, "{bad}");
        }
    }

    #[test]
    fn module_lists() {
        let text = "# deps first\n\n  /lib/modules/6.12/kernel/drivers/virtio/virtio_mmio.ko.xz  \n\
                    /lib/modules/6.12/kernel/net/core/failover.ko.zst\n\
                    /lib/modules/6.12/kernel/x.ko\n/lib/modules/6.12/kernel/y.ko.gz\n";
        assert_eq!(
            parse_modules(text).unwrap(),
            vec![
                "/lib/modules/6.12/kernel/drivers/virtio/virtio_mmio.ko.xz",
                "/lib/modules/6.12/kernel/net/core/failover.ko.zst",
                "/lib/modules/6.12/kernel/x.ko",
                "/lib/modules/6.12/kernel/y.ko.gz",
            ]
        );
        assert!(parse_modules("").unwrap().is_empty());
        assert!(parse_modules("#only\n   \n").unwrap().is_empty());
        for bad in [
            "lib/modules/x.ko",
            "/etc/shadow",
            "/lib/modules/../../etc/x.ko",
            "/lib/modules/6.12/x.ko.bz2",
            "/lib/modules/6.12/x.xz",
            "/lib/modules/6.12/ko",
            "/lib/modules/6.12/x.ko\0.xz",
        ] {
            assert!(parse_modules(bad).is_err(), "{bad:?} accepted");
        }
        let many = "/lib/modules/k/x.ko\n".repeat(MAX_MODULES + 1);
        assert!(parse_modules(&many).is_err());
    }

    #[test]
    fn compression_by_suffix() {
        assert_eq!(module_compression("/lib/modules/a.ko.xz"), Some("xz"));
        assert_eq!(module_compression("/lib/modules/a.ko.zst"), Some("zst"));
        assert_eq!(module_compression("/lib/modules/a.ko.gz"), Some("gz"));
        assert_eq!(module_compression("/lib/modules/a.ko"), None);
        assert_eq!(module_compression("/lib/modules/a.xz"), None);
        assert_eq!(module_compression("/lib/modules/.ko.xz"), Some("xz"));
    }

    #[test]
    fn initramfs_json() {
        let info = InitramfsInfo::parse(
            r#"{"kernel_version": "6.12.117+deb12-cloud-amd64", "ip_pnp": false}"#,
        )
        .unwrap();
        assert_eq!(info.kernel_version, "6.12.117+deb12-cloud-amd64");
        assert!(!info.ip_pnp);
        for bad in [
            "",
            "{}",
            r#"{"kernel_version": "x"}"#,
            r#"{"kernel_version": 1, "ip_pnp": false}"#,
            r#"{"kernel_version": "x", "ip_pnp": "no"}"#,
            r#"{"kernel_version": "x", "ip_pnp": false, "extra": 1}"#,
            "[]",
        ] {
            assert!(InitramfsInfo::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
