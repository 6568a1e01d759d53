//! The image store: records under `images/<name>/manifest.json` next to
//! `rootfs.ext4`, holds, and the pull pipeline: resolve → download layers
//! in parallel into the blob cache → index each layer, in order, while it
//! downloads ([`crate::flatten`]: in memory only, nothing written) → once
//! every digest verified: guest facts and guest bits on the index → one
//! flattened tar stream into `mke2fs -d -` ([`crate::ext4`]) → atomic
//! install. No tree is ever written on the host: the only disk a pull uses
//! is the blobs and the image file.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, Semaphore, mpsc};

use crate::blobs::{BlobCache, Started};
use crate::config::{Ext4Writer, ImageStoreConfig};
use crate::error::Error;
use crate::flatten::{Cancel, Flattener, Limits};
use crate::guest::{self, GuestFacts};
use crate::reference::ImageRef;
use crate::registry::{self, Credentials, Platform};

/// A built image, as stored in `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub reference: String,
    /// Digest of the platform image manifest.
    pub digest: String,
    /// Digest of the index / manifest list the reference pointed to, if any.
    #[serde(default)]
    pub index_digest: Option<String>,
    pub platform: String,
    pub size_bytes: u64,
    pub content_bytes: u64,
    pub created_unix: i64,
    pub default_kernel: String,
    pub direct_boot: bool,
    pub guest: GuestFacts,
    #[serde(default)]
    pub holders: BTreeSet<String>,
    pub layers: Vec<String>,
    #[serde(default)]
    pub config_digest: String,
    /// Where the bytes came from: `https://host` or `http://host` (a
    /// plain-HTTP registry or mirror, chosen by `insecure_registries` or a
    /// mirror URL: reported, never silent), or `import`.
    #[serde(default)]
    pub fetched_from: String,
}

/// What to pull.
#[derive(Debug, Clone, Default)]
pub struct PullRequest {
    pub reference: String,
    pub name: String,
    pub kernel_ref: String,
    pub platform: String,
    pub force: bool,
    /// An image already stored under the name is the answer, as it is:
    /// no registry is asked (ignored with `force`).
    pub if_missing: bool,
    pub credentials: Vec<Credentials>,
    /// Once set, the build stops and its child processes are killed
    /// (downloads go on for the next pull). The service sets it when the
    /// client goes away (proto/README.md, "Long operations and
    /// cancellation"); shutdown stops every build
    /// ([`crate::flatten::stop_all`]).
    pub cancel: Cancel,
}

/// What to import (the archive itself comes separately).
#[derive(Debug, Clone, Default)]
pub struct ImportRequest {
    pub name: String,
    /// Original file name, recorded as `import:<file_name>`.
    pub file_name: String,
    pub kernel_ref: String,
    pub platform: String,
    pub force: bool,
    /// As [`PullRequest::cancel`].
    pub cancel: Cancel,
}

/// One progress update of a pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// `resolving`, `downloading`, `unpacking`, `building`, `injecting`, `done`.
    pub phase: &'static str,
    pub layer: String,
    pub done: u64,
    pub total: u64,
    pub message: String,
}

/// What a built image records besides what the build measures.
#[derive(Debug, Clone)]
struct Meta {
    reference: String,
    digest: String,
    index_digest: Option<String>,
    platform: String,
    kernel_ref: String,
    config_digest: String,
    fetched_from: String,
}

/// A layer download: where its bytes can be read once it started, and
/// its verified result.
type Download = (
    tokio::sync::oneshot::Receiver<Started>,
    tokio::task::JoinHandle<Result<(), Error>>,
);

/// Sender of progress updates; a closed receiver is ignored.
pub type ProgressTx = mpsc::UnboundedSender<Progress>;

/// The image store's state.
#[derive(Debug)]
pub struct Store {
    config: ImageStoreConfig,
    images: PathBuf,
    tmp: PathBuf,
    blobs: Arc<BlobCache>,
    /// Serializes record read-modify-write (holds, installs, deletes).
    records: tokio::sync::Mutex<()>,
    /// One pull/delete per name at a time.
    names: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Pulls hold it shared; prune exclusively, so it never removes a blob a
    /// running pull just fetched.
    gate: RwLock<()>,
    guest_candidates: Vec<PathBuf>,
    clients: Arc<registry::Clients>,
}

