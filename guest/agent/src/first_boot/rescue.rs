//! What happens when first boot fails: the `Failed` event (step, cause,
//! message, excerpt) for the host, `banger-first-boot: FAILED: …` for a
//! human, and then — as PID 1, which must never exit (the kernel would
//! panic) — a rescue shell on the console in a loop, or a sleep forever
//! when the image has no `/bin/sh`. Either way orphans are reaped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use banger_proto::guest::FirstBootEvent;
use nix::sys::wait::{WaitPidFlag, waitpid};

use super::error::FirstBootError;
use super::events::Console;

/// Reports `err` as the failure of `step`.
pub fn report(console: &Console, step: &str, err: &FirstBootError) {
    let cause = err.cause();
    let step = err
        .step()
        .map(str::to_owned)
        .unwrap_or_else(|| step.to_owned());
    console.event(&FirstBootEvent::Failed {
        step: step.clone(),
        cause,
        message: err.to_string(),
        excerpt: err.excerpt(),
    });
    for line in err.excerpt() {
        console.log(format!("  | {line}"));
    }
    console.log(format!("FAILED: {step}: {err}"));
    console.log(format!("hint: {}", cause.hint()));
}

/// The rescue shell loop of PID 1; never returns.
pub fn pid1_loop(console: &Console, shell: PathBuf) -> ! {
    loop {
        if shell.exists() {
            console.log(format!(
                "starting a rescue shell on the console ({}); fix the problem, then reboot",
                shell.display()
            ));
            let console_fd = || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/console")
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::inherit())
            };
            match Command::new(&shell)
                .stdin(console_fd())
                .stdout(console_fd())
                .stderr(console_fd())
                .spawn()
            {
                Ok(mut child) => {
                    let _ = child.wait();
                    console.log("rescue shell exited; starting another");
                }
                Err(e) => console.warn(format!("cannot start {}: {e}", shell.display())),
            }
            reap();
            std::thread::sleep(Duration::from_secs(1));
        } else {
            console.log("no /bin/sh in the image: nothing to rescue with; waiting");
            loop {
                reap();
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    }
}

fn reap() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

/// `--pid1` outside PID 1 (tests): the shell once, then a failure exit.
pub fn once(console: &Console, shell: PathBuf) {
    console.log(format!("starting a rescue shell ({})", shell.display()));
    if let Err(e) = Command::new(&shell).status() {
        console.warn(format!("cannot start {}: {e}", shell.display()));
    }
}
