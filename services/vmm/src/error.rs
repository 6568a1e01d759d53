//! The vmm's one error enum. Each variant names a fact of the VM domain
//! (a VM in the wrong state, an image without an agent, a hypervisor that
//! did not start …) and says what to do about it; which gRPC code each one
//! becomes is decided once, at the edge, in [`crate::convert`].

use std::path::PathBuf;
use std::time::Duration;

use banger_proto::rpc::hybrid_vsock::HybridVsockError;

use crate::config::Backend;
use crate::record::VmState;

/// Everything that can go wrong in the VM manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- the request ----
    /// A VM, image or kernel name is not a DNS label.
    #[error(transparent)]
    InvalidName(#[from] banger_proto::names::InvalidName),
    /// vCPUs or memory out of range.
    #[error("vcpus must be 1-64 and memory at least 64 MiB (got {vcpus} vCPUs, {memory_mib} MiB)")]
    InvalidSize { vcpus: u32, memory_mib: u32 },
    /// A hypervisor value this vmm does not know.
    #[error("unknown hypervisor {value}; use firecracker or qemu")]
    UnknownHypervisor { value: i32 },
    /// The client broke the Exec stream protocol.
    #[error("{reason}")]
    BadExecStream { reason: &'static str },

    // ---- the VM ----
    /// A request field breaks a limit or is not what it claims (an SSH key).
    #[error(transparent)]
    Invalid(#[from] crate::validate::Invalid),
    /// No VM has this name.
    #[error("no VM named {name:?}; see `banger vm list`")]
    NotFound { name: String },
    /// A VM of a different spec already has this name.
    #[error(
        "a VM named {name:?} already exists with a different spec; pick another name or `banger vm rm {name}` first"
    )]
    AlreadyExists { name: String },
    /// The VM is in a state that forbids the operation.
    #[error("VM {name} is {state}{}", want.advice(name))]
    WrongState {
        name: String,
        state: VmState,
        want: Want,
    },
    /// The operation needs the guest agent, which the image lacks.
    #[error("image {image} has no banger agent; use `banger vm ssh {name}`")]
    NoAgent { name: String, image: String },
    /// The VM asks for a backend this vmm was not built with.
    #[error("the {backend} backend is not available in this vmm")]
    BackendUnavailable { backend: Backend },

    // ---- the other services ----
    /// Another service answered with an error; its code is passed on.
    #[error("{service}: {message}")]
    Peer {
        service: &'static str,
        code: tonic::Code,
        /// The peer's `ErrorInfo` reason, passed on too.
        reason: Option<&'static str>,
        message: String,
    },

    // ---- the host ----
    /// The state dir's filesystem is full (or would be): what was written
    /// of the VM (or preparation) is removed.
    #[error(
        "{0}; free space there (`banger vm rm` VMs you no longer need, `banger image prune`) and retry"
    )]
    NoSpace(banger_proto::fsutil::NoSpace),
    /// A file operation on the VM's own state failed.
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state dir cannot be used as it is.
    #[error("state dir {path} contains whitespace, which debugfs cannot handle")]
    UnusableStateDir { path: PathBuf },
    /// An external tool (debugfs, resize2fs …) is missing or failed.
    #[error("{tool}: {message}")]
    Tool { tool: String, message: String },
    /// A hypervisor or helper binary is not installed.
    #[error("{program} not found: {hint}")]
    ProgramMissing { program: String, hint: String },
    /// A hypervisor or helper binary could not be started.
    #[error("cannot start {program}: {source}")]
    SpawnFailed {
        program: String,
        source: std::io::Error,
    },
    /// A hypervisor or helper started but did not come up.
    #[error("{program} {reason}")]
    LaunchFailed { program: String, reason: String },
    /// A hypervisor's control API (QMP, Firecracker's API) failed or refused.
    #[error("{api}: {message}")]
    HypervisorApi { api: &'static str, message: String },

    // ---- the guest ----
    /// The VM started but did not boot, or died; with the console's tail.
    #[error("{cause}\n--- last lines of the console ---\n{}", if console_tail.is_empty() { "(nothing on the console)" } else { console_tail })]
    Boot { cause: String, console_tail: String },
    /// The guest agent did not answer before the readiness deadline.
    #[error(transparent)]
    AgentNotReady(HybridVsockError),
    /// SSH in the guest did not answer before the readiness deadline.
    #[error("SSH on {ip}:22 did not answer within {timeout:?} (last: {last})")]
    SshNotReady {
        ip: String,
        timeout: Duration,
        last: String,
    },
    /// A guest with nothing to probe wrote nothing on its console in time.
    #[error("the guest kernel wrote nothing to its console within {timeout:?}")]
    ConsoleSilent { timeout: Duration },
    /// The guest agent cannot be reached.
    #[error("guest agent: {0}")]
    Agent(#[from] HybridVsockError),
    /// The guest agent was reached but a call to it failed.
    #[error("guest agent: {call}: {message}")]
    AgentCall { call: &'static str, message: String },

    /// First boot printed a `Failed` event: the wait ends at once.
    #[error("first boot of VM {vm} failed: {failure}")]
    FirstBootFailed {
        vm: String,
        failure: crate::firstboot::GuestFailure,
    },
    /// The one-off preparation VM of an image did not finish.
    #[error(
        "preparing image {image} for its first boot failed: {why}\nits console log is kept at {}; `banger image prepare {image} --force` tries again",
        log.display()
    )]
    PreparationFailed {
        image: String,
        why: String,
        log: PathBuf,
    },
    /// An image digest that is not `sha256:<hex>` (names a prepared copy).
    #[error("the image digest {digest:?} is not of the form sha256:<hex>")]
    InvalidDigest { digest: String },
    /// A prepared copy cannot be dropped while its preparation runs.
    #[error("image {digest} is being prepared; try again when that has finished")]
    PreparationRunning { digest: String },
    #[error("image {image} needs no preparation: {why}")]
    NothingToPrepare { image: String, why: &'static str },
    /// The caller of a create went away: only it wanted the VM, so the
    /// create stopped and was rolled back (proto/README.md, "Long
    /// operations and cancellation").
    #[error("the create of VM {name} was cancelled: its caller went away")]
    CallerGone { name: String },
    /// A failed create whose console log was kept after the rollback.
    #[error("{source}\nthe console log of this create is kept: `banger vm logs {name}` shows it")]
    EvidenceKept { name: String, source: Box<Error> },

    // ---- bugs ----
    /// A task of the vmm panicked or was cancelled.
    #[error("internal error: the {task} task failed: {source}")]
    TaskFailed {
        task: &'static str,
        source: tokio::task::JoinError,
    },
}

/// What an operation needs of a VM's state, and so what the user can do
/// about [`Error::WrongState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// No create or delete under way.
    Settled,
    /// A running hypervisor.
    Running,
    /// No running hypervisor (or `--force`).
    NotRunning,
}

