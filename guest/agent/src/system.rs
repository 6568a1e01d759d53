//! Reading facts about the guest: readiness data for Ping and everything
//! Facts reports. Every reader takes a root path so tests use a fake tree.

use std::collections::BTreeMap;
use std::path::Path;

/// What Ping answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Ping {
    /// Agent version.
    pub version: String,
    /// Seconds since the kernel booted (`/proc/uptime`).
    pub uptime_seconds: f64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
}

/// The init system running as PID 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitSystem {
    /// systemd.
    Systemd,
    /// OpenRC (with openrc-init or busybox init).
    Openrc,
    /// Anything else: busybox init, a shell script, banger-first-boot's rescue shell.
    Other,
}

impl InitSystem {
    /// The name Facts reports: `systemd`, `openrc` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            InitSystem::Systemd => "systemd",
            InitSystem::Openrc => "openrc",
            InitSystem::Other => "other",
        }
    }
}

/// What Facts answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// `/etc/os-release` (or `/usr/lib/os-release`) as key/value pairs.
    pub os_release: BTreeMap<String, String>,
    /// Interface addresses in CIDR form, loopback excluded.
    pub addresses: Vec<String>,
    /// The init system.
    pub init: InitSystem,
    /// Kernel hostname.
    pub hostname: String,
    /// `uname -r`.
    pub kernel_release: String,
}

fn read_trimmed(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Readiness data; missing /proc files give zero / empty values rather
/// than an error, because readiness must never fail.
pub fn ping(root: &Path) -> Ping {
    let uptime_seconds = read_trimmed(root, "proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    Ping {
        version: banger_proto::VERSION.to_owned(),
        uptime_seconds,
        boot_id: read_trimmed(root, "proc/sys/kernel/random/boot_id"),
    }
}

/// The first socket in the guest's TCP tables (`proc/net/tcp`, then
/// `proc/net/tcp6`) that listens on `port` on a non-loopback address, as
/// `ip:port`; `None` while nothing does. Missing tables (no IPv6) count as
/// empty: readiness must never fail, only wait.
pub fn listening(root: &Path, port: u16) -> Option<String> {
    ["proc/net/tcp", "proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(root.join(table)).ok()?;
        text.lines()
            .skip(1)
            .filter_map(parse_tcp_line)
            .find(|(addr, state)| {
                *state == TCP_LISTEN && addr.port() == port && !addr.ip().is_loopback()
            })
            .map(|(addr, _)| addr.to_string())
    })
}

/// `TCP_LISTEN` in the kernel's `st` column.
const TCP_LISTEN: u8 = 0x0A;

/// One row of `/proc/net/tcp{,6}`: `sl local rem st ...`, where `local` is
/// the address as the kernel's 32-bit words in host byte order, in hex,
/// then `:` and the port in hex.
fn parse_tcp_line(line: &str) -> Option<(std::net::SocketAddr, u8)> {
    let mut cols = line.split_whitespace();
    let (_sl, local, _rem, state) = (cols.next()?, cols.next()?, cols.next()?, cols.next()?);
    let (ip_hex, port_hex) = local.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let state = u8::from_str_radix(state, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in 0..ip_hex.len() / 8 {
        let w = u32::from_str_radix(ip_hex.get(word * 8..word * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&w.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            // A v4-mapped loopback is loopback too.
            v6.to_ipv4_mapped()
                .map_or(v6.into(), std::net::IpAddr::from)
        }
        _ => return None,
    };
    Some((std::net::SocketAddr::new(ip, port), state))
}

/// Which init system is PID 1.
pub fn detect_init(root: &Path) -> InitSystem {
    let comm = read_trimmed(root, "proc/1/comm");
    if comm == "systemd" || root.join("run/systemd/system").is_dir() {
        InitSystem::Systemd
    } else if comm.starts_with("openrc") || root.join("run/openrc").is_dir() {
        InitSystem::Openrc
    } else {
        InitSystem::Other
    }
}

/// Parses os-release syntax: `KEY=value`, values optionally quoted.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((key.trim().to_owned(), value.replace("\\\"", "\"")))
        })
        .collect()
}

