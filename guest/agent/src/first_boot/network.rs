//! Network settings for the package manager (identity.json `network`):
//! the HTTP(S) proxy — apt's own config file, `proxy=` for dnf/yum, the
//! environment for every manager — and mirror URL prefixes rewritten in the
//! family's package source files.
//!
//! Every URL is checked to be one URL (no whitespace, quotes, `;` or control
//! characters) before it is written into a config syntax; a bad one is
//! skipped with a warning. The rewrites are pure functions on the file text
//! (unit-tested); [`apply`] returns what it changed so preparation can put
//! the image's own files back.

use std::collections::BTreeMap;

use banger_proto::guest::GuestNetwork;

use super::distro::{Manager, ProxyConfig, Sources};
use super::error::FirstBootError;
use super::events::Console;
use super::root::Root;

/// apt's proxy drop-in.
pub const APT_PROXY: &str = "/etc/apt/apt.conf.d/80banger-proxy";
/// The most of one source file first boot reads.
const MAX_SOURCE: u64 = 1 << 20;

/// Whether `s` is one URL safe to put in any config syntax.
pub fn valid_url(s: &str) -> bool {
    let scheme_ok = ["http://", "https://", "file:/", "ftp://"]
        .iter()
        .any(|p| s.starts_with(p));
    scheme_ok
        && s.len() <= 2048
        && !s.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | ';' | '\\' | '`')
        })
}

/// A `no_proxy` host entry (apt gets `DIRECT` for it).
fn valid_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
}

/// The proxy settings that passed validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxy {
    pub http: Option<String>,
    pub https: Option<String>,
    pub no_proxy: Vec<String>,
}

impl Proxy {
    pub fn from_settings(net: &GuestNetwork, warn: &mut dyn FnMut(String)) -> Proxy {
        let mut url = |name: &str, v: &Option<String>| match v.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) if valid_url(u) => Some(u.to_owned()),
            Some(u) => {
                warn(format!("{name} {u:?} is not a usable URL; ignored"));
                None
            }
        };
        let http = url("http_proxy", &net.http_proxy);
        let https = url("https_proxy", &net.https_proxy);
        let mut no_proxy = Vec::new();
        for h in net.no_proxy.as_deref().unwrap_or("").split(',') {
            let h = h.trim();
            if h.is_empty() {
                continue;
            }
            if valid_host(h) {
                no_proxy.push(h.to_owned());
            } else {
                warn(format!("no_proxy entry {h:?} is not a host name; ignored"));
            }
        }
        Proxy {
            http,
            https,
            no_proxy,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }

    /// `http_proxy`, `https_proxy`, `no_proxy` (and upper-case) for the
    /// package manager's process.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut both = |k: &str, v: &str| {
            env.push((k.to_owned(), v.to_owned()));
            env.push((k.to_ascii_uppercase(), v.to_owned()));
        };
        if let Some(h) = &self.http {
            both("http_proxy", h);
        }
        if let Some(h) = &self.https {
            both("https_proxy", h);
        }
        if !self.no_proxy.is_empty() {
            both("no_proxy", &self.no_proxy.join(","));
        }
        env
    }

    /// apt.conf text.
    pub fn apt_conf(&self) -> String {
        let mut s = String::from("// Written by banger-first-boot from identity.json.\n");
        if let Some(h) = &self.http {
            s.push_str(&format!("Acquire::http::Proxy \"{h}\";\n"));
        }
        if let Some(h) = &self.https {
            s.push_str(&format!("Acquire::https::Proxy \"{h}\";\n"));
        }
        for host in &self.no_proxy {
            s.push_str(&format!("Acquire::http::Proxy::{host} \"DIRECT\";\n"));
            s.push_str(&format!("Acquire::https::Proxy::{host} \"DIRECT\";\n"));
        }
        s
    }
}

