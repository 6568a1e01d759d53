//! In-process service tier: hostile create/stop/start requests are refused
//! at the API edge with INVALID_ARGUMENT naming what is wrong, before the
//! vmm asks any peer for anything.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use banger_proto::vmm::v1 as pb;
use banger_vmm::testing::RecordingPeers;

/// A real ed25519 public key line.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9gQtxjDPmHJhap51lRxwAqkw/Ne2kdxvQmZb3iW/UI me@host";

fn request(edit: impl FnOnce(&mut pb::CreateVmRequest)) -> pb::CreateVmRequest {
    let mut r = pb::CreateVmRequest {
        name: "box".into(),
        image: "busybox".into(),
        ssh_authorized_keys: vec![KEY.into()],
        no_start: true,
        ..Default::default()
    };
    edit(&mut r);
    r
}

#[tokio::test]
async fn hostile_requests_are_invalid_argument_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    // Not an ext4: a create that gets past validation fails at the disk.
    let image = dir.path().join("image.ext4");
    std::fs::write(&image, b"").unwrap();
    let peers = Arc::new(RecordingPeers::new(
        image,
        PathBuf::from("/nonexistent/vmlinux"),
        "bgtest0",
    ));
    let mgr = common::manager(dir.path(), peers.clone());
    let (mut client, _stop, _server) = common::serve(dir.path(), mgr).await;

    let cases: Vec<(&str, pb::CreateVmRequest)> = vec![
        (
            "newline",
            request(|r| {
                r.ssh_authorized_keys = vec![format!(
                    "{KEY}\ncommand=\"curl http://127.0.0.1:1/x | sh\" {KEY}"
                )]
            }),
        ),
        (
            "options",
            request(|r| r.ssh_authorized_keys = vec![format!("no-pty,command=\"sh\" {KEY}")]),
        ),
        (
            "not base64",
            request(|r| r.ssh_authorized_keys = vec!["ssh-ed25519 %%%% x".into()]),
        ),
        (
            "invalid kernel name",
            request(|r| r.kernel = "../../etc/x y\nINJECT".into()),
        ),
        (
            "invalid kernel name",
            request(|r| r.kernel = "k\u{1b}[31m".into()),
        ),
        ("disk_bytes", request(|r| r.disk_bytes = u64::MAX)),
        ("memory_mib", request(|r| r.memory_mib = u32::MAX)),
        ("vcpus", request(|r| r.vcpus = 4096)),
        (
            "ready_timeout_seconds",
            request(|r| r.ready_timeout_seconds = u32::MAX),
        ),
    ];
    for (needle, req) in cases {
        let status = match client.create_vm(req).await {
            Err(s) => s,
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => panic!("{needle}: a hostile create was accepted"),
                        Err(s) => break s,
                    }
                }
            }
        };
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{needle}: {status:?}"
        );
        assert!(
            status.message().contains(needle),
            "{needle} not named in {:?}",
            status.message()
        );
    }
    assert_eq!(
        peers.calls(),
        Vec::<String>::new(),
        "a hostile request reached a peer"
    );

    let status = client
        .stop_vm(pb::StopVmRequest {
            name: "box".into(),
            force: false,
            timeout_seconds: u32::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("timeout_seconds"), "{status:?}");
    let status = client
        .start_vm(pb::StartVmRequest {
            name: "box".into(),
            ready_timeout_seconds: u32::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // The same request with sane values goes through to the peers.
    let mut stream = client
        .create_vm(request(|_| {}))
        .await
        .unwrap()
        .into_inner();
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a create of a non-filesystem image succeeded"),
            Err(s) => break s,
        }
    };
    // The fake image is no filesystem, so the create fails later, at the disk.
    assert_ne!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(!peers.calls().is_empty());
}
