//! gRPC adapter: `banger.vmm.v1.Vmm` over the [`Manager`]. Proto types stay
//! in this file; the domain never sees them.

use std::sync::Arc;
use std::time::Duration;

use banger_proto::agent::v1 as agent;
use banger_proto::agent::v1::ExecResponse;
use banger_proto::agent::v1::agent_client::AgentClient;
use banger_proto::config::{Config, Service};
use banger_proto::rpc::progress::{self, LongEvent, Reporter, Work};
use banger_proto::runtime::v1::ProgressUnit;
use banger_proto::vmm::v1 as pb;
use banger_proto::vmm::v1::vmm_server::Vmm;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::{Backend, VmmConfig};
use crate::error::Error;
use crate::guest::{AgentGuest, Guest};
use crate::hypervisor::Hypervisor;
use crate::hypervisor::firecracker::Firecracker;
use crate::hypervisor::qemu::Qemu;
use crate::manager::{
    CreateSpec, FailedPreparation, Manager, PhaseEvent, Prepared, Progress, VmView,
};
use crate::peers::{GrpcPeers, Peers};
use crate::record::{Store, VmState};
use crate::validate;

/// The VM manager service.
#[derive(Debug, Clone)]
pub struct VmmService {
    manager: Manager,
}

impl VmmService {
    /// Opens the service's state from `config`: records under
    /// `$STATE/vms`, sockets under `$RUN/vmm`, peers on their sockets.
    pub fn new(config: &Config) -> Result<Self, banger_proto::config::ConfigError> {
        let mut cfg: VmmConfig = config.section("vmm")?;
        let source = || {
            config
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "<defaults>".into())
        };
        if let Some(bad) = cfg
            .masked_units
            .iter()
            .find(|u| !crate::cmdline::is_unit_name(u))
        {
            return Err(banger_proto::config::ConfigError::Parse {
                path: source(),
                message: format!(
                    "[vmm] masked_units: {bad:?} is not a systemd unit name \
                     (e.g. `e2scrub_reap.service`, `modprobe@.service`)"
                ),
            });
        }
        cfg.guest = config.section("guest")?;
        cfg.guest
            .validate()
            .map_err(|e| banger_proto::config::ConfigError::Parse {
                path: source(),
                message: e.to_string(),
            })?;
        let store = Store::new(
            &config.paths.state(Service::Vmm),
            &config.paths.run_dir.join("vmm"),
        );
        let peers: Arc<dyn Peers> = Arc::new(GrpcPeers::new(&config.paths));
        let guest: Arc<dyn Guest> = Arc::new(AgentGuest);
        // Probed once: `auto` and `banger doctor` go by what this finds.
        let kvm = banger_proto::host::probe_kvm();
        let backends: Vec<Arc<dyn Hypervisor>> = vec![
            Arc::new(Qemu::from_config(&cfg, &kvm)),
            Arc::new(Firecracker::probed(&cfg.firecracker_binary, &kvm)),
        ];
        Ok(Self::with_manager(Manager::new(
            cfg, store, peers, guest, backends,
        )))
    }

    /// A service over an existing manager (tests inject doubles this way).
    pub fn with_manager(manager: Manager) -> Self {
        VmmService { manager }
    }

    /// The manager behind the service.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }
}

fn hypervisor_to_pb(b: Backend) -> pb::Hypervisor {
    match b {
        Backend::Firecracker => pb::Hypervisor::Firecracker,
        Backend::Qemu => pb::Hypervisor::Qemu,
    }
}

