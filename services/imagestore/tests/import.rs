//! `ImportImage`: `docker save` and OCI archives streamed over gRPC build
//! the same kind of image as a pull; bad archives are INVALID_ARGUMENT.

mod common;

use banger_proto::imagestore::v1 as pb;
use banger_proto::imagestore::v1::import_image_request::Part;
use common::*;

fn messages(name: &str, file_name: &str, archive: Vec<u8>) -> Vec<pb::ImportImageRequest> {
    let mut out = vec![pb::ImportImageRequest {
        part: Some(Part::Header(pb::ImportImageHeader {
            name: name.into(),
            file_name: file_name.into(),
            kernel_ref: "k1".into(),
            size_bytes: archive.len() as u64,
            ..Default::default()
        })),
    }];
    for chunk in archive.chunks(64 << 10) {
        out.push(pb::ImportImageRequest {
            part: Some(Part::Chunk(chunk.to_vec())),
        });
    }
    out
}

async fn import(
    client: &mut banger_proto::imagestore::v1::image_store_client::ImageStoreClient<
        banger_proto::rpc::TracedChannel,
    >,
    msgs: Vec<pb::ImportImageRequest>,
) -> Result<pb::Image, tonic::Status> {
    let mut stream = client
        .import_image(tokio_stream::iter(msgs))
        .await?
        .into_inner();
    while let Some(ev) = stream.message().await? {
        if let Some(pb::pull_image_event::Event::Done(img)) = ev.event {
            return Ok(img);
        }
    }
    Err(tonic::Status::internal("no done event"))
}

