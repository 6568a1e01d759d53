//! Dialing a banger service on its unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use super::RuntimeError;

/// Adds the current span's `traceparent` to every outgoing call.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInjector;

impl Interceptor for TraceContextInjector {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let mut headers = std::mem::take(request.metadata_mut()).into_headers();
        super::trace_context::inject_current(&mut headers);
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        Ok(request)
    }
}

/// A channel to a banger socket that propagates trace context; pass it to any
/// generated client's `new`.
pub type TracedChannel = InterceptedService<Channel, TraceContextInjector>;

fn endpoint(path: PathBuf) -> (Endpoint, impl Fn(Uri) -> UnixConnect + Clone) {
    // The URI is never dialed: the connector below ignores it.
    let endpoint = Endpoint::from_static("http://banger.invalid")
        .connect_timeout(std::time::Duration::from_secs(5));
    let connector = move |_: Uri| {
        let path = path.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }) as UnixConnect
    };
    (endpoint, connector)
}

type UnixConnect = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send>,
>;

/// Dials the unix socket at `path` now; fails at once if nothing listens.
pub async fn connect(path: &Path) -> Result<TracedChannel, RuntimeError> {
    let (endpoint, connector) = endpoint(path.to_path_buf());
    let channel = endpoint
        .connect_with_connector(service_fn(connector))
        .await
        .map_err(|e| RuntimeError::Connect {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
    Ok(InterceptedService::new(channel, TraceContextInjector))
}

/// A channel that dials on first use and redials after failures; for
/// long-lived clients of another service that may restart.
pub fn connect_lazy(path: &Path) -> TracedChannel {
    let (endpoint, connector) = endpoint(path.to_path_buf());
    let channel = endpoint.connect_with_connector_lazy(service_fn(connector));
    InterceptedService::new(channel, TraceContextInjector)
}
