//! gRPC adapter: `banger.kernelcat.v1.KernelCat` over the kernel store,
//! catalog, puller and importer. Proto types stay in this file.

use std::sync::Arc;
use std::time::Duration;

use banger_proto::config::Config;
use banger_proto::kernelcat::v1 as pb;
use banger_proto::kernelcat::v1::kernel_cat_server::KernelCat;
use banger_proto::rpc::progress::{self, Reporter, Work};
use banger_proto::runtime::v1::{Progress, ProgressUnit};
use futures::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::archive::ArchiveTrust;
use crate::catalog::{self, Catalog, CatalogEntry};
use crate::config::KernelCatConfig;
use crate::debian::Archives;
use crate::error::Error;
use crate::import::{self, ImportFile, ImportHeader};
use crate::pull::{Job, Puller};
use crate::store::{Store, StoredKernel};

/// Name of the catalog cache file inside the store root (not a DNS label,
/// so it can never clash with a kernel).
const CATALOG_CACHE: &str = ".catalog-cache.json";

/// The kernel catalog service.
#[derive(Debug, Clone)]
pub struct KernelCatService {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    puller: Arc<Puller>,
    settings: KernelCatConfig,
}

impl KernelCatService {
    /// Opens the store under `$STATE/kernels` (removing leftovers of
    /// interrupted operations) with the `[kernelcat]` settings of `config`.
    pub fn open(config: &Config) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let settings: KernelCatConfig = config.section("kernelcat")?;
        Ok(Self::with_settings(
            config.paths.state_dir.join("kernels"),
            settings,
        )?)
    }

    /// Opens the service on an explicit store root.
    pub fn with_settings(
        root: impl Into<std::path::PathBuf>,
        settings: KernelCatConfig,
    ) -> Result<Self, Error> {
        let trust = ArchiveTrust {
            keyrings: vec![settings.archive_keyring.clone()],
            ..ArchiveTrust::default()
        };
        Self::with_trust(root, settings, trust)
    }

    /// Opens the service with explicit archive trust (keyrings and pinned
    /// fingerprints). Not reachable from banger.toml: the pins are
    /// Debian's; tests use it to check the date and suite logic with a
    /// throwaway key.
    pub fn with_trust(
        root: impl Into<std::path::PathBuf>,
        settings: KernelCatConfig,
        trust: ArchiveTrust,
    ) -> Result<Self, Error> {
        let store = Arc::new(Store::open(root)?);
        banger_proto::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(settings.catalog_timeout_secs.max(1)))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("banger-kernelcat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        let catalog = Arc::new(Catalog::new(
            catalog::EMBEDDED_CATALOG,
            settings.catalog_url.clone(),
            Duration::from_secs(settings.catalog_timeout_secs),
            store.root().join(CATALOG_CACHE),
            http.clone(),
        ));
        let stall = Duration::from_secs(settings.archive_timeout_secs.max(1));
        let archive_http = reqwest::Client::builder()
            .connect_timeout(stall)
            .read_timeout(stall)
            .user_agent(concat!("banger-kernelcat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        let archives = Archives {
            http: archive_http,
            mirrors: settings.archive_mirrors.clone(),
            trust,
            max_bytes: settings.max_unpacked_bytes,
            guest_candidates: banger_proto::config::guest_dir_candidates(
                settings.guest_dir.as_deref(),
            ),
        };
        let puller = Arc::new(Puller::new(
            Arc::clone(&store),
            Arc::clone(&catalog),
            http,
            settings.max_unpacked_bytes,
            settings.insecure_registries.clone(),
            archives,
        ));
        Ok(KernelCatService {
            store,
            catalog,
            puller,
            settings,
        })
    }

    /// Runs blocking store work off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(Status::from)
    }
}

fn kernel_to_pb(k: StoredKernel) -> pb::Kernel {
    let m = k.manifest;
    pb::Kernel {
        name: m.name,
        distro: m.distro,
        arch: m.arch,
        kernel_version: m.kernel_version,
        vmlinux_sha256: m.vmlinux_sha256,
        vmlinux_size: m.vmlinux_size,
        has_initrd: m.has_initrd,
        has_config: m.has_config,
        source: m.source,
        created_unix: m.created_unix,
        total_size: k.total_size,
        holders: m.holders.into_iter().collect(),
        debian: m.debian.map(|d| pb::DebianSource {
            package: d.package,
            version: d.version,
            meta_package: d.meta_package,
            signing_key: d.signing_key,
            archive_url: d.archive_url,
            fetched_from: d.fetched_from,
            suite: d.suite,
            deb_sha256: d.deb_sha256,
            modules: d.modules,
        }),
    }
}

