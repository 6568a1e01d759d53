//! The service binaries speak systemd's protocols for real: socket
//! activation (`LISTEN_FDS`, as `.socket` units pass the 0660 root:banger
//! socket) and `Type=notify` readiness (`READY=1` once serving).

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kernelcat() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_banger"))
        .parent()
        .unwrap()
        .join("banger-kernelcat");
    assert!(
        bin.is_file(),
        "build every binary first (`cargo build --workspace`)"
    );
    bin
}

async fn healthy(socket: &std::path::Path) -> bool {
    let Ok(channel) = banger_proto::rpc::connect(socket).await else {
        return false;
    };
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "banger.kernelcat.v1.KernelCat".into(),
        })
        .await
        .is_ok_and(|r| r.get_ref().status == 1)
}

/// The next notification, received off the runtime so our own client
/// connections keep being driven (and close promptly).
async fn next_state(notify: &UnixDatagram) -> String {
    let notify = notify.try_clone().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn socket_activation_and_readiness_notification() {
    banger_test_support::require_program("/usr/bin/systemd-socket-activate", "systemd");
    let home = tempfile::tempdir().unwrap();
    let activated = home.path().join("activated.sock");
    let notify_path = home.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let mut child = Command::new("/usr/bin/systemd-socket-activate")
        .arg("--listen")
        .arg(&activated)
        // It passes only the variables named with -E to the service.
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(kernelcat())
        .arg("--home")
        .arg(home.path())
        .env_remove("BANGER_HOME")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // systemd-socket-activate starts the service on the first connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !activated.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = tokio::time::timeout(Duration::from_secs(30), healthy(&activated)).await;
    assert!(
        served.unwrap_or(false),
        "not served on the socket systemd passed (is target/debug/banger-kernelcat up to date?)"
    );
    let mut buf = [0u8; 256];
    let n = notify
        .recv(&mut buf)
        .expect("READY=1 sent to NOTIFY_SOCKET");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        !home.path().join("run/kernelcat.sock").exists(),
        "an activated service must not bind its own socket"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(next_state(&notify).await, "STOPPING=1");
    child.wait().unwrap();
    assert!(
        activated.exists(),
        "the activated socket belongs to systemd: not removed"
    );
}
