//! Privileged tier: the per-VM disk copy on real filesystems, each mounted
//! for the test (root; loop devices): a reflink on XFS (which shares
//! extents: the copy takes no space), a sparse copy on tmpfs (no reflink:
//! holes stay holes, zero blocks are not written), and a full disk during
//! the copy (a clear error, and no partial copy left); and the manager on
//! a full state dir (a small tmpfs in a private mount namespace): a create
//! whose disk copy, and a preparation whose copy of the image, does not
//! fit ends in [`banger_vmm::Error::NoSpace`] (RESOURCE_EXHAUSTED), rolled
//! back to nothing, and the next create works once there is room.

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
    let err = disk::copy_image(&src, &dst).unwrap_err();
    assert!(matches!(err, banger_vmm::Error::NoSpace(_)), "{err:?}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let msg = status.message();
    assert!(
        msg.contains(&format!("no space left for {}", dst.display()))
            && msg.contains("MiB needed")
            && msg.contains("banger vm rm"),
        "{msg}"
    );
    assert!(!dst.exists(), "partial copy left behind");
}

/// Runs `f` with a manager (test doubles: the hypervisor is a `sh`) whose
/// `$STATE/vms` is a 256 MiB tmpfs, in a private mount namespace.
fn on_small_state<F>(unprepared: bool, f: F)
where
    F: AsyncFnOnce(banger_vmm::testing::Doubles, PathBuf) + Send + 'static,
{
    use banger_test_support::diskfull::{in_private_mounts, mount_tmpfs};
    in_private_mounts(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let t = if unprepared {
                banger_vmm::testing::Doubles::unprepared(false)
            } else {
                banger_vmm::testing::Doubles::new(false)
            };
            let vms = t.dir.path().join("state/vms");
            mount_tmpfs(&vms, 256 << 20);
            f(t, vms).await;
        })
    });
}

fn assert_no_space(err: banger_vmm::Error, under: &Path) {
    assert!(matches!(err, banger_vmm::Error::NoSpace(_)), "{err:?}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        banger_proto::rpc::status::reason_of(&status),
        Some("NO_SPACE")
    );
    assert!(
        status
            .message()
            .contains(&format!("no space left for {}", under.display())),
        "{status:?}"
    );
}

#[test]
fn a_create_whose_disk_does_not_fit_rolls_back_and_the_next_one_works() {
    banger_test_support::gate!(Priv, ROOT);
    use banger_test_support::diskfull::{files_under, fill, free};
    on_small_state(false, async |t, vms| {
        let filler = fill(&vms, 256 << 10);
        let before = free(&vms);
        let err = t
            .mgr
            .create(
                banger_vmm::testing::spec("a", "img"),
                &banger_vmm::manager::NoProgress,
            )
            .await
            .unwrap_err();
        assert_no_space(err, &vms);
        assert!(t.mgr.list().unwrap().is_empty(), "the record stays");
        assert!(files_under(&vms).is_empty(), "{:?}", files_under(&vms));
        assert!(free(&vms) + (64 << 10) >= before, "space not given back");
        assert!(t.peers.unreleased().is_empty(), "{:?}", t.peers.calls());

        std::fs::remove_file(filler).unwrap();
        let vm = t
            .mgr
            .create(
                banger_vmm::testing::spec("a", "img"),
                &banger_vmm::manager::NoProgress,
            )
            .await
            .expect("a create once there is room");
        assert_eq!(vm.vm.name, "a");
        t.mgr.delete("a", true).await.unwrap();
        assert!(files_under(&vms).is_empty(), "{:?}", files_under(&vms));
    });
}

#[test]
fn a_preparation_whose_copy_does_not_fit_leaves_no_work_dir_and_the_next_one_works() {
    banger_test_support::gate!(Priv, ROOT);
    use banger_test_support::diskfull::{files_under, fill};
    on_small_state(true, async |t, vms| {
        let filler = fill(&vms, 256 << 10);
        let err = t
            .mgr
            .create(
                banger_vmm::testing::spec("a", "img"),
                &banger_vmm::manager::NoProgress,
            )
            .await
            .unwrap_err();
        assert_no_space(err, &vms.join(".prepared"));
        assert!(t.mgr.list().unwrap().is_empty());
        let (done, _failed) = t.mgr.prepared_images();
        assert!(done.is_empty());
        // No work dir, no disk: at most the failure's small record.
        let left: Vec<_> = files_under(&vms)
            .into_iter()
            .filter(|p| !p.to_string_lossy().contains(".failed/"))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        std::fs::remove_file(filler).unwrap();
        t.mgr
            .create(
                banger_vmm::testing::spec("a", "img"),
                &banger_vmm::manager::NoProgress,
            )
            .await
            .expect("a create (and its preparation) once there is room");
        let (done, _) = t.mgr.prepared_images();
        assert_eq!(done.len(), 1);
    });
}
