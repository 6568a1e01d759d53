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

/// Readiness for an image with the agent and sshd comes from inside the
/// guest: a stand-in sshd (busybox `nc`) that starts listening 8 s after
/// the agent answers. Create must not return before it listens (the
/// first connection from the host succeeds at once), and the host must
/// not have probed port 22 itself (the stand-in logs every connection on
/// the console: exactly one, ours).
#[test]
fn readiness_waits_inside_the_guest_for_a_late_sshd() {
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
            .block_on(late_sshd(kernel, agent));
    });
}

async fn late_sshd(kernel: PathBuf, agent: PathBuf) {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    sh(
        "ip tuntap add dev bglate0 mode tap && ip addr add 10.99.0.1/24 dev bglate0 \
        && ip link set bglate0 up",
    );
    let fake_sshd = dir.path().join("fake-sshd");
    std::fs::write(
        &fake_sshd,
        "#!/bin/sh\necho FAKE-SSHD-CONNECTION > /dev/console\necho SSH-2.0-banger-late-test\n",
    )
    .unwrap();
    let image = common::busybox_ext4_with(
        dir.path(),
        &[
            ("bin/banger-agent", agent.as_path()),
            ("bin/fake-sshd", fake_sshd.as_path()),
        ],
        "/bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         /bin/banger-agent &\n\
         (sleep 8; echo FAKE-SSHD-LISTENING > /dev/console; nc -ll -p 22 -e /bin/fake-sshd) &\n\
         while true; do /bin/busybox sleep 3600; done",
    );
    let peers = Arc::new(
        RecordingPeers::new(image, kernel, "bglate0")
            .with_agent()
            .with_ssh_server(),
    );
    let mgr = manager(dir.path(), peers.clone());
    let (mut client, stop_tx, server) = common::serve(dir.path(), mgr).await;

    let (phases, vm) = create(&mut client, "latessh", "generic-6.12")
        .await
        .unwrap();
    println!("TIMING late-sshd create phases: {}", phases.join(", "));
    // At once, one attempt: sshd must be listening now.
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(("10.99.0.5", 22)),
    )
    .await
    .expect("connect timed out")
    .expect("create returned before sshd listened");
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"SSH-");
    drop(stream);
    let ssh = vm.probes.iter().find(|p| p.capability == "ssh").unwrap();
    assert_eq!(ssh.state, "ready", "{ssh:?}");
    assert!(
        ssh.detail.contains("inside the guest"),
        "readiness did not come from the agent: {ssh:?}"
    );
    let text = wait_console(&mut client, "latessh", "FAKE-SSHD-CONNECTION").await;
    assert!(text.contains("FAKE-SSHD-LISTENING"), "{text}");
    // Give a stray probe's log line time to land before counting.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let text = common::console(&mut client, "latessh").await;
    assert_eq!(
        text.matches("FAKE-SSHD-CONNECTION").count(),
        1,
        "the host probed port 22 itself:\n{text}"
    );

    client
        .delete_vm(pb::DeleteVmRequest {
            name: "latessh".into(),
            force: true,
        })
        .await
        .unwrap();
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    sh("ip link del bglate0");
}
