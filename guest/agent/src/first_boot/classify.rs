//! Reading a failed package manager's output: why it failed
//! ([`FailureCause`]) and a few readable lines for the user (no progress
//! bars, no escape sequences). Also apt's `APT::Status-Fd` progress lines.

use banger_proto::guest::FailureCause;

/// Output patterns per cause, checked in this order: a full disk makes
/// downloads fail too, and a DNS failure also looks like "no connection".
const PATTERNS: &[(FailureCause, &[&str])] = &[
    (
        FailureCause::DiskFull,
        &[
            "no space left on device",
            "you don't have enough free space",
            "disk quota exceeded",
            "not enough free space",
        ],
    ),
    (
        FailureCause::Dns,
        &[
            "temporary failure resolving",
            "could not resolve",
            "temporary failure in name resolution",
            "name or service not known",
            "name does not resolve",
            "bad address '",
            "no address associated with hostname",
        ],
    ),
    (
        FailureCause::Network,
        &[
            "connection refused",
            "connection timed out",
            "timed out",
            "no route to host",
            "network is unreachable",
            "could not connect",
            "failed to connect",
            "connection reset",
            "unable to connect",
            "couldn't connect",
        ],
    ),
    (
        FailureCause::Mirror,
        &[
            "404  not found",
            "404 not found",
            "status code: 404",
            "500  internal server error",
            "internal server error",
            "502  bad gateway",
            "503  service unavailable",
            "bad gateway",
            "service unavailable",
            "the requested url returned error",
            "does not have a release file",
            "is not signed",
            "no_pubkey",
            "the following signatures",
            "signature verification",
            "signatures were invalid",
            "untrusted signature",
            "bad signature",
            "hash sum mismatch",
            "file has unexpected size",
            "is not valid yet",
            "is expired",
            "clearsigned file isn't valid",
            "failed retrieving file",
            "failed to download metadata",
            "cannot find a valid baseurl",
        ],
    ),
    (
        FailureCause::MissingPackage,
        &[
            "unable to locate package",
            "has no installation candidate",
            "no match for argument",
            "unable to find a match",
            "target not found",
            "unable to select packages",
            "not found in package names",
            "no provider of",
        ],
    ),
    (
        FailureCause::WrongArchitecture,
        &["exec format error", "wrong architecture"],
    ),
];

/// Removes escape sequences and control characters, keeps what a
/// carriage return left visible (the text after the last `\r`), trims.
pub fn clean_line(raw: &str) -> String {
    let visible = raw
        .trim_end_matches(['\r', '\n'])
        .rsplit('\r')
        .next()
        .unwrap_or("");
    let mut out = String::with_capacity(visible.len());
    let mut chars = visible.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte; other ESC x: two characters.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' {
            out.push(' ');
        } else if !c.is_control() {
            out.push(c);
        }
    }
    let out = out.trim();
    match out.char_indices().nth(MAX_LINE) {
        Some((i, _)) => format!("{}…", &out[..i]),
        None => out.to_owned(),
    }
}

/// Longest excerpt line, in characters.
const MAX_LINE: usize = 240;
/// Excerpt lines.
const MAX_EXCERPT: usize = 8;

fn cause_of(line: &str) -> Option<FailureCause> {
    let lower = line.to_ascii_lowercase();
    PATTERNS
        .iter()
        .find(|(_, pats)| pats.iter().any(|p| lower.contains(p)))
        .map(|(c, _)| *c)
}

/// The cause of a failure with this output: the first cause in
/// [`PATTERNS`] order any line shows.
pub fn classify<S: AsRef<str>>(lines: &[S]) -> FailureCause {
    let found: Vec<FailureCause> = lines.iter().filter_map(|l| cause_of(l.as_ref())).collect();
    PATTERNS
        .iter()
        .map(|(c, _)| *c)
        .find(|c| found.contains(c))
        .unwrap_or(FailureCause::Other)
}

fn is_error_line(line: &str) -> bool {
    let starts = [
        "E:", "W:", "Err:", "Err ", "error:", "Error:", "ERROR:", "dpkg:", "fatal", "Failed",
    ];
    starts.iter().any(|s| line.starts_with(s)) || cause_of(line).is_some()
}

/// Up to 8 readable lines: those that say what went wrong (apt's `E:` /
/// `W:` / `Err:`, lines matching a cause), else the last lines; cleaned,
/// deduplicated, progress lines dropped.
pub fn excerpt<S: AsRef<str>>(lines: &[S]) -> Vec<String> {
    let cleaned: Vec<String> = lines
        .iter()
        .map(|l| clean_line(l.as_ref()))
        .filter(|l| !l.is_empty() && parse_status(l).is_none())
        .collect();
    let mut picked: Vec<String> = Vec::new();
    for l in cleaned.iter().filter(|l| is_error_line(l)) {
        if !picked.contains(l) {
            picked.push(l.clone());
        }
    }
    if picked.is_empty() {
        picked = cleaned;
    }
    let skip = picked.len().saturating_sub(MAX_EXCERPT);
    picked.split_off(skip)
}

