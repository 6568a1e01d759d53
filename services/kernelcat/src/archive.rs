//! Debian's signed archive, read the way apt reads it: `InRelease` is
//! verified first and is the only thing trusted; every other file (the
//! `Packages` index, the `.deb`) is accepted only with the size and SHA-256
//! the verified text gives for it.
//!
//! The OpenPGP check is `gpgv`, deliberately: it is what apt itself runs
//! (`apt-key`/`sqv` aside, bookworm's apt calls `gpgv` with the archive
//! keyring), it ships with every Debian host as a dependency of apt, and
//! it keeps a second OpenPGP implementation with its own parsing bugs out
//! of this service. We never look at its exit status alone: we read its
//! `--status-fd` lines and accept only a signature that is `GOODSIG` +
//! `VALIDSIG` by a key whose primary fingerprint is pinned here — a good
//! signature by any other key in the keyring (an old, removed or
//! locally added one) is refused. The text we go on with is the signed
//! part gpgv writes out (`--output`), never our own cut of the file, so
//! nothing outside the signature can sneak in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The keyring of the `debian-archive-keyring` package.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Primary fingerprints of the Debian archive signing keys we accept
/// (`gpg --show-keys /usr/share/keyrings/debian-archive-*.gpg`): the
/// automatic archive and security keys and the stable release keys of
/// Debian 11, 12 and 13.
pub const DEBIAN_PINNED_FINGERPRINTS: [&str; 9] = [
    // Debian Archive Automatic Signing Key (11/bullseye)
    "1F89983E0081FDE018F3CC9673A4F27B8DD47936",
    // Debian Security Archive Automatic Signing Key (11/bullseye)
    "AC530D520F2F3269F5E98313A48449044AAD5C5D",
    // Debian Stable Release Key (11/bullseye)
    "A4285295FC7B1A81600062A9605C66F00D6C9793",
    // Debian Archive Automatic Signing Key (12/bookworm)
    "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",
    // Debian Security Archive Automatic Signing Key (12/bookworm)
    "05AB90340C0C5E797F44A8C8254CF3B5AEC0A8F0",
    // Debian Stable Release Key (12/bookworm)
    "4D64FEC119C2029067D6E791F8D2585B8783D481",
    // Debian Archive Automatic Signing Key (13/trixie)
    "04B54C3CDCA79751B16BC6B5225629DF75B188BD",
    // Debian Security Archive Automatic Signing Key (13/trixie)
    "5E04A1E3223A19A20706E20F9904613D4CCE68C6",
    // Debian Stable Release Key (13/trixie)
    "41587F7DB8C774BCCF131416762F67A0B2C39DE4",
];

/// Which keys an `InRelease` may be signed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveTrust {
    /// Keyrings handed to gpgv.
    pub keyrings: Vec<PathBuf>,
    /// Accepted primary key fingerprints (40 hex digits, any case).
    pub fingerprints: Vec<String>,
}

