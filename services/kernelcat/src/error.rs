//! The one error enum of kernelcat's domain, each variant one gRPC code.

use std::path::PathBuf;

use banger_proto::rpc::GrpcError;
use thiserror::Error;
use tonic::Code;

/// Everything that can go wrong in the kernel store, catalog, pull and import.
#[derive(Debug, Error)]
pub enum Error {
    /// A kernel name that is not dot-separated DNS labels.
    #[error(
        "invalid kernel name {name:?}: use at most 63 lowercase letters, digits, '-' and '.', \
         in dot-separated parts that start and end with a letter or digit (e.g. \"generic-6.12\")"
    )]
    InvalidKernelName { name: String },
    /// No kernel of that name in the local store.
    #[error(
        "kernel {name:?} is not in the local store; see `banger kernel list`, or get it with \
         `banger kernel pull {name}` / `banger kernel import {name} --vmlinux PATH`"
    )]
    NotFound { name: String },
    /// No catalog entry of that name.
    #[error(
        "kernel {name:?} is not in the catalog; see `banger kernel list --available` \
         (`banger kernel pull debian-6.12` gets Debian's signed kernel, ready to boot; \
         configure [kernelcat] catalog_url for more entries, or build one with \
         scripts/make-generic-kernel.sh and `banger kernel import`)"
    )]
    NotInCatalog { name: String },
    /// The kernel exists and the caller did not ask to replace it.
    #[error("kernel {name:?} already exists; pass --force to replace it")]
    AlreadyExists { name: String },
    /// The kernel is used by VMs.
    #[error(
        "kernel {name:?} is in use by {}; delete those VMs first",
        holders.join(", ")
    )]
    InUse { name: String, holders: Vec<String> },
    /// The server answered with an error status.
    #[error("GET {url} answered HTTP {status}; check the catalog entry's URL and the server")]
    HttpStatus { url: String, status: u16 },
    /// The server could not be reached or the transfer failed.
    #[error("download of {url} failed: {message}; check the network and the server, then retry")]
    Transfer { url: String, message: String },
    /// The stream ended before the announced length.
    #[error("download of {url} was truncated: got {got} of {expected} bytes; retry the pull")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    /// The downloaded bundle does not have the digest the catalog promises.
    #[error(
        "SHA-256 mismatch for {url}: the catalog expects {expected}, the download is {actual}; \
         the bundle or the catalog entry is wrong, nothing was stored"
    )]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    /// A bundle whose content is unsafe or incomplete.
    #[error("bundle refused: {reason}")]
    BadBundle { reason: String },
    /// A bundle, download or import larger than `max_unpacked_bytes`.
    #[error(
        "{what} exceeds the limit of {limit} bytes; raise [kernelcat] max_unpacked_bytes if \
         this kernel is really that large"
    )]
    TooLarge { what: String, limit: u64 },
    /// An OCI registry problem.
    #[error("pulling {reference} failed: {message}")]
    Oci { reference: String, message: String },
    /// A malformed catalog entry.
    #[error("catalog entry {name:?} is invalid: {reason}; fix the catalog")]
    BadCatalogEntry { name: String, reason: String },
    /// The client broke the import protocol.
    #[error("invalid import: {reason}")]
    BadImport { reason: String },
    /// The operation was cancelled (the service is stopping).
    #[error("the operation was cancelled")]
    Cancelled,
    /// Another process owns the store.
    #[error(
        "the kernel store {} is in use by another banger-kernelcat ({reason}); stop it first",
        path.display()
    )]
    StoreBusy { path: PathBuf, reason: String },
    /// A local filesystem error.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A Debian archive file whose signature chain does not hold.
    #[error("{url} is not trusted: {reason}; nothing was stored")]
    Untrusted { url: String, reason: String },
    /// A download larger than the signed index declares (cut off while
    /// streaming).
    #[error(
        "{url} sent more than the {declared} bytes the signed index declares; refused while \
         streaming, nothing was stored"
    )]
    LargerThanDeclared { url: String, declared: u64 },
    /// A download whose size differs from the signed index.
    #[error("{url} is {actual} bytes but the signed index declares {expected}; nothing was stored")]
    SizeMismatch {
        url: String,
        expected: u64,
        actual: u64,
    },
    /// A package or index the archive does not have.
    #[error("{what} is not in {archive}; check the catalog entry (suite, component, package)")]
    NotInArchive { what: String, archive: String },
    /// A kernel that lacks something a microVM needs.
    #[error("kernel {kver} cannot boot a banger microVM: {option} {reason}")]
    KernelUnfit {
        kver: String,
        option: String,
        reason: String,
    },
    /// The guest agent binary (the initramfs `/init`) is not found.
    #[error(
        "the guest agent binary banger-agent is not in any of {}; build it with \
         scripts/build-guest.sh or set [kernelcat] guest_dir",
        looked_in.join(", ")
    )]
    NoAgent { looked_in: Vec<String> },
    /// A helper program failed or is missing.
    #[error("{program}: {message}")]
    Tool { program: String, message: String },
    /// A bug or an unexpected internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Wraps an I/O error with what was being done to which path.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

impl GrpcError for Error {
    fn grpc_code(&self) -> Code {
        match self {
            Error::InvalidKernelName { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::NotInCatalog { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::InUse { .. } => Code::FailedPrecondition,
            Error::HttpStatus { .. } => Code::Unavailable,
            Error::Transfer { .. } => Code::Unavailable,
            Error::Truncated { .. } => Code::DataLoss,
            Error::DigestMismatch { .. } => Code::DataLoss,
            Error::BadBundle { .. } => Code::FailedPrecondition,
            Error::TooLarge { .. } => Code::ResourceExhausted,
            Error::Oci { .. } => Code::Unavailable,
            Error::BadCatalogEntry { .. } => Code::FailedPrecondition,
            Error::BadImport { .. } => Code::InvalidArgument,
            Error::Cancelled => Code::Cancelled,
            Error::StoreBusy { .. } => Code::FailedPrecondition,
            Error::Io { .. } => Code::Internal,
            Error::Untrusted { .. } => Code::FailedPrecondition,
            Error::LargerThanDeclared { .. } => Code::DataLoss,
            Error::SizeMismatch { .. } => Code::DataLoss,
            Error::NotInArchive { .. } => Code::NotFound,
            Error::KernelUnfit { .. } => Code::FailedPrecondition,
            Error::NoAgent { .. } => Code::FailedPrecondition,
            Error::Tool { .. } => Code::FailedPrecondition,
            Error::Internal(_) => Code::Internal,
        }
    }

    fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Error::NotFound { .. } => "KERNEL_MISSING",
            Error::NotInCatalog { .. } => "KERNEL_NOT_IN_CATALOG",
            Error::AlreadyExists { .. } => "KERNEL_EXISTS",
            Error::InUse { .. } => "KERNEL_IN_USE",
            Error::DigestMismatch { .. } | Error::Truncated { .. } => "DOWNLOAD_CORRUPT",
            _ => return None,
        })
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        banger_proto::rpc::to_status(&err)
    }
}

impl From<&Error> for tonic::Status {
    fn from(err: &Error) -> Self {
        banger_proto::rpc::to_status(err)
    }
}

/// Result alias of the kernelcat domain.
pub type Result<T, E = Error> = std::result::Result<T, E>;
