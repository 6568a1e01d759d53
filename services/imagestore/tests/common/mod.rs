//! Shared helpers for the image store's registry tests: OCI layouts built
//! by hand (layers made with the `tar` crate), an in-process service on a
//! temp socket, a fake guest bundle, and a tree comparison helper.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use banger_imagestore::ImageStoreService;
use banger_imagestore::config::ImageStoreConfig;
use banger_imagestore::store::Store;
use banger_proto::imagestore::v1 as pb;
use banger_proto::imagestore::v1::image_store_client::ImageStoreClient;
use banger_proto::imagestore::v1::image_store_server::ImageStoreServer;
use banger_proto::rpc::TracedChannel;
use banger_proto::rpc::progress::{LongEvent, Step};
use banger_proto::runtime::v1::Progress;
use banger_test_support::inproc;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::service::Routes;

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A compressed layer and its uncompressed diff id.
pub struct Layer {
    pub blob: Vec<u8>,
    pub diff_id: String,
    pub media_type: &'static str,
}

pub fn gzip_layer(tar: Vec<u8>) -> Layer {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&tar).unwrap();
    Layer {
        blob: enc.finish().unwrap(),
        diff_id: digest(&tar),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
    }
}

pub fn zstd_layer(tar: Vec<u8>) -> Layer {
    Layer {
        blob: zstd::encode_all(&tar[..], 3).unwrap(),
        diff_id: digest(&tar),
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> (String, usize) {
    let d = digest(bytes);
    let path = dir
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    (d, bytes.len())
}

/// Writes one image manifest (and its config and layers) into the layout
/// at `dir`; returns its descriptor.
pub fn put_image(dir: &Path, arch: &str, layers: &[Layer]) -> serde_json::Value {
    let config = json!({
        "architecture": arch, "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
    });
    let (cd, cs) = put_blob(dir, config.to_string().as_bytes());
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let (d, s) = put_blob(dir, &l.blob);
            json!({"mediaType": l.media_type, "digest": d, "size": s})
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layer_descs,
    });
    let (md, ms) = put_blob(dir, manifest.to_string().as_bytes());
    json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
           "platform": {"architecture": arch, "os": "linux"}})
}

fn write_index(dir: &Path, tag: &str, mut desc: serde_json::Value) {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// An OCI layout with one linux/amd64 image tagged `tag`.
pub fn layout(dir: &Path, tag: &str, layers: &[Layer]) -> String {
    let desc = put_image(dir, "amd64", layers);
    write_index(dir, tag, desc);
    format!("oci:{}:{tag}", dir.display())
}

/// An OCI layout whose `tag` is an index of one image per `(arch, layers)`.
pub fn multi_arch_layout(dir: &Path, tag: &str, images: &[(&str, Vec<Layer>)]) -> String {
    let manifests: Vec<_> = images
        .iter()
        .map(|(arch, layers)| put_image(dir, arch, layers))
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    let (d, s) = put_blob(dir, index.to_string().as_bytes());
    write_index(
        dir,
        tag,
        json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s}),
    );
    format!("oci:{}:{tag}", dir.display())
}

pub use banger_test_support::tar::TarBuilder;

/// A busybox layer: the static binary and a few applet links.
pub fn busybox_layer() -> Vec<u8> {
    banger_test_support::require_program("/bin/busybox", "busybox-static");
    let bin = std::fs::read("/bin/busybox").unwrap();
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755, 0, 0)
        .file("bin/busybox", 0o755, 0, 0, &bin);
    for applet in ["sh", "ls", "cat", "mount", "poweroff"] {
        t.symlink(&format!("bin/{applet}"), "busybox");
    }
    t.dir("sbin", 0o755, 0, 0)
        .symlink("sbin/init", "/bin/busybox")
        .dir("etc", 0o755, 0, 0)
        .file(
            "etc/os-release",
            0o644,
            0,
            0,
            b"ID=busybox\nVERSION_ID=1.35\n",
        )
        .dir("tmp", 0o1777, 0, 0);
    t.finish()
}

/// A fake guest bundle with small files.
pub fn fake_guest_bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "banger-agent",
        "banger-first-boot",
        "banger-agent.service",
        "banger-first-boot.service",
    ] {
        std::fs::write(dir.path().join(f), format!("fake {f}\n")).unwrap();
    }
    dir
}

/// A config trusting `insecure` hosts over plain HTTP.
pub fn config(insecure: &[&str]) -> ImageStoreConfig {
    ImageStoreConfig {
        insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
        ext4_min_headroom_mib: 8,
        ..ImageStoreConfig::default()
    }
}

/// A store in a temp state dir with a fake guest bundle.
pub struct TestStore {
    pub state: tempfile::TempDir,
    pub guest: tempfile::TempDir,
}

