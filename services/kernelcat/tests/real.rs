//! The real-component tier: a kernel bundle hosted as an OCI artifact in a
//! real `docker-registry` on 127.0.0.1, and the real `banger-kernelcat`
//! binary killed with SIGKILL mid-download.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_kernelcat::KernelCatConfig;
use banger_proto::kernelcat::v1 as pb;
use banger_proto::kernelcat::v1::kernel_cat_client::KernelCatClient;
use banger_test_support::registry::Registry;
use common::*;
use tonic::Code;

/// Pushes `bundle` to `reference` as a one-layer artifact with oci-client.
async fn push_artifact(reference: &str, registry_addr: &str, bundle: Vec<u8>) {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    banger_proto::tls::install_crypto_provider();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![registry_addr.to_owned()]),
        ..Default::default()
    });
    let reference: oci_client::Reference = reference.parse().unwrap();
    let layer = ImageLayer::new(
        bundle,
        "application/vnd.banger.kernel.bundle.v1.tar+zstd".into(),
        None,
    );
    let config = Config::new(
        b"{}".to_vec(),
        "application/vnd.banger.kernel.config.v1+json".into(),
        None,
    );
    client
        .push(&reference, &[layer], config, &RegistryAuth::Anonymous, None)
        .await
        .expect("push the kernel bundle to the local registry");
}

#[tokio::test]
async fn pulls_a_bundle_hosted_in_an_oci_registry() {
    let registry = Registry::start();
    let bundle = fixture_bundle();
    let reference = format!("{}/banger/kernels:generic-6.12", registry.addr);
    push_artifact(&reference, &registry.addr, bundle.to_vec()).await;

    let server = HttpServer::start();
    let url = format!("oci://{reference}");
    serve_catalog(
        &server,
        vec![
            entry("oci-kernel", &url, &sha256(&bundle), bundle.len()),
            entry("oci-wrong", &url, &"1".repeat(64), bundle.len()),
            entry(
                "oci-absent",
                &format!("oci://{}/banger/kernels:nope", registry.addr),
                &sha256(&bundle),
                0,
            ),
        ],
    );
    let mut svc = Service::start(KernelCatConfig {
        insecure_registries: vec![registry.addr.clone()],
        ..settings(&server.url("/catalog.json"))
    })
    .await;

    let (progress, kernel) = pull(&mut svc.client, "oci-kernel", false).await;
    let kernel = kernel.expect("OCI pull succeeds");
    assert_eq!(
        kernel.vmlinux_sha256,
        banger_test_support::fixtures::kernel_sha256()
    );
    assert_eq!(kernel.source, format!("pull:{url}"));
    assert!(kernel.has_config);
    assert!(
        progress
            .iter()
            .any(|p| p.phase == "downloading" && p.done > 0)
            && progress.iter().any(|p| p.done == bundle.len() as u64),
        "{progress:?}"
    );

    // The registry offers another digest than the catalog promises.
    let (_, wrong) = pull(&mut svc.client, "oci-wrong", false).await;
    let status = wrong.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains(&"1".repeat(64)));
    assert!(status.message().contains(&sha256(&bundle)));

    let (_, absent) = pull(&mut svc.client, "oci-absent", false).await;
    let status = absent.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("banger/kernels:nope"),
        "{status:?}"
    );
    assert_eq!(svc.store_entries(), [".catalog-cache.json", "oci-kernel"]);
}

/// The real binary, serving on `home`.
struct Daemon(Child);

impl Daemon {
    fn start(home: &std::path::Path) -> Daemon {
        Self::start_with_env(home, &[])
    }

    fn start_with_env(home: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_banger-kernelcat"))
            .envs(env.iter().copied())
            .env_remove("no_proxy")
            .env_remove("NO_PROXY")
            .arg("--home")
            .arg(home)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start banger-kernelcat");
        Daemon(child)
    }

