//! `banger-imagestore`: serves the image store on `$RUN/imagestore.sock`.

use std::process::ExitCode;

use banger_imagestore::ImageStoreService;
use banger_proto::config::Service;
use banger_proto::imagestore::v1::image_store_server::ImageStoreServer;
use tonic::service::Routes;

fn main() -> ExitCode {
    // Before any thread exists: capabilities are per thread.
    if let Err(e) = banger_imagestore::privs::drop_all() {
        eprintln!("banger-imagestore: {e}");
        return ExitCode::FAILURE;
    }
    banger_proto::daemon::main(Service::ImageStore, |config| async move {
        Ok(Routes::new(ImageStoreServer::new(ImageStoreService::new(
            &config,
        )?)))
    })
}
