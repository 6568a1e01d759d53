//! Debian-archive kernels against a local archive built from Debian's real
//! signed files (`banger_test_support::debian_archive`), served on
//! 127.0.0.1: the real signature chain verifies, the real `.deb` becomes a
//! vmlinux + generated initramfs, and tampered copies of each file are
//! refused with nothing half-installed and the stored kernel untouched.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use banger_kernelcat::archive::{ArchiveTrust, DEBIAN_PINNED_FINGERPRINTS};
use banger_kernelcat::{KernelCatConfig, initramfs};
use banger_proto::kernelcat::v1 as pb;
use banger_test_support::debian_archive::{
    self, DebianArchive, ThrowawayKey, replace_field, sha256_hex,
};
use common::{HttpServer, Route, Service, pull, serve_catalog};

const NAME: &str = "deb-test";
const AGENT: &[u8] = b"\x7fELF pretend static banger-agent\n";

/// The archive's files as routes on a fresh server.
fn serve(files: &BTreeMap<String, Route>) -> HttpServer {
    let server = HttpServer::start();
    for (path, route) in files {
        server.route(path, route.clone());
    }
    server
}

fn routes(a: &DebianArchive) -> BTreeMap<String, Route> {
    a.files
        .iter()
        .map(|(p, d)| (p.clone(), Route::Ok(d.clone())))
        .collect()
}

fn entry(name: &str, archive_url: &str, a: &DebianArchive) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "distro": "debian",
        "arch": "x86_64",
        "description": "test",
        "debian": {
            "archive_url": archive_url,
            "suite": a.suite,
            "component": "main",
            "arch": "amd64",
            "package": a.meta_package,
        }
    })
}

fn guest_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("banger-agent"), AGENT).unwrap();
    dir
}

fn settings(catalog: &HttpServer, guest: &tempfile::TempDir) -> KernelCatConfig {
    KernelCatConfig {
        guest_dir: Some(guest.path().to_path_buf()),
        archive_timeout_secs: 2,
        ..common::settings(&catalog.url("/catalog.json"))
    }
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Pulls and checks what a Debian kernel must look like.
fn check_kernel(service: &Service, k: &pb::Kernel, a: &DebianArchive) {
    assert!(k.has_initrd && k.has_config, "{k:?}");
    let d = k.debian.as_ref().expect("debian facts");
    assert_eq!(d.package, a.kernel_package);
    assert_eq!(d.version, a.kernel_version);
    assert_eq!(d.meta_package, a.meta_package);
    assert!(
        DEBIAN_PINNED_FINGERPRINTS.contains(&d.signing_key.as_str()),
        "{}",
        d.signing_key
    );
    assert_eq!(d.deb_sha256, sha256_hex(&a.deb));
    let kver = a
        .kernel_package
        .strip_prefix("linux-image-")
        .unwrap()
        .to_owned();
    assert_eq!(k.kernel_version, kver);
    let dir = service.kernels().join(&k.name);
    let vmlinux = std::fs::read(dir.join("vmlinux")).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF", "an ELF vmlinux");
    assert_eq!(sha256_hex(&vmlinux), k.vmlinux_sha256);
    let config = std::fs::read_to_string(dir.join("config")).unwrap();
    assert!(config.contains("CONFIG_VIRTIO_BLK=m"));
    let initrd = std::fs::read(dir.join("initrd")).unwrap();
    let members = initramfs::read_cpio(&gunzip(&initrd)).expect("a newc cpio");
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    let get = |n: &str| {
        members
            .iter()
            .find(|m| m.0 == n)
            .unwrap_or_else(|| panic!("{n} in {names:?}"))
    };
    assert_eq!(get("init").2, AGENT, "/init is the agent");
    assert_eq!(get("init").1, 0o100755);
    for d in ["dev", "proc", "sys", "newroot", "run", "tmp"] {
        assert_eq!(get(d).1, 0o040755, "{d}");
    }
    let facts: initramfs::Facts =
        serde_json::from_slice(&get("etc/banger/initramfs.json").2).unwrap();
    assert_eq!(
        facts,
        initramfs::Facts {
            kernel_version: kver.clone(),
            ip_pnp: false
        }
    );
    let list = String::from_utf8(get("etc/banger/modules").2.clone()).unwrap();
    let order: Vec<String> = list
        .lines()
        .map(|l| {
            l.rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".ko.xz")
                .to_owned()
        })
        .collect();
    assert_eq!(
        order,
        [
            "virtio_mmio",
            "virtio_blk",
            "failover",
            "net_failover",
            "virtio_net",
            "vsock",
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        ],
        "every needed module, dependencies first"
    );
    for line in list.lines() {
        let inside = line.trim_start_matches('/');
        assert!(inside.starts_with(&format!("lib/modules/{kver}/kernel/")));
        assert_eq!(get(inside).1, 0o100644);
    }
    // Exactly the contract's files: the modules, /init, two config files,
    // the six dirs and the modules' parent dirs.
    let files: Vec<&str> = members
        .iter()
        .filter(|m| m.1 & 0o170000 == 0o100000)
        .map(|m| m.0.as_str())
        .collect();
    assert_eq!(files.len(), 8 + 3, "{files:?}");
    assert_eq!(d.modules, list.lines().collect::<Vec<_>>());
}

