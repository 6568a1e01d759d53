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

/// Every `ErrorInfo.reason` banger sends; each is documented in
/// `proto/README.md` (a test checks), and none is ever renamed.
pub const REASONS: &[&str] = &[
    "KERNEL_MISSING",
    "KERNEL_NOT_IN_CATALOG",
    "KERNEL_EXISTS",
    "KERNEL_IN_USE",
    "IMAGE_MISSING",
    "IMAGE_NOT_IN_REGISTRY",
    "IMAGE_NO_PLATFORM",
    "IMAGE_IN_USE",
    "REGISTRY_UNAUTHORIZED",
    "DOWNLOAD_CORRUPT",
    "ADDRESSES_EXHAUSTED",
    "TAP_CONFLICT",
    "VM_MISSING",
    "VM_EXISTS",
    "VM_WRONG_STATE",
    "VM_NO_AGENT",
    "FIRST_BOOT_FAILED",
    "IMAGE_PREPARATION_FAILED",
    "NO_SPACE",
];

/// The banger reason `status` carries, if any: how a service passes on the
/// reason of another service's error.
pub fn reason_of(status: &Status) -> Option<&'static str> {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info()?;
    if info.domain != ERROR_DOMAIN {
        return None;
    }
    REASONS.iter().copied().find(|r| *r == info.reason)
}

/// Converts a domain error into a status; services call this from their
/// `impl From<Error> for tonic::Status`.
pub fn to_status<E: GrpcError>(err: &E) -> Status {
    let code = err.grpc_code();
    if matches!(code, Code::Internal | Code::Unknown) {
        tracing::error!(error = %err, "internal error");
    }
    let reason = err.reason();
    debug_assert!(
        reason.is_none_or(|r| REASONS.contains(&r)),
        "reason {reason:?} is not in REASONS"
    );
    match reason {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("no kernel named x; pull it")]
    struct Missing;

    impl GrpcError for Missing {
        fn grpc_code(&self) -> Code {
            Code::NotFound
        }
        fn reason(&self) -> Option<&'static str> {
            Some("KERNEL_MISSING")
        }
    }

    #[test]
    fn reasons_travel_as_error_info_and_are_read_back() {
        let status = to_status(&Missing);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no kernel named x; pull it");
        assert_eq!(reason_of(&status), Some("KERNEL_MISSING"));
        assert_eq!(reason_of(&Status::not_found("plain")), None);
    }

    #[test]
    fn every_reason_is_documented() {
        let readme = include_str!("../../README.md");
        for reason in REASONS {
            assert!(
                readme.contains(&format!("| `{reason}` |")),
                "{reason} is not in proto/README.md's table"
            );
        }
    }
}
