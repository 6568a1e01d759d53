//! `banger-agent`: runs inside every VM and answers the host over AF_VSOCK.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use banger_agent::power::SystemPower;
use banger_agent::serve::{Listen, bind};
use clap::Parser;

/// The banger guest agent (gRPC `banger.agent.v1.Agent`).
#[derive(Debug, Parser)]
#[command(version = banger_proto::VERSION)]
struct Args {
    /// AF_VSOCK port to listen on (any CID). Default: 10789, unless only
    /// --listen-unix is given.
    #[arg(long)]
    listen_vsock: Option<u32>,
    /// Also (or only) listen on this unix socket.
    #[arg(long)]
    listen_unix: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Multi-call: the kernel execs the initramfs' `/init` (a copy of this
    // binary); `banger-agent init` is the same mode by name.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = argv
        .first()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name)
        .map(std::ffi::OsStr::to_owned);
    // `banger-first-boot` (a symlink to this binary in every image) and
    // `banger-agent first-boot` are the VM's first init.
    if invoked_as.as_deref() == Some("init".as_ref()) {
        return banger_agent::init::main(argv.split_off(1));
    }
    if invoked_as.as_deref() == Some("banger-first-boot".as_ref()) {
        return banger_agent::first_boot::main(argv.split_off(1));
    }
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("init") => return banger_agent::init::main(argv.split_off(2)),
        Some("first-boot") => return banger_agent::first_boot::main(argv.split_off(2)),
        _ => {}
    }
    // `BANGER_LOG=debug` or `BANGER_LOG=info,banger_agent=trace`: a level
    // per target (`Targets`), enough inside a guest and no regex engine.
    let filter: tracing_subscriber::filter::Targets = std::env::var("BANGER_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
        });
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banger-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Args::parse())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banger-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut listens = Vec::new();
    match (args.listen_vsock, &args.listen_unix) {
        (None, None) => listens.push(Listen::Vsock(banger_agent::AGENT_PORT)),
        (Some(port), _) => listens.push(Listen::Vsock(port)),
        (None, Some(_)) => {}
    }
    if let Some(path) = args.listen_unix {
        listens.push(Listen::Unix(path));
    }
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = tokio::task::JoinSet::new();
    for listen in &listens {
        let mut stop = stop_tx.subscribe();
        let serving = bind(listen, Arc::new(SystemPower), async move {
            let _ = stop.recv().await;
        })
        .with_context(|| format!("cannot listen on {listen}"))?;
        servers.spawn(serving);
    }
    tokio::select! {
        () = banger_proto::rpc::shutdown_signal() => {
            let _ = stop_tx.send(());
            while servers.join_next().await.is_some() {}
            Ok(())
        }
        Some(done) = servers.join_next() => {
            done.context("server task panicked")?.context("server stopped")
        }
    }
}
