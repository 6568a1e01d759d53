//! The vmm's one error enum; each variant is one gRPC code.

use std::path::PathBuf;

use banger_proto::rpc::GrpcError;
use tonic::Code;

/// Everything that can go wrong in the VM manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// A VM, image or kernel name is not a DNS label.
    #[error(transparent)]
    InvalidName(#[from] banger_proto::names::InvalidName),
    /// A request field breaks a limit or is not what it claims (an SSH key).
    #[error(transparent)]
    Invalid(#[from] crate::validate::Invalid),
    /// No VM has this name.
    #[error("no VM named {0:?}; see `banger vm list`")]
    NotFound(String),
    /// A VM of a different spec already has this name.
    #[error(
        "a VM named {0:?} already exists with a different spec; pick another name or `banger vm rm {0}` first"
    )]
    AlreadyExists(String),
    /// The VM is in a state that forbids the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Another service answered with an error; its code is passed on.
    #[error("{service}: {message}")]
    Peer {
        service: &'static str,
        code: Code,
        message: String,
    },
    /// A file operation on the VM's own state failed.
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// An external tool (debugfs, resize2fs, qemu…) is missing or failed.
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
    /// The hypervisor could not be started or configured.
    #[error("{0}")]
    Hypervisor(String),
    /// The VM started but did not boot, or died; with the console's tail.
    #[error("{cause}\n--- last lines of the console ---\n{}", if console_tail.is_empty() { "(nothing on the console)" } else { console_tail })]
    Boot { cause: String, console_tail: String },
    /// The VM did not become ready in time.
    #[error("{0}")]
    Timeout(String),
    /// The guest agent is unreachable or failed.
    #[error("guest agent: {0}")]
    Agent(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            context,
            path,
            source,
        }
    }

    /// An [`Error::Tool`].
    pub fn tool(tool: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Tool {
            tool: tool.into(),
            message: message.into(),
        }
    }

    /// Wraps a status from another banger service.
    pub fn peer(service: &'static str, status: tonic::Status) -> Error {
        match status.code() {
            // Transport failures (socket missing, connection refused) come
            // back as Unknown/Unavailable: say what to do about them.
            Code::Unknown | Code::Unavailable => Error::Peer {
                service,
                code: Code::Unavailable,
                message: format!(
                    "banger-{service} is not reachable ({}); is it running? start the services with `banger up`",
                    status.message()
                ),
            },
            code => Error::Peer {
                service,
                code,
                message: status.message().to_owned(),
            },
        }
    }
}

impl GrpcError for Error {
    fn grpc_code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) | Error::InvalidName(_) | Error::Invalid(_) => {
                Code::InvalidArgument
            }
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Peer { code, .. } => *code,
            Error::Io { .. } => Code::Internal,
            Error::Tool { .. } => Code::FailedPrecondition,
            Error::Hypervisor(_) => Code::FailedPrecondition,
            Error::Boot { .. } => Code::Aborted,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Agent(_) => Code::Unavailable,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        banger_proto::rpc::to_status(&e)
    }
}

/// Result of the vmm's domain.
pub type Result<T, E = Error> = std::result::Result<T, E>;
