//! Real tier with the guest agent: a busybox guest running the static
//! `banger-agent` (built by `scripts/build-guest.sh`) under QEMU TCG. The
//! vmm's readiness is the agent's Ping through vhost-device-vsock's
//! hybrid-vsock socket; `Exec` is proxied to the agent with output and the
//! exit code intact; a graceful stop goes through the agent's Shutdown.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use banger_proto::agent::v1 as agent;
use banger_proto::vmm::v1 as pb;
use common::{RecordingPeers, create, manager, sh, wait_console};

/// The guest bundle, built once per test process.
fn agent_binary() -> PathBuf {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let _sweeper = common::ProcessSweeper(dir.path().to_path_buf());
        let out = dir.path().join("guest");
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = std::process::Command::new(repo.join("scripts/build-guest.sh"))
            .arg(&out)
            .status()
            .expect("run scripts/build-guest.sh");
        assert!(status.success(), "scripts/build-guest.sh failed: {status}");
        (dir, out.join("banger-agent"))
    })
    .1
    .clone()
}

#[test]
fn agent_readiness_exec_and_clean_stop() {
    banger_test_support::gate!(Priv, ROOT, QEMU, VHOST_VSOCK, SHARED);
    banger_test_support::require_program("qemu-system-x86_64", "qemu-system-x86");
    banger_test_support::require_program("vhost-device-vsock", "(cargo) vhost-device-vsock");
    let kernel = banger_test_support::fixtures::kernel_vmlinux();
    let agent = agent_binary();
    banger_test_support::netns::in_new_netns(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(kernel, agent));
    });
}

async fn run(kernel: PathBuf, agent: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    sh("ip tuntap add dev bgagent0 mode tap && ip link set bgagent0 up");
    let image = common::busybox_ext4_with(
        dir.path(),
        &[("bin/banger-agent", agent.as_path())],
        "/bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         /bin/banger-agent &\n\
         while true; do /bin/busybox sleep 3600; done",
    );
    let peers = Arc::new(RecordingPeers::new(image, kernel, "bgagent0").with_agent());
    let mgr = manager(dir.path(), peers.clone());
    let (mut client, stop_tx, server) = common::serve(dir.path(), mgr).await;

    let (phases, vm) = create(&mut client, "agentbox", "generic-6.12")
        .await
        .unwrap();
    println!("TIMING agent guest create phases: {}", phases.join(", "));
    assert_eq!(vm.state, pb::VmState::Running as i32);
    let probe = vm.probes.iter().find(|p| p.capability == "agent").unwrap();
    assert_eq!(probe.state, "ready", "{probe:?}");

    // Exec through the vmm: stdout, stderr and the exit code come back.
    let start = pb::ExecRequest {
        vm: "agentbox".into(),
        request: Some(agent::ExecRequest {
            part: Some(agent::exec_request::Part::Start(agent::ExecStart {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "cat /etc/hostname; echo oops >&2; exit 7".into(),
                ],
                ..Default::default()
            })),
        }),
    };
    let mut out = client
        .exec(futures::stream::iter([start]))
        .await
        .unwrap()
        .into_inner();
    let (mut stdout, mut stderr, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(m) = out.message().await.unwrap() {
        match m.part {
            Some(agent::exec_response::Part::Stdout(b)) => stdout.extend(b),
            Some(agent::exec_response::Part::Stderr(b)) => stderr.extend(b),
            Some(agent::exec_response::Part::Exit(e)) => code = e.status,
            None => {}
        }
    }
    assert_eq!(String::from_utf8_lossy(&stdout), "agentbox\n");
    assert_eq!(String::from_utf8_lossy(&stderr), "oops\n");
    assert_eq!(code, Some(agent::exit_status::Status::Code(7)));

    // WaitReady answers at once for a ready VM.
    let ready = client
        .wait_ready(pb::WaitReadyRequest {
            name: "agentbox".into(),
            timeout_seconds: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ready.vm.unwrap().state, pb::VmState::Running as i32);

    // A graceful stop: the agent powers the guest off (no kill needed).
    let stopped = client
        .stop_vm(pb::StopVmRequest {
            name: "agentbox".into(),
            force: false,
            timeout_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.state, pb::VmState::Stopped as i32);
    wait_console(&mut client, "agentbox", "reboot: Power down").await;

    client
        .delete_vm(pb::DeleteVmRequest {
            name: "agentbox".into(),
            force: false,
        })
        .await
        .unwrap();
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    sh("ip link del bgagent0");
}
