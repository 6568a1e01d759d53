//! `banger-vmm`: serves VM lifecycle on `$RUN/vmm.sock`.

use std::process::ExitCode;

use banger_proto::config::Service;
use banger_proto::vmm::v1::vmm_server::VmmServer;
use banger_vmm::VmmService;
use tonic::service::Routes;

fn main() -> ExitCode {
    banger_proto::daemon::main(Service::Vmm, |config| async move {
        Ok(Routes::new(VmmServer::new(VmmService::new(&config))))
    })
}
