//! Leases: what a VM got (tap, IP, MAC, NAT, owner), how those are derived,
//! and their persistence in `$STATE/netd/leases.json`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Every tap netd makes starts with this; anything else is not ours.
pub const TAP_PREFIX: &str = "bg-";
/// Linux interface names are at most 15 bytes.
const IFNAMSIZ_MAX: usize = 15;

/// One VM's network lease, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub vm_id: String,
    pub tap: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub dns: Vec<Ipv4Addr>,
    pub nat: bool,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub created_unix: i64,
}

/// Checks a VM id before it names anything: 1-64 characters of
/// `[A-Za-z0-9._-]`.
pub fn validate_vm_id(vm_id: &str) -> Result<(), Error> {
    if vm_id.is_empty()
        || vm_id.len() > 64
        || !vm_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::InvalidVmId(vm_id.to_owned()));
    }
    Ok(())
}

/// The tap name of a VM: `bg-<short id>`, at most 15 bytes. A short id
/// (≤ 12 characters of `[a-z0-9-]`) is used as is, so taps are
/// recognisable; longer ids keep a readable prefix plus a hash of the whole
/// id, so two ids sharing a prefix still get different taps.
pub fn tap_name(vm_id: &str) -> String {
    let budget = IFNAMSIZ_MAX - TAP_PREFIX.len();
    let clean: String = vm_id
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if clean.len() <= budget && clean == vm_id {
        return format!("{TAP_PREFIX}{clean}");
    }
    let hash = hex::encode(Sha256::digest(vm_id.as_bytes()));
    let prefix: String = clean.chars().take(6).collect();
    format!("{TAP_PREFIX}{prefix}{}", &hash[..budget - prefix.len()])
}

/// A locally administered unicast MAC derived from the IP: `02:ba` then
/// the four address bytes, so a VM keeps its MAC as long as its address
/// and no two leases share one.
pub fn mac_for_ip(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:ba:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// The lowest address of `range` no lease holds, if any.
pub fn free_ip<'a>(
    range: std::ops::RangeInclusive<u32>,
    taken: impl IntoIterator<Item = &'a Lease>,
) -> Option<Ipv4Addr> {
    let used: std::collections::HashSet<u32> = taken.into_iter().map(|l| u32::from(l.ip)).collect();
    range
        .into_iter()
        .find(|ip| !used.contains(ip))
        .map(Ipv4Addr::from)
}

/// The leases file: one JSON document, replaced atomically on every change.
#[derive(Debug)]
pub struct LeaseStore {
    path: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
}

impl LeaseStore {
    /// The store at `$STATE/netd/leases.json` for state dir `dir`.
    pub fn new(dir: &Path) -> LeaseStore {
        LeaseStore {
            path: dir.join("leases.json"),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every lease, keyed by VM id; a missing file is no leases.
    pub fn load(&self) -> Result<BTreeMap<String, Lease>, Error> {
        let data = match std::fs::read(&self.path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(Error::State {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let file: LeaseFile = serde_json::from_slice(&data).map_err(|e| Error::CorruptState {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(file
            .leases
            .into_iter()
            .map(|l| (l.vm_id.clone(), l))
            .collect())
    }

    /// Replaces the file with `leases` (sorted by IP), atomically.
    pub fn save(&self, leases: &BTreeMap<String, Lease>) -> Result<(), Error> {
        let mut sorted: Vec<Lease> = leases.values().cloned().collect();
        sorted.sort_by_key(|l| l.ip);
        banger_proto::fsutil::write_json_atomic(
            &self.path,
            &LeaseFile {
                version: 1,
                leases: sorted,
            },
        )
        .map_err(|source| Error::State {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(vm: &str, ip: [u8; 4]) -> Lease {
        let ip = Ipv4Addr::from(ip);
        Lease {
            vm_id: vm.into(),
            tap: tap_name(vm),
            ip,
            prefix_len: 24,
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            mac: mac_for_ip(ip),
            dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
            nat: true,
            owner_uid: 1000,
            owner_gid: 1000,
            created_unix: 1,
        }
    }

    #[test]
    fn tap_names_fit_and_differ() {
        assert_eq!(tap_name("web1"), "bg-web1");
        assert_eq!(tap_name("abcdefghijkl"), "bg-abcdefghijkl");
        let long_a = tap_name("0193a8f2-7c4e-7d11-9a2b-aaaaaaaaaaaa");
        let long_b = tap_name("0193a8f2-7c4e-7d11-9a2b-bbbbbbbbbbbb");
        assert_ne!(long_a, long_b);
        for name in [&long_a, &long_b, &tap_name("Web_1"), &tap_name("x.y")] {
            assert!(name.len() <= 15, "{name}");
            assert!(name.starts_with(TAP_PREFIX));
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
        }
        // Ids that only differ in case or punctuation never share a tap.
        assert_ne!(tap_name("Web_1"), tap_name("web-1"));
        assert_eq!(tap_name("web-1"), "bg-web-1");
        // Stable across calls.
        assert_eq!(long_a, tap_name("0193a8f2-7c4e-7d11-9a2b-aaaaaaaaaaaa"));
    }

    #[test]
    fn mac_is_local_unicast_and_stable() {
        let mac = mac_for_ip(Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(mac, "02:ba:ac:1e:00:02");
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b10, 0b10, "locally administered");
        assert_eq!(first & 0b01, 0, "unicast");
    }

    #[test]
    fn free_ip_skips_taken_and_reports_exhaustion() {
        let range = u32::from(Ipv4Addr::new(10, 0, 0, 2))..=u32::from(Ipv4Addr::new(10, 0, 0, 6));
        let a = lease("a", [10, 0, 0, 2]);
        let c = lease("c", [10, 0, 0, 4]);
        assert_eq!(
            free_ip(range.clone(), [&a, &c]),
            Some(Ipv4Addr::new(10, 0, 0, 3))
        );
        let all: Vec<Lease> = (2..=6)
            .map(|i| lease(&format!("v{i}"), [10, 0, 0, i]))
            .collect();
        assert_eq!(free_ip(range, &all), None);
    }

    #[test]
    fn vm_ids_are_checked() {
        validate_vm_id("web-1").unwrap();
        validate_vm_id("0193a8f2-7c4e-7d11-9a2b-aaaaaaaaaaaa").unwrap();
        for bad in ["", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(validate_vm_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn persistence_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LeaseStore::new(dir.path());
        assert!(store.load().unwrap().is_empty());
        let mut leases = BTreeMap::new();
        for l in [lease("b", [172, 30, 0, 3]), lease("a", [172, 30, 0, 2])] {
            leases.insert(l.vm_id.clone(), l);
        }
        store.save(&leases).unwrap();
        assert_eq!(store.load().unwrap(), leases);
        std::fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(Error::CorruptState { .. })));
    }
}
