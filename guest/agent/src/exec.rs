//! Running one command for Exec: spawn it in its own process group, pump
//! stdin in and stdout/stderr out as they come, and report how it ended.
//!
//! The command gets its own process group so a timeout (or a client that
//! goes away) kills everything it started, not just the leader.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::AgentError;

/// PATH for commands when neither the agent nor the request has one (an
/// agent started by a bare init may run with an empty environment).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Size of one output chunk sent to the client.
const CHUNK: usize = 32 * 1024;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// Program (looked up in PATH) and arguments.
    pub argv: Vec<String>,
    /// Variables added to the agent's environment.
    pub env: HashMap<String, String>,
    /// Working directory; `/` when `None`.
    pub cwd: Option<PathBuf>,
    /// Kill the process group after this long.
    pub timeout: Option<Duration>,
    /// Whether stdin comes from the client (else /dev/null).
    pub stdin: bool,
}

/// Client → command.
#[derive(Debug)]
pub enum Input {
    /// Bytes for stdin.
    Data(Bytes),
    /// Close stdin (EOF).
    Close,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// Command → client.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// A chunk of stdout.
    Stdout(Bytes),
    /// A chunk of stderr.
    Stderr(Bytes),
    /// Always the last message.
    Exit {
        /// How it ended.
        termination: Termination,
        /// Whether the timeout killed it.
        timed_out: bool,
    },
}

/// Spawns the command now (so a bad program fails the RPC itself) and
/// returns the stream of its output, which ends with [`Output::Exit`].
/// Dropping the returned receiver kills the process group.
pub fn spawn(
    spec: ExecSpec,
    input: mpsc::Receiver<Input>,
) -> Result<mpsc::Receiver<Output>, AgentError> {
    let program = spec.argv.first().cloned().ok_or(AgentError::EmptyArgv)?;
    let cwd = spec.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
    let mut cmd = Command::new(&program);
    cmd.args(&spec.argv[1..])
        .current_dir(&cwd)
        .stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if std::env::var_os("PATH").is_none() && !spec.env.contains_key("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(&spec.env);
    let mut child = cmd.spawn().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound && cwd.is_dir() {
            AgentError::ProgramNotFound {
                program: program.clone(),
            }
        } else {
            AgentError::Spawn {
                program: program.clone(),
                cwd: cwd.display().to_string(),
                source,
            }
        }
    })?;
    let pgid = child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    tracing::debug!(?program, pid = ?pgid, "command started");

    let (tx, rx) = mpsc::channel(16);
    if let Some(stdin) = child.stdin.take() {
        tokio::spawn(pump_stdin(stdin, input));
    }
    let stdout = child.stdout.take().map(|r| {
        let tx = tx.clone();
        tokio::spawn(pump_output(r, tx, Output::Stdout))
    });
    let stderr = child.stderr.take().map(|r| {
        let tx = tx.clone();
        tokio::spawn(pump_output(r, tx, Output::Stderr))
    });

    tokio::spawn(async move {
        let kill_group = || {
            if let Some(pgid) = pgid {
                // The group may already be gone; nothing to do then.
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
        };
        let deadline = async {
            match spec.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let mut timed_out = false;
        let status = tokio::select! {
            status = child.wait() => status,
            () = deadline => {
                timed_out = true;
                kill_group();
                child.wait().await
            }
            () = tx.closed() => {
                tracing::debug!("client went away; killing the command");
                kill_group();
                child.wait().await
            }
        };
        // All output first, then the exit: the client sees everything the
        // command wrote before learning that it ended.
        for pump in [stdout, stderr].into_iter().flatten() {
            let _ = pump.await;
        }
        let termination = match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) => Termination::Code(code),
                (None, Some(sig)) => Termination::Signal(sig),
                (None, None) => Termination::Code(-1),
            },
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the command failed");
                Termination::Code(-1)
            }
        };
        let _ = tx
            .send(Output::Exit {
                termination,
                timed_out,
            })
            .await;
    });
    Ok(rx)
}

async fn pump_stdin(mut stdin: tokio::process::ChildStdin, mut input: mpsc::Receiver<Input>) {
    while let Some(part) = input.recv().await {
        match part {
            Input::Data(bytes) => {
                if stdin.write_all(&bytes).await.is_err() {
                    break; // the command closed its stdin
                }
            }
            Input::Close => break,
        }
    }
    // Dropping stdin closes the pipe: the command sees EOF.
}

async fn pump_output(
    mut reader: impl AsyncRead + Unpin,
    tx: mpsc::Sender<Output>,
    wrap: fn(Bytes) -> Output,
) {
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if tx.send(wrap(buf.split().freeze())).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(spec: ExecSpec, stdin: &[Input]) -> (Vec<u8>, Vec<u8>, Termination, bool) {
        let (in_tx, in_rx) = mpsc::channel(16);
        let mut rx = spawn(spec, in_rx).unwrap();
        for part in stdin {
            let part = match part {
                Input::Data(b) => Input::Data(b.clone()),
                Input::Close => Input::Close,
            };
            in_tx.send(part).await.unwrap();
        }
        drop(in_tx);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(msg) = rx.recv().await {
            match msg {
                Output::Stdout(b) => out.extend_from_slice(&b),
                Output::Stderr(b) => err.extend_from_slice(&b),
                Output::Exit {
                    termination,
                    timed_out,
                } => return (out, err, termination, timed_out),
            }
        }
        panic!("stream ended without Exit");
    }

    fn sh(script: &str) -> ExecSpec {
        ExecSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn streams_output_and_exit_code() {
        let (out, err, t, timed_out) = run(sh("echo out; echo err >&2; exit 3"), &[]).await;
        assert_eq!(out, b"out\n");
        assert_eq!(err, b"err\n");
        assert_eq!(t, Termination::Code(3));
        assert!(!timed_out);
    }

    #[tokio::test]
    async fn env_and_cwd_apply() {
        let mut spec = sh("echo \"$FOO $(pwd)\"");
        spec.env.insert("FOO".into(), "bar".into());
        spec.cwd = Some("/tmp".into());
        let (out, ..) = run(spec, &[]).await;
        assert_eq!(out, b"bar /tmp\n");
    }

    #[tokio::test]
    async fn stdin_is_forwarded_and_closed() {
        let mut spec = sh("cat; echo done");
        spec.stdin = true;
        let (out, ..) = run(
            spec,
            &[
                Input::Data(Bytes::from_static(b"hello ")),
                Input::Data(Bytes::from_static(b"world\n")),
                Input::Close,
            ],
        )
        .await;
        assert_eq!(out, b"hello world\ndone\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let mut spec = sh("sleep 1000 & sleep 1000");
        spec.timeout = Some(Duration::from_millis(200));
        let (_, _, t, timed_out) = run(spec, &[]).await;
        assert_eq!(t, Termination::Signal(9));
        assert!(timed_out);
    }

    #[tokio::test]
    async fn missing_program_is_not_found() {
        let (_tx, rx) = mpsc::channel(1);
        let err = spawn(
            ExecSpec {
                argv: vec!["/nonexistent/prog".into()],
                ..Default::default()
            },
            rx,
        )
        .unwrap_err();
        assert!(matches!(err, AgentError::ProgramNotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn empty_argv_is_rejected() {
        let (_tx, rx) = mpsc::channel(1);
        let err = spawn(ExecSpec::default(), rx).unwrap_err();
        assert!(matches!(err, AgentError::EmptyArgv));
    }
}
