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

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::flatten::Limits;

    fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, path, target).unwrap();
    }

    /// Emitted members by path: (type, link target, content).
    type Tree = std::collections::BTreeMap<String, (tar::EntryType, String, Vec<u8>)>;

    /// The emitted stream and the facts.
    fn build(l: Vec<u8>, bundle: Option<&Path>) -> (Tree, GuestFacts) {
        let mut f = Flattener::new(Limits::default());
        f.add_layer(std::io::Cursor::new(l.clone()), "l").unwrap();
        let facts = super::facts(&mut f);
        let has_agent = bundle.map(|b| inject(&mut f, b).unwrap());
        let mut out = Vec::new();
        let layers = [l];
        let open = move |i: usize| -> Result<Box<dyn Read>, Error> {
            Ok(Box::new(std::io::Cursor::new(layers[i].clone())))
        };
        let capture: Vec<_> = facts.os_release.into_iter().collect();
        let emitted = f
            .emit(&mut out, &open, &capture, &AtomicBool::new(false))
            .unwrap();
        let mut facts = facts.finish(&emitted.captured);
        facts.has_agent = has_agent.unwrap_or(false);
        let mut tree = std::collections::BTreeMap::new();
        for e in tar::Archive::new(&out[..]).entries().unwrap() {
            let mut e = e.unwrap();
            let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let t = e.header().entry_type();
            let target = e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            tree.insert(path, (t, target, data));
        }
        (tree, facts)
    }

    #[test]
    fn facts_from_a_debian_like_image() {
        let l = layer(|b| {
            symlink(b, "sbin", "usr/sbin");
            symlink(b, "lib", "usr/lib");
            file(b, "usr/lib/systemd/systemd", b"");
            symlink(b, "usr/sbin/init", "/lib/systemd/systemd");
            file(b, "usr/sbin/sshd", b"");
            file(
                b,
                "usr/lib/os-release",
                b"ID=debian\nID_LIKE=\"a b\"\nVERSION_ID=\"12\"\nNAME=\"\x1b[31mx\"\n",
            );
            symlink(b, "etc/os-release", "../usr/lib/os-release");
        });
        let (_, f) = build(l, None);
        assert!(f.has_systemd && f.has_ssh_server);
        assert_eq!(f.os_id, "debian");
        assert_eq!(f.os_id_like, ["a", "b"]);
        assert_eq!(f.os_version_id, "12");
        let (_, empty) = build(layer(|_| {}), None);
        assert_eq!(empty, GuestFacts::default());
    }

    #[test]
    fn hostile_os_release_is_not_read() {
        // A symlink to a host path, a huge file: no facts, no hang.
        let l = layer(|b| {
            symlink(b, "etc/os-release", "/proc/self/environ");
            file(
                b,
                "usr/lib/os-release",
                &vec![b'x'; (OS_RELEASE_CAP + 1) as usize],
            );
        });
        let (_, f) = build(l, None);
        assert_eq!(f.os_id, "");
    }

    #[test]
    fn injection_places_and_enables_inside_the_image() {
        let bundle = tempfile::tempdir().unwrap();
        for (src, _, _) in BUNDLE {
            fs::write(bundle.path().join(src), src).unwrap();
        }
        fs::write(
            bundle.path().join("banger-first-boot.service"),
            "[Unit]\nDescription=x\n[Install]\nWantedBy=sysinit.target\n",
        )
        .unwrap();
        fs::create_dir(bundle.path().join("openrc")).unwrap();
        fs::write(
            bundle.path().join("openrc/banger-agent"),
            "#!/sbin/openrc-run\n",
        )
        .unwrap();
        // The image's /usr/local is a symlink to a host path: followed
        // inside the image.
        let l = layer(|b| symlink(b, "usr/local", "/srv/local"));
        let (tree, facts) = build(l.clone(), Some(bundle.path()));
        assert!(facts.has_agent);
        assert_eq!(tree["srv/local/bin/banger-agent"].2, b"banger-agent");
        assert_eq!(
            tree["etc/systemd/system/sysinit.target.wants/banger-first-boot.service"].1,
            "/etc/systemd/system/banger-first-boot.service"
        );
        assert_eq!(
            tree["etc/systemd/system/multi-user.target.wants/banger-agent.service"].1,
            "/etc/systemd/system/banger-agent.service"
        );
        assert!(tree.contains_key("etc/init.d/banger-agent"));
        // A bundle whose first-boot is a link to the multi-call agent.
        fs::remove_file(bundle.path().join("banger-first-boot")).unwrap();
        std::os::unix::fs::symlink("banger-agent", bundle.path().join("banger-first-boot"))
            .unwrap();
        let (tree, facts) = build(l.clone(), Some(bundle.path()));
        assert!(facts.has_agent);
        let fb = &tree["srv/local/libexec/banger-first-boot"];
        assert_eq!((fb.0, fb.1.as_str()), (tar::EntryType::Symlink, AGENT_PATH));
        // A partial bundle says so.
        fs::remove_file(bundle.path().join("banger-agent")).unwrap();
        let (_, facts) = build(l, Some(bundle.path()));
        assert!(!facts.has_agent);
    }
}
