//! Guest bits and guest facts: the banger agent, first-boot script and
//! their units are copied into the tree from the guest bundle dir, and the
//! facts vmm needs (systemd, sshd, os-release) are read from the tree.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::unpack::{resolve, resolve_existing};

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

/// Copies the bundle's files into `root`, enables the units (by their
/// `WantedBy=`) and installs the openrc script when the bundle has one. Returns
/// whether the agent is in (the bundle may lack files while the guest is
/// being built; missing ones are logged).
pub fn inject(root: &Path, bundle: &Path) -> Result<bool, Error> {
    let mut has_agent = true;
    for (src, dest, mode) in BUNDLE {
        let from = bundle.join(src);
        if !from.is_file() {
            tracing::warn!(file = %from.display(), "guest bundle lacks a file; the image is built without it");
            has_agent = false;
            continue;
        }
        let dest = Path::new(dest);
        let dir = resolve(root, dest.parent().unwrap_or(Path::new("")), true)
            .map_err(|_| Error::Inject(format!("cannot place {} in the image", dest.display())))?;
        let to = dir.join(dest.file_name().unwrap_or_default());
        let _ = fs::remove_file(&to);
        fs::copy(&from, &to).map_err(Error::io("cannot copy guest file to", &to))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))
            .map_err(Error::io("cannot chmod", &to))?;
        std::os::unix::fs::lchown(&to, Some(0), Some(0)).map_err(Error::io("cannot chown", &to))?;
    }
    for unit in ENABLED {
        let Ok(text) = fs::read_to_string(bundle.join(unit)) else {
            continue;
        };
        for target in wanted_by(&text) {
            let wants_rel = format!("etc/systemd/system/{target}.wants");
            let wants = resolve(root, Path::new(&wants_rel), true)
                .map_err(|_| Error::Inject(format!("cannot create /{wants_rel} in the image")))?;
            let link = wants.join(unit);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), &link)
                .map_err(Error::io("cannot enable unit", &link))?;
        }
    }
    let (src, dest) = OPENRC;
    if bundle.join(src).is_file() {
        let dest = Path::new(dest);
        let dir = resolve(root, dest.parent().unwrap_or(Path::new("")), true)
            .map_err(|_| Error::Inject(format!("cannot place {} in the image", dest.display())))?;
        let to = dir.join(dest.file_name().unwrap_or_default());
        let _ = fs::remove_file(&to);
        fs::copy(bundle.join(src), &to).map_err(Error::io("cannot copy guest file to", &to))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))
            .map_err(Error::io("cannot chmod", &to))?;
        std::os::unix::fs::lchown(&to, Some(0), Some(0)).map_err(Error::io("cannot chown", &to))?;
    }
    Ok(has_agent)
}

/// Reads the guest facts from an unpacked tree (before injection).
pub fn facts(root: &Path) -> GuestFacts {
    let mut facts = GuestFacts::default();
    let is_systemd = |p: &Path| {
        p.file_name().is_some_and(|n| n == "systemd")
            || fs::canonicalize(p).is_ok_and(|c| c.file_name().is_some_and(|n| n == "systemd"))
    };
    facts.has_systemd = resolve_init(root).is_some_and(|p| is_systemd(&p))
        || resolve_existing(root, "lib/systemd/systemd").is_some()
        || resolve_existing(root, "usr/lib/systemd/systemd").is_some();
    facts.has_ssh_server = resolve_existing(root, "usr/sbin/sshd").is_some();
    let os_release = resolve_existing(root, "etc/os-release")
        .or_else(|| resolve_existing(root, "usr/lib/os-release"))
        .and_then(|p| fs::read_to_string(p).ok())
        .unwrap_or_default();
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
    facts
}

/// An os-release `ID`/`VERSION_ID` word: 1-64 of `0-9 a-z . _ -` (and, to
/// be lenient with real images, `A-Z + ~`).
fn os_release_token(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b))
}

/// `/sbin/init` resolved through its symlinks inside the root.
fn resolve_init(root: &Path) -> Option<PathBuf> {
    let mut path = resolve_existing(root, "sbin/init")?;
    for _ in 0..10 {
        let Ok(target) = fs::read_link(&path) else {
            return Some(path);
        };
        let rel = if target.is_absolute() {
            target
        } else {
            path.parent()?.strip_prefix(root).ok()?.join(target)
        };
        path = resolve_existing(root, rel.to_str()?)?;
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_from_a_debian_like_tree() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
        fs::create_dir_all(r.join("usr/sbin")).unwrap();
        fs::create_dir_all(r.join("etc")).unwrap();
        std::os::unix::fs::symlink("usr/sbin", r.join("sbin")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        fs::write(r.join("usr/lib/systemd/systemd"), "").unwrap();
        std::os::unix::fs::symlink("/lib/systemd/systemd", r.join("usr/sbin/init")).unwrap();
        fs::write(r.join("usr/sbin/sshd"), "").unwrap();
        fs::write(
            r.join("usr/lib/os-release"),
            "ID=debian\nID_LIKE=\"a b\"\nVERSION_ID=\"12\"\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", r.join("etc/os-release")).unwrap();
        let f = facts(r);
        assert!(f.has_systemd && f.has_ssh_server);
        assert_eq!(f.os_id, "debian");
        assert_eq!(f.os_id_like, ["a", "b"]);
        assert_eq!(f.os_version_id, "12");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(facts(empty.path()), GuestFacts::default());
    }

    #[test]
    fn injection_places_and_enables() {
        let root = tempfile::tempdir().unwrap();
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
        assert!(inject(root.path(), bundle.path()).unwrap());
        let r = root.path();
        assert_eq!(
            fs::read_to_string(r.join("usr/local/bin/banger-agent")).unwrap(),
            "banger-agent"
        );
        let mode = fs::metadata(r.join("usr/local/libexec/banger-first-boot"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(
                r.join("etc/systemd/system/multi-user.target.wants/banger-agent.service")
            )
            .unwrap(),
            Path::new("/etc/systemd/system/banger-agent.service")
        );
        assert_eq!(
            fs::read_link(
                r.join("etc/systemd/system/sysinit.target.wants/banger-first-boot.service")
            )
            .unwrap(),
            Path::new("/etc/systemd/system/banger-first-boot.service")
        );
        assert!(
            !r.join("etc/systemd/system/multi-user.target.wants/banger-first-boot.service")
                .exists()
        );
        let mode = fs::metadata(r.join("etc/init.d/banger-agent"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let partial = tempfile::tempdir().unwrap();
        fs::remove_file(bundle.path().join("banger-agent")).unwrap();
        assert!(!inject(partial.path(), bundle.path()).unwrap());
    }
}
