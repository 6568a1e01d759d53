//! The test tiers and the gate every test of the heavier two passes first.
//!
//! - **in-process** (any other file name): unit tests and services served
//!   on a temp socket in a temp home; needs nothing but the build.
//! - **priv** (`tests/priv_*.rs`): root, network namespaces, nftables,
//!   chroots, hypervisors under QEMU TCG, the shared fixtures.
//! - **e2e** (`tests/e2e_*.rs`): the whole product through the CLI, VMs
//!   booted, inside a namespace.
//!
//! A priv or e2e test starts with [`gate!`](crate::gate), naming what it
//! needs. When something is missing it does not pass quietly: under CI
//! (`CI=true` or `BANGER_REQUIRE_TIERS=1`) it fails; elsewhere (a
//! developer's plain `cargo test` as a user) it prints
//! `SKIPPED TIER <tier>: <test> did not run: <why>` on the terminal (past
//! libtest's output capture) and returns. Each gate also appends
//! `ran|skipped <tier> <binary> <test>` to `$BANGER_TIER_LOG` when set;
//! `scripts/check-tiers.sh` compares that log with the tests the priv_ and
//! e2e_ binaries list, so a tier that silently did not run fails CI.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A tier above in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Root, namespaces, hypervisors, fixtures.
    Priv,
    /// The whole product through the CLI.
    E2e,
}

impl Tier {
    /// The name in file prefixes, the log and the messages.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Priv => "priv",
            Tier::E2e => "e2e",
        }
    }
}

/// Something a gated test needs from the machine.
#[derive(Debug, Clone)]
pub enum Need {
    /// Effective uid 0 (namespaces, nftables, chroots, mounts).
    Root,
    /// A program on PATH, and the Debian package that has it.
    Program(&'static str, &'static str),
    /// A file or folder (a fixture, the guest bundle), and how to get it.
    Path(PathBuf, &'static str),
    /// The shared fixtures beside the repository (`../shared/fixtures`).
    SharedFixtures,
}

impl Need {
    /// `None` when present, else why not.
    fn missing(&self) -> Option<String> {
        match self {
            Need::Root => (!nix::unistd::geteuid().is_root()).then(|| "root".to_owned()),
            Need::Program(program, package) => {
                (!on_path(program)).then(|| format!("`{program}` (apt-get install {package})"))
            }
            Need::Path(path, how) => {
                (!path.exists()).then(|| format!("{} ({how})", path.display()))
            }
            Need::SharedFixtures => {
                let dir = std::env::var_os("BANGER_SHARED_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| crate::fixtures::repo_root().join("../shared"));
                (!dir.join("fixtures").is_dir()).then(|| {
                    format!(
                        "the shared fixtures at {} (set BANGER_SHARED_DIR)",
                        dir.join("fixtures").display()
                    )
                })
            }
        }
    }
}

/// Root ([`Need::Root`]).
pub const ROOT: Need = Need::Root;
/// QEMU for x86_64 guests (TCG here).
pub const QEMU: Need = Need::Program("qemu-system-x86_64", "qemu-system-x86");
/// The vsock bridge QEMU guests talk through.
pub const VHOST_VSOCK: Need = Need::Program("vhost-device-vsock", "(cargo) vhost-device-vsock");
/// systemd-nspawn, for the systemd-in-a-container tests.
pub const NSPAWN: Need = Need::Program("systemd-nspawn", "systemd-container");
/// The shared fixtures ([`Need::SharedFixtures`]).
pub const SHARED: Need = Need::SharedFixtures;

/// Whether a test may go on: true when every need is met. Otherwise fails
/// under CI and prints a loud skip line elsewhere. Use [`gate!`](crate::gate).
pub fn ready(tier: Tier, needs: &[Need]) -> bool {
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("?")
        .to_owned();
    let binary = binary_name();
    let missing: Vec<String> = needs.iter().filter_map(Need::missing).collect();
    if missing.is_empty() {
        log(&format!("ran {} {binary} {test}", tier.name()));
        return true;
    }
    let why = format!("needs {}", missing.join(", "));
    if strict() {
        panic!(
            "{} tier test {binary}::{test} cannot run here: {why}; CI runs every tier \
             (scripts/setup.sh installs what it needs, scripts/test.sh runs it as root)",
            tier.name()
        );
    }
    log(&format!("skipped {} {binary} {test}", tier.name()));
    // Straight to the terminal: libtest captures only print!/eprint!, and a
    // skip must be seen even though the test reports `ok`.
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED TIER {}: {binary}::{test} did not run: {why}\n",
        tier.name()
    );
    false
}

/// Returns from the calling test unless it may run (see the module docs):
/// `gate!(Priv, ROOT, QEMU)` names the tier and the needs (the constants
/// of this module); [`ready`] takes any [`Need`].
#[macro_export]
macro_rules! gate {
    ($tier:ident $(, $need:ident)* $(,)?) => {
        if !$crate::tier::ready($crate::tier::Tier::$tier, &[$($crate::tier::$need),*]) {
            return;
        }
    };
}

/// For a tier this machine cannot have by design (Firecracker has no
/// Debian package): says so loudly and records `unavailable` in the log,
/// which `scripts/check-tiers.sh` reports instead of counting it as run.
pub fn unavailable(tier: Tier, why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let binary = binary_name();
    log(&format!("unavailable {} {binary} {test}", tier.name()));
    let _ = writeln!(
        std::io::stderr(),
        "\nTIER NOT RUN {}: {binary}::{test}: {why}\n",
        tier.name()
    );
}

/// CI (or a developer asking for it) wants every tier to run.
fn strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("BANGER_REQUIRE_TIERS").is_ok_and(|v| v == "1")
}

/// The test binary's name without cargo's hash (`e2e_vm-0123abcd` →
/// `e2e_vm`), as `cargo test` names the target.
fn binary_name() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem,
    }
}

fn log(line: &str) {
    let Some(path) = std::env::var_os("BANGER_TIER_LOG") else {
        return;
    };
    // One short O_APPEND write per line: parallel test threads and
    // processes do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&path))
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot append to BANGER_TIER_LOG {}: {e}",
            Path::new(&path).display()
        );
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        || Path::new(program).is_file()
}
