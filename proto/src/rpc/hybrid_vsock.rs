//! Dialing a guest's vsock port from the host through "hybrid vsock".
//!
//! Firecracker, and rust-vmm's `vhost-device-vsock` under QEMU, expose a
//! VM's vsock device to the host as one unix socket. The host connects it,
//! writes `CONNECT <port>\n` and reads one line: `OK <n>\n` (Firecracker puts
//! its own host-side port after `OK `, vhost-device-vsock the guest port, so
//! only the prefix is checked); after that the socket is a plain byte stream
//! to whatever listens on `<port>` in the guest. When nothing listens yet,
//! the hypervisor simply closes the socket: "retry until OK" is therefore
//! the readiness probe of a booting guest ([`wait_ready`]).
//!
//! [`connect`] turns that into a tonic [`Channel`]; every (re)connect of the
//! channel repeats the handshake.
//!
//! ```no_run
//! # async fn boot(uds: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use banger_proto::agent::v1::agent_client::AgentClient;
//! use banger_proto::rpc::hybrid_vsock::{self, AGENT_PORT};
//! // Readiness: retries while the guest boots.
//! let pong = hybrid_vsock::wait_ready(uds, AGENT_PORT, Duration::from_secs(120)).await?;
//! let channel = hybrid_vsock::connect(uds, AGENT_PORT, Duration::from_secs(5)).await?;
//! let mut agent = AgentClient::new(channel);
//! # let _ = (pong, &mut agent);
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::agent::v1::PingResponse;
use crate::agent::v1::agent_client::AgentClient;

/// The AF_VSOCK port `banger-agent` listens on inside every guest.
pub const AGENT_PORT: u32 = 10789;

/// The longest handshake reply we accept (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 64;

/// Errors of dialing a guest through its hybrid-vsock socket.
#[derive(Debug, thiserror::Error)]
pub enum HybridVsockError {
    /// The unix socket could not be connected or the handshake I/O failed.
    #[error(
        "cannot reach the VM's vsock socket {path}: {source}; is the VM (and, under QEMU, its vhost-device-vsock) running?"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The hypervisor closed the socket without `OK`: nothing listens on the port (yet).
    #[error(
        "nothing listens on vsock port {port} in the VM behind {path} (yet); wait for the guest to boot, or check that banger-agent runs in it"
    )]
    NoListener { path: PathBuf, port: u32 },
    /// The hypervisor answered something other than `OK …`.
    #[error(
        "unexpected hybrid-vsock reply {reply:?} on {path}; is this a Firecracker or vhost-device-vsock socket?"
    )]
    BadReply { path: PathBuf, reply: String },
    /// Connecting or the handshake took longer than the timeout.
    #[error("connecting to vsock port {port} through {path} timed out after {timeout:?}")]
    Timeout {
        path: PathBuf,
        port: u32,
        timeout: Duration,
    },
    /// The gRPC connection over the established stream failed.
    #[error("gRPC connection to vsock port {port} through {path} failed: {source}")]
    Transport {
        path: PathBuf,
        port: u32,
        source: tonic::transport::Error,
    },
    /// The agent did not answer Ping before the deadline.
    #[error(
        "the guest agent behind {path} did not answer within {deadline:?} (last error: {last}); look at the VM's console log"
    )]
    NotReady {
        path: PathBuf,
        deadline: Duration,
        last: String,
    },
}

impl super::GrpcError for HybridVsockError {
    fn grpc_code(&self) -> tonic::Code {
        match self {
            HybridVsockError::Io { .. }
            | HybridVsockError::NoListener { .. }
            | HybridVsockError::Transport { .. } => tonic::Code::Unavailable,
            HybridVsockError::BadReply { .. } => tonic::Code::Internal,
            HybridVsockError::Timeout { .. } | HybridVsockError::NotReady { .. } => {
                tonic::Code::DeadlineExceeded
            }
        }
    }
}

impl From<HybridVsockError> for tonic::Status {
    fn from(err: HybridVsockError) -> Self {
        super::to_status(&err)
    }
}

/// Connects `uds` and performs the `CONNECT <port>` handshake; on success
/// the returned stream talks to the guest's listener on `port`.
pub async fn handshake(uds: &Path, port: u32) -> Result<UnixStream, HybridVsockError> {
    let io = |source| HybridVsockError::Io {
        path: uds.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(uds).await.map_err(io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io)?;
    // Read byte by byte: anything after the newline already belongs to the
    // guest's byte stream and must not be swallowed by a buffer.
    let mut reply = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = match stream.read(&mut byte).await {
            Ok(n) => n,
            // A closing hypervisor may reset instead of sending EOF.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            return Err(if reply.is_empty() {
                HybridVsockError::NoListener {
                    path: uds.to_path_buf(),
                    port,
                }
            } else {
                bad_reply(uds, &reply)
            });
        }
        if byte[0] == b'\n' {
            break;
        }
        reply.push(byte[0]);
        if reply.len() > MAX_REPLY {
            return Err(bad_reply(uds, &reply));
        }
    }
    if !reply.starts_with(b"OK ") {
        return Err(bad_reply(uds, &reply));
    }
    Ok(stream)
}