#[tokio::test]
async fn pulls_the_embedded_entry_through_a_mirror_and_the_signed_chain() {
    let a = debian_archive::bookworm_security();
    let archive = serve(&routes(&a));
    let catalog = HttpServer::start();
    serve_catalog(&catalog, vec![]);
    let guest = guest_dir();
    // The embedded debian-6.12 entry, its archive mirrored on 127.0.0.1:
    // the real archive is never contacted.
    let mut s = settings(&catalog, &guest);
    s.archive_mirrors.insert(
        "http://deb.debian.org/debian-security".into(),
        vec![archive.url("/debian-security")],
    );
    let mut service = Service::start(s).await;
    let listing = service
        .client
        .list_catalog(pb::ListCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listing.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&"debian-6.12") && names.contains(&"debian-6.1"));
    let (progress, result) = pull(&mut service.client, "debian-6.12", false).await;
    let k = result.expect("pull debian-6.12");
    check_kernel(&service, &k, &a);
    let downloading: Vec<_> = progress
        .iter()
        .filter(|p| p.phase == "downloading")
        .collect();
    assert!(!downloading.is_empty(), "{progress:?}");
    assert!(downloading.iter().all(|p| p.total == a.deb.len() as u64));
    assert_eq!(
        archive.hits(&a.by_hash_path()),
        1,
        "the index is fetched by hash"
    );
    assert_eq!(archive.hits(&a.packages_path()), 0);
    let d = k.debian.as_ref().unwrap();
    assert_eq!(d.archive_url, "http://deb.debian.org/debian-security");
    assert_eq!(d.fetched_from, archive.url("/debian-security"));
    // GetKernel and ResolveKernel say the same.
    let got = service
        .client
        .get_kernel(pb::GetKernelRequest {
            name: "debian-6.12".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.debian, k.debian);
    let resolved = service
        .client
        .resolve_kernel(pb::ResolveKernelRequest {
            name: "debian-6.12".into(),
            holder: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resolved.initrd_path.ends_with("debian-6.12/initrd"));

    // A mirror made from apt's lists has only the plain Packages: by-hash
    // and the compressed ones answer 404, the plain path is used.
    archive.route(&a.by_hash_path(), Route::Status(404));
    let (_, result) = pull(&mut service.client, "debian-6.12", true).await;
    result.expect("pull from a plain-Packages mirror");
    assert_eq!(archive.hits(&a.packages_path()), 1);
    assert_eq!(
        service.store_entries(),
        [".catalog-cache.json", "debian-6.12"],
        "nothing left over"
    );
}

#[tokio::test]
async fn a_stalled_mirror_gives_way_to_the_next_and_a_stalled_archive_is_an_error() {
    let a = debian_archive::bookworm_security();
    let good = serve(&routes(&a));
    let stalled = HttpServer::start();
    stalled.route(&a.dists("InRelease"), Route::Stall);
    let catalog = HttpServer::start();
    let guest = guest_dir();
    // Mirrors: stalled, then good; the archive itself is a closed port.
    let upstream = "http://127.0.0.1:1/debian-security";
    serve_catalog(
        &catalog,
        vec![
            entry(NAME, upstream, &a),
            entry("stalled", &stalled.url("/debian-security"), &a),
        ],
    );
    let mut s = settings(&catalog, &guest);
    s.archive_mirrors.insert(
        upstream.into(),
        vec![
            stalled.url("/debian-security"),
            good.url("/debian-security"),
        ],
    );
    let mut service = Service::start(s).await;
    let (_, result) = pull(&mut service.client, NAME, false).await;
    let k = result.expect("the second mirror serves it");
    assert_eq!(k.debian.unwrap().fetched_from, good.url("/debian-security"));
    assert_eq!(stalled.hits(&a.dists("InRelease")), 1);
    let started = std::time::Instant::now();
    let (_, result) = pull(&mut service.client, "stalled", false).await;
    let err = result.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("InRelease"), "{}", err.message());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(service.store_entries(), [".catalog-cache.json", NAME]);
}

