//! A registry that lies, on 127.0.0.1 (a small HTTP server of this test:
//! no real registry sends these answers): a layer far larger than its
//! descriptor says, an oversized config, a 96 MiB manifest (with its size
//! declared, and without), and a foreign-layer descriptor whose `urls`
//! point at another local service while the registry errors.
//! The pull must be refused early and never reach the other service.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use banger_proto::imagestore::v1 as pb;
use common::*;

/// What the lying registry serves.
struct Lies {
    manifest: Vec<u8>,
    /// The manifest is sent without a Content-Length (until the connection
    /// closes), so only a cap while reading can stop it.
    manifest_unsized: bool,
    /// Bytes of manifest sent so far.
    manifest_sent: AtomicU64,
    config: (String, Vec<u8>),
    /// Layer digest → how the blob request is answered.
    layer_digest: String,
    layer: LayerAnswer,
    /// Bytes of layer sent so far (to show the pull stopped early).
    sent: AtomicU64,
}

#[derive(Clone, Copy)]
enum LayerAnswer {
    /// 200 with this many zero bytes, whatever the descriptor says.
    Flood(u64),
    /// 500: oci-client would then try the descriptor's `urls`.
    Error,
}

fn serve_registry(lies: Arc<Lies>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let lies = lies.clone();
            std::thread::spawn(move || answer(conn, &lies));
        }
    });
    addr
}

fn answer(mut conn: TcpStream, lies: &Lies) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        // Headers until the blank line.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
        let head = request.starts_with("HEAD");
        let reply = |conn: &mut TcpStream, status: &str, ctype: &str, body: &[u8]| {
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\n\r\n",
                body.len(),
                digest(body)
            );
            if !head {
                let _ = conn.write_all(body);
            }
        };
        if path == "/v2/" {
            reply(&mut conn, "200 OK", "application/json", b"{}");
        } else if path.contains("/manifests/") {
            let body = &lies.manifest;
            let length = if lies.manifest_unsized {
                "Connection: close".to_owned()
            } else {
                format!("Content-Length: {}", body.len())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n{length}\r\nDocker-Content-Digest: {}\r\n\r\n",
                digest(body)
            );
            if !head {
                for chunk in body.chunks(64 << 10) {
                    if conn.write_all(chunk).is_err() {
                        return;
                    }
                    lies.manifest_sent
                        .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            }
            if lies.manifest_unsized {
                return;
            }
        } else if path.ends_with(&lies.config.0) {
            reply(
                &mut conn,
                "200 OK",
                "application/octet-stream",
                &lies.config.1,
            );
        } else if path.ends_with(&lies.layer_digest) {
            match lies.layer {
                LayerAnswer::Error => {
                    reply(&mut conn, "500 Internal Server Error", "text/plain", b"no")
                }
                LayerAnswer::Flood(n) => {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n\r\n"
                    );
                    let chunk = vec![0u8; 64 << 10];
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(chunk.len() as u64) as usize;
                        if conn.write_all(&chunk[..k]).is_err() {
                            return;
                        }
                        lies.sent.fetch_add(k as u64, Ordering::SeqCst);
                        left -= k as u64;
                    }
                }
            }
        } else {
            reply(&mut conn, "404 Not Found", "text/plain", b"");
        }
    }
}

/// A local service nobody should call; counts who does.
fn canary() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            h.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nSECRET-CANARY");
        }
    });
    (addr, hits)
}

fn config_blob(padding: usize) -> Vec<u8> {
    let mut c = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(b"x")]},
        "config": {},
    });
    if padding > 0 {
        c["pad"] = serde_json::Value::String("p".repeat(padding));
    }
    serde_json::to_vec(&c).unwrap()
}

fn manifest(
    config: &[u8],
    config_size: usize,
    layer_digest: &str,
    layer_size: u64,
    urls: &[String],
) -> Vec<u8> {
    let mut layer = serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": layer_digest, "size": layer_size,
    });
    if !urls.is_empty() {
        layer["urls"] = serde_json::json!(urls);
    }
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(config), "size": config_size,
        },
        "layers": [layer],
    }))
    .unwrap()
}

async fn pull_from(addr: &str) -> (Result<pb::Image, tonic::Status>, TestStore) {
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[addr])), sock.path()).await;
    let (_, result) = pull(
        &mut client,
        pb::PullImageRequest {
            reference: format!("{addr}/evil:latest"),
            ..Default::default()
        },
    )
    .await;
    (result, ts)
}

/// Bytes under the blob cache: nothing unverified may stay there.
fn cached_bytes(ts: &TestStore) -> u64 {
    walk(&ts.state.path().join("blobs"))
}

fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() { walk(&e.path()) } else { m.len() }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_larger_than_its_descriptor_is_cut_off_at_the_declared_size() {
    let config = config_blob(0);
    let layer_digest = digest(b"the real layer is 101 bytes");
    let lies = Arc::new(Lies {
        manifest_unsized: false,
        manifest_sent: AtomicU64::new(0),
        manifest: manifest(&config, config.len(), &layer_digest, 101, &[]),
        config: (digest(&config), config.clone()),
        layer_digest: layer_digest.clone(),
        layer: LayerAnswer::Flood(256 << 20),
        sent: AtomicU64::new(0),
    });
    let addr = serve_registry(lies.clone());
    let (result, ts) = pull_from(&addr).await;
    let err = result.unwrap_err();
    assert!(
        err.message()
            .contains("more than the 101 bytes its descriptor declares"),
        "{err:?}"
    );
    // Refused at the declared size, not after the registry's 256 MiB
    // (socket buffers let a few MiB through before the connection drops).
    assert!(
        lies.sent.load(Ordering::SeqCst) < 64 << 20,
        "{} bytes were read",
        lies.sent.load(Ordering::SeqCst)
    );
    // The config, and at most the declared size of the layer.
    let most = 101 + config.len() as u64;
    assert!(
        cached_bytes(&ts) <= most,
        "{} bytes cached",
        cached_bytes(&ts)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_config_is_refused_by_its_descriptor() {
    let config = config_blob(9 << 20);
    let lies = Arc::new(Lies {
        manifest_unsized: false,
        manifest_sent: AtomicU64::new(0),
        manifest: manifest(&config, config.len(), &digest(b"l"), 10, &[]),
        config: (digest(&config), config.clone()),
        layer_digest: digest(b"l"),
        layer: LayerAnswer::Error,
        sent: AtomicU64::new(0),
    });
    let addr = serve_registry(lies);
    let (result, _) = pull_from(&addr).await;
    let err = result.unwrap_err();
    assert!(err.message().contains("outside 0..="), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_lies_about_its_size_is_cut_off() {
    // Declares 64 bytes, sends 4 MiB.
    let config = config_blob(4 << 20);
    let lies = Arc::new(Lies {
        manifest_unsized: false,
        manifest_sent: AtomicU64::new(0),
        manifest: manifest(&config, 64, &digest(b"l"), 10, &[]),
        config: (digest(&config), config.clone()),
        layer_digest: digest(b"l"),
        layer: LayerAnswer::Error,
        sent: AtomicU64::new(0),
    });
    let addr = serve_registry(lies);
    let (result, _) = pull_from(&addr).await;
    let err = result.unwrap_err();
    assert!(err.message().contains("more than the 64 bytes"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_layer_urls_are_never_followed() {
    let (canary_addr, hits) = canary();
    let config = config_blob(0);
    let layer_digest = digest(b"SECRET-CANARY");
    let lies = Arc::new(Lies {
        manifest_unsized: false,
        manifest_sent: AtomicU64::new(0),
        manifest: manifest(
            &config,
            config.len(),
            &layer_digest,
            13,
            &[format!("http://{canary_addr}/secret")],
        ),
        config: (digest(&config), config.clone()),
        layer_digest,
        layer: LayerAnswer::Error,
        sent: AtomicU64::new(0),
    });
    let addr = serve_registry(lies);
    let (result, _) = pull_from(&addr).await;
    let err = result.unwrap_err();
    assert!(!err.message().contains("SECRET-CANARY"), "{err:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "imagestore called the URL a descriptor named"
    );
}

/// A valid manifest padded with a 96 MiB annotation.
fn huge_manifest() -> Vec<u8> {
    let config = config_blob(0);
    let mut m: serde_json::Value =
        serde_json::from_slice(&manifest(&config, config.len(), &digest(b"l"), 10, &[])).unwrap();
    m["annotations"] = serde_json::json!({ "pad": "p".repeat(96 << 20) });
    serde_json::to_vec(&m).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_larger_than_4_mib_is_refused_while_it_is_read() {
    for unsized_body in [false, true] {
        let config = config_blob(0);
        let lies = Arc::new(Lies {
            manifest_unsized: unsized_body,
            manifest_sent: AtomicU64::new(0),
            manifest: huge_manifest(),
            config: (digest(&config), config.clone()),
            layer_digest: digest(b"l"),
            layer: LayerAnswer::Error,
            sent: AtomicU64::new(0),
        });
        let addr = serve_registry(lies.clone());
        let (result, ts) = pull_from(&addr).await;
        let err = result.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        assert!(
            err.message().contains("manifest")
                && err.message().contains("larger than 4194304 bytes"),
            "{err:?}"
        );
        // Cut off near the cap (socket buffers let a few MiB more through),
        // not after the registry's 96 MiB.
        let sent = lies.manifest_sent.load(Ordering::SeqCst);
        assert!(
            sent < 48 << 20,
            "{sent} bytes of manifest were read (unsized: {unsized_body})"
        );
        assert_eq!(
            cached_bytes(&ts),
            0,
            "nothing is fetched after a refused manifest"
        );
    }
}
