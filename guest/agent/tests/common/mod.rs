//! The agent behaviour suite, run over any transport: an in-process unix
//! socket (service.rs) and a real QEMU guest through hybrid vsock (qemu.rs).

#![allow(dead_code)]

use banger_proto::agent::v1::agent_client::AgentClient;
use banger_proto::agent::v1::exec_request::Part as In;
use banger_proto::agent::v1::exec_response::Part as Out;
use banger_proto::agent::v1::exit_status::Status as Exit;
use banger_proto::agent::v1::*;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// What one Exec produced.
#[derive(Debug, Default)]
pub struct Ran {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<ExitStatus>,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        match self.exit.as_ref()?.status? {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        }
    }
    pub fn signal(&self) -> Option<i32> {
        match self.exit.as_ref()?.status? {
            Exit::Signal(s) => Some(s),
            Exit::Code(_) => None,
        }
    }
}

/// Runs `start`, sending `stdin` chunks then closing stdin.
pub async fn exec(channel: Channel, start: ExecStart, stdin: Vec<Vec<u8>>) -> Ran {
    let (tx, rx) = mpsc::channel(8);
    tx.send(ExecRequest {
        part: Some(In::Start(start)),
    })
    .await
    .unwrap();
    tokio::spawn(async move {
        for chunk in stdin {
            if tx
                .send(ExecRequest {
                    part: Some(In::Stdin(chunk)),
                })
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx
            .send(ExecRequest {
                part: Some(In::StdinClose(true)),
            })
            .await;
    });
    let mut client = AgentClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut stream = client
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("Exec accepted")
        .into_inner();
    let mut ran = Ran::default();
    while let Some(msg) = stream.message().await.expect("Exec stream") {
        match msg.part.expect("part set") {
            Out::Stdout(b) => ran.stdout.extend_from_slice(&b),
            Out::Stderr(b) => ran.stderr.extend_from_slice(&b),
            Out::Exit(e) => {
                assert!(ran.exit.is_none(), "one exit only");
                ran.exit = Some(e);
            }
        }
    }
    assert!(ran.exit.is_some(), "Exec stream ended without exit");
    ran
}

pub fn sh(script: &str) -> ExecStart {
    ExecStart {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Ping answers with a version, an uptime and a boot id.
pub async fn ping(channel: Channel) -> PingResponse {
    let pong = AgentClient::new(channel)
        .ping(PingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pong.version, banger_proto::VERSION);
    assert!(pong.uptime_seconds > 0.0);
    assert_eq!(
        pong.boot_id.len(),
        36,
        "boot id is a uuid: {:?}",
        pong.boot_id
    );
    pong
}

/// The whole Exec contract.
pub async fn exec_suite(channel: Channel) {
    // Round trip with both streams, env and cwd.
    let mut start = sh("echo \"out $FOO $(pwd)\"; echo err >&2");
    start.env.insert("FOO".into(), "bar".into());
    start.cwd = "/tmp".into();
    let ran = exec(channel.clone(), start, vec![]).await;
    assert_eq!(ran.stdout, b"out bar /tmp\n");
    assert_eq!(ran.stderr, b"err\n");
    assert_eq!(ran.code(), Some(0));

    // Exit codes.
    for code in [1, 42, 255] {
        let ran = exec(channel.clone(), sh(&format!("exit {code}")), vec![]).await;
        assert_eq!(ran.code(), Some(code));
        assert!(!ran.exit.as_ref().unwrap().timed_out);
    }

    // Signals.
    let ran = exec(channel.clone(), sh("kill -TERM $$"), vec![]).await;
    assert_eq!(ran.signal(), Some(15));

    // 8 MiB of output arrives intact (a byte pattern, not just a count).
    // The pattern is doubled to ~88 KB first so only ~100 `cat`s run: cheap
    // even in a TCG guest.
    let ran = exec(
        channel.clone(),
        sh(
            "i=0; while [ $i -lt 256 ]; do printf %d $i; i=$((i+1)); done > /tmp/p; \
            for _ in 1 2 3 4 5 6 7; do cat /tmp/p /tmp/p > /tmp/q; mv /tmp/q /tmp/p; done; \
            while cat /tmp/p; do :; done | head -c 8388608",
        ),
        vec![],
    )
    .await;
    assert_eq!(
        ran.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(ran.stdout.len(), 8 << 20);
    let mut pattern = Vec::new();
    for i in 0..256 {
        pattern.extend_from_slice(i.to_string().as_bytes());
    }
    for (i, chunk) in ran.stdout.chunks(pattern.len()).enumerate() {
        assert_eq!(chunk, &pattern[..chunk.len()], "chunk {i} differs");
    }

    // Stdin, in several messages, echoed back and counted.
    let mut start = sh("wc -c; echo end");
    start.stdin = true;
    let ran = exec(
        channel.clone(),
        start,
        vec![vec![b'x'; 100_000], vec![b'y'; 5]],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), "100005\nend");

    // Timeout kills the process group and says so.
    let mut start = sh("sleep 1000 & sleep 1000");
    start.timeout_seconds = 1;
    let ran = exec(channel.clone(), start, vec![]).await;
    let exit = ran.exit.as_ref().unwrap();
    assert!(exit.timed_out);
    assert_eq!(ran.signal(), Some(9));

    // Two concurrent execs: each one waits for the other, so they can only
    // both finish if they really run at the same time.
    let a = sh("touch /tmp/a-ready; while [ ! -e /tmp/b-ready ]; do sleep 1; done; echo a");
    let b = sh("touch /tmp/b-ready; while [ ! -e /tmp/a-ready ]; do sleep 1; done; echo b");
    let _ = exec(
        channel.clone(),
        sh("rm -f /tmp/a-ready /tmp/b-ready"),
        vec![],
    )
    .await;
    let (ra, rb) = tokio::join!(
        exec(channel.clone(), a, vec![]),
        exec(channel.clone(), b, vec![])
    );
    assert_eq!(ra.stdout, b"a\n");
    assert_eq!(rb.stdout, b"b\n");

    // A missing program is NOT_FOUND, not a hang.
    let (tx, rx) = mpsc::channel(1);
    tx.send(ExecRequest {
        part: Some(In::Start(ExecStart {
            argv: vec!["/no/such/program".into()],
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let status = AgentClient::new(channel.clone())
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
}

/// Facts report the kernel and an init system.
pub async fn facts(channel: Channel) -> FactsResponse {
    let facts = AgentClient::new(channel)
        .facts(FactsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!facts.kernel_release.is_empty());
    assert!(["systemd", "openrc", "other"].contains(&facts.init_system.as_str()));
    facts
}
