//! Prepared images: an image without an init or sshd (Docker Hub's
//! `debian:bookworm` has neither) is prepared once per digest — a one-off
//! VM whose first boot installs what the image lacks with the guest's
//! package manager, cleans up after itself and powers off — and every VM
//! after that copies the prepared filesystem and boots straight into
//! systemd.
//!
//! Where it lives: imagestore owns images as pulled (a function of the
//! registry's bytes); a prepared filesystem is the product of *running* the
//! image, which is vmm's job (hypervisor, lease, console), so vmm owns it,
//! as a cache derived from an image digest, under
//! `$STATE/vms/.prepared/<digest>/` (`rootfs.ext4`, `prepared.json`,
//! `prepare.log`). A failed preparation keeps its console log and reason in
//! `<digest>.failed/`; the image stays unprepared. The CLI joins this with
//! imagestore's view for `image list/show`, and drops the prepared copy on
//! `image rm` (vmm also drops copies whose image is gone when asked to
//! prune). Concurrent creates of one unprepared image wait for one
//! preparation, which runs to the end even if the caller that started it
//! goes away (DESIGN §4: shared work finishes).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_proto::guest::{FirstBootEvent, Identity, Purpose};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::Manager;
use super::progress::Phases;
use crate::cmdline::{self, CmdlineSpec};
use crate::disk;
use crate::error::{Error, Result};
use crate::firstboot::{ConsoleFollower, GuestFailure};
use crate::hypervisor::{self, LaunchSpec};
use crate::record::{self, ImageInfo, KernelInfo, VmPaths};

/// What `.prepared/<digest>/prepared.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepared {
    /// The image digest it was prepared from.
    pub digest: String,
    /// The image name it was prepared for (another name of the same digest
    /// uses it too).
    pub image: String,
    pub kernel: String,
    /// What first boot installed.
    pub packages: Vec<String>,
    pub prepared_unix: i64,
    pub seconds: f64,
    pub has_systemd: bool,
    pub has_ssh_server: bool,
    pub size_bytes: u64,
    #[serde(skip)]
    pub rootfs: PathBuf,
}

/// What `.prepared/<digest>.failed/failed.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedPreparation {
    pub digest: String,
    pub image: String,
    pub failed_unix: i64,
    pub why: String,
    #[serde(skip)]
    pub log: PathBuf,
}

/// A preparation's outcome as every waiter sees it.
type Outcome = std::result::Result<Prepared, Failure>;

/// Why a preparation failed, shared by its waiters: the reason, the kept
/// console log, and the disk-full fact when that was the cause (every
/// waiter then gets [`Error::NoSpace`], not a failed preparation).
#[derive(Debug, Clone)]
struct Failure {
    why: String,
    log: PathBuf,
    no_space: Option<banger_proto::fsutil::NoSpace>,
}

/// One preparation under way: its result when done, and its progress.
#[derive(Debug, Clone)]
pub(super) struct Inflight {
    result: watch::Receiver<Option<Outcome>>,
    events: broadcast::Sender<(String, u64, u64)>,
}

/// The prepared filesystems on disk.
#[derive(Debug, Clone)]
pub struct PreparedStore {
    root: PathBuf,
}

impl PreparedStore {
    /// Under `vms` (`$STATE/vms`): `.prepared/`.
    pub fn new(vms: &Path) -> PreparedStore {
        PreparedStore {
            root: vms.join(".prepared"),
        }
    }