impl Default for ArchiveTrust {
    fn default() -> Self {
        ArchiveTrust {
            keyrings: vec![PathBuf::from(DEBIAN_KEYRING)],
            fingerprints: DEBIAN_PINNED_FINGERPRINTS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// Verifies the clearsigned `inrelease` file with gpgv and returns the
/// signed text and the primary fingerprint of the pinned key that signed it.
/// `work` is an empty scratch dir (gpgv's home and output).
pub fn verify_inrelease(
    url: &str,
    inrelease: &Path,
    work: &Path,
    trust: &ArchiveTrust,
) -> Result<(String, String)> {
    let untrusted = |reason: String| Error::Untrusted {
        url: url.to_owned(),
        reason,
    };
    let home = work.join("gnupg");
    std::fs::create_dir_all(&home).map_err(Error::io("cannot create", &home))?;
    let out = work.join("InRelease.signed");
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new("gpgv");
    cmd.arg("--homedir").arg(&home).arg("--status-fd").arg("1");
    for k in &trust.keyrings {
        if !k.is_file() {
            return Err(untrusted(format!(
                "the keyring {} is missing (install the debian-archive-keyring package)",
                k.display()
            )));
        }
        cmd.arg("--keyring").arg(k);
    }
    cmd.arg("--output").arg(&out).arg("--").arg(inrelease);
    let output = cmd.output().map_err(|e| Error::Tool {
        program: "gpgv".into(),
        message: format!("{e} (install the gpgv package)"),
    })?;
    let status = String::from_utf8_lossy(&output.stdout);
    let fingerprint = accepted_signer(&status, &trust.fingerprints).map_err(untrusted)?;
    let text = std::fs::read_to_string(&out).map_err(|_| {
        untrusted(format!(
            "gpgv wrote no signed text: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })?;
    Ok((text, fingerprint))
}

/// Reads gpgv's status lines: the primary fingerprint of the first good,
/// valid signature by a pinned key. Any bad signature refuses the file.
pub fn accepted_signer(status: &str, pinned: &[String]) -> std::result::Result<String, String> {
    let lines: Vec<&str> = status
        .lines()
        .filter_map(|l| l.strip_prefix("[GNUPG:] "))
        .collect();
    if lines.iter().any(|l| l.starts_with("BADSIG ")) {
        return Err("a signature is BAD: the file was altered after signing".into());
    }
    // One group per signature (gpg starts each with NEWSIG).
    let mut groups: Vec<Vec<&str>> = vec![Vec::new()];
    for l in lines {
        if l.starts_with("NEWSIG") {
            groups.push(Vec::new());
        } else if let Some(g) = groups.last_mut() {
            g.push(l);
        }
    }
    let mut unpinned = Vec::new();
    let mut seen_good = false;
    for g in &groups {
        let good = g.iter().any(|l| l.starts_with("GOODSIG "));
        let Some(valid) = g.iter().find_map(|l| l.strip_prefix("VALIDSIG ")) else {
            continue;
        };
        if !good {
            continue;
        }
        seen_good = true;
        let fields: Vec<&str> = valid.split_whitespace().collect();
        // VALIDSIG <sig fpr> <date> <ts> <expire> <ver> <res> <pk> <hash> <class> <primary fpr>
        let primary = fields.get(9).or(fields.first()).copied().unwrap_or("");
        let primary = primary.to_ascii_uppercase();
        if pinned.iter().any(|p| p.eq_ignore_ascii_case(&primary)) {
            return Ok(primary);
        }
        unpinned.push(primary);
    }
    if seen_good {
        Err(format!(
            "it is signed only by keys that are not pinned Debian archive keys ({}); \
             refusing it even though the signature is good",
            unpinned.join(", ")
        ))
    } else {
        Err("no good signature by a known key (missing, unknown or expired signature)".into())
    }
}

/// One file InRelease lists: size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub sha256: String,
    pub size: u64,
}

/// The verified `InRelease` fields we use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Release {
    pub codename: String,
    pub suite: String,
    pub valid_until: Option<i64>,
    pub acquire_by_hash: bool,
    /// Path (relative to `dists/<suite>/`) → SHA-256 and size.
    pub sha256: BTreeMap<String, Listed>,
}

/// Parses the signed text of an `InRelease`.
pub fn parse_release(text: &str) -> std::result::Result<Release, String> {
    let mut release = Release::default();
    let mut in_sha256 = false;
    for line in text.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if in_sha256 {
                let parts: Vec<&str> = line.split_whitespace().collect();
                if let [sha, size, path] = parts[..] {
                    let size = size
                        .parse()
                        .map_err(|_| format!("bad size in SHA256 line {line:?}"))?;
                    release.sha256.insert(
                        path.to_owned(),
                        Listed {
                            sha256: sha.to_ascii_lowercase(),
                            size,
                        },
                    );
                }
            }
            continue;
        }
        in_sha256 = false;
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Codename" => release.codename = value.to_owned(),
            "Suite" => release.suite = value.to_owned(),
            "Valid-Until" => {
                release.valid_until =
                    Some(parse_date(value).ok_or_else(|| format!("bad Valid-Until {value:?}"))?)
            }
            "Acquire-By-Hash" => release.acquire_by_hash = value.eq_ignore_ascii_case("yes"),
            "SHA256" => in_sha256 = true,
            _ => {}
        }
    }
    if release.sha256.is_empty() {
        return Err("it lists no SHA256 hashes".into());
    }
    Ok(release)
}

/// Checks that a verified release is the one asked for and still valid.
pub fn check_release(url: &str, release: &Release, suite: &str, now: i64) -> Result<()> {
    let untrusted = |reason: String| Error::Untrusted {
        url: url.to_owned(),
        reason,
    };
    if release.codename != suite && release.suite != suite {
        return Err(untrusted(format!(
            "it is for Codename {:?} / Suite {:?}, not {suite:?} (a replayed or misplaced file)",
            release.codename, release.suite
        )));
    }
    if let Some(until) = release.valid_until
        && until < now
    {
        return Err(untrusted(format!(
            "it expired {} (Valid-Until); the mirror is stale or replays an old index",
            format_date(until)
        )));
    }
    Ok(())
}

/// One stanza of a `Packages` index (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stanza {
    pub package: String,
    pub version: String,
    pub architecture: String,
    pub depends: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

/// Parses a `Packages` index, keeping the stanzas `keep` accepts by name.
pub fn parse_packages(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Stanza> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let mut s = Stanza::default();
        for line in para.lines() {
            if line.starts_with(' ') {
                continue;
            }
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "Package" => s.package = v.to_owned(),
                "Version" => s.version = v.to_owned(),
                "Architecture" => s.architecture = v.to_owned(),
                "Depends" => s.depends = v.to_owned(),
                "Filename" => s.filename = v.to_owned(),
                "Size" => s.size = v.parse().unwrap_or(0),
                "SHA256" => s.sha256 = v.to_ascii_lowercase(),
                _ => {}
            }
        }
        if !s.package.is_empty() && keep(&s.package) {
            out.push(s);
        }
    }
    out
}

