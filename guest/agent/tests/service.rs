//! In-process service tests: the real agent service on a temp unix socket,
//! with a recording double instead of the real poweroff.

mod common;

use std::sync::Arc;
use std::time::Duration;

use banger_agent::power::RecordingPower;
use banger_agent::serve::{Listen, bind};
use banger_proto::agent::v1::ShutdownRequest;
use banger_proto::agent::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

async fn start() -> (tempfile::TempDir, Channel, Arc<RecordingPower>) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let power = Arc::new(RecordingPower::default());
    let serving = bind(
        &Listen::Unix(sock.clone()),
        power.clone(),
        std::future::pending(),
    )
    .unwrap();
    tokio::spawn(serving);
    let channel = Endpoint::from_static("http://agent.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(sock)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    (dir, channel, power)
}

#[tokio::test]
async fn ping_answers() {
    let (_dir, channel, _) = start().await;
    common::ping(channel).await;
}

#[tokio::test]
async fn exec_contract() {
    let (_dir, channel, _) = start().await;
    common::exec_suite(channel).await;
}

#[tokio::test]
async fn facts_describe_this_machine() {
    let (_dir, channel, _) = start().await;
    let facts = common::facts(channel).await;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(facts.kernel_release, release.trim());
    assert!(facts.os_release.contains_key("ID"));
}

#[tokio::test]
async fn shutdown_replies_then_powers_off() {
    let (_dir, channel, power) = start().await;
    let mut client = AgentClient::new(channel);
    client
        .shutdown(ShutdownRequest { reboot: true })
        .await
        .unwrap();
    client
        .shutdown(ShutdownRequest { reboot: false })
        .await
        .unwrap();
    // The power action runs after the reply; wait for it (bounded).
    for _ in 0..100 {
        if power.calls.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut calls = power.calls.lock().unwrap().clone();
    calls.sort();
    assert_eq!(calls, vec![false, true]);
}

/// WaitListening waits for a socket that starts listening late, answers
/// `false` when nothing listens in time, and refuses port 0.
#[tokio::test]
async fn wait_listening_sees_a_late_listener() {
    use banger_proto::agent::v1::WaitListeningRequest;
    let (_dir, channel, _) = start().await;
    let mut client = AgentClient::new(channel);
    // A free port, then nothing on it for 600 ms.
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let none = client
        .wait_listening(WaitListeningRequest {
            port: u32::from(port),
            timeout_ms: 300,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!none.listening, "{none:?}");
    assert!(none.waited_seconds >= 0.3, "{none:?}");
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        std::net::TcpListener::bind(("0.0.0.0", port)).unwrap()
    });
    let seen = client
        .wait_listening(WaitListeningRequest {
            port: u32::from(port),
            timeout_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(seen.listening, "{seen:?}");
    assert_eq!(seen.address, format!("0.0.0.0:{port}"));
    assert!(
        seen.waited_seconds >= 0.5,
        "answered before the listener: {seen:?}"
    );
    drop(late.await.unwrap());
    let bad = client
        .wait_listening(WaitListeningRequest {
            port: 0,
            timeout_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}
