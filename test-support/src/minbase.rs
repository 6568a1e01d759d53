//! `debian:bookworm` as Docker Hub ships it, made locally: a
//! `debootstrap --variant=minbase` tree (no init, no systemd, no sshd) with
//! the official image's apt configuration (deb822 `debian.sources` for
//! bookworm, bookworm-updates and bookworm-security, no `sources.list`, the
//! `docker-*` apt and dpkg settings, empty apt lists and caches, no
//! bootstrap logs, an empty `/dev`), as an OCI layout whose command is
//! `bash`. Built once into `target/test-cache/debian-minbase-v2/` (delete it
//! to rebuild; bump the version when the recipe changes). The layout holds
//! two tags: [`TAG`], and [`MARKED_TAG`], the same image plus one tiny layer
//! (a new digest, for a case that needs an image never prepared before).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::registry::{Registry, push_with_skopeo};
use crate::run;

/// The tag of the image in the layout.
pub const TAG: &str = "bookworm";
/// The same image plus a layer with [`MARKER_PATH`].
pub const MARKED_TAG: &str = "bookworm-marked";
/// The file the extra layer of [`MARKED_TAG`] adds.
pub const MARKER_PATH: &str = "/etc/banger-test-marker";

const CACHE_NAME: &str = "debian-minbase-v2";

/// The official image's `/etc/apt/sources.list.d/debian.sources`.
pub const DEBIAN_SOURCES: &str = "\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// The official image's apt and dpkg settings (debuerreotype's minimizing
/// config), by path in the image.
pub const OFFICIAL_SETTINGS: [(&str, &str); 5] = [
    (
        "etc/apt/apt.conf.d/docker-clean",
        "# Docker images keep no apt caches (as the official image).\n\
         DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };\n\
         \n\
         Dir::Cache::pkgcache \"\";\n\
         Dir::Cache::srcpkgcache \"\";\n",
    ),
    (
        "etc/apt/apt.conf.d/docker-autoremove-suggests",
        "Apt::AutoRemove::SuggestsImportant \"false\";\n",
    ),
    (
        "etc/apt/apt.conf.d/docker-gzip-indexes",
        "Acquire::GzipIndexes \"true\";\n",
    ),
    (
        "etc/apt/apt.conf.d/docker-no-languages",
        "Acquire::Languages \"none\";\n",
    ),
    (
        "etc/dpkg/dpkg.cfg.d/docker-apt-speedup",
        "force-unsafe-io\n",
    ),
];

/// The cached image: its tree and its OCI layout.
#[derive(Debug, Clone)]
pub struct MinbaseImage {
    /// The image's root filesystem (read-only for tests: copy it to change it).
    pub rootfs: PathBuf,
    /// The OCI layout holding [`TAG`] and [`MARKED_TAG`].
    pub layout: PathBuf,
}

impl MinbaseImage {
    /// `oci:<layout>:<tag>`, a skopeo source.
    pub fn oci_ref(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.layout.display())
    }

    /// Pushes `tag` of the layout to `registry` as `repo_tag` (e.g.
    /// `library/debian:bookworm`, which a `docker.io` mirror setting makes
    /// `docker.io/library/debian:bookworm`), with Docker's v2 schema 2 media
    /// types as Docker Hub serves them.
    pub fn push(&self, registry: &Registry, tag: &str, repo_tag: &str) {
        push_with_skopeo(
            &self.oci_ref(tag),
            &format!("docker://{}/{repo_tag}", registry.addr),
            &["--format", "v2s2"],
        );
    }
}

/// The image, built on first use (needs the Debian mirror then: call it
/// before entering a namespace).
pub fn debian_bookworm_minbase() -> MinbaseImage {
    static IMAGE: OnceLock<MinbaseImage> = OnceLock::new();
    IMAGE.get_or_init(build_cached).clone()
}

