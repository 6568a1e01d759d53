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

/// Runs a service binary: parses [`DaemonArgs`], loads the config, builds
/// its routes with `build`, binds the service's socket and serves them.
pub fn main<F, Fut>(service: Service, build: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<Routes, SetupError>>,
{
    main_with(service, build, || Ok(()))
}

/// [`main`] with a step that runs once the socket is bound (its mode and
/// group set) and before the first request is served: where a service
/// gives up the privileges that binding still needed (netd keeps only
/// CAP_NET_ADMIN, but the socket's `chown` to `[paths] socket_group` needs
/// CAP_CHOWN).
pub fn main_with<F, Fut, A>(service: Service, build: F, after_bind: A) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<Routes, SetupError>>,
    A: FnOnce() -> Result<(), SetupError>,
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
    let code = match runtime.block_on(run(service, args, build, after_bind)) {
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

async fn run<F, Fut, A>(
    service: Service,
    args: DaemonArgs,
    build: F,
    after_bind: A,
) -> Result<(), SetupError>
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<Routes, SetupError>>,
    A: FnOnce() -> Result<(), SetupError>,
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
    if let Err(e) = after_bind() {
        // Nothing was served: leave no socket or pid file behind.
        let _ = std::fs::remove_file(paths.socket(service));
        let _ = std::fs::remove_file(paths.pid_file(service));
        return Err(e);
    }
    socket.serve(routes, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
