//! Verified pulls of catalog entries: download (HTTP(S) or an OCI artifact)
//! into a staging dir while hashing, check the digest, unpack with the
//! bundle rules, re-hash `vmlinux`, write the manifest, move into place.
//!
//! One pull per name runs at a time: a second caller joins the running one
//! and gets the same progress and result. A pull is shared work: it runs
//! in its own task to its end even when every caller went away (client
//! vanished, Ctrl-C), so a retry finds the kernel (proto/README.md, "Long
//! operations and cancellation"). A pull that fails, or a process that dies
//! mid-pull, leaves no staging dir (the drop guard, the store's sweep).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::bundle;
use crate::catalog::{Catalog, CatalogEntry};
use crate::error::{Error, Result};
use crate::store::{self, Manifest, Staging, Store, StoredKernel};

/// Phase of a pull, as shown to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Looking the name up in the catalog.
    #[default]
    Resolving,
    /// Transferring the bundle.
    Downloading,
    /// Checking the bundle's digest.
    Verifying,
    /// Unpacking and re-hashing.
    Unpacking,
    /// Stored.
    Done,
}

impl Phase {
    /// Lowercase name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Resolving => "resolving",
            Phase::Downloading => "downloading",
            Phase::Verifying => "verifying",
            Phase::Unpacking => "unpacking",
            Phase::Done => "done",
        }
    }
}

/// Where a pull is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Current phase.
    pub phase: Phase,
    /// Bytes transferred.
    pub bytes_done: u64,
    /// Bytes expected, 0 when unknown.
    pub bytes_total: u64,
}

/// Snapshot of a pull job.
#[derive(Debug, Clone, Default)]
pub struct JobState {
    /// Latest progress.
    pub progress: Progress,
    /// Set once, when the pull ended.
    pub result: Option<std::result::Result<StoredKernel, Arc<Error>>>,
}

/// A running (or finished) pull. Dropping a handle stops nothing.
#[derive(Debug)]
pub struct Job {
    state: watch::Receiver<JobState>,
}

impl Job {
    /// A receiver of the job's state changes.
    pub fn subscribe(&self) -> watch::Receiver<JobState> {
        self.state.clone()
    }

    /// Waits for the result.
    pub async fn wait(&self) -> std::result::Result<StoredKernel, Arc<Error>> {
        let mut rx = self.subscribe();
        loop {
            if let Some(result) = rx.borrow_and_update().result.clone() {
                return result;
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(Error::Cancelled));
            }
        }
    }
}

/// Runs pulls for the service.
#[derive(Debug)]
pub struct Puller {
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    http: reqwest::Client,
    max_unpacked_bytes: u64,
    insecure_registries: Vec<String>,
    archives: crate::debian::Archives,
    /// Pulls not finished yet (finished ones are dropped at the next pull).
    running: Mutex<HashMap<String, Arc<Job>>>,
}

