//! Binding the agent's listeners and serving the API on them.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::AgentError;
use crate::power::Power;
use crate::service::AgentService;

/// Where to listen.
#[derive(Debug, Clone)]
pub enum Listen {
    /// AF_VSOCK, any CID, this port (production: [`crate::AGENT_PORT`]).
    Vsock(u32),
    /// A unix socket (tests on the host, debugging).
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Vsock(port) => write!(f, "vsock port {port}"),
            Listen::Unix(path) => write!(f, "unix socket {}", path.display()),
        }
    }
}

/// Binds `listen` now (so the caller knows it worked) and returns the
/// future that serves until `shutdown` resolves.
pub fn bind(
    listen: &Listen,
    power: Arc<dyn Power>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<(), AgentError>> + Send + 'static, AgentError> {
    let what = listen.to_string();
    let bind_err = |source| AgentError::Bind {
        what: what.clone(),
        source,
    };
    let router = Server::builder().add_service(AgentService::new(power).into_server());
    let serving: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match listen {
        Listen::Vsock(port) => {
            let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
            let listener = tokio_vsock::VsockListener::bind(addr).map_err(bind_err)?;
            Box::pin(router.serve_with_incoming_shutdown(listener.incoming(), shutdown))
        }
        Listen::Unix(path) => {
            // A socket left by a previous run would make bind fail.
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
            Box::pin(
                router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown),
            )
        }
    };
    tracing::info!(on = %what, "banger-agent listening");
    Ok(async move {
        serving
            .await
            .map_err(|source| AgentError::Serve { what, source })
    })
}
