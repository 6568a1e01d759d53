//! A Debian mirror for a guest's own apt: every suite an official
//! `debian:bookworm` image lists (`bookworm`, `bookworm-updates`,
//! `bookworm-security`), with Debian's signed `InRelease` byte for byte and
//! the `Packages` index it lists (from the host's apt lists, see
//! [`debian_archive::host_suite`]), and the `.deb`s apt needs to install the
//! requested packages on top of a given image — computed by the host's apt
//! against that image's own apt configuration and dpkg status, fetched with
//! `apt-get download` (cached in [`debian_archive::deb_cache_dir`]) and
//! placed at the `Filename:` of every suite that lists them. Laid out as
//! deb.debian.org is, so a [`crate::serve::FileServer`] on port 80 of
//! whatever address DNS gives for `deb.debian.org` is the mirror:
//!
//! ```text
//! debian/dists/bookworm/InRelease
//! debian/dists/bookworm/main/binary-amd64/Packages{,.xz}
//! debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/<sha of each>
//! debian/dists/bookworm-updates/…
//! debian-security/dists/bookworm-security/…
//! debian/pool/main/…/<pkg>_<ver>_<arch>.deb
//! ```
//!
//! Each suite serves the plain `Packages` (from the host's lists) and
//! Debian's own `Packages.xz` (the form apt asks for first, so a guest's
//! `apt-get update` fetches exactly what it would from deb.debian.org, with
//! no 404 on the way), both also by hash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debian_archive::{self, DebianArchive, HostSuite, field, sha256_hex};

/// `(archive, suite)` of every suite the official bookworm image's
/// `debian.sources` lists.
pub const BOOKWORM_SUITES: [(&str, &str); 3] = [
    ("debian", "bookworm"),
    ("debian", "bookworm-updates"),
    ("debian-security", "bookworm-security"),
];

/// The host names the official image's sources use (plus the historical
/// security host), which DNS in a test namespace must answer.
pub const MIRROR_HOSTS: [&str; 2] = ["deb.debian.org", "security.debian.org"];

/// One package apt installs, and where the mirror serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredDeb {
    /// Package name.
    pub package: String,
    /// Version apt chose (its candidate across all suites).
    pub version: String,
    /// URL paths of the `.deb`, one per suite listing this version.
    pub paths: Vec<String>,
}

/// The mirror tree on disk (removed on drop).
#[derive(Debug)]
pub struct GuestMirror {
    dir: tempfile::TempDir,
    /// What `apt-get install` will fetch, in apt's order.
    pub debs: Vec<MirroredDeb>,
    /// The suites served.
    pub suites: Vec<String>,
    /// The packages asked for.
    pub requested: Vec<String>,
}

impl GuestMirror {
    /// The tree's root: serve it as the web root of `deb.debian.org`.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Adds an archive's files (e.g. [`debian_archive::bookworm_security`]
    /// with the kernel `.deb`, for kernelcat) to the same tree, so one file
    /// server is both the guest's mirror and kernelcat's. Its `InRelease`
    /// and `Packages` are the host's too, so they agree with the ones here.
    pub fn add_archive(&self, archive: &DebianArchive) {
        for (path, data) in &archive.files {
            let dest = self.dir.path().join(path.trim_start_matches('/'));
            if let Ok(existing) = std::fs::read(&dest) {
                assert!(
                    existing == data[..],
                    "{path}: the archive and the mirror disagree (the host's lists changed between the two builds?)"
                );
                continue;
            }
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(&dest, &data[..]).unwrap();
        }
    }
}

