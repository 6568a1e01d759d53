//! One trace across a gRPC hop: client → A → B share a trace id, and B
//! receives A's server span as the `traceparent` parent.
//!
//! Its own test binary because it installs a global subscriber.

use std::path::Path;
use std::sync::{Arc, Mutex};

use banger_proto::agent::v1::agent_client::AgentClient;
use banger_proto::agent::v1::agent_server::{Agent, AgentServer};
use banger_proto::agent::v1::{
    ExecRequest, ExecResponse, FactsRequest, FactsResponse, PingRequest, PingResponse,
    ShutdownRequest, ShutdownResponse, WaitListeningRequest, WaitListeningResponse,
};
use banger_proto::rpc::{self, BoundSocket, ServeOptions};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use tonic::codegen::BoxStream;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// A forwards Ping to B (if `next` is set); B records the traceparent it got.
struct Hop {
    next: Option<std::path::PathBuf>,
    seen: Arc<Mutex<Option<String>>>,
}

#[tonic::async_trait]
impl Agent for Hop {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let header = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *self.seen.lock().unwrap() = header;
        if let Some(next) = &self.next {
            let channel = rpc::connect(next)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            AgentClient::new(channel).ping(PingRequest {}).await?;
        }
        Ok(Response::new(PingResponse::default()))
    }

    type ExecStream = BoxStream<ExecResponse>;

    async fn exec(
        &self,
        _: Request<Streaming<ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Err(Status::unimplemented("exec"))
    }

    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        Err(Status::unimplemented("shutdown"))
    }

    async fn facts(&self, _: Request<FactsRequest>) -> Result<Response<FactsResponse>, Status> {
        Err(Status::unimplemented("facts"))
    }

    async fn wait_listening(
        &self,
        _: Request<WaitListeningRequest>,
    ) -> Result<Response<WaitListeningResponse>, Status> {
        Err(Status::unimplemented("wait_listening"))
    }
}

async fn serve(socket: &Path, hop: Hop) {
    let bound = BoundSocket::bind(ServeOptions {
        socket: socket.to_path_buf(),
        socket_group: None,
        pid_file: None,
        name: "banger-test".into(),
        services: vec![],
    })
    .await
    .unwrap();
    tokio::spawn(bound.serve(
        Routes::new(AgentServer::new(hop)),
        std::future::pending::<()>(),
    ));
}

fn trace_id(traceparent: &str) -> &str {
    // version-traceid-spanid-flags
    traceparent
        .split('-')
        .nth(1)
        .expect("traceparent has a trace id")
}

fn span_id(traceparent: &str) -> &str {
    traceparent
        .split('-')
        .nth(2)
        .expect("traceparent has a span id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_crosses_every_hop() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let a_sock = dir.path().join("a.sock");
    let b_sock = dir.path().join("b.sock");
    let seen_a = Arc::new(Mutex::new(None));
    let seen_b = Arc::new(Mutex::new(None));
    serve(
        &b_sock,
        Hop {
            next: None,
            seen: seen_b.clone(),
        },
    )
    .await;
    serve(
        &a_sock,
        Hop {
            next: Some(b_sock.clone()),
            seen: seen_a.clone(),
        },
    )
    .await;

    let root = tracing::info_span!("client-root");
    let root_trace_id = root.context().span().span_context().trace_id().to_string();
    async {
        let channel = rpc::connect(&a_sock).await.unwrap();
        AgentClient::new(channel)
            .ping(PingRequest {})
            .await
            .unwrap();
    }
    .instrument(root)
    .await;

    let at_a = seen_a.lock().unwrap().clone().expect("A got a traceparent");
    let at_b = seen_b.lock().unwrap().clone().expect("B got a traceparent");
    assert_eq!(trace_id(&at_a), root_trace_id, "client → A keeps the trace");
    assert_eq!(trace_id(&at_b), root_trace_id, "A → B keeps the trace");
    assert_ne!(
        span_id(&at_a),
        span_id(&at_b),
        "B's parent is A's server span, not the client's"
    );
}
