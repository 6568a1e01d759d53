//! The agent's one error enum, with one gRPC code per variant.

use banger_proto::rpc::GrpcError;
use tonic::Code;

/// Everything an agent RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Exec stream did not begin with a `start` message.
    #[error("the first Exec message must be `start`; send ExecStart before any stdin")]
    NotStarted,
    /// `start` carried no program.
    #[error("ExecStart.argv is empty; give at least the program to run")]
    EmptyArgv,
    /// The program does not exist (or is not on PATH).
    #[error("cannot run {program:?}: not found in the guest; check argv[0] and PATH")]
    ProgramNotFound { program: String },
    /// Spawning failed for another reason (permissions, bad cwd, ...).
    #[error("cannot run {program:?} in {cwd:?}: {source}")]
    Spawn {
        program: String,
        cwd: String,
        source: std::io::Error,
    },
    /// WaitListening named no TCP port.
    #[error("WaitListening.port {port} is not a TCP port; give 1-65535")]
    BadPort { port: u32 },
    /// Waiting for the child failed.
    #[error("lost track of the command: {0}")]
    Wait(std::io::Error),
    /// Binding the listener failed.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving on {what} failed: {source}")]
    Serve {
        what: String,
        source: tonic::transport::Error,
    },
    /// Starting the poweroff / reboot failed.
    #[error("cannot {action} the guest: {detail}")]
    Power {
        action: &'static str,
        detail: String,
    },
}

impl GrpcError for AgentError {
    fn grpc_code(&self) -> Code {
        match self {
            AgentError::NotStarted | AgentError::EmptyArgv | AgentError::BadPort { .. } => {
                Code::InvalidArgument
            }
            AgentError::ProgramNotFound { .. } => Code::NotFound,
            AgentError::Spawn { .. } => Code::FailedPrecondition,
            AgentError::Wait(_)
            | AgentError::Power { .. }
            | AgentError::Bind { .. }
            | AgentError::Serve { .. } => Code::Internal,
        }
    }
}

impl From<AgentError> for tonic::Status {
    fn from(err: AgentError) -> Self {
        banger_proto::rpc::to_status(&err)
    }
}
