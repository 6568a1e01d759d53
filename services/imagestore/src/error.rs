//! The image store's one error enum: every variant has one gRPC code and a
//! message that says what to do.

use std::path::PathBuf;

use banger_proto::rpc::GrpcError;
use tonic::Code;

/// Everything that can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference does not follow the Docker grammar.
    #[error(
        "invalid image reference {reference:?}: {reason}; use e.g. `debian:bookworm` or `registry:5000/repo@sha256:…`"
    )]
    InvalidReference { reference: String, reason: String },
    /// A bad image name.
    #[error(transparent)]
    InvalidName(#[from] banger_proto::names::InvalidName),
    /// Free text that would be stored and printed back holds control
    /// characters (newlines, terminal escapes).
    #[error("the {field} {value:?} contains control characters; use printable text only")]
    ControlCharacters { field: &'static str, value: String },
    /// A `--platform` that is not `os/arch[/variant]`.
    #[error("invalid platform {0:?}: use `os/arch[/variant]`, e.g. `linux/amd64`")]
    InvalidPlatform(String),
    /// No such image.
    #[error("no image named {0:?}: see `banger image list`, or pull it with `banger image pull`")]
    NotFound(String),
    /// The image is held by VMs.
    #[error("image {name:?} is in use by {holders}; delete those VMs first")]
    InUse { name: String, holders: String },
    /// The registry (and every mirror) could not be reached.
    #[error(
        "cannot reach the registry for {reference}: {message}; check the network, the mirrors and `insecure_registries` in [imagestore]"
    )]
    Unreachable { reference: String, message: String },
    /// The registry refused our credentials.
    #[error(
        "the registry refused access to {reference}: {message}; log in with `docker login` (credentials come from ~/.docker/config.json)"
    )]
    Unauthorized { reference: String, message: String },
    /// The registry names a token realm that would get the credentials in
    /// clear on another host.
    #[error(
        "registry {registry} asks for your credentials to be sent to {realm}, another host, over plain HTTP; \
         refusing to send them (its token realm must be HTTPS or on the registry's own host)"
    )]
    UnsafeTokenRealm { registry: String, realm: String },
    /// The registry does not have the manifest or a blob.
    #[error("{reference} was not found in the registry: {message}")]
    RemoteNotFound { reference: String, message: String },
    /// An image index has no manifest for the requested platform.
    #[error("{reference} has no image for platform {platform}; pick another with --platform")]
    NoPlatform { reference: String, platform: String },
    /// A manifest or index larger than any real one.
    #[error(
        "the registry's manifest for {reference} is larger than {limit} bytes; refusing it (real manifests are a few KiB)"
    )]
    ManifestTooLarge { reference: String, limit: u64 },
    /// A manifest or layer type we cannot unpack.
    #[error("{reference}: unsupported {what}")]
    Unsupported { reference: String, what: String },
    /// A blob's content does not match its digest.
    #[error(
        "blob {digest} is corrupt (its content hashes to {actual}); the registry served bad data, nothing was kept: retry or fix the registry"
    )]
    DigestMismatch { digest: String, actual: String },
    /// A blob's transfer failed half-way.
    #[error(
        "download of blob {digest} failed: {message}; retry the pull (verified blobs are kept)"
    )]
    Download { digest: String, message: String },
    /// A layer member that would land outside the root, or a malformed layer.
    #[error("layer {layer} is unsafe or malformed: {reason}; refusing to unpack it")]
    BadLayer { layer: String, reason: String },
    /// The unpacked content exceeds `max_unpacked_bytes`.
    #[error(
        "the image unpacks to more than {limit} bytes (max_unpacked_bytes in [imagestore]); refusing it"
    )]
    TooLarge { limit: u64 },
    /// Too many tar members in the image, or in one directory.
    #[error(
        "the image has more than {limit} entries {what} (max_entries / max_entries_per_dir in [imagestore]); refusing it"
    )]
    TooManyEntries { limit: u64, what: &'static str },
    /// Directories so large that building the filesystem would take too long.
    #[error(
        "the image's directories are too large to build in reasonable time (sum of entries² over directories {work}, \
         limit {limit}: max_dir_work in [imagestore]); refusing it"
    )]
    DirectoriesTooLarge { work: u64, limit: u64 },
    /// The filesystem would be larger than `max_image_bytes`.
    #[error(
        "the image's filesystem would take {size} bytes, more than {limit} (max_image_bytes in [imagestore]); refusing it"
    )]
    ImageTooLarge { size: u64, limit: u64 },
    /// The build was stopped (the service is stopping).
    #[error("the image build was cancelled")]
    Cancelled,
    /// The host's mke2fs cannot populate a filesystem from a tar stream.
    #[error(
        "this host's mke2fs cannot build a filesystem from a tar stream ({0}); imagestore needs e2fsprogs 1.47.1 or newer \
         with libarchive (Debian 12: `apt-get install -t bookworm-backports e2fsprogs libext2fs2` and `apt-get install libarchive13`; scripts/setup.sh does this)"
    )]
    MkfsCannotReadTar(String),
    /// `mkfs.ext4` or `e2fsck` failed.
    #[error("building the ext4 file failed: {0}")]
    Mkfs(String),
    /// The in-process ext4 writer cannot store an entry.
    #[error("cannot write {path} into the ext4: {source}")]
    Ext4Write {
        path: String,
        source: crate::ext4w::Error,
    },
    /// The guest bundle could not be placed in the image.
    #[error("cannot inject the guest bundle: {0}")]
    Inject(String),
    /// The state dir's filesystem is full (or would be): nothing of the
    /// pull or import is kept but verified blobs.
    #[error(
        "{0}; free space there (`banger image prune` drops blobs no image uses, `banger image rm` images) and retry"
    )]
    NoSpace(banger_proto::fsutil::NoSpace),
    /// A local filesystem operation failed.
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A stored record is unreadable.
    #[error("corrupt image record {path}: {message}; remove it with `banger image rm`")]
    CorruptRecord { path: PathBuf, message: String },
    /// An archive to import is not a docker-save or OCI archive.
    #[error("not an image archive: {0}; pass a `docker save` or OCI archive")]
    BadArchive(String),
}

