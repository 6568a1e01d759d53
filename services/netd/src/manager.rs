//! The lease manager: allocation, release, listing, status, and the
//! start-up reconciliation of leases with the kernel's state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use tokio::sync::Mutex;

use crate::config::NetdConfig;
use crate::error::Error;
use crate::lease::{self, Lease, LeaseStore, TAP_PREFIX};
use crate::ops::{Link, NetOps};

/// What a caller asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateParams {
    pub vm_id: String,
    pub nat: bool,
    /// Tap owner; the service decides it from the caller's credentials.
    pub owner_uid: u32,
    pub owner_gid: u32,
}

/// Network state as netd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub bridge: String,
    pub bridge_up: bool,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub nat_enabled: bool,
    pub uplinks: Vec<String>,
    pub ip_forward: bool,
    pub lease_count: u32,
    pub free_addresses: u32,
    pub problems: Vec<String>,
}

/// What start-up reconciliation changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    pub bridge_changed: bool,
    pub table_changed: bool,
    pub guard_changed: bool,
    pub taps_recreated: Vec<String>,
    pub taps_deleted: Vec<String>,
    pub nat_added: Vec<Ipv4Addr>,
    pub nat_removed: Vec<Ipv4Addr>,
}

/// Owns the leases and applies them through a [`NetOps`].
pub struct Manager {
    config: NetdConfig,
    dns: Vec<Ipv4Addr>,
    ops: Box<dyn NetOps>,
    store: LeaseStore,
    /// One lock for the leases and the kernel state they imply, so
    /// concurrent calls never pick the same address or tap.
    leases: Mutex<BTreeMap<String, Lease>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Loads the leases from `state_dir`, ensures the bridge and the NAT
    /// table, and reconciles taps and NAT elements with the leases.
    pub async fn start(
        config: NetdConfig,
        state_dir: &Path,
        resolv_conf: &Path,
        ops: Box<dyn NetOps>,
    ) -> Result<(Manager, Reconciled), Error> {
        config.validate()?;
        std::fs::create_dir_all(state_dir).map_err(|source| Error::State {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let store = LeaseStore::new(state_dir);
        let leases = store.load()?;
        let dns = config.resolve_dns(resolv_conf);
        let manager = Manager {
            config,
            dns,
            ops,
            store,
            leases: Mutex::new(leases),
        };
        let fixed = manager.reconcile().await?;
        Ok((manager, fixed))
    }

    /// The settings in force.
    pub fn config(&self) -> &NetdConfig {
        &self.config
    }

    #[tracing::instrument(skip_all)]
    async fn reconcile(&self) -> Result<Reconciled, Error> {
        let cfg = &self.config;
        let leases = self.leases.lock().await;
        let mut fixed = Reconciled {
            bridge_changed: self
                .ops
                .ensure_bridge(&cfg.bridge, cfg.gateway(), cfg.subnet.prefix_len())
                .await?,
            ..Reconciled::default()
        };
        if cfg.nat {
            fixed.table_changed = self.ops.ensure_nat_table(&cfg.bridge).await?;
            if !self.ops.ip_forward().await? {
                self.ops.set_ip_forward(true).await?;
                tracing::info!("enabled net.ipv4.ip_forward for NAT");
            }
        } else {
            fixed.table_changed = self.ops.remove_nat_table().await?;
        }
        // The guard applies with or without NAT: anti-spoofing and VM
        // isolation are about the bridge, not the uplink.
        fixed.guard_changed = self.ops.ensure_guard(&cfg.guard()).await?;

        let links = self.ops.links().await?;
        let bridge_index = links.iter().find(|l| l.name == cfg.bridge).map(|l| l.index);
        for lease in leases.values() {
            let present = links
                .iter()
                .find(|l| l.name == lease.tap)
                .is_some_and(|l| l.up && l.controller.is_some() && l.controller == bridge_index);
            // ensure_tap is idempotent and leaves a tap in use alone; it
            // repairs a missing tap, a lost bridge port or a downed link.
            self.ops
                .ensure_tap(&lease.tap, lease.owner_uid, lease.owner_gid, &cfg.bridge)
                .await?;
            if !present {
                fixed.taps_recreated.push(lease.tap.clone());
            }
        }
        let wanted_taps: BTreeSet<&str> = leases.values().map(|l| l.tap.as_str()).collect();
        for link in &links {
            if link.name.starts_with(TAP_PREFIX) && !wanted_taps.contains(link.name.as_str()) {
                self.ops.delete_tap(&link.name).await?;
                fixed.taps_deleted.push(link.name.clone());
            }
        }

        let wanted: BTreeSet<(String, Ipv4Addr)> =
            leases.values().map(|l| (l.tap.clone(), l.ip)).collect();
        let present = self.ops.guard_entries().await?;
        for (tap, ip) in wanted.difference(&present) {
            self.ops.add_guard_entry(tap, *ip).await?;
        }
        for (tap, ip) in present.difference(&wanted) {
            self.ops.remove_guard_entry(tap, *ip).await?;
        }

        if cfg.nat {
            let wanted: BTreeSet<Ipv4Addr> =
                leases.values().filter(|l| l.nat).map(|l| l.ip).collect();
            let present = self.ops.nat_sources().await?;
            for ip in wanted.difference(&present) {
                self.ops.add_nat_source(*ip).await?;
                fixed.nat_added.push(*ip);
            }
            for ip in present.difference(&wanted) {
                self.ops.remove_nat_source(*ip).await?;
                fixed.nat_removed.push(*ip);
            }
        }
        tracing::info!(
            leases = leases.len(),
            bridge_changed = fixed.bridge_changed,
            table_changed = fixed.table_changed,
            guard_changed = fixed.guard_changed,
            taps_recreated = ?fixed.taps_recreated,
            taps_deleted = ?fixed.taps_deleted,
            nat_added = ?fixed.nat_added,
            nat_removed = ?fixed.nat_removed,
            "reconciled network state with leases"
        );
        Ok(fixed)
    }

    /// Creates (or returns the existing) lease for `params.vm_id`.
    #[tracing::instrument(skip_all, fields(vm = %params.vm_id, nat = params.nat))]
    pub async fn allocate(&self, params: AllocateParams) -> Result<Lease, Error> {
        lease::validate_vm_id(&params.vm_id)?;
        let mut leases = self.leases.lock().await;
        if let Some(existing) = leases.get(&params.vm_id) {
            return Ok(existing.clone());
        }
        let tap = lease::tap_name(&params.vm_id);
        if let Some(other) = leases.values().find(|l| l.tap == tap) {
            return Err(Error::TapConflict {
                tap,
                other: other.vm_id.clone(),
            });
        }
        let ip = lease::free_ip(self.config.guest_range(), leases.values()).ok_or_else(|| {
            Error::Exhausted {
                subnet: self.config.subnet.to_string(),
                capacity: self.config.capacity(),
            }
        })?;
        if params.nat && !self.config.nat {
            tracing::warn!("NAT requested but disabled by [netd] nat = false; lease without NAT");
        }
        let lease = Lease {
            vm_id: params.vm_id.clone(),
            tap,
            ip,
            prefix_len: self.config.subnet.prefix_len(),
            gateway: self.config.gateway(),
            mac: lease::mac_for_ip(ip),
            dns: self.dns.clone(),
            nat: params.nat && self.config.nat,
            owner_uid: params.owner_uid,
            owner_gid: params.owner_gid,
            created_unix: banger_proto::host::now_unix(),
        };
        if let Err(e) = self.apply(&lease).await {
            self.undo(&lease).await;
            return Err(e);
        }
        leases.insert(lease.vm_id.clone(), lease.clone());
        if let Err(e) = self.store.save(&leases) {
            leases.remove(&lease.vm_id);
            self.undo(&lease).await;
            return Err(e);
        }
        tracing::info!(tap = %lease.tap, ip = %lease.ip, "allocated");
        Ok(lease)
    }

    async fn apply(&self, lease: &Lease) -> Result<(), Error> {
        self.ops
            .ensure_tap(
                &lease.tap,
                lease.owner_uid,
                lease.owner_gid,
                &self.config.bridge,
            )
            .await?;
        self.ops.add_guard_entry(&lease.tap, lease.ip).await?;
        if lease.nat {
            self.ops.add_nat_source(lease.ip).await?;
        }
        Ok(())
    }

    /// Best-effort rollback of a half-applied lease; start-up reconcile
    /// catches whatever this cannot.
    async fn undo(&self, lease: &Lease) {
        if let Err(e) = self.ops.delete_tap(&lease.tap).await {
            tracing::warn!(tap = %lease.tap, error = %e, "cannot remove tap after a failed allocation");
        }
        if let Err(e) = self.ops.remove_guard_entry(&lease.tap, lease.ip).await {
            tracing::warn!(tap = %lease.tap, error = %e, "cannot remove guard element after a failed allocation");
        }
        if lease.nat
            && let Err(e) = self.ops.remove_nat_source(lease.ip).await
        {
            tracing::warn!(ip = %lease.ip, error = %e, "cannot remove NAT element after a failed allocation");
        }
    }

    /// Deletes the VM's tap and NAT element and frees its address. Returns
    /// whether a lease existed.
    #[tracing::instrument(skip_all, fields(vm = %vm_id))]
    pub async fn release(&self, vm_id: &str) -> Result<bool, Error> {
        lease::validate_vm_id(vm_id)?;
        let mut leases = self.leases.lock().await;
        let Some(lease) = leases.get(vm_id).cloned() else {
            return Ok(false);
        };
        self.ops.delete_tap(&lease.tap).await?;
        self.ops.remove_guard_entry(&lease.tap, lease.ip).await?;
        if lease.nat {
            self.ops.remove_nat_source(lease.ip).await?;
        }
        leases.remove(vm_id);
        if let Err(e) = self.store.save(&leases) {
            // Keep memory and disk in agreement; the tap is gone either way
            // and start-up reconcile recreates it if the lease survives.
            leases.insert(lease.vm_id.clone(), lease);
            return Err(e);
        }
        tracing::info!(tap = %lease.tap, ip = %lease.ip, "released");
        Ok(true)
    }

    /// Every lease, sorted by IP.
    pub async fn list(&self) -> Vec<Lease> {
        let mut all: Vec<Lease> = self.leases.lock().await.values().cloned().collect();
        all.sort_by_key(|l| l.ip);
        all
    }

    /// Bridge, NAT and forwarding state plus problems and what to do.
    #[tracing::instrument(skip_all)]
    pub async fn status(&self) -> Result<Status, Error> {
        let cfg = &self.config;
        let leases = self.list().await;
        let links = self.ops.links().await?;
        let bridge = links.iter().find(|l| l.name == cfg.bridge);
        let bridge_up = bridge.is_some_and(|b| b.up && b.is_bridge);
        let nat_enabled = self.ops.nat_installed(&cfg.bridge).await?;
        let ip_forward = self.ops.ip_forward().await?;
        let uplinks = uplinks(&links, &cfg.bridge);
        let lease_count = leases.len() as u32;
        let free_addresses = cfg.capacity().saturating_sub(lease_count);

        let mut problems = Vec::new();
        match bridge {
            None => problems.push(format!(
                "bridge {} does not exist: restart banger-netd, which creates it",
                cfg.bridge
            )),
            Some(b) if !b.is_bridge => problems.push(format!(
                "{} exists but is not a bridge: delete it (`ip link del {}`) or set another [netd] bridge, then restart banger-netd",
                cfg.bridge, cfg.bridge
            )),
            Some(b) if !b.up => problems.push(format!(
                "bridge {} is down: restart banger-netd, which sets it up",
                cfg.bridge
            )),
            Some(_) => {}
        }
        if cfg.nat && !nat_enabled {
            problems.push(
                "NAT rules are missing from nftables table inet banger (was the ruleset flushed?): restart banger-netd to reinstall them".to_owned(),
            );
        }
        if !cfg.nat {
            problems.push(
                "NAT is disabled ([netd] nat = false): VMs reach only the host and the bridge"
                    .to_owned(),
            );
        }
        if cfg.nat && !ip_forward {
            problems.push(
                "net.ipv4.ip_forward is 0, so VMs cannot reach the outside: restart banger-netd or run `sysctl -w net.ipv4.ip_forward=1`".to_owned(),
            );
        }
        if cfg.nat && uplinks.is_empty() {
            problems.push(
                "no uplink interface is up: VMs with NAT have nowhere to go; bring up the host's network".to_owned(),
            );
        }
        for lease in &leases {
            let tap = links.iter().find(|l| l.name == lease.tap);
            match tap {
                None => problems.push(format!(
                    "tap {} of VM {} is missing: restart banger-netd to recreate it",
                    lease.tap, lease.vm_id
                )),
                Some(t) if !t.up || t.controller.is_none() || t.controller != bridge.map(|b| b.index) => {
                    problems.push(format!(
                        "tap {} of VM {} is down or not attached to {}: restart banger-netd to repair it",
                        lease.tap, lease.vm_id, cfg.bridge
                    ))
                }
                Some(_) => {}
            }
        }
        if cfg.nat {
            for chain in self.ops.foreign_forward_drops().await? {
                problems.push(format!(
                    "forward chain `{chain}` drops by default (Docker or a host firewall?), which drops VM traffic whatever banger's table accepts: \
                     allow traffic from and to {} there (e.g. `iifname \"{}\" accept` and `oifname \"{}\" ct state established,related accept`)",
                    cfg.bridge, cfg.bridge, cfg.bridge
                ));
            }
        }
        for lease in leases.iter().filter(|l| !cfg.subnet.contains(&l.ip)) {
            problems.push(format!(
                "VM {} holds {} outside [netd] subnet {}: stop the VM so vmm releases it, then start it again",
                lease.vm_id, lease.ip, cfg.subnet
            ));
        }
        if free_addresses == 0 {
            problems.push(format!(
                "subnet {} is full: release VMs you no longer need or configure a larger [netd] subnet",
                cfg.subnet
            ));
        }
        if self.dns.is_empty() {
            problems.push(
                "no DNS server for VMs: the host has only loopback resolvers; set [netd] dns = [\"…\"]".to_owned(),
            );
        }
        Ok(Status {
            bridge: cfg.bridge.clone(),
            bridge_up,
            subnet: cfg.subnet.to_string(),
            gateway: cfg.gateway(),
            nat_enabled,
            uplinks,
            ip_forward,
            lease_count,
            free_addresses,
            problems,
        })
    }
}

/// Uplinks are the links NAT traffic can leave through: up, not loopback,
/// not our bridge, not a tap of ours and not a port of any bridge. The
/// masquerade rule matches `oifname != <bridge>`, so exactly these are the
/// interfaces it applies to; listing them without consulting routes keeps
/// the answer true even on hosts whose default route is managed elsewhere
/// (policy routing, VPNs).
pub fn uplinks(links: &[Link], bridge: &str) -> Vec<String> {
    let mut names: Vec<String> = links
        .iter()
        .filter(|l| {
            l.up && l.name != "lo"
                && l.name != bridge
                && !l.name.starts_with(TAP_PREFIX)
                && l.controller.is_none()
        })
        .map(|l| l.name.clone())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Call, RecordingOps};

    fn config(subnet: &str) -> NetdConfig {
        NetdConfig {
            subnet: subnet.parse().unwrap(),
            dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
            ..NetdConfig::default()
        }
    }

    async fn start(dir: &Path, cfg: NetdConfig, ops: &RecordingOps) -> (Manager, Reconciled) {
        Manager::start(cfg, dir, Path::new("/nonexistent"), Box::new(ops.clone()))
            .await
            .unwrap()
    }

    fn params(vm: &str, nat: bool) -> AllocateParams {
        AllocateParams {
            vm_id: vm.into(),
            nat,
            owner_uid: 1000,
            owner_gid: 1001,
        }
    }

    #[tokio::test]
    async fn start_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let ops = RecordingOps::default();
        let (_, first) = start(dir.path(), config("172.30.0.0/24"), &ops).await;
        assert!(first.bridge_changed && first.table_changed && first.guard_changed);
        assert_eq!(
            ops.take_calls(),
            vec![
                Call::EnsureBridge("banger0".into()),
                Call::EnsureNatTable,
                Call::SetIpForward(true),
                Call::EnsureGuard { vm_to_vm: false },
            ]
        );
        let (_, second) = start(dir.path(), config("172.30.0.0/24"), &ops).await;
        assert_eq!(second, Reconciled::default());
        assert_eq!(ops.take_calls(), vec![]);
    }

