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
        // On SIGTERM/SIGINT running builds stop and kill their mke2fs, so
        // the runtime (which waits for its blocking tasks) ends at once.
        tokio::spawn(async {
            banger_proto::rpc::shutdown_signal().await;
            banger_imagestore::flatten::stop_all();
        });
        Ok(Routes::new(ImageStoreServer::new(ImageStoreService::new(
            &config,
        )?)))
    })
}
