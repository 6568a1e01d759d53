//! Privileged tier: the real LinuxOps (rtnetlink, tun ioctls, nftables) and
//! the real `banger-netd` binary, each test in a network namespace it made
//! itself. Traffic only ever flows between namespaces these tests created.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use banger_netd::linux::LinuxOps;
use banger_netd::manager::Reconciled;
use banger_netd::{Manager, NetdConfig, NetdService};
use banger_proto::netd::v1 as pb;
use banger_proto::netd::v1::netd_client::NetdClient;
use banger_proto::netd::v1::netd_server::NetdServer;
use banger_proto::rpc::{BoundSocket, ServeOptions, TracedChannel};
use banger_test_support::netns::{NamedNetns, in_new_netns};
use banger_test_support::require_program;
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::service::Routes;

const NETD: &str = env!("CARGO_BIN_EXE_banger-netd");

fn require_tools() {
    require_program("nft", "nftables");
    require_program("ip", "iproute2");
    require_program("setpriv", "util-linux");
}

/// Runs `f` on a current-thread runtime inside a fresh network namespace.
fn netns_test<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    require_tools();
    in_new_netns(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
}

/// Runs a command (in the current thread's namespace) and returns stdout.
fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn nft_table() -> String {
    run(&["nft", "-j", "list", "table", "inet", "banger"])
}

fn nat_elements() -> BTreeSet<Ipv4Addr> {
    let v: Value = serde_json::from_str(&nft_table()).unwrap();
    banger_netd::linux::set_elements(&v)
}