/// Validated mirror prefixes of one family (prefix → replacement).
pub fn mirrors_for(
    net: &GuestNetwork,
    family: &str,
    warn: &mut dyn FnMut(String),
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (from, to) in net.mirrors.get(family).into_iter().flatten() {
        if valid_url(from) && valid_url(to) {
            out.insert(
                from.trim_end_matches('/').to_owned(),
                to.trim_end_matches('/').to_owned(),
            );
        } else {
            warn(format!(
                "mirror {from:?} → {to:?} is not a pair of URLs; ignored"
            ));
        }
    }
    out
}

/// The URL with its longest matching prefix replaced. A prefix matches at
/// a path boundary only: `…/debian` does not rewrite `…/debian-security`.
pub fn rewrite_url(url: &str, mirrors: &BTreeMap<String, String>) -> Option<String> {
    mirrors
        .iter()
        .filter(|(from, _)| {
            url.strip_prefix(from.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|(from, _)| from.len())
        .map(|(from, to)| format!("{to}{}", &url[from.len()..]))
}

/// Rewrites the whitespace-separated tokens of `s` that are URLs with a
/// matching prefix, keeping the spacing.
fn rewrite_tokens(s: &str, mirrors: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        match rewrite_url(token, mirrors) {
            Some(r) => out.push_str(&r),
            None => out.push_str(token),
        }
        token.clear();
    };
    for c in s.chars() {
        if c.is_whitespace() {
            flush(&mut token, &mut out);
            out.push(c);
        } else {
            token.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

fn map_lines(text: &str, mut f: impl FnMut(&str) -> String) -> String {
    let mut out: String = text
        .split_inclusive('\n')
        .map(|l| {
            let (body, nl) = match l.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (l, ""),
            };
            f(body) + nl
        })
        .collect();
    if text.is_empty() {
        out.clear();
    }
    out
}

/// One-line apt sources: `deb [options] URI suite components`.
pub fn rewrite_apt_list(text: &str, mirrors: &BTreeMap<String, String>) -> String {
    map_lines(text, |line| {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed
            .strip_prefix("deb-src")
            .or_else(|| trimmed.strip_prefix("deb"))
            .filter(|r| r.starts_with([' ', '\t']))
        else {
            return line.to_owned();
        };
        let head_len = line.len() - rest.len();
        let after_ws = rest.trim_start();
        let mut uri_at = head_len + (rest.len() - after_ws.len());
        if after_ws.starts_with('[') {
            let Some(close) = after_ws.find(']') else {
                return line.to_owned();
            };
            let after_opts = &after_ws[close + 1..];
            uri_at += close + 1 + (after_opts.len() - after_opts.trim_start().len());
        }
        let tail = &line[uri_at..];
        let uri_len = tail.find([' ', '\t']).unwrap_or(tail.len());
        match rewrite_url(&tail[..uri_len], mirrors) {
            Some(r) => format!("{}{r}{}", &line[..uri_at], &tail[uri_len..]),
            None => line.to_owned(),
        }
    })
}

/// deb822 sources: the values of `URIs:` (and its continuation lines).
pub fn rewrite_deb822(text: &str, mirrors: &BTreeMap<String, String>) -> String {
    let mut in_uris = false;
    map_lines(text, |line| {
        if line.starts_with([' ', '\t']) && !line.trim().is_empty() {
            return if in_uris {
                rewrite_tokens(line, mirrors)
            } else {
                line.to_owned()
            };
        }
        in_uris = false;
        match line.split_once(':') {
            Some((key, value)) if key.trim().eq_ignore_ascii_case("uris") => {
                in_uris = true;
                format!("{key}:{}", rewrite_tokens(value, mirrors))
            }
            _ => line.to_owned(),
        }
    })
}

/// `/etc/apk/repositories`: `[@tag ]URL` a line.
pub fn rewrite_apk(text: &str, mirrors: &BTreeMap<String, String>) -> String {
    map_lines(text, |line| {
        if line.trim_start().starts_with('#') {
            line.to_owned()
        } else {
            rewrite_tokens(line, mirrors)
        }
    })
}

/// pacman's mirrorlist: active `Server = URL` lines.
pub fn rewrite_pacman(text: &str, mirrors: &BTreeMap<String, String>) -> String {
    map_lines(text, |line| match line.split_once('=') {
        Some((key, value)) if key.trim() == "Server" => {
            format!("{key}={}", rewrite_tokens(value, mirrors))
        }
        _ => line.to_owned(),
    })
}

/// dnf/yum/zypper `.repo` files: per section, a `baseurl=` (also a
/// commented-out `#baseurl=`, as Fedora ships them) with a matching prefix
/// is rewritten and made active, and that section's `metalink=` /
/// `mirrorlist=` are commented out (they would override it).
pub fn rewrite_repo(text: &str, mirrors: &BTreeMap<String, String>) -> String {
    // Two passes: find the sections whose baseurl matches, then rewrite.
    let key_value = |line: &str| -> Option<(String, String, bool)> {
        let t = line.trim_start();
        let (commented, t) = match t.strip_prefix('#') {
            Some(r) => (true, r.trim_start()),
            None => (false, t),
        };
        let (k, v) = t.split_once('=')?;
        Some((
            k.trim().to_ascii_lowercase(),
            v.trim().to_owned(),
            commented,
        ))
    };
    let mut section = 0usize;
    let mut hit_sections = std::collections::BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            section += 1;
        } else if let Some((k, v, _)) = key_value(line)
            && k == "baseurl"
            && v.split_whitespace()
                .any(|u| rewrite_url(u, mirrors).is_some())
        {
            hit_sections.insert(section);
        }
    }
    let mut section = 0usize;
    let mut in_baseurl = false;
    map_lines(text, |line| {
        if line.trim_start().starts_with('[') {
            section += 1;
            in_baseurl = false;
            return line.to_owned();
        }
        if !hit_sections.contains(&section) {
            return line.to_owned();
        }
        if in_baseurl && line.starts_with([' ', '\t']) && !line.trim().is_empty() {
            return rewrite_tokens(line, mirrors);
        }
        in_baseurl = false;
        match key_value(line) {
            Some((k, v, _)) if k == "baseurl" => {
                if v.split_whitespace()
                    .any(|u| rewrite_url(u, mirrors).is_some())
                {
                    in_baseurl = true;
                    format!("baseurl={}", rewrite_tokens(&v, mirrors))
                } else {
                    line.to_owned()
                }
            }
            Some((k, _, false)) if k == "metalink" || k == "mirrorlist" => format!("#{line}"),
            _ => line.to_owned(),
        }
    })
}

/// `proxy=VALUE` in the `[main]` section (replaced, or added after `[main]`,
/// or a `[main]` section added).
pub fn set_main_proxy(text: &str, proxy: &str) -> String {
    let mut out = Vec::new();
    let mut in_main = false;
    let mut done = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if in_main && !done {
                out.push(format!("proxy={proxy}"));
                done = true;
            }
            in_main = t == "[main]";
            out.push(line.to_owned());
            continue;
        }
        if in_main && t.split_once('=').is_some_and(|(k, _)| k.trim() == "proxy") {
            if !done {
                out.push(format!("proxy={proxy}"));
                done = true;
            }
            continue;
        }
        out.push(line.to_owned());
    }
    if !done {
        if in_main {
            out.push(format!("proxy={proxy}"));
        } else {
            out.insert(0, format!("proxy={proxy}"));
            out.insert(0, "[main]".into());
        }
    }
    out.join("\n") + "\n"
}