fn to_pb(v: VmView) -> pb::Vm {
    let vm = v.vm;
    let lease = vm.lease.clone().unwrap_or_else(|| crate::record::Lease {
        tap: String::new(),
        ip: String::new(),
        prefix_len: 0,
        gateway: String::new(),
        mac: String::new(),
        dns: vec![],
        nat: vm.nat,
    });
    pb::Vm {
        id: vm.id,
        name: vm.name,
        state: match vm.state {
            VmState::Creating => pb::VmState::Creating,
            VmState::Running => pb::VmState::Running,
            VmState::Stopped => pb::VmState::Stopped,
            VmState::Error => pb::VmState::Error,
            VmState::Deleting => pb::VmState::Deleting,
            VmState::Orphaned => pb::VmState::Orphaned,
        } as i32,
        image: vm.image.name,
        kernel: vm.kernel.name,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        disk_bytes: vm.disk_bytes,
        hypervisor: hypervisor_to_pb(vm.backend) as i32,
        ip: lease.ip,
        mac: lease.mac,
        tap: lease.tap,
        nat: vm.nat,
        pid: vm.pid.unwrap_or_default(),
        created_unix: vm.created_unix,
        started_unix: vm.started_unix.unwrap_or_default(),
        error: vm.error.unwrap_or_default(),
        vsock_path: v.vsock_path.display().to_string(),
        probes: v
            .probes
            .into_iter()
            .map(|p| pb::ReadinessProbe {
                capability: p.capability.into(),
                state: p.state.into(),
                detail: p.detail,
            })
            .collect(),
        ssh_host_public_key: vm.ssh_host_key.unwrap_or_default(),
        accelerator: vm.accel.unwrap_or_default(),
        hypervisor_reason: vm.backend_why.unwrap_or_default(),
        accelerator_reason: vm.accel_why.unwrap_or_default(),
        image_prepared: vm.image.prepared,
    }
}

fn prepared_pb(p: Prepared) -> pb::PreparedImage {
    pb::PreparedImage {
        digest: p.digest,
        image: p.image,
        kernel: p.kernel,
        packages: p.packages,
        finished_unix: p.prepared_unix,
        seconds: p.seconds,
        has_systemd: p.has_systemd,
        has_ssh_server: p.has_ssh_server,
        size_bytes: p.size_bytes,
        prepared: true,
        ..Default::default()
    }
}

fn failed_pb(f: FailedPreparation) -> pb::PreparedImage {
    pb::PreparedImage {
        digest: f.digest,
        image: f.image,
        finished_unix: f.failed_unix,
        prepared: false,
        failed_reason: f.why,
        failed_log: f.log.display().to_string(),
        ..Default::default()
    }
}

/// The common progress update of a manager phase event.
fn phase_pb(ev: PhaseEvent) -> banger_proto::runtime::v1::Progress {
    // The manager counts items only (first-boot steps, packages).
    let unit = if ev.done > 0 || ev.total > 0 {
        ProgressUnit::Items
    } else {
        ProgressUnit::Unspecified
    };
    banger_proto::runtime::v1::Progress::phase(ev.phase, ev.message)
        .counted(ev.done, ev.total, unit)
        .ended(ev.seconds.unwrap_or_default())
}

/// The manager's progress, reported into a response stream: also how the
/// manager learns that the caller of a create went away.
struct Streamed<E>(Reporter<E>);

#[tonic::async_trait]
impl<E: LongEvent> Progress for Streamed<E> {
    async fn report(&self, event: PhaseEvent) {
        self.0.report(phase_pb(event));
    }

    fn caller_gone(&self) -> bool {
        self.0.is_cancelled()
    }

    async fn gone(&self) {
        self.0.cancelled().await;
    }
}