/// Names of `bg-*` links in the current namespace.
fn bg_links() -> BTreeSet<String> {
    let v: Value = serde_json::from_str(&run(&["ip", "-j", "link", "show"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("bg-"))
        .map(str::to_owned)
        .collect()
}

/// `ip -d -j link show dev <name>`, first entry. (/sys/class/net shows the
/// namespace sysfs was mounted in, not ours, so netlink it is.)
fn link_detail(name: &str) -> Value {
    let v: Value =
        serde_json::from_str(&run(&["ip", "-d", "-j", "link", "show", "dev", name])).unwrap();
    v[0].clone()
}

fn test_config(subnet: &str) -> NetdConfig {
    NetdConfig {
        subnet: subnet.parse().unwrap(),
        dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
        ..NetdConfig::default()
    }
}

async fn start_manager(cfg: NetdConfig, state: &Path) -> (Manager, Reconciled) {
    Manager::start(
        cfg,
        state,
        Path::new("/nonexistent"),
        Box::new(LinuxOps::new().unwrap()),
    )
    .await
    .unwrap()
}

/// The real service on a temp socket, in-process.
async fn serve(manager: Manager, dir: &Path) -> (NetdClient<TracedChannel>, oneshot::Sender<()>) {
    let socket = dir.join("netd.sock");
    let bound = BoundSocket::bind(ServeOptions {
        socket: socket.clone(),
        socket_group: None,
        pid_file: None,
        name: "banger-netd".into(),
        services: vec!["banger.netd.v1.Netd".into()],
    })
    .await
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let routes = Routes::new(NetdServer::new(NetdService::new(Arc::new(manager))));
    tokio::spawn(bound.serve(routes, async {
        let _ = stopped.await;
    }));
    let channel = banger_proto::rpc::connect(&socket).await.unwrap();
    (NetdClient::new(channel), stop)
}

fn alloc(vm: &str, nat: bool, owner: Option<(u32, u32)>) -> pb::AllocateRequest {
    pb::AllocateRequest {
        vm_id: vm.into(),
        nat,
        owner_uid: owner.map(|o| o.0),
        owner_gid: owner.map(|o| o.1),
    }
}

#[test]
fn bridge_and_table_are_idempotent_and_foreign_tables_untouched() {
    banger_test_support::gate!(Priv, ROOT);
    netns_test(|| async {
        // Someone else's table must survive everything we do.
        run(&["nft", "add", "table", "ip", "other"]);
        run(&[
            "nft",
            "add",
            "chain",
            "ip",
            "other",
            "c",
            "{ type filter hook forward priority 10; }",
        ]);
        run(&["nft", "add", "rule", "ip", "other", "c", "counter"]);
        let other_before = run(&["nft", "-j", "list", "table", "ip", "other"]);

        let dir = tempfile::tempdir().unwrap();
        let (m, first) = start_manager(test_config("172.30.0.0/24"), dir.path()).await;
        assert!(first.bridge_changed && first.table_changed, "{first:?}");
        drop(m);
        let table = nft_table();
        let addr = run(&["ip", "-j", "addr", "show", "dev", "banger0"]);
        // Without -d: the details include running bridge timers.
        let br = run(&["ip", "-j", "link", "show", "dev", "banger0"]);
        let detail = link_detail("banger0");
        assert_eq!(detail["linkinfo"]["info_kind"], "bridge");
        assert_eq!(detail["address"], "02:ba:ac:1e:00:01", "fixed gateway MAC");
        assert!(br.contains("\"UP\""), "{br}");
        assert!(addr.contains("172.30.0.1"), "{addr}");
        assert_eq!(run(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "1");

        let (m, second) = start_manager(test_config("172.30.0.0/24"), dir.path()).await;
        assert_eq!(second, Reconciled::default(), "a restart changes nothing");
        assert_eq!(nft_table(), table, "table unchanged, handles included");
        assert_eq!(run(&["ip", "-j", "addr", "show", "dev", "banger0"]), addr);
        assert_eq!(run(&["ip", "-j", "link", "show", "dev", "banger0"]), br);
        drop(m);

        // A flushed chain is repaired on the next start.
        run(&["nft", "flush", "chain", "inet", "banger", "postrouting"]);
        let (m, third) = start_manager(test_config("172.30.0.0/24"), dir.path()).await;
        assert!(third.table_changed && !third.bridge_changed, "{third:?}");
        assert!(m.status().await.unwrap().nat_enabled);

        // A foreign forward chain that drops is reported, never changed.
        run(&[
            "nft",
            "add",
            "chain",
            "ip",
            "other",
            "fwdrop",
            "{ type filter hook forward priority 20; policy drop; }",
        ]);
        let problems = m.status().await.unwrap().problems.join("\n");
        assert!(problems.contains("`ip other fwdrop` drops"), "{problems}");
        run(&["nft", "delete", "chain", "ip", "other", "fwdrop"]);
        assert_eq!(
            run(&["nft", "-j", "list", "table", "ip", "other"]),
            other_before,
            "foreign table untouched"
        );
    });
}

#[test]
fn fifty_concurrent_allocations_then_release_everything() {
    banger_test_support::gate!(Priv, ROOT);
    netns_test(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = start_manager(test_config("172.30.0.0/24"), &dir.path().join("state")).await;
        let (client, _stop) = serve(m, dir.path()).await;
        let calls = (0..50).map(|i| {
            let mut c = client.clone();
            async move {
                c.allocate(alloc(&format!("vm{i}"), true, Some((1234, 2345))))
                    .await
                    .unwrap()
                    .into_inner()
            }
        });
        let started = std::time::Instant::now();
        let leases = futures::future::join_all(calls).await;
        // Reported, never asserted (tests do not judge wall time).
        eprintln!("50 concurrent allocations took {:?}", started.elapsed());
        let ips: BTreeSet<&str> = leases.iter().map(|l| l.ip.as_str()).collect();
        let taps: BTreeSet<String> = leases.iter().map(|l| l.tap.clone()).collect();
        assert_eq!(ips.len(), 50);
        assert_eq!(taps.len(), 50);
        assert!(
            !ips.contains("172.30.0.0")
                && !ips.contains("172.30.0.1")
                && !ips.contains("172.30.0.255")
        );
        assert_eq!(bg_links(), taps);
        for tap in &taps {
            let d = link_detail(tap);
            let info = &d["linkinfo"]["info_data"];
            assert_eq!(info["type"], "tap", "{d}");
            assert_eq!(info["user"], 1234, "{d}");
            assert_eq!(info["group"], 2345, "{d}");
            assert_eq!(info["persist"], true, "{d}");
            assert_eq!(d["master"], "banger0", "{d}");
            assert!(
                d["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
                "{d}"
            );
        }
        let expected: BTreeSet<Ipv4Addr> = leases.iter().map(|l| l.ip.parse().unwrap()).collect();
        assert_eq!(nat_elements(), expected);

        let releases = leases.iter().map(|l| {
            let mut c = client.clone();
            let vm = l.vm_id.clone();
            async move {
                c.release(pb::ReleaseRequest { vm_id: vm })
                    .await
                    .unwrap()
                    .into_inner()
            }
        });
        let started = std::time::Instant::now();
        let released = futures::future::join_all(releases).await;
        eprintln!("50 concurrent releases took {:?}", started.elapsed());
        for r in released {
            assert!(r.released);
        }
        assert!(bg_links().is_empty(), "taps left: {:?}", bg_links());
        assert!(nat_elements().is_empty());
        let mut c = client.clone();
        assert!(
            c.list_leases(pb::ListLeasesRequest {})
                .await
                .unwrap()
                .into_inner()
                .leases
                .is_empty()
        );
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("state/leases.json")).unwrap())
                .unwrap();
        assert_eq!(on_disk["leases"], serde_json::json!([]));
    });
}

#[test]
fn exhausting_a_small_subnet_is_resource_exhausted() {
    banger_test_support::gate!(Priv, ROOT);
    netns_test(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = start_manager(test_config("10.99.0.0/29"), &dir.path().join("state")).await;
        let (mut client, _stop) = serve(m, dir.path()).await;
        let mut ips = BTreeSet::new();
        for i in 0..5 {
            ips.insert(
                client
                    .allocate(alloc(&format!("v{i}"), true, None))
                    .await
                    .unwrap()
                    .into_inner()
                    .ip,
            );
        }
        let want: BTreeSet<String> = (2..=6).map(|i| format!("10.99.0.{i}")).collect();
        assert_eq!(ips, want);
        let err = client.allocate(alloc("v5", true, None)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("release"), "{}", err.message());
        assert_eq!(bg_links().len(), 5, "failed allocation left no tap");
        let status = client
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.free_addresses, 0);
        assert!(status.problems.iter().any(|p| p.contains("full")));
    });
}