/// The newest stanza of `package` for `arch`.
pub fn newest<'a>(stanzas: &'a [Stanza], package: &str, arch: &str) -> Option<&'a Stanza> {
    stanzas
        .iter()
        .filter(|s| s.package == package && (s.architecture == arch || s.architecture == "all"))
        .max_by(|a, b| compare_versions(&a.version, &b.version))
}

/// Follows a meta package to the kernel image package it depends on: the
/// first `linux-image-*` in `Depends` (honouring `(= version)`), newest
/// version; a package that depends on no other image is itself the kernel.
pub fn follow_meta<'a>(stanzas: &'a [Stanza], meta: &'a Stanza, arch: &str) -> Option<&'a Stanza> {
    for dep in meta.depends.split(',') {
        for alt in dep.split('|') {
            let alt = alt.trim();
            let (name, constraint) = match alt.split_once('(') {
                Some((n, c)) => (n.trim(), Some(c.trim_end_matches(')').trim())),
                None => (alt, None),
            };
            let name = name.split(':').next().unwrap_or(name);
            if !name.starts_with("linux-image-") {
                continue;
            }
            let exact = constraint.and_then(|c| c.strip_prefix('=')).map(str::trim);
            let found = stanzas
                .iter()
                .filter(|s| s.package == name && s.architecture == arch)
                .filter(|s| exact.is_none_or(|v| s.version == v))
                .max_by(|a, b| compare_versions(&a.version, &b.version));
            if found.is_some() {
                return found;
            }
        }
    }
    if meta.depends.contains("linux-image-") {
        None
    } else {
        Some(meta)
    }
}

