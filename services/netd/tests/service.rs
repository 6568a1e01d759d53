//! In-process service tests: the real gRPC service on a temp socket over the
//! recording NetOps double (no privilege needed beyond being the socket's peer).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use banger_netd::ops::RecordingOps;
use banger_netd::{Manager, NetdConfig, NetdService};
use banger_proto::netd::v1 as pb;
use banger_proto::netd::v1::netd_client::NetdClient;
use banger_proto::netd::v1::netd_server::NetdServer;
use banger_proto::rpc::{BoundSocket, ServeOptions, TracedChannel};
use tokio::sync::oneshot;
use tonic::service::Routes;

struct Served {
    client: NetdClient<TracedChannel>,
    _stop: oneshot::Sender<()>,
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
    let socket: PathBuf = dir.path().join("netd.sock");
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
    Served {
        client: NetdClient::new(channel),
        _stop: stop,
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