/// A `.deb` (ar) with the given data.tar members.
fn make_deb(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, *data).unwrap();
    }
    let data = tar.into_inner().unwrap();
    let mut ar = b"!<arch>\n".to_vec();
    for (name, body) in [("debian-binary", &b"2.0\n"[..]), ("data.tar", &data[..])] {
        ar.extend_from_slice(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                name,
                0,
                0,
                0,
                100644,
                body.len()
            )
            .as_bytes(),
        );
        ar.extend_from_slice(body);
        if !body.len().is_multiple_of(2) {
            ar.push(b'\n');
        }
    }
    ar
}

/// The archive serving `packages` as its index, with InRelease rewritten
/// for it and signed by `key`.
fn resigned(a: &DebianArchive, key: &ThrowawayKey, packages: Vec<u8>) -> BTreeMap<String, Route> {
    let release = a
        .release_text
        .replace(&sha256_hex(&a.packages), &sha256_hex(&packages))
        .replace(
            &format!("{} main/binary-amd64/Packages\n", a.packages.len()),
            &format!("{} main/binary-amd64/Packages\n", packages.len()),
        );
    let mut r = routes(a);
    r.remove(&a.by_hash_path());
    r.insert(
        a.dists("InRelease"),
        Route::Ok(Arc::new(key.clearsign(&release))),
    );
    r.insert(a.packages_path(), Route::Ok(Arc::new(packages)));
    r
}

/// The archive with the kernel package's `.deb` replaced by `deb`: the
/// Packages stanza and InRelease are rewritten and signed by `key`.
fn with_deb(a: &DebianArchive, key: &ThrowawayKey, deb: Vec<u8>) -> BTreeMap<String, Route> {
    let old_sha = sha256_hex(&a.deb);
    let packages = String::from_utf8(a.packages.to_vec())
        .unwrap()
        .replace(&old_sha, &sha256_hex(&deb))
        .replace(
            &format!("Size: {}\nSHA256: {}", a.deb.len(), sha256_hex(&deb)),
            &format!("Size: {}\nSHA256: {}", deb.len(), sha256_hex(&deb)),
        );
    let mut r = resigned(a, key, packages.into_bytes());
    r.insert(a.deb_path.clone(), Route::Ok(Arc::new(deb)));
    r
}

/// The real package's boot files, with the config changed by `edit`.
fn boot_files(a: &DebianArchive) -> (String, Vec<u8>, String) {
    let kernel = banger_kernelcat::deb::read_deb("test", &a.deb[..], 1 << 30).unwrap();
    (kernel.kver, kernel.vmlinuz, kernel.config)
}

/// A bad-input case: its name, the archive's routes, the trust override,
/// the expected code and words the message must contain.
type Case = (
    &'static str,
    BTreeMap<String, Route>,
    Option<ArchiveTrust>,
    tonic::Code,
    &'static str,
);

