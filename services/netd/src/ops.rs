//! The privileged operations netd needs, behind one small trait: the real
//! implementation ([`crate::linux::LinuxOps`]) talks to the kernel and is
//! tested in network namespaces; [`RecordingOps`] is an in-memory double
//! that records every call, so the lease logic is tested without privilege.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use crate::error::Error;

/// A network interface as netd cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// IFF_UP is set.
    pub up: bool,
    /// It is a bridge.
    pub is_bridge: bool,
    /// Index of the bridge (or other controller) it is attached to.
    pub controller: Option<u32>,
}

/// What the bridge guard enforces on every port that is one of our taps
/// (table `bridge banger`): a frame from a tap must carry that tap's leased
/// address (IPv4 source, ARP sender) or it is dropped, other protocols from
/// taps are dropped, and unless `vm_to_vm` no VM reaches another VM, neither
/// bridged port to port nor routed back through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The bridge the taps are ports of.
    pub bridge: String,
    /// Tap names start with this (`bg-`).
    pub tap_prefix: String,
    /// The VMs' subnet and the gateway inside it.
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Let VMs on the bridge reach each other (`[netd] vm_to_vm`).
    pub vm_to_vm: bool,
}

/// Privileged network operations; every method is idempotent.
#[tonic::async_trait]
pub trait NetOps: Send + Sync + 'static {
    /// Creates `name` as a bridge if missing, adds `gateway/prefix_len` if
    /// missing and sets it up. Returns whether anything changed.
    async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<bool, Error>;
    /// Makes `tap` a persistent tap owned by `uid`/`gid` (if missing),
    /// attached to `bridge` and up. An existing tap keeps its owner: it may
    /// be in use by a running VM.
    async fn ensure_tap(&self, tap: &str, uid: u32, gid: u32, bridge: &str) -> Result<(), Error>;
    /// Deletes `tap`; absent is fine.
    async fn delete_tap(&self, tap: &str) -> Result<(), Error>;
    /// Every link of the namespace.
    async fn links(&self) -> Result<Vec<Link>, Error>;
    /// Creates or repairs table `inet banger` (set, chains, NAT and forward
    /// rules for `bridge`) in one atomic batch. Returns whether anything changed.
    async fn ensure_nat_table(&self, bridge: &str) -> Result<bool, Error>;
    /// Deletes table `inet banger` if present (NAT disabled in config).
    async fn remove_nat_table(&self) -> Result<bool, Error>;
    /// Whether table `inet banger` holds the NAT rules for `bridge`.
    async fn nat_installed(&self, bridge: &str) -> Result<bool, Error>;
    /// Addresses in the `nat_sources` set (empty if the table is absent).
    async fn nat_sources(&self) -> Result<BTreeSet<Ipv4Addr>, Error>;
    /// Adds `ip` to the `nat_sources` set.
    async fn add_nat_source(&self, ip: Ipv4Addr) -> Result<(), Error>;
    /// Removes `ip` from the `nat_sources` set; absent is fine.
    async fn remove_nat_source(&self, ip: Ipv4Addr) -> Result<(), Error>;
    /// Creates or repairs table `bridge banger` for `guard` in one atomic
    /// batch, keeping its `leases` set. Returns whether anything changed.
    async fn ensure_guard(&self, guard: &Guard) -> Result<bool, Error>;
    /// The (tap, leased address) pairs the guard lets through.
    async fn guard_entries(&self) -> Result<BTreeSet<(String, Ipv4Addr)>, Error>;
    /// Lets frames from `tap` with source `ip` through the guard.
    async fn add_guard_entry(&self, tap: &str, ip: Ipv4Addr) -> Result<(), Error>;
    /// Removes (`tap`, `ip`) from the guard; absent is fine.
    async fn remove_guard_entry(&self, tap: &str, ip: Ipv4Addr) -> Result<(), Error>;
    /// Forward-hook chains of *other* tables whose policy is drop (e.g.
    /// Docker's `ip filter FORWARD`), as `family table chain`; read only,
    /// since they drop VM traffic whatever our table accepts.
    async fn foreign_forward_drops(&self) -> Result<Vec<String>, Error>;
    /// Current `net.ipv4.ip_forward`.
    async fn ip_forward(&self) -> Result<bool, Error>;
    /// Sets `net.ipv4.ip_forward`.
    async fn set_ip_forward(&self, on: bool) -> Result<(), Error>;
}