    #[tokio::test]
    async fn allocate_is_idempotent_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let ops = RecordingOps::default();
        let (m, _) = start(dir.path(), config("172.30.0.0/24"), &ops).await;
        ops.take_calls();
        let a = m.allocate(params("a", true)).await.unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(a.gateway, Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(a.prefix_len, 24);
        assert_eq!(a.tap, "bg-a");
        assert_eq!(a.mac, "02:ba:ac:1e:00:02");
        assert_eq!(a.dns, vec![Ipv4Addr::new(10, 0, 0, 53)]);
        assert_eq!(
            ops.take_calls(),
            vec![
                Call::EnsureTap {
                    tap: "bg-a".into(),
                    uid: 1000,
                    gid: 1001
                },
                Call::AddGuardEntry("bg-a".into(), a.ip),
                Call::AddNatSource(a.ip)
            ]
        );
        assert_eq!(m.allocate(params("a", false)).await.unwrap(), a);
        assert_eq!(ops.take_calls(), vec![], "second allocate changes nothing");
        let b = m.allocate(params("b", false)).await.unwrap();
        assert_eq!(b.ip, Ipv4Addr::new(172, 30, 0, 3));
        assert!(!b.nat);
        assert!(!ops.state().nat_sources.contains(&b.ip));
        // Every lease is in the guard, NAT or not: its tap may send only
        // from its own address.
        assert_eq!(
            ops.state().guard_entries,
            [("bg-a".to_owned(), a.ip), ("bg-b".to_owned(), b.ip)]
                .into_iter()
                .collect()
        );
        assert_eq!(m.list().await, vec![a, b]);
    }

