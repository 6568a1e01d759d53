//! The local kernel store: `$STATE/kernels/<name>/{vmlinux,initrd?,config?,manifest.json}`.
//!
//! A kernel appears only by renaming a fully populated staging dir
//! (`.staging-<name>-<rand>`) into place, so a crash never leaves a half
//! kernel; deletion renames it away first (`.trash-…`). Leftovers of both
//! are removed when the store is opened. Holds (VMs using a kernel) are
//! persisted in the manifest so they survive a restart.
//!
//! A hold also pins the files the holder was given: `ResolveKernel` with a
//! holder hard-links `vmlinux`/`initrd` into `.holds/<name>/<holder>/` and
//! returns those paths. So an update (`pull --update`) can switch the name
//! to a newer kernel while VMs created on the old one keep booting exactly
//! the files they were given, until they release it (are deleted).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// File name of the uncompressed kernel.
pub const VMLINUX: &str = "vmlinux";
/// File name of the optional initrd.
pub const INITRD: &str = "initrd";
/// File name of the optional kernel build configuration.
pub const CONFIG: &str = "config";
/// File name of the manifest.
pub const MANIFEST: &str = "manifest.json";

const STAGING_PREFIX: &str = ".staging-";
const TRASH_PREFIX: &str = ".trash-";
/// Per-holder hard links of the files a holder was given.
const HOLDS: &str = ".holds";

/// What the store records about a kernel (`manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// DNS-label name.
    pub name: String,
    /// Distribution or flavour, e.g. `generic`.
    pub distro: String,
    /// Architecture, e.g. `x86_64`.
    pub arch: String,
    /// Kernel release, e.g. `6.12.117`.
    pub kernel_version: String,
    /// SHA-256 (hex) of `vmlinux`.
    pub vmlinux_sha256: String,
    /// Size of `vmlinux` in bytes.
    pub vmlinux_size: u64,
    /// Whether `initrd` is stored.
    pub has_initrd: bool,
    /// Whether `config` is stored.
    pub has_config: bool,
    /// `pull:<url>`, `pull:oci://<ref>` or `import`.
    pub source: String,
    /// Unix seconds when stored.
    pub created_unix: i64,
    /// Holders (VM ids) using the kernel.
    #[serde(default)]
    pub holders: BTreeSet<String>,
    /// Where a kernel from a Debian archive came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian: Option<DebianFacts>,
}

/// The source facts of a kernel pulled from a Debian archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DebianFacts {
    /// The kernel image package, e.g. `linux-image-6.12.117+deb12-cloud-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.12.117-1~deb12u1`.
    pub version: String,
    /// The meta package followed to it.
    pub meta_package: String,
    /// Primary fingerprint of the archive key that signed the InRelease.
    pub signing_key: String,
    /// The archive (as configured in the catalog, before mirrors).
    pub archive_url: String,
    /// Where it was actually downloaded from (a mirror or the archive).
    pub fetched_from: String,
    /// Suite, e.g. `bookworm-security`.
    pub suite: String,
    /// SHA-256 of the `.deb`, as the signed index gives it.
    pub deb_sha256: String,
    /// Module files the initramfs loads, in order.
    pub modules: Vec<String>,
}

/// A stored kernel as listed: its manifest plus where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKernel {
    /// The manifest.
    pub manifest: Manifest,
    /// The kernel's directory.
    pub dir: PathBuf,
    /// Bytes its files occupy.
    pub total_size: u64,
}

impl StoredKernel {
    /// Path of `vmlinux`.
    pub fn vmlinux_path(&self) -> PathBuf {
        self.dir.join(VMLINUX)
    }

    /// Path of `initrd`, if stored.
    pub fn initrd_path(&self) -> Option<PathBuf> {
        self.manifest.has_initrd.then(|| self.dir.join(INITRD))
    }
}

/// The store rooted at `$STATE/kernels`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Serialises changes (install, delete, holds); reads need no lock
    /// because every change is a rename or an atomic manifest rewrite.
    lock: Mutex<()>,
    /// Exclusive `flock` on `.lock`: one process owns the store, so the
    /// start-up sweep never removes another live process's staging dirs.
    _owner: nix::fcntl::Flock<fs::File>,
}