/// Interface addresses in CIDR form (`10.0.0.2/24`, `fe80::1/64`), loopback excluded.
pub fn addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ifa in addrs {
        if ifa.interface_name == "lo" {
            continue;
        }
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            out.push(format!("{}/{}", a.ip(), m.ip().to_bits().count_ones()));
        } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            out.push(format!("{}/{}", a.ip(), m.ip().to_bits().count_ones()));
        }
    }
    out
}

/// Everything Facts reports, read from `root` (`/` in production).
pub fn facts(root: &Path) -> Facts {
    // The hostile-input reader first boot uses: regular files only,
    // capped, so a FIFO or /dev/zero there cannot hang or exhaust Facts.
    let os_release = crate::first_boot::os_release::read(&crate::first_boot::root::Root::new(root))
        .ok()
        .flatten()
        .map(|os| os.fields)
        .unwrap_or_default();
    Facts {
        os_release,
        addresses: addresses(),
        init: detect_init(root),
        hostname: read_trimmed(root, "proc/sys/kernel/hostname"),
        kernel_release: read_trimmed(root, "proc/sys/kernel/osrelease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parsing_handles_quotes_and_comments() {
        let parsed = parse_os_release(
            "# comment\nNAME=\"Debian GNU/Linux\"\nID=debian\nVERSION_ID='12'\n\nPRETTY_NAME=\"a \\\"b\\\"\"\n",
        );
        assert_eq!(parsed["NAME"], "Debian GNU/Linux");
        assert_eq!(parsed["ID"], "debian");
        assert_eq!(parsed["VERSION_ID"], "12");
        assert_eq!(parsed["PRETTY_NAME"], "a \"b\"");
        assert_eq!(parsed.len(), 4);
    }

    #[test]
    fn fake_tree_gives_ping_and_init() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("proc/sys/kernel/random")).unwrap();
        std::fs::create_dir_all(r.join("proc/1")).unwrap();
        std::fs::write(r.join("proc/uptime"), "12.34 5.00\n").unwrap();
        std::fs::write(r.join("proc/sys/kernel/random/boot_id"), "abc\n").unwrap();
        std::fs::write(r.join("proc/1/comm"), "systemd\n").unwrap();
        let p = ping(r);
        assert_eq!(p.uptime_seconds, 12.34);
        assert_eq!(p.boot_id, "abc");
        assert_eq!(detect_init(r), InitSystem::Systemd);
        std::fs::write(r.join("proc/1/comm"), "init\n").unwrap();
        assert_eq!(detect_init(r), InitSystem::Other);
        std::fs::create_dir_all(r.join("run/openrc")).unwrap();
        assert_eq!(detect_init(r), InitSystem::Openrc);
    }

    #[test]
    fn listening_reads_both_tables_and_ignores_loopback_and_other_states() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("proc/net")).unwrap();
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        // 127.0.0.1:22 listening, 10.0.0.2:22 established, *:8080 listening.
        std::fs::write(
            r.join("proc/net/tcp"),
            format!(
                "{header}   0: 0100007F:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
                    1: 0200000A:0016 0100000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
                    2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1\n"
            ),
        )
        .unwrap();
        assert_eq!(
            listening(r, 22),
            None,
            "loopback and established sockets do not count"
        );
        assert_eq!(listening(r, 8080).as_deref(), Some("0.0.0.0:8080"));
        // sshd on [::]:22 (tcp6 all-zero address).
        std::fs::write(
            r.join("proc/net/tcp6"),
            format!(
                "{header}   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1\n"
            ),
        )
        .unwrap();
        assert_eq!(listening(r, 22).as_deref(), Some("[::]:22"));
        // ::1 and ::ffff:127.0.0.1 are loopback.
        std::fs::write(
            r.join("proc/net/tcp6"),
            format!(
                "{header}   0: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 0 0 0 0 0 4 1\n\
                    1: 0000000000000000FFFF00000100007F:0016 00000000000000000000000000000000:0000 0A 0 0 0 0 0 5 1\n"
            ),
        )
        .unwrap();
        assert_eq!(listening(r, 22), None);
    }

    #[test]
    fn listening_sees_a_real_socket_on_this_host() {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(
            listening(Path::new("/"), port),
            Some(format!("0.0.0.0:{port}"))
        );
        drop(l);
        assert_eq!(listening(Path::new("/"), port), None);
    }

    #[test]
    fn real_facts_are_sane() {
        let f = facts(Path::new("/"));
        assert!(!f.kernel_release.is_empty());
        assert!(!f.hostname.is_empty());
    }
}
