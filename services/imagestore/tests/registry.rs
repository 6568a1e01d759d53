//! The image store against a real `docker-registry` on 127.0.0.1, filled
//! with `skopeo` from OCI layouts these tests build: pulls through the gRPC
//! service, flattening equal to `umoci unpack`, multi-arch indexes, mirrors,
//! Basic auth, corrupt blobs and a registry dying mid-layer.

mod common;

use std::path::Path;
use std::process::Command;

use banger_imagestore::config::Ext4Writer;
use banger_proto::imagestore::v1 as pb;
use banger_test_support::registry::{Registry, RegistryAuth, push_with_skopeo};
use common::*;
use tar::EntryType;

fn req(reference: &str) -> pb::PullImageRequest {
    pb::PullImageRequest {
        reference: reference.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_pull_list_hold_delete_prune() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    registry.push(
        &layout(src.path(), "latest", &[gzip_layer(busybox_layer())]),
        "busybox:latest",
    );

    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[&registry.addr])), sock.path()).await;
    let reference = format!("{}/busybox:latest", registry.addr);
    let (events, image) = pull(
        &mut client,
        pb::PullImageRequest {
            kernel_ref: "generic-6.12".into(),
            ..req(&reference)
        },
    )
    .await;
    let image = image.unwrap();
    assert_eq!(image.name, "busybox-latest");
    assert_eq!(image.reference, reference);
    // A plain-HTTP registry is an explicit choice the image reports.
    assert_eq!(image.fetched_from, format!("http://{}", registry.addr));
    assert!(image.plain_http);
    assert_eq!(image.default_kernel, "generic-6.12");
    assert_eq!(image.platform, "linux/amd64");
    assert!(image.direct_boot);
    assert_eq!(image.layers.len(), 1);
    let guest = image.guest.clone().unwrap();
    assert!(guest.has_agent && !guest.has_systemd && !guest.has_ssh_server);
    assert_eq!(guest.os_id, "busybox");
    for phase in ["resolving", "downloading", "unpacking", "building", "done"] {
        assert!(
            events.iter().any(|e| e.phase == phase),
            "no {phase} event: {events:?}"
        );
    }

    // The ext4 holds the tree and the guest bits, and is clean.
    let resolved = client
        .resolve_image(pb::ResolveImageRequest {
            name: "busybox-latest".into(),
            holder: "vm-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let ext4 = Path::new(&resolved.ext4_path);
    assert_eq!(std::fs::metadata(ext4).unwrap().len(), image.size_bytes);
    assert_eq!(
        debugfs_cat(ext4, "/bin/busybox"),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        debugfs_cat(ext4, "/usr/local/bin/banger-agent"),
        b"fake banger-agent\n"
    );
    assert!(
        debugfs_stat(ext4, "/tmp").contains("Mode:  01777"),
        "{}",
        debugfs_stat(ext4, "/tmp")
    );
    assert!(
        debugfs_stat(
            ext4,
            "/etc/systemd/system/multi-user.target.wants/banger-agent.service"
        )
        .contains("Type: symlink")
    );
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(ext4)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    // Re-pull of the built digest: the same image, not rebuilt.
    let (_, again) = pull(&mut client, req(&reference)).await;
    assert_eq!(again.unwrap().created_unix, image.created_unix);
    let digest_ref = format!("{}/busybox@{}", registry.addr, image.digest);
    let (_, pinned) = pull(
        &mut client,
        pb::PullImageRequest {
            name: "busybox-latest".into(),
            ..req(&digest_ref)
        },
    )
    .await;
    assert_eq!(pinned.unwrap().created_unix, image.created_unix);
    // Pull if missing (`vm run`): a stored image of the derived name is the
    // answer as it is, and no registry is asked (this one is not there).
    let (events, kept) = pull(
        &mut client,
        pb::PullImageRequest {
            if_missing: true,
            ..req("127.0.0.1:9/busybox:latest")
        },
    )
    .await;
    let kept = kept.unwrap();
    assert_eq!(
        (kept.name.as_str(), kept.created_unix),
        ("busybox-latest", image.created_unix)
    );
    assert!(events.is_empty(), "{events:?}");
    // A missing name is pulled.
    let (_, fresh) = pull(
        &mut client,
        pb::PullImageRequest {
            name: "bb-missing".into(),
            if_missing: true,
            ..req(&reference)
        },
    )
    .await;
    assert_eq!(fresh.unwrap().name, "bb-missing");
    client
        .delete_image(pb::DeleteImageRequest {
            name: "bb-missing".into(),
        })
        .await
        .unwrap();
    // A new --kernel-ref on a built digest updates the record, no rebuild.
    let (_, rekerneled) = pull(
        &mut client,
        pb::PullImageRequest {
            kernel_ref: "other-kernel".into(),
            ..req(&reference)
        },
    )
    .await;
    let rekerneled = rekerneled.unwrap();
    assert_eq!(rekerneled.created_unix, image.created_unix);
    assert_eq!(rekerneled.default_kernel, "other-kernel");
    // Two concurrent pulls of the same image under two names share the
    // cached blobs and both succeed.
    let mut c2 = client.clone();
    let (a, b) = tokio::join!(
        pull(
            &mut client,
            pb::PullImageRequest {
                name: "bb-a".into(),
                ..req(&reference)
            }
        ),
        pull(
            &mut c2,
            pb::PullImageRequest {
                name: "bb-b".into(),
                ..req(&reference)
            }
        ),
    );
    assert_eq!(a.1.unwrap().layers, b.1.unwrap().layers);
    for name in ["bb-a", "bb-b"] {
        client
            .delete_image(pb::DeleteImageRequest { name: name.into() })
            .await
            .unwrap();
    }

    // Listed; held images cannot be removed; release, then remove.
    let list = client
        .list_images(pb::ListImagesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.images.len(), 1);
    assert_eq!(list.images[0].holders, ["vm-1"]);
    let err = client
        .delete_image(pb::DeleteImageRequest {
            name: "busybox-latest".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    for _ in 0..2 {
        client
            .release_image(pb::ReleaseImageRequest {
                name: "busybox-latest".into(),
                holder: "vm-1".into(),
            })
            .await
            .unwrap();
    }
    // Nothing to prune while the image exists.
    let pruned = client
        .prune_blobs(pb::PruneBlobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.blobs_removed, 0);
    client
        .delete_image(pb::DeleteImageRequest {
            name: "busybox-latest".into(),
        })
        .await
        .unwrap();
    let err = client
        .get_image(pb::GetImageRequest {
            name: "busybox-latest".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let pruned = client
        .prune_blobs(pb::PruneBlobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.blobs_removed, 2, "layer and config");

    // Bad input is INVALID_ARGUMENT / NOT_FOUND, not a crash.
    let (_, bad) = pull(&mut client, req("Not A Ref")).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    let (_, missing) = pull(&mut client, req(&format!("{}/nope:1", registry.addr))).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
}

/// Two layers exercising every whiteout, ownership, mode, xattr, hardlink,
/// symlink and device case.
fn tricky_layers() -> Vec<Vec<u8>> {
    // cap_net_raw+ep as a v2 `security.capability` value.
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    // user::rwx user:1000:r-x group::r-x mask::r-x other::r-- in the
    // kernel's xattr form (version 2, then tag/perm/id entries).
    let acl: &[u8] = &[
        2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 5, 0, 0xe8, 3, 0, 0, 4, 0, 5, 0,
        0xff, 0xff, 0xff, 0xff, 0x10, 0, 5, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0, 0xff, 0xff,
        0xff, 0xff,
    ];
    let mut l1 = TarBuilder::new();
    l1.dir("etc", 0o755, 0, 0)
        .file("etc/passwd", 0o644, 0, 0, b"root:x:0:0::/root:/bin/sh\n")
        .dir("usr", 0o755, 0, 0)
        .dir("usr/bin", 0o755, 0, 0)
        .file("usr/bin/su", 0o4755, 0, 0, b"setuid binary")
        .file("usr/bin/sg", 0o2755, 0, 42, b"setgid binary")
        .hardlink("usr/bin/su-link", "usr/bin/su")
        .file_xattrs(
            "usr/bin/ping",
            0o755,
            b"ping",
            &[("security.capability", cap), ("user.note", b"hi")],
        )
        .file_pax(
            "usr/bin/acl",
            0o755,
            b"acl",
            &[
                ("SCHILY.xattr.system.posix_acl_access", acl),
                ("SCHILY.xattr.trusted.overlay", b"t"),
            ],
        )
        .file_pax(
            "usr/bin/fine",
            0o644,
            b"ns",
            &[("mtime", b"1600000000.123456789")],
        )
        .file("orig", 0o644, 0, 0, b"original")
        .hardlink("keeplink", "orig")
        .dir(&"d".repeat(200), 0o755, 0, 0)
        .file(
            &format!("{}/{}", "d".repeat(200), "f".repeat(150)),
            0o644,
            0,
            0,
            b"long",
        )
        .symlink(
            "longlink",
            &format!("/{}/{}", "d".repeat(200), "f".repeat(150)),
        )
        .symlink("bin", "usr/bin")
        .symlink("etc/abs", "/etc/passwd")
        .symlink("dangling", "/does/not/exist")
        .dir("tmp", 0o1777, 0, 0)
        .dir("home", 0o755, 0, 0)
        .dir("home/user", 0o700, 1000, 1000)
        .file("home/user/file", 0o600, 1000, 1000, b"user data")
        .dir("dev", 0o755, 0, 0)
        .node("dev/null", EntryType::Char, 1, 3)
        .node("dev/loop0", EntryType::Block, 7, 0)
        .node("dev/fifo", EntryType::Fifo, 0, 0)
        .dir("gone", 0o755, 0, 0)
        .file("gone/file", 0o644, 0, 0, b"x")
        .dir("a", 0o755, 0, 0)
        .file("a/gone", 0o644, 0, 0, b"x")
        .file("a/keep", 0o644, 0, 0, b"keep")
        .dir("opq", 0o755, 0, 0)
        .file("opq/lower", 0o644, 0, 0, b"lower")
        .dir("opq/sub", 0o755, 0, 0)
        .file("opq/sub/deep", 0o644, 0, 0, b"deep")
        .file("x", 0o644, 0, 0, b"file becomes dir")
        .dir("y", 0o755, 0, 0)
        .file("y/child", 0o644, 0, 0, b"dir becomes file");
    // A non-UTF-8 name carrying an xattr and a sub-second mtime (debugfs
    // gets it byte for byte).
    {
        use std::os::unix::ffi::OsStrExt;
        l1.0.append_pax_extensions([
            ("SCHILY.xattr.user.latin1", &b"x"[..]),
            ("mtime", &b"1600000000.5"[..]),
        ])
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(1);
        h.set_mtime(1_600_000_000);
        l1.0.append_data(
            &mut h,
            Path::new(std::ffi::OsStr::from_bytes(b"caf\xe9 \"q\"")),
            &b"1"[..],
        )
        .unwrap();
    }
    let mut l2 = TarBuilder::new();
    l2.file(".wh.gone", 0o644, 0, 0, b"")
        // The original name goes, its other name stays (same inode).
        .file(".wh.orig", 0o644, 0, 0, b"")
        // A hardlink to a lower layer's file.
        .hardlink("usr/bin/su-upper", "usr/bin/su")
        .file("a/.wh.gone", 0o644, 0, 0, b"")
        .dir("opq", 0o750, 0, 0)
        .file("opq/.wh..wh..opq", 0o644, 0, 0, b"")
        .file("opq/upper", 0o644, 0, 0, b"upper")
        .file("etc/passwd", 0o640, 0, 0, b"root:x:0:0::/root:/bin/bash\n")
        .dir("x", 0o711, 0, 0)
        .file("x/inside", 0o644, 0, 0, b"in x")
        .file("y", 0o600, 0, 0, b"now a file")
        // Through the `bin -> usr/bin` symlink: lands in usr/bin.
        .file("bin/newtool", 0o755, 0, 0, b"new")
        .file("home/user/file", 0o640, 1000, 100, b"changed")
        // A whiteout of something that never existed.
        .file("a/.wh.never", 0o644, 0, 0, b"");
    vec![l1.finish(), l2.finish()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flattening_equals_umoci_unpack() {
    banger_test_support::gate!(Priv, ROOT);
    banger_test_support::require_program("umoci", "umoci");
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let layers: Vec<Layer> = tricky_layers().into_iter().map(gzip_layer).collect();
    registry.push(&layout(src.path(), "v1", &layers), "tricky:v1");

    // umoci's unpack of the image fetched by skopeo …
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("oci");
    push_with_skopeo(
        &format!("docker://{}/tricky:v1", registry.addr),
        &format!("oci:{}:v1", oci.display()),
        &["--src-tls-verify=false"],
    );
    let bundle = work.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", oci.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = describe(&bundle.join("rootfs"));

    // … equals the ext4 each writer builds, mounted read-only.
    for writer in [Ext4Writer::Builtin, Ext4Writer::Mke2fs] {
        let ts = TestStore::new();
        let mut cfg = config(&[&registry.addr]);
        cfg.ext4_writer = writer;
        let mut store = ts.open(cfg);
        // No guest bits: the image must be exactly the layers.
        store.set_guest_candidates(vec![]);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let record = store
            .pull(
                banger_imagestore::store::PullRequest {
                    reference: format!("{}/tricky:v1", registry.addr),
                    ..Default::default()
                },
                tx,
            )
            .await
            .unwrap();
        assert_eq!(record.layers.len(), 2);
        let ours = describe_ext4(&store.ext4_path(&record.name));
        assert_same(&ours, &theirs);
        spot_checks(&ours);
    }
}

/// Spot checks of the tricky image, so equality with umoci is not
/// equality of two wrongs.
fn spot_checks(ours: &std::collections::BTreeMap<std::path::PathBuf, Node>) {
    let node = |p: &str| {
        ours.get(Path::new(p))
            .unwrap_or_else(|| panic!("{p} missing from the image"))
    };
    for gone in ["gone", "a/gone", "opq/lower", "opq/sub", "orig"] {
        assert!(!ours.contains_key(Path::new(gone)), "{gone} survived");
    }
    assert_eq!(node("usr/bin/newtool").content, Some(digest(b"new")));
    assert_eq!(node("keeplink").content, Some(digest(b"original")));
    assert_eq!(node("usr/bin/ping").xattrs["user.note"], b"hi");
    assert!(
        node("usr/bin/ping")
            .xattrs
            .contains_key("security.capability")
    );
    assert!(
        node("usr/bin/acl")
            .xattrs
            .contains_key("system.posix_acl_access")
    );
    assert_eq!(node("usr/bin/acl").xattrs["trusted.overlay"], b"t");
    assert_eq!(
        node("usr/bin/fine").mtime,
        Some((1_600_000_000, 123_456_789))
    );
    assert_eq!(node("usr/bin/su").mode & 0o7777, 0o4755);
    assert_eq!(node("usr/bin/su").nlink, 3, "su, su-link and su-upper");
    assert_eq!(node("usr/bin/sg").mode & 0o7777, 0o2755);
    assert_eq!(node("home/user/file").gid, 100);
    assert_eq!(node("dev/null").rdev, nix::sys::stat::makedev(1, 3));
    assert_eq!(node("tmp").mode & 0o7777, 0o1777);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_and_zstd_layers() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let arch_layer = |arch: &str| {
        let mut t = TarBuilder::new();
        t.file("arch", 0o644, 0, 0, arch.as_bytes());
        zstd_layer(t.finish())
    };
    let source = multi_arch_layout(
        src.path(),
        "multi",
        &[
            ("arm64", vec![arch_layer("arm64")]),
            ("amd64", vec![arch_layer("amd64")]),
        ],
    );
    push_with_skopeo(
        &source,
        &format!("docker://{}/multi:multi", registry.addr),
        &["--all"],
    );

    let ts = TestStore::new();
    let store = ts.open(config(&[&registry.addr]));
    let reference = format!("{}/multi:multi", registry.addr);
    let pull = |platform: &str, name: &str| {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        store.pull(
            banger_imagestore::store::PullRequest {
                reference: reference.clone(),
                platform: platform.into(),
                name: name.into(),
                ..Default::default()
            },
            tx,
        )
    };
    let amd = pull("", "m-amd").await.unwrap();
    assert_eq!(amd.platform, "linux/amd64");
    assert!(amd.index_digest.is_some());
    assert_eq!(debugfs_cat(&store.ext4_path("m-amd"), "/arch"), b"amd64");
    let arm = pull("linux/arm64", "m-arm").await.unwrap();
    assert_eq!(debugfs_cat(&store.ext4_path("m-arm"), "/arch"), b"arm64");
    assert_ne!(amd.digest, arm.digest);
    let err = pull("linux/s390x", "m-s390").await.unwrap_err();
    assert!(
        matches!(err, banger_imagestore::Error::NoPlatform { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_per_request_credentials() {
    banger_test_support::require_program("htpasswd", "apache2-utils");
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["tester", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let registry = Registry::start_with(RegistryAuth::Htpasswd(htpasswd));
    let src = tempfile::tempdir().unwrap();
    push_with_skopeo(
        &layout(src.path(), "latest", &[gzip_layer(busybox_layer())]),
        &format!("docker://{}/private/busybox:latest", registry.addr),
        &["--dest-creds", "tester:s3cret"],
    );
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[&registry.addr])), sock.path()).await;
    let reference = format!("{}/private/busybox:latest", registry.addr);
    let (_, anonymous) = pull(&mut client, req(&reference)).await;
    assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);
    let creds = |password: &str| pb::RegistryCredentials {
        registry: registry.addr.clone(),
        username: "tester".into(),
        password: password.into(),
        identity_token: String::new(),
    };
    let (_, wrong) = pull(
        &mut client,
        pb::PullImageRequest {
            credentials: vec![creds("wrong")],
            ..req(&reference)
        },
    )
    .await;
    assert_eq!(wrong.unwrap_err().code(), tonic::Code::Unauthenticated);
    let (_, ok) = pull(
        &mut client,
        pb::PullImageRequest {
            credentials: vec![creds("s3cret")],
            ..req(&reference)
        },
    )
    .await;
    assert_eq!(ok.unwrap().name, "busybox-latest");
    // Credentials are never stored.
    let state = walkdir::WalkDir::new(ts.state.path())
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    assert!(!state.contains("s3cret"));
}

/// The registry's file holding blob `hex`.
fn registry_blob(registry: &Registry, hex: &str) -> std::path::PathBuf {
    registry
        .storage_root()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_is_refused_then_a_retry_resumes_from_verified_blobs() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.file("first", 0o644, 0, 0, b"first layer");
    let first = gzip_layer(t.finish());
    let first_hex = common::digest(&first.blob)
        .trim_start_matches("sha256:")
        .to_owned();
    let layer = gzip_layer(busybox_layer());
    let hex = common::digest(&layer.blob)
        .trim_start_matches("sha256:")
        .to_owned();
    registry.push(
        &layout(src.path(), "latest", &[first, layer]),
        "busybox:latest",
    );
    let data = registry_blob(&registry, &hex);
    let good = std::fs::read(&data).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&data, &bad).unwrap();

    let ts = TestStore::new();
    let mut cfg = config(&[&registry.addr]);
    // One download at a time, so the good first layer lands before the bad one fails.
    cfg.max_parallel_layers = 1;
    let store = ts.open(cfg);
    let pull = || {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        store.pull(
            banger_imagestore::store::PullRequest {
                reference: format!("{}/busybox:latest", registry.addr),
                ..Default::default()
            },
            tx,
        )
    };
    let err = pull().await.unwrap_err();
    assert!(
        matches!(err, banger_imagestore::Error::DigestMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&hex), "{err}");
    // Nothing half-built: no image, no bad blob, no leftovers; the verified
    // first layer is kept.
    assert!(store.list().unwrap().is_empty());
    assert!(!ts.state.path().join("blobs/sha256").join(&hex).exists());
    assert!(
        ts.state
            .path()
            .join("blobs/sha256")
            .join(&first_hex)
            .exists()
    );
    assert_eq!(
        std::fs::read_dir(ts.state.path().join("blobs/tmp"))
            .unwrap()
            .count(),
        0
    );

    // The retry needs only the missing blob: the registry no longer even
    // has the first one.
    std::fs::write(&data, &good).unwrap();
    std::fs::remove_file(registry_blob(&registry, &first_hex)).unwrap();
    let record = pull().await.unwrap();
    assert_eq!(
        record.layers,
        [format!("sha256:{first_hex}"), format!("sha256:{hex}")]
    );
    assert_eq!(
        debugfs_cat(&store.ext4_path(&record.name), "/first"),
        b"first layer"
    );

    // A second image sharing those layers is built without fetching them.
    std::fs::remove_file(&data).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    store
        .pull(
            banger_imagestore::store::PullRequest {
                reference: format!("{}/busybox:latest", registry.addr),
                name: "shared".into(),
                ..Default::default()
            },
            tx,
        )
        .await
        .unwrap();
}

#[test]
fn docker_io_through_a_mirror_in_a_private_netns() {
    banger_test_support::gate!(Priv, ROOT);
    // The mirror is the only way out: in a namespace with only `lo`, a
    // fallback to the real docker.io cannot leave the machine.
    banger_test_support::netns::in_new_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let registry = Registry::start();
            let src = tempfile::tempdir().unwrap();
            registry.push(
                &layout(src.path(), "latest", &[gzip_layer(busybox_layer())]),
                "library/busybox:latest",
            );
            let mut cfg = config(&[]);
            cfg.mirrors.insert(
                "docker.io".into(),
                vec![
                    "http://127.0.0.1:1".into(),
                    format!("http://{}", registry.addr),
                ],
            );
            let ts = TestStore::new();
            let store = ts.open(cfg);
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            let record = store
                .pull(
                    banger_imagestore::store::PullRequest {
                        reference: "busybox".into(),
                        ..Default::default()
                    },
                    tx,
                )
                .await
                .unwrap();
            assert_eq!(record.name, "busybox-latest");
            assert_eq!(record.reference, "docker.io/library/busybox:latest");
        });
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_killed_mid_layer_then_retry_succeeds() {
    // A large incompressible layer, so the kill lands mid-transfer.
    let mut noise = vec![0u8; 96 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in noise.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut t = TarBuilder::new();
    t.file("noise", 0o644, 0, 0, &noise);
    let layer = gzip_layer(t.finish());
    let src = tempfile::tempdir().unwrap();
    let source = layout(src.path(), "big", &[layer]);

    let mut first = Registry::start();
    first.push(&source, "big:big");
    let ts = TestStore::new();
    // Name the image by a host nobody serves; the mirrors are the registries.
    let upstream = "127.0.0.1:1";
    let mirrored = |addr: &str| {
        let mut cfg = config(&[]);
        cfg.mirrors
            .insert(upstream.into(), vec![format!("http://{addr}")]);
        cfg
    };
    let store = ts.open(mirrored(&first.addr));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let request = banger_imagestore::store::PullRequest {
        reference: format!("{upstream}/big:big"),
        name: "big".into(),
        ..Default::default()
    };
    let pulling = store.pull(request.clone(), tx);
    let killer = async {
        while let Some(p) = rx.recv().await {
            if p.phase == "downloading" && p.done > 0 && p.done < p.total {
                first.kill();
                return;
            }
        }
    };
    let (result, ()) = tokio::join!(pulling, killer);
    let err = result.unwrap_err();
    assert!(
        matches!(err, banger_imagestore::Error::Download { .. }),
        "expected a download error, got {err}"
    );
    assert!(store.list().unwrap().is_empty());
    drop(store);

    let second = Registry::start();
    second.push(&source, "big:big");
    let store = ts.open(mirrored(&second.addr));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let record = store.pull(request, tx).await.unwrap();
    assert_eq!(record.name, "big");
}

/// `/proc/PID/status` field `field` (a hex capability mask).
fn cap_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:\t")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

/// The real `banger-imagestore` binary on a temp home, optionally as
/// another user with no capability (`setpriv`); killed on drop.
struct Daemon {
    child: std::process::Child,
    pid: u32,
    home: tempfile::TempDir,
    _guest: tempfile::TempDir,
}

impl Daemon {
    fn start(registry: &str, unprivileged: bool, writer: &str) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("banger.toml"),
            format!(
                "[imagestore]\ninsecure_registries = [\"{registry}\"]\next4_min_headroom_mib = 8\n\
                 ext4_writer = \"{writer}\"\n"
            ),
        )
        .unwrap();
        let guest = fake_guest_bundle();
        std::fs::set_permissions(guest.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = env!("CARGO_BIN_EXE_banger-imagestore");
        let mut cmd = if unprivileged {
            banger_test_support::require_program("setpriv", "util-linux");
            std::os::unix::fs::chown(home.path(), Some(65534), Some(65534)).unwrap();
            std::os::unix::fs::chown(home.path().join("banger.toml"), Some(65534), Some(65534))
                .unwrap();
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ])
            .arg(bin);
            c
        } else {
            Command::new(bin)
        };
        let child = cmd
            .arg("--home")
            .arg(home.path())
            .env("BANGER_GUEST_DIR", guest.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let socket = home.path().join("run/imagestore.sock");
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            socket.exists(),
            "banger-imagestore did not bind {}",
            socket.display()
        );
        Daemon {
            child,
            pid,
            home,
            _guest: guest,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagestore_without_any_capability_builds_setuid_files_and_devices() {
    banger_test_support::gate!(Priv, ROOT);
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let layers: Vec<Layer> = tricky_layers().into_iter().map(gzip_layer).collect();
    registry.push(&layout(src.path(), "v1", &layers), "tricky:v1");

    // Dev mode: started as root, it drops everything, bounding set included.
    let root = Daemon::start(&registry.addr, false, "builtin");
    assert_eq!(cap_field(root.pid, "CapEff"), 0, "effective set as root");
    assert_eq!(cap_field(root.pid, "CapBnd"), 0, "bounding set as root");
    drop(root);

    // As nobody with nothing: the pull still makes setuid files and devices.
    for writer in ["builtin", "mke2fs"] {
        without_capabilities(&registry.addr, writer).await;
    }
}

async fn without_capabilities(registry: &str, writer: &str) {
    let daemon = Daemon::start(registry, true, writer);
    for field in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(cap_field(daemon.pid, field), 0, "{field}");
    }
    let socket = daemon.home.path().join("run/imagestore.sock");
    let mut client = banger_proto::imagestore::v1::image_store_client::ImageStoreClient::new(
        banger_proto::rpc::connect(&socket).await.unwrap(),
    );
    let (_, image) = pull(&mut client, req(&format!("{registry}/tricky:v1"))).await;
    let image = image.unwrap();
    let ext4 = daemon
        .home
        .path()
        .join("state/images")
        .join(&image.name)
        .join("rootfs.ext4");
    let tree = describe_ext4(&ext4);
    let node = |p: &str| &tree[Path::new(p)];
    assert_eq!(node("usr/bin/su").mode & 0o7777, 0o4755);
    assert_eq!(node("usr/bin/su").uid, 0);
    assert_eq!(node("usr/bin/sg").gid, 42);
    assert_eq!(node("home/user/file").uid, 1000);
    assert_eq!(node("dev/null").rdev, nix::sys::stat::makedev(1, 3));
    assert_eq!(node("dev/loop0").rdev, nix::sys::stat::makedev(7, 0));
    assert!(
        node("usr/bin/ping")
            .xattrs
            .contains_key("security.capability")
    );
    assert_eq!(node("usr/bin/acl").xattrs["trusted.overlay"], b"t");
    // Nothing of the image exists on the host as those owners: the state
    // holds only nobody's files.
    for entry in walkdir::WalkDir::new(daemon.home.path().join("state")) {
        let entry = entry.unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = entry.metadata().unwrap();
        assert_eq!(m.uid(), 65534, "{} is not nobody's", entry.path().display());
        assert!(!m.file_type().is_char_device() && !m.file_type().is_block_device());
    }
}

/// mke2fs processes whose command line names `dir`.
fn mke2fs_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.starts_with("mke2fs") && cmd.contains(&needle)
        })
        .collect()
}

/// Nothing of a failed or cancelled build is left in the staging area.
fn staging_is_empty(ts: &TestStore) -> bool {
    std::fs::read_dir(ts.state.path().join("images/.staging"))
        .unwrap()
        .flatten()
        .all(|e| e.file_name().to_string_lossy().starts_with("mke2fs-probe-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// The build is its caller's work (proto/README.md, "Long operations and
/// cancellation"): a client that goes away mid-build stops mke2fs and
/// leaves no staging and no image; the store stays healthy and a retry
/// builds it.
async fn a_client_that_goes_away_stops_the_build_and_a_retry_builds_it() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    // 15k empty files in one directory: mke2fs needs many seconds for it.
    let mut t = TarBuilder::new();
    t.dir("wide", 0o755, 0, 0);
    for i in 0..15_000 {
        t.file(&format!("wide/f{i:05}"), 0o644, 0, 0, b"");
    }
    registry.push(
        &layout(src.path(), "v1", &[gzip_layer(t.finish())]),
        "wide:v1",
    );
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut cfg = config(&[&registry.addr]);
    cfg.ext4_writer = Ext4Writer::Mke2fs;
    let mut client = serve(ts.open(cfg), sock.path()).await;
    let mut stream = client
        .pull_image(req(&format!("{}/wide:v1", registry.addr)))
        .await
        .unwrap()
        .into_inner();
    // Wait for the build to start, and for its mke2fs.
    while let Some(ev) = stream.message().await.unwrap() {
        if let Some(p) = ev.update
            && p.phase == "building"
        {
            break;
        }
    }
    let mut seen = false;
    for _ in 0..100 {
        if !mke2fs_under(ts.state.path()).is_empty() {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(seen, "mke2fs never started");
    drop(stream);
    let mut gone = false;
    for _ in 0..200 {
        if mke2fs_under(ts.state.path()).is_empty() && staging_is_empty(&ts) {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(gone, "mke2fs or its staging outlived the client");
    assert!(
        client
            .list_images(pb::ListImagesRequest {})
            .await
            .unwrap()
            .into_inner()
            .images
            .is_empty(),
        "a build whose client left stored an image"
    );
    // The store is healthy: the retry builds the image.
    let (_, image) = pull(&mut client, req(&format!("{}/wide:v1", registry.addr))).await;
    assert_eq!(image.unwrap().name, "wide-v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_40k_files_builds_with_the_builtin_writer_and_is_refused_by_mke2fs() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.dir("wide", 0o755, 0, 0);
    for i in 0..40_000 {
        t.file(&format!("wide/f{i:05}"), 0o644, 0, 0, b"");
    }
    t.file("wide/last", 0o644, 0, 0, b"last");
    registry.push(
        &layout(src.path(), "v1", &[gzip_layer(t.finish())]),
        "wide:v1",
    );
    let reference = format!("{}/wide:v1", registry.addr);

    // mke2fs would take minutes: the work cap refuses it up front.
    let ts = TestStore::new();
    let mut cfg = config(&[&registry.addr]);
    cfg.ext4_writer = Ext4Writer::Mke2fs;
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(cfg), sock.path()).await;
    let (_, err) = pull(&mut client, req(&reference)).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_dir_work"), "{err:?}");

    // The builtin writer is linear: no cap, seconds.
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[&registry.addr])), sock.path()).await;
    let started = std::time::Instant::now();
    let (_, image) = pull(&mut client, req(&reference)).await;
    let image = image.unwrap();
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
    let ext4 = ts
        .state
        .path()
        .join("images")
        .join(&image.name)
        .join("rootfs.ext4");
    assert_eq!(debugfs_cat(&ext4, "/wide/last"), b"last");
    let out = Command::new("debugfs")
        .args(["-R", "ls /wide"])
        .arg(&ext4)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("f00000") && listing.contains("f39999"));
    let e2fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&ext4)
        .output()
        .unwrap();
    assert!(
        e2fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&e2fsck.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_directory_of_100k_entries_mounts_and_reads_back() {
    banger_test_support::require_root();
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.dir("flat", 0o755, 0, 0);
    for i in 0..100_000 {
        t.file(&format!("flat/f{i:06}"), 0o644, i % 7, 0, b"");
    }
    t.file("flat/data", 0o600, 0, 0, b"data");
    registry.push(
        &layout(src.path(), "v1", &[gzip_layer(t.finish())]),
        "flat:v1",
    );
    let ts = TestStore::new();
    let mut cfg = config(&[&registry.addr]);
    // Beyond the default per-directory cap, which stays.
    cfg.max_entries_per_dir = 200_000;
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(cfg), sock.path()).await;
    let (_, image) = pull(&mut client, req(&format!("{}/flat:v1", registry.addr))).await;
    let image = image.unwrap();
    let ext4 = ts
        .state
        .path()
        .join("images")
        .join(&image.name)
        .join("rootfs.ext4");
    let tree = describe_ext4(&ext4);
    let flat: Vec<_> = tree
        .keys()
        .filter(|p| p.parent() == Some(Path::new("flat")))
        .collect();
    assert_eq!(flat.len(), 100_001);
    let node = |p: &str| &tree[Path::new(p)];
    assert_eq!(node("flat/f099999").uid, 99_999 % 7);
    assert_eq!(node("flat/f000000").mode & 0o7777, 0o644);
    assert_eq!(node("flat/data").content, Some(digest(b"data")));

    // The per-directory cap still refuses more.
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[&registry.addr])), sock.path()).await;
    let (_, err) = pull(&mut client, req(&format!("{}/flat:v1", registry.addr))).await;
    assert_eq!(err.unwrap_err().code(), tonic::Code::ResourceExhausted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_over_the_cap_is_refused_and_nothing_is_left() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.file("big", 0o644, 0, 0, &vec![7u8; 24 << 20]);
    registry.push(
        &layout(src.path(), "v1", &[gzip_layer(t.finish())]),
        "big:v1",
    );
    let ts = TestStore::new();
    let mut cfg = config(&[&registry.addr]);
    cfg.max_image_bytes = 16 << 20;
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(cfg), sock.path()).await;
    let (_, err) = pull(&mut client, req(&format!("{}/big:v1", registry.addr))).await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_image_bytes"), "{err:?}");
    assert!(staging_is_empty(&ts));
    assert!(!ts.state.path().join("images/big-v1").exists());
    // Still healthy: the same store builds a small image.
    let mut t = TarBuilder::new();
    t.file("small", 0o644, 0, 0, b"s");
    registry.push(
        &layout(src.path(), "v2", &[gzip_layer(t.finish())]),
        "big:v2",
    );
    let (_, ok) = pull(&mut client, req(&format!("{}/big:v2", registry.addr))).await;
    assert_eq!(ok.unwrap().name, "big-v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_sending_more_than_the_declared_size_is_cut_off() {
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.file("small", 0o644, 0, 0, b"s");
    let layer = gzip_layer(t.finish());
    let hex = common::digest(&layer.blob)
        .trim_start_matches("sha256:")
        .to_owned();
    registry.push(&layout(src.path(), "v1", &[layer]), "liar:v1");
    // The stored blob grows to 32 MiB; the manifest still says ~100 bytes.
    let data = registry_blob(&registry, &hex);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes.resize(32 << 20, 0);
    std::fs::write(&data, &bytes).unwrap();
    let ts = TestStore::new();
    let store = ts.open(config(&[&registry.addr]));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let err = store
        .pull(
            banger_imagestore::store::PullRequest {
                reference: format!("{}/liar:v1", registry.addr),
                ..Default::default()
            },
            tx,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than the"), "{err}");
    let mut most = 0;
    while let Ok(p) = rx.try_recv() {
        if p.phase == "downloading" {
            most = most.max(p.done);
        }
    }
    assert!(most < 1 << 20, "took {most} bytes of a ~100-byte layer");
    assert_eq!(
        std::fs::read_dir(ts.state.path().join("blobs/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_service_kills_a_running_mke2fs() {
    banger_test_support::gate!(Priv, ROOT);
    let registry = Registry::start();
    let src = tempfile::tempdir().unwrap();
    let mut t = TarBuilder::new();
    t.dir("wide", 0o755, 0, 0);
    for i in 0..15_000 {
        t.file(&format!("wide/f{i:05}"), 0o644, 0, 0, b"");
    }
    registry.push(
        &layout(src.path(), "v1", &[gzip_layer(t.finish())]),
        "wide:v1",
    );
    let mut daemon = Daemon::start(&registry.addr, false, "mke2fs");
    let socket = daemon.home.path().join("run/imagestore.sock");
    let mut client = banger_proto::imagestore::v1::image_store_client::ImageStoreClient::new(
        banger_proto::rpc::connect(&socket).await.unwrap(),
    );
    let pulling =
        tokio::spawn(
            async move { pull(&mut client, req(&format!("{}/wide:v1", registry.addr))).await },
        );
    let mut running = Vec::new();
    for _ in 0..500 {
        running = mke2fs_under(daemon.home.path());
        if !running.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!running.is_empty(), "mke2fs never started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "imagestore did not stop within 10 s of SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(
        mke2fs_under(daemon.home.path()).is_empty(),
        "mke2fs outlived imagestore"
    );
    assert!(pulling.await.unwrap().1.is_err());
}