impl Store {
    /// Opens (creating) the store and removes leftovers of interrupted
    /// pulls, imports and deletions.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(Error::io("cannot create", &root))?;
        let lock_path = root.join(".lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("cannot open", &lock_path))?;
        let owner = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| Error::StoreBusy {
                path: root.clone(),
                reason: errno.desc().to_owned(),
            })?;
        for entry in fs::read_dir(&root).map_err(Error::io("cannot read", &root))? {
            let entry = entry.map_err(Error::io("cannot read", &root))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(STAGING_PREFIX) || name.starts_with(TRASH_PREFIX) {
                tracing::warn!(dir = %entry.path().display(), "removing leftover of an interrupted operation");
                fs::remove_dir_all(entry.path())
                    .map_err(Error::io("cannot remove", entry.path()))?;
            }
        }
        Ok(Store {
            root,
            lock: Mutex::new(()),
            _owner: owner,
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock cannot leave the disk inconsistent
        // (every change is a rename), so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every stored kernel, sorted by name.
    pub fn list(&self) -> Result<Vec<StoredKernel>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(Error::io("cannot read", &self.root))? {
            let entry = entry.map_err(Error::io("cannot read", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            match self.load(&name) {
                Ok(k) => out.push(k),
                Err(e) => tracing::warn!(kernel = %name, error = %e, "skipping unreadable kernel"),
            }
        }
        out.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        Ok(out)
    }

    /// Whether a kernel of that name is stored.
    pub fn contains(&self, name: &str) -> bool {
        self.root.join(name).join(MANIFEST).is_file()
    }

    /// One stored kernel; NOT_FOUND if absent.
    pub fn get(&self, name: &str) -> Result<StoredKernel> {
        validate_name(name)?;
        self.load(name)
    }

    fn load(&self, name: &str) -> Result<StoredKernel> {
        let dir = self.root.join(name);
        let path = dir.join(MANIFEST);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound { name: name.into() });
            }
            Err(e) => return Err(Error::io("cannot read", &path)(e)),
        };
        let manifest: Manifest = serde_json::from_slice(&data)
            .map_err(|e| Error::Internal(format!("corrupt manifest {}: {e}", path.display())))?;
        let total_size = dir_size(&dir);
        Ok(StoredKernel {
            manifest,
            dir,
            total_size,
        })
    }

    /// A fresh staging dir for kernel `name`, removed on drop unless committed.
    pub fn stage(&self, name: &str) -> Result<Staging> {
        let suffix: u64 = rand::random();
        let path = self
            .root
            .join(format!("{STAGING_PREFIX}{name}-{suffix:016x}"));
        fs::create_dir(&path).map_err(Error::io("cannot create", &path))?;
        Ok(Staging { path: Some(path) })
    }

