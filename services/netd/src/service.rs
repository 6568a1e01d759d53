//! gRPC adapter: `banger.netd.v1.Netd` over the lease manager.

use banger_proto::config::Config;
use banger_proto::netd::v1 as pb;
use banger_proto::netd::v1::netd_server::Netd;
use banger_proto::rpc::status::unimplemented;
use tonic::{Request, Response, Status};

/// The network daemon service.
#[derive(Debug)]
pub struct NetdService {}

impl NetdService {
    /// Opens the service's state from `config`.
    pub fn new(_config: &Config) -> Self {
        NetdService {}
    }
}

#[tonic::async_trait]
impl Netd for NetdService {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::NetworkStatus>, Status> {
        Err(unimplemented("network status"))
    }

    async fn allocate(
        &self,
        _: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        Err(unimplemented("allocating a network lease"))
    }

    async fn release(
        &self,
        _: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        Err(unimplemented("releasing a network lease"))
    }

    async fn list_leases(
        &self,
        _: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        Err(unimplemented("listing network leases"))
    }
}
