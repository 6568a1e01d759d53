//! Hypervisor backends behind one trait, and the process plumbing they share.
//!
//! A backend starts a VM's processes (each in its own process group, so a
//! vmm restart or a Ctrl-C on `banger up` does not take them down), asks a
//! running VM to stop, and cleans up what it made. Supervision (waiting for
//! exit, killing after a timeout, adopting after a vmm restart) is generic
//! and lives here and in the manager: a pid plus a check that its command
//! line names this VM's run dir is enough to recognise our processes.

pub mod firecracker;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Backend, BackendSetting};
use crate::error::{Error, Result};
use crate::record::VmPaths;

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// VM id (Firecracker's `--id`, vsock bookkeeping).
    pub id: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub disk: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Tap device (owned by the vmm's user) and guest MAC, if networked.
    pub net: Option<(String, String)>,
    /// Give the guest a vsock device reachable at `paths.vsock()`.
    pub vsock: bool,
    pub paths: VmPaths,
}

/// A started VM.
#[derive(Debug)]
pub struct Launched {
    pub pid: u32,
    /// vhost-device-vsock under QEMU.
    pub helper_pid: Option<u32>,
    /// `kvm` / `tcg` under QEMU.
    pub accel: Option<String>,
    /// The hypervisor process, for the supervisor to wait on.
    pub child: tokio::process::Child,
}

/// One hypervisor backend.
#[tonic::async_trait]
pub trait Hypervisor: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Whether boots on this backend are emulated (TCG) and so need
    /// `tsc_early_khz=` on the command line.
    fn emulated(&self) -> bool;

    /// Starts the VM. On error, everything it started is gone again.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched>;

    /// Asks the running VM to shut down (QMP `system_powerdown`,
    /// Firecracker `SendCtrlAltDel`); returns once asked, not once stopped.
    async fn request_stop(&self, paths: &VmPaths) -> Result<()>;

    /// Whether this backend can boot guests on this host, as probed when
    /// the vmm started: its version line, or why not. `auto` picks by it.
    fn availability(&self) -> Availability {
        Ok(String::new())
    }

    /// The accelerator its VMs run on and why.
    fn accelerator(&self) -> AccelChoice {
        AccelChoice {
            name: if self.emulated() { "tcg" } else { "kvm" },
            why: String::new(),
        }
    }
}

/// A backend's [`Hypervisor::availability`]: `Ok(version line)` or
/// `Err(why it cannot boot guests here)`.
pub type Availability = std::result::Result<String, String>;

/// Which accelerator a backend's VMs run on (`kvm`, `tcg`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub name: &'static str,
    pub why: String,
}

/// Which backend a VM gets by default, and why (shown by `vm create`,
/// `vm show` and `banger doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    pub backend: Backend,
    pub why: String,
}

/// Resolves `[vmm] hypervisor` against the backends this vmm has and what
/// they report about this host: `auto` takes Firecracker when its binary
/// starts and KVM runs guests, else QEMU (which picks KVM or TCG itself).
/// An explicit setting is taken as given; a backend that cannot run then
/// fails at launch with its own error.
pub fn choose(setting: BackendSetting, backends: &[&dyn Hypervisor]) -> BackendChoice {
    let find = |b: Backend| backends.iter().find(|h| h.backend() == b);
    match setting {
        BackendSetting::Firecracker => BackendChoice {
            backend: Backend::Firecracker,
            why: "[vmm] hypervisor = \"firecracker\"".into(),
        },
        BackendSetting::Qemu => BackendChoice {
            backend: Backend::Qemu,
            why: "[vmm] hypervisor = \"qemu\"".into(),
        },
        BackendSetting::Auto => match find(Backend::Firecracker).map(|f| f.availability()) {
            Some(Ok(version)) => BackendChoice {
                backend: Backend::Firecracker,
                why: format!("auto: {} starts and /dev/kvm runs guests", version.trim()),
            },
            Some(Err(why)) => BackendChoice {
                backend: Backend::Qemu,
                why: format!("auto: not Firecracker because {why}"),
            },
            None => BackendChoice {
                backend: Backend::Qemu,
                why: "auto: this vmm has no Firecracker backend".into(),
            },
        },
    }
}