    /// Refuses early when `name` exists and may not be replaced.
    pub fn check_replaceable(&self, name: &str, force: bool) -> Result<()> {
        match self.load(name) {
            Ok(_) if !force => Err(Error::AlreadyExists { name: name.into() }),
            Ok(existing) if !existing.manifest.holders.is_empty() => Err(Error::InUse {
                name: name.into(),
                holders: existing.manifest.holders.into_iter().collect(),
            }),
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes `manifest` into the staging dir and moves it into place,
    /// atomically replacing an existing kernel when `force` is set.
    pub fn commit(
        &self,
        staging: Staging,
        manifest: &Manifest,
        force: bool,
    ) -> Result<StoredKernel> {
        self.install(staging, manifest, force, false)
    }

    /// Installs an update of `manifest.name`: replaces the stored kernel
    /// even while it is held. Holders keep the files they were given (their
    /// `.holds/` links) and stay recorded, so the name cannot be deleted
    /// while any VM uses any version of it.
    pub fn commit_update(&self, staging: Staging, manifest: &Manifest) -> Result<StoredKernel> {
        self.install(staging, manifest, true, true)
    }

    fn install(
        &self,
        mut staging: Staging,
        manifest: &Manifest,
        force: bool,
        update: bool,
    ) -> Result<StoredKernel> {
        let name = manifest.name.clone();
        let staged = staging.path().to_path_buf();
        let target = self.root.join(&name);
        {
            let _guard = self.guard();
            let mut manifest = manifest.clone();
            if update {
                match self.load(&name) {
                    Ok(old) => manifest.holders = old.manifest.holders,
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            } else {
                self.check_replaceable(&name, force)?;
            }
            banger_proto::fsutil::write_json_atomic(&staged.join(MANIFEST), &manifest)
                .map_err(Error::io("cannot write manifest in", &staged))?;
            if target.exists() {
                // Swap in one step: readers see the old or the new kernel,
                // never none; the old one ends up in the staging path and is
                // removed with it.
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &staged,
                    nix::fcntl::AT_FDCWD,
                    &target,
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .map_err(|e| Error::io("cannot replace", &target)(e.into()))?;
            } else {
                fs::rename(&staged, &target).map_err(Error::io("cannot install", &target))?;
                staging.disarm();
            }
            sync_dir(&self.root);
        }
        drop(staging);
        self.load(&name)
    }

    /// Marks `name` as used by `holder` (idempotent) and returns the files
    /// pinned for it: the first hold links the current files; later ones
    /// (even after an update) return the same, so a holder always boots
    /// what it was first given.
    pub fn hold(&self, name: &str, holder: &str) -> Result<(StoredKernel, HeldFiles)> {
        validate_holder(holder)?;
        let kernel = self.update_holders(name, |h| {
            h.insert(holder.to_owned());
        })?;
        let _guard = self.guard();
        let dir = self.root.join(HOLDS).join(name).join(holder);
        if !dir.join(VMLINUX).is_file() {
            let tmp = self
                .root
                .join(HOLDS)
                .join(name)
                .join(format!(".{holder}-{:016x}", rand::random::<u64>()));
            fs::create_dir_all(&tmp).map_err(Error::io("cannot create", &tmp))?;
            let mut files = vec![VMLINUX];
            if kernel.manifest.has_initrd {
                files.push(INITRD);
            }
            for f in files {
                fs::hard_link(kernel.dir.join(f), tmp.join(f))
                    .map_err(Error::io("cannot pin the kernel file in", &tmp))?;
            }
            let _ = fs::remove_dir_all(&dir);
            fs::rename(&tmp, &dir).map_err(Error::io("cannot create", &dir))?;
        }
        let held = HeldFiles {
            vmlinux: dir.join(VMLINUX),
            initrd: dir.join(INITRD).is_file().then(|| dir.join(INITRD)),
        };
        Ok((kernel, held))
    }

    /// Drops `holder`'s hold on `name` and its pinned files (idempotent;
    /// absent kernel is fine).
    pub fn release(&self, name: &str, holder: &str) -> Result<()> {
        validate_holder(holder)?;
        match self.update_holders(name, |h| {
            h.remove(holder);
        }) {
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let dir = self.root.join(HOLDS).join(name).join(holder);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove", &dir)(e)),
        }
        // Drop the now empty parents (fails harmlessly while others hold).
        let _ = fs::remove_dir(self.root.join(HOLDS).join(name));
        let _ = fs::remove_dir(self.root.join(HOLDS));
        Ok(())
    }

    fn update_holders(
        &self,
        name: &str,
        change: impl FnOnce(&mut BTreeSet<String>),
    ) -> Result<StoredKernel> {
        validate_name(name)?;
        let _guard = self.guard();
        let mut kernel = self.load(name)?;
        let before = kernel.manifest.holders.clone();
        change(&mut kernel.manifest.holders);
        if kernel.manifest.holders != before {
            let path = kernel.dir.join(MANIFEST);
            banger_proto::fsutil::write_json_atomic(&path, &kernel.manifest)
                .map_err(Error::io("cannot write", &path))?;
        }
        Ok(kernel)
    }

    /// Removes `name`; FAILED_PRECONDITION while held.
    pub fn delete(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let trash = {
            let _guard = self.guard();
            let kernel = self.load(name)?;
            if !kernel.manifest.holders.is_empty() {
                return Err(Error::InUse {
                    name: name.into(),
                    holders: kernel.manifest.holders.into_iter().collect(),
                });
            }
            let suffix: u64 = rand::random();
            let trash = self
                .root
                .join(format!("{TRASH_PREFIX}{name}-{suffix:016x}"));
            fs::rename(&kernel.dir, &trash).map_err(Error::io("cannot remove", &kernel.dir))?;
            sync_dir(&self.root);
            trash
        };
        fs::remove_dir_all(&trash).map_err(Error::io("cannot remove", &trash))
    }
}

/// The files pinned for a holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFiles {
    /// The holder's `vmlinux`.
    pub vmlinux: PathBuf,
    /// The holder's `initrd`, if the kernel has one.
    pub initrd: Option<PathBuf>,
}

/// A holder id names a directory: plain characters only.
fn validate_holder(holder: &str) -> Result<()> {
    let ok = !holder.is_empty()
        && holder.len() <= 128
        && !holder.starts_with('.')
        && holder
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadImport {
            reason: format!("invalid holder id {holder:?}: use letters, digits, '-', '_', '.'"),
        })
    }
}

/// A staging directory, removed with everything in it when dropped (a
/// failed, cancelled or aborted pull or import leaves nothing behind).
#[derive(Debug)]
pub struct Staging {
    path: Option<PathBuf>,
}

