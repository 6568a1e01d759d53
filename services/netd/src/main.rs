//! `banger-netd`: serves host networking on `$RUN/netd.sock`.

use std::process::ExitCode;

use banger_netd::NetdService;
use banger_proto::config::Service;
use banger_proto::netd::v1::netd_server::NetdServer;
use tonic::service::Routes;

fn main() -> ExitCode {
    banger_proto::daemon::main(Service::Netd, |config| async move {
        Ok(Routes::new(NetdServer::new(NetdService::new(&config))))
    })
}
