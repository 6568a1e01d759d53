//! `banger-kernelcat`: serves the kernel catalog on `$RUN/kernelcat.sock`.

use std::process::ExitCode;

use banger_kernelcat::KernelCatService;
use banger_proto::config::Service;
use banger_proto::kernelcat::v1::kernel_cat_server::KernelCatServer;
use tonic::service::Routes;

fn main() -> ExitCode {
    banger_proto::daemon::main(Service::KernelCat, |config| async move {
        let service = KernelCatService::open(&config)?;
        Ok(Routes::new(KernelCatServer::new(service)))
    })
}