    fn kill9(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(socket: &std::path::Path) -> KernelCatClient<banger_proto::rpc::TracedChannel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = banger_proto::rpc::connect(socket).await {
            return KernelCatClient::new(channel);
        }
        assert!(Instant::now() < deadline, "banger-kernelcat did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_service_leaves_no_half_kernel_and_a_retry_succeeds() {
    const NAME: &str = "generic-6.12";
    let server = HttpServer::start();
    let bundle = fixture_bundle();
    let gate = Gate::default();
    server.route(
        "/k.tar.zst",
        Route::Gated(bundle.clone(), 256 * 1024, gate.clone()),
    );
    serve_catalog(
        &server,
        vec![entry(
            NAME,
            &server.url("/k.tar.zst"),
            &sha256(&bundle),
            bundle.len(),
        )],
    );
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("banger.toml"),
        format!(
            "[kernelcat]\ncatalog_url = \"{}\"\ncatalog_timeout_secs = 5\n",
            server.url("/catalog.json")
        ),
    )
    .unwrap();
    let socket = home.path().join("run/kernelcat.sock");
    let kernels = home.path().join("state/kernels");

    let mut daemon = Daemon::start(home.path());
    let mut client = connect(&socket).await;
    let mut stream = client
        .pull_kernel(pb::PullKernelRequest {
            name: NAME.into(),
            force: false,
            update: false,
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        if let Some(p) = stream.message().await.unwrap().unwrap().update
            && p.done > 0
        {
            break;
        }
    }
    daemon.kill9();
    gate.open();
    let left = store_entries(&kernels);
    assert!(
        left.iter().any(|n| n.starts_with(".staging-")) && !left.contains(&NAME.to_owned()),
        "killed mid-download: a staging dir, no kernel: {left:?}"
    );
    drop(stream);

    // Restart: leftovers are swept, and the retry succeeds.
    server.route("/k.tar.zst", Route::Ok(bundle.clone()));
    let _daemon = Daemon::start(home.path());
    let mut client = connect(&socket).await;
    assert_eq!(store_entries(&kernels), [".catalog-cache.json"]);
    let (_, kernel) = pull(&mut client, NAME, false).await;
    let kernel = kernel.expect("retry succeeds");
    assert_eq!(
        kernel.vmlinux_sha256,
        banger_test_support::fixtures::kernel_sha256()
    );
    assert_eq!(store_entries(&kernels), [".catalog-cache.json", NAME]);
}

/// An air-gapped site with only an HTTP proxy: the embedded `debian-6.12`
/// entry, no mirror configured, `http_proxy` set for the service. Every
/// archive request must go through the proxy (here a server on 127.0.0.1
/// answering for deb.debian.org from the real signed files).
#[tokio::test]
async fn the_debian_archive_is_reached_through_the_http_proxy() {
    let a = banger_test_support::debian_archive::bookworm_security();
    let proxy = HttpServer::start();
    for (path, data) in &a.files {
        // A proxied request names the absolute URL.
        proxy.route(
            &format!("http://deb.debian.org{path}"),
            Route::Ok(data.clone()),
        );
    }
    let home = tempfile::tempdir().unwrap();
    let guest = home.path().join("guest");
    std::fs::create_dir_all(&guest).unwrap();
    std::fs::write(guest.join("banger-agent"), b"agent").unwrap();
    std::fs::write(
        home.path().join("banger.toml"),
        format!(
            "[kernelcat]\nguest_dir = \"{}\"\narchive_timeout_secs = 5\n",
            guest.display()
        ),
    )
    .unwrap();
    let proxy_url = format!("http://{}", proxy.addr);
    let _daemon = Daemon::start_with_env(home.path(), &[("http_proxy", &proxy_url)]);
    let mut client = connect(&home.path().join("run/kernelcat.sock")).await;
    let mut stream = client
        .pull_kernel(pb::PullKernelRequest {
            name: "debian-6.12".into(),
            force: false,
            update: false,
        })
        .await
        .unwrap()
        .into_inner();
    let kernel = loop {
        match stream.message().await.expect("pull through the proxy") {
            Some(pb::PullKernelEvent {
                event: Some(pb::pull_kernel_event::Event::Done(k)),
                ..
            }) => break k,
            Some(_) => {}
            None => panic!("no result"),
        }
    };
    let d = kernel.debian.unwrap();
    assert_eq!(d.fetched_from, "http://deb.debian.org/debian-security");
    assert_eq!(
        proxy.hits(&format!("http://deb.debian.org{}", a.deb_path)),
        1,
        "the .deb came through the proxy"
    );
    assert_eq!(
        proxy.hits(&format!("http://deb.debian.org{}", a.dists("InRelease"))),
        1
    );
}