/// Debian version order (`dpkg --compare-versions`): epoch, then upstream
/// and revision compared with dpkg's rules (`~` sorts before everything).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) => (e.parse().unwrap_or(0), r),
            None => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_alphabetic() => c as i32,
            Some(c) => c as i32 + 256,
        }
    }
    fn part(mut a: &[u8], mut b: &[u8]) -> std::cmp::Ordering {
        while !a.is_empty() || !b.is_empty() {
            // Non-digit prefix, character by character.
            loop {
                let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
                let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
                if ca.is_none() && cb.is_none() {
                    break;
                }
                let (oa, ob) = (order(ca), order(cb));
                if oa != ob {
                    return oa.cmp(&ob);
                }
                a = &a[1..];
                b = &b[1..];
            }
            let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let na = std::str::from_utf8(&a[..da])
                .ok()
                .and_then(|s| s.parse::<u128>().ok())
                .unwrap_or(0);
            let nb = std::str::from_utf8(&b[..db])
                .ok()
                .and_then(|s| s.parse::<u128>().ok())
                .unwrap_or(0);
            if na != nb {
                return na.cmp(&nb);
            }
            a = &a[da..];
            b = &b[db..];
        }
        std::cmp::Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| part(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| part(ra.as_bytes(), rb.as_bytes()))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parses a Release date (`Sun, 06 Dec 2026 00:53:13 UTC`; the zone is
/// UTC/GMT/`+0000`, as the archive writes it) to Unix seconds.
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.split_once(',').map_or(s, |(_, r)| r).trim();
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [day, month, year, time, zone] = parts[..] else {
        return None;
    };
    if !matches!(zone, "UTC" | "GMT" | "+0000" | "Z") {
        return None;
    }
    let day: i64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_date(unix: i64) -> String {
    let days = unix.div_euclid(86400);
    let secs = unix.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn versions_order_like_dpkg() {
        for (a, b, o) in [
            ("6.12.117-1~deb12u1", "6.12.117-1", Less),
            ("6.12.117-1~deb12u1", "6.12.48-1~deb12u1", Greater),
            ("1:1.0", "2.0", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0a", "1.0", Greater),
            ("1.0", "1.0", Equal),
            ("6.1.158-1", "6.1.158-1+b1", Less),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
        }
    }

    #[test]
    fn dates_round_trip() {
        let t = parse_date("Sun, 06 Dec 2026 00:53:13 UTC").unwrap();
        assert_eq!(format_date(t), "2026-12-06 00:53:13 UTC");
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_date("Thu, 1 Jan 1970 00:00:01 +0000"), Some(1));
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 CET"), None);
    }

    #[test]
    fn status_lines_need_a_pinned_good_signature() {
        let pinned = vec!["AC530D520F2F3269F5E98313A48449044AAD5C5D".to_owned()];
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 54404762BBB6E853 Debian\n\
            [GNUPG:] VALIDSIG ED541312A33F1128F10B1C6C54404762BBB6E853 2026-11-29 1 0 4 0 1 8 01 \
            AC530D520F2F3269F5E98313A48449044AAD5C5D\n";
        assert_eq!(
            accepted_signer(good, &pinned).unwrap(),
            "AC530D520F2F3269F5E98313A48449044AAD5C5D"
        );
        let other = good.replace("AC530D52", "BC530D52");
        let err = accepted_signer(&other, &pinned).unwrap_err();
        assert!(err.contains("not pinned"), "{err}");
        let bad = format!("{good}[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 1 x\n");
        assert!(accepted_signer(&bad, &pinned).unwrap_err().contains("BAD"));
        // VALIDSIG without GOODSIG (e.g. EXPKEYSIG) does not count.
        let expired = good.replace("GOODSIG", "EXPKEYSIG");
        assert!(accepted_signer(&expired, &pinned).is_err());
        assert!(accepted_signer("", &pinned).is_err());
    }

    #[test]
    fn follows_the_meta_package() {
        let text = "Package: linux-image-6.12-cloud-amd64\nVersion: 6.12.117-1~deb12u1\n\
            Architecture: amd64\nDepends: linux-image-6.12.117+deb12-cloud-amd64 (= 6.12.117-1~deb12u1)\n\n\
            Package: linux-image-6.12-cloud-amd64\nVersion: 6.12.48-1~deb12u1\n\
            Architecture: amd64\nDepends: linux-image-6.12.48+deb12-cloud-amd64 (= 6.12.48-1~deb12u1)\n\n\
            Package: linux-image-6.12.117+deb12-cloud-amd64\nVersion: 6.12.117-1~deb12u1\n\
            Architecture: amd64\nFilename: pool/k.deb\nSize: 10\nSHA256: AB\n\n\
            Package: other\nVersion: 1\n";
        let all = parse_packages(text, |p| p.starts_with("linux-image-"));
        assert_eq!(all.len(), 3);
        let meta = newest(&all, "linux-image-6.12-cloud-amd64", "amd64").unwrap();
        assert_eq!(meta.version, "6.12.117-1~deb12u1");
        let k = follow_meta(&all, meta, "amd64").unwrap();
        assert_eq!(k.package, "linux-image-6.12.117+deb12-cloud-amd64");
        assert_eq!((k.size, k.sha256.as_str()), (10, "ab"));
        let old = &all[1];
        assert!(
            follow_meta(&all, old, "amd64").is_none(),
            "its kernel is gone"
        );
        assert_eq!(follow_meta(&all, k, "amd64").unwrap(), k);
    }
}
