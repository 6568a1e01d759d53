//! Image references in the Docker grammar (`debian:bookworm` means
//! `docker.io/library/debian:bookworm`) and the default image names derived
//! from them.

use std::str::FromStr;

use oci_client::Reference;

use crate::error::Error;

/// A parsed, fully qualified image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host as the user names it (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/debian`).
    pub repository: String,
    /// Tag, if any (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// Digest (`sha256:…`), if pinned.
    pub digest: Option<String>,
}

/// The registry of a reference that names none (`debian:bookworm`).
pub const DOCKER_HUB: &str = "docker.io";

impl ImageRef {
    /// Parses `text` with the Docker reference grammar.
    pub fn parse(text: &str) -> Result<ImageRef, Error> {
        let invalid = |reason: String| Error::InvalidReference {
            reference: text.to_owned(),
            reason,
        };
        if text.trim().is_empty() {
            return Err(invalid("it is empty".into()));
        }
        let r = Reference::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let digest = r.digest().map(str::to_owned);
        let tag = match (r.tag(), &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(ImageRef {
            registry: r.registry().to_owned(),
            repository: r.repository().to_owned(),
            tag,
            digest,
        })
    }

    /// The same repository, tag and digest on another registry host (a mirror).
    pub fn on_host(&self, host: &str) -> Reference {
        match (&self.tag, &self.digest) {
            (_, Some(d)) => Reference::with_digest(host.into(), self.repository.clone(), d.clone()),
            (Some(t), None) => Reference::with_tag(host.into(), self.repository.clone(), t.clone()),
            (None, None) => {
                Reference::with_tag(host.into(), self.repository.clone(), "latest".into())
            }
        }
    }

    /// Default image name: last path component + tag (`debian-bookworm`),
    /// or + the first 12 hex digits of the digest when pinned by digest only,
    /// reduced to a DNS label.
    pub fn default_name(&self) -> String {
        let last = self.repository.rsplit('/').next().unwrap_or("image");
        let suffix = match (&self.tag, &self.digest) {
            (Some(t), _) => t.clone(),
            (None, Some(d)) => d
                .split_once(':')
                .map(|(_, hex)| hex.chars().take(12).collect())
                .unwrap_or_default(),
            (None, None) => "latest".into(),
        };
        dns_label(&format!("{last}-{suffix}"))
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Lowercases, maps every other character to `-`, squeezes and trims dashes,
/// and cuts to 63 characters.
fn dns_label(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    out.truncate(63);
    let out = out.trim_end_matches('-').to_owned();
    if out.is_empty() { "image".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_names() {
        let r = ImageRef::parse("debian:bookworm").unwrap();
        assert_eq!(r.registry, DOCKER_HUB);
        assert_eq!(r.repository, "library/debian");
        assert_eq!(r.tag.as_deref(), Some("bookworm"));
        assert_eq!(r.to_string(), "docker.io/library/debian:bookworm");
        assert_eq!(r.default_name(), "debian-bookworm");
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.default_name(), "busybox-latest");
        let r = ImageRef::parse("someone/tool:1.2").unwrap();
        assert_eq!(r.repository, "someone/tool");
        assert_eq!(r.default_name(), "tool-1-2");
    }

    #[test]
    fn hosts_ports_and_digests() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = ImageRef::parse(&format!("127.0.0.1:5000/x/y@{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "x/y");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.default_name(), "y-abababababab");
        let m = r.on_host("mirror:1");
        assert_eq!(m.registry(), "mirror:1");
        assert_eq!(m.digest(), Some(d.as_str()));
        let r = ImageRef::parse("ghcr.io/org/tool:v1").unwrap();
        assert_eq!(r.registry, "ghcr.io");
    }

    #[test]
    fn bad_references_are_invalid_argument() {
        for bad in ["", "UPPER/Case:x", "a::b", "x@sha256:short"] {
            assert!(
                matches!(ImageRef::parse(bad), Err(Error::InvalidReference { .. })),
                "{bad} parsed"
            );
        }
    }
}
