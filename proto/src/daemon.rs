//! The shared `main` of every service binary: flags, config, telemetry,
//! bind, serve until SIGTERM/SIGINT. Each binary only supplies its routes.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tonic::service::Routes;

use crate::config::{Config, ConfigLocation, Service};
use crate::rpc::{BoundSocket, ServeOptions, shutdown_signal};

/// Flags every service binary accepts.
#[derive(Debug, Parser)]
#[command(version = crate::VERSION)]
pub struct DaemonArgs {
    /// Config file (default /etc/banger/banger.toml); ignored under --home.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Relocate config, sockets and state under DIR.
    #[arg(long, value_name = "DIR", env = crate::config::HOME_ENV)]
    pub home: Option<PathBuf>,
}

/// Boxed error of a service's setup.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// Runs a service binary: parses [`DaemonArgs`], loads the config, binds
/// the service's socket, builds its routes with `build` and serves them.
pub fn main<F, Fut>(service: Service, build: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<Routes, SetupError>>,
{
    let args = DaemonArgs::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{}: cannot start the async runtime: {e}", service.binary());
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's connection lives on this runtime, so telemetry
    // starts inside it and is flushed before it stops.
    let telemetry = {
        let _enter = runtime.enter();
        crate::telemetry::init(service.binary(), "info")
    };
    let code = match runtime.block_on(run(service, args, build)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}: {e}", service.binary());
            eprintln!("{}: {e}", service.binary());
            ExitCode::FAILURE
        }
    };
    drop(telemetry);
    code
}

async fn run<F, Fut>(service: Service, args: DaemonArgs, build: F) -> Result<(), SetupError>
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<Routes, SetupError>>,
{
    let config = Config::load(&ConfigLocation {
        home: args.home,
        config: args.config,
    })?;
    let paths = config.paths.clone();
    std::fs::create_dir_all(paths.state(service))
        .map_err(|e| format!("cannot create {}: {e}", paths.state(service).display()))?;
    tracing::info!(
        version = crate::VERSION,
        config = ?config.source,
        run_dir = %paths.run_dir.display(),
        state_dir = %paths.state_dir.display(),
        "starting"
    );
    let routes = build(config).await?;
    let socket = BoundSocket::bind(ServeOptions {
        socket: paths.socket(service),
        socket_group: paths.socket_group.clone(),
        pid_file: Some(paths.pid_file(service)),
        name: service.binary().to_owned(),
        services: vec![service.api_service().to_owned()],
    })
    .await?;
    socket.serve(routes, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