    /// `sha256:<hex>` → `sha256-<hex>`; anything else is refused (a digest
    /// names a directory here).
    fn key(digest: &str) -> Result<String> {
        let ok = digest.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty()
                && alg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && (16..=128).contains(&hex.len())
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return Err(Error::InvalidDigest {
                digest: digest.to_string(),
            });
        }
        Ok(digest.replacen(':', "-", 1))
    }

    fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
    fn work(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.work"))
    }
    fn failed(&self, key: &str) -> PathBuf {
        self.root.join(format!("{key}.failed"))
    }

    /// The prepared filesystem of `digest`, if there is a complete one.
    pub fn get(&self, digest: &str) -> Option<Prepared> {
        let dir = self.dir(&Self::key(digest).ok()?);
        let mut p: Prepared =
            serde_json::from_slice(&std::fs::read(dir.join("prepared.json")).ok()?).ok()?;
        p.rootfs = dir.join("rootfs.ext4");
        p.rootfs.is_file().then_some(p)
    }

    /// The last failed preparation of `digest`, if it has not been redone.
    pub fn failure(&self, digest: &str) -> Option<FailedPreparation> {
        let dir = self.failed(&Self::key(digest).ok()?);
        let mut f: FailedPreparation =
            serde_json::from_slice(&std::fs::read(dir.join("failed.json")).ok()?).ok()?;
        f.log = dir.join("console.log");
        Some(f)
    }

    /// Every prepared filesystem and every failed preparation.
    pub fn list(&self) -> (Vec<Prepared>, Vec<FailedPreparation>) {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for entry in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = |k: &str| k.replacen('-', ":", 1);
            if let Some(k) = name.strip_suffix(".failed") {
                failed.extend(self.failure(&digest(k)));
            } else if !name.contains('.') {
                done.extend(self.get(&digest(&name)));
            }
        }
        done.sort_by(|a, b| a.image.cmp(&b.image));
        failed.sort_by(|a, b| a.image.cmp(&b.image));
        (done, failed)
    }

    /// Drops the prepared filesystem and failure record of `digest`.
    /// Whether there was anything.
    pub fn remove(&self, digest: &str) -> Result<bool> {
        let key = Self::key(digest)?;
        let mut any = false;
        for dir in [self.dir(&key), self.failed(&key)] {
            if dir.exists() {
                any = true;
                record::remove_dir_all(&dir)?;
            }
        }
        Ok(any)
    }

    /// Work dirs of preparations a crash cut short.
    fn leftovers(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "work"))
            .collect()
    }
}

/// What a preparation's work dir records while it runs, for reconcile.
#[derive(Debug, Serialize, Deserialize)]
struct Running {
    id: String,
    pid: Option<u32>,
    helper_pid: Option<u32>,
}

/// Whether VMs of `image` need its prepared filesystem
/// ([`banger_proto::guest::needs_preparation`]).
pub fn needs_preparation(image: &ImageInfo) -> bool {
    banger_proto::guest::needs_preparation(
        image.direct_boot,
        image.has_agent,
        &image.os_id,
        &image.os_id_like,
        image.has_systemd,
        image.has_ssh_server,
    )
}

impl Manager {
    /// Prepares the image `name` (the explicit `PrepareImage`; creates do
    /// it on their own): resolves it and its kernel under a holder of its
    /// own, prepares (once per digest, or again with `force`), releases.
    pub async fn prepare_image(
        &self,
        name: &str,
        kernel: Option<String>,
        force: bool,
        progress: &dyn super::Progress,
    ) -> Result<Prepared> {
        banger_proto::names::validate("image", name)?;
        if let Some(k) = &kernel {
            banger_proto::names::validate_dotted("kernel", k)?;
        }
        let peers = &self.inner.peers;
        let holder = format!("prepare-{}", record::new_id());
        let phase = Phases::new(progress, name);
        phase.start("resolving", format!("image {name}")).await;
        let image = peers.resolve_image(name, &holder).await?;
        let kernel_name = kernel
            .or_else(|| Some(image.default_kernel.clone()).filter(|k| !k.is_empty()))
            .unwrap_or_else(|| self.inner.cfg.default_kernel.clone());
        let result = async {
            let kernel = peers.resolve_kernel(&kernel_name, &holder).await?;
            phase.end().await;
            if !needs_preparation(&image) {
                return Err(Error::NothingToPrepare {
                    image: image.name.clone(),
                    why: if banger_proto::guest::family_of(&image.os_id, &image.os_id_like)
                        .is_none()
                    {
                        "it names no distribution first boot can install on (e.g. busybox): its VMs run the banger agent as PID 1"
                    } else if !image.direct_boot || !image.has_agent {
                        "it boots its own init (imported without banger's first boot)"
                    } else {
                        "it has systemd and an SSH server already"
                    },
                });
            }
            phase
                .start("preparing", format!("preparing {name} for its first boot"))
                .await;
            let p = self.prepared(&image, &kernel, force, &phase).await?;
            phase.end().await;
            Ok(p)
        }
        .await;
        let _ = peers.release_kernel(&kernel_name, &holder).await;
        let _ = peers.release_image(name, &holder).await;
        result
    }

