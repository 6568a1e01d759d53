//! Registry auth, the distribution spec's token flow, done here rather
//! than inside oci-client, which sends Basic credentials to whatever token
//! realm a registry names (any host, any scheme) and sends Docker's
//! `identitytoken` (a refresh token) to the registry as a Bearer.
//!
//! The registry's `/v2/` challenge decides, once per pull and endpoint:
//! - none: anonymous (nothing is asked, nothing is sent);
//! - `Basic`: the registry itself gets the credentials, if any;
//! - `Bearer realm=…`: a pull token is fetched from the realm: without
//!   credentials anonymously; with them, only from a realm that is HTTPS or
//!   on the registry's own host, a refresh token exchanged with the OAuth2
//!   POST form (`grant_type=refresh_token`), a username/password with the
//!   token GET (Basic to the realm). The registry only ever gets the token.

use oci_client::secrets::RegistryAuth;
use reqwest::Url;

use crate::error::Error;
use crate::registry::{Credentials, SMALL_REQUEST_TIMEOUT};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic`, lowercased.
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="https://a/b",service="x"` (quoted or bare values).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        params.push((key.trim().to_owned(), value.to_owned()));
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// Whether credentials may be sent to `realm` for a registry at `registry`
/// (`host[:port]`): over HTTPS anywhere, over plain HTTP only to the
/// registry's own host.
pub fn realm_allowed(realm: &Url, registry: &str) -> bool {
    if realm.scheme() == "https" {
        return true;
    }
    let registry_host = Url::parse(&format!("http://{registry}/"))
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned));
    realm.scheme() == "http" && realm.host_str().map(str::to_owned) == registry_host
}

/// The auth of requests for `repository` on `registry`, reached over
/// `scheme` (`http` for insecure registries).
pub async fn authorize(
    http: &reqwest::Client,
    scheme: &str,
    registry: &str,
    repository: &str,
    cred: Option<&Credentials>,
) -> Result<RegistryAuth, Error> {
    let cred = cred.filter(|c| !c.identity_token.is_empty() || !c.username.is_empty());
    let reference = format!("{registry}/{repository}");
    let unreachable = |e: reqwest::Error| Error::Unreachable {
        reference: reference.clone(),
        message: e.to_string(),
    };
    let probe = http
        .get(format!("{scheme}://{registry}/v2/"))
        .timeout(SMALL_REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(unreachable)?;
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_challenge);
    let Some(challenge) = challenge else {
        return Ok(RegistryAuth::Anonymous);
    };
    if challenge.scheme == "basic" {
        return Ok(match cred {
            Some(cred) if !cred.username.is_empty() => {
                RegistryAuth::Basic(cred.username.clone(), cred.password.clone())
            }
            _ => RegistryAuth::Anonymous,
        });
    }
    let refused = |message: String| Error::Unauthorized {
        reference: reference.clone(),
        message,
    };
    let realm = challenge
        .param("realm")
        .and_then(|r| Url::parse(r).ok())
        .ok_or_else(|| refused(format!("unusable token challenge {challenge:?}")))?;
    if cred.is_some() && !realm_allowed(&realm, registry) {
        return Err(Error::UnsafeTokenRealm {
            registry: registry.to_owned(),
            realm: realm.to_string(),
        });
    }
    let scope = format!("repository:{repository}:pull");
    let service = challenge.param("service").unwrap_or_default().to_owned();
    let response = if let Some(cred) = cred.filter(|c| !c.identity_token.is_empty()) {
        let body = form(&[
            ("grant_type", "refresh_token"),
            ("service", &service),
            ("scope", &scope),
            ("client_id", "banger"),
            ("refresh_token", &cred.identity_token),
        ]);
        http.post(realm)
            .timeout(SMALL_REQUEST_TIMEOUT)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
    } else {
        let mut url = realm;
        url.query_pairs_mut()
            .append_pair("scope", &scope)
            .append_pair("service", &service);
        let request = http.get(url).timeout(SMALL_REQUEST_TIMEOUT);
        match cred {
            Some(cred) => request.basic_auth(&cred.username, Some(&cred.password)),
            None => request,
        }
        .send()
        .await
    }
    .map_err(unreachable)?;
    let status = response.status();
    let text = response.text().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(refused(format!(
            "the token server answered {status}: {}",
            text.chars().take(200).collect::<String>()
        )));
    }
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| refused(format!("unreadable token answer: {e}")))?;
    let token = json["access_token"]
        .as_str()
        .or_else(|| json["token"].as_str())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refused("the token server sent no token".into()))?;
    Ok(RegistryAuth::Bearer(token.to_owned()))
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    let mut url = Url::parse("http://x/").expect("static URL");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(b.scheme, "basic");
    }

    #[test]
    fn realms_that_may_get_credentials() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(realm_allowed(
            &url("https://auth.docker.io/token"),
            "registry-1.docker.io"
        ));
        assert!(realm_allowed(
            &url("http://127.0.0.1:9000/token"),
            "127.0.0.1:5000"
        ));
        assert!(!realm_allowed(
            &url("http://localhost:9000/token"),
            "127.0.0.1:5000"
        ));
        assert!(!realm_allowed(
            &url("http://evil.example/token"),
            "registry.example"
        ));
        assert!(!realm_allowed(
            &url("ftp://registry.example/token"),
            "registry.example"
        ));
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form(&[("a", "x y"), ("scope", "repository:a/b:pull")]),
            "a=x+y&scope=repository%3Aa%2Fb%3Apull"
        );
    }
}
