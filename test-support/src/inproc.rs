//! The in-process tier's server: a service's routes served by banger's own
//! RPC runtime on a temp unix socket, and a traced channel to it.

use std::path::{Path, PathBuf};

use banger_proto::rpc::{BoundSocket, RuntimeError, ServeOptions, TracedChannel};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::Routes;

/// A service serving on a socket until dropped or [`Served::stop`]ped.
#[derive(Debug)]
pub struct Served {
    /// The socket it listens on.
    pub socket: PathBuf,
    /// A connected channel (clone it for more clients).
    pub channel: TracedChannel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RuntimeError>>>,
}

impl Served {
    /// Begins the graceful shutdown; [`Served::stopped`] waits for its end.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Serves until the runtime ends (the test's, usually) and returns the
    /// channel: for helpers that hand out only a client.
    pub fn detach(mut self) -> TracedChannel {
        // A stop sender never dropped: nothing ends the serving but the runtime.
        std::mem::forget(self.stop.take());
        self.channel.clone()
    }

    /// The channel, the sender that stops the serving and its task, for a
    /// test that stops the server at a moment of its choosing.
    pub fn into_parts(
        mut self,
    ) -> (
        TracedChannel,
        oneshot::Sender<()>,
        JoinHandle<Result<(), RuntimeError>>,
    ) {
        let stop = self.stop.take().expect("not stopped yet");
        let task = self.task.take().expect("not stopped yet");
        (self.channel.clone(), stop, task)
    }

    /// Stops it and returns how serving ended.
    pub async fn stopped(mut self) -> Result<(), RuntimeError> {
        self.stop();
        self.task
            .take()
            .expect("stopped once")
            .await
            .expect("the server task does not panic")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `routes` as `name` (e.g. `banger-netd`) on `socket`, marking
/// `apis` (e.g. `banger.netd.v1.Netd`) SERVING in `grpc.health.v1`, and
/// connects to it. Call inside a tokio runtime.
pub async fn serve(socket: &Path, name: &str, apis: &[&str], routes: Routes) -> Served {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).expect("create the socket's folder");
    }
    let bound = BoundSocket::bind(ServeOptions {
        socket: socket.to_path_buf(),
        socket_group: None,
        pid_file: None,
        name: name.to_owned(),
        services: apis.iter().map(|s| (*s).to_owned()).collect(),
    })
    .await
    .unwrap_or_else(|e| panic!("bind {}: {e}", socket.display()));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(routes, async {
        let _ = stopped.await;
    }));
    let channel = banger_proto::rpc::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    Served {
        socket: socket.to_path_buf(),
        channel,
        stop: Some(stop),
        task: Some(task),
    }
}
