//! What a test started must end with it, a failing test too: the services,
//! hypervisors and vhost-device-vsock bridges of a test all name its temp
//! home (or state dir) on their command line, so that path finds them.

use std::path::{Path, PathBuf};

/// Pids of the processes (other than this one) whose command line mentions
/// `needle`.
pub fn pids_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    if needle.is_empty() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            (pid != me && cmdline.windows(needle.len()).any(|w| w == needle)).then_some(pid)
        })
        .collect()
}

/// Command lines (NULs as spaces) of the processes mentioning `needle`
/// that also contain one of `programs`, e.g. the hypervisors of a home.
pub fn command_lines_mentioning(needle: &Path, programs: &[&str]) -> Vec<String> {
    pids_mentioning(needle)
        .into_iter()
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| programs.iter().any(|p| c.contains(p)))
        .collect()
}

/// SIGKILLs every process mentioning `needle`; how many it signalled.
pub fn kill_mentioning(needle: &Path) -> usize {
    let pids = pids_mentioning(needle);
    for &pid in &pids {
        kill9(pid);
    }
    pids.len()
}

/// SIGKILL to `pid`, ignoring a process already gone.
pub fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills, when dropped (a panic included), every process mentioning its
/// path. Declare it after the temp dir it names so it drops first.
#[derive(Debug)]
pub struct Sweeper(pub PathBuf);

impl Drop for Sweeper {
    fn drop(&mut self) {
        kill_mentioning(&self.0);
    }
}