impl Puller {
    /// A puller over `store` and `catalog`.
    pub fn new(
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        http: reqwest::Client,
        max_unpacked_bytes: u64,
        insecure_registries: Vec<String>,
        archives: crate::debian::Archives,
    ) -> Puller {
        Puller {
            store,
            catalog,
            http,
            max_unpacked_bytes,
            insecure_registries,
            archives,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Starts pulling `name`, or joins the pull of `name` already running.
    /// `update` (Debian entries): resolve the newest package and replace
    /// the stored kernel only if it differs.
    pub fn pull(self: &Arc<Self>, name: &str, force: bool, update: bool) -> Result<Arc<Job>> {
        store::validate_name(name)?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|_, job| job.state.borrow().result.is_none());
        if let Some(job) = running.get(name) {
            tracing::info!(kernel = name, "joining the pull already running");
            return Ok(Arc::clone(job));
        }
        if !update {
            self.store.check_replaceable(name, force)?;
        }
        let (tx, rx) = watch::channel(JobState::default());
        let this = Arc::clone(self);
        let owned = name.to_owned();
        // Its own task, never aborted: the pull finishes for whoever asks next.
        tokio::spawn(async move {
            let result = this.run(&owned, force, update, &tx).await;
            if let Err(e) = &result {
                tracing::warn!(kernel = %owned, error = %e, "pull failed");
            }
            tx.send_modify(|s| {
                if result.is_ok() {
                    s.progress.phase = Phase::Done;
                }
                s.result = Some(result.map_err(Arc::new));
            });
        });
        let job = Arc::new(Job { state: rx });
        running.insert(name.to_owned(), Arc::clone(&job));
        Ok(job)
    }

    #[tracing::instrument(skip(self, tx), fields(kernel = name))]
    async fn run(
        &self,
        name: &str,
        force: bool,
        update: bool,
        tx: &watch::Sender<JobState>,
    ) -> Result<StoredKernel> {
        let entry = self.catalog.lookup(name).await?;
        entry.validate()?;
        if let Some(src) = &entry.debian {
            return self.run_debian(&entry, src, force, update, tx).await;
        }
        if update {
            return Err(Error::BadCatalogEntry {
                name: name.into(),
                reason: "--update applies to Debian-archive entries only; use --force to \
                         download a bundle again"
                    .into(),
            });
        }
        let staging = self.store.stage(name)?;
        let bundle_path = staging.path().join(".download.tar.zst");
        let set = |phase, done, total| {
            tx.send_modify(|s| {
                s.progress = Progress {
                    phase,
                    bytes_done: done,
                    bytes_total: total,
                }
            })
        };
        set(Phase::Downloading, 0, entry.size_bytes);
        let actual = match entry.tarball_url.strip_prefix("oci://") {
            Some(reference) => {
                self.download_oci(&entry, reference, &bundle_path, tx)
                    .await?
            }
            None => self.download_http(&entry, &bundle_path, tx).await?,
        };
        let size = tx.borrow().progress.bytes_done;
        set(Phase::Verifying, size, size);
        if actual != entry.tarball_sha256 {
            return Err(Error::DigestMismatch {
                url: entry.tarball_url.clone(),
                expected: entry.tarball_sha256.clone(),
                actual,
            });
        }
        set(Phase::Unpacking, size, size);
        let max = self.max_unpacked_bytes;
        // The staging guard travels with the blocking work: if this task is
        // dropped meanwhile (the runtime shutting down), the guard is dropped when that work ends, so
        // the dir is never removed under a writer nor left behind.
        let (staging, unpacked) = tokio::task::spawn_blocking(move || {
            let result = unpack_and_inspect(&staging, &bundle_path, max);
            (staging, result)
        })
        .await
        .map_err(|e| Error::Internal(format!("unpack task failed: {e}")))?;
        let (unpacked, sha, vm_size, info) = unpacked?;
        let manifest = Manifest {
            name: name.to_owned(),
            distro: non_empty(&entry.distro).unwrap_or_else(|| "generic".into()),
            arch: non_empty(&entry.arch)
                .or(info.arch)
                .unwrap_or_else(|| std::env::consts::ARCH.into()),
            kernel_version: non_empty(&entry.kernel_version)
                .or(info.version)
                .unwrap_or_else(|| "unknown".into()),
            vmlinux_sha256: sha,
            vmlinux_size: vm_size,
            has_initrd: unpacked.has_initrd,
            has_config: unpacked.has_config,
            source: format!("pull:{}", entry.tarball_url),
            created_unix: store::now_unix(),
            holders: Default::default(),
            debian: None,
        };
        let kernel = self.store.commit(staging, &manifest, force)?;
        tracing::info!(kernel = name, sha256 = %manifest.vmlinux_sha256, "kernel pulled");
        Ok(kernel)
    }

    /// Pulls a Debian-archive entry (see [`crate::debian`]).
    #[tracing::instrument(skip_all, fields(kernel = %entry.name, archive = %src.archive_url))]
    async fn run_debian(
        &self,
        entry: &CatalogEntry,
        src: &crate::catalog::DebianSource,
        force: bool,
        update: bool,
        tx: &watch::Sender<JobState>,
    ) -> Result<StoredKernel> {
        let name = &entry.name;
        let set = |phase, done, total| {
            tx.send_modify(|s| {
                s.progress = Progress {
                    phase,
                    bytes_done: done,
                    bytes_total: total,
                }
            })
        };
        // Fail fast, before any download, when /init cannot be built.
        let agent = self.archives.agent()?;
        let staging = self.store.stage(name)?;
        let work = staging.path().join(".archive");
        std::fs::create_dir(&work).map_err(Error::io("cannot create", &work))?;
        let resolved = self.archives.resolve(src, &work).await?;
        let existing = match self.store.get(name) {
            Ok(k) => Some(k),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(k) = &existing {
            let same = k.manifest.debian.as_ref().is_some_and(|d| {
                d.package == resolved.kernel.package && d.version == resolved.kernel.version
            });
            if update && same {
                tracing::info!(kernel = %name, version = %resolved.kernel.version, "already the newest package");
                return Ok(k.clone());
            }
            if !update {
                self.store.check_replaceable(name, force)?;
            }
        }
        let total = resolved.kernel.size;
        set(Phase::Downloading, 0, total);
        let progress = |done: u64| {
            tx.send_modify(|s| {
                s.progress.bytes_done = done;
                s.progress.bytes_total = total;
            })
        };
        let (deb_bytes, fetched_from) = self
            .archives
            .download_deb(src, &resolved, &progress)
            .await?;
        set(Phase::Verifying, total, total);
        set(Phase::Unpacking, total, total);
        let max = self.max_unpacked_bytes;
        let package = resolved.kernel.package.clone();
        let (staging, built) = tokio::task::spawn_blocking(move || {
            let result = crate::debian::build(&staging, &package, &deb_bytes, &agent, max);
            (staging, result)
        })
        .await
        .map_err(|e| Error::Internal(format!("unpack task failed: {e}")))?;
        let built = built?;
        std::fs::remove_dir_all(&work).map_err(Error::io("cannot remove", &work))?;
        let vmlinux = staging.path().join(store::VMLINUX);
        let (sha, vm_size) = store::hash_file(&vmlinux)?;
        let info = store::inspect_vmlinux(&vmlinux)?;
        let manifest = Manifest {
            name: name.clone(),
            distro: non_empty(&entry.distro).unwrap_or_else(|| "debian".into()),
            arch: info
                .arch
                .or(non_empty(&entry.arch))
                .unwrap_or_else(|| "x86_64".into()),
            kernel_version: built.kver.clone(),
            vmlinux_sha256: sha,
            vmlinux_size: vm_size,
            has_initrd: true,
            has_config: true,
            source: format!(
                "debian:{} {}/{} {}",
                src.archive_url, src.suite, src.component, resolved.kernel.package
            ),
            created_unix: store::now_unix(),
            holders: Default::default(),
            debian: Some(crate::debian::facts(src, &resolved, &fetched_from, &built)),
        };
        let kernel = if update {
            self.store.commit_update(staging, &manifest)?
        } else {
            self.store.commit(staging, &manifest, force)?
        };
        tracing::info!(
            kernel = %name,
            package = %resolved.kernel.package,
            version = %resolved.kernel.version,
            signing_key = %resolved.fingerprint,
            "Debian kernel pulled"
        );
        Ok(kernel)
    }

    #[tracing::instrument(skip_all, fields(url = %entry.tarball_url))]
    async fn download_http(
        &self,
        entry: &CatalogEntry,
        dest: &Path,
        tx: &watch::Sender<JobState>,
    ) -> Result<String> {
        let url = &entry.tarball_url;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Error::Transfer {
                url: url.clone(),
                message: error_chain(&e),
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::HttpStatus {
                url: url.clone(),
                status: status.as_u16(),
            });
        }
        let total = response.content_length();
        let stream = response
            .bytes_stream()
            .map(|r| r.map_err(|e| error_chain(&e)));
        self.save(url, stream, total, dest, tx).await
    }

    #[tracing::instrument(skip_all, fields(reference))]
    async fn download_oci(
        &self,
        entry: &CatalogEntry,
        reference: &str,
        dest: &Path,
        tx: &watch::Sender<JobState>,
    ) -> Result<String> {
        use oci_client::client::{ClientConfig, ClientProtocol};
        use oci_client::secrets::RegistryAuth;
        let oci_err = |message: String| Error::Oci {
            reference: reference.to_owned(),
            message,
        };
        let parsed: oci_client::Reference = reference
            .parse()
            .map_err(|e| oci_err(format!("invalid reference: {e}")))?;
        banger_proto::tls::install_crypto_provider();
        let client = oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure_registries.clone()),
            ..Default::default()
        });
        let (manifest, _digest) = client
            .pull_image_manifest(&parsed, &RegistryAuth::Anonymous)
            .await
            .map_err(|e| oci_err(error_chain(&e)))?;
        let [layer] = manifest.layers.as_slice() else {
            return Err(Error::BadBundle {
                reason: format!(
                    "OCI artifact {reference} has {} layers; a kernel bundle is exactly one \
                     layer (the .tar.zst)",
                    manifest.layers.len()
                ),
            });
        };
        // Refuse before transferring anything when the registry offers
        // another blob than the catalog promises.
        let expected = format!("sha256:{}", entry.tarball_sha256);
        if layer.digest != expected {
            return Err(Error::DigestMismatch {
                url: entry.tarball_url.clone(),
                expected: entry.tarball_sha256.clone(),
                actual: layer
                    .digest
                    .strip_prefix("sha256:")
                    .unwrap_or(&layer.digest)
                    .to_owned(),
            });
        }
        let blob = client
            .pull_blob_stream(&parsed, layer)
            .await
            .map_err(|e| oci_err(error_chain(&e)))?;
        let total = blob.content_length.or(u64::try_from(layer.size).ok());
        let stream = blob.stream.map(|r| r.map_err(|e| error_chain(&e)));
        self.save(&entry.tarball_url, stream, total, dest, tx).await
    }

    /// Writes a byte stream to `dest`, hashing and reporting progress;
    /// returns the SHA-256 (hex).
    async fn save(
        &self,
        url: &str,
        mut stream: impl Stream<Item = std::result::Result<bytes::Bytes, String>> + Unpin,
        total: Option<u64>,
        dest: &Path,
        tx: &watch::Sender<JobState>,
    ) -> Result<String> {
        if total.is_some_and(|t| t > self.max_unpacked_bytes) {
            return Err(Error::TooLarge {
                what: format!("the download of {url}"),
                limit: self.max_unpacked_bytes,
            });
        }
        let file = tokio::fs::File::create(dest)
            .await
            .map_err(Error::io("cannot create", dest))?;
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(message) => {
                    return Err(match total {
                        Some(expected) if done < expected => Error::Truncated {
                            url: url.to_owned(),
                            got: done,
                            expected,
                        },
                        _ => Error::Transfer {
                            url: url.to_owned(),
                            message,
                        },
                    });
                }
            };
            done += chunk.len() as u64;
            if done > self.max_unpacked_bytes {
                return Err(Error::TooLarge {
                    what: format!("the download of {url}"),
                    limit: self.max_unpacked_bytes,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(Error::io("cannot write", dest))?;
            tx.send_modify(|s| {
                s.progress.bytes_done = done;
                s.progress.bytes_total = total.unwrap_or(0);
            });
        }
        if let Some(expected) = total
            && done != expected
        {
            return Err(Error::Truncated {
                url: url.to_owned(),
                got: done,
                expected,
            });
        }
        file.flush()
            .await
            .map_err(Error::io("cannot write", dest))?;
        Ok(hex::encode(hasher.finalize()))
    }
}

type Inspected = (bundle::Unpacked, String, u64, store::VmlinuxInfo);

fn unpack_and_inspect(staging: &Staging, bundle_path: &Path, max: u64) -> Result<Inspected> {
    let file = std::fs::File::open(bundle_path).map_err(Error::io("cannot open", bundle_path))?;
    let unpacked = bundle::unpack(std::io::BufReader::new(file), staging.path(), max)?;
    std::fs::remove_file(bundle_path).map_err(Error::io("cannot remove", bundle_path))?;
    let vmlinux = staging.path().join(store::VMLINUX);
    let (sha, size) = store::hash_file(&vmlinux)?;
    let info = store::inspect_vmlinux(&vmlinux)?;
    Ok((unpacked, sha, size, info))
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// An error with its sources, `a: b: c` (reqwest's Display alone hides the cause).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
