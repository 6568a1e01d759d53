//! gRPC adapter: `banger.kernelcat.v1.KernelCat` over the kernel store.

use banger_proto::config::Config;
use banger_proto::kernelcat::v1 as pb;
use banger_proto::kernelcat::v1::kernel_cat_server::KernelCat;
use banger_proto::rpc::status::unimplemented;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// The kernel catalog service.
#[derive(Debug)]
pub struct KernelCatService {}

impl KernelCatService {
    /// Opens the service's state from `config`.
    pub fn new(_config: &Config) -> Self {
        KernelCatService {}
    }
}

#[tonic::async_trait]
impl KernelCat for KernelCatService {
    async fn list_kernels(
        &self,
        _: Request<pb::ListKernelsRequest>,
    ) -> Result<Response<pb::ListKernelsResponse>, Status> {
        Err(unimplemented("listing kernels"))
    }

    async fn get_kernel(
        &self,
        _: Request<pb::GetKernelRequest>,
    ) -> Result<Response<pb::Kernel>, Status> {
        Err(unimplemented("showing a kernel"))
    }

    async fn resolve_kernel(
        &self,
        _: Request<pb::ResolveKernelRequest>,
    ) -> Result<Response<pb::ResolvedKernel>, Status> {
        Err(unimplemented("resolving a kernel"))
    }

    async fn release_kernel(
        &self,
        _: Request<pb::ReleaseKernelRequest>,
    ) -> Result<Response<pb::ReleaseKernelResponse>, Status> {
        Err(unimplemented("releasing a kernel hold"))
    }

    async fn list_catalog(
        &self,
        _: Request<pb::ListCatalogRequest>,
    ) -> Result<Response<pb::ListCatalogResponse>, Status> {
        Err(unimplemented("the kernel catalog"))
    }

    type PullKernelStream = BoxStream<pb::PullKernelEvent>;

    async fn pull_kernel(
        &self,
        _: Request<pb::PullKernelRequest>,
    ) -> Result<Response<Self::PullKernelStream>, Status> {
        Err(unimplemented("pulling a kernel"))
    }

    async fn import_kernel(
        &self,
        _: Request<Streaming<pb::ImportKernelRequest>>,
    ) -> Result<Response<pb::Kernel>, Status> {
        Err(unimplemented("importing a kernel"))
    }

    async fn delete_kernel(
        &self,
        _: Request<pb::DeleteKernelRequest>,
    ) -> Result<Response<pb::DeleteKernelResponse>, Status> {
        Err(unimplemented("deleting a kernel"))
    }
}
