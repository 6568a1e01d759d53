//! The guest bundle (static agent + scripts), built once per test process
//! with `scripts/build-guest.sh` into a temp dir.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The bundle directory, as imagestore would receive it.
pub fn bundle() -> PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("guest");
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = std::process::Command::new(repo.join("scripts/build-guest.sh"))
            .arg(&out)
            .status()
            .expect("run scripts/build-guest.sh");
        assert!(status.success(), "scripts/build-guest.sh failed: {status}");
        (dir, out)
    })
    .1
    .clone()
}
