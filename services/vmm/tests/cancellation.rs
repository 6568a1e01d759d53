//! In-process service tier: the one rule for a client that goes away
//! (proto/README.md, "Long operations and cancellation"), over the vmm's
//! test doubles served on a real socket. A create is work only its caller
//! wanted: it is rolled back and its hypervisor killed. A preparation is
//! shared: it finishes for the next VM of the image.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use banger_proto::rpc::progress::{LongEvent, Step};
use banger_proto::vmm::v1 as pb;
use banger_vmm::error::Error;
use banger_vmm::manager::NoProgress;
use banger_vmm::testing::{self, Doubles};

/// A real ed25519 public key line.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9gQtxjDPmHJhap51lRxwAqkw/Ne2kdxvQmZb3iW/UI me@host";

fn create_request(name: &str) -> pb::CreateVmRequest {
    pb::CreateVmRequest {
        name: name.into(),
        image: "img".into(),
        ssh_authorized_keys: vec![KEY.into()],
        ready_timeout_seconds: 120,
        ..Default::default()
    }
}

/// Reads `stream` until an update of `phase`.
async fn until_phase(stream: &mut tonic::Streaming<pb::CreateVmEvent>, phase: &str) {
    loop {
        let event = stream
            .message()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("the create ended before {phase}"));
        match event.into_step() {
            Some(Step::Update(p)) if p.phase == phase => return,
            Some(Step::Done(vm)) => panic!("the create finished before {phase}: {vm:?}"),
            _ => {}
        }
    }
}

/// Polls `cond` until it holds, for at most `within`.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_client_goes_away_is_rolled_back_and_its_hypervisor_killed() {
    // The agent never answers: the create waits for readiness until told
    // its caller left.
    let t = Doubles::with_agent(false);
    let (mut client, _stop, _server) = common::serve(t.dir.path(), t.mgr.clone()).await;
    let mut stream = client
        .create_vm(create_request("a"))
        .await
        .unwrap()
        .into_inner();
    until_phase(&mut stream, "waiting").await;
    let pid = t.mgr.get("a").unwrap().vm.pid.expect("a hypervisor runs");
    assert!(banger_proto::host::pid_alive(pid));

    drop(stream); // the client goes away (Ctrl-C)
    // Well before the double's hypervisor ends by itself (after 30 s, which
    // would roll the create back too).
    eventually("the VM is rolled back", Duration::from_secs(15), || {
        matches!(t.mgr.get("a"), Err(Error::NotFound { .. }))
    })
    .await;
    assert!(
        !banger_proto::host::pid_alive(pid),
        "the hypervisor of a cancelled create is killed"
    );
    assert_eq!(
        t.peers.unreleased(),
        Vec::<&str>::new(),
        "{:?}",
        t.peers.calls()
    );
    assert!(
        !t.guest.calls().is_empty(),
        "the create did wait for the agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_left_during_its_preparation_rolls_back_and_the_preparation_finishes() {
    let t = Doubles::unprepared(false);
    let (mut client, _stop, _server) = common::serve(t.dir.path(), t.mgr.clone()).await;
    let mut stream = client
        .create_vm(create_request("a"))
        .await
        .unwrap()
        .into_inner();
    until_phase(&mut stream, "preparing").await;
    drop(stream);
    eventually("the VM is rolled back", Duration::from_secs(15), || {
        matches!(t.mgr.get("a"), Err(Error::NotFound { .. }))
    })
    .await;
    // The preparation is shared: it finishes without the create…
    eventually("the preparation is kept", Duration::from_secs(60), || {
        !t.mgr.prepared_images().0.is_empty()
    })
    .await;
    assert_eq!(
        t.peers.unreleased(),
        Vec::<&str>::new(),
        "{:?}",
        t.peers.calls()
    );
    // …and the next VM of the image only copies it.
    t.mgr
        .create(testing::spec("b", "img"), &NoProgress)
        .await
        .unwrap();
    assert_eq!(t.hypervisor.preparations.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_image_whose_client_goes_away_still_finishes() {
    let t = Doubles::unprepared(false);
    let (mut client, _stop, _server) = common::serve(t.dir.path(), t.mgr.clone()).await;
    let mut stream = client
        .prepare_image(pb::PrepareImageRequest {
            image: "img".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.into_step(), Some(Step::Update(_))));
    drop(stream);
    eventually("the preparation is kept", Duration::from_secs(60), || {
        !t.mgr.prepared_images().0.is_empty()
    })
    .await;
    eventually(
        "the preparation's holds are released",
        Duration::from_secs(60),
        || t.peers.unreleased().is_empty(),
    )
    .await;
}