impl TestStore {
    pub fn new() -> TestStore {
        TestStore {
            state: tempfile::tempdir().unwrap(),
            guest: fake_guest_bundle(),
        }
    }

    pub fn open(&self, config: ImageStoreConfig) -> Store {
        let mut store = Store::open(
            &self.state.path().join("images"),
            &self.state.path().join("blobs"),
            config,
        )
        .unwrap();
        store.set_guest_candidates(vec![self.guest.path().to_path_buf()]);
        store
    }
}

/// Serves `store` on a temp socket; returns a client (the server ends with the runtime).
pub async fn serve(store: Store, dir: &Path) -> ImageStoreClient<TracedChannel> {
    let routes = Routes::new(ImageStoreServer::new(ImageStoreService::from_store(store)));
    let served = inproc::serve(
        &dir.join("imagestore.sock"),
        "banger-imagestore",
        &[],
        routes,
    )
    .await;
    ImageStoreClient::new(served.detach())
}

/// Runs a pull to its end: the progress updates and the image, or the status.
pub async fn pull(
    client: &mut ImageStoreClient<TracedChannel>,
    req: pb::PullImageRequest,
) -> (Vec<Progress>, Result<pb::Image, tonic::Status>) {
    let mut events = Vec::new();
    let mut stream = match client.pull_image(req).await {
        Ok(s) => s.into_inner(),
        Err(e) => return (events, Err(e)),
    };
    loop {
        match stream.message().await {
            Ok(Some(event)) => match event.into_step() {
                Some(Step::Update(p)) => events.push(p),
                Some(Step::Done(img)) => return (events, Ok(img)),
                None => {
                    return (events, Err(tonic::Status::internal("an empty pull event")));
                }
            },
            Ok(None) => {
                return (
                    events,
                    Err(tonic::Status::internal("stream ended without done")),
                );
            }
            Err(e) => return (events, Err(e)),
        }
    }
}

/// `debugfs -R "cat PATH" IMAGE`.
pub fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .unwrap();
    out.stdout
}

/// `debugfs -R "stat PATH" IMAGE` as text.
pub fn debugfs_stat(image: &Path, path: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything about one tree entry that a runtime must reproduce.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub nlink: u64,
    pub mtime: Option<(i64, i64)>,
    pub content: Option<String>,
    pub link: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Describes every entry under `root` by relative path.
pub fn describe(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.unwrap();
        let path = entry.path();
        let m = std::fs::symlink_metadata(path).unwrap();
        let ft = m.file_type();
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(path).unwrap() {
            let name = name.to_string_lossy().into_owned();
            let value = xattr::get(path, &name).unwrap().unwrap_or_default();
            xattrs.insert(name, value);
        }
        out.insert(
            path.strip_prefix(root).unwrap().to_path_buf(),
            Node {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                rdev: m.rdev(),
                nlink: if ft.is_dir() { 0 } else { m.nlink() },
                // Directories too: umoci restores them after their children.
                mtime: Some((m.mtime(), m.mtime_nsec())),
                content: ft.is_file().then(|| digest(&std::fs::read(path).unwrap())),
                link: ft.is_symlink().then(|| std::fs::read_link(path).unwrap()),
                xattrs,
            },
        );
    }
    out
}

/// Asserts two trees are equal, listing every difference.
pub fn assert_same_tree(ours: &Path, theirs: &Path) {
    assert_same(&describe(ours), &describe(theirs));
}

/// Asserts two described trees are equal, listing every difference.
pub fn assert_same(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) {
    let mut diffs = Vec::new();
    for (p, n) in a {
        match b.get(p) {
            None => diffs.push(format!("only in ours: {}", p.display())),
            Some(m) if m != n => {
                diffs.push(format!("{}:\n  ours   {n:?}\n  theirs {m:?}", p.display()))
            }
            _ => {}
        }
    }
    for p in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("only in theirs: {}", p.display()));
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

/// Describes the tree inside the ext4 file `img`, mounted read-only in a
/// private mount namespace (of one thread, so nothing else sees it); the
/// filesystem's own `lost+found` is left out.
pub fn describe_ext4(img: &Path) -> BTreeMap<PathBuf, Node> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    banger_test_support::require_root();
    let img = img.to_path_buf();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
            .expect("unshare the mount namespace");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private");
        let dir = tempfile::tempdir().unwrap();
        // The mount(8) child inherits this thread's namespace.
        let out = std::process::Command::new("mount")
            .args(["-t", "ext4", "-o", "ro,loop"])
            .arg(&img)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount {}: {}",
            img.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tree = describe(dir.path());
        tree.remove(Path::new("lost+found"));
        let _ = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        tree
    })
    .join()
    .expect("describe the ext4")
}
