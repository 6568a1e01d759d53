//! Guest bits and guest facts: the banger agent, first-boot and their
//! units are added to the flattened image's stream from the guest bundle
//! dir, and the facts vmm needs (systemd, sshd, os-release) are read from
//! the flattened image itself, never from a tree on the host.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::flatten::{FileRef, Flattener};

// Where the guest bundle is looked for is shared with kernelcat (its
// initramfs `/init` is the agent): one home, banger-proto's config module.
pub use banger_proto::config::{
    GUEST_DIR_ENV, SYSTEM_GUEST_DIR, find_guest_dir as find_bundle,
    guest_dir_candidates as candidates,
};

/// The files of a guest bundle, and where each goes in the image (mode).
const BUNDLE: [(&str, &str, u32); 4] = [
    ("banger-agent", "usr/local/bin/banger-agent", 0o755),
    (
        "banger-first-boot",
        "usr/local/libexec/banger-first-boot",
        0o755,
    ),
    (
        "banger-agent.service",
        "etc/systemd/system/banger-agent.service",
        0o644,
    ),
    (
        "banger-first-boot.service",
        "etc/systemd/system/banger-first-boot.service",
        0o644,
    ),
];
/// Units enabled as `systemctl enable` would: linked into the `.wants` of
/// each target their `[Install] WantedBy=` names (default multi-user.target).
const ENABLED: [&str; 2] = ["banger-agent.service", "banger-first-boot.service"];
/// Optional openrc service for images without systemd (Alpine).
const OPENRC: (&str, &str) = ("openrc/banger-agent", "etc/init.d/banger-agent");

/// The targets a unit's `[Install]` section wants it in.
fn wanted_by(unit_text: &str) -> Vec<String> {
    let mut in_install = false;
    let mut out = Vec::new();
    for line in unit_text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
        } else if in_install && let Some(v) = line.strip_prefix("WantedBy=") {
            out.extend(v.split_whitespace().map(str::to_owned));
        }
    }
    if out.is_empty() {
        out.push("multi-user.target".into());
    }
    out
}

/// What vmm needs to know about the guest userland.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFacts {
    pub has_systemd: bool,
    pub has_ssh_server: bool,
    pub os_id: String,
    pub os_id_like: Vec<String>,
    pub os_version_id: String,
    pub has_agent: bool,
}

/// Where the agent binary lands; a bundle whose `banger-first-boot` is a
/// symlink (first boot as a mode of the multi-call agent) gets the same
/// symlink in the image.
const AGENT_PATH: &str = "/usr/local/bin/banger-agent";

/// Adds the bundle's files to the flattened image (root-owned, by path
/// inside the image: symlinks on the way are followed inside the image
/// only), enables the units (by their `WantedBy=`) and adds the openrc
/// script when the bundle has one. Returns whether the agent is in (the
/// bundle may lack files while the guest is being built; missing ones are
/// logged).
pub fn inject(image: &mut Flattener, bundle: &Path) -> Result<bool, Error> {
    let mut has_agent = true;
    for (src, dest, mode) in BUNDLE {
        let from = bundle.join(src);
        let is_link = fs::symlink_metadata(&from).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && src == "banger-first-boot" {
            image.add_symlink(dest, AGENT_PATH)?;
            continue;
        }
        if !from.is_file() {
            tracing::warn!(file = %from.display(), "guest bundle lacks a file; the image is built without it");
            has_agent = false;
            continue;
        }
        image.add_host_file(dest, &from, mode)?;
    }
    for unit in ENABLED {
        let Ok(text) = fs::read_to_string(bundle.join(unit)) else {
            continue;
        };
        for target in wanted_by(&text) {
            if target.contains('/') {
                continue;
            }
            image.add_symlink(
                &format!("etc/systemd/system/{target}.wants/{unit}"),
                &format!("/etc/systemd/system/{unit}"),
            )?;
        }
    }
    let (src, dest) = OPENRC;
    if bundle.join(src).is_file() {
        image.add_host_file(dest, &bundle.join(src), 0o755)?;
    }
    Ok(has_agent)
}

/// The most of os-release that is read.
const OS_RELEASE_CAP: u64 = 64 << 10;

/// Reads the guest facts from the flattened image (before injection): every
/// path resolved inside the image, os-release only from a regular file of
/// at most 64 KiB. The os-release content arrives while the stream is
/// emitted: fill it in with [`Facts::os_release`].
pub fn facts(image: &mut Flattener) -> Facts {
    let mut facts = GuestFacts::default();
    let init_is_systemd = image
        .resolved_name("sbin/init")
        .is_some_and(|n| n == b"systemd");
    facts.has_systemd = init_is_systemd
        || image.exists("lib/systemd/systemd")
        || image.exists("usr/lib/systemd/systemd");
    facts.has_ssh_server = image.exists("usr/sbin/sshd");
    let os_release = image
        .regular_file("etc/os-release", OS_RELEASE_CAP)
        .or_else(|| image.regular_file("usr/lib/os-release", OS_RELEASE_CAP));
    Facts { facts, os_release }
}

/// Facts known from the index, and the os-release file to read.
#[derive(Debug)]
pub struct Facts {
    pub facts: GuestFacts,
    pub os_release: Option<FileRef>,
}

impl Facts {
    /// The facts, with os-release parsed from what the emit pass captured.
    pub fn finish(mut self, captured: &[(FileRef, Vec<u8>)]) -> GuestFacts {
        let text = self
            .os_release
            .and_then(|f| captured.iter().find(|(r, _)| *r == f))
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        parse_os_release(&text, &mut self.facts);
        self.facts
    }
}

fn parse_os_release(os_release: &str, facts: &mut GuestFacts) {
    for line in os_release.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').trim_matches('\'').to_owned();
        // These are printed back by `image show`: keep only values in the
        // charset os-release(5) gives them, never an image's escape codes.
        let token = |t: &str| os_release_token(t).then(|| t.to_owned());
        match k.trim() {
            "ID" => facts.os_id = token(&v).unwrap_or_default(),
            "ID_LIKE" => facts.os_id_like = v.split_whitespace().filter_map(token).collect(),
            "VERSION_ID" => facts.os_version_id = token(&v).unwrap_or_default(),
            _ => {}
        }
    }
}

/// An os-release `ID`/`VERSION_ID` word: 1-64 of `0-9 a-z . _ -` (and, to
/// be lenient with real images, `A-Z + ~`).
fn os_release_token(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b))
}