fn docker_save_archive() -> Vec<u8> {
    let layer = busybox_layer();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}})
    .to_string();
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": ["bb:1"], "Layers": ["abc/layer.tar"]}])
        .to_string();
    let mut t = TarBuilder::new();
    t.file("manifest.json", 0o644, 0, 0, manifest.as_bytes())
        .file("config.json", 0o644, 0, 0, config.as_bytes())
        .dir("abc", 0o755, 0, 0)
        .file("abc/layer.tar", 0o644, 0, 0, &layer);
    t.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_save_and_oci_archives() {
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[])), sock.path()).await;

    let img = import(
        &mut client,
        messages("saved", "bb.tar", docker_save_archive()),
    )
    .await
    .unwrap();
    assert_eq!(img.reference, "import:bb.tar");
    assert_eq!(img.default_kernel, "k1");
    assert_eq!(img.guest.unwrap().os_id, "busybox");
    let ext4 = ts.state.path().join("images/saved/rootfs.ext4");
    assert_eq!(
        debugfs_cat(&ext4, "/bin/busybox"),
        std::fs::read("/bin/busybox").unwrap()
    );
    // Same archive again: no rebuild.
    let again = import(
        &mut client,
        messages("saved", "bb.tar", docker_save_archive()),
    )
    .await
    .unwrap();
    assert_eq!(again.created_unix, img.created_unix);

    let layout_dir = tempfile::tempdir().unwrap();
    layout(layout_dir.path(), "v1", &[zstd_layer(busybox_layer())]);
    let oci = import(
        &mut client,
        messages(
            "from-oci",
            "bb-oci.tar",
            banger_test_support::tar::tar_dir(layout_dir.path()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(oci.layers.len(), 1);
    let ext4 = ts.state.path().join("images/from-oci/rootfs.ext4");
    assert_eq!(
        debugfs_cat(&ext4, "/etc/os-release"),
        b"ID=busybox\nVERSION_ID=1.35\n"
    );

    let mut junk = TarBuilder::new();
    junk.file("hello", 0o644, 0, 0, b"x");
    let err = import(&mut client, messages("junk", "junk.tar", junk.finish()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let err = import(&mut client, messages("Bad Name", "x.tar", vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// Free text that is stored and printed back (`image show`) never carries
/// control characters: hostile header fields are refused, hostile
/// os-release values are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_free_text_is_refused_or_dropped() {
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[])), sock.path()).await;

    let with_header = |edit: &dyn Fn(&mut pb::ImportImageHeader)| {
        let mut msgs = messages("hostile", "bb.tar", docker_save_archive());
        if let Some(Part::Header(h)) = msgs[0].part.as_mut() {
            edit(h);
        }
        msgs
    };
    for (what, msgs) in [
        (
            "kernel",
            with_header(&|h| h.kernel_ref = "../../etc/x y\nINJECT".into()),
        ),
        (
            "kernel",
            with_header(&|h| h.kernel_ref = "k\u{1b}[2J".into()),
        ),
        (
            "file name",
            with_header(&|h| h.file_name = "bb\u{1b}]0;pwned\u{7}.tar".into()),
        ),
        (
            "file name",
            with_header(&|h| h.file_name = "a\nb.tar".into()),
        ),
    ] {
        let err = import(&mut client, msgs).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(what), "{what}: {}", err.message());
    }
    assert!(
        !ts.state.path().join("images/hostile").exists(),
        "a refused import left an image"
    );

    // An image whose os-release values carry escape sequences: imported,
    // but those values are not kept.
    let mut layer = TarBuilder::new();
    layer.dir("etc", 0o755, 0, 0).file(
        "etc/os-release",
        0o644,
        0,
        0,
        b"ID=\"evil\x1b[31m\"\nID_LIKE=\"debian \x1b[2J\"\nVERSION_ID=12\n",
    );
    let layer = layer.finish();
    let config_json = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}})
    .to_string();
    let manifest =
        serde_json::json!([{"Config": "config.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}])
            .to_string();
    let mut t = TarBuilder::new();
    t.file("manifest.json", 0o644, 0, 0, manifest.as_bytes())
        .file("config.json", 0o644, 0, 0, config_json.as_bytes())
        .dir("l", 0o755, 0, 0)
        .file("l/layer.tar", 0o644, 0, 0, &layer);
    let img = import(&mut client, messages("escapes", "x.tar", t.finish()))
        .await
        .unwrap();
    let guest = img.guest.unwrap();
    assert_eq!(guest.os_id, "", "an ID with an escape sequence was kept");
    assert_eq!(guest.os_id_like, ["debian"]);
    assert_eq!(guest.os_version_id, "12");
}

/// Audit hole: an archive whose members are symlinks to host paths (a
/// secret file, a FIFO) must not make imagestore read them; links between
/// members inside the archive still work (older `docker save` links
/// duplicate layers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_symlinks_never_reach_the_host() {
    let ts = TestStore::new();
    let sock = tempfile::tempdir().unwrap();
    let mut client = serve(ts.open(config(&[])), sock.path()).await;
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("secret.json");
    std::fs::write(&secret, br#"[{"Config": "c", "Layers": []}]"#).unwrap();
    let fifo = host.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let layer = busybox_layer();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]}})
    .to_string();
    let archive = |manifest_link: &str, layer_link: &str| {
        let manifest = serde_json::json!([{"Config": "config.json", "Layers": ["a/layer.tar", "b/layer.tar"]}])
            .to_string();
        let mut t = TarBuilder::new();
        if manifest_link.is_empty() {
            t.file("manifest.json", 0o644, 0, 0, manifest.as_bytes());
        } else {
            t.symlink("manifest.json", manifest_link);
        }
        t.file("config.json", 0o644, 0, 0, config.as_bytes())
            .dir("a", 0o755, 0, 0)
            .file("a/layer.tar", 0o644, 0, 0, &layer)
            .dir("b", 0o755, 0, 0)
            .symlink("b/layer.tar", layer_link);
        t.finish()
    };
    // A link inside the archive is followed by name.
    let img = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        import(
            &mut client,
            messages("linked", "l.tar", archive("", "../a/layer.tar")),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(img.layers.len(), 2);
    // Links to host paths are refused, and a FIFO does not hang the import.
    for (m, l) in [
        (secret.to_str().unwrap(), "../a/layer.tar"),
        ("", fifo.to_str().unwrap()),
        ("", "/etc/passwd"),
    ] {
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            import(&mut client, messages("evil", "e.tar", archive(m, l))),
        )
        .await
        .expect("the import hung")
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
    assert!(!ts.state.path().join("images/evil").exists());
}