fn entry_to_pb(e: CatalogEntry, pulled: bool) -> pb::CatalogEntry {
    pb::CatalogEntry {
        name: e.name,
        distro: e.distro,
        arch: e.arch,
        kernel_version: e.kernel_version,
        tarball_url: e.tarball_url,
        tarball_sha256: e.tarball_sha256,
        size_bytes: e.size_bytes,
        description: e.description,
        pulled,
        origin: e.origin,
        debian: e.debian.map(|d| pb::CatalogDebian {
            archive_url: d.archive_url,
            suite: d.suite,
            component: d.component,
            arch: d.arch,
            package: d.package,
        }),
    }
}

/// The common progress update of a pull's state.
fn progress_pb(p: &crate::pull::Progress) -> Progress {
    Progress::phase(p.phase.as_str(), "").counted(p.bytes_done, p.bytes_total, ProgressUnit::Bytes)
}

/// Follows a (shared) pull for one caller: an update on every change,
/// then the kernel or the error. A caller that goes away stops following;
/// the pull goes on for the next one.
async fn follow(
    job: Arc<Job>,
    reporter: Reporter<pb::PullKernelEvent>,
) -> Result<pb::Kernel, Status> {
    let mut rx = job.subscribe();
    let mut last = None;
    loop {
        let state = rx.borrow_and_update().clone();
        if let Some(result) = state.result {
            return result.map(kernel_to_pb).map_err(|e| Status::from(&*e));
        }
        if last != Some(state.progress) {
            reporter.report(progress_pb(&state.progress));
            last = Some(state.progress);
        }
        if rx.changed().await.is_err() {
            return Err(Status::from(Error::Cancelled));
        }
    }
}

