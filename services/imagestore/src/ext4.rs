//! Building the ext4 root filesystem from a tree without mounting it:
//! `mkfs.ext4 -d`, sized to the content plus headroom, then `e2fsck -fn`.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use crate::error::Error;

/// What a tree needs on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Allocated bytes of files, directories and links (hardlinks once).
    pub bytes: u64,
    /// Distinct inodes.
    pub inodes: u64,
}

/// Measures `tree` (hardlinks counted once).
pub fn measure(tree: &Path) -> Result<TreeStats, Error> {
    let mut stats = TreeStats::default();
    let mut seen = HashSet::new();
    for entry in walkdir::WalkDir::new(tree).follow_links(false) {
        let entry = entry.map_err(|e| Error::Io {
            context: "cannot walk",
            path: tree.to_path_buf(),
            source: e.into(),
        })?;
        let meta = entry.metadata().map_err(|e| Error::Io {
            context: "cannot stat",
            path: entry.path().to_path_buf(),
            source: e.into(),
        })?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
            continue;
        }
        stats.inodes += 1;
        // Apparent size rounded up to 4 KiB blocks: what ext4 will allocate.
        stats.bytes += meta.len().div_ceil(4096) * 4096;
    }
    Ok(stats)
}

/// The ext4 file size for `stats`: content, inode tables, a journal and
/// the configured headroom, rounded up to 4 MiB.
pub fn image_size(stats: TreeStats, headroom_percent: u64, min_headroom_mib: u64) -> (u64, u64) {
    let inodes = (stats.inodes + stats.inodes / 2).max(8192);
    let metadata = inodes * 256 + stats.bytes / 32;
    let headroom = (stats.bytes * headroom_percent / 100).max(min_headroom_mib << 20);
    let base = stats.bytes + metadata + headroom;
    // mke2fs's default journal sizes by filesystem size.
    let journal: u64 = match base {
        s if s < 128 << 20 => 4 << 20,
        s if s < 1 << 30 => 16 << 20,
        s if s < 2 << 30 => 32 << 20,
        _ => 64 << 20,
    };
    let size = (base + journal).div_ceil(4 << 20) * (4 << 20);
    (size, inodes)
}

/// Builds `out` from `tree` with label `label`; returns its size in bytes.
#[tracing::instrument(skip_all, fields(tree = %tree.display()))]
pub fn build(
    tree: &Path,
    out: &Path,
    label: &str,
    stats: TreeStats,
    headroom_percent: u64,
    min_headroom_mib: u64,
) -> Result<u64, Error> {
    let (mut size, inodes) = image_size(stats, headroom_percent, min_headroom_mib);
    let label: String = label.chars().take(16).collect();
    // One retry with more room, in case our estimate is short for an odd tree.
    for attempt in 0..2 {
        let _ = std::fs::remove_file(out);
        let file = std::fs::File::create(out).map_err(Error::io("cannot create", out))?;
        file.set_len(size).map_err(Error::io("cannot size", out))?;
        drop(file);
        let output = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
            .arg("-N")
            .arg(inodes.to_string())
            .arg("-L")
            .arg(&label)
            .args(["-E", "root_owner=0:0"])
            .arg("-d")
            .arg(tree)
            .arg(out)
            .output()
            .map_err(|e| Error::Mkfs(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")))?;
        if output.status.success() {
            break;
        }
        if attempt == 1 {
            return Err(Error::Mkfs(format!(
                "mkfs.ext4 failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        size = size.saturating_mul(3) / 2;
    }
    let check = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(out)
        .output()
        .map_err(|e| Error::Mkfs(format!("cannot run e2fsck (install e2fsprogs): {e}")))?;
    if !check.status.success() {
        return Err(Error::Mkfs(format!(
            "e2fsck found problems in the new filesystem: {}",
            String::from_utf8_lossy(&check.stdout).trim()
        )));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_with_content_and_headroom() {
        let small = image_size(
            TreeStats {
                bytes: 1 << 20,
                inodes: 10,
            },
            20,
            64,
        );
        assert!(small.0 >= 65 << 20, "{small:?}");
        assert_eq!(small.0 % (4 << 20), 0);
        assert_eq!(small.1, 8192);
        let big = image_size(
            TreeStats {
                bytes: 300 << 20,
                inodes: 20_000,
            },
            20,
            64,
        );
        assert!(big.0 > 360 << 20, "{big:?}");
        assert_eq!(big.1, 30_000);
    }

    #[test]
    fn builds_a_clean_filesystem() {
        banger_test_support::require_program("mkfs.ext4", "e2fsprogs");
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir(tree.path().join("etc")).unwrap();
        std::fs::write(tree.path().join("etc/hostname"), "x\n").unwrap();
        let out = tempfile::tempdir().unwrap();
        let img = out.path().join("rootfs.ext4");
        let stats = measure(tree.path()).unwrap();
        assert_eq!(stats.inodes, 3);
        let size = build(tree.path(), &img, "test", stats, 20, 8).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
        let ls = Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&ls.stdout), "x\n");
    }
}