impl Staging {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.path
            .as_deref()
            .expect("staging path is set until drop")
    }

    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(e) = fs::remove_dir_all(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %path.display(), error = %e, "cannot remove staging dir");
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Err(e) = fs::File::open(dir).and_then(|f| f.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync directory");
    }
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Checks a kernel name: dot-separated DNS labels (each by the shared
/// [`banger_proto::names::validate`] rule), at most 63 characters, so release
/// numbers read naturally (`generic-6.12`) while a name can never be `.`,
/// `..`, hidden, or contain a path separator.
pub fn validate_name(name: &str) -> Result<()> {
    // The one rule for dotted names, shared with vmm's API edge.
    banger_proto::names::validate_dotted("kernel", name)
        .map_err(|_| Error::InvalidKernelName { name: name.into() })
}

pub use banger_proto::host::now_unix;

/// SHA-256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file = fs::File::open(path).map_err(Error::io("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(Error::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// What a vmlinux says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmlinuxInfo {
    /// Release from the embedded `Linux version X` banner, if found.
    pub version: Option<String>,
    /// Architecture from the ELF header, if it is an ELF file we know.
    pub arch: Option<String>,
}

/// Reads the kernel release from the banner and the architecture from the
/// ELF header, so imports need not be told either.
pub fn inspect_vmlinux(path: &Path) -> Result<VmlinuxInfo> {
    let mut file = fs::File::open(path).map_err(Error::io("cannot open", path))?;
    let mut info = VmlinuxInfo::default();
    let mut header = [0u8; 20];
    if file.read_exact(&mut header).is_ok() && header[..4] == *b"\x7fELF" {
        // e_machine, little-endian on every architecture we boot.
        info.arch = match u16::from_le_bytes([header[18], header[19]]) {
            62 => Some("x86_64".into()),
            183 => Some("aarch64".into()),
            _ => None,
        };
    }
    const NEEDLE: &[u8] = b"Linux version ";
    let mut file = fs::File::open(path).map_err(Error::io("cannot open", path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = file
            .read(&mut buf)
            .map_err(Error::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(pos) = find(&window[start..], NEEDLE) {
            let at = start + pos + NEEDLE.len();
            let rest = &window[at..];
            let end = rest
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || b"._+-~".contains(b)));
            match end {
                // The banner is "Linux version <release> (...": the release
                // starts with a digit; format strings like "%s" do not.
                Some(end) if end > 0 && rest[0].is_ascii_digit() => {
                    info.version = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
                    return Ok(info);
                }
                // Cut off at the buffer end: retry with the next read.
                None if rest.len() < 128 => break,
                _ => start = at,
            }
        }
        let keep = window.len().saturating_sub(NEEDLE.len() + 128);
        carry = window[keep..].to_vec();
    }
    Ok(info)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            distro: "generic".into(),
            arch: "x86_64".into(),
            kernel_version: "6.12.1".into(),
            vmlinux_sha256: "00".into(),
            vmlinux_size: 3,
            has_initrd: false,
            has_config: false,
            source: "import".into(),
            created_unix: 1,
            holders: BTreeSet::new(),
            debian: None,
        }
    }

    fn install(store: &Store, name: &str, data: &[u8], force: bool) -> Result<StoredKernel> {
        let staging = store.stage(name)?;
        fs::write(staging.path().join(VMLINUX), data).unwrap();
        store.commit(staging, &manifest(name), force)
    }

    fn entries(root: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock")
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commit_list_replace_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("kernels")).unwrap();
        install(&store, "k1", b"abc", false).unwrap();
        assert!(matches!(
            install(&store, "k1", b"xyz", false),
            Err(Error::AlreadyExists { .. })
        ));
        let k = install(&store, "k1", b"xyzw", true).unwrap();
        assert_eq!(fs::read(k.vmlinux_path()).unwrap(), b"xyzw");
        assert_eq!(entries(store.root()), vec!["k1"], "no staging left");
        assert_eq!(store.list().unwrap().len(), 1);
        store.delete("k1").unwrap();
        assert!(entries(store.root()).is_empty());
        assert!(matches!(store.get("k1"), Err(Error::NotFound { .. })));
    }

    #[test]
    fn dropped_staging_is_removed_and_leftovers_cleaned_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kernels");
        let store = Store::open(&root).unwrap();
        let staging = store.stage("k").unwrap();
        fs::write(staging.path().join(VMLINUX), b"x").unwrap();
        drop(staging);
        assert!(entries(&root).is_empty());
        // A crash leaves a staging dir behind; opening the store removes it.
        fs::create_dir_all(root.join(".staging-k-1/sub")).unwrap();
        fs::create_dir_all(root.join(".trash-k-2")).unwrap();
        // While a process owns the store, another cannot open (and sweep) it.
        assert!(matches!(Store::open(&root), Err(Error::StoreBusy { .. })));
        drop(store);
        Store::open(&root).unwrap();
        assert!(entries(&root).is_empty());
    }

    #[test]
    fn holds_block_delete_and_replace_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kernels");
        let store = Store::open(&root).unwrap();
        install(&store, "k", b"abc", false).unwrap();
        store.hold("k", "vm-1").unwrap();
        store.hold("k", "vm-1").unwrap();
        let err = store.delete("k").unwrap_err();
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        assert!(err.to_string().contains("vm-1"));
        assert!(matches!(
            install(&store, "k", b"new", true),
            Err(Error::InUse { .. })
        ));
        // Holds survive a restart.
        drop(store);
        let store = Store::open(&root).unwrap();
        assert_eq!(
            store.get("k").unwrap().manifest.holders,
            BTreeSet::from(["vm-1".to_owned()])
        );
        store.release("k", "vm-1").unwrap();
        store.release("k", "vm-1").unwrap();
        store.release("absent", "vm-1").unwrap();
        store.delete("k").unwrap();
    }

    #[test]
    fn an_update_switches_the_name_while_holders_keep_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("kernels");
        let store = Store::open(&root).unwrap();
        install(&store, "k", b"old", false).unwrap();
        let (_, held) = store.hold("k", "vm-1").unwrap();
        assert!(held.vmlinux.starts_with(root.join(".holds/k/vm-1")));
        assert_eq!(fs::read(&held.vmlinux).unwrap(), b"old");
        // A plain replace is still refused while held; an update is not.
        assert!(matches!(
            install(&store, "k", b"new", true),
            Err(Error::InUse { .. })
        ));
        let staging = store.stage("k").unwrap();
        fs::write(staging.path().join(VMLINUX), b"new").unwrap();
        let k = store.commit_update(staging, &manifest("k")).unwrap();
        assert_eq!(fs::read(k.vmlinux_path()).unwrap(), b"new");
        assert_eq!(
            fs::read(&held.vmlinux).unwrap(),
            b"old",
            "the holder keeps its kernel"
        );
        assert_eq!(k.manifest.holders, BTreeSet::from(["vm-1".to_owned()]));
        // The same holder resolving again still gets its own files; a new
        // holder gets the new kernel.
        let (_, again) = store.hold("k", "vm-1").unwrap();
        assert_eq!(fs::read(&again.vmlinux).unwrap(), b"old");
        let (_, other) = store.hold("k", "vm-2").unwrap();
        assert_eq!(fs::read(&other.vmlinux).unwrap(), b"new");
        assert!(matches!(store.delete("k"), Err(Error::InUse { .. })));
        store.release("k", "vm-1").unwrap();
        store.release("k", "vm-2").unwrap();
        assert!(
            !root.join(".holds/k/vm-1").exists(),
            "released files are gone"
        );
        store.delete("k").unwrap();
        assert!(store.hold("k", "../x").is_err());
    }

    #[test]
    fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for bad in ["../x", "A", ".hidden", "a..b", "a.", "-a.b", "a/b", ""] {
            assert!(
                matches!(store.get(bad), Err(Error::InvalidKernelName { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            store.delete("A"),
            Err(Error::InvalidKernelName { .. })
        ));
        for good in ["generic-6.12", "k", "debian-6.1.0-28"] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn inspects_banner_and_elf_arch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        let mut data = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0".to_vec();
        data.extend_from_slice(
            b"junk %s Linux version %s\0 more Linux version 6.12.117 (root@vm) #1\0",
        );
        fs::write(&p, &data).unwrap();
        let info = inspect_vmlinux(&p).unwrap();
        assert_eq!(info.version.as_deref(), Some("6.12.117"));
        assert_eq!(info.arch.as_deref(), Some("x86_64"));
        fs::write(&p, b"nothing here").unwrap();
        assert_eq!(inspect_vmlinux(&p).unwrap(), VmlinuxInfo::default());
    }

    #[test]
    fn inspects_the_fixture_kernel() {
        let info = inspect_vmlinux(&banger_test_support::fixtures::kernel_vmlinux()).unwrap();
        assert_eq!(info.version.as_deref(), Some("6.12.117"));
        assert_eq!(info.arch.as_deref(), Some("x86_64"));
    }
}