fn bad_reply(uds: &Path, reply: &[u8]) -> HybridVsockError {
    HybridVsockError::BadReply {
        path: uds.to_path_buf(),
        reply: String::from_utf8_lossy(reply).into_owned(),
    }
}

/// A tonic channel to the guest's vsock `port` through the hybrid-vsock
/// socket `uds`. Connects now (handshake included) and fails if that takes
/// longer than `timeout`; later reconnects of the channel repeat the
/// handshake.
#[tracing::instrument(skip_all, fields(uds = %uds.display(), port))]
pub async fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<Channel, HybridVsockError> {
    let path = uds.to_path_buf();
    // The URI is never dialed: the connector below ignores it.
    let endpoint = Endpoint::from_static("http://guest.invalid").connect_timeout(timeout);
    let connector = service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            handshake(&path, port)
                .await
                .map(TokioIo::new)
                .map_err(|e| std::io::Error::other(e.to_string()))
        }
    });
    // Run the first handshake ourselves so callers get a precise error
    // (no listener / bad reply) instead of a generic transport error.
    let first = tokio::time::timeout(timeout, handshake(uds, port))
        .await
        .map_err(|_| HybridVsockError::Timeout {
            path: uds.to_path_buf(),
            port,
            timeout,
        })??;
    let mut first = Some(first);
    let path = uds.to_path_buf();
    let connector = service_fn(move |uri: Uri| {
        let pre = first.take();
        let mut connector = connector.clone();
        async move {
            match pre {
                Some(stream) => Ok(TokioIo::new(stream)),
                None => tower::Service::call(&mut connector, uri).await,
            }
        }
    });
    tokio::time::timeout(timeout, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| HybridVsockError::Timeout {
            path: path.clone(),
            port,
            timeout,
        })?
        .map_err(|source| HybridVsockError::Transport { path, port, source })
}

/// Waits until the agent on `port` behind `uds` answers Ping, retrying with
/// a short backoff (50 ms doubling to 500 ms) while the guest boots; gives up
/// after `deadline`. Returns the agent's answer; dial with [`connect`] for
/// further calls.
#[tracing::instrument(skip_all, fields(uds = %uds.display(), port))]
pub async fn wait_ready(
    uds: &Path,
    port: u32,
    deadline: Duration,
) -> Result<PingResponse, HybridVsockError> {
    let start = tokio::time::Instant::now();
    let end = start + deadline;
    let mut backoff = Duration::from_millis(50);
    let mut last = String::from("no attempt made");
    // How the attempts ended, for the error: a guest still booting closes
    // them at once; a vsock path that takes requests and never answers
    // (a wedged hypervisor or vhost-device-vsock) lets them time out.
    let (mut closed, mut silent, mut other) = (0u32, 0u32, 0u32);
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            let attempts = closed + silent + other;
            return Err(HybridVsockError::NotReady {
                path: uds.to_path_buf(),
                deadline,
                last: format!(
                    "{last}; of {attempts} attempts, {closed} were closed at once (nothing listening yet), \
                     {silent} got no answer in time, {other} failed otherwise"
                ),
            });
        }
        // Each attempt gets at most 5 s so a wedged connection cannot eat
        // the whole deadline.
        let attempt = (end - now).min(Duration::from_secs(5));
        match tokio::time::timeout(attempt, ping_once(uds, port, attempt)).await {
            Ok(Ok(ready)) => {
                tracing::debug!(elapsed = ?start.elapsed(), "guest agent ready");
                return Ok(ready);
            }
            Ok(Err(Attempt::Closed(e))) => {
                closed += 1;
                last = e;
            }
            Ok(Err(Attempt::Silent(e))) => {
                silent += 1;
                last = e;
            }
            Ok(Err(Attempt::Failed(e))) => {
                other += 1;
                last = e;
            }
            Err(_) => {
                silent += 1;
                last = format!("attempt timed out after {attempt:?}");
            }
        }
        tokio::time::sleep(backoff.min(end.saturating_duration_since(tokio::time::Instant::now())))
            .await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// How one readiness attempt failed (its message inside).
enum Attempt {
    /// The hypervisor closed the socket: nothing listens yet.
    Closed(String),
    /// No answer before the attempt's timeout.
    Silent(String),
    Failed(String),
}