/// Builds the mirror for installing `packages` (`--no-install-recommends`)
/// on the image tree `image_root`, with apt reading that image's
/// `/etc/apt` (sources, settings, keyrings) and `/var/lib/dpkg/status`, and
/// the host's lists. Needs the Debian mirror when a `.deb` is not cached:
/// call it before entering a namespace.
pub fn guest_mirror(image_root: &Path, packages: &[&str]) -> GuestMirror {
    let suites: Vec<HostSuite> = BOOKWORM_SUITES
        .iter()
        .map(|(archive, suite)| debian_archive::host_suite(archive, suite))
        .collect();
    let work = tempfile::tempdir().expect("temp dir for apt's state");
    let apt_config = image_apt_config(image_root, work.path());
    let plan = String::from_utf8(crate::run(
        Command::new("apt-get")
            .env("APT_CONFIG", &apt_config)
            .args(["install", "-s", "--no-install-recommends"])
            .args(packages),
    ))
    .unwrap();
    let installs = parse_simulation(&plan);
    assert!(
        !installs.is_empty(),
        "apt would install nothing for {packages:?} on {}: {plan}",
        image_root.display()
    );

    // Where each (package, version) is listed: suite index → stanza fields.
    let indexes: Vec<HashMap<(String, String), (String, String)>> =
        suites.iter().map(|s| index(&s.packages)).collect();
    let cache = debian_archive::deb_cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    // (cache file, sha256) per install; download what is not cached yet.
    let mut wanted = Vec::new();
    for (package, version) in &installs {
        let (filename, sha) = indexes
            .iter()
            .find_map(|i| i.get(&(package.clone(), version.clone())))
            .unwrap_or_else(|| {
                panic!("{package} {version}: apt chose a version no served suite lists")
            });
        let file = cache.join(filename.rsplit('/').next().unwrap());
        wanted.push((file, sha.clone(), format!("{package}={version}")));
    }
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(file, sha, _)| !std::fs::read(file).is_ok_and(|d| sha256_hex(&d) == *sha))
        .map(|(_, _, spec)| spec.as_str())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "debian_mirror: downloading {} .debs into {}",
            missing.len(),
            cache.display()
        );
        crate::run(
            Command::new("apt-get")
                .env("APT_CONFIG", &apt_config)
                .arg("download")
                .args(&missing)
                .current_dir(&cache),
        );
        // apt-get download names a file `<pkg>_<epoch%3a…version>_<arch>.deb`;
        // the cache is by pool file name, which has no epoch.
        for ((package, version), (file, _, _)) in installs.iter().zip(&wanted) {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let arch = name.rsplit('_').next().unwrap();
            let downloaded =
                cache.join(format!("{package}_{}_{arch}", version.replace(':', "%3a")));
            if downloaded != *file && downloaded.is_file() {
                std::fs::rename(&downloaded, file).unwrap();
            }
        }
    }

    let dir = tempfile::tempdir().expect("temp dir for the mirror");
    for suite in &suites {
        let inrelease = suite.dists("InRelease");
        write(dir.path(), &inrelease, &suite.inrelease);
        let plain = suite.dists("main/binary-amd64/Packages");
        write(dir.path(), &plain, &suite.packages);
        let by_hash = |sha: &str| suite.dists(&format!("main/binary-amd64/by-hash/SHA256/{sha}"));
        link(dir.path(), &plain, &by_hash(&sha256_hex(&suite.packages)));
        let (xz, xz_sha) = packages_xz(suite);
        let xz_path = suite.dists("main/binary-amd64/Packages.xz");
        place(&xz, &dir.path().join(xz_path.trim_start_matches('/')));
        link(dir.path(), &xz_path, &by_hash(&xz_sha));
    }
    let mut debs = Vec::new();
    for ((package, version), (file, sha, _)) in installs.iter().zip(&wanted) {
        let data = std::fs::read(file)
            .unwrap_or_else(|e| panic!("{}: {e} (apt-get download failed?)", file.display()));
        assert_eq!(
            sha256_hex(&data),
            *sha,
            "{}: apt-get download gave another .deb",
            file.display()
        );
        let mut paths = Vec::new();
        for (suite, index) in suites.iter().zip(&indexes) {
            let Some((filename, listed_sha)) = index.get(&(package.clone(), version.clone()))
            else {
                continue;
            };
            assert_eq!(
                listed_sha, sha,
                "{package} {version} differs between suites"
            );
            let path = format!("/{}/{filename}", suite.archive);
            if !paths.contains(&path) {
                place(file, &dir.path().join(path.trim_start_matches('/')));
                paths.push(path);
            }
        }
        debs.push(MirroredDeb {
            package: package.clone(),
            version: version.clone(),
            paths,
        });
    }
    GuestMirror {
        dir,
        debs,
        suites: suites.iter().map(|s| s.suite.clone()).collect(),
        requested: packages.iter().map(|p| (*p).to_owned()).collect(),
    }
}

