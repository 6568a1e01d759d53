//! gRPC adapter: `banger.imagestore.v1.ImageStore` over [`Store`]. Proto
//! types stop here.

use std::io::Write;
use std::sync::Arc;

use banger_proto::config::{Config, Service};
use banger_proto::imagestore::v1 as pb;
use banger_proto::imagestore::v1::image_store_server::ImageStore;
use banger_proto::rpc::progress::{self, Reporter, Work};
use banger_proto::runtime::v1::{Progress, ProgressUnit};
use tokio::sync::mpsc;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::ImageStoreConfig;
use crate::error::Error;
use crate::flatten::Cancel;
use crate::guest::GuestFacts;
use crate::registry::Credentials;
use crate::store::{ImportRequest, PullRequest, Record, Store};

/// The image store service.
#[derive(Debug, Clone)]
pub struct ImageStoreService {
    store: Arc<Store>,
}

impl ImageStoreService {
    /// Opens the service's state from `config` (`[imagestore]`, state dir).
    pub fn new(config: &Config) -> Result<Self, Error> {
        let section: ImageStoreConfig = config.section("imagestore").map_err(|e| Error::Io {
            context: "cannot load config",
            path: config.source.clone().unwrap_or_default(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let store = Store::open(
            &config.paths.state(Service::ImageStore),
            &config.paths.blobs(),
            section,
        )?;
        Ok(Self::from_store(store))
    }

    /// Serves an already opened store.
    pub fn from_store(store: Store) -> Self {
        ImageStoreService {
            store: Arc::new(store),
        }
    }
}

fn guest_pb(g: &GuestFacts) -> pb::GuestFacts {
    pb::GuestFacts {
        has_systemd: g.has_systemd,
        has_ssh_server: g.has_ssh_server,
        os_id: g.os_id.clone(),
        os_id_like: g.os_id_like.clone(),
        os_version_id: g.os_version_id.clone(),
        has_agent: g.has_agent,
    }
}

fn image_pb(r: &Record) -> pb::Image {
    pb::Image {
        name: r.name.clone(),
        reference: r.reference.clone(),
        digest: r.digest.clone(),
        platform: r.platform.clone(),
        size_bytes: r.size_bytes,
        content_bytes: r.content_bytes,
        created_unix: r.created_unix,
        default_kernel: r.default_kernel.clone(),
        direct_boot: r.direct_boot,
        guest: Some(guest_pb(&r.guest)),
        holders: r.holders.iter().cloned().collect(),
        layers: r.layers.clone(),
        fetched_from: r.fetched_from.clone(),
        plain_http: r.fetched_from.starts_with("http://"),
    }
}

/// The common progress update of a store one.
fn progress_pb(p: crate::store::Progress) -> Progress {
    // The store counts bytes only (a layer's download or unpack).
    let unit = if p.done > 0 || p.total > 0 {
        ProgressUnit::Bytes
    } else {
        ProgressUnit::Unspecified
    };
    Progress::phase(p.phase, p.message)
        .counted(p.done, p.total, unit)
        .about(p.layer)
}

/// Runs a store operation (`work`, reporting to the sender whose receiver
/// is `rx`) and passes its updates on to `reporter`, to the last one.
/// The image build is its caller's work (proto/README.md, "Long operations
/// and cancellation"; an inode bomb must not keep building after its
/// client left): when the client goes away `cancel` is set, the build
/// stops and kills its mke2fs, and its staging is removed. The blob
/// downloads are shared and run on (the store leaves them running for a
/// retry or another image with the same layers).
async fn forward(
    work: impl std::future::Future<Output = Result<Record, Error>>,
    mut rx: mpsc::UnboundedReceiver<crate::store::Progress>,
    reporter: Reporter<pb::PullImageEvent>,
    cancel: Cancel,
) -> Result<pb::Image, Error> {
    tokio::pin!(work);
    let mut gone = false;
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            Some(p) = rx.recv() => reporter.report(progress_pb(p)),
            _ = reporter.cancelled(), if !gone => {
                gone = true;
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
    // Downloads left running (for a retry) may still hold a sender: take
    // what is there, do not wait for them.
    while let Ok(p) = rx.try_recv() {
        reporter.report(progress_pb(p));
    }
    result.map(|r| image_pb(&r))
}

#[tonic::async_trait]
impl ImageStore for ImageStoreService {
    type PullImageStream = BoxStream<pb::PullImageEvent>;

    #[tracing::instrument(skip_all, fields(reference = %request.get_ref().reference))]
    async fn pull_image(
        &self,
        request: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let r = request.into_inner();
        let req = PullRequest {
            reference: r.reference,
            name: r.name,
            kernel_ref: r.kernel_ref,
            platform: r.platform,
            force: r.force,
            if_missing: r.if_missing,
            credentials: r
                .credentials
                .into_iter()
                .map(|c| Credentials {
                    registry: c.registry,
                    username: c.username,
                    password: c.password,
                    identity_token: c.identity_token,
                })
                .collect(),
            cancel: Cancel::default(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let store = self.store.clone();
        let cancel = req.cancel.clone();
        Ok(Response::new(progress::stream(
            Work::CallerOnly,
            |reporter| async move { forward(store.pull(req, tx), rx, reporter, cancel).await },
        )))
    }

    type ImportImageStream = BoxStream<pb::PullImageEvent>;

    #[tracing::instrument(skip_all)]
    async fn import_image(
        &self,
        request: Request<Streaming<pb::ImportImageRequest>>,
    ) -> Result<Response<Self::ImportImageStream>, Status> {
        use pb::import_image_request::Part;
        let mut parts = request.into_inner();
        let header = match parts.message().await? {
            Some(pb::ImportImageRequest {
                part: Some(Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "an import stream must start with its header",
                ));
            }
        };
        let req = ImportRequest {
            name: header.name,
            file_name: header.file_name,
            kernel_ref: header.kernel_ref,
            platform: header.platform,
            force: header.force,
            cancel: Cancel::default(),
        };
        banger_proto::names::validate("image", &req.name).map_err(Error::from)?;
        let mut file = self.store.temp_file()?;
        while let Some(part) = parts.message().await? {
            match part.part {
                Some(Part::Chunk(bytes)) => file
                    .write_all(&bytes)
                    .map_err(|e| Error::io("cannot write", file.path())(e))?,
                _ => {
                    return Err(Status::invalid_argument(
                        "only chunks may follow the import header",
                    ));
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let store = self.store.clone();
        let cancel = req.cancel.clone();
        Ok(Response::new(progress::stream(
            Work::CallerOnly,
            |reporter| async move {
                let imported =
                    forward(store.import(req, file.path(), tx), rx, reporter, cancel).await;
                drop(file);
                imported
            },
        )))
    }

    #[tracing::instrument(skip_all)]
    async fn list_images(
        &self,
        _: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.store.list()?.iter().map(image_pb).collect();
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    #[tracing::instrument(skip_all, fields(image = %request.get_ref().name))]
    async fn get_image(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        Ok(Response::new(image_pb(
            &self.store.get(&request.get_ref().name)?,
        )))
    }

    #[tracing::instrument(skip_all, fields(image = %request.get_ref().name, holder = %request.get_ref().holder))]
    async fn resolve_image(
        &self,
        request: Request<pb::ResolveImageRequest>,
    ) -> Result<Response<pb::ResolvedImage>, Status> {
        let r = request.into_inner();
        let record = self.store.resolve(&r.name, &r.holder).await?;
        Ok(Response::new(pb::ResolvedImage {
            ext4_path: self.store.ext4_path(&record.name).display().to_string(),
            name: record.name,
            digest: record.digest,
            direct_boot: record.direct_boot,
            default_kernel: record.default_kernel,
            guest: Some(guest_pb(&record.guest)),
            size_bytes: record.size_bytes,
        }))
    }

    #[tracing::instrument(skip_all, fields(image = %request.get_ref().name, holder = %request.get_ref().holder))]
    async fn release_image(
        &self,
        request: Request<pb::ReleaseImageRequest>,
    ) -> Result<Response<pb::ReleaseImageResponse>, Status> {
        let r = request.into_inner();
        self.store.release(&r.name, &r.holder).await?;
        Ok(Response::new(pb::ReleaseImageResponse {}))
    }

    #[tracing::instrument(skip_all, fields(image = %request.get_ref().name))]
    async fn delete_image(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        self.store.delete(&request.get_ref().name).await?;
        Ok(Response::new(pb::DeleteImageResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn prune_blobs(
        &self,
        _: Request<pb::PruneBlobsRequest>,
    ) -> Result<Response<pb::PruneBlobsResponse>, Status> {
        let (blobs_removed, bytes_freed) = self.store.prune().await?;
        Ok(Response::new(pb::PruneBlobsResponse {
            blobs_removed,
            bytes_freed,
        }))
    }
}
