//! A local Debian archive made at test time from Debian's real signed
//! files: the host's apt lists give `InRelease` (signed by Debian) and the
//! `Packages` index it lists; `apt-get download` gives the kernel `.deb`
//! the meta package depends on (cached under `target/test-cache/debian/`,
//! so reruns download nothing). Laid out as the archive is:
//!
//! ```text
//! /debian-security/dists/bookworm-security/InRelease
//! /debian-security/dists/bookworm-security/main/binary-amd64/Packages
//! /debian-security/dists/bookworm-security/main/binary-amd64/by-hash/SHA256/<sha>
//! /debian-security/<Filename of the kernel package>
//! ```
//!
//! The real signature verifies against the host's Debian keyring. When the
//! host's copy of `InRelease` has passed its `Valid-Until`, the builder runs
//! `apt-get update` first (and says so). [`ThrowawayKey`] signs tampered
//! copies for the cases Debian's key cannot (an unpinned signer, an expired
//! date).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run;
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

/// apt's lists.
pub const APT_LISTS: &str = "/var/lib/apt/lists";
/// The Debian keyring.
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The archive files, by URL path.
#[derive(Debug, Clone)]
pub struct DebianArchive {
    /// URL path (e.g. `/debian-security/dists/…/InRelease`) → content.
    pub files: BTreeMap<String, Arc<Vec<u8>>>,
    /// `/debian-security`.
    pub root: String,
    /// `bookworm-security`.
    pub suite: String,
    /// The meta package, `linux-image-6.12-cloud-amd64`.
    pub meta_package: String,
    /// The kernel package it depends on.
    pub kernel_package: String,
    /// Its version.
    pub kernel_version: String,
    /// URL path of its `.deb`.
    pub deb_path: String,
    /// The `.deb`.
    pub deb: Arc<Vec<u8>>,
    /// The signed text of `InRelease` (what gpgv outputs).
    pub release_text: String,
    /// The plain `Packages` index.
    pub packages: Arc<Vec<u8>>,
}

impl DebianArchive {
    /// URL path of `dists/<suite>/<rel>`.
    pub fn dists(&self, rel: &str) -> String {
        format!("{}/dists/{}/{rel}", self.root, self.suite)
    }

    /// URL path of the plain Packages index.
    pub fn packages_path(&self) -> String {
        self.dists("main/binary-amd64/Packages")
    }

    /// URL path of the index's by-hash copy.
    pub fn by_hash_path(&self) -> String {
        self.dists(&format!(
            "main/binary-amd64/by-hash/SHA256/{}",
            sha256_hex(&self.packages)
        ))
    }

    /// Writes the tree under `dir` (for a file-serving server or a look).
    pub fn write_to(&self, dir: &Path) {
        for (path, data) in &self.files {
            let p = dir.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &data[..]).unwrap();
        }
    }
}

/// Where downloaded `.deb`s are kept between runs, by file name:
/// `target/test-cache/debian/`.
pub fn deb_cache_dir() -> PathBuf {
    crate::fixtures::test_cache_dir().join("debian")
}

/// SHA-256 (hex).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `date -d` of a Release date, in Unix seconds.
fn release_date(value: &str) -> i64 {
    let out = run(Command::new("date").arg("-d").arg(value).arg("+%s"));
    String::from_utf8_lossy(&out).trim().parse().unwrap()
}

/// The value of a `Field:` of a deb822 paragraph.
pub fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// The signed text of a clearsigned file, verified with the Debian keyring.
fn signed_text(inrelease: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("text");
    run(Command::new("gpgv")
        .arg("--homedir")
        .arg(dir.path())
        .arg("--keyring")
        .arg(KEYRING)
        .arg("--output")
        .arg(&out)
        .arg(inrelease));
    std::fs::read_to_string(out).unwrap()
}

/// The bookworm-security archive with `linux-image-6.12-cloud-amd64` and
/// its kernel package, built once per test binary.
pub fn bookworm_security() -> DebianArchive {
    static ARCHIVE: OnceLock<DebianArchive> = OnceLock::new();
    ARCHIVE
        .get_or_init(|| {
            build(
                "debian-security",
                "bookworm-security",
                "linux-image-6.12-cloud-amd64",
            )
        })
        .clone()
}