/// A `banger-netd` process under `--home`, spawned from the calling thread
/// (so in its namespace), optionally wrapped (e.g. in setpriv).
struct Daemon {
    child: Child,
    home: PathBuf,
}

impl Daemon {
    fn spawn(home: &Path, wrapper: &[&str]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("netd.log"))
            .unwrap();
        let mut argv: Vec<&str> = wrapper.to_vec();
        argv.push(NETD);
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .arg("--home")
            .arg(home)
            .env_remove("BANGER_HOME")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Daemon {
            child,
            home: home.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("netd.log")).unwrap_or_default()
    }

    /// Waits until the socket answers (or the process dies).
    async fn client(&mut self) -> NetdClient<TracedChannel> {
        let socket = self.home.join("run/netd.sock");
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("banger-netd exited with {status}:\n{}", self.log());
            }
            // A connect alone succeeds as soon as the socket listens, which
            // is before netd restricts its capabilities; an answer comes
            // only after (daemon::main_with serves after `after_bind`).
            if let Ok(ch) = banger_proto::rpc::connect(&socket).await {
                let mut client = NetdClient::new(ch);
                if client.list_leases(pb::ListLeasesRequest {}).await.is_ok() {
                    return client;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "banger-netd never answered on {}:\n{}",
            socket.display(),
            self.log()
        );
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// The `CapEff` and `CapBnd` lines of the daemon's /proc status, the
    /// same in every one of its threads (capabilities are per thread: a
    /// drop on the main thread alone leaves the runtime's workers with
    /// all of them); when threads differ, every thread's lines.
    fn caps(&self) -> (String, String) {
        let mut seen = std::collections::BTreeMap::new();
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(&tasks).unwrap() {
            let task = task.unwrap();
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue; // the thread ended meanwhile
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap()
                    .trim()
                    .to_owned()
            };
            seen.insert(
                task.file_name().to_string_lossy().into_owned(),
                (field("CapEff:"), field("CapBnd:")),
            );
        }
        let distinct: std::collections::BTreeSet<_> = seen.values().cloned().collect();
        assert!(seen.len() > 1, "the daemon runs more than its main thread");
        if distinct.len() == 1 {
            return distinct.into_iter().next().unwrap();
        }
        let all = |pick: fn(&(String, String)) -> &String| {
            seen.iter()
                .map(|(tid, c)| format!("{tid}:{}", pick(c)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        (all(|c| &c.0), all(|c| &c.1))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CAP_NET_ADMIN (bit 12) alone, as /proc shows capability sets.
const NET_ADMIN_ONLY: &str = "0000000000001000";

async fn leases_of(client: &mut NetdClient<TracedChannel>) -> Vec<pb::Lease> {
    client
        .list_leases(pb::ListLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
}

/// The invariant after any crash and restart: taps and NAT elements are
/// exactly those the persisted leases imply.
fn assert_consistent(leases: &[pb::Lease]) {
    let taps: BTreeSet<String> = leases.iter().map(|l| l.tap.clone()).collect();
    assert_eq!(bg_links(), taps, "taps vs leases");
    let nat: BTreeSet<Ipv4Addr> = leases
        .iter()
        .filter(|l| l.nat)
        .map(|l| l.ip.parse().unwrap())
        .collect();
    assert_eq!(nat_elements(), nat, "NAT elements vs leases");
    for tap in &taps {
        assert_eq!(link_detail(tap)["master"], "banger0");
    }
}

#[test]
fn killed_with_sigkill_and_restarted_keeps_exactly_the_leases() {
    banger_test_support::gate!(Priv, ROOT);
    netns_test(|| async {
        let home = tempfile::tempdir().unwrap();
        let mut d = Daemon::spawn(home.path(), &[]);
        let mut c = d.client().await;
        assert_eq!(
            d.caps(),
            (NET_ADMIN_ONLY.into(), NET_ADMIN_ONLY.into()),
            "root netd drops all but CAP_NET_ADMIN"
        );
        for vm in ["a", "b", "c"] {
            c.allocate(alloc(vm, vm != "c", None)).await.unwrap();
        }
        // A "hypervisor" holds bg-b open across the crash and restart.
        let vmm_holds_b = banger_netd::tun::attach("bg-b").unwrap();
        d.kill9();

        // Damage while it is down: a lost tap, a tap off the bridge, an
        // orphan tap, a stray element.
        run(&["ip", "link", "del", "bg-a"]);
        run(&["ip", "link", "set", "bg-c", "nomaster"]);
        run(&["ip", "tuntap", "add", "dev", "bg-orphan", "mode", "tap"]);
        run(&[
            "nft",
            "add",
            "element",
            "inet",
            "banger",
            "nat_sources",
            "{ 172.30.0.99 }",
        ]);

        let mut d = Daemon::spawn(home.path(), &[]);
        let mut c = d.client().await;
        let leases = leases_of(&mut c).await;
        let vms: Vec<&str> = leases.iter().map(|l| l.vm_id.as_str()).collect();
        assert_eq!(vms, ["a", "b", "c"]);
        assert_consistent(&leases);
        let log = d.log();
        assert!(
            log.contains("bg-orphan") && log.contains("bg-a"),
            "reconcile is logged:\n{log}"
        );
        drop(vmm_holds_b);

        // Released, then killed at once: the release sticks.
        c.release(pb::ReleaseRequest { vm_id: "b".into() })
            .await
            .unwrap();
        d.kill9();
        let mut d = Daemon::spawn(home.path(), &[]);
        let mut c = d.client().await;
        let leases = leases_of(&mut c).await;
        let vms: Vec<&str> = leases.iter().map(|l| l.vm_id.as_str()).collect();
        assert_eq!(vms, ["a", "c"]);
        assert_consistent(&leases);

        // Killed in the middle of a burst of allocations: whatever was
        // persisted is exactly what exists after the restart.
        let burst = (0..10).map(|i| {
            let mut c = c.clone();
            async move { c.allocate(alloc(&format!("burst{i}"), true, None)).await }
        });
        let mut burst = futures::future::select_all(burst.map(Box::pin)).await.2;
        d.kill9();
        for f in burst.drain(..) {
            let _ = f.await; // most fail: the daemon is gone
        }
        let mut d = Daemon::spawn(home.path(), &[]);
        let mut c = d.client().await;
        let leases = leases_of(&mut c).await;
        assert!(
            leases.len() >= 3,
            "a, c and the first burst lease: {leases:?}"
        );
        assert_consistent(&leases);
    });
}

/// Receives one UDP datagram in namespace `ns` and returns its source.
fn udp_source_seen(receiver: &NamedNetns, sender: &NamedNetns, to: SocketAddr) -> Ipv4Addr {
    udp_source_within(receiver, sender, to, Duration::from_secs(20))
        .expect("no datagram reached the receiving namespace")
}

/// Like [`udp_source_seen`], but `None` when nothing arrives within `wait`.
fn udp_source_within(
    receiver: &NamedNetns,
    sender: &NamedNetns,
    to: SocketAddr,
    wait: Duration,
) -> Option<Ipv4Addr> {
    let enter = |name: String| {
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    };
    let (rx_name, tx_name) = (receiver.name.clone(), sender.name.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listener = std::thread::spawn(move || {
        enter(rx_name);
        let sock = UdpSocket::bind(to).unwrap();
        sock.set_read_timeout(Some(wait)).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 64];
        sock.recv_from(&mut buf).ok().map(|(_, from)| from)
    });
    ready_rx.recv().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let talker = std::thread::spawn(move || {
        enter(tx_name);
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        // Resend until the listener has one (the first may wait for ARP).
        while stop_rx.recv_timeout(Duration::from_millis(200)).is_err() {
            let _ = sock.send_to(b"hello", to);
        }
    });
    let from = listener.join().unwrap();
    stop_tx.send(()).unwrap();
    talker.join().unwrap();
    from.map(|from| match from {
        SocketAddr::V4(a) => *a.ip(),
        other => panic!("unexpected source {other}"),
    })
}

/// Replaces the tap netd made for `lease` with a veth of the same name on
/// the bridge, its peer in `ns` as `eth0` with `addr`, default route via
/// the gateway and a static gateway neighbour (so a spoofing guest needs no
/// ARP answer to send). A tap carries nothing without a hypervisor; a veth
/// named like the tap is the same bridge port to nftables.
fn veth_guest(lease: &pb::Lease, ns: &NamedNetns, addr: &str) {
    let in_ns = |argv: &[&str]| {
        let st = ns.exec(argv).status().unwrap();
        assert!(st.success(), "{argv:?} in {}", ns.name);
    };
    run(&["ip", "link", "del", &lease.tap]);
    run(&[
        "ip", "link", "add", &lease.tap, "type", "veth", "peer", "name", "vm-eth0",
    ]);
    run(&["ip", "link", "set", "vm-eth0", "netns", &ns.name]);
    run(&["ip", "link", "set", &lease.tap, "master", "banger0", "up"]);
    in_ns(&["ip", "link", "set", "vm-eth0", "name", "eth0"]);
    in_ns(&["ip", "addr", "add", addr, "dev", "eth0"]);
    in_ns(&["ip", "link", "set", "eth0", "up"]);
    in_ns(&["ip", "route", "add", "default", "via", &lease.gateway]);
    in_ns(&[
        "ip",
        "neigh",
        "replace",
        &lease.gateway,
        "lladdr",
        "02:ba:ac:1e:00:01",
        "dev",
        "eth0",
    ]);
}

/// The uplink namespace as in [`nat_masquerades_only_leases_with_nat`].
fn uplink(ns: &NamedNetns) {
    let in_ns = |argv: &[&str]| {
        let st = ns.exec(argv).status().unwrap();
        assert!(st.success(), "{argv:?} in {}", ns.name);
    };
    run(&[
        "ip", "link", "add", "up-h", "type", "veth", "peer", "name", "up-u",
    ]);
    run(&["ip", "link", "set", "up-u", "netns", &ns.name]);
    run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "up-h"]);
    run(&["ip", "link", "set", "up-h", "up"]);
    in_ns(&["ip", "addr", "add", "192.0.2.2/24", "dev", "up-u"]);
    in_ns(&["ip", "link", "set", "up-u", "up"]);
    in_ns(&["ip", "route", "add", "172.30.0.0/24", "via", "192.0.2.1"]);
}

#[test]
fn guard_binds_addresses_to_taps_and_isolates_vms() {
    banger_test_support::gate!(Priv, ROOT);
    netns_test(|| async {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (m, _) = start_manager(test_config("172.30.0.0/24"), &state).await;
        let (mut client, stop) = serve(m, dir.path()).await;
        let (nat_vm, plain_vm, out) = (
            NamedNetns::new("netd-natvm"),
            NamedNetns::new("netd-plainvm"),
            NamedNetns::new("netd-out"),
        );
        uplink(&out);
        let nat = client
            .allocate(alloc("natvm", true, None))
            .await
            .unwrap()
            .into_inner();
        let plain = client
            .allocate(alloc("plainvm", false, None))
            .await
            .unwrap()
            .into_inner();
        let cidr = |l: &pb::Lease| format!("{}/{}", l.ip, l.prefix_len);
        veth_guest(&nat, &nat_vm, &cidr(&nat));
        let target: SocketAddr = "192.0.2.2:9999".parse().unwrap();
        let short = Duration::from_secs(3);
        assert_eq!(
            udp_source_seen(&out, &nat_vm, target),
            Ipv4Addr::new(192, 0, 2, 1),
            "the NAT VM is masqueraded"
        );

        // The VM without NAT takes the NAT VM's address: not masqueraded
        // (not even let onto the bridge).
        veth_guest(&plain, &plain_vm, &cidr(&nat));
        let seen = udp_source_within(&out, &plain_vm, target, short);
        assert_eq!(
            seen, None,
            "a spoofed source left the host (seen as {seen:?})"
        );

        // With its own address it gets out un-NATed, as before.
        let st = plain_vm
            .exec(["ip", "addr", "flush", "dev", "eth0"])
            .status()
            .unwrap();
        assert!(st.success());
        let st = plain_vm
            .exec(["ip", "addr", "add", &cidr(&plain), "dev", "eth0"])
            .status()
            .unwrap();
        assert!(st.success());
        let st = plain_vm
            .exec(["ip", "route", "replace", "default", "via", &plain.gateway])
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            udp_source_seen(&out, &plain_vm, target),
            plain.ip.parse::<Ipv4Addr>().unwrap(),
            "its own address passes the guard"
        );

        // VMs cannot reach each other by default, bridged or routed.
        let to_plain: SocketAddr = format!("{}:9998", plain.ip).parse().unwrap();
        let seen = udp_source_within(&plain_vm, &nat_vm, to_plain, short);
        assert_eq!(seen, None, "VM-to-VM traffic got through by default");
        let st = nat_vm
            .exec([
                "ip",
                "neigh",
                "replace",
                &plain.ip,
                "lladdr",
                "02:ba:ac:1e:00:01",
                "dev",
                "eth0",
            ])
            .status()
            .unwrap();
        assert!(st.success());
        let seen = udp_source_within(&plain_vm, &nat_vm, to_plain, short);
        assert_eq!(seen, None, "VM-to-VM traffic routed through the gateway");
        let st = nat_vm
            .exec(["ip", "neigh", "del", &plain.ip, "dev", "eth0"])
            .status()
            .unwrap();
        assert!(st.success());

        // `[netd] vm_to_vm = true` lets them talk (and still guards sources).
        drop(stop);
        let shared = NetdConfig {
            vm_to_vm: true,
            ..test_config("172.30.0.0/24")
        };
        let (_m, fixed) = start_manager(shared, &state).await;
        assert!(fixed.guard_changed, "{fixed:?}");
        assert_eq!(
            udp_source_within(&plain_vm, &nat_vm, to_plain, Duration::from_secs(20)),
            Some(nat.ip.parse().unwrap()),
            "vm_to_vm = true: the VMs reach each other"
        );
        let guarded: Value =
            serde_json::from_str(&run(&["nft", "-j", "list", "table", "bridge", "banger"]))
                .unwrap();
        let entries = banger_netd::linux::guard_elements(&guarded);
        assert_eq!(
            entries,
            [
                (nat.tap.clone(), nat.ip.parse().unwrap()),
                (plain.tap.clone(), plain.ip.parse().unwrap())
            ]
            .into_iter()
            .collect()
        );
    });
}

#[test]
fn nat_masquerades_only_leases_with_nat() {
    banger_test_support::gate!(Priv, ROOT);
    netns_test(|| async {
        let dir = tempfile::tempdir().unwrap();
        let (m, _) = start_manager(test_config("172.30.0.0/24"), &dir.path().join("state")).await;
        let (mut client, _stop) = serve(m, dir.path()).await;
        let guest = NamedNetns::new("netd-guest");
        let uplink = NamedNetns::new("netd-uplink");
        let in_ns = |ns: &NamedNetns, argv: &[&str]| {
            let st = ns.exec(argv).status().unwrap();
            assert!(st.success(), "{argv:?} in {}", ns.name);
        };
        // Guest: a veth whose host end is a bridge port, standing in for a
        // VM behind its tap (a tap carries nothing without a reader).
        run(&[
            "ip", "link", "add", "vg-h", "type", "veth", "peer", "name", "vg-g",
        ]);
        run(&["ip", "link", "set", "vg-g", "netns", &guest.name]);
        run(&["ip", "link", "set", "vg-h", "master", "banger0", "up"]);
        // Uplink: a TEST-NET-1 link to the "outside" namespace.
        run(&[
            "ip", "link", "add", "up-h", "type", "veth", "peer", "name", "up-u",
        ]);
        run(&["ip", "link", "set", "up-u", "netns", &uplink.name]);
        run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "up-h"]);
        run(&["ip", "link", "set", "up-h", "up"]);
        in_ns(
            &uplink,
            &["ip", "addr", "add", "192.0.2.2/24", "dev", "up-u"],
        );
        in_ns(&uplink, &["ip", "link", "set", "up-u", "up"]);
        // So un-NATed packets pass reverse-path checks there.
        in_ns(
            &uplink,
            &["ip", "route", "add", "172.30.0.0/24", "via", "192.0.2.1"],
        );

        let status = client
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status.uplinks,
            vec!["up-h".to_owned()],
            "bridge ports are not uplinks"
        );
        assert!(status.nat_enabled && status.ip_forward && status.bridge_up);

        let target: SocketAddr = "192.0.2.2:9999".parse().unwrap();
        let lease = client
            .allocate(alloc("guest", true, None))
            .await
            .unwrap()
            .into_inner();
        in_ns(
            &guest,
            &[
                "ip",
                "addr",
                "add",
                &format!("{}/{}", lease.ip, lease.prefix_len),
                "dev",
                "vg-g",
            ],
        );
        in_ns(&guest, &["ip", "link", "set", "vg-g", "up"]);
        in_ns(
            &guest,
            &["ip", "route", "add", "default", "via", &lease.gateway],
        );
        let seen = udp_source_seen(&uplink, &guest, target);
        assert_eq!(
            seen,
            Ipv4Addr::new(192, 0, 2, 1),
            "NAT on: the uplink sees the host's address"
        );

        client
            .release(pb::ReleaseRequest {
                vm_id: "guest".into(),
            })
            .await
            .unwrap();
        let again = client
            .allocate(alloc("guest", false, None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.ip, lease.ip, "same address, NAT off");
        let seen = udp_source_seen(&uplink, &guest, target);
        assert_eq!(
            seen,
            lease.ip.parse::<Ipv4Addr>().unwrap(),
            "NAT off: the guest's own address"
        );
    });
}

