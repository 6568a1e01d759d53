//! The `[netd]` section of banger.toml and what follows from it (gateway,
//! usable address range, DNS servers).

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::error::Error;

/// `[netd]` settings; every field has a default so the section is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetdConfig {
    /// Bridge the taps are attached to; it carries the gateway address.
    pub bridge: String,
    /// Subnet VMs get addresses from; the first host address is the gateway.
    pub subnet: Ipv4Net,
    /// DNS servers handed to VMs; empty means the host's non-loopback
    /// resolvers from /etc/resolv.conf.
    pub dns: Vec<Ipv4Addr>,
    /// Install the NAT machinery (nftables table `inet banger`, ip_forward).
    pub nat: bool,
    /// Uid allowed to change state besides root (the vmm's user).
    pub vmm_uid: Option<u32>,
    /// Let VMs on the bridge reach each other. Off by default: each VM
    /// reaches only the gateway (the host) and, with NAT, the outside.
    pub vm_to_vm: bool,
}

impl Default for NetdConfig {
    fn default() -> Self {
        NetdConfig {
            bridge: "banger0".to_owned(),
            subnet: "172.30.0.0/24".parse().expect("valid default subnet"),
            dns: Vec::new(),
            nat: true,
            vmm_uid: None,
            vm_to_vm: false,
        }
    }
}

impl NetdConfig {
    /// Checks the settings make a usable network.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::Config(reason));
        if self.bridge.is_empty()
            || self.bridge.len() > 15
            || !self
                .bridge
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return bad(format!(
                "[netd] bridge = {:?} is not a valid interface name (1-15 characters of a-z, 0-9, '-', '_', '.')",
                self.bridge
            ));
        }
        if self.bridge.starts_with(crate::lease::TAP_PREFIX) {
            return bad(format!(
                "[netd] bridge = {:?} must not start with {:?}, which netd reserves for taps",
                self.bridge,
                crate::lease::TAP_PREFIX
            ));
        }
        if self.subnet.prefix_len() > 30 {
            return bad(format!(
                "[netd] subnet = \"{}\" is too small: use a /30 or larger (a gateway and at least one VM)",
                self.subnet
            ));
        }
        if self.subnet.network() != self.subnet.addr() {
            return bad(format!(
                "[netd] subnet = \"{}\" has host bits set; did you mean \"{}\"?",
                self.subnet,
                self.subnet.trunc()
            ));
        }
        Ok(())
    }

    /// What the bridge guard enforces under these settings.
    pub fn guard(&self) -> crate::ops::Guard {
        crate::ops::Guard {
            bridge: self.bridge.clone(),
            tap_prefix: crate::lease::TAP_PREFIX.to_owned(),
            subnet: self.subnet,
            gateway: self.gateway(),
            vm_to_vm: self.vm_to_vm,
        }
    }

    /// The gateway: the first host address, carried by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }

    /// Addresses VMs may get: every host address except the gateway.
    pub fn guest_range(&self) -> std::ops::RangeInclusive<u32> {
        let first = u32::from(self.subnet.network()) + 2;
        let last = u32::from(self.subnet.broadcast()) - 1;
        first..=last
    }

    /// How many addresses VMs may get in total.
    pub fn capacity(&self) -> u32 {
        let r = self.guest_range();
        r.end() - r.start() + 1
    }

    /// DNS servers for leases: the configured ones, else the host's.
    pub fn resolve_dns(&self, resolv_conf: &Path) -> Vec<Ipv4Addr> {
        if !self.dns.is_empty() {
            return self.dns.clone();
        }
        std::fs::read_to_string(resolv_conf)
            .map(|text| host_resolvers(&text))
            .unwrap_or_default()
    }
}

/// Non-loopback IPv4 `nameserver` lines of a resolv.conf. Loopback
/// resolvers (systemd-resolved's 127.0.0.53, dnsmasq) are unreachable
/// from a VM, so they are skipped.
pub fn host_resolvers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|addr| addr.parse::<Ipv4Addr>().ok())
        .filter(|addr| !addr.is_loopback() && !addr.is_unspecified())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::config::Config;

    #[test]
    fn defaults_when_section_absent() {
        let cfg = Config::parse("", "t.toml").unwrap();
        let netd: NetdConfig = cfg.section("netd").unwrap();
        assert_eq!(netd, NetdConfig::default());
        assert_eq!(netd.bridge, "banger0");
        assert_eq!(netd.subnet.to_string(), "172.30.0.0/24");
        assert!(netd.nat);
        assert!(netd.dns.is_empty());
        assert_eq!(netd.vmm_uid, None);
        assert!(!netd.vm_to_vm, "VMs are isolated by default");
        assert_eq!(netd.gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(netd.capacity(), 253);
        netd.validate().unwrap();
    }

    #[test]
    fn partial_section_keeps_other_defaults() {
        let cfg = Config::parse(
            "[netd]\nsubnet = \"10.9.0.0/29\"\nvmm_uid = 990\ndns = [\"9.9.9.9\"]\n",
            "t.toml",
        )
        .unwrap();
        let netd: NetdConfig = cfg.section("netd").unwrap();
        assert_eq!(netd.bridge, "banger0");
        assert_eq!(netd.vmm_uid, Some(990));
        assert_eq!(netd.capacity(), 5);
        assert_eq!(
            netd.resolve_dns(Path::new("/nonexistent")),
            vec![Ipv4Addr::new(9, 9, 9, 9)]
        );
    }

    #[test]
    fn rejects_bad_settings() {
        let cfg = Config::parse("[netd]\nbridgee = \"x\"\n", "t.toml").unwrap();
        assert!(cfg.section::<NetdConfig>("netd").is_err());
        for (bridge, subnet) in [
            ("banger0", "10.0.0.0/31"),
            ("banger0", "10.0.0.1/24"),
            ("a-very-long-bridge-name", "10.0.0.0/24"),
            ("bg-x", "10.0.0.0/24"),
            ("", "10.0.0.0/24"),
        ] {
            let c = NetdConfig {
                bridge: bridge.into(),
                subnet: subnet.parse().unwrap(),
                ..NetdConfig::default()
            };
            assert!(c.validate().is_err(), "{bridge} {subnet}");
        }
    }

    #[test]
    fn resolvers_skip_loopback() {
        let text = "# c\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch x\nnameserver ::1\nnameserver 1.1.1.1\n";
        assert_eq!(
            host_resolvers(text),
            vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(1, 1, 1, 1)]
        );
    }
}
