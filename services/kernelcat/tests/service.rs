//! kernelcat in-process over its gRPC socket, against a real HTTP server on
//! 127.0.0.1: verified pulls, every failure leaving nothing behind,
//! concurrent pulls, cancelled pulls, the catalog, imports and holds.

mod common;

use std::sync::Arc;

use banger_kernelcat::KernelCatConfig;
use banger_proto::kernelcat::v1 as pb;
use common::*;
use tonic::Code;

const NAME: &str = "generic-6.12";
const CACHE: &str = ".catalog-cache.json";

/// Serves the fixture bundle as `NAME` and returns (server, service).
async fn with_fixture_catalog() -> (HttpServer, Service) {
    let server = HttpServer::start();
    let bundle = fixture_bundle();
    server.route("/generic.tar.zst", Route::Ok(bundle.clone()));
    serve_catalog(
        &server,
        vec![entry(
            NAME,
            &server.url("/generic.tar.zst"),
            &sha256(&bundle),
            bundle.len(),
        )],
    );
    let service = Service::start(settings(&server.url("/catalog.json"))).await;
    (server, service)
}

#[tokio::test]
async fn pull_verifies_unpacks_lists_and_resolves() {
    let (server, mut svc) = with_fixture_catalog().await;
    let catalog = svc
        .client
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    // The remote entry beside the embedded Debian ones.
    assert_eq!(catalog.entries.len(), 3);
    let remote = catalog.entries.iter().find(|e| e.name == NAME).unwrap();
    assert!(!remote.pulled);
    assert!(catalog.hint.is_empty());
    assert_eq!(remote.origin, server.url("/catalog.json"));

    let (progress, kernel) = pull(&mut svc.client, NAME, false).await;
    let kernel = kernel.expect("pull succeeds");
    assert_eq!(
        kernel.vmlinux_sha256,
        banger_test_support::fixtures::kernel_sha256(),
        "the stored vmlinux is the fixture kernel"
    );
    assert_eq!(kernel.kernel_version, "6.12.117");
    assert_eq!(kernel.arch, "x86_64");
    assert_eq!(kernel.distro, "generic");
    assert!(kernel.has_config && !kernel.has_initrd);
    assert_eq!(
        kernel.source,
        format!("pull:{}", server.url("/generic.tar.zst"))
    );
    let phases: Vec<&str> = progress.iter().map(|p| p.phase.as_str()).collect();
    assert!(phases.contains(&"downloading"), "{phases:?}");
    assert!(phases.contains(&"unpacking"), "{phases:?}");
    let bundle_len = fixture_bundle().len() as u64;
    assert!(
        progress
            .iter()
            .any(|p| p.done == bundle_len && p.total == bundle_len),
        "progress reports bytes and total"
    );

    // Listed, marked pulled, resolvable to real files.
    let list = svc
        .client
        .list_kernels(pb::ListKernelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.kernels.len(), 1);
    assert!(list.kernels[0].total_size > kernel.vmlinux_size);
    let catalog = svc
        .client
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        catalog
            .entries
            .iter()
            .find(|e| e.name == NAME)
            .unwrap()
            .pulled
    );
    let resolved = svc
        .client
        .resolve_kernel(pb::ResolveKernelRequest {
            name: NAME.into(),
            holder: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        std::path::Path::new(&resolved.vmlinux_path).is_file(),
        "{resolved:?}"
    );
    assert!(
        resolved
            .vmlinux_path
            .starts_with(&*svc.kernels().to_string_lossy())
    );
    assert_eq!(resolved.initrd_path, "");
    assert_eq!(svc.store_entries(), [CACHE, NAME]);

    // Existing kernels are replaced only with force.
    let (_, again) = pull(&mut svc.client, NAME, false).await;
    let status = again.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("--force"));
    let (_, forced) = pull(&mut svc.client, NAME, true).await;
    assert_eq!(forced.unwrap().vmlinux_sha256, kernel.vmlinux_sha256);
    assert_eq!(server.hits("/generic.tar.zst"), 2);
    assert_eq!(svc.store_entries(), [CACHE, NAME], "no staging dirs left");

    // Unknown names and invalid names.
    let (_, missing) = pull(&mut svc.client, "nope", false).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    let (_, invalid) = pull(&mut svc.client, "../etc", false).await;
    assert_eq!(invalid.unwrap_err().code(), Code::InvalidArgument);
    let status = svc
        .client
        .resolve_kernel(pb::ResolveKernelRequest {
            name: "absent".into(),
            holder: "vm-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// Every way a pull can fail: the error says what happened and the store
/// holds nothing afterwards (only the catalog cache).
#[tokio::test]
async fn failed_pulls_say_why_and_leave_nothing() {
    let server = HttpServer::start();
    let good = fixture_bundle();
    let good_sha = sha256(&good);
    let crafted = |name: &str, members: &[Member]| {
        let data = Arc::new(tar_zst(members));
        let path = format!("/{name}.tar.zst");
        server.route(&path, Route::Ok(data.clone()));
        entry(name, &server.url(&path), &sha256(&data), data.len())
    };
    let zeros = vec![0u8; 3 << 20];
    let mut entries = vec![
        crafted(
            "escape",
            &[Member::File("vmlinux", b"k"), Member::File("../evil", b"x")],
        ),
        crafted("absolute", &[Member::File("/tmp/banger-kc-evil", b"x")]),
        crafted(
            "symlink",
            &[Member::Symlink("vmlinux", "../../../../etc/passwd")],
        ),
        crafted("novmlinux", &[Member::File("bzImage", b"k")]),
        crafted("toolarge", &[Member::File("vmlinux", &zeros)]),
    ];
    server.route("/good.tar.zst", Route::Ok(good.clone()));
    let wrong_sha = "0".repeat(64);
    entries.push(entry("badsha", &server.url("/good.tar.zst"), &wrong_sha, 0));
    entries.push(entry(
        "missing",
        &server.url("/missing.tar.zst"),
        &good_sha,
        0,
    ));
    server.route("/error.tar.zst", Route::Status(500));
    entries.push(entry("error", &server.url("/error.tar.zst"), &good_sha, 0));
    server.route(
        "/cut.tar.zst",
        Route::Truncate(good.clone(), good.len() / 2),
    );
    entries.push(entry("cut", &server.url("/cut.tar.zst"), &good_sha, 0));
    serve_catalog(&server, entries);
    let mut svc = Service::start(KernelCatConfig {
        max_unpacked_bytes: 2 << 20,
        ..settings(&server.url("/catalog.json"))
    })
    .await;

    let cases: &[(&str, Code, &[&str])] = &[
        ("escape", Code::FailedPrecondition, &["../evil", "escapes"]),
        ("absolute", Code::FailedPrecondition, &["escapes"]),
        ("symlink", Code::FailedPrecondition, &["points outside"]),
        (
            "novmlinux",
            Code::FailedPrecondition,
            &["no regular file `vmlinux`"],
        ),
        ("toolarge", Code::ResourceExhausted, &["max_unpacked_bytes"]),
        (
            "badsha",
            Code::DataLoss,
            &[&wrong_sha, &good_sha, "/good.tar.zst"],
        ),
        ("missing", Code::Unavailable, &["404", "/missing.tar.zst"]),
        ("error", Code::Unavailable, &["500", "/error.tar.zst"]),
        ("cut", Code::DataLoss, &["truncated", "/cut.tar.zst"]),
    ];
    // The big fixture bundle exceeds the 2 MiB cap as a download too, so
    // the digest and truncation cases run on a service with the default cap.
    let mut big = Service::start(settings(&server.url("/catalog.json"))).await;
    for (name, code, needles) in cases {
        let svc = if ["badsha", "cut"].contains(name) {
            &mut big
        } else {
            &mut svc
        };
        let (_, result) = pull(&mut svc.client, name, false).await;
        let status = result.expect_err(name);
        assert_eq!(status.code(), *code, "{name}: {status:?}");
        for needle in *needles {
            assert!(
                status.message().contains(needle),
                "{name}: {:?} does not mention {needle:?}",
                status.message()
            );
        }
        assert_eq!(svc.store_entries(), [CACHE], "{name} left something behind");
        assert!(
            store_entries(svc.dir.path())
                .iter()
                .all(|n| n == "state" || n == "run"),
            "{name} wrote outside the store"
        );
    }
    assert!(!std::path::Path::new("/tmp/banger-kc-evil").exists());
}

#[tokio::test]
async fn concurrent_pulls_download_once() {
    let server = HttpServer::start();
    let bundle = fixture_bundle();
    let gate = Gate::default();
    server.route(
        "/slow.tar.zst",
        Route::Gated(bundle.clone(), 64 * 1024, gate.clone()),
    );
    serve_catalog(
        &server,
        vec![entry(
            NAME,
            &server.url("/slow.tar.zst"),
            &sha256(&bundle),
            bundle.len(),
        )],
    );
    let svc = Service::start(settings(&server.url("/catalog.json"))).await;

    // First pull: in flight, held at the gate.
    let mut first = svc.client.clone();
    let a = tokio::spawn(async move { pull(&mut first, NAME, false).await });
    eventually("the first pull is downloading", || {
        server.sent("/slow.tar.zst") > 0
    })
    .await;
    // Second pull joins: its first event arrives while the download is
    // still held, so it is attached to the same job.
    let mut second = svc.client.clone();
    let mut stream = second
        .pull_kernel(pb::PullKernelRequest {
            name: NAME.into(),
            force: false,
            update: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first_event = stream.message().await.unwrap().unwrap();
    assert!(first_event.update.is_some(), "{first_event:?}");
    gate.open();
    let b = loop {
        match stream.message().await.unwrap().unwrap().event {
            Some(pb::pull_kernel_event::Event::Done(k)) => break k,
            _ => continue,
        }
    };
    let (_, a) = a.await.unwrap();
    let a = a.unwrap();
    assert_eq!(a, b, "both callers get the same kernel");
    assert_eq!(server.hits("/slow.tar.zst"), 1, "downloaded once");
    assert_eq!(svc.store_entries(), [CACHE, NAME]);
}

#[tokio::test]
/// A pull is shared work (proto/README.md, "Long operations and
/// cancellation"): a client that goes away mid-download stops nothing; the
/// next caller joins the same download and gets the kernel.
async fn a_vanished_client_leaves_the_pull_running_for_the_next_caller() {
    let server = HttpServer::start();
    let bundle = fixture_bundle();
    let gate = Gate::default();
    server.route(
        "/slow.tar.zst",
        Route::Gated(bundle.clone(), 64 * 1024, gate.clone()),
    );
    serve_catalog(
        &server,
        vec![entry(
            NAME,
            &server.url("/slow.tar.zst"),
            &sha256(&bundle),
            bundle.len(),
        )],
    );
    let mut svc = Service::start(settings(&server.url("/catalog.json"))).await;
    let mut stream = svc
        .client
        .pull_kernel(pb::PullKernelRequest {
            name: NAME.into(),
            force: false,
            update: false,
        })
        .await
        .unwrap()
        .into_inner();
    // Wait until bytes have landed in the staging dir.
    loop {
        if let Some(p) = stream.message().await.unwrap().unwrap().update
            && p.done > 0
        {
            break;
        }
    }
    assert!(
        svc.store_entries()
            .iter()
            .any(|n| n.starts_with(".staging-")),
        "the download is staged: {:?}",
        svc.store_entries()
    );
    drop(stream); // the client goes away (Ctrl-C)
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        svc.store_entries()
            .iter()
            .any(|n| n.starts_with(".staging-")),
        "the download goes on without its client: {:?}",
        svc.store_entries()
    );
    // A second caller joins the pull still held at the gate…
    let mut second = svc.client.clone();
    let joined = tokio::spawn(async move { pull(&mut second, NAME, false).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !joined.is_finished(),
        "the joiner waits for the held download"
    );
    gate.open();
    // …and gets the kernel of the one download.
    let (progress, kernel) = joined.await.unwrap();
    kernel.expect("the pull the first client left finishes");
    assert!(!progress.is_empty(), "the joiner sees the pull's progress");
    assert_eq!(server.hits("/slow.tar.zst"), 1, "downloaded once");
    assert_eq!(svc.store_entries(), [CACHE, NAME]);
}

#[tokio::test]
async fn catalog_empty_hint_and_unreachable_remote_falls_back_to_cache() {
    // Embedded catalog only: the Debian-archive kernels, no hint needed.
    let mut bare = Service::start(KernelCatConfig::default()).await;
    let listing = bare
        .client
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listing.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["debian-6.12", "debian-6.1"]);
    assert!(listing.entries.iter().all(|e| e.debian.is_some()));
    assert!(listing.warnings.is_empty(), "{:?}", listing.warnings);
    assert!(listing.hint.is_empty(), "{}", listing.hint);

    // A remote catalog: fetched and cached, then served from the cache
    // with a warning once the remote fails.
    let (server, mut svc) = with_fixture_catalog().await;
    let listing = svc
        .client
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listing.entries.len(), 3);
    assert!(listing.warnings.is_empty());
    server.route("/catalog.json", Route::Status(503));
    let listing = svc
        .client
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listing.entries.len(), 3, "served from the cache");
    assert_eq!(listing.warnings.len(), 1);
    assert!(listing.warnings[0].contains("unreachable"));
    assert!(listing.warnings[0].contains("503"));
    assert!(listing.warnings[0].contains("cached"));
    // Pulls work from the cached catalog too.
    let (_, kernel) = pull(&mut svc.client, NAME, false).await;
    kernel.unwrap();

    // A catalog that never ends is cut off at the cap (not read into
    // memory until the server gives up), and the cache still serves.
    server.route("/catalog.json", Route::Endless);
    let listing = svc
        .client
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listing.entries.len(), 3, "served from the cache");
    assert!(
        listing.warnings[0].contains("larger than 4194304 bytes"),
        "{:?}",
        listing.warnings
    );
    assert!(
        server.sent("/catalog.json") < 64 << 20,
        "{}",
        server.sent("/catalog.json")
    );
}

