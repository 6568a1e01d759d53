//! Privileged tier: the per-VM disk copy on real filesystems, each mounted
//! for the test (root; loop devices): a reflink on XFS (which shares
//! extents: the copy takes no space), a sparse copy on tmpfs (no reflink:
//! holes stay holes, zero blocks are not written), and a full disk during
//! the copy (a clear error, and no partial copy left).

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use banger_vmm::disk::{self, CopyMethod};

/// A filesystem mounted on a temp dir, unmounted (lazily) on drop.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn new(args: &[&str]) -> Mount {
        banger_test_support::require_root();
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(args)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount {args:?} failed");
        Mount { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A 64 MiB file with data at 0 and 32 MiB, a run of zero bytes written
/// as data at 40 MiB, and holes elsewhere.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("image.ext4");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&[0xab; 1 << 20], 0).unwrap();
    f.write_all_at(b"middle", 32 << 20).unwrap();
    f.write_all_at(&[0u8; 1 << 20], 40 << 20).unwrap();
    f.sync_all().unwrap();
    path
}

fn same_content(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

fn used(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn reflink_on_xfs() {
    banger_test_support::gate!(Priv, ROOT);
    banger_test_support::require_program("mkfs.xfs", "xfsprogs");
    let backing = tempfile::tempdir().unwrap();
    let dev = backing.path().join("xfs.img");
    std::fs::File::create(&dev)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let st = Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&dev)
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.xfs failed");
    let mnt = Mount::new(&["-o", "loop", dev.to_str().unwrap()]);
    let src = image(mnt.path());
    let dst = mnt.path().join("rootfs.ext4");
    let free_before = nix::sys::statvfs::statvfs(mnt.path()).unwrap();
    assert_eq!(disk::copy_image(&src, &dst).unwrap(), CopyMethod::Reflink);
    same_content(&src, &dst);
    // Shared extents: the copy took (almost) no space of its own.
    let free_after = nix::sys::statvfs::statvfs(mnt.path()).unwrap();
    let taken = (free_before.blocks_free() - free_after.blocks_free()) * free_after.fragment_size();
    assert!(taken < 256 << 10, "reflink took {taken} bytes");
    // Writing to the copy leaves the image alone.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&dst)
        .unwrap()
        .write_all_at(b"vm", 0)
        .unwrap();
    assert_eq!(&std::fs::read(&src).unwrap()[..2], &[0xab, 0xab]);
}

#[test]
fn sparse_copy_on_tmpfs_which_cannot_reflink() {
    banger_test_support::gate!(Priv, ROOT);
    let mnt = Mount::new(&["-t", "tmpfs", "-o", "size=256m", "tmpfs"]);
    let src = image(mnt.path());
    let dst = mnt.path().join("rootfs.ext4");
    assert_eq!(disk::copy_image(&src, &dst).unwrap(), CopyMethod::Sparse);
    same_content(&src, &dst);
    // 1 MiB of data + one block for "middle"; the zero run and the holes
    // are not written.
    assert!(
        used(&dst) <= (1 << 20) + (64 << 10),
        "copy uses {}",
        used(&dst)
    );
    assert!(
        used(&src) > (2 << 20) - 1,
        "the image really has 2 MiB of data"
    );
}

#[test]
fn a_full_disk_during_the_copy_leaves_nothing() {
    banger_test_support::gate!(Priv, ROOT);
    let big = tempfile::tempdir().unwrap();
    let src = image(big.path());
    // Room for the file's metadata but not its 1 MiB of data.
    let small = Mount::new(&["-t", "tmpfs", "-o", "size=512k", "tmpfs"]);
    let dst = small.path().join("rootfs.ext4");
    let err = disk::copy_image(&src, &dst).unwrap_err().to_string();
    assert!(
        err.contains("cannot copy image to") && err.contains("No space left"),
        "{err}"
    );
    assert!(!dst.exists(), "partial copy left behind");
}
