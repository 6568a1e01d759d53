//! `banger-kernelcat`: serves the kernel catalog on `$RUN/kernelcat.sock`.

use std::process::ExitCode;

use banger_kernelcat::KernelCatService;
use banger_proto::config::Service;
use banger_proto::kernelcat::v1::kernel_cat_server::KernelCatServer;
use tonic::service::Routes;

fn main() -> ExitCode {
    banger_proto::daemon::main(Service::KernelCat, |config| async move {
        Ok(Routes::new(KernelCatServer::new(KernelCatService::new(
            &config,
        ))))
    })
}