/// The bookworm archive (Debian 12 itself, no Valid-Until, a 50 MB index)
/// with `linux-image-cloud-amd64` (6.1) and its kernel package.
pub fn bookworm() -> DebianArchive {
    static ARCHIVE: OnceLock<DebianArchive> = OnceLock::new();
    ARCHIVE
        .get_or_init(|| build("debian", "bookworm", "linux-image-cloud-amd64"))
        .clone()
}

/// One suite as the host's apt lists hold it, checked: the signed
/// `InRelease` (verified with the Debian keyring, kept byte for byte) and the
/// `main/binary-amd64/Packages` index it lists, decompressed.
#[derive(Debug, Clone)]
pub struct HostSuite {
    /// Archive root on the mirror, `debian` or `debian-security`.
    pub archive: String,
    /// `bookworm`, `bookworm-updates`, `bookworm-security`.
    pub suite: String,
    /// `InRelease` as Debian signed it.
    pub inrelease: Vec<u8>,
    /// Its signed text (what gpgv outputs).
    pub release_text: String,
    /// The plain `Packages` index (its SHA-256 is the one `InRelease` lists).
    pub packages: Vec<u8>,
}

impl HostSuite {
    /// URL path of `dists/<suite>/<rel>`.
    pub fn dists(&self, rel: &str) -> String {
        format!("/{}/dists/{}/{rel}", self.archive, self.suite)
    }
}

/// The host's copy of `deb.debian.org/<archive>` `<suite>`, refreshed with
/// `apt-get update` when missing or past its `Valid-Until` (the only network
/// use besides `apt-get download`; call it before entering a namespace).
pub fn host_suite(archive: &str, suite: &str) -> HostSuite {
    crate::require_program("gpgv", "gpgv");
    crate::require_program("lz4", "lz4");
    crate::require_program("apt-get", "apt");
    let lists = Path::new(APT_LISTS);
    let prefix = format!("deb.debian.org_{archive}_dists_{suite}");
    let inrelease = lists.join(format!("{prefix}_InRelease"));
    let index = lists.join(format!("{prefix}_main_binary-amd64_Packages.lz4"));
    let fresh = inrelease.is_file() && index.is_file() && {
        let text = std::fs::read_to_string(&inrelease).unwrap_or_default();
        // A suite without Valid-Until (a stable release) never expires.
        field(&text, "Valid-Until").is_none_or(|v| release_date(v) > unix_now() + 3600)
    };
    if !fresh {
        eprintln!(
            "debian_archive: the host's {suite} lists are missing or expired; running apt-get update"
        );
        run(Command::new("apt-get").arg("update"));
    }
    let inrelease_bytes = std::fs::read(&inrelease).expect("read InRelease from apt lists");
    let release_text = signed_text(&inrelease);
    let packages = run(Command::new("lz4").arg("-dc").arg(&index));
    let listed = release_text
        .lines()
        .find(|l| l.trim_end().ends_with(" main/binary-amd64/Packages") && l.trim().len() > 70)
        .expect("InRelease lists main/binary-amd64/Packages");
    assert!(
        listed.contains(&sha256_hex(&packages)),
        "apt's {suite} Packages does not match its InRelease; run apt-get update"
    );
    HostSuite {
        archive: archive.into(),
        suite: suite.into(),
        inrelease: inrelease_bytes,
        release_text,
        packages,
    }
}