    /// The prepared filesystems and failed preparations (for `image list`).
    pub fn prepared_images(&self) -> (Vec<Prepared>, Vec<FailedPreparation>) {
        self.prepared_store().list()
    }

    /// Drops the prepared filesystem of `digest` (`image rm`, `prepare
    /// --force`). Refused while a preparation of it runs.
    pub fn drop_prepared(&self, digest: &str) -> Result<bool> {
        if self.inflight(digest).is_some() {
            return Err(Error::PreparationRunning {
                digest: digest.to_string(),
            });
        }
        self.prepared_store().remove(digest)
    }

    pub(super) fn prepared_store(&self) -> PreparedStore {
        PreparedStore::new(self.inner.store.root())
    }

    fn inflight(&self, digest: &str) -> Option<Inflight> {
        self.inner
            .preparing
            .lock()
            .expect("preparation table poisoned")
            .get(digest)
            .cloned()
    }

    /// The prepared filesystem of `image`, made first if there is none (or
    /// `force`): one preparation per digest however many callers ask;
    /// each caller sees its progress under `phase`.
    pub(super) async fn prepared(
        &self,
        image: &ImageInfo,
        kernel: &KernelInfo,
        force: bool,
        phase: &Phases<'_>,
    ) -> Result<Prepared> {
        let store = self.prepared_store();
        let inflight = {
            let mut table = self
                .inner
                .preparing
                .lock()
                .expect("preparation table poisoned");
            match table.get(&image.digest) {
                Some(running) => running.clone(),
                None => {
                    // Checked under the table's lock: a preparation that
                    // just finished has left its result on disk.
                    if !force && let Some(done) = store.get(&image.digest) {
                        return Ok(done);
                    }
                    let (result_tx, result) = watch::channel(None);
                    let (events, _) = broadcast::channel(64);
                    let running = Inflight { result, events };
                    table.insert(image.digest.clone(), running.clone());
                    let (mgr, image, kernel, tx) = (
                        self.clone(),
                        image.clone(),
                        kernel.clone(),
                        running.events.clone(),
                    );
                    // Its own task: it finishes even if this caller goes away.
                    tokio::spawn(async move {
                        let outcome = mgr.run_preparation(&image, &kernel, &tx).await;
                        let _ = result_tx.send(Some(outcome));
                        mgr.inner
                            .preparing
                            .lock()
                            .expect("preparation table poisoned")
                            .remove(&image.digest);
                    });
                    running
                }
            }
        };
        let mut events = inflight.events.subscribe();
        let mut result = inflight.result.clone();
        let outcome = loop {
            // The watch guard is dropped inside the future: never held
            // across an await.
            let done = async { result.wait_for(Option::is_some).await.map(|v| v.clone()) };
            tokio::select! {
                r = done => {
                    break match r {
                        Ok(v) => v.expect("waited for Some"),
                        Err(_) => Err(Failure {
                            why: "the preparation task ended without a result".into(),
                            log: store.failed(&PreparedStore::key(&image.digest)?),
                            no_space: None,
                        }),
                    };
                }
                ev = events.recv() => {
                    if let Ok((message, done, total)) = ev {
                        phase.update(message, done, total).await;
                    }
                }
                // A create whose caller went away stops waiting; the
                // preparation is shared and goes on for the next VM.
                e = phase.gone() => return Err(e),
            }
        };
        outcome.map_err(|f| match f.no_space {
            Some(full) => Error::NoSpace(full),
            None => Error::PreparationFailed {
                image: image.name.clone(),
                why: f.why,
                log: f.log,
            },
        })
    }

