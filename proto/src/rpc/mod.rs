//! The one RPC runtime: every banger process serves and dials through here.
//!
//! - [`server`]: bind a unix socket (stale-socket recovery, mode 0660, group),
//!   serve tonic routes with health, reflection and `banger.runtime.v1.Info`,
//!   drain on SIGTERM/SIGINT and remove the socket.
//! - [`authority`]: accept the `:authority` stock gRPC clients send over unix
//!   sockets (the socket path), which h2 would refuse.
//! - [`hybrid_vsock`]: dial a guest vsock port through a hybrid-vsock socket.
//! - [`client`]: dial a unix socket and get a channel that injects the W3C
//!   `traceparent` of the current span into every call.
//! - [`peer`]: the caller's uid/gid/pid, from the socket's peer credentials.
//! - [`trace_context`]: carrying the OpenTelemetry context through metadata.
//! - [`status`]: mapping domain errors to one precise gRPC code each.
//! - [`progress`]: long operations: the common progress update in every
//!   stream's event, and (host) the one server helper with the one
//!   cancellation rule.
//! - [`signal`]: waiting for SIGTERM/SIGINT.
//!
//! `server`, `client`, `peer`, `trace_context` and the server half of
//! `progress` are host pieces (feature `host`); the guest agent builds with
//! `hybrid_vsock`, `status`, `signal` and the event half of `progress` only.

#[cfg(feature = "host")]
pub mod authority;
#[cfg(feature = "host")]
pub mod client;
pub mod hybrid_vsock;
#[cfg(feature = "host")]
pub mod peer;
pub mod progress;
#[cfg(feature = "host")]
pub mod server;
pub mod signal;
pub mod status;
#[cfg(feature = "host")]
pub mod trace_context;

#[cfg(feature = "host")]
pub use client::{TracedChannel, connect, connect_lazy};
#[cfg(feature = "host")]
pub use peer::{Peer, peer};
#[cfg(feature = "host")]
pub use server::{BoundSocket, ServeOptions};
pub use signal::shutdown_signal;
pub use status::{GrpcError, to_status};

use std::path::PathBuf;
use thiserror::Error;

/// Errors of the runtime itself (not of any service).
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// Another live process already serves on the socket.
    #[error(
        "{path} is already served by a running process; stop it first (`banger down`) or choose another run dir"
    )]
    AlreadyServing { path: PathBuf },
    /// The path exists and is not a socket; we never delete what we did not make.
    #[error("{path} exists and is not a unix socket; remove it or choose another run dir")]
    NotASocket { path: PathBuf },
    /// Filesystem or socket error while binding.
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The configured socket group does not exist.
    #[error(
        "socket group {group:?} does not exist; create it (`groupadd {group}`) or unset paths.socket_group"
    )]
    NoSuchGroup { group: String },
    /// Dialing a service failed.
    #[error(
        "cannot connect to {path}: {source}; is the service running? start it with `banger up`"
    )]
    Connect {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server failed while serving.
    #[error("server on {path} failed: {source}")]
    Serve {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    /// Writing the pid file failed.
    #[error("cannot write pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
}