#[tokio::test]
async fn tampered_archives_are_refused_and_leave_the_stored_kernel_untouched() {
    let a = debian_archive::bookworm_security();
    let key = ThrowawayKey::new();
    let good = routes(&a);
    let flip = |data: &[u8], at: usize| {
        let mut d = data.to_vec();
        d[at] ^= 0x01;
        Arc::new(d)
    };
    let (kver, vmlinuz, config) = boot_files(&a);
    let no_blk = config.replace("CONFIG_VIRTIO_BLK=m\n", "# CONFIG_VIRTIO_BLK is not set\n");
    let vmlinuz_path = format!("./boot/vmlinuz-{kver}");
    let config_path = format!("./boot/config-{kver}");

    // (case, routes, trust override, expected code, words in the message)
    let signed_text = a.release_text.clone();
    let inrelease = a.files[&a.dists("InRelease")].clone();
    let mut cases: Vec<Case> = Vec::new();
    let mut r = good.clone();
    let text = String::from_utf8(inrelease.to_vec()).unwrap();
    r.insert(
        a.dists("InRelease"),
        Route::Ok(Arc::new(
            text.replace("Security Updates", "Security Updatez")
                .into_bytes(),
        )),
    );
    cases.push((
        "bad signature",
        r,
        None,
        tonic::Code::FailedPrecondition,
        "BAD",
    ));
    let mut r = good.clone();
    r.insert(
        a.dists("InRelease"),
        Route::Ok(Arc::new(key.clearsign(&signed_text))),
    );
    let both = ArchiveTrust {
        keyrings: vec![debian_archive::KEYRING.into(), key.keyring.clone()],
        ..ArchiveTrust::default()
    };
    cases.push((
        "unpinned key",
        r,
        Some(both.clone()),
        tonic::Code::FailedPrecondition,
        "not pinned",
    ));
    let mine = ArchiveTrust {
        keyrings: vec![key.keyring.clone()],
        fingerprints: vec![key.fingerprint.clone()],
    };
    let mut r = good.clone();
    r.insert(
        a.dists("InRelease"),
        Route::Ok(Arc::new(key.clearsign(&replace_field(
            &signed_text,
            "Valid-Until",
            "Sat, 01 Jan 2000 00:00:00 UTC",
        )))),
    );
    cases.push((
        "expired Valid-Until",
        r,
        Some(mine.clone()),
        tonic::Code::FailedPrecondition,
        "expired 2000-01-01",
    ));
    let mut r = good.clone();
    let other = replace_field(&signed_text, "Codename", "trixie-security");
    r.insert(
        a.dists("InRelease"),
        Route::Ok(Arc::new(key.clearsign(&replace_field(
            &other,
            "Suite",
            "stable-security",
        )))),
    );
    cases.push((
        "another suite",
        r,
        Some(mine.clone()),
        tonic::Code::FailedPrecondition,
        "trixie-security",
    ));
    let mut r = good.clone();
    r.insert(a.by_hash_path(), Route::Ok(flip(&a.packages, 100)));
    cases.push((
        "Packages hash mismatch",
        r,
        None,
        tonic::Code::DataLoss,
        "SHA-256 mismatch",
    ));
    let mut r = good.clone();
    r.insert(a.by_hash_path(), Route::Endless);
    cases.push((
        "oversized index",
        r,
        None,
        tonic::Code::DataLoss,
        "more than the",
    ));
    let mut r = good.clone();
    r.insert(a.deb_path.clone(), Route::Ok(flip(&a.deb, a.deb.len() / 2)));
    cases.push((
        ".deb hash mismatch",
        r,
        None,
        tonic::Code::DataLoss,
        "SHA-256 mismatch",
    ));
    let mut r = good.clone();
    let mut longer = a.deb.to_vec();
    longer.extend_from_slice(b"extra");
    r.insert(a.deb_path.clone(), Route::Ok(Arc::new(longer)));
    cases.push((
        ".deb size mismatch",
        r,
        None,
        tonic::Code::DataLoss,
        "more than the",
    ));
    let mut r = good.clone();
    r.insert(
        a.deb_path.clone(),
        Route::Truncate(a.deb.clone(), a.deb.len() / 3),
    );
    cases.push((
        "truncated .deb",
        r,
        None,
        tonic::Code::DataLoss,
        "truncated",
    ));
    let mut r = good.clone();
    r.insert(a.deb_path.clone(), Route::Endless);
    cases.push((
        "oversized .deb",
        r,
        None,
        tonic::Code::DataLoss,
        "more than the",
    ));
    cases.push((
        ".deb without a kernel",
        with_deb(&a, &key, make_deb(&[("./usr/share/doc/x/README", b"hi")])),
        Some(mine.clone()),
        tonic::Code::FailedPrecondition,
        "no boot/vmlinuz",
    ));
    cases.push((
        "config missing an option",
        with_deb(
            &a,
            &key,
            make_deb(&[(&vmlinuz_path, &vmlinuz), (&config_path, no_blk.as_bytes())]),
        ),
        Some(mine.clone()),
        tonic::Code::FailedPrecondition,
        "CONFIG_VIRTIO_BLK",
    ));

    // One good kernel of the name first; every bad pull is forced over it.
    let guest = guest_dir();
    let catalog = HttpServer::start();
    let archive = serve(&good);
    serve_catalog(
        &catalog,
        vec![entry(NAME, &archive.url("/debian-security"), &a)],
    );
    let mut service = Service::start_with(settings(&catalog, &guest), Some(both)).await;
    let (_, result) = pull(&mut service.client, NAME, false).await;
    let before = result.expect("the good pull");
    let before_entries = service.store_entries();
    let vmlinux = std::fs::read(service.kernels().join(NAME).join("vmlinux")).unwrap();
    drop(service);

    for (what, routes, trust, code, words) in cases {
        let archive = serve(&routes);
        let catalog = HttpServer::start();
        serve_catalog(
            &catalog,
            vec![entry(NAME, &archive.url("/debian-security"), &a)],
        );
        // The same store, reopened with this case's trust.
        let mut service = Service::start_with(settings(&catalog, &guest), trust).await;
        // Seed it with the good kernel (copied, as a previous pull left it).
        let root = service.kernels();
        copy_dir(&before_kernel_dir(&before, &vmlinux), &root.join(NAME));
        let (_, result) = pull(&mut service.client, NAME, true).await;
        let err = result.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            err.message().contains(words),
            "{what}: {:?} should say {words:?}",
            err.message()
        );
        assert_eq!(
            service.store_entries(),
            before_entries,
            "{what}: nothing half-installed"
        );
        let now = service
            .client
            .get_kernel(pb::GetKernelRequest { name: NAME.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            now.vmlinux_sha256, before.vmlinux_sha256,
            "{what}: untouched"
        );
        assert_eq!(now.created_unix, before.created_unix, "{what}: untouched");
        if what.starts_with("oversized") {
            let path = if what.contains("index") {
                a.by_hash_path()
            } else {
                a.deb_path.clone()
            };
            let sent = archive.sent(&path);
            assert!(
                sent < a.deb.len() + (64 << 20),
                "{what}: capped while streaming, sent {sent}"
            );
        }
    }
}

