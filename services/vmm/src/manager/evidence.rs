//! Evidence of failed creates: a create that fails rolls everything back,
//! but its console log (with the reason, in a header) is kept under
//! `$STATE/vms/.failed/<name>/console.log`, so `banger vm logs NAME` still
//! shows why. The hypervisor's own log (QEMU's or Firecracker's output and
//! vhost-device-vsock's, where a stuck vsock would say why) is kept beside
//! it as `hypervisor.log`, its last [`HYPERVISOR_LOG_KEPT`] bytes. A later
//! create or delete of that name drops both, and only the newest `[vmm]
//! failed_creates_kept` are kept.

use std::path::PathBuf;

use super::Manager;
use crate::record::{self, VmRecord};

/// How much of the end of a failed create's hypervisor log is kept.
pub const HYPERVISOR_LOG_KEPT: u64 = 256 << 10;

impl Manager {
    fn evidence_root(&self) -> PathBuf {
        self.inner.store.root().join(".failed")
    }

    /// The kept console log of the last failed create of `name`, if any.
    pub(super) fn evidence_of(&self, name: &str) -> Option<PathBuf> {
        let log = self.evidence_root().join(name).join("console.log");
        log.is_file().then_some(log)
    }

    /// Keeps `vm`'s console log with `why` in front, before the rollback
    /// removes its dir. Whether it was kept.
    pub(super) fn keep_evidence(&self, vm: &VmRecord, why: &str) -> bool {
        self.keep_evidence_from(vm, &self.inner.store.paths_of(vm).console_log(), why)
    }

    /// [`Self::keep_evidence`] with the console log at `src` (a failed
    /// preparation's, for the create that waited on it).
    pub(super) fn keep_evidence_from(
        &self,
        vm: &VmRecord,
        src: &std::path::Path,
        why: &str,
    ) -> bool {
        let Ok(console) = std::fs::read(src) else {
            return false;
        };
        let dir = self.evidence_root().join(&vm.name);
        let _ = record::remove_dir_all(&dir);
        let mut text = format!(
            "banger: the console log of a failed `vm create {}` (unix time {}); the create was rolled back.\nbanger: it failed: {}\nbanger: ---\n",
            vm.name,
            record::now_unix(),
            why.replace('\n', "\nbanger:   ")
        )
        .into_bytes();
        text.extend_from_slice(&console);
        let kept = std::fs::create_dir_all(&dir).is_ok()
            && banger_proto::fsutil::write_atomic(&dir.join("console.log"), &text).is_ok();
        if kept
            && let Some(tail) = tail_of(
                &self.inner.store.paths_of(vm).hypervisor_log(),
                HYPERVISOR_LOG_KEPT,
            )
        {
            let _ = banger_proto::fsutil::write_atomic(&dir.join("hypervisor.log"), &tail);
        }
        if !kept {
            tracing::error!(dir = %dir.display(), "cannot keep the failed create's console log");
        }
        self.trim_evidence();
        kept
    }

    /// Drops the kept log of `name` (a new create or a delete of it).
    pub(super) fn forget_evidence(&self, name: &str) {
        let _ = record::remove_dir_all(&self.evidence_root().join(name));
    }

    /// Keeps only the newest `failed_creates_kept` logs.
    fn trim_evidence(&self) {
        let mut kept: Vec<(std::time::SystemTime, PathBuf)> =
            std::fs::read_dir(self.evidence_root())
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect();
        kept.sort();
        let excess = kept
            .len()
            .saturating_sub(self.inner.cfg.failed_creates_kept);
        for (_, dir) in kept.into_iter().take(excess) {
            let _ = record::remove_dir_all(&dir);
        }
    }
}

/// The last `max` bytes of the file at `path`, if it can be read.
fn tail_of(path: &std::path::Path, max: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut tail = Vec::new();
    file.take(max).read_to_end(&mut tail).ok()?;
    Some(tail)
}