/// Files as they were before [`apply`] (`None`: did not exist).
#[derive(Debug, Default)]
pub struct Restore {
    files: Vec<(String, Option<Vec<u8>>)>,
}

impl Restore {
    /// Puts every changed file back.
    pub fn undo(self, root: &Root, console: &Console) {
        for (path, original) in self.files.into_iter().rev() {
            let done = match original {
                Some(data) => root.write(&path, &data, 0o644),
                None => root.remove(&path),
            };
            if let Err(e) = done {
                console.warn(format!("cannot restore {path}: {e}"));
            }
        }
    }
}

fn change(
    root: &Root,
    restore: &mut Restore,
    path: &str,
    rewrite: impl FnOnce(Option<&str>) -> Option<String>,
    console: &Console,
) -> Result<(), FirstBootError> {
    let original = match root.read_capped(path, MAX_SOURCE) {
        Ok(o) => o,
        Err(e) => {
            console.warn(format!("{e}; left as is"));
            return Ok(());
        }
    };
    let text = original.as_deref().map(String::from_utf8_lossy);
    let Some(new) = rewrite(text.as_deref()) else {
        return Ok(());
    };
    if text.as_deref() == Some(new.as_str()) {
        return Ok(());
    }
    root.write(path, new.as_bytes(), 0o644)?;
    console.log(format!("network settings: wrote {path}"));
    restore.files.push((path.to_owned(), original));
    Ok(())
}