/// A directory holding the good kernel's files, rebuilt from its record.
fn before_kernel_dir(before: &pb::Kernel, vmlinux: &[u8]) -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinux"), vmlinux).unwrap();
        let manifest = serde_json::json!({
            "name": before.name,
            "distro": before.distro,
            "arch": before.arch,
            "kernel_version": before.kernel_version,
            "vmlinux_sha256": before.vmlinux_sha256,
            "vmlinux_size": before.vmlinux_size,
            "has_initrd": false,
            "has_config": false,
            "source": before.source,
            "created_unix": before.created_unix,
        });
        std::fs::write(
            dir.path().join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        dir
    });
    dir.path().to_path_buf()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

async fn pull_update(
    client: &mut banger_proto::kernelcat::v1::kernel_cat_client::KernelCatClient<
        banger_proto::rpc::TracedChannel,
    >,
    name: &str,
) -> Result<pb::Kernel, tonic::Status> {
    let mut stream = client
        .pull_kernel(pb::PullKernelRequest {
            name: name.into(),
            force: false,
            update: true,
        })
        .await?
        .into_inner();
    loop {
        match stream.message().await? {
            Some(pb::PullKernelEvent {
                event: Some(pb::pull_kernel_event::Event::Done(k)),
                ..
            }) => return Ok(k),
            Some(_) => {}
            None => panic!("the pull ended without a result"),
        }
    }
}