    /// Boots the one-off preparation VM of `image` and keeps its result.
    async fn run_preparation(
        &self,
        image: &ImageInfo,
        kernel: &KernelInfo,
        events: &broadcast::Sender<(String, u64, u64)>,
    ) -> Outcome {
        let store = self.prepared_store();
        let key = PreparedStore::key(&image.digest).map_err(|e| Failure {
            why: e.to_string(),
            log: PathBuf::new(),
            no_space: None,
        })?;
        let work = store.work(&key);
        let hex = key.split_once('-').map_or(key.as_str(), |(_, h)| h);
        let id = format!("prep-{}", &hex[..12.min(hex.len())]);
        let paths = VmPaths {
            dir: work.clone(),
            run: self.inner.store.run_root().join(&id),
        };
        let started = Instant::now();
        let _ = record::remove_dir_all(&work);
        let ran = async {
            std::fs::create_dir_all(&work).map_err(Error::io("cannot create", &work))?;
            let result = self
                .boot_preparation(image, kernel, &id, &paths, events)
                .await;
            // Whatever happened: nothing of the preparation VM stays.
            self.end_preparation_vm(&id, &paths).await;
            let packages = result?;
            let disk_path = paths.disk();
            let (has_systemd, has_ssh_server) = tokio::task::spawn_blocking(move || {
                disk::repair(&disk_path)?;
                let any = |ps: &[&str]| -> Result<bool> {
                    for p in ps {
                        if disk::exists(&disk_path, p)? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                };
                Ok::<_, Error>((
                    any(&["/usr/lib/systemd/systemd", "/lib/systemd/systemd"])?,
                    any(&["/usr/sbin/sshd", "/sbin/sshd"])?,
                ))
            })
            .await
            .map_err(Error::task("prepare"))??;
            Ok::<_, Error>(Prepared {
                digest: image.digest.clone(),
                image: image.name.clone(),
                kernel: kernel.name.clone(),
                packages,
                prepared_unix: record::now_unix(),
                seconds: started.elapsed().as_secs_f64(),
                has_systemd,
                has_ssh_server,
                size_bytes: std::fs::metadata(paths.disk()).map_or(0, |m| m.len()),
                rootfs: PathBuf::new(),
            })
        }
        .await;
        match ran.and_then(|p| self.keep_prepared(&store, &key, &work, p)) {
            Ok(p) => {
                tracing::info!(image = %image.name, seconds = p.seconds, packages = ?p.packages, "image prepared");
                Ok(p)
            }
            Err(e) => {
                let why = e.to_string();
                tracing::warn!(image = %image.name, "preparation failed: {why}");
                let log = keep_failure(&store, &key, &work, image, &why);
                let _ = record::remove_dir_all(&work);
                Err(Failure {
                    why,
                    log,
                    no_space: match e {
                        Error::NoSpace(full) => Some(full),
                        _ => None,
                    },
                })
            }
        }
    }

    /// Copy, identity, boot, and follow first boot until it reports
    /// `Prepared` (the installed packages) or fails.
    async fn boot_preparation(
        &self,
        image: &ImageInfo,
        kernel: &KernelInfo,
        id: &str,
        paths: &VmPaths,
        events: &broadcast::Sender<(String, u64, u64)>,
    ) -> Result<Vec<String>> {
        let cfg = &self.inner.cfg;
        let send = |m: String, done, total| {
            let _ = events.send((m, done, total));
        };
        send(
            format!(
                "preparing {} for its first boot: copying the image",
                image.name
            ),
            0,
            0,
        );
        let (src, dst) = (image.ext4_path.clone(), paths.disk());
        let size = image.size_bytes + (cfg.prepare_headroom_mib << 20);
        tokio::task::spawn_blocking(move || -> Result<()> {
            disk::copy_image(&src, &dst)?;
            disk::grow(&dst, size)
        })
        .await
        .map_err(Error::task("prepare disk"))??;

        // NAT on: the guest's package manager must reach its mirror (or
        // the proxy `[guest]` names).
        let lease = self.inner.peers.allocate(id, true).await?;
        let identity = Identity {
            hostname: "banger-prepare".into(),
            dns: lease.dns.clone(),
            ip: Some(format!("{}/{}", lease.ip, lease.prefix_len)),
            gateway: Some(lease.gateway.clone()),
            purpose: Purpose::Prepare,
            network: cfg.guest.network(),
            ..Identity::default()
        };
        let disk_path = paths.disk();
        tokio::task::spawn_blocking(move || disk::write_identity(&disk_path, &identity))
            .await
            .map_err(Error::task("prepare identity"))??;

        // The default backend (what `auto` chose at start).
        let backend_kind = self.inner.default_backend.backend;
        let backend = self.backend(backend_kind)?;
        let cmdline = cmdline::build(&CmdlineSpec {
            hostname: "banger-prepare",
            lease: Some(&lease),
            direct_boot: true,
            tsc_khz: if backend.emulated() {
                self.inner.tsc_khz
            } else {
                None
            },
            // First boot runs the install: not a direct systemd boot.
            systemd: None,
        });
        let _ = std::fs::write(paths.console_log(), b"");
        let launched = backend
            .launch(&LaunchSpec {
                id: id.to_owned(),
                kernel: kernel.vmlinux_path.clone(),
                initrd: kernel.initrd_path.clone(),
                cmdline,
                disk: paths.disk(),
                vcpus: cfg.default_vcpus,
                // dpkg and apt want room; more than a VM's default is cheap
                // (untouched guest memory costs nothing).
                memory_mib: cfg.default_memory_mib.max(1024),
                net: Some((lease.tap.clone(), lease.mac.clone())),
                vsock: false,
                paths: paths.clone(),
            })
            .await?;
        let running = Running {
            id: id.to_owned(),
            pid: Some(launched.pid),
            helper_pid: launched.helper_pid,
        };
        let marker = paths.dir.join("running.json");
        banger_proto::fsutil::write_json_atomic(&marker, &running)
            .map_err(Error::io("cannot write", &marker))?;
        send(
            format!("preparing {}: booting its first boot", image.name),
            0,
            0,
        );

        let mut child = launched.child;
        let mut follower = ConsoleFollower::new(&paths.console_log());
        let timeout = Duration::from_secs(u64::from(cfg.prepare_timeout_secs));
        let deadline = Instant::now() + timeout;
        let mut prepared: Option<(Vec<String>, Instant)> = None;
        loop {
            let exited = tokio::select! {
                s = child.wait() => Some(s),
                _ = tokio::time::sleep(Duration::from_millis(300)) => None,
            };
            for event in follower.poll() {
                if let Some(failure) = GuestFailure::from_event(&event) {
                    return Err(Error::FirstBootFailed {
                        vm: id.to_string(),
                        failure,
                    });
                }
                match event {
                    FirstBootEvent::Installing { manager, packages } => send(
                        format!(
                            "preparing {}: installing {} with {manager}",
                            image.name,
                            packages.join(", ")
                        ),
                        0,
                        0,
                    ),
                    FirstBootEvent::Progress {
                        step,
                        done,
                        total,
                        detail,
                    } => send(
                        format!("preparing {}: {step} {detail}", image.name)
                            .trim_end()
                            .to_owned(),
                        done,
                        total,
                    ),
                    FirstBootEvent::Installed { packages, seconds } => send(
                        format!(
                            "preparing {}: installed {} in {seconds}s",
                            image.name,
                            packages.join(", ")
                        ),
                        0,
                        0,
                    ),
                    FirstBootEvent::Prepared { packages } => {
                        prepared = Some((packages, Instant::now()));
                    }
                    _ => {}
                }
            }
            if let Some(status) = exited {
                return match prepared {
                    Some((packages, _)) => Ok(packages),
                    None => Err(Error::Boot {
                        cause: format!(
                            "the preparation VM ({backend_kind}) ended before first boot finished ({})",
                            status.map_or_else(|e| e.to_string(), |s| s.to_string())
                        ),
                        console_tail: super::console_tail(&paths.console_log()),
                    }),
                };
            }
            if let Some((packages, at)) = &prepared
                && at.elapsed() > Duration::from_secs(20)
            {
                // First boot synced before powering off; a hypervisor that
                // does not exit on a guest power-off is ended here, and
                // the filesystem is checked after.
                tracing::info!("the preparation VM did not exit after powering off; killing it");
                return Ok(packages.clone());
            }
            if Instant::now() >= deadline {
                return Err(Error::Boot {
                    cause: format!(
                        "first boot did not finish within {}s ([vmm] prepare_timeout_secs)",
                        timeout.as_secs()
                    ),
                    console_tail: super::console_tail(&paths.console_log()),
                });
            }
        }
    }

    /// Kills the preparation VM if it still runs and gives back its lease
    /// and sockets. Never fails (logged).
    async fn end_preparation_vm(&self, id: &str, paths: &VmPaths) {
        let marker = paths.dir.join("running.json");
        let running: Option<Running> = std::fs::read(&marker)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        if let Some(r) = &running {
            if let Some(pid) = r.pid
                && hypervisor::is_ours(pid, paths)
            {
                hypervisor::kill(pid);
                hypervisor::wait_gone(pid, Duration::from_secs(10)).await;
            }
            hypervisor::cleanup_after_exit(paths, r.helper_pid);
        } else {
            hypervisor::cleanup_after_exit(paths, None);
        }
        if let Err(e) = self.inner.peers.release_lease(id).await {
            tracing::error!(id, "cannot release the preparation VM's lease: {e}");
        }
        let _ = std::fs::remove_file(&marker);
    }

    /// Moves a finished work dir into place as the digest's prepared
    /// filesystem (replacing an older one) and forgets an old failure.
    fn keep_prepared(
        &self,
        store: &PreparedStore,
        key: &str,
        work: &Path,
        mut p: Prepared,
    ) -> Result<Prepared> {
        let _ = std::fs::rename(work.join("console.log"), work.join("prepare.log"));
        let _ = std::fs::remove_file(work.join("hypervisor.log"));
        banger_proto::fsutil::write_json_atomic(&work.join("prepared.json"), &p)
            .map_err(Error::io("cannot write", work.join("prepared.json")))?;
        let dir = store.dir(key);
        record::remove_dir_all(&dir)?;
        std::fs::rename(work, &dir).map_err(Error::io("cannot move into place", &dir))?;
        record::remove_dir_all(&store.failed(key))?;
        p.rootfs = dir.join("rootfs.ext4");
        Ok(p)
    }

    /// Reconcile: preparations a crash cut short are undone (their VM
    /// killed, lease released, work dir removed).
    pub(super) async fn reconcile_preparations(&self) {
        for work in self.prepared_store().leftovers() {
            let running: Option<Running> = std::fs::read(work.join("running.json"))
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok());
            if let Some(r) = running {
                let paths = VmPaths {
                    dir: work.clone(),
                    run: self.inner.store.run_root().join(&r.id),
                };
                self.end_preparation_vm(&r.id, &paths).await;
            }
            tracing::warn!(dir = %work.display(), "removing an interrupted preparation");
            let _ = record::remove_dir_all(&work);
        }
    }
}

