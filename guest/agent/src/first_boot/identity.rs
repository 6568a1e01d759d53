//! `/etc/banger/identity.json` → the guest's files. The file is read with
//! serde into [`Identity`] (the type vmm writes); every value is data:
//! validated first (the host name as an RFC 1123 name, SSH keys as one line
//! of a known type with a base64 body that encodes that type, DNS servers as
//! IP addresses), then written as whole files — nothing is ever spliced
//! into a shell, sed or unit text. Values that fail validation are skipped
//! with a warning; the rest still applies.
//!
//! Idempotence: a checksum of the file is kept in
//! `/var/lib/banger/identity.applied`; the same identity is not applied twice.

use std::net::IpAddr;

use banger_proto::guest::{IDENTITY_PATH, Identity, STATE_DIR};

use super::error::FirstBootError;
use super::events::Console;
use super::root::Root;

/// Marker of the identity last applied (its checksum).
pub use banger_proto::guest::IDENTITY_APPLIED_PATH as APPLIED;
/// The most of identity.json first boot reads.
const MAX_IDENTITY: u64 = 1 << 20;

/// SSH public key types `authorized_keys` accepts here.
const KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The identity file as read: its values and its checksum.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub identity: Identity,
    pub checksum: String,
}

/// Reads identity.json; `None` when there is none.
pub fn load(root: &Root) -> Result<Option<Loaded>, FirstBootError> {
    let Some(data) = root.read_capped(IDENTITY_PATH, MAX_IDENTITY)? else {
        return Ok(None);
    };
    let identity: Identity =
        serde_json::from_slice(&data).map_err(|e| FirstBootError::BadIdentity {
            path: IDENTITY_PATH.into(),
            detail: e.to_string(),
        })?;
    Ok(Some(Loaded {
        identity,
        checksum: checksum(&data),
    }))
}

/// The stamp of the file, as vmm writes it for disks it prepared itself
/// (one home: [`banger_proto::guest::identity_applied_stamp`]), without its
/// newline.
fn checksum(data: &[u8]) -> String {
    banger_proto::guest::identity_applied_stamp(data)
        .trim_end()
        .to_owned()
}

/// Whether this identity was applied already.
pub fn already_applied(root: &Root, loaded: &Loaded) -> bool {
    root.read_text(APPLIED, 4096)
        .ok()
        .flatten()
        .is_some_and(|t| t.trim() == loaded.checksum)
}

pub fn mark_applied(root: &Root, loaded: &Loaded) -> Result<(), FirstBootError> {
    root.mkdir(STATE_DIR, 0o755)?;
    root.write(APPLIED, format!("{}\n", loaded.checksum).as_bytes(), 0o644)
}

/// The identity's values that passed validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Valid {
    pub hostname: Option<String>,
    pub ssh_keys: Vec<String>,
    pub dns: Vec<IpAddr>,
}

/// Validates every value; `warn` hears about each one skipped.
pub fn validate(id: &Identity, warn: &mut dyn FnMut(String)) -> Valid {
    let hostname = match id.hostname.as_str() {
        "" => None,
        h if crate::init::config::valid_hostname(h) => Some(h.to_owned()),
        h => {
            warn(format!(
                "hostname {h:?} is not a valid host name; keeping the image's"
            ));
            None
        }
    };
    let mut ssh_keys = Vec::new();
    for (i, key) in id.ssh_authorized_keys.iter().enumerate() {
        match valid_key(key) {
            Ok(k) => ssh_keys.push(k),
            Err(why) => warn(format!("ssh key {} skipped: {why}", i + 1)),
        }
    }
    let mut dns = Vec::new();
    for d in &id.dns {
        match d.trim().parse::<IpAddr>() {
            Ok(ip) => dns.push(ip),
            Err(_) => warn(format!("dns server {d:?} is not an IP address; skipped")),
        }
    }
    Valid {
        hostname,
        ssh_keys,
        dns,
    }
}

/// One `authorized_keys` line, normalised: `TYPE BASE64 [COMMENT]`. No key
/// options (they would grant or restrict what the host never asked for).
pub fn valid_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    if key.chars().any(|c| c.is_control()) {
        return Err("contains a newline or control character".into());
    }
    let mut parts = key.splitn(3, ' ');
    let kind = parts.next().unwrap_or("");
    let body = parts.next().unwrap_or("");
    let comment = parts.next().map(str::trim).unwrap_or("");
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "{kind:?} is not a known key type (options are not accepted)"
        ));
    }
    let blob = base64_decode(body).ok_or("the key body is not base64")?;
    // The blob starts with the type as an SSH string: u32 length + name.
    let named = blob
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if named != Some(kind.as_bytes()) {
        return Err(format!("the key body is not a {kind} key"));
    }
    Ok(if comment.is_empty() {
        format!("{kind} {body}")
    } else {
        format!("{kind} {body} {comment}")
    })
}

