//! Bearer-token auth (Docker Hub's scheme) against a real registry: the
//! registry trusts a self-signed cert (openssl), and a token server on
//! 127.0.0.1 in this test signs RS256 JWTs (with `x5c`) granting what the
//! requested scope asks for, to clients with the right Basic credentials.

mod common;

use std::process::Command;

use banger_proto::imagestore::v1 as pb;
use banger_test_support::registry::{Registry, RegistryAuth, push_with_skopeo};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Signer {
    key: std::path::PathBuf,
    cert_der_b64: String,
}

impl Signer {
    fn jwt(&self, subject: &str, access: serde_json::Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der_b64]});
        let claims = serde_json::json!({
            "iss": "banger-test", "sub": subject, "aud": "banger-registry",
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{subject}"),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(signing_input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Every request the token server saw: method, target, headers and body.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Serves `/token` on 127.0.0.1: full requested access for tester:s3cret
/// (Basic, GET) or for the refresh token `REFRESH-123` (the OAuth2 POST
/// form of the distribution spec), pull of `public/*` for anyone, nothing
/// else. Records what it saw.
async fn token_server(signer: std::sync::Arc<Signer>) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let signer = signer.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head_len = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_len + length {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[head_len..]).into_owned();
                log.lock().unwrap().push(format!("{head}{body}"));
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
                let basic_ok = head.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization: basic ")
                        && STANDARD
                            .decode(l[21..].trim())
                            .is_ok_and(|d| d == b"tester:s3cret")
                });
                let form: Vec<(String, String)> = if head.starts_with("POST ") {
                    body.split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
                        .collect()
                } else {
                    query
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
                        .collect()
                };
                let field = |name: &str| {
                    form.iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                };
                let refresh_ok = field("grant_type") == Some("refresh_token")
                    && field("refresh_token") == Some("REFRESH-123");
                let authed = basic_ok || refresh_ok;
                let mut access = Vec::new();
                for (k, v) in &form {
                    if k == "scope" {
                        let parts: Vec<&str> = v.split(':').collect();
                        // Like Docker Hub: anyone may pull `public/*`.
                        if let [kind, name, actions] = parts[..]
                            && (authed || (name.starts_with("public/") && actions == "pull"))
                        {
                            access.push(serde_json::json!({
                                "type": kind, "name": name,
                                "actions": actions.split(',').collect::<Vec<_>>(),
                            }));
                        }
                    }
                }
                let token = tokio::task::spawn_blocking(move || {
                    signer.jwt(
                        if authed { "tester" } else { "" },
                        serde_json::Value::Array(access),
                    )
                })
                .await
                .unwrap();
                let body = serde_json::json!({"token": token, "access_token": token}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

/// A token-auth registry on 127.0.0.1 whose realm is
/// `http://<realm_host>:<token port>/token`, holding `private/busybox` and
/// `public/busybox`.
struct Setup {
    registry: Registry,
    seen: Seen,
    _dir: tempfile::TempDir,
}

async fn setup(realm_host: &str) -> Setup {
    banger_test_support::require_program("openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=banger-token",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    let signer = std::sync::Arc::new(Signer {
        key,
        cert_der_b64: STANDARD.encode(der),
    });
    let (token_addr, seen) = token_server(signer).await;
    let port = token_addr.rsplit(':').next().unwrap();
    let registry = Registry::start_with(RegistryAuth::TokenYaml(format!(
        "    realm: http://{realm_host}:{port}/token\n    service: banger-registry\n    issuer: banger-test\n    rootcertbundle: {}\n",
        cert.display()
    )));
    let src = tempfile::tempdir().unwrap();
    let source = layout(src.path(), "latest", &[gzip_layer(busybox_layer())]);
    let addr = registry.addr.clone();
    tokio::task::spawn_blocking(move || {
        for repo in ["private", "public"] {
            let dest = format!("docker://{addr}/{repo}/busybox:latest");
            push_with_skopeo(&source, &dest, &["--dest-creds", "tester:s3cret"]);
        }
    })
    .await
    .unwrap();
    seen.lock().unwrap().clear();
    Setup {
        registry,
        seen,
        _dir: dir,
    }
}

fn request(registry: &str, password: &str, identity_token: &str) -> pb::PullImageRequest {
    pb::PullImageRequest {
        reference: format!("{registry}/private/busybox:latest"),
        credentials: if password.is_empty() && identity_token.is_empty() {
            vec![]
        } else {
            vec![pb::RegistryCredentials {
                registry: registry.into(),
                username: if password.is_empty() { "" } else { "tester" }.into(),
                password: password.into(),
                identity_token: identity_token.into(),
            }]
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn basic_credentials_never_go_to_a_plain_http_realm_on_another_host() {
    // The registry is 127.0.0.1; its realm names `localhost`: same machine
    // here, but to the client another host, over plain HTTP.
    let s = setup("localhost").await;
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[&s.registry.addr])), sock.path()).await;
    let (_, result) = pull(&mut client, request(&s.registry.addr, "s3cret", "")).await;
    let err = result.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("plain HTTP") && err.message().contains("localhost"),
        "{}",
        err.message()
    );
    let seen = s.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .all(|r| !r.to_ascii_lowercase().contains("authorization")),
        "credentials reached the foreign realm: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn identity_token_is_a_refresh_token_not_a_bearer() {
    let s = setup("127.0.0.1").await;
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[&s.registry.addr])), sock.path()).await;
    let (_, result) = pull(&mut client, request(&s.registry.addr, "", "REFRESH-123")).await;
    assert_eq!(result.unwrap().name, "busybox-latest");
    let seen = s.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|r| r.starts_with("POST /token")
            && r.contains("grant_type=refresh_token")
            && r.contains("refresh_token=REFRESH-123")),
        "no OAuth2 refresh-token exchange: {seen:#?}"
    );
    assert!(
        seen.iter().all(|r| !r.contains("Bearer REFRESH-123")),
        "{seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn bearer_token_flow_with_basic_credentials() {
    let s = setup("127.0.0.1").await;
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[&s.registry.addr])), sock.path()).await;
    let (_, anonymous) = pull(&mut client, request(&s.registry.addr, "", "")).await;
    assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);
    let (_, ok) = pull(&mut client, request(&s.registry.addr, "s3cret", "")).await;
    assert_eq!(ok.unwrap().name, "busybox-latest");
    // imagestore keeps its HTTP client (and its connections) across pulls:
    // the token the credentials earned must not serve a later caller who
    // has none.
    let again = pb::PullImageRequest {
        name: "anonymous-again".into(),
        force: true,
        ..request(&s.registry.addr, "", "")
    };
    let (_, anonymous) = pull(&mut client, again).await;
    assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn anonymous_pull_of_a_public_repository_fetches_its_own_token() {
    let s = setup("127.0.0.1").await;
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[&s.registry.addr])), sock.path()).await;
    let req = pb::PullImageRequest {
        reference: format!("{}/public/busybox:latest", s.registry.addr),
        ..Default::default()
    };
    let (_, image) = pull(&mut client, req).await;
    assert_eq!(image.unwrap().name, "busybox-latest");
    let seen = s.seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "no token was asked for");
    for request in &seen {
        assert!(
            !request.to_ascii_lowercase().contains("authorization:"),
            "an anonymous pull sent credentials: {request}"
        );
        assert!(
            request.contains("scope=repository%3Apublic%2Fbusybox%3Apull"),
            "{request}"
        );
    }
}
