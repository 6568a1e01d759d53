//! The guest contract (DESIGN §5) in one place: what vmm, imagestore and the
//! guest's `banger-agent` (agent, `first-boot` and initramfs `init` modes)
//! agree on — where banger's files live in a guest, the per-VM
//! [`Identity`] vmm writes into the disk, and the [`FirstBootEvent`] lines
//! first boot prints on the console for the host to follow.
//!
//! Built without the `host` feature: the static agent links it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::rpc::hybrid_vsock::AGENT_PORT;

/// The per-VM identity, written by vmm before the first boot.
pub const IDENTITY_PATH: &str = "/etc/banger/identity.json";
/// The static agent binary (multi-call: `banger-agent`, `first-boot`, `init`).
pub const AGENT_PATH: &str = "/usr/local/bin/banger-agent";
/// First boot: a name the agent answers to (argv0) and the `init=` of
/// images booted from a registry.
pub const FIRST_BOOT_PATH: &str = "/usr/local/libexec/banger-first-boot";
/// The guest's own banger state (what first boot already did).
pub const STATE_DIR: &str = "/var/lib/banger";
/// Written once the identity in [`IDENTITY_PATH`] is applied (hostname,
/// `/etc/hosts`, `/etc/resolv.conf`, root's `authorized_keys`): its content
/// is [`identity_applied_stamp`] of the `identity.json` bytes. First boot
/// skips the identity when the stamp matches; vmm writes it at create when
/// it applied the identity into the disk itself, so first boot has no work.
pub const IDENTITY_APPLIED_PATH: &str = "/var/lib/banger/identity.applied";

/// The content of [`IDENTITY_APPLIED_PATH`] for an `identity.json` of
/// these bytes: `"fnv1a64:<16 hex> <size>\n"`, FNV-1a 64 of the file (what
/// the Rust first boot compares; not a security boundary: file and stamp
/// live on the same disk). First boot's oneshot unit is skipped outright
/// while the stamp exists (`ConditionPathExists=!`).
pub fn identity_applied_stamp(identity_json: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity_json {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x} {}\n", identity_json.len())
}

/// What a VM's first boot is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// An ordinary VM: apply the identity, hand over to the init.
    #[default]
    Vm,
    /// The one-off preparation VM of an image: install what the image
    /// lacks (an init, an SSH server), leave the filesystem ready for every
    /// later VM (no per-VM state, package caches emptied), report
    /// [`FirstBootEvent::Prepared`] and power off.
    Prepare,
}

/// How the guest reaches package mirrors during first boot (`[guest]` in
/// `banger.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestNetwork {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<String>,
    /// Per distribution family (`debian`, `fedora`, `alpine`, `arch`,
    /// `suse`): URL prefix as the image's package sources name it → the
    /// prefix to use instead, e.g. `"http://deb.debian.org/debian" →
    /// "http://mirror.lan/debian"`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrors: BTreeMap<String, BTreeMap<String, String>>,
}

impl GuestNetwork {
    pub fn is_empty(&self) -> bool {
        *self == GuestNetwork::default()
    }
}

/// `/etc/banger/identity.json`. Every field is data: first boot never
/// splices a value into code (shell, sed, unit files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Identity {
    pub hostname: String,
    pub ssh_authorized_keys: Vec<String>,
    pub dns: Vec<String>,
    /// `a.b.c.d/nn`; absent without a network (informational: the
    /// kernel's `ip=` or the initramfs already configured eth0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "is_default")]
    pub purpose: Purpose,
    #[serde(skip_serializing_if = "GuestNetwork::is_empty")]
    pub network: GuestNetwork,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// Whether VMs of an image need its prepared filesystem (one home for the
/// rule; vmm acts on it, the CLI shows it): images booted by first boot
/// (`direct_boot`, agent injected) that lack systemd or sshd and name a
/// distribution, whose package manager can install them. An image with no
/// os-release at all (busybox) boots with the agent as PID 1 instead.
pub fn needs_preparation(
    direct_boot: bool,
    has_agent: bool,
    os_id: &str,
    os_id_like: &[String],
    has_systemd: bool,
    has_ssh_server: bool,
) -> bool {
    direct_boot
        && has_agent
        && family_of(os_id, os_id_like).is_some()
        && !(has_systemd && has_ssh_server)
}

