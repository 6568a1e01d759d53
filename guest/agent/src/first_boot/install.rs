//! Running the package manager: find it in the image, check the image is
//! for this CPU, run update + install with the table's quiet flags, stream
//! the output to the console (as `banger-first-boot: apt-get: …` lines),
//! turn apt's status lines into `Progress` events, and on failure read the
//! cause and an excerpt from the output.

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use banger_proto::guest::{FailureCause, FirstBootEvent};

use super::classify::{self, clean_line, parse_status};
use super::distro::{self, Manager, PATH_DIRS};
use super::error::FirstBootError;
use super::events::Console;
use super::root::Root;

/// Output lines kept for classification and the excerpt.
const KEEP_LINES: usize = 400;

/// Where `program` is in the image (a guest path), if anywhere.
pub fn find_program(root: &Root, program: &str) -> Option<String> {
    PATH_DIRS
        .iter()
        .map(|d| format!("{d}/{program}"))
        .find(|p| root.is_executable(p))
}

/// The first of the family's managers present in the image.
pub fn find_manager(root: &Root, managers: &'static [Manager]) -> Option<(Manager, String)> {
    managers
        .iter()
        .find_map(|m| find_program(root, m.program).map(|p| (*m, p)))
}

/// ELF `e_machine` values first boot can name.
fn machine_name(m: u16) -> String {
    match m {
        3 => "i386".into(),
        40 => "arm".into(),
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        243 => "riscv64".into(),
        21 => "ppc64".into(),
        22 => "s390x".into(),
        other => format!("ELF machine {other}"),
    }
}

/// This binary's own `e_machine` (it runs on the kernel, so it is the
/// kernel's architecture).
fn own_machine() -> u16 {
    match std::env::consts::ARCH {
        "x86_64" => 62,
        "aarch64" => 183,
        "riscv64" => 243,
        "x86" => 3,
        "arm" => 40,
        _ => 0,
    }
}

/// The `e_machine` of an ELF file's header, if it is ELF.
pub fn elf_machine(header: &[u8]) -> Option<u16> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    let bytes = [header[18], header[19]];
    Some(match header[5] {
        2 => u16::from_be_bytes(bytes),
        _ => u16::from_le_bytes(bytes),
    })
}

/// Refuses an image whose `program` is an ELF for another CPU.
pub fn check_architecture(root: &Root, program: &str) -> Result<(), FirstBootError> {
    let path = root.resolve(program);
    let Ok(mut file) = std::fs::File::open(&path) else {
        return Ok(());
    };
    let mut header = [0u8; 20];
    use std::io::Read as _;
    if file.read_exact(&mut header).is_err() {
        return Ok(());
    }
    let own = own_machine();
    match elf_machine(&header) {
        Some(m) if own != 0 && m != own => Err(FirstBootError::WrongArchitecture {
            path: program.into(),
            image: machine_name(m),
            kernel: machine_name(own),
        }),
        _ => Ok(()),
    }
}

/// How to run the manager's commands.
#[derive(Debug)]
pub struct Runner<'a> {
    pub root: &'a Root,
    pub console: &'a Console,
    pub manager: Manager,
    /// The program's guest path.
    pub program: String,
    /// Extra environment (proxy).
    pub env: Vec<(String, String)>,
}

impl Runner<'_> {
    /// Runs `argv` (argv[0] is the manager's program) as step `step`
    /// (reported as `<manager> <step>`, e.g. `apt update`).
    pub fn run(&self, step: &str, argv: &[String]) -> Result<(), FirstBootError> {
        let command_line = argv.join(" ");
        self.console.log(format!("running {command_line}"));
        let program = self.root.resolve(&self.program);
        let mut cmd = Command::new(&program);
        cmd.args(&argv[1..])
            .env("PATH", distro::PATH)
            .envs(self.manager.env.iter().copied())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| spawn_error(&self.manager, &command_line, e))?;
        let (tx, rx) = mpsc::channel::<String>();
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                    buf.clear();
                }
            }));
        }
        drop(tx);
        let mut kept: VecDeque<String> = VecDeque::new();
        let mut progress = Progress::default();
        let tool = self.manager.program;
        for raw in rx {
            let line = clean_line(&raw);
            if line.is_empty() {
                continue;
            }
            if self.manager.status_lines
                && let Some(status) = parse_status(&line)
            {
                if let Some(event) = progress.next(&status) {
                    self.console.event(&event);
                }
                continue;
            }
            self.console.log(format!("{tool}: {line}"));
            if kept.len() == KEEP_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        }
        for r in readers {
            let _ = r.join();
        }
        let status = child
            .wait()
            .map_err(|e| spawn_error(&self.manager, &command_line, e))?;
        if status.success() {
            return Ok(());
        }
        let lines: Vec<String> = kept.into_iter().collect();
        let cause = match status.code() {
            // The shell's "not found" / "cannot execute" when the manager
            // is a script whose interpreter is missing.
            Some(127) | Some(126) if classify::classify(&lines) == FailureCause::Other => {
                FailureCause::NoPackageManager
            }
            _ => classify::classify(&lines),
        };
        let excerpt = classify::excerpt(&lines);
        Err(FirstBootError::Command {
            step: format!("{} {step}", self.manager.name),
            command: command_line,
            status: status.to_string(),
            cause,
            summary: classify::summary(&excerpt, cause),
            excerpt,
        })
    }
}

