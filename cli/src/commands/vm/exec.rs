//! `banger vm exec`: a command in the VM through its agent, its stdin
//! forwarded when piped, its output streamed, its exit code ours.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use banger_proto::agent::v1 as agent;
use banger_proto::vmm::v1 as pb;

use super::vmm;
use crate::context::Context;

pub(super) async fn exec(ctx: &Context, name: String, command: Vec<String>) -> Result<ExitCode> {
    use std::io::IsTerminal;
    // Piped stdin is forwarded (`echo hi | banger vm exec box -- cat`); a
    // terminal is not, so interactive use does not hang waiting for EOF.
    let forward_stdin = !std::io::stdin().is_terminal();
    let start = pb::ExecRequest {
        vm: name,
        request: Some(agent::ExecRequest {
            part: Some(agent::exec_request::Part::Start(agent::ExecStart {
                argv: command,
                stdin: forward_stdin,
                ..Default::default()
            })),
        }),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(start).await?;
    if forward_stdin {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 64 * 1024];
            let part = |p| pb::ExecRequest {
                vm: String::new(),
                request: Some(agent::ExecRequest { part: Some(p) }),
            };
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk = agent::exec_request::Part::Stdin(buf[..n].to_vec());
                        if tx.send(part(chunk)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx
                .send(part(agent::exec_request::Part::StdinClose(true)))
                .await;
        });
    } else {
        drop(tx);
    }
    let mut stream = vmm(ctx)
        .await?
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(msg) = stream.message().await? {
        match msg.part {
            Some(agent::exec_response::Part::Stdout(b)) => {
                out.write_all(&b)?;
                out.flush()?;
            }
            Some(agent::exec_response::Part::Stderr(b)) => {
                err.write_all(&b)?;
                err.flush()?;
            }
            Some(agent::exec_response::Part::Exit(status)) => {
                let code = match status.status {
                    Some(agent::exit_status::Status::Code(c)) => c,
                    Some(agent::exit_status::Status::Signal(s)) => 128 + s,
                    None => 1,
                };
                return Ok(ExitCode::from(code.clamp(0, 255) as u8));
            }
            None => {}
        }
    }
    bail!("the agent ended the command without an exit status")
}
