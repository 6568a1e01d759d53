//! Shared pieces of kernelcat's integration tests: a real HTTP server on
//! 127.0.0.1 that can misbehave on purpose, bundles built from the fixture
//! kernel, and the service started in-process on a temp socket.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use banger_kernelcat::{KernelCatConfig, KernelCatService};
use banger_proto::kernelcat::v1 as pb;
use banger_proto::kernelcat::v1::kernel_cat_client::KernelCatClient;
use banger_proto::kernelcat::v1::kernel_cat_server::KernelCatServer;
use banger_proto::rpc::TracedChannel;
use banger_proto::rpc::progress::{LongEvent, Step};
use banger_proto::runtime::v1::Progress;
use banger_test_support::inproc;
use banger_test_support::wait::wait_until_async;
use sha2::{Digest, Sha256};

/// How the server answers one path.
#[derive(Clone)]
pub enum Route {
    /// 200 with the body.
    Ok(Arc<Vec<u8>>),
    /// The status, empty body.
    Status(u16),
    /// Announces the whole body, sends only the first `usize` bytes, closes.
    Truncate(Arc<Vec<u8>>, usize),
    /// Sends the first `usize` bytes, then waits for the gate to open
    /// before sending the rest (a download that stays in flight).
    Gated(Arc<Vec<u8>>, usize, Gate),
    /// Accepts the request and never answers (a stalled server).
    Stall,
    /// 200 without a Content-Length, then zeros until the client hangs up
    /// (a body far larger than anything declared).
    Endless,
}

