//! One harness for the CLI tiers: `banger --home H ARGS` with a private
//! user home (banger's SSH key lives in the user's config dir), the built
//! binaries checked once, and the sweep that stops whatever a test left.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The folder of the built binaries: `$BANGER_TEST_BIN_DIR` (a copy, so a
/// concurrent build cannot swap them mid-test), else the one holding
/// `banger_exe` (pass `env!("CARGO_BIN_EXE_banger")`). Panics naming what to
/// build when the services or (with `guest`) the guest bundle are missing.
pub fn bin_dir(banger_exe: &str, guest: bool) -> PathBuf {
    let dir = std::env::var_os("BANGER_TEST_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(banger_exe)
                .parent()
                .expect("the banger binary has a folder")
                .to_path_buf()
        });
    for bin in [
        "banger",
        "banger-kernelcat",
        "banger-imagestore",
        "banger-netd",
        "banger-vmm",
    ] {
        assert!(
            dir.join(bin).is_file(),
            "{bin} missing in {}: run `cargo build --workspace` first (scripts/test.sh does)",
            dir.display()
        );
    }
    if guest {
        assert!(
            dir.join("guest/banger-agent").is_file(),
            "guest bundle missing in {}: run scripts/build-guest.sh (scripts/setup.sh does)",
            dir.join("guest").display()
        );
    }
    dir
}

/// `banger` against one home, as one user.
#[derive(Debug, Clone)]
pub struct Banger {
    /// Where the binaries are ([`bin_dir`]).
    pub bins: PathBuf,
    /// `--home`: config, state, sockets, logs.
    pub home: PathBuf,
    /// `$HOME` and `$XDG_CONFIG_HOME/..` of the user running the CLI.
    pub user_home: PathBuf,
    /// Extra environment for every command (and the services `up` starts).
    pub env: Vec<(String, String)>,
}

impl Banger {
    /// A harness with no extra environment.
    pub fn new(bins: PathBuf, home: PathBuf, user_home: PathBuf) -> Banger {
        Banger {
            bins,
            home,
            user_home,
            env: Vec::new(),
        }
    }

    /// Adds `key=value` to every command's environment.
    pub fn with_env(mut self, key: &str, value: &str) -> Banger {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The command, not yet run (stdin closed).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bins.join("banger"));
        cmd.arg("--home")
            .arg(&self.home)
            .args(args)
            .env_remove("BANGER_HOME")
            .env("HOME", &self.user_home)
            .env("XDG_CONFIG_HOME", self.user_home.join(".config"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs it, echoing the command, its status and its output.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().expect("run banger");
        eprintln!(
            "$ banger {} → {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Prints the end of every hypervisor log vmm kept for a failed create
    /// (`$STATE/vms/.failed/*/hypervisor.log`): QEMU's and
    /// vhost-device-vsock's own words, gone with the home once the test ends.
    pub fn print_failed_hypervisor_logs(&self) {
        let failed = self.home.join("state/vms/.failed");
        for dir in std::fs::read_dir(&failed).into_iter().flatten().flatten() {
            let log = dir.path().join("hypervisor.log");
            if let Ok(text) = std::fs::read(&log) {
                let text = String::from_utf8_lossy(&text);
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {} (last {} lines) ---\n{}",
                    log.display(),
                    lines.len().min(40),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
    }

    /// Runs it, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            self.print_failed_hypervisor_logs();
        }
        assert!(
            out.status.success(),
            "banger {args:?} failed ({}); logs under {}",
            out.status,
            self.home.display()
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// `--json ARGS`, parsed; quiet on success (leak checks and monitors
    /// call it often), loud on failure.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.cmd(&full).output().expect("run banger");
        assert!(
            out.status.success(),
            "banger {full:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// The pid in `run/<service>.pid`, if any.
    pub fn pid_of(&self, service: &str) -> Option<i32> {
        std::fs::read_to_string(self.home.join(format!("run/{service}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops the VMs and services of the home, then SIGKILLs whatever still
    /// names it (a vmm that does not answer cannot stop its VMs). After a
    /// panic, first prints the last lines of each service log: the home
    /// goes with the test.
    pub fn sweep(&self) {
        if std::thread::panicking() {
            let logs = self.home.join("state/logs");
            for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- last lines of {} ---\n{}",
                    entry.path().display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
        }
        let _ = self.cmd(&["down", "--stop-vms", "--timeout", "5"]).output();
        crate::procs::kill_mentioning(&self.home);
    }
}

/// Sweeps its harness ([`Banger::sweep`]) when dropped, however the test
/// ends.
#[derive(Debug)]
pub struct Down(pub Banger);

impl Drop for Down {
    fn drop(&mut self) {
        self.0.sweep();
    }
}

/// stdout then stderr of an output, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
