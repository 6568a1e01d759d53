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