/// One call made on [`RecordingOps`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    EnsureBridge(String),
    EnsureTap { tap: String, uid: u32, gid: u32 },
    DeleteTap(String),
    EnsureNatTable,
    RemoveNatTable,
    AddNatSource(Ipv4Addr),
    RemoveNatSource(Ipv4Addr),
    EnsureGuard { vm_to_vm: bool },
    AddGuardEntry(String, Ipv4Addr),
    RemoveGuardEntry(String, Ipv4Addr),
    SetIpForward(bool),
}

/// What the double's "kernel" holds.
#[derive(Debug, Default, Clone)]
pub struct FakeNet {
    pub bridge: Option<String>,
    /// Tap name → (uid, gid).
    pub taps: BTreeMap<String, (u32, u32)>,
    /// Other links (e.g. an uplink).
    pub others: Vec<String>,
    pub nat_table: bool,
    pub nat_sources: BTreeSet<Ipv4Addr>,
    /// The guard table as last ensured.
    pub guard: Option<Guard>,
    pub guard_entries: BTreeSet<(String, Ipv4Addr)>,
    pub ip_forward: bool,
    /// Foreign forward chains with policy drop.
    pub foreign_drops: Vec<String>,
    /// When set, `ensure_tap` fails (to test rollback).
    pub fail_taps: bool,
}

/// In-memory [`NetOps`] that records calls; clones share state.
#[derive(Debug, Default, Clone)]
pub struct RecordingOps {
    pub net: Arc<Mutex<FakeNet>>,
    pub calls: Arc<Mutex<Vec<Call>>>,
}

impl RecordingOps {
    /// The calls made so far, clearing the record.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().expect("lock"))
    }

    /// A snapshot of the fake kernel state.
    pub fn state(&self) -> FakeNet {
        self.net.lock().expect("lock").clone()
    }

    fn record(&self, call: Call) {
        self.calls.lock().expect("lock").push(call);
    }
}

#[tonic::async_trait]
impl NetOps for RecordingOps {
    async fn ensure_bridge(&self, name: &str, _: Ipv4Addr, _: u8) -> Result<bool, Error> {
        {
            let mut net = self.net.lock().expect("lock");
            if net.bridge.as_deref() == Some(name) {
                return Ok(false);
            }
            net.bridge = Some(name.into());
        }
        self.record(Call::EnsureBridge(name.into()));
        Ok(true)
    }

    async fn ensure_tap(&self, tap: &str, uid: u32, gid: u32, _: &str) -> Result<(), Error> {
        self.record(Call::EnsureTap {
            tap: tap.into(),
            uid,
            gid,
        });
        let mut net = self.net.lock().expect("lock");
        if net.fail_taps {
            return Err(Error::Tun {
                tap: tap.into(),
                what: "TUNSETIFF",
                source: nix::Error::EPERM,
            });
        }
        net.taps.insert(tap.into(), (uid, gid));
        Ok(())
    }

    async fn delete_tap(&self, tap: &str) -> Result<(), Error> {
        self.record(Call::DeleteTap(tap.into()));
        self.net.lock().expect("lock").taps.remove(tap);
        Ok(())
    }

