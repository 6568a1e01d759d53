//! Registry credentials for image pulls, read here, with the user's rights,
//! from the docker CLI's `$DOCKER_CONFIG/config.json` (else
//! `~/.docker/config.json`), and passed with the request for the one
//! registry the reference names; the image store never stores them.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use banger_proto::imagestore::v1 as pb;
use base64::Engine;

/// The credentials to send with a pull of `reference`: the docker config's
/// entry for its registry, if any.
pub fn credentials_for(reference: &str) -> Vec<pb::RegistryCredentials> {
    docker_credentials(&registry_host(reference))
        .into_iter()
        .collect()
}

/// The registry host of a Docker reference (`docker.io` when it names none).
fn registry_host(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_owned()
        }
        _ => "docker.io".to_owned(),
    }
}

/// Credentials for `host` from the docker CLI's config, if any.
fn docker_credentials(host: &str) -> Option<pb::RegistryCredentials> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    parse_docker_config(&text, host)
        .with_context(|| format!("reading {}", dir.join("config.json").display()))
        .unwrap_or_else(|e| {
            eprintln!("banger: ignoring docker credentials: {e:#}");
            None
        })
}

fn parse_docker_config(text: &str, host: &str) -> Result<Option<pb::RegistryCredentials>> {
    let config: serde_json::Value = serde_json::from_str(text)?;
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let keys: Vec<String> = if host == "docker.io" {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ]
    } else {
        vec![
            host.into(),
            format!("https://{host}"),
            format!("http://{host}"),
        ]
    };
    let Some(entry) = keys
        .iter()
        .find_map(|k| auths.get(k).or_else(|| auths.get(&format!("{k}/"))))
    else {
        return Ok(None);
    };
    let mut creds = pb::RegistryCredentials {
        registry: host.to_owned(),
        ..Default::default()
    };
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
        let decoded = base64::engine::general_purpose::STANDARD.decode(auth)?;
        let decoded = String::from_utf8(decoded)?;
        let (user, pass) = decoded
            .split_once(':')
            .context("auth is not base64 of user:password")?;
        creds.username = user.to_owned();
        creds.password = pass.to_owned();
    }
    if let Some(token) = entry.get("identitytoken").and_then(|t| t.as_str()) {
        creds.identity_token = token.to_owned();
    }
    Ok((!creds.username.is_empty() || !creds.identity_token.is_empty()).then_some(creds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(registry_host("debian:bookworm"), "docker.io");
        assert_eq!(registry_host("someone/tool"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000/x:y"), "127.0.0.1:5000");
        assert_eq!(registry_host("ghcr.io/a/b"), "ghcr.io");
    }

    #[test]
    fn docker_config_auths() {
        let text = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dTpw"},
            "127.0.0.1:5000": {"auth": "dGVzdGVyOnMzOmNyZXQ="},
            "ghcr.io": {"identitytoken": "tok"}
        }}"#;
        let hub = parse_docker_config(text, "docker.io").unwrap().unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("u", "p"));
        let local = parse_docker_config(text, "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!(local.password, "s3:cret");
        assert_eq!(local.registry, "127.0.0.1:5000");
        assert_eq!(
            parse_docker_config(text, "ghcr.io")
                .unwrap()
                .unwrap()
                .identity_token,
            "tok"
        );
        assert!(parse_docker_config(text, "quay.io").unwrap().is_none());
    }
}