/// Runs `program --version` (5 s at most) to prove the binary exists and
/// starts: `Ok(first line)`, or `Err` naming the program and what failed.
pub fn probe_binary(program: &str) -> Availability {
    use std::io::Read;
    let mut child = match std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{program} is not installed (not found)"));
        }
        Err(e) => return Err(format!("{program} exists but cannot be started: {e}")),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{program} --version did not finish within 5 s"));
            }
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    let _ = child.stdout.take().map(|mut o| o.read_to_string(&mut out));
    let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    let first = |t: &str| t.lines().next().unwrap_or_default().trim().to_owned();
    if status.success() && !first(&out).is_empty() {
        Ok(first(&out))
    } else {
        Err(format!(
            "{program} exists but fails to start ({status}): {}",
            if first(&err).is_empty() {
                first(&out)
            } else {
                first(&err)
            }
        ))
    }
}

/// Removes what a VM's processes leave behind after they are gone: the
/// helper (killed by pid if still ours) and every socket in the run dir,
/// including vhost-device-vsock's `<uds>_<port>` listeners.
pub fn cleanup_after_exit(paths: &VmPaths, helper_pid: Option<u32>) {
    if let Some(pid) = helper_pid
        && is_ours(pid, paths)
    {
        kill(pid);
    }
    // A vmm that died between spawning a process and recording its pid
    // left it unrecorded; every process naming this VM's run dir is ours.
    for pid in processes_naming(&paths.run) {
        tracing::warn!(pid, run = %paths.run.display(), "killing an unrecorded process of this VM");
        kill(pid);
    }
    if let Ok(entries) = std::fs::read_dir(&paths.run) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(&paths.run);
}

/// Whether `pid` is a live (not zombie) process whose command line names
/// this VM's run dir: the check that makes adoption after a restart safe
/// against pid reuse.
pub fn is_ours(pid: u32, paths: &VmPaths) -> bool {
    pid_alive(pid) && cmdline_contains(pid, &paths.run)
}

/// Live processes (other than this one) whose command line names `dir`.
fn processes_naming(dir: &Path) -> Vec<u32> {
    processes_with(dir)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// Live processes (other than this one) whose command line names `dir`
/// (as a directory: with the separator, so `<id>` never matches a longer
/// id), with that command line.
fn processes_with(dir: &Path) -> Vec<(u32, Vec<u8>)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = dir.join("");
    let needle = needle.as_os_str().as_encoded_bytes();
    if needle.len() <= 1 {
        return Vec::new();
    }
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && pid_alive(pid))
        .filter_map(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            c.windows(needle.len())
                .any(|w| w == needle)
                .then_some((pid, c))
        })
        .collect()
}

/// A live process of some VM: its command line names a run dir under
/// the vmm's `$RUN/vmm` (every hypervisor and helper of ours does). How
/// a VM whose record is gone is still found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmProcess {
    pub pid: u32,
    /// The run dir's name: the VM's id.
    pub id: String,
    /// `/proc/<pid>/comm`: which program it is.
    pub comm: String,
    /// NUL-separated, as in `/proc/<pid>/cmdline`.
    pub cmdline: Vec<u8>,
}

impl VmProcess {
    /// A hypervisor (not a helper such as vhost-device-vsock).
    pub fn is_hypervisor(&self) -> bool {
        self.comm == "firecracker" || self.comm.starts_with("qemu-system")
    }

    /// The first path component after `dir/` in the command line (e.g. the
    /// VM name after `$STATE/vms/`), if any.
    pub fn component_after(&self, dir: &Path) -> Option<String> {
        component_after(&self.cmdline, dir)
    }
}

