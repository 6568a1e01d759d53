//! Real components for banger's tests, shared by every crate's test tier:
//! private network namespaces, small filesystems for disk-full tests, a
//! Debian `docker-registry` bound to 127.0.0.1, an OTLP trace receiver,
//! the fixtures in `../shared/fixtures` and the cached ones under `target/test-cache` (debootstrapped trees, the
//! official-like minbase `debian:bookworm`, Debian archives and a guest
//! mirror built from Debian's signed files), and the file and DNS servers a
//! test runs in its namespace to serve them.
//!
//! The tiers (in-process, `priv_*`, `e2e_*`) and the gate a heavier test
//! passes first are in [`tier`]: a test whose needs are missing fails under
//! CI and says loudly what it did not run elsewhere; it never passes
//! silently. Helpers that need something missing panic with what to install.

pub mod cli;
pub mod debian_archive;
pub mod debian_mirror;
pub mod diskfull;
pub mod fixtures;
pub mod inproc;
pub mod leaks;
pub mod minbase;
pub mod netns;
pub mod otlp;
pub mod procs;
pub mod qemu;
pub mod registry;
pub mod serve;
pub mod tar;
pub mod tier;
pub mod wait;

use std::path::Path;
use std::process::Command;

/// Runs `cmd` to completion and returns its stdout; panics with its stderr
/// when it cannot start or fails (tools come from `scripts/deps/*.apt`).
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (see scripts/deps/*.apt)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Panics with an install hint unless `program` is on PATH.
pub fn require_program(program: &str, debian_package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        || Path::new(program).is_file();
    assert!(
        found,
        "this test needs `{program}`: install it with `apt-get install {debian_package}` \
         (scripts/setup.sh does this)"
    );
}

/// Panics unless the test runs as root (privileged tier).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this privileged test must run as root (scripts/test.sh runs the suite as root in CI)"
    );
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}
