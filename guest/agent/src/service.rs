//! The tonic adapter: `banger.agent.v1.Agent` ↔ the domain modules.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use banger_proto::agent::v1 as pb;
use banger_proto::agent::v1::agent_server::{Agent, AgentServer};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::AgentError;
use crate::exec::{self, ExecSpec, Input, Output, Termination};
use crate::power::Power;
use crate::system;

/// How long Shutdown waits after answering before acting, so the reply
/// leaves the guest before the network stack (or the whole VM) goes away.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

/// How often WaitListening rereads the socket tables: reading two small
/// /proc files costs far less than the host's TCP probe it replaces.
const LISTEN_POLL: Duration = Duration::from_millis(50);

/// The agent service.
pub struct AgentService {
    power: Arc<dyn Power>,
    /// Root of the filesystem facts are read from (`/` in production).
    root: PathBuf,
}

impl AgentService {
    /// A service acting through `power`.
    pub fn new(power: Arc<dyn Power>) -> Self {
        AgentService {
            power,
            root: PathBuf::from("/"),
        }
    }

    /// The generated server wrapping this service; accepts stdin messages
    /// up to 16 MiB (tonic's default limit is 4 MiB).
    pub fn into_server(self) -> AgentServer<Self> {
        AgentServer::new(self).max_decoding_message_size(16 << 20)
    }
}

fn spec_from(start: pb::ExecStart) -> ExecSpec {
    ExecSpec {
        argv: start.argv,
        env: start.env.into_iter().collect(),
        cwd: (!start.cwd.is_empty()).then(|| PathBuf::from(start.cwd)),
        timeout: (start.timeout_seconds > 0)
            .then(|| Duration::from_secs(u64::from(start.timeout_seconds))),
        stdin: start.stdin,
    }
}

fn output_to_pb(out: Output) -> pb::ExecResponse {
    use pb::exec_response::Part;
    let part = match out {
        Output::Stdout(b) => Part::Stdout(b.to_vec()),
        Output::Stderr(b) => Part::Stderr(b.to_vec()),
        Output::Exit {
            termination,
            timed_out,
        } => Part::Exit(pb::ExitStatus {
            status: Some(match termination {
                Termination::Code(c) => pb::exit_status::Status::Code(c),
                Termination::Signal(s) => pb::exit_status::Status::Signal(s),
            }),
            timed_out,
        }),
    };
    pb::ExecResponse { part: Some(part) }
}

type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    #[tracing::instrument(skip_all)]
    async fn ping(
        &self,
        _: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        let p = system::ping(&self.root);
        Ok(Response::new(pb::PingResponse {
            version: p.version,
            uptime_seconds: p.uptime_seconds,
            boot_id: p.boot_id,
        }))
    }

    type ExecStream = ExecStream;

    #[tracing::instrument(skip_all, fields(argv))]
    async fn exec(
        &self,
        request: Request<Streaming<pb::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        use pb::exec_request::Part;
        let mut incoming = request.into_inner();
        let start = match incoming.message().await? {
            Some(pb::ExecRequest {
                part: Some(Part::Start(start)),
            }) => start,
            _ => return Err(AgentError::NotStarted.into()),
        };
        tracing::Span::current().record("argv", tracing::field::debug(&start.argv));
        let (in_tx, in_rx) = mpsc::channel(16);
        let output = exec::spawn(spec_from(start), in_rx)?;
        // Forward the rest of the request stream to the command's stdin.
        tokio::spawn(async move {
            while let Ok(Some(msg)) = incoming.message().await {
                let input = match msg.part {
                    Some(Part::Stdin(bytes)) => Input::Data(bytes.into()),
                    Some(Part::StdinClose(true)) => Input::Close,
                    Some(Part::StdinClose(false)) | None => continue,
                    Some(Part::Start(_)) => {
                        tracing::warn!("ignoring a second ExecStart");
                        continue;
                    }
                };
                if in_tx.send(input).await.is_err() {
                    break;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(output);
        let stream = tokio_stream::StreamExt::map(stream, |o| Ok(output_to_pb(o)));
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, fields(reboot = request.get_ref().reboot))]
    async fn shutdown(
        &self,
        request: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        let reboot = request.into_inner().reboot;
        let power = self.power.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            let power = power.clone();
            let result = tokio::task::spawn_blocking(move || power.shutdown(reboot)).await;
            if let Ok(Err(e)) = result {
                tracing::error!(error = %e, "shutdown failed");
            }
        });
        Ok(Response::new(pb::ShutdownResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn facts(
        &self,
        _: Request<pb::FactsRequest>,
    ) -> Result<Response<pb::FactsResponse>, Status> {
        let root = self.root.clone();
        let f = tokio::task::spawn_blocking(move || system::facts(&root))
            .await
            .map_err(|e| Status::internal(format!("reading facts panicked: {e}")))?;
        Ok(Response::new(pb::FactsResponse {
            os_release: f.os_release.into_iter().collect(),
            addresses: f.addresses,
            init_system: f.init.as_str().to_owned(),
            hostname: f.hostname,
            kernel_release: f.kernel_release,
        }))
    }

    #[tracing::instrument(skip_all, fields(port = request.get_ref().port))]
    async fn wait_listening(
        &self,
        request: Request<pb::WaitListeningRequest>,
    ) -> Result<Response<pb::WaitListeningResponse>, Status> {
        let req = request.into_inner();
        let port = u16::try_from(req.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(AgentError::BadPort { port: req.port })?;
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(u64::from(req.timeout_ms));
        let address = loop {
            let root = self.root.clone();
            let found = tokio::task::spawn_blocking(move || system::listening(&root, port))
                .await
                .map_err(|e| Status::internal(format!("reading socket tables panicked: {e}")))?;
            if found.is_some() || tokio::time::Instant::now() >= deadline {
                break found;
            }
            tokio::time::sleep(LISTEN_POLL).await;
        };
        Ok(Response::new(pb::WaitListeningResponse {
            listening: address.is_some(),
            address: address.unwrap_or_default(),
            waited_seconds: started.elapsed().as_secs_f64(),
        }))
    }
}
