//! The minimal PID 1 for images with no init and nothing to install one
//! with (busybox, scratch-like): start `/usr/local/bin/banger-agent`,
//! restart it when it dies, reap every orphan, and on SIGTERM, SIGPWR,
//! SIGINT (ctrl-alt-del), SIGUSR1/SIGUSR2 (busybox `halt`/`poweroff`) stop
//! the children, sync and power off. The agent's own Shutdown powers off
//! directly (sync + reboot(2), see `power.rs`), which needs nothing from here.
//!
//! Signals are blocked and taken synchronously with `sigtimedwait`-style
//! waiting (nix `SigSet::wait`), so there are no handlers and no unsafe code;
//! std's spawn resets the children's signal mask.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use banger_proto::guest::{AGENT_PATH, FirstBootEvent};

use super::error::{FirstBootError, io};
use super::events::Console;
use super::root::Root;

/// Quickest restart of a crashing agent.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// Signals that end the VM.
const STOP: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGPWR,
    Signal::SIGINT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn spawn_agent(root: &Root) -> Result<Child, FirstBootError> {
    Command::new(root.resolve(AGENT_PATH))
        .env("PATH", super::distro::PATH)
        .spawn()
        .map_err(io("cannot start", AGENT_PATH))
}

/// Supervises the agent until a stop signal; then powers off. Returns only
/// when powering off failed (or, outside a VM, after the stop).
pub fn run(root: &Root, console: &Console) -> Result<(), FirstBootError> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    signals.add(Signal::SIGALRM);
    for s in STOP {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        console.warn(format!("cannot block signals: {e}"));
    }
    let mut agent = match spawn_agent(root) {
        Ok(c) => Some(c),
        Err(e) => return Err(e),
    };
    let mut started = Instant::now();
    console.log(format!(
        "supervising {AGENT_PATH} (pid {})",
        agent.as_ref().map_or(0, Child::id)
    ));
    loop {
        let sig = match signals.wait() {
            Ok(s) => s,
            Err(e) => {
                console.warn(format!("sigwait: {e}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if STOP.contains(&sig) {
            console.log(format!("{sig:?}: stopping and powering off"));
            if let Some(mut a) = agent.take() {
                // Bounded: the agent's graceful stop waits for open
                // connections (the host's channel), which may never close.
                let _ = nix::sys::signal::kill(Pid::from_raw(a.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(3);
                while matches!(a.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = a.kill();
                let _ = a.wait();
            }
            return power_off(root, console, None);
        }
        // SIGCHLD (or the restart alarm): reap everything that exited.
        let agent_pid = agent.as_ref().map(|c| Pid::from_raw(c.id() as i32));
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == agent_pid {
                        console.warn(format!("banger-agent ended ({status:?}); restarting it"));
                        agent = None;
                    }
                }
            }
        }
        if agent.is_none() {
            let since = started.elapsed();
            if since < RESTART_BACKOFF {
                // Come back when the backoff is over.
                let wait = (RESTART_BACKOFF - since).as_secs().max(1);
                let _ = nix::unistd::alarm::set(wait as u32);
                continue;
            }
            match spawn_agent(root) {
                Ok(c) => {
                    started = Instant::now();
                    agent = Some(c);
                }
                Err(e) => {
                    console.warn(format!("{e}; retrying"));
                    started = Instant::now();
                    let _ = nix::unistd::alarm::set(1);
                }
            }
        }
    }
}

/// SIGTERM to every process, a moment to exit, SIGKILL, sync, `/`
/// remounted read-only, then `last` (the `Prepared` event: printed only
/// once the disk is final, so a host that stops the VM when it reads it
/// loses nothing), then power off. Outside a VM (a test root, not PID 1)
/// it syncs, prints `last` and returns.
///
/// The read-only remount matters: reboot(2) does not unmount, and an ext4
/// left with a journal to replay would, at its next mount, replay it over
/// whatever the host wrote into the image meanwhile (vmm writes each VM's
/// identity with debugfs, which does not replay journals).
pub fn power_off(
    root: &Root,
    console: &Console,
    last: Option<&FirstBootEvent>,
) -> Result<(), FirstBootError> {
    let for_real = root.is_system() && std::process::id() == 1;
    if for_real {
        let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Err(nix::Error::ECHILD) => break,
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(50)),
                _ => {}
            }
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
        while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if s == WaitStatus::StillAlive {
                break;
            }
        }
    }
    nix::unistd::sync();
    if for_real {
        let ro = nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        );
        match ro {
            Ok(()) => console.log("remounted / read-only"),
            Err(e) => console.warn(format!(
                "cannot remount / read-only ({e}); the journal may need replaying"
            )),
        }
        nix::unistd::sync();
    }
    if let Some(event) = last {
        console.event(event);
    }
    if !for_real {
        console.log("not PID 1 of a VM: exiting instead of powering off");
        return Ok(());
    }
    console.log("powering off");
    // reboot(2) returns only on failure.
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
        Err(e) => Err(FirstBootError::PowerOff(e)),
        Ok(never) => match never {},
    }
}