/// A gate a [`Route::Gated`] response waits on.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// Lets every waiting response finish.
    pub fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    /// Waits until opened; `false` after a minute (the test failed or
    /// the client went away).
    fn wait(&self) -> bool {
        let guard = self.0.0.lock().unwrap();
        let (guard, _) = self
            .0
            .1
            .wait_timeout_while(guard, Duration::from_secs(60), |open| !*open)
            .unwrap();
        *guard
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 with per-path behaviour and
/// per-path request counts.
pub struct HttpServer {
    pub addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    sent: Arc<Mutex<HashMap<String, usize>>>,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let server = HttpServer {
            addr,
            routes: Default::default(),
            hits: Default::default(),
            sent: Default::default(),
        };
        let (routes, hits, sent) = (
            server.routes.clone(),
            server.hits.clone(),
            server.sent.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (routes, hits, sent) = (routes.clone(), hits.clone(), sent.clone());
                std::thread::spawn(move || {
                    let _ = handle(stream, &routes, &hits, &sent);
                });
            }
        });
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn route(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Body bytes written so far on `path` (all requests).
    pub fn sent(&self, path: &str) -> usize {
        self.sent.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn handle(
    stream: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    hits: &Mutex<HashMap<String, usize>>,
    sent: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let route = routes.lock().unwrap().get(&path).cloned();
    let mut out = stream;
    let head = |status: u16, reason: &str, len: usize| {
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let count = |n: usize| *sent.lock().unwrap().entry(path.clone()).or_default() += n;
    match route {
        None => out.write_all(head(404, "Not Found", 0).as_bytes())?,
        Some(Route::Status(code)) => out.write_all(head(code, "Test Status", 0).as_bytes())?,
        Some(Route::Ok(body)) => {
            out.write_all(head(200, "OK", body.len()).as_bytes())?;
            out.write_all(&body)?;
            count(body.len());
        }
        Some(Route::Truncate(body, cut)) => {
            out.write_all(head(200, "OK", body.len()).as_bytes())?;
            out.write_all(&body[..cut])?;
            count(cut);
        }
        Some(Route::Stall) => {
            std::thread::sleep(Duration::from_secs(120));
        }
        Some(Route::Endless) => {
            out.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..(1 << 16) {
                if out.write_all(&chunk).is_err() {
                    break;
                }
                count(chunk.len());
            }
        }
        Some(Route::Gated(body, first, gate)) => {
            out.write_all(head(200, "OK", body.len()).as_bytes())?;
            out.write_all(&body[..first])?;
            out.flush()?;
            count(first);
            if gate.wait() {
                out.write_all(&body[first..])?;
                count(body.len() - first);
            }
        }
    }
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// SHA-256 (hex).
pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub use banger_test_support::tar::{Member, tar_zst};

/// The fixture kernel bundled as the build script would (vmlinux + config),
/// built once per test binary.
pub fn fixture_bundle() -> Arc<Vec<u8>> {
    static BUNDLE: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    BUNDLE
        .get_or_init(|| {
            let vmlinux = std::fs::read(banger_test_support::fixtures::kernel_vmlinux()).unwrap();
            let config = std::fs::read(banger_test_support::fixtures::kernel_config()).unwrap();
            Arc::new(tar_zst(&[
                Member::File("vmlinux", &vmlinux),
                Member::File("config", &config),
            ]))
        })
        .clone()
}

/// A catalog entry as JSON.
pub fn entry(name: &str, url: &str, sha: &str, size: usize) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "distro": "generic",
        "arch": "x86_64",
        "kernel_version": "6.12.117",
        "tarball_url": url,
        "tarball_sha256": sha,
        "size_bytes": size,
        "description": "test kernel",
    })
}

/// Serves `entries` as the catalog at `/catalog.json`.
pub fn serve_catalog(server: &HttpServer, entries: Vec<serde_json::Value>) {
    let body = serde_json::to_vec(&serde_json::json!({ "kernels": entries })).unwrap();
    server.route("/catalog.json", Route::Ok(Arc::new(body)));
}

/// The service running in-process on a temp socket.
pub struct Service {
    pub dir: tempfile::TempDir,
    pub client: KernelCatClient<TracedChannel>,
    _served: inproc::Served,
}

impl Service {
    pub async fn start(settings: KernelCatConfig) -> Service {
        Self::start_with(settings, None).await
    }

    /// With explicit archive trust (a throwaway key's tests).
    pub async fn start_with(
        settings: KernelCatConfig,
        trust: Option<banger_kernelcat::archive::ArchiveTrust>,
    ) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state/kernels");
        let service = match trust {
            Some(trust) => KernelCatService::with_trust(root, settings, trust),
            None => KernelCatService::with_settings(root, settings),
        }
        .expect("open the service");
        let served = inproc::serve(
            &dir.path().join("run/kernelcat.sock"),
            "banger-kernelcat",
            &["banger.kernelcat.v1.KernelCat"],
            tonic::service::Routes::new(KernelCatServer::new(service)),
        )
        .await;
        Service {
            dir,
            client: KernelCatClient::new(served.channel.clone()),
            _served: served,
        }
    }

    /// The store root.
    pub fn kernels(&self) -> PathBuf {
        self.dir.path().join("state/kernels")
    }

    /// Names in the store root (kernels, staging dirs, the catalog cache).
    pub fn store_entries(&self) -> Vec<String> {
        store_entries(&self.kernels())
    }
}

/// Names in a directory, sorted, without the store's `.lock`.
pub fn store_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".lock") // the store's ownership lock
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Settings pointing at a test catalog.
pub fn settings(catalog_url: &str) -> KernelCatConfig {
    KernelCatConfig {
        catalog_url: Some(catalog_url.to_owned()),
        catalog_timeout_secs: 5,
        ..Default::default()
    }
}

/// Runs a pull to its end: the progress updates seen and the result.
pub async fn pull(
    client: &mut KernelCatClient<TracedChannel>,
    name: &str,
    force: bool,
) -> (Vec<Progress>, Result<pb::Kernel, tonic::Status>) {
    let mut stream = match client
        .pull_kernel(pb::PullKernelRequest {
            name: name.into(),
            force,
            update: false,
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut progress = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(event)) => match event.clone().into_step() {
                Some(Step::Update(p)) => progress.push(p),
                Some(Step::Done(k)) => return (progress, Ok(k)),
                None => panic!("unexpected pull message {event:?}"),
            },
            Ok(None) => panic!("the pull stream ended without a result"),
            Err(status) => return (progress, Err(status)),
        }
    }
}

/// Polls `cond` every 50 ms until it holds, panicking with `what` after a
/// generous deadline (a liveness bound, not a timing assertion).
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until_async(Duration::from_secs(60), cond).await,
        "timed out waiting until {what}"
    );
}
