//! The other banger services as the vmm sees them: image and kernel
//! resolution (with holds in the VM's id) and network leases. The real
//! implementation talks to their gRPC sockets; tests use a double.

use std::path::PathBuf;

use banger_proto::config::{Paths, Service};
use banger_proto::imagestore::v1 as img;
use banger_proto::imagestore::v1::image_store_client::ImageStoreClient;
use banger_proto::kernelcat::v1 as kc;
use banger_proto::kernelcat::v1::kernel_cat_client::KernelCatClient;
use banger_proto::netd::v1 as net;
use banger_proto::netd::v1::netd_client::NetdClient;
use banger_proto::rpc::{TracedChannel, connect_lazy};

use crate::error::{Error, Result};
use crate::record::{ImageInfo, KernelInfo, Lease};

/// A status from another banger service as a domain error.
fn peer_error(service: &'static str, status: tonic::Status) -> Error {
    match status.code() {
        // Transport failures (socket missing, connection refused) come
        // back as Unknown/Unavailable: say what to do about them.
        tonic::Code::Unknown | tonic::Code::Unavailable => Error::Peer {
            service,
            code: tonic::Code::Unavailable,
            reason: None,
            message: format!(
                "banger-{service} is not reachable ({}); is it running? start the services with `banger up`",
                status.message()
            ),
        },
        code => Error::Peer {
            service,
            code,
            reason: banger_proto::rpc::status::reason_of(&status),
            message: status.message().to_owned(),
        },
    }
}

/// What the vmm needs from kernelcat, imagestore and netd.
#[tonic::async_trait]
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// Resolves an image and holds it for `holder`.
    async fn resolve_image(&self, name: &str, holder: &str) -> Result<ImageInfo>;
    /// Drops the hold. Idempotent.
    async fn release_image(&self, name: &str, holder: &str) -> Result<()>;
    /// Resolves a kernel and holds it for `holder`.
    async fn resolve_kernel(&self, name: &str, holder: &str) -> Result<KernelInfo>;
    /// Drops the hold. Idempotent.
    async fn release_kernel(&self, name: &str, holder: &str) -> Result<()>;
    /// Allocates (or returns) the VM's network lease; the tap is owned by us.
    async fn allocate(&self, vm_id: &str, nat: bool) -> Result<Lease>;
    /// Releases the lease. Idempotent.
    async fn release_lease(&self, vm_id: &str) -> Result<()>;
    /// What the peers hold for `holder` (a VM id): the image and kernel it
    /// holds and its lease. How a VM whose record was lost is put back
    /// together (see [`crate::manager::Manager::reconcile`]).
    async fn holds_of(&self, holder: &str) -> Result<Holds>;
}

/// What kernelcat, imagestore and netd hold for one VM id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds {
    pub image: Option<String>,
    pub kernel: Option<String>,
    pub lease: Option<Lease>,
}

/// The real peers, over their unix sockets (dialed lazily, so a peer that
/// restarts is redialed).
#[derive(Debug, Clone)]
pub struct GrpcPeers {
    kernelcat: TracedChannel,
    imagestore: TracedChannel,
    netd: TracedChannel,
}

impl GrpcPeers {
    /// Channels to the sockets under `paths`.
    pub fn new(paths: &Paths) -> GrpcPeers {
        GrpcPeers {
            kernelcat: connect_lazy(&paths.socket(Service::KernelCat)),
            imagestore: connect_lazy(&paths.socket(Service::ImageStore)),
            netd: connect_lazy(&paths.socket(Service::Netd)),
        }
    }
}

#[tonic::async_trait]
impl Peers for GrpcPeers {
    #[tracing::instrument(skip(self))]
    async fn resolve_image(&self, name: &str, holder: &str) -> Result<ImageInfo> {
        let r = ImageStoreClient::new(self.imagestore.clone())
            .resolve_image(img::ResolveImageRequest {
                name: name.into(),
                holder: holder.into(),
            })
            .await
            .map_err(|s| peer_error("imagestore", s))?
            .into_inner();
        let guest = r.guest.unwrap_or_default();
        Ok(ImageInfo {
            name: r.name,
            ext4_path: PathBuf::from(r.ext4_path),
            digest: r.digest,
            direct_boot: r.direct_boot,
            default_kernel: r.default_kernel,
            size_bytes: r.size_bytes,
            has_agent: guest.has_agent,
            has_ssh_server: guest.has_ssh_server,
            has_systemd: guest.has_systemd,
            os_id: guest.os_id,
            os_id_like: guest.os_id_like,
            prepared: false,
        })
    }

