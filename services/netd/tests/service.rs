//! In-process service tests: the real gRPC service on a temp socket over the
//! recording NetOps double (no privilege needed beyond being the socket's peer).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_netd::ops::RecordingOps;
use banger_netd::{Manager, NetdConfig, NetdService};
use banger_proto::netd::v1 as pb;
use banger_proto::netd::v1::netd_client::NetdClient;
use banger_proto::netd::v1::netd_server::NetdServer;
use banger_proto::rpc::TracedChannel;
use banger_test_support::inproc;
use tonic::service::Routes;

struct Served {
    client: NetdClient<TracedChannel>,
    _served: inproc::Served,
    _dir: tempfile::TempDir,
}

async fn serve(config: NetdConfig, ops: RecordingOps) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let (manager, _) = Manager::start(
        config,
        &dir.path().join("state"),
        Path::new("/nonexistent"),
        Box::new(ops),
    )
    .await
    .unwrap();
    let routes = Routes::new(NetdServer::new(NetdService::new(Arc::new(manager))));
    let served = inproc::serve(
        &dir.path().join("netd.sock"),
        "banger-netd",
        &["banger.netd.v1.Netd"],
        routes,
    )
    .await;
    Served {
        client: NetdClient::new(served.channel.clone()),
        _served: served,
        _dir: dir,
    }
}

#[tokio::test]
async fn allocate_list_release_over_the_socket() {
    let ops = RecordingOps::default();
    let mut s = serve(NetdConfig::default(), ops.clone()).await;
    let req = pb::AllocateRequest {
        vm_id: "web".into(),
        nat: true,
        owner_uid: Some(990),
        owner_gid: Some(36),
    };
    let lease = s.client.allocate(req.clone()).await.unwrap().into_inner();
    assert_eq!(lease.tap, "bg-web");
    assert_eq!(lease.ip, "172.30.0.2");
    assert_eq!(lease.gateway, "172.30.0.1");
    assert_eq!(lease.prefix_len, 24);
    assert_eq!(lease.mac, "02:ba:ac:1e:00:02");
    // The test runs as root, so the requested owner is honoured.
    assert_eq!((lease.owner_uid, lease.owner_gid), (990, 36));
    assert_eq!(ops.state().taps["bg-web"], (990, 36));
    assert_eq!(s.client.allocate(req).await.unwrap().into_inner(), lease);

    let listed = s
        .client
        .list_leases(pb::ListLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.leases, vec![lease]);

    let status = s
        .client
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.lease_count, 1);
    assert_eq!(status.free_addresses, 252);
    assert!(status.bridge_up && status.nat_enabled);

    let released = s
        .client
        .release(pb::ReleaseRequest {
            vm_id: "web".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released);
    assert!(ops.state().taps.is_empty());
}

#[tokio::test]
async fn errors_carry_precise_codes() {
    let cfg = NetdConfig {
        subnet: "10.7.0.0/30".parse().unwrap(),
        ..NetdConfig::default()
    };
    let mut s = serve(cfg, RecordingOps::default()).await;
    let alloc = |vm: &str| pb::AllocateRequest {
        vm_id: vm.into(),
        nat: false,
        owner_uid: None,
        owner_gid: None,
    };
    s.client.allocate(alloc("one")).await.unwrap();
    let err = s.client.allocate(alloc("two")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    let err = s.client.allocate(alloc("a/b")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

/// Calls `f` with a client whose socket peer credentials are `uid`/`gid`:
/// a thread switches only its own credentials (raw syscalls; glibc's
/// wrappers would switch every thread of the test process) and connects.
fn as_user<F, Fut, T>(socket: PathBuf, uid: u32, gid: u32, f: F) -> T
where
    F: FnOnce(NetdClient<TracedChannel>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    banger_test_support::require_root();
    std::thread::spawn(move || {
        // SAFETY: plain setresgid/setresuid system calls with integer
        // arguments; they change only this thread's credentials, which is
        // the point, and the thread ends right after the call below.
        let rc = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
        assert_eq!(rc, 0, "setresgid");
        // SAFETY: as above.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        assert_eq!(rc, 0, "setresuid");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let channel = banger_proto::rpc::connect(&socket).await.unwrap();
                f(NetdClient::new(channel)).await
            })
    })
    .join()
    .unwrap()
}

/// Serves on a socket other users may dial (the test's stand-in for the
/// 0660 root:banger socket and group membership).
async fn serve_open(config: NetdConfig, ops: RecordingOps) -> (Served, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let served = serve(config, ops).await;
    let dir = served._dir.path().to_path_buf();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.join("netd.sock");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    (served, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_and_the_vmm_uid_change_state() {
    banger_test_support::gate!(Priv, ROOT);
    let ops = RecordingOps::default();
    let cfg = NetdConfig {
        vmm_uid: Some(4242),
        ..NetdConfig::default()
    };
    let (_served, socket) = serve_open(cfg, ops.clone()).await;
    let req = |vm: &str| pb::AllocateRequest {
        vm_id: vm.into(),
        nat: true,
        owner_uid: Some(0),
        owner_gid: Some(0),
    };

    // A stranger may look but not touch.
    let r = req("x");
    let (alloc, release, list) = as_user(socket.clone(), 5555, 5555, move |mut c| async move {
        (
            c.allocate(r).await.map(|_| ()),
            c.release(pb::ReleaseRequest { vm_id: "x".into() })
                .await
                .map(|_| ()),
            c.list_leases(pb::ListLeasesRequest {}).await.map(|_| ()),
        )
    });
    assert_eq!(alloc.unwrap_err().code(), tonic::Code::PermissionDenied);
    assert_eq!(release.unwrap_err().code(), tonic::Code::PermissionDenied);
    list.unwrap();
    assert!(ops.state().taps.is_empty());

    // The vmm uid may; the tap is its own, whatever owner it asks for.
    let r = req("vm1");
    let lease = as_user(socket.clone(), 4242, 4343, move |mut c| async move {
        c.allocate(r).await.unwrap().into_inner()
    });
    assert_eq!((lease.owner_uid, lease.owner_gid), (4242, 4343));
    assert_eq!(ops.state().taps[&lease.tap], (4242, 4343));
}