async fn ping_once(uds: &Path, port: u32, timeout: Duration) -> Result<PingResponse, Attempt> {
    let channel = connect(uds, port, timeout).await.map_err(|e| match e {
        HybridVsockError::NoListener { .. } => Attempt::Closed(e.to_string()),
        HybridVsockError::Timeout { .. } => Attempt::Silent(e.to_string()),
        e => Attempt::Failed(e.to_string()),
    })?;
    let answer = AgentClient::new(channel)
        .ping(crate::agent::v1::PingRequest {})
        .await
        .map_err(|s| Attempt::Failed(format!("Ping failed: {}", s.message())))?;
    Ok(answer.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::v1::agent_server::{Agent, AgentServer};
    use crate::agent::v1::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::UnixListener;
    use tokio::sync::mpsc;

    /// Answers Ping only; enough to prove the transport.
    struct PingOnly;

    #[tonic::async_trait]
    impl Agent for PingOnly {
        async fn ping(
            &self,
            _: tonic::Request<PingRequest>,
        ) -> Result<tonic::Response<PingResponse>, tonic::Status> {
            Ok(tonic::Response::new(PingResponse {
                version: "fake".into(),
                uptime_seconds: 1.5,
                boot_id: "boot".into(),
            }))
        }
        type ExecStream = tokio_stream::Empty<Result<ExecResponse, tonic::Status>>;
        async fn exec(
            &self,
            _: tonic::Request<tonic::Streaming<ExecRequest>>,
        ) -> Result<tonic::Response<Self::ExecStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn shutdown(
            &self,
            _: tonic::Request<ShutdownRequest>,
        ) -> Result<tonic::Response<ShutdownResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn facts(
            &self,
            _: tonic::Request<FactsRequest>,
        ) -> Result<tonic::Response<FactsResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
        async fn wait_listening(
            &self,
            _: tonic::Request<WaitListeningRequest>,
        ) -> Result<tonic::Response<WaitListeningResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
    }

    /// A fake hybrid-vsock socket: closes the first `refuse` connections
    /// (guest still booting), then answers `CONNECT <port>` with `reply`
    /// and serves the agent over the stream; other ports are closed.
    async fn fake_hybrid(
        dir: &Path,
        port: u32,
        refuse: usize,
        reply: &'static str,
    ) -> (PathBuf, Arc<AtomicUsize>) {
        let uds = dir.join("vsock.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        let (tx, rx) = mpsc::channel::<Result<UnixStream, std::io::Error>>(4);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(PingOnly))
                .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
        );
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while stream.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                if n < refuse || line != format!("CONNECT {port}").into_bytes() {
                    continue; // drop = close, like Firecracker with no listener
                }
                stream.write_all(reply.as_bytes()).await.unwrap();
                tx.send(Ok(stream)).await.unwrap();
            }
        });
        (uds, seen)
    }

    #[tokio::test]
    async fn connect_performs_handshake_and_serves_grpc() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, _) = fake_hybrid(dir.path(), AGENT_PORT, 0, "OK 1073741824\n").await;
        let channel = connect(&uds, AGENT_PORT, Duration::from_secs(5))
            .await
            .unwrap();
        let pong = AgentClient::new(channel)
            .ping(PingRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pong.version, "fake");
        assert_eq!(pong.boot_id, "boot");
    }

    #[tokio::test]
    async fn no_listener_is_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, _) = fake_hybrid(dir.path(), AGENT_PORT, 0, "OK 1\n").await;
        let err = connect(&uds, 1234, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, HybridVsockError::NoListener { port: 1234, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn reply_without_ok_prefix_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, _) = fake_hybrid(dir.path(), AGENT_PORT, 0, "NO 1\n").await;
        let err = connect(&uds, AGENT_PORT, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HybridVsockError::BadReply { reply, .. } if reply == "NO 1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn missing_socket_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect(
            &dir.path().join("absent"),
            AGENT_PORT,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HybridVsockError::Io { .. }), "{err}");
    }

    #[tokio::test]
    async fn wait_ready_retries_while_the_guest_boots() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, seen) = fake_hybrid(dir.path(), AGENT_PORT, 3, "OK 10789\n").await;
        let pong = wait_ready(&uds, AGENT_PORT, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(pong.version, "fake");
        assert_eq!(seen.load(Ordering::SeqCst), 4, "three refusals, then OK");
    }

    #[tokio::test]
    async fn a_vsock_that_takes_requests_and_never_answers_is_named_so() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        // Accepts every CONNECT and holds it, answering nothing.
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let err = wait_ready(&uds, AGENT_PORT, Duration::from_secs(2))
            .await
            .unwrap_err();
        held.abort();
        match err {
            HybridVsockError::NotReady { last, .. } => {
                assert!(last.contains(" 0 were closed at once"), "{last}");
                assert!(!last.contains(" 0 got no answer in time"), "{last}");
            }
            other => panic!("expected NotReady, got {other}"),
        }
    }

    #[tokio::test]
    async fn wait_ready_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let (uds, _) = fake_hybrid(dir.path(), AGENT_PORT, usize::MAX, "OK 1\n").await;
        let err = wait_ready(&uds, AGENT_PORT, Duration::from_secs(2))
            .await
            .unwrap_err();
        match err {
            HybridVsockError::NotReady { last, .. } => {
                assert!(last.contains("nothing listens"), "{last}");
                assert!(last.contains(" 0 got no answer in time"), "{last}");
            }
            other => panic!("expected NotReady, got {other}"),
        }
    }
}
