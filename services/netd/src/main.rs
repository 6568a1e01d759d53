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
    // Capabilities are dropped once the socket is bound: giving it the
    // `[paths] socket_group` needs CAP_CHOWN, which netd does not keep. No
    // request is served before that.
    let restrict = || -> Result<(), banger_proto::daemon::SetupError> {
        let effective = banger_netd::privs::restrict_to_net_admin()?;
        tracing::info!(effective = ?effective, "capabilities restricted to CAP_NET_ADMIN");
        Ok(())
    };
    banger_proto::daemon::main_with(
        Service::Netd,
        |config| async move {
            let netd: NetdConfig = config.section("netd")?;
            banger_netd::privs::require_net_admin()?;
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
        },
        restrict,
    )
}
