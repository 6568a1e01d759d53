//! `banger`: the user's command. Orchestrates the banger services over their
//! gRPC sockets; every subcommand lives in its own module under `commands/`.

mod commands;
mod context;
mod output;
mod progress;
mod registry_auth;
mod ssh;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::context::{Context, GlobalArgs};

/// OCI images to SSH-able microVMs, in seconds.
#[derive(Debug, Parser)]
#[command(name = "banger", version = banger_proto::VERSION, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the four banger services on this home's run dir (dev mode).
    Up(commands::services::UpArgs),
    /// Stop the services started by `banger up`.
    Down(commands::services::DownArgs),
    /// Show each service: socket, pid, version, health.
    Status(commands::services::StatusArgs),
    /// Check this host for what VM creation needs, and how to fix it.
    Doctor(commands::doctor::DoctorArgs),
    /// Guest kernels: list, pull, import, show, rm.
    #[command(subcommand)]
    Kernel(commands::kernel::KernelCommand),
    /// OCI images: pull, list, show, rm, import, prune.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Host networking (read-only views).
    #[command(subcommand)]
    Network(commands::network::NetworkCommand),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(commands::vm::VmCommand),
}

impl Command {
    /// `up`, `vm create`, …: the root span's name.
    fn name(&self) -> String {
        fn variant(debug: String) -> String {
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_lowercase()
        }
        match self {
            Command::Up(_) => "up".into(),
            Command::Down(_) => "down".into(),
            Command::Status(_) => "status".into(),
            Command::Doctor(_) => "doctor".into(),
            Command::Kernel(c) => format!("kernel {}", variant(format!("{c:?}"))),
            Command::Image(c) => format!("image {}", variant(format!("{c:?}"))),
            Command::Network(c) => format!("network {}", variant(format!("{c:?}"))),
            Command::Vm(c) => format!("vm {}", variant(format!("{c:?}"))),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("banger: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Spans export only when OTEL_EXPORTER_OTLP_ENDPOINT is set; the
    // exporter lives on the runtime, and is flushed before the runtime ends.
    let telemetry = {
        let _enter = runtime.enter();
        banger_proto::telemetry::init("banger", "warn")
    };
    let root = tracing::info_span!("banger", otel.name = %format!("banger {}", cli.command.name()));
    let code = runtime.block_on(tracing::Instrument::instrument(
        async move {
            let ctx = match Context::new(cli.global) {
                Ok(ctx) => ctx,
                Err(e) => return output::fail(&e),
            };
            let result = match cli.command {
                Command::Up(args) => commands::services::up(&ctx, args).await,
                Command::Down(args) => commands::services::down(&ctx, args).await,
                Command::Status(args) => commands::services::status(&ctx, args).await,
                Command::Doctor(args) => commands::doctor::doctor(&ctx, args).await,
                Command::Kernel(cmd) => commands::kernel::run(&ctx, cmd).await,
                Command::Image(cmd) => commands::image::run(&ctx, cmd).await,
                Command::Network(cmd) => commands::network::run(&ctx, cmd).await,
                Command::Vm(cmd) => commands::vm::run(&ctx, cmd).await,
            };
            match result {
                Ok(code) => code,
                Err(e) => output::fail(&e),
            }
        },
        root,
    ));
    drop(telemetry);
    code
}