fn component_after(cmdline: &[u8], dir: &Path) -> Option<String> {
    let needle = dir.join("");
    let needle = needle.as_os_str().as_encoded_bytes();
    let at = cmdline.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let rest = &cmdline[at..];
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == 0 || b == b',' || b == b' ')
        .unwrap_or(rest.len());
    let part = std::str::from_utf8(&rest[..end]).ok()?;
    (!part.is_empty()).then(|| part.to_owned())
}

/// Every live process naming a run dir under `run_root`.
pub fn vm_processes(run_root: &Path) -> Vec<VmProcess> {
    processes_with(run_root)
        .into_iter()
        .filter_map(|(pid, cmdline)| {
            let id = component_after(&cmdline, run_root)?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            Some(VmProcess {
                pid,
                id,
                comm,
                cmdline,
            })
        })
        .collect()
}

pub use banger_proto::host::pid_alive;

fn cmdline_contains(pid: u32, needle: &Path) -> bool {
    // Right after a spawn the kernel can briefly report an empty command
    // line for the new process (observed with QEMU); give it a moment.
    let mut cmdline = Vec::new();
    for _ in 0..100 {
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(c) if !c.is_empty() => {
                cmdline = c;
                break;
            }
            Ok(_) if pid_alive(pid) => std::thread::sleep(std::time::Duration::from_millis(10)),
            _ => return false,
        }
    }
    let needle = needle.as_os_str().as_encoded_bytes();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// SIGKILL to `pid`, ignoring a process that is already gone.
pub fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Polls until `pid` is gone (or a zombie) or `timeout` passes.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !pid_alive(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until a child listens on the unix socket `path`, failing early if
/// the child exits. The file appears at bind(), before listen(): dialing in
/// between is refused, so we watch `/proc/net/unix` for the listening flag
/// rather than probing (vhost-device-vsock serves exactly one connection).
pub(crate) async fn wait_for_socket(
    path: &Path,
    child: &mut tokio::process::Child,
    what: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if is_listening(path) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::LaunchFailed {
                program: what.into(),
                reason: format!("exited ({status}) before creating {}", path.display()),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::LaunchFailed {
                program: what.into(),
                reason: format!("did not create {} within {timeout:?}", path.display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether some process listens on the unix socket at `path`.
fn is_listening(path: &Path) -> bool {
    const SO_ACCEPTCON: &str = "00010000";
    // thread-self: /proc/net follows the process's main thread, which may
    // sit in another network namespace than this thread (tests use netns
    // threads), and unix sockets are listed per namespace.
    let Ok(table) = std::fs::read_to_string("/proc/thread-self/net/unix") else {
        return path.exists();
    };
    let path = path.to_string_lossy();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8 && fields[3] == SO_ACCEPTCON && fields[7..].join(" ") == path
    })
}

/// A command that runs in its own process group, with stdin closed, so it
/// outlives the vmm and never reads the vmm's terminal.
pub(crate) fn detached(program: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    cmd.process_group(0).stdin(std::process::Stdio::null());
    cmd
}

/// Spawns `cmd`, mapping a missing binary to an install hint.
pub(crate) fn spawn(
    cmd: std::process::Command,
    install_hint: &str,
) -> Result<tokio::process::Child> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::ProgramMissing {
                program,
                hint: install_hint.into(),
            }
        } else {
            Error::SpawnFailed { program, source: e }
        }
    })
}

