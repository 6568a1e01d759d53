//! The shared RPC runtime, served and dialed for real on temp unix sockets.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::agent::v1::agent_client::AgentClient;
use banger_proto::agent::v1::agent_server::{Agent, AgentServer};
use banger_proto::agent::v1::{
    ExecRequest, ExecResponse, FactsRequest, FactsResponse, PingRequest, PingResponse,
    ShutdownRequest, ShutdownResponse, WaitListeningRequest, WaitListeningResponse,
};
use banger_proto::rpc::{self, BoundSocket, RuntimeError, ServeOptions};
use banger_proto::runtime::v1::GetInfoRequest;
use banger_proto::runtime::v1::info_client::InfoClient;
use tokio::sync::oneshot;
use tonic::codegen::BoxStream;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

/// Answers Ping with the caller's peer credentials, after an optional delay
/// (to have a call in flight during shutdown).
struct PeerEcho {
    delay: Duration,
}

#[tonic::async_trait]
impl Agent for PeerEcho {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let peer = rpc::peer(&request).ok_or_else(|| Status::internal("no peer credentials"))?;
        tokio::time::sleep(self.delay).await;
        Ok(Response::new(PingResponse {
            version: format!("{}:{}:{}", peer.uid, peer.gid, peer.pid.unwrap_or(-1)),
            uptime_seconds: 0.0,
            boot_id: String::new(),
        }))
    }

    type ExecStream = BoxStream<ExecResponse>;

    async fn exec(
        &self,
        _: Request<Streaming<ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Err(rpc::status::unimplemented("exec"))
    }

    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        Err(rpc::status::unimplemented("shutdown"))
    }

    async fn facts(&self, _: Request<FactsRequest>) -> Result<Response<FactsResponse>, Status> {
        Err(rpc::status::unimplemented("facts"))
    }

    async fn wait_listening(
        &self,
        _: Request<WaitListeningRequest>,
    ) -> Result<Response<WaitListeningResponse>, Status> {
        Err(rpc::status::unimplemented("wait_listening"))
    }
}

struct Server {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), RuntimeError>>,
}

impl Server {
    async fn start(dir: &Path, delay: Duration) -> Server {
        let socket = dir.join("test.sock");
        let bound = BoundSocket::bind(ServeOptions {
            socket: socket.clone(),
            socket_group: None,
            pid_file: Some(dir.join("test.pid")),
            name: "banger-test".into(),
            services: vec!["banger.agent.v1.Agent".into()],
        })
        .await
        .expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(
            Routes::new(AgentServer::new(PeerEcho { delay })),
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            socket,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> Result<(), RuntimeError> {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.expect("server task")
    }
}

#[tokio::test]
async fn serve_and_connect_with_peer_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Duration::ZERO).await;

    let mode = std::fs::metadata(&server.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode");
    let pid_file = std::fs::read_to_string(dir.path().join("test.pid")).unwrap();
    assert_eq!(pid_file.trim(), std::process::id().to_string());

    let channel = rpc::connect(&server.socket).await.unwrap();
    let reply = AgentClient::new(channel.clone())
        .ping(PingRequest {})
        .await
        .unwrap()
        .into_inner();
    let expected = format!(
        "{}:{}:{}",
        nix::unistd::getuid(),
        nix::unistd::getgid(),
        std::process::id()
    );
    assert_eq!(
        reply.version, expected,
        "handler sees the caller's uid:gid:pid"
    );

    let info = InfoClient::new(channel.clone())
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "banger-test");
    assert_eq!(info.pid, std::process::id());
    assert_eq!(info.services, vec!["banger.agent.v1.Agent".to_owned()]);

    let unimplemented = AgentClient::new(channel)
        .facts(FactsRequest {})
        .await
        .unwrap_err();
    assert_eq!(unimplemented.code(), tonic::Code::Unimplemented);
    assert!(unimplemented.message().contains("facts"), "{unimplemented}");

    server.stop().await.unwrap();
    assert!(
        !server_socket_exists(dir.path()),
        "socket removed on shutdown"
    );
    assert!(
        !dir.path().join("test.pid").exists(),
        "pid file removed on shutdown"
    );
}

fn server_socket_exists(dir: &Path) -> bool {
    dir.join("test.sock").exists()
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Duration::ZERO).await;
    let channel = rpc::connect(&server.socket).await.unwrap();

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "banger.agent.v1.Agent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
    let unknown = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "banger.nope.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    // Exactly what this socket serves: no other banger API is advertised.
    assert_eq!(
        names,
        [
            "banger.agent.v1.Agent",
            "banger.runtime.v1.Info",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn stale_socket_is_recovered_live_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("test.sock");
    // A socket file whose listener is gone: what a crash leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let server = Server::start(dir.path(), Duration::ZERO).await;
    rpc::connect(&server.socket)
        .await
        .expect("served after stale socket recovery");

    let second = BoundSocket::bind(ServeOptions {
        socket: socket.clone(),
        socket_group: None,
        pid_file: None,
        name: "banger-test".into(),
        services: vec![],
    })
    .await;
    assert!(
        matches!(second, Err(RuntimeError::AlreadyServing { .. })),
        "{second:?}"
    );
    server.stop().await.unwrap();

    let not_socket = dir.path().join("plain");
    std::fs::write(&not_socket, b"data").unwrap();
    let err = BoundSocket::bind(ServeOptions {
        socket: not_socket.clone(),
        socket_group: None,
        pid_file: None,
        name: "banger-test".into(),
        services: vec![],
    })
    .await
    .unwrap_err();
    assert!(matches!(err, RuntimeError::NotASocket { .. }), "{err:?}");
    assert_eq!(
        std::fs::read(&not_socket).unwrap(),
        b"data",
        "never deletes what it did not make"
    );
}

#[tokio::test]
async fn socket_group_is_applied_and_unknown_group_refused() {
    let dir = tempfile::tempdir().unwrap();
    let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
        .unwrap()
        .expect("current group has a name");
    let socket = dir.path().join("g.sock");
    let bound = BoundSocket::bind(ServeOptions {
        socket: socket.clone(),
        socket_group: Some(group.name.clone()),
        pid_file: None,
        name: "banger-test".into(),
        services: vec![],
    })
    .await
    .unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().gid(),
        group.gid.as_raw()
    );
    drop(bound);

    let err = BoundSocket::bind(ServeOptions {
        socket: dir.path().join("h.sock"),
        socket_group: Some("banger-no-such-group".into()),
        pid_file: None,
        name: "banger-test".into(),
        services: vec![],
    })
    .await
    .unwrap_err();
    assert!(matches!(err, RuntimeError::NoSuchGroup { .. }), "{err:?}");
}

#[tokio::test]
async fn shutdown_drains_in_flight_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Duration::from_millis(600)).await;
    let channel = rpc::connect(&server.socket).await.unwrap();
    let call = tokio::spawn(async move { AgentClient::new(channel).ping(PingRequest {}).await });
    // Let the call reach the handler before asking the server to stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop().await.unwrap();
    let reply = call.await.unwrap();
    assert!(reply.is_ok(), "in-flight call was cut off: {reply:?}");
    assert!(!dir.path().join("test.sock").exists());
}

#[tokio::test]
async fn connect_to_missing_socket_says_what_to_do() {
    let err = rpc::connect(Path::new("/nonexistent/banger/x.sock"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/nonexistent/banger/x.sock"), "{text}");
    assert!(text.contains("banger up"), "{text}");
}
