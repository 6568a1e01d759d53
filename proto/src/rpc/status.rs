//! Domain errors become gRPC statuses with one precise code per variant.

use tonic::{Code, Status};

/// Implemented by each layer's error enum: which gRPC code each variant is.
/// The status message is the error's `Display`, which must say what to do.
pub trait GrpcError: std::error::Error {
    /// The one gRPC code for this error.
    fn grpc_code(&self) -> Code;

    /// A stable, machine-readable reason (`KERNEL_MISSING`, …) for errors a
    /// client must branch on; sent as a `google.rpc.ErrorInfo` detail. The
    /// reasons are part of the API: listed in `proto/README.md`, never renamed.
    fn reason(&self) -> Option<&'static str> {
        None
    }
}

/// The `ErrorInfo.domain` of every banger error.
pub const ERROR_DOMAIN: &str = "banger";

/// Converts a domain error into a status; services call this from their
/// `impl From<Error> for tonic::Status`.
pub fn to_status<E: GrpcError>(err: &E) -> Status {
    let code = err.grpc_code();
    if matches!(code, Code::Internal | Code::Unknown) {
        tracing::error!(error = %err, "internal error");
    }
    match err.reason() {
        Some(reason) => {
            use tonic_types::{ErrorDetails, StatusExt};
            let details = ErrorDetails::with_error_info(
                reason,
                ERROR_DOMAIN,
                std::collections::HashMap::new(),
            );
            Status::with_error_details(code, err.to_string(), details)
        }
        None => Status::new(code, err.to_string()),
    }
}

/// Answer for an RPC whose capability is not built yet.
pub fn unimplemented(capability: &str) -> Status {
    Status::unimplemented(format!(
        "{capability} is not implemented in this version of banger"
    ))
}