/// One of the rewrite functions above.
type Rewrite = fn(&str, &BTreeMap<String, String>) -> String;

/// Applies the proxy and mirror settings for `manager`; returns how to undo them.
pub fn apply(
    root: &Root,
    family: &str,
    manager: &Manager,
    net: &GuestNetwork,
    console: &Console,
) -> Result<Restore, FirstBootError> {
    let mut restore = Restore::default();
    if net.is_empty() {
        return Ok(restore);
    }
    let proxy = Proxy::from_settings(net, &mut |w| console.warn(w));
    match manager.proxy {
        ProxyConfig::Apt if !proxy.is_empty() => {
            let conf = proxy.apt_conf();
            change(root, &mut restore, APT_PROXY, |_| Some(conf), console)?;
        }
        ProxyConfig::MainSection(path) => {
            if let Some(p) = proxy.http.as_ref().or(proxy.https.as_ref()) {
                change(
                    root,
                    &mut restore,
                    path,
                    |t| Some(set_main_proxy(t.unwrap_or(""), p)),
                    console,
                )?;
            }
        }
        _ => {}
    }
    let mirrors = mirrors_for(net, family, &mut |w| console.warn(w));
    if mirrors.is_empty() {
        return Ok(restore);
    }
    let mut files: Vec<(String, Rewrite)> = Vec::new();
    match manager.sources {
        Sources::Apt => {
            files.push(("/etc/apt/sources.list".into(), rewrite_apt_list));
            for name in root.list("/etc/apt/sources.list.d") {
                let path = format!("/etc/apt/sources.list.d/{name}");
                if name.ends_with(".list") {
                    files.push((path, rewrite_apt_list));
                } else if name.ends_with(".sources") {
                    files.push((path, rewrite_deb822));
                }
            }
        }
        Sources::Apk => files.push(("/etc/apk/repositories".into(), rewrite_apk)),
        Sources::Pacman => files.push(("/etc/pacman.d/mirrorlist".into(), rewrite_pacman)),
        Sources::RepoDir(dir) => {
            for name in root.list(dir) {
                if name.ends_with(".repo") {
                    files.push((format!("{dir}/{name}"), rewrite_repo));
                }
            }
        }
    }
    for (path, f) in files {
        change(
            root,
            &mut restore,
            &path,
            |t| t.map(|t| f(t, &mirrors)),
            console,
        )?;
    }
    Ok(restore)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn prefixes_match_at_path_boundaries_longest_first() {
        let mirrors = m(&[
            ("http://deb.debian.org/debian", "http://m.lan/debian"),
            (
                "http://deb.debian.org/debian-security",
                "http://m.lan/security",
            ),
        ]);
        assert_eq!(
            rewrite_url("http://deb.debian.org/debian", &mirrors).unwrap(),
            "http://m.lan/debian"
        );
        assert_eq!(
            rewrite_url("http://deb.debian.org/debian/pool/x", &mirrors).unwrap(),
            "http://m.lan/debian/pool/x"
        );
        assert_eq!(
            rewrite_url("http://deb.debian.org/debian-security", &mirrors).unwrap(),
            "http://m.lan/security"
        );
        assert_eq!(rewrite_url("http://deb.debian.org/debianx", &mirrors), None);
        assert_eq!(rewrite_url("https://deb.debian.org/debian", &mirrors), None);
    }

    #[test]
    fn apt_one_line_and_deb822_sources() {
        let mirrors = m(&[(
            "http://deb.debian.org/debian",
            "http://172.30.0.1:8080/debian",
        )]);
        let list = "# comment http://deb.debian.org/debian\n\
                    deb http://deb.debian.org/debian bookworm main\n\
                    deb-src   [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian/ bookworm main\n\
                    deb http://security.debian.org/debian-security bookworm-security main";
        assert_eq!(
            rewrite_apt_list(list, &mirrors),
            "# comment http://deb.debian.org/debian\n\
             deb http://172.30.0.1:8080/debian bookworm main\n\
             deb-src   [arch=amd64 signed-by=/k.gpg] http://172.30.0.1:8080/debian/ bookworm main\n\
             deb http://security.debian.org/debian-security bookworm-security main"
        );
        // The official image's debian.sources.
        let sources = "Types: deb\n\
                       # http://snapshot.debian.org/archive/debian/20250101T000000Z\n\
                       URIs: http://deb.debian.org/debian\n\
                       Suites: bookworm bookworm-updates\n\
                       Components: main\n\
                       Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
                       \n\
                       Types: deb\n\
                       URIs: http://deb.debian.org/debian-security\n\
                       Suites: bookworm-security\n";
        let out = rewrite_deb822(sources, &mirrors);
        assert!(
            out.contains("URIs: http://172.30.0.1:8080/debian\n"),
            "{out}"
        );
        assert!(
            out.contains("URIs: http://deb.debian.org/debian-security\n"),
            "{out}"
        );
        assert!(out.contains("# http://snapshot.debian.org"), "{out}");
        assert_eq!(out.lines().count(), sources.lines().count());
        let multi = "uris: http://a/x\n http://deb.debian.org/debian\nSuites: s\n http://deb.debian.org/debian\n";
        assert_eq!(
            rewrite_deb822(multi, &mirrors),
            "uris: http://a/x\n http://172.30.0.1:8080/debian\nSuites: s\n http://deb.debian.org/debian\n"
        );
    }

    #[test]
    fn apk_pacman_and_repo_files() {
        let apk = m(&[("https://dl-cdn.alpinelinux.org/alpine", "http://m/alpine")]);
        assert_eq!(
            rewrite_apk(
                "https://dl-cdn.alpinelinux.org/alpine/v3.20/main\n#https://dl-cdn.alpinelinux.org/alpine/edge\n@edge https://dl-cdn.alpinelinux.org/alpine/edge/testing\n",
                &apk
            ),
            "http://m/alpine/v3.20/main\n#https://dl-cdn.alpinelinux.org/alpine/edge\n@edge http://m/alpine/edge/testing\n"
        );
        let arch = m(&[("https://geo.mirror.pkgbuild.com", "http://m/arch")]);
        assert_eq!(
            rewrite_pacman(
                "## Worldwide\nServer = https://geo.mirror.pkgbuild.com/$repo/os/$arch\n#Server = https://geo.mirror.pkgbuild.com/x\n",
                &arch
            ),
            "## Worldwide\nServer = http://m/arch/$repo/os/$arch\n#Server = https://geo.mirror.pkgbuild.com/x\n"
        );
        let fedora = m(&[(
            "http://download.example/pub/fedora/linux",
            "http://m/fedora",
        )]);
        let repo = "[fedora]\nname=Fedora $releasever - $basearch\n\
                    #baseurl=http://download.example/pub/fedora/linux/releases/$releasever/Everything/$basearch/os/\n\
                    metalink=https://mirrors.fedoraproject.org/metalink?repo=fedora-$releasever&arch=$basearch\n\
                    enabled=1\n\n\
                    [other]\nmetalink=https://elsewhere/metalink\n";
        let out = rewrite_repo(repo, &fedora);
        assert!(
            out.contains(
                "\nbaseurl=http://m/fedora/releases/$releasever/Everything/$basearch/os/\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("\n#metalink=https://mirrors.fedoraproject.org"),
            "{out}"
        );
        // A section whose baseurl does not match keeps its metalink.
        assert!(
            out.contains("[other]\nmetalink=https://elsewhere/metalink\n"),
            "{out}"
        );
        let zypp = m(&[("http://download.opensuse.org", "http://m/suse")]);
        assert_eq!(
            rewrite_repo(
                "[repo-oss]\nbaseurl = http://download.opensuse.org/tumbleweed/repo/oss/\n",
                &zypp
            ),
            "[repo-oss]\nbaseurl=http://m/suse/tumbleweed/repo/oss/\n"
        );
    }

    #[test]
    fn proxies_are_validated_and_written_per_manager() {
        let net = GuestNetwork {
            http_proxy: Some("http://proxy.lan:3128".into()),
            https_proxy: Some("http://proxy.lan:3128\";\nAcquire::x \"y".into()),
            no_proxy: Some("mirror.lan, 10.0.0.1,bad host,$(x)".into()),
            ..GuestNetwork::default()
        };
        let mut warnings = Vec::new();
        let p = Proxy::from_settings(&net, &mut |w| warnings.push(w));
        assert_eq!(p.http.as_deref(), Some("http://proxy.lan:3128"));
        assert_eq!(p.https, None);
        assert_eq!(p.no_proxy, ["mirror.lan", "10.0.0.1"]);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert_eq!(
            p.apt_conf(),
            "// Written by banger-first-boot from identity.json.\n\
             Acquire::http::Proxy \"http://proxy.lan:3128\";\n\
             Acquire::http::Proxy::mirror.lan \"DIRECT\";\n\
             Acquire::https::Proxy::mirror.lan \"DIRECT\";\n\
             Acquire::http::Proxy::10.0.0.1 \"DIRECT\";\n\
             Acquire::https::Proxy::10.0.0.1 \"DIRECT\";\n"
        );
        let env = p.env();
        assert!(env.contains(&("http_proxy".into(), "http://proxy.lan:3128".into())));
        assert!(env.contains(&("NO_PROXY".into(), "mirror.lan,10.0.0.1".into())));
        assert_eq!(
            set_main_proxy(
                "[main]\ngpgcheck=1\nproxy=old\n[x]\nproxy=keep\n",
                "http://p:1"
            ),
            "[main]\ngpgcheck=1\nproxy=http://p:1\n[x]\nproxy=keep\n"
        );
        assert_eq!(
            set_main_proxy("[main]\ngpgcheck=1\n", "http://p:1"),
            "[main]\ngpgcheck=1\nproxy=http://p:1\n"
        );
        assert_eq!(
            set_main_proxy("", "http://p:1"),
            "[main]\nproxy=http://p:1\n"
        );
        for bad in [
            "ftp:x",
            "http://a b",
            "http://a\"",
            "javascript:x",
            "http://a;b",
        ] {
            assert!(!valid_url(bad), "{bad}");
        }
    }

    #[test]
    fn apply_rewrites_the_image_files_and_restore_puts_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc/apt/sources.list.d")).unwrap();
        let sources = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n";
        std::fs::write(r.join("etc/apt/sources.list.d/debian.sources"), sources).unwrap();
        let root = Root::new(r);
        let net = GuestNetwork {
            http_proxy: Some("http://proxy:3128".into()),
            mirrors: [(
                "debian".to_string(),
                m(&[("http://deb.debian.org/debian", "http://m/debian")]),
            )]
            .into(),
            ..GuestNetwork::default()
        };
        let console = Console::new(Box::new(std::io::sink()));
        let apt = super::super::distro::Family::Debian.managers()[0];
        let restore = apply(&root, "debian", &apt, &net, &console).unwrap();
        let read = |p: &str| std::fs::read_to_string(r.join(p)).unwrap();
        assert!(read("etc/apt/sources.list.d/debian.sources").contains("URIs: http://m/debian\n"));
        assert!(read("etc/apt/apt.conf.d/80banger-proxy").contains("\"http://proxy:3128\""));
        assert!(!r.join("etc/apt/sources.list").exists());
        restore.undo(&root, &console);
        assert_eq!(read("etc/apt/sources.list.d/debian.sources"), sources);
        assert!(!r.join("etc/apt/apt.conf.d/80banger-proxy").exists());
    }
}
