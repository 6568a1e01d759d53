//! The edge between the domain and gRPC: the one place that decides which
//! status code each [`Error`] becomes.

use banger_proto::rpc::GrpcError;
use tonic::Code;

use crate::error::Error;

impl GrpcError for Error {
    fn grpc_code(&self) -> Code {
        match self {
            Error::InvalidName(_)
            | Error::Invalid(_)
            | Error::InvalidSize { .. }
            | Error::UnknownHypervisor { .. }
            | Error::BadExecStream { .. }
            | Error::InvalidDigest { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::WrongState { .. } | Error::NoAgent { .. } | Error::BackendUnavailable { .. } => {
                Code::FailedPrecondition
            }
            Error::Peer { code, .. } => *code,
            Error::Io { .. } => Code::Internal,
            Error::NoSpace(_) => Code::ResourceExhausted,
            Error::UnusableStateDir { .. } => Code::FailedPrecondition,
            Error::Tool { .. }
            | Error::ProgramMissing { .. }
            | Error::SpawnFailed { .. }
            | Error::LaunchFailed { .. }
            | Error::HypervisorApi { .. } => Code::FailedPrecondition,
            Error::Boot { .. } | Error::FirstBootFailed { .. } => Code::Aborted,
            Error::PreparationFailed { .. }
            | Error::NothingToPrepare { .. }
            | Error::PreparationRunning { .. } => Code::FailedPrecondition,
            Error::EvidenceKept { source, .. } => source.grpc_code(),
            Error::AgentNotReady(_) | Error::SshNotReady { .. } | Error::ConsoleSilent { .. } => {
                Code::DeadlineExceeded
            }
            Error::Agent(_) | Error::AgentCall { .. } => Code::Unavailable,
            Error::CallerGone { .. } => Code::Cancelled,
            Error::TaskFailed { .. } => Code::Internal,
        }
    }

    fn reason(&self) -> Option<&'static str> {
        match self {
            Error::NotFound { .. } => Some("VM_MISSING"),
            Error::AlreadyExists { .. } => Some("VM_EXISTS"),
            Error::WrongState { .. } => Some("VM_WRONG_STATE"),
            Error::NoAgent { .. } => Some("VM_NO_AGENT"),
            Error::Peer { reason, .. } => *reason,
            Error::FirstBootFailed { .. } => Some("FIRST_BOOT_FAILED"),
            Error::PreparationFailed { .. } => Some("IMAGE_PREPARATION_FAILED"),
            Error::NoSpace(_) => Some("NO_SPACE"),
            Error::EvidenceKept { source, .. } => source.reason(),
            _ => None,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        banger_proto::rpc::to_status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_reason_is_passed_on() {
        let from_kernelcat = banger_proto::rpc::to_status(&Error::Peer {
            service: "kernelcat",
            code: Code::NotFound,
            reason: Some("KERNEL_MISSING"),
            message: "no kernel named k".into(),
        });
        assert_eq!(from_kernelcat.code(), Code::NotFound);
        assert_eq!(
            banger_proto::rpc::status::reason_of(&from_kernelcat),
            Some("KERNEL_MISSING")
        );
    }

    #[tokio::test]
    async fn a_failed_task_is_internal_not_a_precondition() {
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let join = task.await.unwrap_err();
        let status = tonic::Status::from(Error::task("disk")(join));
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("disk task failed"), "{status:?}");
    }
}