/// `(SHA-256, size, path)` of every file the `SHA256:` section of a
/// Release text lists.
pub fn release_sha256(release_text: &str) -> Vec<(String, u64, String)> {
    release_text
        .lines()
        .skip_while(|l| *l != "SHA256:")
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((
                words.next()?.to_owned(),
                words.next()?.parse().ok()?,
                words.next()?.to_owned(),
            ))
        })
        .collect()
}

/// The suite's `Packages.xz` exactly as Debian published it (apt prefers it
/// and the host keeps only a recompressed copy), fetched once with apt's
/// own downloader, which checks the SHA-256 the signed Release lists, and
/// cached by that hash. Returns the cached file and its hash.
fn packages_xz(suite: &HostSuite) -> (PathBuf, String) {
    let (sha, _, _) = release_sha256(&suite.release_text)
        .into_iter()
        .find(|(_, _, path)| path == "main/binary-amd64/Packages.xz")
        .unwrap_or_else(|| panic!("{} lists no main/binary-amd64/Packages.xz", suite.suite));
    let cache = debian_archive::deb_cache_dir().join("indexes");
    std::fs::create_dir_all(&cache).unwrap();
    let file = cache.join(format!("{sha}.xz"));
    if !std::fs::read(&file).is_ok_and(|d| sha256_hex(&d) == sha) {
        crate::require_program("/usr/lib/apt/apt-helper", "apt");
        let partial = cache.join(format!("{sha}.xz.partial-{}", std::process::id()));
        crate::run(
            Command::new("/usr/lib/apt/apt-helper")
                .arg("download-file")
                .arg(format!(
                    "http://deb.debian.org/{}/dists/{}/main/binary-amd64/by-hash/SHA256/{sha}",
                    suite.archive, suite.suite
                ))
                .arg(&partial)
                .arg(format!("SHA256:{sha}")),
        );
        std::fs::rename(&partial, &file).unwrap();
    }
    (file, sha)
}

/// An `APT_CONFIG` file that makes the host's apt see what the image's apt
/// sees: the image's `/etc/apt` (its sources, settings and keyrings) and
/// dpkg status, the host's lists (the same suites), and state and caches
/// in `work`, so nothing of the host's apt state is written.
fn image_apt_config(image_root: &Path, work: &Path) -> PathBuf {
    for sub in ["state", "cache", "log"] {
        std::fs::create_dir_all(work.join(sub)).unwrap();
    }
    let config = format!(
        "Dir::Etc \"{root}/etc/apt/\";\n\
         Dir::State \"{work}/state/\";\n\
         Dir::State::status \"{root}/var/lib/dpkg/status\";\n\
         Dir::State::Lists \"{lists}/\";\n\
         Dir::Cache \"{work}/cache/\";\n\
         Dir::Log \"{work}/log/\";\n\
         APT::Architecture \"amd64\";\n\
         APT::Architectures {{ \"amd64\"; }};\n\
         Debug::NoLocking \"true\";\n",
        root = image_root.display(),
        work = work.display(),
        lists = debian_archive::APT_LISTS,
    );
    let path = work.join("apt.conf");
    std::fs::write(&path, config).unwrap();
    path
}