impl Store {
    /// Opens the store: images under `images_dir` (`$STATE/images`), blobs
    /// under `blobs_dir` (`$STATE/blobs`), cleaning what a crash left behind.
    /// Staging lives in `images_dir/.staging`, on the same filesystem, so a
    /// finished image is renamed into place atomically.
    pub fn open(
        images_dir: &Path,
        blobs_dir: &Path,
        config: ImageStoreConfig,
    ) -> Result<Store, Error> {
        let images = images_dir.to_path_buf();
        let tmp = images_dir.join(".staging");
        let _ = std::fs::remove_dir_all(&tmp);
        for d in [&images, &tmp] {
            std::fs::create_dir_all(d).map_err(Error::io("cannot create", d))?;
        }
        // Refuse to start on a host whose mke2fs cannot build from a tar.
        if config.ext4_writer == crate::config::Ext4Writer::Mke2fs {
            crate::ext4::probe(&tmp)?;
        }
        if let Ok(read) = std::fs::read_dir(&images) {
            for entry in read.flatten() {
                if entry.path() != tmp && !entry.path().join("manifest.json").is_file() {
                    tracing::warn!(dir = %entry.path().display(), "removing a half-installed image");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let blobs = Arc::new(BlobCache::open(blobs_dir)?);
        let guest_candidates = guest::candidates(config.guest_dir.as_deref());
        let clients = Arc::new(registry::Clients::new(&config)?);
        Ok(Store {
            clients,
            config,
            images,
            tmp,
            blobs,
            records: tokio::sync::Mutex::default(),
            names: Mutex::default(),
            gate: RwLock::default(),
            guest_candidates,
        })
    }

    /// Overrides where the guest bundle is looked for (tests).
    pub fn set_guest_candidates(&mut self, candidates: Vec<PathBuf>) {
        self.guest_candidates = candidates;
    }

    fn name_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut names = self.names.lock().expect("name lock table poisoned");
        names.retain(|_, l| Arc::strong_count(l) > 1);
        names.entry(name.to_owned()).or_default().clone()
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.images.join(name)
    }

    /// The ext4 file of image `name`.
    pub fn ext4_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("rootfs.ext4")
    }

    fn read(&self, name: &str) -> Result<Option<Record>, Error> {
        let path = self.dir(name).join("manifest.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| Error::CorruptRecord {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", path)(e)),
        }
    }

    fn write(&self, record: &Record) -> Result<(), Error> {
        let path = self.dir(&record.name).join("manifest.json");
        banger_proto::fsutil::write_json_atomic(&path, record)
            .map_err(Error::io("cannot write", path))
    }

    /// Every image, sorted by name.
    pub fn list(&self) -> Result<Vec<Record>, Error> {
        let mut out = Vec::new();
        let read =
            std::fs::read_dir(&self.images).map_err(Error::io("cannot list", &self.images))?;
        for entry in read.flatten() {
            if let Some(name) = entry.file_name().to_str()
                && let Ok(Some(r)) = self.read(name)
            {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One image.
    pub fn get(&self, name: &str) -> Result<Record, Error> {
        banger_proto::names::validate("image", name)?;
        self.read(name)?.ok_or_else(|| Error::NotFound(name.into()))
    }

    /// Resolves `name`, taking a hold for `holder` when non-empty.
    pub async fn resolve(&self, name: &str, holder: &str) -> Result<Record, Error> {
        let _records = self.records.lock().await;
        let mut record = self.get(name)?;
        if !holder.is_empty() && record.holders.insert(holder.to_owned()) {
            self.write(&record)?;
        }
        Ok(record)
    }

    /// Drops `holder`'s hold on `name`; idempotent (also for a missing image).
    pub async fn release(&self, name: &str, holder: &str) -> Result<(), Error> {
        let _records = self.records.lock().await;
        banger_proto::names::validate("image", name)?;
        if let Some(mut record) = self.read(name)?
            && record.holders.remove(holder)
        {
            self.write(&record)?;
        }
        Ok(())
    }

    /// Deletes `name`; refused while held.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let lock = self.name_lock(name);
        let _name = lock.lock().await;
        let _records = self.records.lock().await;
        let record = self.get(name)?;
        if !record.holders.is_empty() {
            return Err(Error::InUse {
                name: name.into(),
                holders: record.holders.into_iter().collect::<Vec<_>>().join(", "),
            });
        }
        let trash = tempfile::Builder::new()
            .prefix("trash-")
            .tempdir_in(&self.tmp)
            .map_err(Error::io("cannot create a temp dir in", &self.tmp))?;
        let dir = self.dir(name);
        std::fs::rename(&dir, trash.path().join(name)).map_err(Error::io("cannot remove", &dir))?;
        drop(trash);
        Ok(())
    }

    /// Deletes blobs no image needs: (count, bytes).
    pub async fn prune(&self) -> Result<(u32, u64), Error> {
        let _gate = self.gate.write().await;
        let needed: HashSet<String> = self
            .list()?
            .into_iter()
            .flat_map(|r| r.layers.into_iter().chain(std::iter::once(r.config_digest)))
            .collect();
        let (mut count, mut bytes) = (0, 0);
        for (digest, size) in self.blobs.list()? {
            if !needed.contains(&digest) {
                self.blobs.remove(&digest)?;
                count += 1;
                bytes += size;
            }
        }
        Ok((count, bytes))
    }

    /// Pulls and builds an image; see the module docs.
    #[tracing::instrument(skip_all, fields(reference = %req.reference))]
    pub async fn pull(&self, req: PullRequest, tx: ProgressTx) -> Result<Record, Error> {
        let asked = std::time::Instant::now();
        let image = ImageRef::parse(&req.reference)?;
        let platform = Platform::parse(&req.platform)?;
        validate_kernel_ref(&req.kernel_ref)?;
        let name = if req.name.is_empty() {
            image.default_name()
        } else {
            req.name.clone()
        };
        banger_proto::names::validate("image", &name)?;
        let lock = self.name_lock(&name);
        let _name = lock.lock().await;
        let _gate = self.gate.read().await;
        if req.if_missing
            && !req.force
            && let Some(r) = self.read(&name)?
        {
            return self.reuse(&r, &req.kernel_ref).await;
        }
        let send = |p: Progress| {
            let _ = tx.send(p);
        };
        send(Progress {
            phase: "resolving",
            message: image.to_string(),
            ..Progress::default()
        });

        let existing = self.read(&name)?;
        let same = |r: &Record, digest: &str| {
            r.platform == platform.to_string()
                && (r.digest == digest || r.index_digest.as_deref() == Some(digest))
        };
        if !req.force
            && let Some(r) = &existing
            && let Some(d) = &image.digest
            && same(r, d)
        {
            return self.reuse(r, &req.kernel_ref).await;
        }
        let remotes = registry::remotes(&self.clients, &self.config, &image, &req.credentials)?;
        let clients_at = asked.elapsed();
        if !req.force
            && let Some(r) = &existing
            && r.reference == image.to_string()
            && let Some(d) = registry::head_digest(&remotes).await
            && same(r, &d)
        {
            return self.reuse(r, &req.kernel_ref).await;
        }
        let resolved = registry::resolve(remotes, &image, &platform).await?;
        if !req.force
            && let Some(r) = &existing
            && same(r, &resolved.digest)
        {
            return self.reuse(r, &req.kernel_ref).await;
        }
        let remote = Arc::new(resolved.remote.clone());
        let manifest = &resolved.manifest;

        // Room for what is not cached yet, checked before a byte arrives:
        // a full disk is refused now, not half-way through a layer.
        let missing: u64 = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .filter(|d| !self.blobs.has(&d.digest))
            .map(|d| u64::try_from(d.size).unwrap_or(0))
            .sum();
        self.blobs.ensure_room(missing)?;

        let resolved_at = asked.elapsed();
        // The config blob, kept in the cache like the layers.
        if !self.blobs.has(&manifest.config.digest) {
            let bytes = remote.fetch_small(&manifest.config).await?;
            let mut w = self.blobs.writer(&manifest.config.digest)?;
            w.write(&bytes)?;
            w.commit()?;
        }

        tracing::info!(
            clients_ms = clients_at.as_millis() as u64,
            resolve_ms = resolved_at.as_millis() as u64,
            config_ms = (asked.elapsed() - resolved_at).as_millis() as u64,
            "manifest resolved"
        );
        // Downloads, bounded, all started now; unpacking follows in order.
        let sem = Arc::new(Semaphore::new(self.config.max_parallel_layers.max(1)));
        let mut downloads = Vec::new();
        for layer in &manifest.layers {
            let (remote, sem, blobs, tx, layer) = (
                remote.clone(),
                sem.clone(),
                self.blobs.clone(),
                tx.clone(),
                layer.clone(),
            );
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            downloads.push((
                started_rx,
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await.expect("semaphore never closed");
                    let total = u64::try_from(layer.size).unwrap_or(0);
                    let digest = layer.digest.clone();
                    remote
                        .fetch_blob(
                            &blobs,
                            &layer,
                            |started| {
                                let _ = started_tx.send(started);
                            },
                            |done| {
                                let _ = tx.send(Progress {
                                    phase: "downloading",
                                    layer: digest.clone(),
                                    done,
                                    total,
                                    message: String::new(),
                                });
                            },
                        )
                        .await
                }),
            ));
        }
        self.assemble(
            &name,
            &manifest.layers,
            downloads,
            Meta {
                reference: image.to_string(),
                digest: resolved.digest.clone(),
                index_digest: resolved.index_digest.clone(),
                platform: platform.to_string(),
                kernel_ref: req.kernel_ref.clone(),
                config_digest: manifest.config.digest.clone(),
                fetched_from: resolved.remote.endpoint(),
            },
            tx,
            req.cancel.clone(),
        )
        .await
    }

    /// Indexes `layers` in order, each while its download (or import) runs,
    /// then, all verified, injects the guest bits, builds the ext4 and
    /// installs it.
    async fn assemble(
        &self,
        name: &str,
        layers: &[oci_client::manifest::OciDescriptor],
        mut downloads: Vec<Download>,
        meta: Meta,
        tx: ProgressTx,
        cancel: Cancel,
    ) -> Result<Record, Error> {
        let name = name.to_owned();
        let send = |p: Progress| {
            let _ = tx.send(p);
        };
        let abort_all = |downloads: &[Download]| {
            for (_, d) in downloads {
                d.abort();
            }
        };

        let started = std::time::Instant::now();
        let cfg = &self.config;
        let mut flat = Flattener::new(Limits {
            bytes: cfg.max_unpacked_bytes,
            entries: cfg.max_entries,
            entries_per_dir: cfg.max_entries_per_dir,
            dir_work: cfg.max_dir_work,
            memory: cfg.flatten_memory_bytes,
        });
        for (i, layer) in layers.iter().enumerate() {
            // Index the layer while it downloads (or from the cache), then
            // require the download's verdict. Nothing is written here: the
            // emit pass starts only once every layer verified.
            let source = (&mut downloads[i].0).await.ok();
            let indexed = match source {
                None => None,
                Some(source) => {
                    send(Progress {
                        phase: "unpacking",
                        layer: layer.digest.clone(),
                        total: u64::try_from(layer.size).unwrap_or(0),
                        ..Progress::default()
                    });
                    let blob = self.blobs.path(&layer.digest)?;
                    let digest = layer.digest.clone();
                    let (f, r) = tokio::task::spawn_blocking(move || {
                        let r = match source {
                            Started::Cached => std::fs::File::open(&blob)
                                .map_err(Error::io("cannot open layer", &blob))
                                .and_then(|file| flat.add_layer(file, &digest)),
                            Started::Live(live) => flat.add_layer(live.reader(), &digest),
                        };
                        (flat, r)
                    })
                    .await
                    .expect("index task panicked");
                    flat = f;
                    Some(r)
                }
            };
            let downloaded = match (&mut downloads[i].1).await {
                Ok(r) => r,
                Err(e) => Err(Error::Download {
                    digest: layer.digest.clone(),
                    message: e.to_string(),
                }),
            };
            let result = downloaded.and_then(|()| {
                indexed.unwrap_or_else(|| {
                    Err(Error::Download {
                        digest: layer.digest.clone(),
                        message: "the download ended without data".into(),
                    })
                })
            });
            let result = result.and_then(|()| {
                if crate::flatten::cancelled(&cancel) {
                    Err(Error::Cancelled)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                // A stopped build leaves the downloads running: a retry (or
                // another image sharing the layers) finds them.
                if !matches!(e, Error::Cancelled) {
                    abort_all(&downloads);
                }
                return Err(e);
            }
        }

        let unpacked_at = started.elapsed();
        send(Progress {
            phase: "injecting",
            ..Progress::default()
        });
        let staging = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(&self.tmp)
            .map_err(Error::io("cannot create a temp dir in", &self.tmp))?;
        let candidates = self.guest_candidates.clone();
        let out = staging.path().join("out");
        std::fs::create_dir(&out).map_err(Error::io("cannot create", &out))?;
        let sizing = (
            cfg.ext4_headroom_percent,
            cfg.ext4_min_headroom_mib,
            cfg.max_image_bytes,
        );
        let label = name.clone();
        let tx2 = tx.clone();
        let ext4 = out.join("rootfs.ext4");
        let scratch = staging.path().to_path_buf();
        let blob_paths = layers
            .iter()
            .map(|l| self.blobs.path(&l.digest))
            .collect::<Result<Vec<_>, _>>()?;
        let cancel2 = cancel.clone();
        let writer = cfg.ext4_writer;
        let (facts, size, content) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let facts = guest::facts(&mut flat);
            let has_agent = match guest::find_bundle(&candidates) {
                Some(bundle) => guest::inject(&mut flat, &bundle)?,
                None => {
                    tracing::warn!(
                        looked_in = ?candidates,
                        "no guest bundle found (set guest_dir in [imagestore] or BANGER_GUEST_DIR); \
                         building the image without banger-agent and banger-first-boot"
                    );
                    false
                }
            };
            let _ = tx2.send(Progress {
                phase: "building",
                ..Progress::default()
            });
            let t = std::time::Instant::now();
            let open = |i: usize| -> Result<Box<dyn std::io::Read>, Error> {
                let p = &blob_paths[i];
                Ok(Box::new(
                    std::fs::File::open(p).map_err(Error::io("cannot open layer", p))?,
                ))
            };
            let capture: Vec<_> = facts.os_release.into_iter().collect();
            let (stats, size, emitted) = match writer {
                Ext4Writer::Builtin => {
                    // Linear in every directory's size: only the entry caps apply.
                    let stats = flat.stats();
                    let (size, emitted) = crate::ext4::build_builtin(
                        &ext4,
                        &label,
                        stats,
                        sizing,
                        flat.root_meta(),
                        |w| flat.write_ext4(w, &open, &capture, &cancel2),
                    )?;
                    let built = t.elapsed();
                    crate::ext4::check(&ext4, &cancel2)?;
                    tracing::info!(
                        entries = stats.inodes,
                        write_ms = built.as_millis() as u64,
                        e2fsck_ms = (t.elapsed() - built).as_millis() as u64,
                        "ext4 built"
                    );
                    (stats, size, emitted)
                }
                Ext4Writer::Mke2fs => {
                    let stats = flat.checked_stats()?;
                    let (size, emitted) = crate::ext4::build(
                        &ext4,
                        &label,
                        stats,
                        sizing,
                        |w| flat.emit(w, &open, &capture, &cancel2),
                        &cancel2,
                    )?;
                    let built = t.elapsed();
                    crate::ext4::fix_up(&ext4, &emitted.fixups, &scratch, &cancel2)?;
                    let fixed = t.elapsed();
                    crate::ext4::check(&ext4, &cancel2)?;
                    tracing::info!(
                        entries = stats.inodes,
                        fixups = emitted.fixups.len(),
                        mke2fs_ms = built.as_millis() as u64,
                        debugfs_ms = (fixed - built).as_millis() as u64,
                        e2fsck_ms = (t.elapsed() - fixed).as_millis() as u64,
                        "ext4 built"
                    );
                    (stats, size, emitted)
                }
            };
            let mut facts = facts.finish(&emitted.captured);
            facts.has_agent = has_agent;
            Ok((facts, size, stats.content))
        })
        .await
        .expect("build task panicked")?;

        let record = Record {
            name: name.clone(),
            reference: meta.reference,
            digest: meta.digest,
            index_digest: meta.index_digest,
            platform: meta.platform,
            size_bytes: size,
            content_bytes: content,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            default_kernel: meta.kernel_ref,
            direct_boot: true,
            guest: facts,
            holders: BTreeSet::new(),
            layers: layers.iter().map(|l| l.digest.clone()).collect(),
            config_digest: meta.config_digest,
            fetched_from: meta.fetched_from,
        };
        let record = self.install(&out, record).await?;
        tracing::info!(
            image = %record.name,
            download_and_unpack_ms = unpacked_at.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "image built"
        );
        drop(staging);
        send(Progress {
            phase: "done",
            ..Progress::default()
        });
        Ok(record)
    }

    /// A temp file for an archive being received.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile, Error> {
        tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(Error::io("cannot create a temp file in", &self.tmp))
    }

    /// Imports the `docker save` or OCI archive at `archive` as `req.name`.
    #[tracing::instrument(skip_all, fields(image = %req.name))]
    pub async fn import(
        &self,
        req: ImportRequest,
        archive: &Path,
        tx: ProgressTx,
    ) -> Result<Record, Error> {
        banger_proto::names::validate("image", &req.name)?;
        let platform = Platform::parse(&req.platform)?;
        validate_kernel_ref(&req.kernel_ref)?;
        if req.file_name.chars().any(char::is_control) {
            return Err(Error::ControlCharacters {
                field: "file name",
                value: req.file_name,
            });
        }
        let lock = self.name_lock(&req.name);
        let _name = lock.lock().await;
        let _gate = self.gate.read().await;
        let _ = tx.send(Progress {
            phase: "resolving",
            message: format!("reading {}", req.file_name),
            ..Progress::default()
        });
        let (archive, blobs, platform2) =
            (archive.to_path_buf(), self.blobs.clone(), platform.clone());
        let found = tokio::task::spawn_blocking(move || {
            crate::import::read_archive(&archive, &platform2, &blobs)
        })
        .await
        .expect("import task panicked")?;
        if !req.force
            && let Some(r) = self.read(&req.name)?
            && r.digest == found.digest
        {
            return self.reuse(&r, &req.kernel_ref).await;
        }
        let downloads = found
            .layers
            .iter()
            .map(|_| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = tx.send(Started::Cached);
                (rx, tokio::spawn(async { Ok(()) }))
            })
            .collect();
        self.assemble(
            &req.name,
            &found.layers,
            downloads,
            Meta {
                reference: format!("import:{}", req.file_name),
                digest: found.digest,
                index_digest: None,
                platform: platform.to_string(),
                kernel_ref: req.kernel_ref.clone(),
                config_digest: found.config_digest,
                fetched_from: "import".into(),
            },
            tx,
            req.cancel.clone(),
        )
        .await
    }

    /// Answers a pull with an image already built from the same digest,
    /// recording a new default kernel if one was asked for.
    async fn reuse(&self, record: &Record, kernel_ref: &str) -> Result<Record, Error> {
        if kernel_ref.is_empty() || record.default_kernel == kernel_ref {
            return Ok(record.clone());
        }
        let _records = self.records.lock().await;
        let mut record = self.get(&record.name)?;
        record.default_kernel = kernel_ref.to_owned();
        self.write(&record)?;
        Ok(record)
    }

    /// Moves a built `out` dir into `images/<name>`, keeping the holds of
    /// the image it replaces.
    async fn install(&self, out: &Path, mut record: Record) -> Result<Record, Error> {
        let _records = self.records.lock().await;
        let dir = self.dir(&record.name);
        let old = self.read(&record.name).ok().flatten();
        if let Some(old) = &old {
            record.holders = old.holders.clone();
        }
        let manifest = out.join("manifest.json");
        banger_proto::fsutil::write_json_atomic(&manifest, &record)
            .map_err(Error::io("cannot write", &manifest))?;
        if dir.exists() {
            // Swap atomically so the name is never missing, then drop the old one.
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                out,
                nix::fcntl::AT_FDCWD,
                &dir,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .map_err(|e| Error::io("cannot install", &dir)(e.into()))?;
            let _ = std::fs::remove_dir_all(out);
        } else {
            std::fs::rename(out, &dir).map_err(Error::io("cannot install", &dir))?;
        }
        Ok(record)
    }
}

/// A `--kernel-ref` is a kernel name (dotted DNS labels, `generic-6.12`);
/// empty means none.
fn validate_kernel_ref(kernel_ref: &str) -> Result<(), Error> {
    if kernel_ref.is_empty() {
        return Ok(());
    }
    Ok(banger_proto::names::validate_dotted("kernel", kernel_ref)?)
}