/// Keeps a failed preparation's console log and reason; returns the log's
/// path.
fn keep_failure(
    store: &PreparedStore,
    key: &str,
    work: &Path,
    image: &ImageInfo,
    why: &str,
) -> PathBuf {
    let dir = store.failed(key);
    let _ = record::remove_dir_all(&dir);
    let log = dir.join("console.log");
    let kept = std::fs::create_dir_all(&dir).is_ok()
        && (std::fs::rename(work.join("console.log"), &log).is_ok()
            || std::fs::write(&log, b"(the preparation VM wrote no console log)\n").is_ok());
    let record = FailedPreparation {
        digest: image.digest.clone(),
        image: image.name.clone(),
        failed_unix: record::now_unix(),
        why: why.to_owned(),
        log: PathBuf::new(),
    };
    if !kept || banger_proto::fsutil::write_json_atomic(&dir.join("failed.json"), &record).is_err()
    {
        tracing::error!(dir = %dir.display(), "cannot keep the failed preparation's log");
    }
    log
}

/// The preparation table's type (for `Inner`).
pub(super) type Preparing = std::sync::Mutex<HashMap<String, Inflight>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::NoProgress;
    use crate::testing::{self, Doubles};
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn concurrent_creates_of_an_unprepared_image_share_one_preparation() {
        let t = Doubles::unprepared(false);
        let (a, b) = tokio::join!(
            t.mgr.create(testing::spec("a", "img"), &NoProgress),
            t.mgr.create(testing::spec("b", "img"), &NoProgress)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(t.hypervisor.preparations.load(Ordering::SeqCst), 1);
        assert!(a.vm.image.prepared && b.vm.image.prepared);
        assert!(
            a.vm.image
                .ext4_path
                .starts_with(t.dir.path().join("state/vms/.prepared"))
        );
        let (done, failed) = t.mgr.prepared_images();
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(failed.is_empty());
        assert_eq!(done[0].packages, ["systemd-sysv", "openssh-server"]);
        // The preparation VM's lease was given back; nothing of it is left.
        let calls = t.peers.calls();
        let prep_allocs = calls
            .iter()
            .filter(|c| c.starts_with("allocate prep-"))
            .count();
        let prep_releases = calls
            .iter()
            .filter(|c| c.starts_with("release_lease prep-"))
            .count();
        assert_eq!((prep_allocs, prep_releases), (1, 1), "{calls:?}");
        assert!(
            PreparedStore::new(&t.dir.path().join("state/vms"))
                .leftovers()
                .is_empty()
        );
        assert_eq!(
            t.mgr.list().unwrap().len(),
            2,
            "the prepared dir is not a VM"
        );
        // A later create copies it without preparing again.
        t.mgr
            .create(testing::spec("c", "img"), &NoProgress)
            .await
            .unwrap();
        assert_eq!(t.hypervisor.preparations.load(Ordering::SeqCst), 1);
        // `force` prepares again; dropping it makes the next create prepare.
        t.mgr
            .prepare_image("img", None, true, &NoProgress)
            .await
            .unwrap();
        assert_eq!(t.hypervisor.preparations.load(Ordering::SeqCst), 2);
        assert!(t.mgr.drop_prepared(&done[0].digest).unwrap());
        t.mgr
            .create(testing::spec("d", "img"), &NoProgress)
            .await
            .unwrap();
        assert_eq!(t.hypervisor.preparations.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_preparation_ends_at_once_keeps_its_log_and_leaves_the_image_unprepared() {
        let t = Doubles::unprepared(true);
        let started = Instant::now();
        let (a, b) = tokio::join!(
            t.mgr.create(testing::spec("a", "img"), &NoProgress),
            t.mgr.create(testing::spec("b", "img"), &NoProgress)
        );
        // The guest keeps a rescue shell for 30 s; the failure event ends
        // the wait long before.
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(t.hypervisor.preparations.load(Ordering::SeqCst), 1);
        for err in [a.unwrap_err(), b.unwrap_err()] {
            let msg = err.to_string();
            assert!(msg.contains("`banger vm logs"), "{msg}");
            assert!(
                msg.contains("preparing image img for its first boot failed"),
                "{msg}"
            );
            assert!(msg.contains("apt-get update failed (DNS"), "{msg}");
            assert!(msg.contains("console log is kept at"), "{msg}");
            assert_eq!(
                banger_proto::rpc::status::reason_of(&tonic::Status::from(err)),
                Some("IMAGE_PREPARATION_FAILED")
            );
        }
        let (done, failed) = t.mgr.prepared_images();
        assert!(done.is_empty());
        assert_eq!(failed.len(), 1);
        let log = std::fs::read_to_string(&failed[0].log).unwrap();
        assert!(log.contains("Temporary failure resolving"), "{log}");
        // `vm logs a` shows it too, after the rollback.
        let kept = std::fs::read_to_string(t.mgr.console_path("a").unwrap()).unwrap();
        assert!(kept.contains("Temporary failure resolving"), "{kept}");
        assert!(t.mgr.list().unwrap().is_empty(), "both creates rolled back");
        let calls = t.peers.calls();
        assert!(
            calls.iter().any(|c| c.starts_with("release_lease prep-")),
            "{calls:?}"
        );
        assert!(
            PreparedStore::new(&t.dir.path().join("state/vms"))
                .leftovers()
                .is_empty()
        );
        // No hypervisor of the preparation is left.
        let run = t.dir.path().join("run");
        assert!(
            std::fs::read_dir(&run).map_or(true, |mut d| d.next().is_none()),
            "run dirs left: {:?}",
            std::fs::read_dir(&run).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        );
    }

    fn image(systemd: bool, sshd: bool, os: &str) -> ImageInfo {
        ImageInfo {
            direct_boot: true,
            has_agent: true,
            has_systemd: systemd,
            has_ssh_server: sshd,
            os_id: os.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_distribution_images_without_an_init_or_sshd_are_prepared() {
        assert!(needs_preparation(&image(false, false, "debian")));
        assert!(needs_preparation(&image(true, false, "debian")));
        assert!(!needs_preparation(&image(true, true, "debian")));
        // busybox: no os-release; the agent runs as PID 1 instead.
        assert!(!needs_preparation(&image(false, false, "")));
        let mut imported = image(false, false, "debian");
        imported.direct_boot = false;
        assert!(!needs_preparation(&imported));
    }

    #[test]
    fn digests_name_directories_only_when_well_formed() {
        let hex = "ab".repeat(32);
        assert_eq!(
            PreparedStore::key(&format!("sha256:{hex}")).unwrap(),
            format!("sha256-{hex}")
        );
        for bad in [
            "",
            "sha256:",
            "sha256:../../x",
            "../x:abababababababab",
            "sha256",
        ] {
            assert!(PreparedStore::key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_store_lists_what_is_complete_and_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let store = PreparedStore::new(dir.path());
        let d1 = format!("sha256:{}", "a".repeat(64));
        let d2 = format!("sha256:{}", "b".repeat(64));
        let key1 = PreparedStore::key(&d1).unwrap();
        std::fs::create_dir_all(store.dir(&key1)).unwrap();
        let p = Prepared {
            digest: d1.clone(),
            image: "debian-bookworm".into(),
            kernel: "k".into(),
            packages: vec!["systemd-sysv".into()],
            prepared_unix: 1,
            seconds: 2.0,
            has_systemd: true,
            has_ssh_server: true,
            size_bytes: 3,
            rootfs: PathBuf::new(),
        };
        banger_proto::fsutil::write_json_atomic(&store.dir(&key1).join("prepared.json"), &p)
            .unwrap();
        assert!(store.get(&d1).is_none(), "no rootfs yet: not complete");
        std::fs::write(store.dir(&key1).join("rootfs.ext4"), b"").unwrap();
        assert_eq!(store.get(&d1).unwrap().packages, ["systemd-sysv"]);
        // A work dir is neither.
        std::fs::create_dir_all(store.work(&PreparedStore::key(&d2).unwrap())).unwrap();
        let work = store.work(&PreparedStore::key(&d2).unwrap());
        std::fs::write(work.join("console.log"), b"apt says no\n").unwrap();
        let log = keep_failure(
            &store,
            &PreparedStore::key(&d2).unwrap(),
            &work,
            &ImageInfo {
                digest: d2.clone(),
                name: "other".into(),
                ..Default::default()
            },
            "DNS",
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "apt says no\n");
        let (done, failed) = store.list();
        assert_eq!(done.len(), 1);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].why, "DNS");
        assert_eq!(store.leftovers(), vec![work]);
        assert!(store.remove(&d1).unwrap());
        assert!(store.get(&d1).is_none());
        assert!(!store.remove(&d1).unwrap());
    }
}
