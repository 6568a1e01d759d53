//! gRPC adapter: `banger.vmm.v1.Vmm` over the VM manager.

use banger_proto::agent::v1::ExecResponse;
use banger_proto::config::Config;
use banger_proto::rpc::status::unimplemented;
use banger_proto::vmm::v1 as pb;
use banger_proto::vmm::v1::vmm_server::Vmm;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// The VM manager service.
#[derive(Debug)]
pub struct VmmService {}

impl VmmService {
    /// Opens the service's state from `config`.
    pub fn new(_config: &Config) -> Self {
        VmmService {}
    }
}

#[tonic::async_trait]
impl Vmm for VmmService {
    type CreateVmStream = BoxStream<pb::CreateVmEvent>;

    async fn create_vm(
        &self,
        _: Request<pb::CreateVmRequest>,
    ) -> Result<Response<Self::CreateVmStream>, Status> {
        Err(unimplemented("creating a VM"))
    }

    async fn start_vm(&self, _: Request<pb::StartVmRequest>) -> Result<Response<pb::Vm>, Status> {
        Err(unimplemented("starting a VM"))
    }

    async fn stop_vm(&self, _: Request<pb::StopVmRequest>) -> Result<Response<pb::Vm>, Status> {
        Err(unimplemented("stopping a VM"))
    }

    async fn restart_vm(
        &self,
        _: Request<pb::RestartVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        Err(unimplemented("restarting a VM"))
    }

    async fn delete_vm(
        &self,
        _: Request<pb::DeleteVmRequest>,
    ) -> Result<Response<pb::DeleteVmResponse>, Status> {
        Err(unimplemented("deleting a VM"))
    }

    async fn get_vm(&self, _: Request<pb::GetVmRequest>) -> Result<Response<pb::Vm>, Status> {
        Err(unimplemented("showing a VM"))
    }

    async fn list_vms(
        &self,
        _: Request<pb::ListVmsRequest>,
    ) -> Result<Response<pb::ListVmsResponse>, Status> {
        Err(unimplemented("listing VMs"))
    }

    type ConsoleLogStream = BoxStream<pb::ConsoleLogChunk>;

    async fn console_log(
        &self,
        _: Request<pb::ConsoleLogRequest>,
    ) -> Result<Response<Self::ConsoleLogStream>, Status> {
        Err(unimplemented("reading a VM's console"))
    }

    type ExecStream = BoxStream<ExecResponse>;

    async fn exec(
        &self,
        _: Request<Streaming<pb::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        Err(unimplemented("running a command in a VM"))
    }

    async fn wait_ready(
        &self,
        _: Request<pb::WaitReadyRequest>,
    ) -> Result<Response<pb::WaitReadyResponse>, Status> {
        Err(unimplemented("waiting for a VM"))
    }
}
