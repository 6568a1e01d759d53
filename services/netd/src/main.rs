//! `banger-netd`: serves host networking on `$RUN/netd.sock`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use banger_netd::linux::LinuxOps;
use banger_netd::{Manager, NetdConfig, NetdService};
use banger_proto::config::Service;
use banger_proto::netd::v1::netd_server::NetdServer;
use tonic::service::Routes;

fn main() -> ExitCode {
    banger_proto::daemon::main(Service::Netd, |config| async move {
        let netd: NetdConfig = config.section("netd")?;
        let effective = banger_netd::privs::restrict_to_net_admin()?;
        tracing::info!(effective = ?effective, "capabilities restricted to CAP_NET_ADMIN");
        let ops = LinuxOps::new()?;
        let (manager, _) = Manager::start(
            netd,
            &config.paths.state(Service::Netd),
            Path::new("/etc/resolv.conf"),
            Box::new(ops),
        )
        .await?;
        Ok(Routes::new(NetdServer::new(NetdService::new(Arc::new(
            manager,
        )))))
    })
}