async fn resolve(service: &mut Service, holder: &str) -> std::path::PathBuf {
    service
        .client
        .resolve_kernel(pb::ResolveKernelRequest {
            name: NAME.into(),
            holder: holder.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .vmlinux_path
        .into()
}

fn inode(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

#[tokio::test]
async fn update_switches_to_the_newest_package_and_holders_keep_theirs() {
    let a = debian_archive::bookworm_security();
    let key = ThrowawayKey::new();
    let mine = ArchiveTrust {
        keyrings: vec![key.keyring.clone()],
        fingerprints: vec![key.fingerprint.clone()],
    };
    let archive = serve(&resigned(&a, &key, a.packages.to_vec()));
    let catalog = HttpServer::start();
    serve_catalog(
        &catalog,
        vec![entry(NAME, &archive.url("/debian-security"), &a)],
    );
    let guest = guest_dir();
    let mut service = Service::start_with(settings(&catalog, &guest), Some(mine)).await;
    let first = pull_update(&mut service.client, NAME)
        .await
        .expect("first pull");
    assert_eq!(first.debian.as_ref().unwrap().version, a.kernel_version);
    assert_eq!(first.debian.as_ref().unwrap().signing_key, key.fingerprint);
    // Nothing newer: the stored kernel is kept, the .deb not fetched again.
    let same = pull_update(&mut service.client, NAME).await.unwrap();
    assert_eq!(same.created_unix, first.created_unix);
    assert_eq!(archive.hits(&a.deb_path), 1);
    let held_old = resolve(&mut service, "vm-1").await;
    assert!(held_old.starts_with(service.kernels().join(".holds")));
    let old_inode = inode(&held_old);

    // A security update appears: a newer meta version and kernel package.
    let newer = "6.12.999-1~test";
    let filename = a.deb_path.trim_start_matches("/debian-security/");
    let mut packages = String::from_utf8(a.packages.to_vec()).unwrap();
    if !packages.ends_with("\n\n") {
        packages.push('\n');
    }
    packages.push_str(&format!(
        "Package: {meta}\nVersion: {newer}\nArchitecture: amd64\n\
         Depends: {k} (= {newer})\n\n\
         Package: {k}\nVersion: {newer}\nArchitecture: amd64\nFilename: {filename}\n\
         Size: {size}\nSHA256: {sha}\n",
        meta = a.meta_package,
        k = a.kernel_package,
        size = a.deb.len(),
        sha = sha256_hex(&a.deb),
    ));
    for (path, route) in resigned(&a, &key, packages.into_bytes()) {
        archive.route(&path, route);
    }
    let updated = pull_update(&mut service.client, NAME)
        .await
        .expect("update");
    assert_eq!(updated.debian.as_ref().unwrap().version, newer);
    assert_eq!(updated.holders, ["vm-1"], "the holder is still recorded");
    let current = service.kernels().join(NAME).join("vmlinux");
    assert_ne!(
        inode(&current),
        old_inode,
        "the name points at the new kernel"
    );
    // vm-1 keeps the files it was given, also when it resolves again; a
    // new VM gets the new kernel.
    assert_eq!(inode(&held_old), old_inode);
    assert_eq!(resolve(&mut service, "vm-1").await, held_old);
    let held_new = resolve(&mut service, "vm-2").await;
    assert_eq!(inode(&held_new), inode(&current));
    // Deleting waits for every version's holders.
    let err = service
        .client
        .delete_kernel(pb::DeleteKernelRequest { name: NAME.into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    for h in ["vm-1", "vm-2"] {
        service
            .client
            .release_kernel(pb::ReleaseKernelRequest {
                name: NAME.into(),
                holder: h.into(),
            })
            .await
            .unwrap();
    }
    assert!(!held_old.exists(), "released: the old files are gone");
    assert_eq!(service.store_entries(), [".catalog-cache.json", NAME]);
}

#[tokio::test]
async fn pulls_the_embedded_debian_6_1_from_bookworm() {
    let a = debian_archive::bookworm();
    let archive = serve(&routes(&a));
    let catalog = HttpServer::start();
    serve_catalog(&catalog, vec![]);
    let guest = guest_dir();
    let mut s = settings(&catalog, &guest);
    s.archive_mirrors.insert(
        "http://deb.debian.org/debian".into(),
        vec![archive.url("/debian")],
    );
    let mut service = Service::start(s).await;
    let (_, result) = pull(&mut service.client, "debian-6.1", false).await;
    let k = result.expect("pull debian-6.1");
    let d = k.debian.as_ref().unwrap();
    assert_eq!(
        (d.package.as_str(), d.version.as_str()),
        (a.kernel_package.as_str(), a.kernel_version.as_str())
    );
    assert_eq!(d.meta_package, "linux-image-cloud-amd64");
    assert!(DEBIAN_PINNED_FINGERPRINTS.contains(&d.signing_key.as_str()));
    assert!(k.kernel_version.starts_with("6.1."), "{}", k.kernel_version);
    assert!(k.has_initrd);
    let initrd = std::fs::read(service.kernels().join("debian-6.1/initrd")).unwrap();
    let members = initramfs::read_cpio(&gunzip(&initrd)).unwrap();
    let list = members
        .iter()
        .find(|m| m.0 == "etc/banger/modules")
        .map(|m| String::from_utf8(m.2.clone()).unwrap())
        .unwrap();
    assert_eq!(d.modules, list.lines().collect::<Vec<_>>());
    let config = std::fs::read_to_string(service.kernels().join("debian-6.1/config")).unwrap();
    for (option, m) in [
        ("VIRTIO_BLK", "virtio_blk"),
        ("VIRTIO_NET", "virtio_net"),
        ("VSOCKETS", "vsock"),
        ("VIRTIO_VSOCKETS", "vmw_vsock_virtio_transport"),
    ] {
        if config.contains(&format!("CONFIG_{option}=m\n")) {
            assert!(
                list.contains(&format!("/{m}.ko")),
                "{m} is loaded by the initramfs: {list}"
            );
        }
    }
    assert!(!list.is_empty());
}
