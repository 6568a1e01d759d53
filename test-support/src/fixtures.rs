//! The shared fixtures (`../shared/fixtures`, beside the repository) and
//! the ones built once and cached under `target/test-cache/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives inside the repository")
        .to_path_buf()
}

/// `target/test-cache/`: fixtures built once (debootstrapped trees, OCI
/// layouts, `.deb`s) and reused by later runs; delete a folder to rebuild it.
pub fn test_cache_dir() -> PathBuf {
    repo_root().join("target/test-cache")
}

/// A Debian bookworm tree, `debootstrap --variant=minbase` plus `include`
/// (comma-separated packages, or none), made on first use into
/// `target/test-cache/<tag>` and reused afterwards: the tag names the recipe
/// (`bookworm-minbase`, `bookworm-systemd` are the ones in use). The tree
/// appears only once complete (debootstrap fills `<tag>.partial-<pid>`, then it is
/// renamed), so a killed run never leaves a half tree behind a good name.
/// Needs the Debian mirror: call it before entering a network namespace.
/// Callers copy the tree before changing it.
pub fn debootstrap(tag: &str, include: Option<&str>) -> PathBuf {
    let cache = test_cache_dir();
    let rootfs = cache.join(tag);
    if rootfs.join("etc/os-release").exists() {
        return rootfs;
    }
    crate::require_program("debootstrap", "debootstrap");
    let partial = cache.join(format!("{tag}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&cache).expect("create target/test-cache");
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "debootstrap", "--variant=minbase"]);
    if let Some(include) = include {
        cmd.arg(format!("--include={include}"));
    }
    let out = cmd
        .arg("bookworm")
        .arg(&partial)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("run debootstrap");
    assert!(
        out.status.success(),
        "debootstrap {tag} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test process may have finished the same tree meanwhile.
    if std::fs::rename(&partial, &rootfs).is_err() {
        assert!(
            rootfs.join("etc/os-release").exists(),
            "cannot rename {} to {}",
            partial.display(),
            rootfs.display()
        );
        let _ = std::fs::remove_dir_all(&partial);
    }
    rootfs
}

/// The `shared/` folder: `$BANGER_SHARED_DIR`, else `../shared` beside the
/// repository.
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BANGER_SHARED_DIR") {
        return dir.into();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives inside the repository");
    let shared = repo.join("../shared");
    assert!(
        shared.join("fixtures").is_dir(),
        "shared fixtures not found at {}; set BANGER_SHARED_DIR",
        shared.display()
    );
    shared
}

/// The compressed fixture kernel (`vmlinux-6.12-x86_64.zst`).
pub fn kernel_zst() -> PathBuf {
    shared_dir().join("fixtures/kernels/vmlinux-6.12-x86_64.zst")
}

/// The fixture kernel's build configuration.
pub fn kernel_config() -> PathBuf {
    shared_dir().join("fixtures/kernels/vmlinux-6.12-x86_64.config")
}

/// SHA-256 (hex) of the decompressed fixture kernel, from `SHA256SUMS`.
pub fn kernel_sha256() -> String {
    let sums = std::fs::read_to_string(shared_dir().join("fixtures/kernels/SHA256SUMS"))
        .expect("read SHA256SUMS");
    sums.lines()
        .find_map(|l| l.strip_suffix("  vmlinux-6.12-x86_64"))
        .expect("SHA256SUMS lists vmlinux-6.12-x86_64")
        .to_owned()
}

/// The decompressed fixture kernel, decompressed once per test process
/// into a temp dir that lives as long as the process.
pub fn kernel_vmlinux() -> PathBuf {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("vmlinux");
        let input = std::fs::File::open(kernel_zst()).expect("open fixture kernel");
        let mut output = std::fs::File::create(&out).expect("create vmlinux");
        zstd::stream::copy_decode(input, &mut output).expect("decompress fixture kernel");
        (dir, out)
    })
    .1
    .clone()
}
