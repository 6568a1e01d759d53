//! The workspace's TLS stack does a real, verified handshake: reqwest and
//! oci-client are built on rustls without a provider and banger installs
//! *ring* (`banger_proto::tls`); this proves that combination talks HTTPS
//! to a real server (`openssl s_server`) and refuses an unknown CA.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `openssl` with whitespace-separated `args` in `dir`.
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a leaf for `localhost` signed by it, as PEM files in `dir`.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=banger-test-CA \
         -keyout ca.key -out ca.pem",
    );
    openssl(
        dir,
        "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout leaf.key -out leaf.csr",
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile leaf.ext -out leaf.pem",
    );
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server -www` (answers `GET /` with a status page) on `port`.
fn serve(dir: &Path, port: u16) -> Server {
    let child = Command::new("openssl")
        .args([
            "s_server", "-quiet", "-www", "-cert", "leaf.pem", "-key", "leaf.key",
        ])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_server");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[tokio::test]
async fn https_with_ring_verifies_the_server() {
    banger_test_support::require_program("/usr/bin/openssl", "openssl");
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let port = banger_test_support::free_port();
    let _server = serve(dir.path(), port);
    let url = format!("https://localhost:{port}/");
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).unwrap()).unwrap();

    banger_proto::tls::install_crypto_provider();
    let trusting = reqwest::Client::builder()
        .tls_certs_merge([ca])
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let response = trusting.get(&url).send().await.expect("verified HTTPS GET");
    assert!(response.status().is_success(), "{}", response.status());
    // s_server serves one connection at a time: close this one first.
    drop(response);
    drop(trusting);

    // The same server without its CA: the handshake must fail on the certificate.
    let strict = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let err = strict
        .get(&url)
        .send()
        .await
        .expect_err("unknown CA accepted");
    let chain = format!("{err:?}");
    assert!(
        chain.to_lowercase().contains("certificate"),
        "not a certificate error: {chain}"
    );
}