/// The distribution families first boot knows how to install an init and
/// sshd on, by os-release `ID`: `debian`, `fedora`, `arch`, `suse`,
/// `alpine`.
const FAMILIES: &[(&str, &[&str])] = &[
    (
        "debian",
        &[
            "debian",
            "ubuntu",
            "raspbian",
            "linuxmint",
            "pop",
            "devuan",
            "kali",
        ],
    ),
    (
        "fedora",
        &[
            "fedora",
            "rhel",
            "centos",
            "rocky",
            "almalinux",
            "ol",
            "amzn",
        ],
    ),
    ("arch", &["arch", "archlinux", "manjaro", "endeavouros"]),
    ("suse", &["opensuse", "suse", "sles", "sled"]),
    ("alpine", &["alpine", "postmarketos"]),
];

/// The family of a distribution: its `ID` first, then each `ID_LIKE` word
/// (`opensuse-leap` and `opensuse-tumbleweed` are `opensuse`).
pub fn family_of(id: &str, id_like: &[String]) -> Option<&'static str> {
    std::iter::once(id)
        .chain(id_like.iter().map(String::as_str))
        .find_map(|word| {
            let word = if word.starts_with("opensuse") {
                "opensuse"
            } else {
                word
            };
            FAMILIES
                .iter()
                .find(|(_, ids)| ids.contains(&word))
                .map(|(family, _)| *family)
        })
}

/// Why first boot failed, as the host reports it to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCause {
    /// A mirror's host name did not resolve.
    Dns,
    /// No route, connection refused or timed out, proxy unreachable.
    Network,
    /// The mirror answered, but with errors (404/500, bad signature, stale index).
    Mirror,
    /// The package manager does not know a package.
    MissingPackage,
    /// No space left on the guest's disk.
    DiskFull,
    /// The image's package manager is missing or does not run.
    NoPackageManager,
    /// os-release names no distribution first boot knows.
    UnknownDistribution,
    /// The image is for another CPU architecture.
    WrongArchitecture,
    Other,
}

impl FailureCause {
    /// What the user can do about it (one home for the advice).
    pub fn hint(self) -> &'static str {
        match self {
            FailureCause::Dns => {
                "the guest could not resolve its package mirror: check `[netd] dns`, or set a mirror by address in `[guest.mirrors]`"
            }
            FailureCause::Network => {
                "the guest could not reach its package mirror: create with --nat, or set `[guest] http_proxy` / `[guest.mirrors]`"
            }
            FailureCause::Mirror => {
                "the package mirror answered with errors: check the mirror, or point `[guest.mirrors]` at a working one"
            }
            FailureCause::MissingPackage => {
                "the image's package sources lack a package first boot needs: check the image's sources and mirror"
            }
            FailureCause::DiskFull => "the guest's disk filled up: create with a larger --disk",
            FailureCause::NoPackageManager => {
                "the image has no working package manager: use an image that ships an init and sshd, or one of a known distribution"
            }
            FailureCause::UnknownDistribution => {
                "the image's os-release names no distribution banger knows how to install an init on: use an image that ships systemd and sshd"
            }
            FailureCause::WrongArchitecture => "the image is built for another CPU architecture",
            FailureCause::Other => "see the console log",
        }
    }
}

/// One thing first boot reports on the console, as one line
/// `<EVENT_MARKER><json>` (see [`FirstBootEvent::to_console_line`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum FirstBootEvent {
    /// First boot runs (its version).
    Started { version: String },
    /// The image lacks an init or SSH server: installing these with `manager`.
    Installing {
        manager: String,
        packages: Vec<String>,
    },
    /// Progress of the install (`step`: e.g. `update`, `download`, `unpack`, `configure`).
    Progress {
        step: String,
        done: u64,
        total: u64,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
    /// The package manager finished.
    Installed { packages: Vec<String>, seconds: u64 },
    /// Preparation ([`Purpose::Prepare`]) is complete: the filesystem is
    /// clean and the guest powers off.
    Prepared { packages: Vec<String> },
    /// Handing over to the image's init (its path).
    Handover { init: String },
    /// First boot failed; a rescue shell follows on the console.
    Failed {
        step: String,
        cause: FailureCause,
        message: String,
        /// A few readable lines of the failing command's output.
        #[serde(default)]
        excerpt: Vec<String>,
    },
}

/// What starts a [`FirstBootEvent`] line on the console.
pub const EVENT_MARKER: &str = "@@banger-first-boot@@ ";

/// The longest event line the host parses (an excerpt stays well under).
pub const MAX_EVENT_LINE: usize = 16 * 1024;

impl FirstBootEvent {
    /// The line to print on the console (no newline): the marker, then
    /// compact JSON (which never contains a raw newline).
    pub fn to_console_line(&self) -> String {
        let json = serde_json::to_string(self).expect("first-boot events serialize");
        format!("{EVENT_MARKER}{json}")
    }