fn spawn_error(manager: &Manager, command: &str, e: std::io::Error) -> FirstBootError {
    if e.raw_os_error() == Some(libc::ENOEXEC) {
        return FirstBootError::WrongArchitecture {
            path: command.split(' ').next().unwrap_or("").into(),
            image: "another architecture (exec format error)".into(),
            kernel: std::env::consts::ARCH.into(),
        };
    }
    FirstBootError::NoPackageManager {
        manager: manager.name.into(),
        detail: format!("cannot run `{command}`: {e}"),
    }
}

/// Turns status lines into few enough `Progress` events for a serial
/// console: the first line of each step, then every 5 more percent (dpkg
/// interleaves unpack and configure lines, which must not each count).
#[derive(Debug, Default)]
struct Progress {
    seen: Vec<&'static str>,
    last: i64,
}

impl Progress {
    fn next(&mut self, status: &classify::Status) -> Option<FirstBootEvent> {
        let pct = status.percent.floor() as i64;
        let new_step = !self.seen.contains(&status.step);
        let advanced = pct >= self.last + 5 || (pct == 100 && self.last < 100);
        if !new_step && !advanced {
            return None;
        }
        if new_step {
            self.seen.push(status.step);
        }
        self.last = pct;
        Some(FirstBootEvent::Progress {
            step: status.step.into(),
            done: pct as u64,
            total: 100,
            detail: status.detail.clone(),
        })
    }
}

/// Update, then install `packages`, reporting `Installing`, `Progress`,
/// `Installed`.
pub fn install(runner: &Runner<'_>, packages: &[String]) -> Result<(), FirstBootError> {
    let console = runner.console;
    console.event(&FirstBootEvent::Installing {
        manager: runner.manager.name.into(),
        packages: packages.to_vec(),
    });
    let started = Instant::now();
    let argv = |base: &[&str]| -> Vec<String> { base.iter().map(|s| s.to_string()).collect() };
    let update_progress = |done| FirstBootEvent::Progress {
        step: "update".into(),
        done,
        total: 1,
        detail: String::new(),
    };
    if !runner.manager.update.is_empty() {
        // The index refresh has no status lines: its start and end are the progress.
        console.event(&update_progress(0));
        let update = argv(runner.manager.update);
        match runner.run("update", &update) {
            // apt before 2.1 (Ubuntu 20.04) lacks --error-on.
            Err(FirstBootError::Command { excerpt, .. })
                if excerpt.iter().any(|l| l.contains("error-on")) =>
            {
                let older: Vec<String> = update
                    .into_iter()
                    .filter(|a| a != "--error-on=any")
                    .collect();
                runner.run("update", &older)?;
            }
            other => other?,
        }
        console.event(&update_progress(1));
    }
    let mut install = argv(runner.manager.install);
    install.extend(packages.iter().cloned());
    runner.run("install", &install)?;
    let seconds = started.elapsed().as_secs();
    console.log(format!(
        "{} installed {} in {seconds} s",
        runner.manager.name,
        packages.join(" ")
    ));
    console.event(&FirstBootEvent::Installed {
        packages: packages.to_vec(),
        seconds,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_headers_name_their_machine() {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        h[18] = 183;
        assert_eq!(elf_machine(&h), Some(183));
        h[18] = 62;
        assert_eq!(elf_machine(&h), Some(62));
        assert_eq!(elf_machine(b"#!/bin/sh\n0123456789"), None);
    }

    #[test]
    fn an_image_for_another_cpu_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        let other = if own_machine() == 183 { 62 } else { 183 };
        h[18..20].copy_from_slice(&u16::to_le_bytes(other));
        std::fs::write(dir.path().join("bin/sh"), &h).unwrap();
        let root = Root::new(dir.path());
        let err = check_architecture(&root, "/bin/sh").unwrap_err();
        assert_eq!(err.cause(), FailureCause::WrongArchitecture);
        h[18..20].copy_from_slice(&u16::to_le_bytes(own_machine()));
        std::fs::write(dir.path().join("bin/sh"), &h).unwrap();
        check_architecture(&root, "/bin/sh").unwrap();
        // Our own binary is, of course, ours.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_machine(&me), Some(own_machine()));
    }

    #[test]
    fn progress_is_throttled() {
        let mut p = Progress::default();
        let s = |step, percent: f64| classify::Status {
            step,
            percent,
            detail: String::new(),
        };
        let events: Vec<_> = [
            s("download", 0.0),
            s("download", 1.0),
            s("download", 6.0),
            s("unpack", 6.5),
            s("unpack", 7.0),
            s("configure", 8.0),
            s("unpack", 9.0),
            s("configure", 10.0),
            s("unpack", 11.5),
            s("configure", 99.0),
            s("configure", 100.0),
            s("configure", 100.0),
        ]
        .iter()
        .filter_map(|st| p.next(st))
        .map(|e| match e {
            FirstBootEvent::Progress { step, done, .. } => format!("{step}:{done}"),
            _ => unreachable!(),
        })
        .collect();
        assert_eq!(
            events,
            [
                "download:0",
                "download:6",
                "unpack:6",
                "configure:8",
                "configure:99",
                "configure:100"
            ]
        );
    }
}