    async fn links(&self) -> Result<Vec<Link>, Error> {
        let net = self.net.lock().expect("lock");
        let mut links = vec![Link {
            name: "lo".into(),
            index: 1,
            up: true,
            is_bridge: false,
            controller: None,
        }];
        if let Some(b) = &net.bridge {
            links.push(Link {
                name: b.clone(),
                index: 2,
                up: true,
                is_bridge: true,
                controller: None,
            });
        }
        for (i, name) in net.others.iter().enumerate() {
            links.push(Link {
                name: name.clone(),
                index: 10 + i as u32,
                up: true,
                is_bridge: false,
                controller: None,
            });
        }
        for (i, tap) in net.taps.keys().enumerate() {
            links.push(Link {
                name: tap.clone(),
                index: 100 + i as u32,
                up: true,
                is_bridge: false,
                controller: net.bridge.as_ref().map(|_| 2),
            });
        }
        Ok(links)
    }

    async fn ensure_nat_table(&self, _: &str) -> Result<bool, Error> {
        let mut net = self.net.lock().expect("lock");
        if net.nat_table {
            return Ok(false);
        }
        net.nat_table = true;
        drop(net);
        self.record(Call::EnsureNatTable);
        Ok(true)
    }

    async fn remove_nat_table(&self) -> Result<bool, Error> {
        let mut net = self.net.lock().expect("lock");
        if !net.nat_table {
            return Ok(false);
        }
        net.nat_table = false;
        net.nat_sources.clear();
        drop(net);
        self.record(Call::RemoveNatTable);
        Ok(true)
    }

    async fn nat_installed(&self, _: &str) -> Result<bool, Error> {
        Ok(self.net.lock().expect("lock").nat_table)
    }

    async fn nat_sources(&self) -> Result<BTreeSet<Ipv4Addr>, Error> {
        Ok(self.net.lock().expect("lock").nat_sources.clone())
    }

    async fn add_nat_source(&self, ip: Ipv4Addr) -> Result<(), Error> {
        self.record(Call::AddNatSource(ip));
        self.net.lock().expect("lock").nat_sources.insert(ip);
        Ok(())
    }

    async fn remove_nat_source(&self, ip: Ipv4Addr) -> Result<(), Error> {
        self.record(Call::RemoveNatSource(ip));
        self.net.lock().expect("lock").nat_sources.remove(&ip);
        Ok(())
    }

    async fn ensure_guard(&self, guard: &Guard) -> Result<bool, Error> {
        let mut net = self.net.lock().expect("lock");
        if net.guard.as_ref() == Some(guard) {
            return Ok(false);
        }
        net.guard = Some(guard.clone());
        drop(net);
        self.record(Call::EnsureGuard {
            vm_to_vm: guard.vm_to_vm,
        });
        Ok(true)
    }

    async fn guard_entries(&self) -> Result<BTreeSet<(String, Ipv4Addr)>, Error> {
        Ok(self.net.lock().expect("lock").guard_entries.clone())
    }

    async fn add_guard_entry(&self, tap: &str, ip: Ipv4Addr) -> Result<(), Error> {
        self.record(Call::AddGuardEntry(tap.into(), ip));
        self.net
            .lock()
            .expect("lock")
            .guard_entries
            .insert((tap.into(), ip));
        Ok(())
    }

    async fn remove_guard_entry(&self, tap: &str, ip: Ipv4Addr) -> Result<(), Error> {
        self.record(Call::RemoveGuardEntry(tap.into(), ip));
        self.net
            .lock()
            .expect("lock")
            .guard_entries
            .remove(&(tap.into(), ip));
        Ok(())
    }

    async fn foreign_forward_drops(&self) -> Result<Vec<String>, Error> {
        Ok(self.net.lock().expect("lock").foreign_drops.clone())
    }

    async fn ip_forward(&self) -> Result<bool, Error> {
        Ok(self.net.lock().expect("lock").ip_forward)
    }

    async fn set_ip_forward(&self, on: bool) -> Result<(), Error> {
        self.record(Call::SetIpForward(on));
        self.net.lock().expect("lock").ip_forward = on;
        Ok(())
    }
}