/// `(package, version)` of every `Inst` line of `apt-get install -s`, e.g.
/// `Inst libssl3 [3.0.1] (3.0.2 Debian-Security:12/oldstable-security [amd64])`.
pub fn parse_simulation(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("Inst ")?;
            let (package, rest) = rest.split_once(' ')?;
            let (_, rest) = rest.split_once('(')?;
            let version = rest.split_whitespace().next()?;
            Some((package.to_owned(), version.to_owned()))
        })
        .collect()
}

/// `(Package, Version)` → `(Filename, SHA256)` of a Packages index.
fn index(packages: &[u8]) -> HashMap<(String, String), (String, String)> {
    let text = std::str::from_utf8(packages).expect("Packages is UTF-8");
    text.split("\n\n")
        .filter_map(|stanza| {
            let get = |name| field(stanza, name).map(str::to_owned);
            Some((
                (get("Package")?, get("Version")?),
                (get("Filename")?, get("SHA256")?),
            ))
        })
        .collect()
}

fn write(root: &Path, url_path: &str, data: &[u8]) {
    let dest = root.join(url_path.trim_start_matches('/'));
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::write(&dest, data).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}

/// A second name in the tree for a file of the tree (a by-hash path): a
/// hard link, so a test that changes one in place changes both.
fn link(root: &Path, from: &str, to: &str) {
    let (from, to) = (
        root.join(from.trim_start_matches('/')),
        root.join(to.trim_start_matches('/')),
    );
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::hard_link(&from, &to)
        .unwrap_or_else(|e| panic!("link {} to {}: {e}", from.display(), to.display()));
}

/// A cached file copied into the tree (a copy, so a test tampering with the
/// tree never touches the cache).
fn place(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_installs_and_upgrades_from_a_simulation() {
        let out = "NOTE: This is only a simulation!\n\
            Inst libssl3 (3.0.22-1~deb12u2 Debian-Security:12/oldstable-security [amd64])\n\
            Inst dmsetup (2:1.02.185-2 Debian:12.15/oldstable [amd64]) []\n\
            Inst libsystemd0 [252.36-1~deb12u1] (252.39-1~deb12u2 Debian:12.15/oldstable [amd64])\n\
            Conf libssl3 (3.0.22-1~deb12u2 Debian-Security:12/oldstable-security [amd64])\n";
        assert_eq!(
            parse_simulation(out),
            vec![
                ("libssl3".into(), "3.0.22-1~deb12u2".into()),
                ("dmsetup".into(), "2:1.02.185-2".into()),
                ("libsystemd0".into(), "252.39-1~deb12u2".into()),
            ]
        );
    }

    #[test]
    fn reads_the_sha256_section_of_a_release() {
        let text = "Codename: bookworm\nMD5Sum:\n 0123 10 main/binary-amd64/Packages\n\
            SHA256:\n aaaa 10 main/binary-amd64/Packages\n bbbb 4 main/binary-amd64/Packages.xz\n\
            Acquire-By-Hash: yes\n";
        assert_eq!(
            release_sha256(text),
            vec![
                ("aaaa".into(), 10, "main/binary-amd64/Packages".into()),
                ("bbbb".into(), 4, "main/binary-amd64/Packages.xz".into()),
            ]
        );
    }

    #[test]
    fn indexes_packages_by_name_and_version() {
        let packages = b"Package: a\nVersion: 1\nFilename: pool/main/a/a_1_all.deb\nSHA256: aa\n\n\
            Package: a\nVersion: 2\nFilename: pool/main/a/a_2_all.deb\nSHA256: bb\n";
        let i = index(packages);
        assert_eq!(
            i.get(&("a".into(), "2".into())),
            Some(&("pool/main/a/a_2_all.deb".into(), "bb".into()))
        );
        assert_eq!(i.len(), 2);
    }
}