#[tonic::async_trait]
impl Vmm for VmmService {
    type CreateVmStream = BoxStream<pb::CreateVmEvent>;

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().name))]
    async fn create_vm(
        &self,
        request: Request<pb::CreateVmRequest>,
    ) -> Result<Response<Self::CreateVmStream>, Status> {
        let r = request.into_inner();
        let backend = match pb::Hypervisor::try_from(r.hypervisor) {
            Ok(pb::Hypervisor::Unspecified) => None,
            Ok(pb::Hypervisor::Firecracker) => Some(Backend::Firecracker),
            Ok(pb::Hypervisor::Qemu) => Some(Backend::Qemu),
            Err(_) => {
                return Err(Error::UnknownHypervisor {
                    value: r.hypervisor,
                }
                .into());
            }
        };
        let spec = CreateSpec {
            name: r.name,
            image: r.image,
            kernel: Some(r.kernel).filter(|k| !k.is_empty()),
            vcpus: r.vcpus,
            memory_mib: r.memory_mib,
            disk_bytes: r.disk_bytes,
            nat: r.nat,
            no_start: r.no_start,
            backend,
            ssh_authorized_keys: r.ssh_authorized_keys,
            ready_timeout_secs: r.ready_timeout_seconds,
        };
        // Cheap validation answers at once, before any stream.
        banger_proto::names::validate("vm", &spec.name).map_err(Error::from)?;
        banger_proto::names::validate("image", &spec.image).map_err(Error::from)?;
        if let Some(kernel) = &spec.kernel {
            banger_proto::names::validate_dotted("kernel", kernel).map_err(Error::from)?;
        }
        validate::resources(spec.vcpus, spec.memory_mib, spec.disk_bytes).map_err(Error::from)?;
        validate::timeout("ready_timeout_seconds", spec.ready_timeout_secs).map_err(Error::from)?;
        validate::ssh_public_keys(&spec.ssh_authorized_keys).map_err(Error::from)?;
        let manager = self.manager.clone();
        // Work only this caller wanted: a client that goes away stops the
        // create, which rolls back (its hypervisor killed). It stays in
        // this call's trace: the steps are children of CreateVm.
        let stream = progress::stream(Work::CallerOnly, |reporter| async move {
            manager.create(spec, &Streamed(reporter)).await.map(to_pb)
        });
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().name))]
    async fn start_vm(
        &self,
        request: Request<pb::StartVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        validate::timeout("ready_timeout_seconds", r.ready_timeout_seconds).map_err(Error::from)?;
        let v = self.manager.start(&r.name, r.ready_timeout_seconds).await?;
        Ok(Response::new(to_pb(v)))
    }

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().name))]
    async fn stop_vm(
        &self,
        request: Request<pb::StopVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        validate::timeout("timeout_seconds", r.timeout_seconds).map_err(Error::from)?;
        let v = self
            .manager
            .stop(&r.name, r.force, r.timeout_seconds)
            .await?;
        Ok(Response::new(to_pb(v)))
    }

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().name))]
    async fn restart_vm(
        &self,
        request: Request<pb::RestartVmRequest>,
    ) -> Result<Response<pb::Vm>, Status> {
        let r = request.into_inner();
        validate::timeout("timeout_seconds", r.timeout_seconds).map_err(Error::from)?;
        validate::timeout("ready_timeout_seconds", r.ready_timeout_seconds).map_err(Error::from)?;
        let v = self
            .manager
            .restart(&r.name, r.timeout_seconds, r.ready_timeout_seconds)
            .await?;
        Ok(Response::new(to_pb(v)))
    }

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().name))]
    async fn delete_vm(
        &self,
        request: Request<pb::DeleteVmRequest>,
    ) -> Result<Response<pb::DeleteVmResponse>, Status> {
        let r = request.into_inner();
        self.manager.delete(&r.name, r.force).await?;
        Ok(Response::new(pb::DeleteVmResponse {}))
    }

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().name))]
    async fn get_vm(&self, request: Request<pb::GetVmRequest>) -> Result<Response<pb::Vm>, Status> {
        Ok(Response::new(to_pb(
            self.manager.get(&request.get_ref().name)?,
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn list_vms(
        &self,
        _: Request<pb::ListVmsRequest>,
    ) -> Result<Response<pb::ListVmsResponse>, Status> {
        let vms = self.manager.list()?.into_iter().map(to_pb).collect();
        Ok(Response::new(pb::ListVmsResponse { vms }))
    }

    type ConsoleLogStream = BoxStream<pb::ConsoleLogChunk>;

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().name))]
    async fn console_log(
        &self,
        request: Request<pb::ConsoleLogRequest>,
    ) -> Result<Response<Self::ConsoleLogStream>, Status> {
        let r = request.into_inner();
        let path = self.manager.console_path(&r.name)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("cannot open", &path)(e).into()),
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            if let Some(f) = file.as_mut() {
                let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                if r.tail_bytes > 0 && r.tail_bytes < len {
                    let _ = f.seek(std::io::SeekFrom::Start(len - r.tail_bytes)).await;
                }
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if file.is_none() {
                    file = tokio::fs::File::open(&path).await.ok();
                }
                let n = match file.as_mut() {
                    Some(f) => f.read(&mut buf).await.unwrap_or(0),
                    None => 0,
                };
                if n > 0 {
                    let chunk = pb::ConsoleLogChunk {
                        data: buf[..n].to_vec(),
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                    continue;
                }
                if !r.follow || tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExecStream = BoxStream<ExecResponse>;

    #[tracing::instrument(skip_all)]
    async fn exec(
        &self,
        request: Request<Streaming<pb::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or(Error::BadExecStream {
            reason: "empty Exec stream",
        })?;
        if first.vm.is_empty() {
            return Err(Error::BadExecStream {
                reason: "the first Exec message must name the VM",
            }
            .into());
        }
        let start = first.request.ok_or(Error::BadExecStream {
            reason: "the first Exec message must carry the agent `start`",
        })?;
        let channel = self.manager.agent(&first.vm).await?;
        // Forward the client's stdin messages to the agent as they come.
        let (tx, rx) = mpsc::channel::<agent::ExecRequest>(16);
        let _ = tx.send(start).await;
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(r) = m.request
                    && tx.send(r).await.is_err()
                {
                    return;
                }
            }
        });
        let outbound = AgentClient::new(channel)
            .exec(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(outbound)))
    }

    #[tracing::instrument(skip_all, fields(vm = %request.get_ref().name))]
    async fn wait_ready(
        &self,
        request: Request<pb::WaitReadyRequest>,
    ) -> Result<Response<pb::WaitReadyResponse>, Status> {
        let r = request.into_inner();
        validate::timeout("timeout_seconds", r.timeout_seconds).map_err(Error::from)?;
        let v = self.manager.wait_ready(&r.name, r.timeout_seconds).await?;
        Ok(Response::new(pb::WaitReadyResponse { vm: Some(to_pb(v)) }))
    }

    type PrepareImageStream = BoxStream<pb::PrepareImageEvent>;

    #[tracing::instrument(skip_all, fields(image = %request.get_ref().image))]
    async fn prepare_image(
        &self,
        request: Request<pb::PrepareImageRequest>,
    ) -> Result<Response<Self::PrepareImageStream>, Status> {
        let r = request.into_inner();
        banger_proto::names::validate("image", &r.image).map_err(Error::from)?;
        let kernel = Some(r.kernel).filter(|k| !k.is_empty());
        if let Some(k) = &kernel {
            banger_proto::names::validate_dotted("kernel", k).map_err(Error::from)?;
        }
        let manager = self.manager.clone();
        // Shared: the preparation finishes for every VM of the image even
        // if this caller goes away.
        let stream = progress::stream(Work::Shared, |reporter| async move {
            manager
                .prepare_image(&r.image, kernel, r.force, &Streamed(reporter))
                .await
                .map(prepared_pb)
        });
        Ok(Response::new(stream))
    }

    async fn list_prepared_images(
        &self,
        _: Request<pb::ListPreparedImagesRequest>,
    ) -> Result<Response<pb::ListPreparedImagesResponse>, Status> {
        let (done, failed) = self.manager.prepared_images();
        let images = done
            .into_iter()
            .map(prepared_pb)
            .chain(failed.into_iter().map(failed_pb))
            .collect();
        Ok(Response::new(pb::ListPreparedImagesResponse { images }))
    }

    #[tracing::instrument(skip_all, fields(digest = %request.get_ref().digest))]
    async fn drop_prepared_image(
        &self,
        request: Request<pb::DropPreparedImageRequest>,
    ) -> Result<Response<pb::DropPreparedImageResponse>, Status> {
        let dropped = self.manager.drop_prepared(&request.into_inner().digest)?;
        Ok(Response::new(pb::DropPreparedImageResponse { dropped }))
    }

    async fn get_hypervisors(
        &self,
        _request: Request<pb::GetHypervisorsRequest>,
    ) -> Result<Response<pb::Hypervisors>, Status> {
        let r = self.manager.hypervisors();
        Ok(Response::new(pb::Hypervisors {
            default_hypervisor: hypervisor_to_pb(r.default.backend) as i32,
            default_reason: r.default.why,
            hypervisors: r
                .backends
                .into_iter()
                .map(|(b, availability, accel)| pb::HypervisorStatus {
                    hypervisor: hypervisor_to_pb(b) as i32,
                    available: availability.is_ok(),
                    detail: availability.unwrap_or_else(|e| e),
                    accelerator: accel.name.into(),
                    accelerator_reason: accel.why,
                })
                .collect(),
        }))
    }
}