fn build(archive: &str, suite: &str, meta: &str) -> DebianArchive {
    let HostSuite {
        inrelease: inrelease_bytes,
        release_text,
        packages,
        ..
    } = host_suite(archive, suite);
    let text = String::from_utf8(packages.clone()).unwrap();
    let stanza = |pkg: &str, version: Option<&str>| -> String {
        text.split("\n\n")
            .filter(|p| field(p, "Package") == Some(pkg))
            .filter(|p| version.is_none_or(|v| field(p, "Version") == Some(v)))
            .max_by(|a, b| {
                let (va, vb) = (field(a, "Version").unwrap(), field(b, "Version").unwrap());
                // Debian's order, from dpkg itself.
                let gt = Command::new("dpkg")
                    .args(["--compare-versions", va, "gt", vb])
                    .status()
                    .is_ok_and(|s| s.success());
                if gt {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Less
                }
            })
            .unwrap_or_else(|| panic!("{pkg} is not in {suite}"))
            .to_owned()
    };
    let meta_stanza = stanza(meta, None);
    let depends = field(&meta_stanza, "Depends").unwrap();
    let (kernel_package, rest) = depends
        .split_once(" (= ")
        .expect("Depends: pkg (= version)");
    let kernel_version = rest.trim_end_matches(')').to_owned();
    let kernel_stanza = stanza(kernel_package, Some(&kernel_version));
    let filename = field(&kernel_stanza, "Filename").unwrap();
    let sha = field(&kernel_stanza, "SHA256").unwrap();
    let cache = deb_cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    let deb_file = cache.join(filename.rsplit('/').next().unwrap());
    let cached_ok = std::fs::read(&deb_file).is_ok_and(|d| sha256_hex(&d) == sha);
    if !cached_ok {
        let _ = std::fs::remove_file(&deb_file);
        run(Command::new("apt-get")
            .arg("download")
            .arg(format!("{kernel_package}={kernel_version}"))
            .current_dir(&cache));
    }
    let deb = std::fs::read(&deb_file).expect("the downloaded .deb");
    assert_eq!(sha256_hex(&deb), sha, "apt-get download gave another .deb");
    let root = format!("/{archive}");
    let suite = suite.to_owned();
    let packages = Arc::new(packages);
    let deb = Arc::new(deb);
    let mut archive = DebianArchive {
        files: BTreeMap::new(),
        root: root.clone(),
        suite,
        meta_package: meta.into(),
        kernel_package: kernel_package.into(),
        kernel_version,
        deb_path: format!("{root}/{filename}"),
        deb: deb.clone(),
        release_text,
        packages: packages.clone(),
    };
    let files = [
        (archive.dists("InRelease"), Arc::new(inrelease_bytes)),
        (archive.packages_path(), packages.clone()),
        (archive.by_hash_path(), packages),
        (archive.deb_path.clone(), deb),
    ];
    archive.files = files.into_iter().collect();
    archive
}

/// A throwaway OpenPGP key (its own GNUPGHOME) for signing tampered
/// `InRelease` copies; its public keyring is a file gpgv can use.
pub struct ThrowawayKey {
    home: tempfile::TempDir,
    /// The exported public key.
    pub keyring: PathBuf,
    /// Its primary fingerprint (40 hex digits, uppercase).
    pub fingerprint: String,
}

impl ThrowawayKey {
    /// Generates an ed25519 signing key.
    pub fn new() -> ThrowawayKey {
        crate::require_program("gpg", "gnupg");
        let home = tempfile::tempdir().unwrap();
        let gpg = || {
            let mut c = Command::new("gpg");
            c.arg("--homedir")
                .arg(home.path())
                .arg("--batch")
                .arg("--pinentry-mode")
                .arg("loopback")
                .arg("--passphrase")
                .arg("");
            c
        };
        run(gpg()
            .arg("--quick-gen-key")
            .arg("banger test archive <test@banger.invalid>")
            .arg("ed25519")
            .arg("sign")
            .arg("never"));
        let colons = String::from_utf8(run(gpg().arg("--with-colons").arg("--list-keys"))).unwrap();
        let fingerprint = colons
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .expect("a fingerprint")
            .to_owned();
        let keyring = home.path().join("pub.gpg");
        let key = run(gpg().arg("--export").arg(&fingerprint));
        std::fs::write(&keyring, key).unwrap();
        ThrowawayKey {
            home,
            keyring,
            fingerprint,
        }
    }

    /// `text` clearsigned by this key.
    pub fn clearsign(&self, text: &str) -> Vec<u8> {
        let input = self.home.path().join("in.txt");
        let output = self.home.path().join("in.txt.asc");
        std::fs::write(&input, text).unwrap();
        let _ = std::fs::remove_file(&output);
        run(Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .arg("--batch")
            .arg("--pinentry-mode")
            .arg("loopback")
            .arg("--passphrase")
            .arg("")
            .arg("--local-user")
            .arg(&self.fingerprint)
            .arg("--digest-algo")
            .arg("SHA256")
            .arg("--clearsign")
            .arg(&input));
        std::fs::read(output).unwrap()
    }
}

impl Default for ThrowawayKey {
    fn default() -> Self {
        Self::new()
    }
}

/// `text` with the value of `name:` replaced (the field must exist).
pub fn replace_field(text: &str, name: &str, value: &str) -> String {
    let prefix = format!("{name}:");
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with(&prefix) {
                found = true;
                format!("{name}: {value}")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(found, "no {name}: field");
    out.join("\n") + "\n"
}
