//! What every subcommand needs: global flags, the loaded config, and
//! clients for the services.

use std::path::PathBuf;

use anyhow::Result;
use banger_proto::config::{Config, ConfigLocation, Service};
use banger_proto::rpc::{self, TracedChannel};

/// Flags accepted before or after any subcommand.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Relocate config, sockets and state under DIR (dev and test mode).
    #[arg(long, global = true, value_name = "DIR", env = banger_proto::config::HOME_ENV)]
    pub home: Option<PathBuf>,
    /// Config file (default /etc/banger/banger.toml); ignored under --home.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables and progress bars.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Shared state of one `banger` invocation.
#[derive(Debug)]
pub struct Context {
    pub config: Config,
    pub json: bool,
}

impl Context {
    pub fn new(args: GlobalArgs) -> Result<Context> {
        let config = Config::load(&ConfigLocation {
            home: args.home,
            config: args.config,
        })?;
        Ok(Context {
            config,
            json: args.json,
        })
    }

    /// A channel to `service`'s socket, failing with a hint when it is down.
    pub async fn channel(&self, service: Service) -> Result<TracedChannel> {
        Ok(rpc::connect(&self.config.paths.socket(service)).await?)
    }
}
