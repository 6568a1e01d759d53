//! The one error type of the netd domain, with its gRPC code per variant.

use std::path::PathBuf;

use banger_proto::rpc::GrpcError;
use thiserror::Error;
use tonic::Code;

/// Errors of the lease manager and the network operations under it.
#[derive(Debug, Error)]
pub enum Error {
    /// `[netd]` settings are unusable.
    #[error("invalid netd configuration: {0}")]
    Config(String),
    /// A VM id that cannot name a lease.
    #[error("invalid VM id {0:?}: use 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'")]
    InvalidVmId(String),
    /// Every address of the subnet is leased.
    #[error(
        "no free address left in {subnet} ({capacity} leases in use); release VMs you no longer need or configure a larger [netd] subnet"
    )]
    Exhausted { subnet: String, capacity: u32 },
    /// Another VM's tap already has the name this VM would get.
    #[error("tap {tap} is already used by VM {other}; choose another VM id")]
    TapConflict { tap: String, other: String },
    /// The caller may not change network state.
    #[error(
        "uid {uid} may not change network state: only root and the vmm's uid ([netd] vmm_uid) may"
    )]
    PermissionDenied { uid: u32 },
    /// The caller's credentials are unknown (not a unix socket).
    #[error("cannot tell who is calling: connect over the netd unix socket")]
    UnknownCaller,
    /// Reading or writing the leases file failed.
    #[error("cannot access {path}: {source}; check the netd state dir's ownership and free space")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The leases file cannot be parsed.
    #[error(
        "{path} is corrupt ({message}); fix or move it aside, then restart banger-netd (it reconciles taps on start)"
    )]
    CorruptState { path: PathBuf, message: String },
    /// A netlink request failed.
    #[error("netlink: {what}: {message}; is CAP_NET_ADMIN effective for banger-netd?")]
    Netlink { what: String, message: String },
    /// An ioctl on /dev/net/tun failed.
    #[error(
        "tap {tap}: {what} failed: {source}; is /dev/net/tun present and CAP_NET_ADMIN effective?"
    )]
    Tun {
        tap: String,
        what: &'static str,
        source: nix::Error,
    },
    /// `nft` failed or is missing.
    #[error("nftables: {0}; install nftables (`apt-get install nftables`) and check CAP_NET_ADMIN")]
    Nft(String),
    /// Reading or writing a sysctl failed.
    #[error("cannot access {path}: {source}")]
    Sysctl {
        path: &'static str,
        source: std::io::Error,
    },
}

impl GrpcError for Error {
    fn grpc_code(&self) -> Code {
        match self {
            Error::Config(_) => Code::FailedPrecondition,
            Error::InvalidVmId(_) => Code::InvalidArgument,
            Error::Exhausted { .. } => Code::ResourceExhausted,
            Error::TapConflict { .. } => Code::AlreadyExists,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::UnknownCaller => Code::PermissionDenied,
            Error::State { .. } | Error::CorruptState { .. } => Code::Internal,
            Error::Netlink { .. } | Error::Tun { .. } | Error::Nft(_) | Error::Sysctl { .. } => {
                Code::Unavailable
            }
        }
    }

    fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Error::Exhausted { .. } => "ADDRESSES_EXHAUSTED",
            Error::TapConflict { .. } => "TAP_CONFLICT",
            _ => return None,
        })
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> tonic::Status {
        banger_proto::rpc::to_status(&err)
    }
}