/// Standard base64 with padding; `None` on anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (n, chunk) in bytes.chunks(4).enumerate() {
        let last = n == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut acc = 0u32;
        for &c in &chunk[..4 - pad] {
            acc = (acc << 6) | val(c)?;
        }
        acc <<= 6 * pad as u32;
        let b = acc.to_be_bytes();
        out.extend_from_slice(&b[1..4 - pad]);
    }
    Some(out)
}

/// `/etc/hosts` with the `127.0.1.1` line naming `hostname` (replaced, or appended).
pub fn hosts_with(current: &str, hostname: &str) -> String {
    let line = format!("127.0.1.1\t{hostname}");
    let mut found = false;
    let mut out: Vec<String> = current
        .lines()
        .map(|l| {
            let mut words = l.split_whitespace();
            if words.next() == Some("127.0.1.1") {
                found = true;
                line.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !found {
        out.push(line);
    }
    out.join("\n") + "\n"
}

/// `/etc/resolv.conf` for these servers.
pub fn resolv_conf(dns: &[IpAddr]) -> String {
    dns.iter().map(|ip| format!("nameserver {ip}\n")).collect()
}

/// Writes hostname, hosts, resolv.conf and root's authorized_keys.
/// `kernel` also sets the running kernel's host name.
pub fn apply(
    root: &Root,
    valid: &Valid,
    kernel: bool,
    console: &Console,
) -> Result<(), FirstBootError> {
    if let Some(hostname) = &valid.hostname {
        console.log(format!("hostname: {hostname}"));
        root.write("/etc/hostname", format!("{hostname}\n").as_bytes(), 0o644)?;
        if kernel && let Err(e) = nix::unistd::sethostname(hostname) {
            console.warn(format!("cannot set the kernel hostname: {e}"));
        }
        let hosts = root
            .read_text("/etc/hosts", 1 << 20)
            .unwrap_or_default()
            .unwrap_or_default();
        root.write("/etc/hosts", hosts_with(&hosts, hostname).as_bytes(), 0o644)?;
    }
    apply_dns(root, &valid.dns, console)?;
    if !valid.ssh_keys.is_empty() {
        console.log(format!(
            "ssh: {} authorized key(s) for root",
            valid.ssh_keys.len()
        ));
        root.mkdir("/root/.ssh", 0o700)?;
        let text: String = valid.ssh_keys.iter().map(|k| format!("{k}\n")).collect();
        root.write("/root/.ssh/authorized_keys", text.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// `/etc/resolv.conf` (a symlink there, e.g. to a resolver stub, is
/// replaced by a file).
pub fn apply_dns(root: &Root, dns: &[IpAddr], console: &Console) -> Result<(), FirstBootError> {
    if dns.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = dns.iter().map(ToString::to_string).collect();
    console.log(format!("dns: {}", list.join(" ")));
    root.write("/etc/resolv.conf", resolv_conf(dns).as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIMV4SZ8E9mpHs3fbaXW1tV+4hnR0d3Ri8GsR6p5Kfr6";

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("aA==").unwrap(), b"h");
        for bad in ["", "a", "aGk", "aG=k", "a===", "aGk=aGk=", "aGk$", "aGk=\n"] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_are_one_line_of_a_known_type_with_a_matching_body() {
        assert_eq!(valid_key(ED).unwrap(), ED);
        assert_eq!(
            valid_key(&format!("  {ED} alice@laptop \"the\" $(reboot) \\n  ")).unwrap(),
            format!("{ED} alice@laptop \"the\" $(reboot) \\n")
        );
        let bad = [
            format!("{ED}\nssh-ed25519 AAAA attacker"),
            format!("{ED}\rx"),
            format!("command=\"/bin/sh\" {ED}"),
            "ssh-dss AAAAB3NzaC1kc3M= x".to_owned(),
            "ssh-ed25519 not-base64!".to_owned(),
            // Valid base64, but an RSA blob under an ed25519 label.
            "ssh-ed25519 AAAAB3NzaC1yc2E= x".to_owned(),
            "ssh-ed25519".to_owned(),
            String::new(),
        ];
        for key in bad {
            assert!(valid_key(&key).is_err(), "{key:?}");
        }
    }

    #[test]
    fn hostile_values_stay_data() {
        let id = Identity {
            hostname: "web-1$(reboot)".into(),
            ssh_authorized_keys: vec![ED.into(), "ssh-rsa x\nssh-rsa y".into()],
            dns: vec!["1.1.1.1".into(), "1.1.1.1; rm -rf /".into(), "::1".into()],
            ..Identity::default()
        };
        let mut warnings = Vec::new();
        let v = validate(&id, &mut |w| warnings.push(w));
        assert_eq!(v.hostname, None);
        assert_eq!(v.ssh_keys, [ED]);
        assert_eq!(
            v.dns,
            ["1.1.1.1".parse::<IpAddr>().unwrap(), "::1".parse().unwrap()]
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        for h in [
            "a\nb",
            "a b",
            "a/b",
            "-a",
            "a\\b",
            "a'b",
            "",
            "x".repeat(65).as_str(),
        ] {
            let id = Identity {
                hostname: h.into(),
                ..Identity::default()
            };
            assert_eq!(validate(&id, &mut |_| {}).hostname, None, "{h:?}");
        }
        let ok = Identity {
            hostname: "web-1".into(),
            ..Identity::default()
        };
        assert_eq!(
            validate(&ok, &mut |_| {}).hostname.as_deref(),
            Some("web-1")
        );
    }

    #[test]
    fn json_escapes_become_the_values_they_encode() {
        // Quotes, backslashes, unicode escapes and newlines in JSON strings.
        let text = r#"{"hostname":"a\"b","ssh_authorized_keys":["ssh-ed25519 AAAA\\ \u0041"],"dns":["1.1.1.1\n"]}"#;
        let id: Identity = serde_json::from_str(text).unwrap();
        assert_eq!(id.hostname, "a\"b");
        assert_eq!(id.ssh_authorized_keys[0], "ssh-ed25519 AAAA\\ A");
        let v = validate(&id, &mut |_| {});
        assert_eq!(v.hostname, None);
        assert!(v.ssh_keys.is_empty());
        // Whitespace around an address is tolerated, anything else is not.
        assert_eq!(v.dns.len(), 1);
    }

    #[test]
    fn hosts_line_is_replaced_or_appended() {
        assert_eq!(
            hosts_with("127.0.0.1\tlocalhost\n", "web-1"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb-1\n"
        );
        assert_eq!(
            hosts_with(
                "127.0.0.1 localhost\n127.0.1.1   old old.lan\n::1 ip6\n",
                "new"
            ),
            "127.0.0.1 localhost\n127.0.1.1\tnew\n::1 ip6\n"
        );
        assert_eq!(hosts_with("", "h"), "127.0.1.1\th\n");
    }

    #[test]
    fn applying_writes_files_and_the_marker_tracks_changes() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc/banger")).unwrap();
        let root = Root::new(r);
        let id = Identity {
            hostname: "web-1".into(),
            ssh_authorized_keys: vec![format!("{ED} a@b")],
            dns: vec!["9.9.9.9".into()],
            ..Identity::default()
        };
        std::fs::write(
            r.join("etc/banger/identity.json"),
            serde_json::to_string_pretty(&id).unwrap(),
        )
        .unwrap();
        let loaded = load(&root).unwrap().unwrap();
        assert_eq!(loaded.identity, id);
        assert!(!already_applied(&root, &loaded));
        let console = Console::new(Box::new(std::io::sink()));
        apply(&root, &validate(&id, &mut |_| {}), false, &console).unwrap();
        mark_applied(&root, &loaded).unwrap();
        assert!(already_applied(&root, &loaded));
        let read = |p: &str| std::fs::read_to_string(r.join(p)).unwrap();
        assert_eq!(read("etc/hostname"), "web-1\n");
        assert_eq!(read("etc/hosts"), "127.0.1.1\tweb-1\n");
        assert_eq!(read("etc/resolv.conf"), "nameserver 9.9.9.9\n");
        assert_eq!(read("root/.ssh/authorized_keys"), format!("{ED} a@b\n"));
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(r.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("root/.ssh"), 0o700);
        assert_eq!(mode("root/.ssh/authorized_keys"), 0o600);
        // A different file is a different identity.
        std::fs::write(
            r.join("etc/banger/identity.json"),
            "{\"hostname\":\"web-2\"}",
        )
        .unwrap();
        let changed = load(&root).unwrap().unwrap();
        assert!(!already_applied(&root, &changed));
        // Not JSON: a clear error.
        std::fs::write(r.join("etc/banger/identity.json"), "hostname=x").unwrap();
        assert!(matches!(
            load(&root),
            Err(FirstBootError::BadIdentity { .. })
        ));
    }
}
