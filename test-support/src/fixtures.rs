//! The shared fixtures (`../shared/fixtures`, beside the repository).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
