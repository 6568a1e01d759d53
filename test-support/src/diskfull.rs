//! Small filesystems for disk-full tests: a tmpfs of a given size mounted
//! in a private mount namespace of one thread (so the host never sees it,
//! and nothing is left mounted if the test dies), and a filler that leaves
//! only so many bytes free.

use std::io::Write;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Runs `f` on a new thread in a private mount namespace (propagation
/// private, so its mounts stay in it). Threads and processes started from
/// that thread inherit the namespace: build any tokio runtime *inside* `f`.
pub fn in_private_mounts<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    crate::require_root();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
            .expect("unshare(CLONE_NEWNS): are we root?");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private in the new mount namespace");
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Mounts a tmpfs of `bytes` on `dir` (created if missing), in the calling
/// thread's mount namespace: call it inside [`in_private_mounts`].
pub fn mount_tmpfs(dir: &Path, bytes: u64) {
    std::fs::create_dir_all(dir).expect("create the mount point");
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(format!("size={bytes},mode=0755").as_str()),
    )
    .unwrap_or_else(|e| panic!("mount a tmpfs on {}: {e}", dir.display()));
}

/// Bytes free on the filesystem holding `dir`.
pub fn free(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    st.blocks_available() * st.fragment_size()
}

/// Writes `dir/.filler` until at most `leave` bytes stay free; returns
/// its path (remove it to give the room back).
pub fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join(".filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        let room = free(dir);
        if room <= leave {
            break;
        }
        let n = ((room - leave) as usize).min(chunk.len());
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    f.sync_all().expect("sync the filler");
    path
}

/// Every regular file under `dir`, recursively (what a failed operation
/// may have left), except `.filler`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in read.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) if e.file_name() != ".filler" => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}