impl Error {
    /// Wraps an I/O error with what we were doing and where; a full disk
    /// becomes [`Error::NoSpace`].
    pub fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| {
            if banger_proto::fsutil::is_no_space(&source) {
                return Error::NoSpace(banger_proto::fsutil::NoSpace::at(&path, 0));
            }
            Error::Io {
                context,
                path,
                source,
            }
        }
    }
}

impl GrpcError for Error {
    fn grpc_code(&self) -> Code {
        match self {
            Error::InvalidReference { .. } | Error::InvalidName(_) | Error::InvalidPlatform(_) => {
                Code::InvalidArgument
            }
            Error::BadArchive(_) | Error::ControlCharacters { .. } => Code::InvalidArgument,
            Error::NotFound(_) | Error::RemoteNotFound { .. } | Error::NoPlatform { .. } => {
                Code::NotFound
            }
            Error::InUse { .. } | Error::UnsafeTokenRealm { .. } => Code::FailedPrecondition,
            Error::Unreachable { .. } | Error::Download { .. } => Code::Unavailable,
            Error::Unauthorized { .. } => Code::Unauthenticated,
            Error::Unsupported { .. } | Error::BadLayer { .. } => Code::FailedPrecondition,
            Error::DigestMismatch { .. } => Code::DataLoss,
            Error::TooLarge { .. }
            | Error::TooManyEntries { .. }
            | Error::DirectoriesTooLarge { .. }
            | Error::ImageTooLarge { .. }
            | Error::ManifestTooLarge { .. }
            | Error::NoSpace(_) => Code::ResourceExhausted,
            Error::Cancelled => Code::Cancelled,
            Error::MkfsCannotReadTar(_) => Code::FailedPrecondition,
            Error::Ext4Write { source, .. } => match source {
                crate::ext4w::Error::Unsupported(_) => Code::FailedPrecondition,
                crate::ext4w::Error::Full(_) => Code::ResourceExhausted,
                _ => Code::Internal,
            },
            Error::Mkfs(_) | Error::Inject(_) | Error::Io { .. } | Error::CorruptRecord { .. } => {
                Code::Internal
            }
        }
    }

    fn reason(&self) -> Option<&'static str> {
        Some(match self {
            Error::NotFound(_) => "IMAGE_MISSING",
            Error::RemoteNotFound { .. } => "IMAGE_NOT_IN_REGISTRY",
            Error::NoPlatform { .. } => "IMAGE_NO_PLATFORM",
            Error::InUse { .. } => "IMAGE_IN_USE",
            Error::Unauthorized { .. } => "REGISTRY_UNAUTHORIZED",
            Error::DigestMismatch { .. } => "DOWNLOAD_CORRUPT",
            Error::NoSpace(_) => "NO_SPACE",
            _ => return None,
        })
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        banger_proto::rpc::to_status(&e)
    }
}