    #[tracing::instrument(skip(self))]
    async fn release_image(&self, name: &str, holder: &str) -> Result<()> {
        ImageStoreClient::new(self.imagestore.clone())
            .release_image(img::ReleaseImageRequest {
                name: name.into(),
                holder: holder.into(),
            })
            .await
            .map_err(|s| peer_error("imagestore", s))?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn resolve_kernel(&self, name: &str, holder: &str) -> Result<KernelInfo> {
        let r = KernelCatClient::new(self.kernelcat.clone())
            .resolve_kernel(kc::ResolveKernelRequest {
                name: name.into(),
                holder: holder.into(),
            })
            .await
            .map_err(|s| peer_error("kernelcat", s))?
            .into_inner();
        Ok(KernelInfo {
            name: r.name,
            vmlinux_path: r.vmlinux_path.into(),
            initrd_path: (!r.initrd_path.is_empty()).then(|| r.initrd_path.into()),
            kernel_version: r.kernel_version,
        })
    }

    #[tracing::instrument(skip(self))]
    async fn release_kernel(&self, name: &str, holder: &str) -> Result<()> {
        KernelCatClient::new(self.kernelcat.clone())
            .release_kernel(kc::ReleaseKernelRequest {
                name: name.into(),
                holder: holder.into(),
            })
            .await
            .map_err(|s| peer_error("kernelcat", s))?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn allocate(&self, vm_id: &str, nat: bool) -> Result<Lease> {
        let l = NetdClient::new(self.netd.clone())
            .allocate(net::AllocateRequest {
                vm_id: vm_id.into(),
                nat,
                owner_uid: None,
                owner_gid: None,
            })
            .await
            .map_err(|s| peer_error("netd", s))?
            .into_inner();
        Ok(Lease {
            tap: l.tap,
            ip: l.ip,
            prefix_len: l.prefix_len,
            gateway: l.gateway,
            mac: l.mac,
            dns: l.dns,
            nat: l.nat,
        })
    }

    #[tracing::instrument(skip(self))]
    async fn release_lease(&self, vm_id: &str) -> Result<()> {
        NetdClient::new(self.netd.clone())
            .release(net::ReleaseRequest {
                vm_id: vm_id.into(),
            })
            .await
            .map_err(|s| peer_error("netd", s))?;
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn holds_of(&self, holder: &str) -> Result<Holds> {
        let image = ImageStoreClient::new(self.imagestore.clone())
            .list_images(img::ListImagesRequest {})
            .await
            .map_err(|s| peer_error("imagestore", s))?
            .into_inner()
            .images
            .into_iter()
            .find(|i| i.holders.iter().any(|h| h == holder))
            .map(|i| i.name);
        let kernel = KernelCatClient::new(self.kernelcat.clone())
            .list_kernels(kc::ListKernelsRequest {})
            .await
            .map_err(|s| peer_error("kernelcat", s))?
            .into_inner()
            .kernels
            .into_iter()
            .find(|k| k.holders.iter().any(|h| h == holder))
            .map(|k| k.name);
        let lease = NetdClient::new(self.netd.clone())
            .list_leases(net::ListLeasesRequest {})
            .await
            .map_err(|s| peer_error("netd", s))?
            .into_inner()
            .leases
            .into_iter()
            .find(|l| l.vm_id == holder)
            .map(|l| Lease {
                tap: l.tap,
                ip: l.ip,
                prefix_len: l.prefix_len,
                gateway: l.gateway,
                mac: l.mac,
                dns: l.dns,
                nat: l.nat,
            });
        Ok(Holds {
            image,
            kernel,
            lease,
        })
    }
}