fn import_stream(
    header: pb::ImportKernelHeader,
    files: Vec<(pb::KernelFile, Vec<u8>)>,
) -> impl futures::Stream<Item = pb::ImportKernelRequest> {
    let mut messages = vec![pb::ImportKernelRequest {
        part: Some(pb::import_kernel_request::Part::Header(header)),
    }];
    for (file, data) in files {
        for chunk in data.chunks(1 << 20) {
            messages.push(pb::ImportKernelRequest {
                part: Some(pb::import_kernel_request::Part::Chunk(
                    pb::ImportKernelChunk {
                        file: file as i32,
                        data: chunk.to_vec(),
                    },
                )),
            });
        }
    }
    futures::stream::iter(messages)
}

#[tokio::test]
async fn import_streams_files_and_holds_block_delete() {
    let mut svc = Service::start(KernelCatConfig::default()).await;
    let vmlinux = std::fs::read(banger_test_support::fixtures::kernel_vmlinux()).unwrap();
    let config = std::fs::read(banger_test_support::fixtures::kernel_config()).unwrap();

    // Sizes that do not match the data: refused, nothing stored.
    let status = svc
        .client
        .import_kernel(import_stream(
            pb::ImportKernelHeader {
                name: "mine".into(),
                vmlinux_size: vmlinux.len() as u64 + 1,
                ..Default::default()
            },
            vec![(pb::KernelFile::Vmlinux, vmlinux.clone())],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ended after"), "{status:?}");
    assert!(svc.store_entries().is_empty());

    // The real import: version and arch detected from the vmlinux.
    let kernel = svc
        .client
        .import_kernel(import_stream(
            pb::ImportKernelHeader {
                name: "mine".into(),
                vmlinux_size: vmlinux.len() as u64,
                config_size: config.len() as u64,
                ..Default::default()
            },
            vec![
                (pb::KernelFile::Vmlinux, vmlinux.clone()),
                (pb::KernelFile::Config, config.clone()),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kernel.source, "import");
    assert_eq!(kernel.kernel_version, "6.12.117");
    assert_eq!(kernel.arch, "x86_64");
    assert_eq!(
        kernel.vmlinux_sha256,
        banger_test_support::fixtures::kernel_sha256()
    );
    assert!(kernel.has_config);
    let shown = svc
        .client
        .get_kernel(pb::GetKernelRequest {
            name: "mine".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown, kernel);

    // A VM holds it: delete is refused, naming the holder.
    svc.client
        .resolve_kernel(pb::ResolveKernelRequest {
            name: "mine".into(),
            holder: "vm-42".into(),
        })
        .await
        .unwrap();
    let status = svc
        .client
        .delete_kernel(pb::DeleteKernelRequest {
            name: "mine".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("vm-42"));
    let held = svc
        .client
        .get_kernel(pb::GetKernelRequest {
            name: "mine".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.holders, ["vm-42"]);
    for _ in 0..2 {
        svc.client
            .release_kernel(pb::ReleaseKernelRequest {
                name: "mine".into(),
                holder: "vm-42".into(),
            })
            .await
            .unwrap();
    }
    svc.client
        .delete_kernel(pb::DeleteKernelRequest {
            name: "mine".into(),
        })
        .await
        .unwrap();
    let status = svc
        .client
        .get_kernel(pb::GetKernelRequest {
            name: "mine".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(svc.store_entries().is_empty());
}

/// The kernel build script's dry run: the fragment parses, every required
/// option is counted, and nothing is built or installed.
#[test]
fn build_script_check_mode_validates_the_fragment() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let source = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(repo.join("scripts/make-generic-kernel.sh"))
        .args(["--check", "--source"])
        .arg(source.path())
        .output()
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fragment requires"), "{stderr}");
    assert!(stderr.contains("check done; nothing built"), "{stderr}");
    let fragment = std::fs::read_to_string(repo.join("configs/kernel/microvm.fragment")).unwrap();
    for option in [
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
        "CONFIG_VIRTIO_VSOCKETS=y",
        "CONFIG_IP_PNP=y",
        "CONFIG_PVH=y",
        "CONFIG_SERIAL_8250_CONSOLE=y",
        "CONFIG_DEVTMPFS_MOUNT=y",
        "# CONFIG_MODULES is not set",
    ] {
        assert!(
            fragment.lines().any(|l| l == option),
            "fragment lacks {option}"
        );
    }
}
