//! `banger-vmm`: serves VM lifecycle on `$RUN/vmm.sock`.

use std::process::ExitCode;

use banger_proto::config::Service;
use banger_proto::vmm::v1::vmm_server::VmmServer;
use banger_vmm::VmmService;
use tonic::service::Routes;

fn main() -> ExitCode {
    banger_proto::daemon::main(Service::Vmm, |config| async move {
        let service = VmmService::new(&config)?;
        // Adopt VMs that outlived a previous vmm, roll back interrupted
        // creates and deletes, before serving anyone.
        service.manager().reconcile().await?;
        service.manager().spawn_sweeper();
        Ok(Routes::new(VmmServer::new(service)))
    })
}