/// The one excerpt line that best says why: the first showing `cause`,
/// else the last.
pub fn summary(excerpt: &[String], cause: FailureCause) -> String {
    excerpt
        .iter()
        .find(|l| cause_of(l) == Some(cause))
        .or(excerpt.last())
        .cloned()
        .unwrap_or_else(|| "no output".into())
}

/// One `APT::Status-Fd` line: `dlstatus:ID:PERCENT:TEXT` while
/// downloading, `pmstatus:PACKAGE:PERCENT:TEXT` while dpkg works.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// `download`, `unpack` or `configure`.
    pub step: &'static str,
    pub percent: f64,
    pub detail: String,
}

pub fn parse_status(line: &str) -> Option<Status> {
    let (kind, rest) = line.split_once(':')?;
    if kind != "dlstatus" && kind != "pmstatus" {
        return None;
    }
    let mut parts = rest.splitn(3, ':');
    let item = parts.next()?;
    let percent: f64 = parts.next()?.trim().parse().ok()?;
    let text = parts.next().unwrap_or("").trim();
    // dpkg alternates "Preparing/Unpacking/Installing X" and, later,
    // "Preparing to configure/Configuring/Installed X".
    let configure = [
        "Preparing to configure",
        "Configuring",
        "Setting up",
        "Installed",
        "Running",
        "Triggers",
    ];
    let step = if kind == "dlstatus" {
        "download"
    } else if configure.iter().any(|p| text.starts_with(p)) {
        "configure"
    } else {
        "unpack"
    };
    let detail = if kind == "pmstatus" {
        item.to_owned()
    } else {
        text.to_owned()
    };
    Some(Status {
        step,
        percent: percent.clamp(0.0, 100.0),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(text: &str) -> FailureCause {
        classify(&text.lines().collect::<Vec<_>>())
    }

    // Samples as apt 2.6 (bookworm) prints them with -qq.
    const DNS: &str = "\
W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'
W: Failed to fetch http://deb.debian.org/debian-security/dists/bookworm-security/InRelease  Temporary failure resolving 'deb.debian.org'
E: Some index files failed to download. They have been ignored, or old ones used instead.";
    const REFUSED: &str = "\
Err:1 http://172.30.0.1:8080/debian bookworm InRelease
  Could not connect to 172.30.0.1:8080 (172.30.0.1). - connect (111: Connection refused)
E: Failed to fetch http://172.30.0.1:8080/debian/dists/bookworm/InRelease  Could not connect to 172.30.0.1:8080 (172.30.0.1). - connect (111: Connection refused)";
    const NO_ROUTE: &str = "E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Could not connect to deb.debian.org:80 (151.101.2.132). - connect (113: No route to host)";
    const TIMEOUT: &str = "E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Could not connect to deb.debian.org:80 (151.101.2.132), connection timed out";
    const NOT_FOUND: &str = "\
Err:2 http://172.30.0.1/debian bookworm Release
  404  Not Found [IP: 172.30.0.1 80]
E: The repository 'http://172.30.0.1/debian bookworm Release' does not have a Release file.";
    const SERVER_ERROR: &str = "E: Failed to fetch http://172.30.0.1/debian/dists/bookworm/InRelease  500  Internal Server Error [IP: 172.30.0.1 80]";
    const UNSIGNED: &str = "\
W: GPG error: http://172.30.0.1/debian bookworm InRelease: The following signatures couldn't be verified because the public key is not available: NO_PUBKEY 6ED0E7B82643E131
E: The repository 'http://172.30.0.1/debian bookworm InRelease' is not signed.";
    const MISSING: &str = "\
E: Unable to locate package openssh-server";
    const NO_CANDIDATE: &str = "\
Package openssh-server is not available, but is referred to by another package.
E: Package 'openssh-server' has no installation candidate";
    const DISK_FULL: &str = "\
dpkg: error processing archive /var/cache/apt/archives/libsystemd-shared_252.38-1~deb12u1_amd64.deb (--unpack):
 cannot copy extracted data for './usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so' to '/usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so.dpkg-new': failed to write (No space left on device)
Errors were encountered while processing:
 /var/cache/apt/archives/libsystemd-shared_252.38-1~deb12u1_amd64.deb
E: Sub-process /usr/bin/dpkg returned an error code (1)";
    const DOWNLOAD_FULL: &str = "E: You don't have enough free space in /var/cache/apt/archives/.";

    #[test]
    fn apt_messages_map_to_their_causes() {
        for (text, want) in [
            (DNS, FailureCause::Dns),
            (REFUSED, FailureCause::Network),
            (NO_ROUTE, FailureCause::Network),
            (TIMEOUT, FailureCause::Network),
            (NOT_FOUND, FailureCause::Mirror),
            (SERVER_ERROR, FailureCause::Mirror),
            (UNSIGNED, FailureCause::Mirror),
            (MISSING, FailureCause::MissingPackage),
            (NO_CANDIDATE, FailureCause::MissingPackage),
            (DISK_FULL, FailureCause::DiskFull),
            (DOWNLOAD_FULL, FailureCause::DiskFull),
            (
                "E: Sub-process /usr/bin/dpkg returned an error code (1)",
                FailureCause::Other,
            ),
            ("", FailureCause::Other),
        ] {
            assert_eq!(cause(text), want, "{text}");
        }
    }

    #[test]
    fn other_managers_too() {
        for (text, want) in [
            (
                "Curl error (6): Couldn't resolve host name for https://mirrors.fedoraproject.org/metalink?repo=fedora-40 [Could not resolve host: mirrors.fedoraproject.org]",
                FailureCause::Dns,
            ),
            (
                "Error: Unable to find a match: openssh-servr",
                FailureCause::MissingPackage,
            ),
            (
                "WARNING: updating and opening https://dl-cdn.alpinelinux.org/alpine/v3.20/main: DNS lookup error\nfetch https://dl-cdn.alpinelinux.org/alpine/v3.20/main/x86_64/APKINDEX.tar.gz: bad address 'dl-cdn.alpinelinux.org'",
                FailureCause::Dns,
            ),
            (
                "ERROR: unable to select packages:\n  opensh (no such package):",
                FailureCause::MissingPackage,
            ),
            (
                "error: target not found: opensh",
                FailureCause::MissingPackage,
            ),
            (
                "error: failed retrieving file 'core.db' from geo.mirror.pkgbuild.com : The requested URL returned error: 404",
                FailureCause::Mirror,
            ),
            (
                "sh: /usr/bin/apt-get: cannot execute binary file: Exec format error",
                FailureCause::WrongArchitecture,
            ),
        ] {
            assert_eq!(cause(text), want, "{text}");
        }
    }

    #[test]
    fn a_dns_failure_outranks_the_missing_package_it_causes() {
        // What the shell first boot misreported: update "succeeded" on DNS
        // failure and install blamed the package.
        let both = format!("{DNS}\n{MISSING}");
        assert_eq!(cause(&both), FailureCause::Dns);
    }

    #[test]
    fn excerpts_are_readable() {
        let noisy = "Reading package lists... 0%\rReading package lists... 100%\rReading package lists... Done\n\
                     \u{1b}[1;31mE: \u{1b}[0mUnable to locate package openssh-server\n\
                     pmstatus:dpkg-exec:0.0:Running dpkg\n\
                     E: Unable to locate package openssh-server\n";
        let dns: Vec<String> = excerpt(&DNS.lines().collect::<Vec<_>>());
        assert!(
            summary(&dns, FailureCause::Dns).contains("Temporary failure resolving"),
            "{dns:?}"
        );
        assert_eq!(summary(&[], FailureCause::Other), "no output");
        let lines: Vec<&str> = noisy.lines().collect();
        assert_eq!(
            excerpt(&lines),
            ["E: Unable to locate package openssh-server"]
        );
        // No error lines: the last ones, without the \r bars.
        let plain = ["a\r", "Progress 10%\rProgress 100%\rdone", ""];
        assert_eq!(excerpt(&plain), ["a", "done"]);
        let many: Vec<String> = (0..30).map(|i| format!("E: error {i}")).collect();
        let ex = excerpt(&many);
        assert_eq!(ex.len(), 8);
        assert_eq!(ex[7], "E: error 29");
        let long = "E: ".to_owned() + &"x".repeat(1000);
        assert!(excerpt(&[long])[0].chars().count() <= MAX_LINE + 1);
    }

    #[test]
    fn status_lines_become_progress() {
        assert_eq!(
            parse_status("dlstatus:3:12.5:Retrieving file 3 of 40"),
            Some(Status {
                step: "download",
                percent: 12.5,
                detail: "Retrieving file 3 of 40".into()
            })
        );
        let s = parse_status("pmstatus:libc6:40.0:Unpacking libc6 (amd64)").unwrap();
        assert_eq!((s.step, s.detail.as_str()), ("unpack", "libc6"));
        let s = parse_status("pmstatus:systemd:90:Setting up systemd (amd64)").unwrap();
        assert_eq!(s.step, "configure");
        let s = parse_status("pmstatus:libfido2-1:41:Installing libfido2-1 (amd64)").unwrap();
        assert_eq!(s.step, "unpack");
        let s = parse_status("pmstatus:ssh:80:Preparing to configure ssh (amd64)").unwrap();
        assert_eq!(s.step, "configure");
        assert_eq!(parse_status("Get:1 http://x bookworm/main"), None);
        assert_eq!(parse_status("pmstatus:x:notanumber:y"), None);
        assert_eq!(parse_status("dlstatus:1:250:x").unwrap().percent, 100.0);
    }
}