#[tonic::async_trait]
impl KernelCat for KernelCatService {
    #[tracing::instrument(skip_all)]
    async fn list_kernels(
        &self,
        _: Request<pb::ListKernelsRequest>,
    ) -> Result<Response<pb::ListKernelsResponse>, Status> {
        let kernels = self.blocking(|s| s.list()).await?;
        Ok(Response::new(pb::ListKernelsResponse {
            kernels: kernels.into_iter().map(kernel_to_pb).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(kernel = %request.get_ref().name))]
    async fn get_kernel(
        &self,
        request: Request<pb::GetKernelRequest>,
    ) -> Result<Response<pb::Kernel>, Status> {
        let name = request.into_inner().name;
        let kernel = self.blocking(move |s| s.get(&name)).await?;
        Ok(Response::new(kernel_to_pb(kernel)))
    }

    #[tracing::instrument(skip_all, fields(kernel = %request.get_ref().name, holder = %request.get_ref().holder))]
    async fn resolve_kernel(
        &self,
        request: Request<pb::ResolveKernelRequest>,
    ) -> Result<Response<pb::ResolvedKernel>, Status> {
        let pb::ResolveKernelRequest { name, holder } = request.into_inner();
        let (kernel, vmlinux, initrd) = self
            .blocking(move |s| {
                if holder.is_empty() {
                    let k = s.get(&name)?;
                    let (v, i) = (k.vmlinux_path(), k.initrd_path());
                    Ok((k, v, i))
                } else {
                    // The holder gets its own pinned links (see store.rs),
                    // which survive an update of the name.
                    let (k, held) = s.hold(&name, &holder)?;
                    Ok((k, held.vmlinux, held.initrd))
                }
            })
            .await?;
        Ok(Response::new(pb::ResolvedKernel {
            name: kernel.manifest.name.clone(),
            vmlinux_path: vmlinux.display().to_string(),
            initrd_path: initrd.map(|p| p.display().to_string()).unwrap_or_default(),
            arch: kernel.manifest.arch.clone(),
            kernel_version: kernel.manifest.kernel_version.clone(),
        }))
    }

    #[tracing::instrument(skip_all, fields(kernel = %request.get_ref().name, holder = %request.get_ref().holder))]
    async fn release_kernel(
        &self,
        request: Request<pb::ReleaseKernelRequest>,
    ) -> Result<Response<pb::ReleaseKernelResponse>, Status> {
        let pb::ReleaseKernelRequest { name, holder } = request.into_inner();
        if holder.is_empty() {
            return Err(Status::invalid_argument("holder must not be empty"));
        }
        self.blocking(move |s| s.release(&name, &holder)).await?;
        Ok(Response::new(pb::ReleaseKernelResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_catalog(
        &self,
        _: Request<pb::ListCatalogRequest>,
    ) -> Result<Response<pb::ListCatalogResponse>, Status> {
        let listing = self.catalog.list().await;
        let entries: Vec<_> = listing
            .entries
            .into_iter()
            .map(|e| {
                let pulled = self.store.contains(&e.name);
                entry_to_pb(e, pulled)
            })
            .collect();
        let hint = if entries.is_empty() {
            catalog::EMPTY_HINT.to_owned()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListCatalogResponse {
            entries,
            warnings: listing.warnings,
            hint,
        }))
    }

    type PullKernelStream = BoxStream<pb::PullKernelEvent>;

    #[tracing::instrument(skip_all, fields(kernel = %request.get_ref().name, force = request.get_ref().force))]
    async fn pull_kernel(
        &self,
        request: Request<pb::PullKernelRequest>,
    ) -> Result<Response<Self::PullKernelStream>, Status> {
        let pb::PullKernelRequest {
            name,
            force,
            update,
        } = request.into_inner();
        let job = self.puller.pull(&name, force, update)?;
        Ok(Response::new(progress::stream(Work::Shared, |reporter| {
            follow(job, reporter)
        })))
    }

    #[tracing::instrument(skip_all)]
    async fn import_kernel(
        &self,
        request: Request<Streaming<pb::ImportKernelRequest>>,
    ) -> Result<Response<pb::Kernel>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(pb::ImportKernelRequest {
                part: Some(pb::import_kernel_request::Part::Header(h)),
            }) => ImportHeader {
                name: h.name,
                distro: h.distro,
                arch: h.arch,
                kernel_version: h.kernel_version,
                force: h.force,
                vmlinux_size: h.vmlinux_size,
                initrd_size: h.initrd_size,
                config_size: h.config_size,
            },
            _ => {
                return Err(Status::invalid_argument(
                    "an import starts with a header message naming the kernel and its file sizes",
                ));
            }
        };
        let chunks = stream.map(|message| {
            let message = message.map_err(|s| Error::BadImport {
                reason: format!("the client stream failed: {}", s.message()),
            })?;
            match message.part {
                Some(pb::import_kernel_request::Part::Chunk(chunk)) => {
                    let file = match pb::KernelFile::try_from(chunk.file) {
                        Ok(pb::KernelFile::Vmlinux) => ImportFile::Vmlinux,
                        Ok(pb::KernelFile::Initrd) => ImportFile::Initrd,
                        Ok(pb::KernelFile::Config) => ImportFile::Config,
                        _ => {
                            return Err(Error::BadImport {
                                reason: format!("chunk names an unknown file ({})", chunk.file),
                            });
                        }
                    };
                    Ok((file, bytes::Bytes::from(chunk.data)))
                }
                _ => Err(Error::BadImport {
                    reason: "only the first message may be a header; the rest are chunks".into(),
                }),
            }
        });
        let kernel = import::import(
            &self.store,
            self.settings.max_unpacked_bytes,
            header,
            chunks,
        )
        .await?;
        Ok(Response::new(kernel_to_pb(kernel)))
    }

    #[tracing::instrument(skip_all, fields(kernel = %request.get_ref().name))]
    async fn delete_kernel(
        &self,
        request: Request<pb::DeleteKernelRequest>,
    ) -> Result<Response<pb::DeleteKernelResponse>, Status> {
        let name = request.into_inner().name;
        self.blocking(move |s| s.delete(&name)).await?;
        Ok(Response::new(pb::DeleteKernelResponse {}))
    }
}