#[test]
fn runs_unprivileged_with_only_cap_net_admin_and_refuses_without() {
    banger_test_support::gate!(Priv, ROOT);
    netns_test(|| async {
        let home = tempfile::tempdir().unwrap();
        nix::unistd::chown(home.path(), Some(4242.into()), Some(4242.into())).unwrap();
        // Debian's udev makes /dev/net/tun 0666; where it is 0600 (no udev),
        // give the daemon a 0666 node in a private mount namespace, so the
        // test checks capabilities, not this host's device permissions.
        let base = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /dev/net && mknod -m 0666 /dev/net/tun c 10 200 && exec \"$@\"",
            "sh",
            "setpriv",
            "--reuid=4242",
            "--regid=4242",
            "--clear-groups",
        ];

        let mut without: Vec<&str> = base.to_vec();
        without.extend(["--inh-caps=-all", "--bounding-set=-all"]);
        let mut d = Daemon::spawn(home.path(), &without);
        let status = d.child.wait().unwrap();
        assert!(!status.success(), "netd without CAP_NET_ADMIN must fail");
        let log = d.log();
        assert!(log.contains("CAP_NET_ADMIN is not effective"), "{log}");
        assert!(bg_links().is_empty());

        let mut with: Vec<&str> = base.to_vec();
        with.extend([
            "--inh-caps=+net_admin",
            "--ambient-caps=+net_admin",
            "--bounding-set=-all,+net_admin",
        ]);
        let mut d = Daemon::spawn(home.path(), &with);
        let mut c = d.client().await;
        assert_eq!(d.caps(), (NET_ADMIN_ONLY.into(), NET_ADMIN_ONLY.into()));
        let lease = c
            .allocate(alloc("x", true, Some((4242, 4242))))
            .await
            .unwrap()
            .into_inner();
        let info = &link_detail(&lease.tap)["linkinfo"]["info_data"];
        assert_eq!(info["user"], 4242);
        let status = c
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            status.bridge_up && status.nat_enabled && status.ip_forward,
            "{status:?}"
        );
        assert_eq!(
            nat_elements(),
            [lease.ip.parse().unwrap()].into_iter().collect()
        );
    });
}

/// Dev mode as root with `[paths] socket_group`: netd gives its socket that
/// group although it keeps only CAP_NET_ADMIN afterwards (it used to drop
/// to CAP_NET_ADMIN first, then fail the chown with EPERM).
#[test]
fn root_netd_with_a_socket_group_starts() {
    banger_test_support::gate!(Priv, ROOT);
    netns_test(|| async {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("banger.toml"),
            "[paths]\nsocket_group = \"nogroup\"\n",
        )
        .unwrap();
        let gid = nix::unistd::Group::from_name("nogroup")
            .unwrap()
            .expect("group nogroup (Debian's base-passwd has it)")
            .gid;
        let mut d = Daemon::spawn(home.path(), &[]);
        let mut c = d.client().await;
        assert_eq!(
            d.caps(),
            (NET_ADMIN_ONLY.into(), NET_ADMIN_ONLY.into()),
            "root netd still drops all but CAP_NET_ADMIN"
        );
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(home.path().join("run/netd.sock")).unwrap();
        assert_eq!(meta.gid(), gid.as_raw(), "socket group");
        assert_eq!(meta.mode() & 0o777, 0o660);
        c.allocate(alloc("x", false, None)).await.unwrap();
    });
}