fn build_cached() -> MinbaseImage {
    let dir = crate::fixtures::test_cache_dir().join(CACHE_NAME);
    let image = MinbaseImage {
        rootfs: dir.join("rootfs"),
        layout: dir.join("oci"),
    };
    if dir.join("done").exists() {
        return image;
    }
    crate::require_root();
    crate::require_program("umoci", "umoci");
    let base = crate::fixtures::debootstrap("bookworm-minbase", None);
    // Built beside the final name and renamed when complete; another test
    // process building at the same time loses the rename and keeps theirs.
    let partial = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).unwrap();
    let rootfs = partial.join("rootfs");
    run(Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&base)
        .arg(&rootfs));
    make_official(&rootfs);
    check_official(&rootfs).unwrap_or_else(|e| panic!("the minbase recipe is wrong: {e}"));

    // The layers are GNU tar archives, as debuerreotype makes Docker Hub's
    // (`./`-prefixed, numeric owners, xattrs); umoci only stores them.
    // (umoci 0.4.7's own `insert` writes a tar whose last member lacks its
    // padding, which strict readers refuse.)
    let layout = partial.join("oci");
    let image_ref = format!("{}:{TAG}", layout.display());
    let layer = partial.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--create",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
        ])
        .arg("--file")
        .arg(&layer)
        .arg("--directory")
        .arg(&rootfs)
        .arg("."));
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    run(Command::new("umoci")
        .arg("new")
        .arg("--image")
        .arg(&image_ref));
    run(Command::new("nice")
        .args(["-n", "10", "umoci", "raw", "add-layer", "--image"])
        .arg(&image_ref)
        .arg(&layer));
    run(Command::new("umoci")
        .args(["config", "--image"])
        .arg(&image_ref)
        .args([
            "--config.cmd",
            "bash",
            "--os",
            "linux",
            "--architecture",
            "amd64",
        ]));
    let marker_root = partial.join("marker");
    let marker = marker_root.join(MARKER_PATH.trim_start_matches('/'));
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::write(&marker, "an extra layer: a new image digest\n").unwrap();
    run(Command::new("tar")
        .args(["--create", "--numeric-owner", "--owner=0", "--group=0"])
        .arg("--file")
        .arg(&layer)
        .arg("--directory")
        .arg(&marker_root)
        .arg(MARKER_PATH.trim_start_matches('/')));
    run(Command::new("umoci")
        .args(["raw", "add-layer", "--image"])
        .arg(&image_ref)
        .args(["--tag", MARKED_TAG])
        .arg(&layer));
    std::fs::remove_file(&layer).unwrap();
    std::fs::remove_dir_all(&marker_root).unwrap();
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout));
    std::fs::write(partial.join("done"), "").unwrap();
    if std::fs::rename(&partial, &dir).is_err() {
        assert!(
            dir.join("done").exists(),
            "cannot rename {} to {}",
            partial.display(),
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&partial);
    }
    image
}

/// Turns a debootstrapped minbase tree into what the official image holds.
fn make_official(rootfs: &Path) {
    let _ = std::fs::remove_file(rootfs.join("etc/apt/sources.list"));
    let sources = rootfs.join("etc/apt/sources.list.d/debian.sources");
    std::fs::create_dir_all(sources.parent().unwrap()).unwrap();
    std::fs::write(&sources, DEBIAN_SOURCES).unwrap();
    for (path, content) in OFFICIAL_SETTINGS {
        let file = rootfs.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
    // No lists, no caches, no logs of the bootstrap (debuerreotype removes
    // them), no host resolver, and /dev left to the runtime.
    for dir in ["var/lib/apt/lists", "var/cache/apt", "dev"] {
        empty_dir(&rootfs.join(dir));
    }
    for file in [
        "var/log/dpkg.log",
        "var/log/bootstrap.log",
        "var/log/alternatives.log",
        "var/cache/ldconfig/aux-cache",
        "etc/resolv.conf",
    ] {
        let _ = std::fs::remove_file(rootfs.join(file));
    }
}

fn empty_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let gone = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        gone.unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }
}

/// Why `rootfs` is not like the official image, if it is not: no init, no
/// systemd, no sshd, no `sources.list`, the official `debian.sources` and
/// settings, the Debian keyring, empty apt lists.
pub fn check_official(rootfs: &Path) -> Result<(), String> {
    for absent in [
        "sbin/init",
        "usr/sbin/init",
        "lib/systemd/systemd",
        "usr/lib/systemd/systemd",
        "usr/sbin/sshd",
        "etc/apt/sources.list",
        "var/lib/dpkg/info/systemd.list",
        "var/lib/dpkg/info/openssh-server.list",
    ] {
        if rootfs.join(absent).symlink_metadata().is_ok() {
            return Err(format!("/{absent} exists"));
        }
    }
    let sources = std::fs::read_to_string(rootfs.join("etc/apt/sources.list.d/debian.sources"))
        .map_err(|e| format!("debian.sources: {e}"))?;
    if sources != DEBIAN_SOURCES {
        return Err(format!(
            "debian.sources is not the official one:\n{sources}"
        ));
    }
    for (path, content) in OFFICIAL_SETTINGS {
        if std::fs::read_to_string(rootfs.join(path)).ok().as_deref() != Some(content) {
            return Err(format!("/{path} is not the official one"));
        }
    }
    if !rootfs
        .join("usr/share/keyrings/debian-archive-keyring.gpg")
        .is_file()
    {
        return Err("no Debian archive keyring".into());
    }
    let lists: Vec<_> = std::fs::read_dir(rootfs.join("var/lib/apt/lists"))
        .map_err(|e| format!("/var/lib/apt/lists: {e}"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    if !lists.is_empty() {
        return Err(format!("apt lists are not empty: {lists:?}"));
    }
    Ok(())
}