impl Want {
    /// What follows "VM x is <state>": the advice.
    fn advice(self, name: &str) -> String {
        match self {
            Want::Settled => "; wait for that to finish".into(),
            Want::Running => format!(", not running; start it with `banger vm start {name}`"),
            Want::NotRunning => {
                format!("; stop it first (`banger vm stop {name}`) or use --force")
            }
        }
    }
}

impl Error {
    /// An [`Error::Io`] for `path`; a full disk becomes [`Error::NoSpace`].
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

    /// An [`Error::Tool`].
    pub fn tool(tool: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Tool {
            tool: tool.into(),
            message: message.into(),
        }
    }

    /// An [`Error::TaskFailed`] for the task named `task`.
    pub fn task(task: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Error {
        move |source| Error::TaskFailed { task, source }
    }
}

/// Result of the vmm's domain.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_state_says_what_to_do() {
        let e = |state, want| {
            Error::WrongState {
                name: "box".into(),
                state,
                want,
            }
            .to_string()
        };
        assert_eq!(
            e(VmState::Creating, Want::Settled),
            "VM box is creating; wait for that to finish"
        );
        assert_eq!(
            e(VmState::Stopped, Want::Running),
            "VM box is stopped, not running; start it with `banger vm start box`"
        );
        assert_eq!(
            e(VmState::Running, Want::NotRunning),
            "VM box is running; stop it first (`banger vm stop box`) or use --force"
        );
    }
}