    #[tokio::test]
    async fn exhaustion_and_reuse_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let ops = RecordingOps::default();
        let (m, _) = start(dir.path(), config("10.1.0.0/29"), &ops).await;
        let mut ips = BTreeSet::new();
        for i in 0..5 {
            ips.insert(m.allocate(params(&format!("v{i}"), true)).await.unwrap().ip);
        }
        // Never network (.0), gateway (.1) or broadcast (.7).
        let expected: BTreeSet<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        assert_eq!(ips, expected);
        let err = m.allocate(params("v5", true)).await.unwrap_err();
        assert!(matches!(err, Error::Exhausted { .. }), "{err}");
        assert_eq!(
            banger_proto::rpc::GrpcError::grpc_code(&err),
            tonic::Code::ResourceExhausted
        );
        assert!(m.release("v2").await.unwrap());
        assert!(!m.release("v2").await.unwrap(), "release is idempotent");
        let again = m.allocate(params("v5", true)).await.unwrap();
        assert_eq!(again.ip, Ipv4Addr::new(10, 1, 0, 4));
    }

    #[tokio::test]
    async fn release_removes_tap_element_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let ops = RecordingOps::default();
        let (m, _) = start(dir.path(), config("172.30.0.0/24"), &ops).await;
        let a = m.allocate(params("a", true)).await.unwrap();
        ops.take_calls();
        assert!(m.release("a").await.unwrap());
        assert_eq!(
            ops.take_calls(),
            vec![
                Call::DeleteTap("bg-a".into()),
                Call::RemoveGuardEntry("bg-a".into(), a.ip),
                Call::RemoveNatSource(a.ip)
            ]
        );
        let st = ops.state();
        assert!(st.taps.is_empty() && st.nat_sources.is_empty() && st.guard_entries.is_empty());
        assert!(LeaseStore::new(dir.path()).load().unwrap().is_empty());
    }

    #[tokio::test]
    async fn failed_tap_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let ops = RecordingOps::default();
        let (m, _) = start(dir.path(), config("172.30.0.0/24"), &ops).await;
        ops.net.lock().unwrap().fail_taps = true;
        assert!(m.allocate(params("a", true)).await.is_err());
        assert!(m.list().await.is_empty());
        assert!(ops.take_calls().contains(&Call::DeleteTap("bg-a".into())));
        ops.net.lock().unwrap().fail_taps = false;
        assert_eq!(
            m.allocate(params("a", true)).await.unwrap().ip,
            Ipv4Addr::new(172, 30, 0, 2)
        );
    }

    #[tokio::test]
    async fn restart_reconciles_taps_and_nat() {
        let dir = tempfile::tempdir().unwrap();
        let ops = RecordingOps::default();
        let (m, _) = start(dir.path(), config("172.30.0.0/24"), &ops).await;
        let a = m.allocate(params("a", true)).await.unwrap();
        let b = m.allocate(params("b", true)).await.unwrap();
        drop(m);
        {
            let mut net = ops.net.lock().unwrap();
            net.taps.remove("bg-a"); // lost tap
            net.taps.insert("bg-orphan".into(), (0, 0)); // no lease
            net.nat_sources.remove(&b.ip); // lost element
            net.nat_sources.insert(Ipv4Addr::new(172, 30, 0, 99)); // stray element
            net.ip_forward = false;
        }
        ops.take_calls();
        let (m, fixed) = start(dir.path(), config("172.30.0.0/24"), &ops).await;
        assert_eq!(fixed.taps_recreated, vec!["bg-a".to_owned()]);
        assert_eq!(fixed.taps_deleted, vec!["bg-orphan".to_owned()]);
        assert_eq!(fixed.nat_added, vec![b.ip]);
        assert_eq!(fixed.nat_removed, vec![Ipv4Addr::new(172, 30, 0, 99)]);
        let st = ops.state();
        assert_eq!(
            st.taps.keys().cloned().collect::<Vec<_>>(),
            vec!["bg-a".to_owned(), "bg-b".to_owned()]
        );
        assert_eq!(st.taps["bg-a"], (1000, 1001), "owner restored");
        assert_eq!(st.nat_sources, [a.ip, b.ip].into_iter().collect());
        assert!(st.ip_forward);
        assert_eq!(m.list().await.len(), 2);
    }

    #[tokio::test]
    async fn nat_disabled_removes_table_and_leases_have_no_nat() {
        let dir = tempfile::tempdir().unwrap();
        let ops = RecordingOps::default();
        start(dir.path(), config("172.30.0.0/24"), &ops).await;
        assert!(ops.state().nat_table);
        let cfg = NetdConfig {
            nat: false,
            ..config("172.30.0.0/24")
        };
        let (m, fixed) = start(dir.path(), cfg, &ops).await;
        assert!(fixed.table_changed);
        assert!(!ops.state().nat_table);
        let a = m.allocate(params("a", true)).await.unwrap();
        assert!(!a.nat);
        let st = m.status().await.unwrap();
        assert!(!st.nat_enabled);
        assert!(st.problems.iter().any(|p| p.contains("nat = false")));
    }

    #[tokio::test]
    async fn status_reports_state_and_problems() {
        let dir = tempfile::tempdir().unwrap();
        let ops = RecordingOps::default();
        ops.net.lock().unwrap().others.push("eth0".into());
        let (m, _) = start(dir.path(), config("172.30.0.0/24"), &ops).await;
        m.allocate(params("a", true)).await.unwrap();
        let st = m.status().await.unwrap();
        assert_eq!(st.bridge, "banger0");
        assert!(st.bridge_up && st.nat_enabled && st.ip_forward);
        assert_eq!(st.subnet, "172.30.0.0/24");
        assert_eq!(st.gateway, Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(st.uplinks, vec!["eth0".to_owned()]);
        assert_eq!((st.lease_count, st.free_addresses), (1, 252));
        assert!(st.problems.is_empty(), "{:?}", st.problems);

        {
            let mut net = ops.net.lock().unwrap();
            net.taps.clear();
            net.foreign_drops.push("ip filter FORWARD".into());
            net.nat_table = false;
            net.ip_forward = false;
            net.others.clear();
        }
        let st = m.status().await.unwrap();
        let all = st.problems.join("\n");
        for needle in [
            "bg-a",
            "NAT rules",
            "ip_forward",
            "uplink",
            "ip filter FORWARD",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }

    #[tokio::test]
    async fn rejects_bad_vm_ids() {
        let dir = tempfile::tempdir().unwrap();
        let ops = RecordingOps::default();
        let (m, _) = start(dir.path(), config("172.30.0.0/24"), &ops).await;
        let err = m.allocate(params("../x", true)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidVmId(_)));
    }
}