/// Opens (appending) the console log a hypervisor writes to.
pub(crate) fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io("cannot open console log", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_checks() {
        let me = std::process::id();
        assert!(pid_alive(me));
        assert!(cmdline_contains(me, Path::new("banger_vmm")));
        assert!(!cmdline_contains(me, Path::new("/no/such/vm/dir")));
        assert!(!pid_alive(u32::MAX - 1));
    }

    #[tokio::test]
    async fn detached_child_has_its_own_group_and_is_reaped_as_dead() {
        let mut cmd = detached("sleep");
        cmd.arg("30");
        let mut child = spawn(cmd, "coreutils").unwrap();
        let pid = child.id().unwrap();
        let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
        assert_eq!(pgid.as_raw(), pid as i32, "not in its own process group");
        assert!(pid_alive(pid));
        kill(pid);
        // A zombie counts as gone even before it is reaped.
        assert!(wait_gone(pid, Duration::from_secs(5)).await);
        child.wait().await.unwrap();
    }

    #[test]
    fn listening_sockets_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sock");
        assert!(!is_listening(&path));
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(is_listening(&path));
    }

    #[test]
    fn binaries_that_fail_to_start_are_named() {
        let err = probe_binary("/no/such/firecracker").unwrap_err();
        assert!(
            err.contains("/no/such/firecracker is not installed"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let broken = dir.path().join("firecracker");
        std::fs::write(
            &broken,
            "#!/bin/sh\necho 'cannot load libfoo' >&2\nexit 127\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = probe_binary(broken.to_str().unwrap()).unwrap_err();
        assert!(
            err.contains("exists but fails to start") && err.contains("cannot load libfoo"),
            "{err}"
        );
        let not_exec = dir.path().join("qemu");
        std::fs::write(&not_exec, "x").unwrap();
        let err = probe_binary(not_exec.to_str().unwrap()).unwrap_err();
        assert!(err.contains("cannot be started"), "{err}");
        let silent = dir.path().join("silent");
        std::fs::write(&silent, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&silent, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            probe_binary(silent.to_str().unwrap()).is_err(),
            "no version line"
        );
    }

    #[derive(Debug)]
    struct Fake(Backend, Availability);

    #[tonic::async_trait]
    impl Hypervisor for Fake {
        fn backend(&self) -> Backend {
            self.0
        }
        fn emulated(&self) -> bool {
            false
        }
        async fn launch(&self, _: &LaunchSpec) -> Result<Launched> {
            unreachable!()
        }
        async fn request_stop(&self, _: &VmPaths) -> Result<()> {
            Ok(())
        }
        fn availability(&self) -> Availability {
            self.1.clone()
        }
    }

    #[test]
    fn auto_prefers_a_working_firecracker() {
        let qemu = Fake(Backend::Qemu, Ok("QEMU emulator version 10".into()));
        let fc_ok = Fake(Backend::Firecracker, Ok("Firecracker v1.10.1".into()));
        let fc_pvm = Fake(
            Backend::Firecracker,
            Err("/dev/kvm is kvm_pvm, which cannot run unmodified guest kernels".into()),
        );
        let c = choose(BackendSetting::Auto, &[&qemu, &fc_ok]);
        assert_eq!(c.backend, Backend::Firecracker);
        assert!(c.why.contains("Firecracker v1.10.1"), "{}", c.why);
        let c = choose(BackendSetting::Auto, &[&qemu, &fc_pvm]);
        assert_eq!(c.backend, Backend::Qemu);
        assert!(c.why.contains("kvm_pvm"), "{}", c.why);
        let c = choose(BackendSetting::Auto, &[&qemu]);
        assert_eq!(c.backend, Backend::Qemu);
        // Explicit settings are taken as given, even when unavailable.
        let c = choose(BackendSetting::Firecracker, &[&qemu, &fc_pvm]);
        assert_eq!(c.backend, Backend::Firecracker);
        assert!(c.why.contains("hypervisor = \"firecracker\""));
        assert_eq!(
            choose(BackendSetting::Qemu, &[&qemu, &fc_ok]).backend,
            Backend::Qemu
        );
    }

    #[test]
    fn missing_binary_says_what_to_install() {
        let err = spawn(detached("/no/such/qemu"), "apt-get install qemu-system-x86").unwrap_err();
        assert!(
            err.to_string().contains("apt-get install qemu-system-x86"),
            "{err}"
        );
    }
}