    /// The event in one console line, if it holds one. Kernel messages can
    /// land in front of the marker on a serial console, so the marker is
    /// searched anywhere in the line; anything unparsable is not an event.
    pub fn parse_console_line(line: &str) -> Option<Self> {
        if line.len() > MAX_EVENT_LINE {
            return None;
        }
        let at = line.find(EVENT_MARKER)?;
        let json = line[at + EVENT_MARKER.len()..].trim_end_matches(['\r', '\n']);
        serde_json::from_str(json).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_a_console_line() {
        let events = [
            FirstBootEvent::Started {
                version: "1.0".into(),
            },
            FirstBootEvent::Installing {
                manager: "apt".into(),
                packages: vec!["systemd-sysv".into(), "openssh-server".into()],
            },
            FirstBootEvent::Progress {
                step: "unpack".into(),
                done: 3,
                total: 40,
                detail: "libc6".into(),
            },
            FirstBootEvent::Failed {
                step: "apt-get update".into(),
                cause: FailureCause::Dns,
                message: "Temporary failure resolving 'deb.debian.org'".into(),
                excerpt: vec!["line \"one\"\nwith newline".into()],
            },
        ];
        for e in events {
            let line = e.to_console_line();
            assert!(!line.contains('\n'));
            // Kernel output glued in front, CR from the serial line behind.
            let noisy = format!("[   12.3] random: crng init done{line}\r");
            assert_eq!(FirstBootEvent::parse_console_line(&noisy), Some(e));
        }
        assert_eq!(
            FirstBootEvent::parse_console_line("banger-first-boot: FAILED"),
            None
        );
        assert_eq!(
            FirstBootEvent::parse_console_line(&format!("{EVENT_MARKER}{{\"phase\":\"bogus\"}}")),
            None
        );
    }

    #[test]
    fn families_by_id_then_id_like() {
        let like = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(family_of("debian", &[]), Some("debian"));
        assert_eq!(family_of("ubuntu", &like(&["debian"])), Some("debian"));
        assert_eq!(
            family_of("rocky", &like(&["rhel", "centos", "fedora"])),
            Some("fedora")
        );
        assert_eq!(
            family_of("opensuse-tumbleweed", &like(&["opensuse", "suse"])),
            Some("suse")
        );
        assert_eq!(family_of("mydistro", &like(&["arch"])), Some("arch"));
        assert_eq!(family_of("alpine", &[]), Some("alpine"));
        assert_eq!(family_of("busybox", &[]), None);
        assert_eq!(family_of("", &[]), None);
        assert!(!needs_preparation(true, true, "busybox", &[], false, false));
        assert!(needs_preparation(true, true, "debian", &[], false, false));
        assert!(needs_preparation(true, true, "debian", &[], true, false));
        assert!(!needs_preparation(true, true, "debian", &[], true, true));
        assert!(!needs_preparation(false, true, "debian", &[], false, false));
    }

    #[test]
    fn applied_stamp_is_fnv1a64_and_size() {
        // FNV-1a 64 reference values: empty input is the offset basis.
        assert_eq!(identity_applied_stamp(b""), "fnv1a64:cbf29ce484222325 0\n");
        assert_eq!(identity_applied_stamp(b"a"), "fnv1a64:af63dc4c8601ec8c 1\n");
        assert_ne!(
            identity_applied_stamp(b"{\"hostname\":\"a\"}"),
            identity_applied_stamp(b"{\"hostname\":\"b\"}")
        );
    }

    #[test]
    fn identity_reads_old_and_new_files() {
        // What vmm wrote before purpose/network existed still parses.
        let old = r#"{"hostname":"a","ssh_authorized_keys":["ssh-ed25519 AAAA x"],"dns":["1.1.1.1"],"ip":"172.30.0.2/24","gateway":"172.30.0.1"}"#;
        let id: Identity = serde_json::from_str(old).unwrap();
        assert_eq!(id.purpose, Purpose::Vm);
        assert!(id.network.is_empty());
        // Defaults are not written, so old first-boot scripts see the old file.
        assert_eq!(serde_json::to_string(&id).unwrap(), old);
        let mut prep = id.clone();
        prep.purpose = Purpose::Prepare;
        prep.network.mirrors.insert(
            "debian".into(),
            [(
                "http://deb.debian.org/debian".into(),
                "http://m/debian".into(),
            )]
            .into(),
        );
        let back: Identity = serde_json::from_str(&serde_json::to_string(&prep).unwrap()).unwrap();
        assert_eq!(back, prep);
    }
}
