//! gRPC adapter: `banger.imagestore.v1.ImageStore` over the image store.

use banger_proto::config::Config;
use banger_proto::imagestore::v1 as pb;
use banger_proto::imagestore::v1::image_store_server::ImageStore;
use banger_proto::rpc::status::unimplemented;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// The image store service.
#[derive(Debug)]
pub struct ImageStoreService {}

impl ImageStoreService {
    /// Opens the service's state from `config`.
    pub fn new(_config: &Config) -> Self {
        ImageStoreService {}
    }
}

#[tonic::async_trait]
impl ImageStore for ImageStoreService {
    type PullImageStream = BoxStream<pb::PullImageEvent>;

    async fn pull_image(
        &self,
        _: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        Err(unimplemented("pulling an image"))
    }

    type ImportImageStream = BoxStream<pb::PullImageEvent>;

    async fn import_image(
        &self,
        _: Request<Streaming<pb::ImportImageRequest>>,
    ) -> Result<Response<Self::ImportImageStream>, Status> {
        Err(unimplemented("importing an image"))
    }

    async fn list_images(
        &self,
        _: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        Err(unimplemented("listing images"))
    }

    async fn get_image(
        &self,
        _: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        Err(unimplemented("showing an image"))
    }

    async fn resolve_image(
        &self,
        _: Request<pb::ResolveImageRequest>,
    ) -> Result<Response<pb::ResolvedImage>, Status> {
        Err(unimplemented("resolving an image"))
    }

    async fn release_image(
        &self,
        _: Request<pb::ReleaseImageRequest>,
    ) -> Result<Response<pb::ReleaseImageResponse>, Status> {
        Err(unimplemented("releasing an image hold"))
    }

    async fn delete_image(
        &self,
        _: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        Err(unimplemented("deleting an image"))
    }

    async fn prune_blobs(
        &self,
        _: Request<pb::PruneBlobsRequest>,
    ) -> Result<Response<pb::PruneBlobsResponse>, Status> {
        Err(unimplemented("pruning blobs"))
    }
}
