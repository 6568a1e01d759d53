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

/// Serves `/token` on 127.0.0.1: full requested access for tester:s3cret,
/// none for anyone else.
async fn token_server(signer: std::sync::Arc<Signer>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let signer = signer.clone();
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
                let text = String::from_utf8_lossy(&buf).into_owned();
                let target = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
                let authed = text.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization: basic ")
                        && STANDARD
                            .decode(l[21..].trim())
                            .is_ok_and(|d| d == b"tester:s3cret")
                });
                let mut access = Vec::new();
                for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                    if k == "scope" && authed {
                        let scope = percent_decode(v);
                        let parts: Vec<&str> = scope.split(':').collect();
                        if let [kind, name, actions] = parts[..] {
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
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn bearer_token_flow_with_basic_credentials() {
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
    let token_addr = token_server(signer).await;
    let registry = Registry::start_with(RegistryAuth::TokenYaml(format!(
        "    realm: http://{token_addr}/token\n    service: banger-registry\n    issuer: banger-test\n    rootcertbundle: {}\n",
        cert.display()
    )));
    let src = tempfile::tempdir().unwrap();
    let source = layout(src.path(), "latest", &[gzip_layer(busybox_layer())]);
    let dest = format!("docker://{}/private/busybox:latest", registry.addr);
    tokio::task::spawn_blocking(move || {
        push_with_skopeo(&source, &dest, &["--dest-creds", "tester:s3cret"])
    })
    .await
    .unwrap();

    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[&registry.addr])), sock.path()).await;
    let reference = format!("{}/private/busybox:latest", registry.addr);
    let request = |password: &str| pb::PullImageRequest {
        reference: reference.clone(),
        credentials: if password.is_empty() {
            vec![]
        } else {
            vec![pb::RegistryCredentials {
                registry: registry.addr.clone(),
                username: "tester".into(),
                password: password.into(),
                identity_token: String::new(),
            }]
        },
        ..Default::default()
    };
    let (_, anonymous) = pull(&mut client, request("")).await;
    assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);
    let (_, ok) = pull(&mut client, request("s3cret")).await;
    assert_eq!(ok.unwrap().name, "busybox-latest");
}
