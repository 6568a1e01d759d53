//! First boot's one error enum. Every variant knows the step it failed in
//! and its [`FailureCause`], which is what the `Failed` console event
//! carries to the host.

use banger_proto::guest::FailureCause;

/// Why first boot could not finish.
#[derive(Debug, thiserror::Error)]
pub enum FirstBootError {
    /// A file of the guest could not be read, written or linked.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// A guest file exists but is not what it must be (a FIFO, a device,
    /// larger than first boot reads).
    #[error("{path}: {detail}")]
    BadFile { path: String, detail: String },
    /// `identity.json` is not the JSON vmm writes.
    #[error("{path} is not a valid identity: {detail}")]
    BadIdentity { path: String, detail: String },
    /// Mounting an API filesystem failed.
    #[error("mount {what}: {errno}")]
    Mount { what: String, errno: nix::Error },
    /// os-release names no distribution the table knows.
    #[error(
        "unknown distribution (ID={id:?}, ID_LIKE={id_like:?}); cannot install an init and an SSH server"
    )]
    UnknownDistribution { id: String, id_like: String },
    /// The distribution is known but its package manager is not in the image
    /// or does not start.
    #[error("{manager}: {detail}")]
    NoPackageManager { manager: String, detail: String },
    /// The image's programs are for another CPU.
    #[error("{path} is built for {image}, this kernel runs {kernel}")]
    WrongArchitecture {
        path: String,
        image: String,
        kernel: String,
    },
    /// A package manager command failed; `cause` is read from its output.
    #[error("`{command}` failed ({status}): {summary}")]
    Command {
        step: String,
        command: String,
        status: String,
        cause: FailureCause,
        summary: String,
        excerpt: Vec<String>,
    },
    /// The install finished but left no init behind.
    #[error("{manager} installed {packages:?} but no systemd or openrc init appeared")]
    NoInitAfterInstall {
        manager: String,
        packages: Vec<String>,
    },
    /// The image has no agent to supervise.
    #[error("{path} is missing: nothing to run in an image without an init")]
    NoAgent { path: String },
    /// exec of the init failed.
    #[error("cannot exec {init}: {source}")]
    Exec {
        init: String,
        source: std::io::Error,
    },
    /// reboot(2) refused to power off.
    #[error("cannot power off: {0}")]
    PowerOff(nix::Error),
    /// A bug: first boot panicked (caught, so PID 1 survives).
    #[error("internal error: {0}")]
    Panic(String),
}

impl FirstBootError {
    /// The cause the host shows the user.
    pub fn cause(&self) -> FailureCause {
        match self {
            FirstBootError::Command { cause, .. } => *cause,
            FirstBootError::UnknownDistribution { .. } => FailureCause::UnknownDistribution,
            FirstBootError::NoPackageManager { .. } => FailureCause::NoPackageManager,
            FirstBootError::WrongArchitecture { .. } => FailureCause::WrongArchitecture,
            FirstBootError::Io { source, .. } | FirstBootError::Exec { source, .. }
                if source.raw_os_error() == Some(libc::ENOSPC) =>
            {
                FailureCause::DiskFull
            }
            FirstBootError::Exec { source, .. } if source.raw_os_error() == Some(libc::ENOEXEC) => {
                FailureCause::WrongArchitecture
            }
            _ => FailureCause::Other,
        }
    }

    /// A few readable lines of the failing command's output.
    pub fn excerpt(&self) -> Vec<String> {
        match self {
            FirstBootError::Command { excerpt, .. } => excerpt.clone(),
            _ => Vec::new(),
        }
    }

    /// The step's own name when the error carries one.
    pub fn step(&self) -> Option<&str> {
        match self {
            FirstBootError::Command { step, .. } => Some(step),
            _ => None,
        }
    }
}

/// `FirstBootError::Io` with the path filled in.
pub fn io(
    what: &'static str,
    path: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> FirstBootError {
    let path = path.to_string();
    move |source| FirstBootError::Io { what, path, source }
}
