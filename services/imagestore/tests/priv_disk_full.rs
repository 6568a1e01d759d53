//! Disk full under a pull, for real: the store's state dir is a small
//! tmpfs (in a private mount namespace) filled close to full, the images
//! come from a real `docker-registry` on 127.0.0.1. Each case must end in
//! RESOURCE_EXHAUSTED naming what ran out and where, with nothing partial
//! left (no temp blob, no staging, no image), and a store that pulls fine
//! once there is room again.

mod common;

use std::path::Path;

use banger_proto::imagestore::v1 as pb;
use banger_test_support::diskfull::{files_under, fill, free, in_private_mounts, mount_tmpfs};
use banger_test_support::registry::Registry;
use common::*;

/// A tar with one `size`-byte file of `seed`-ed content: `random`
/// content does not compress (the blob is as large as the file), a
/// repeated pattern does (a tiny blob that unpacks to `size` bytes, none
/// of them zero, so mke2fs writes every block).
fn one_file_layer(size: usize, random: bool, seed: u64) -> Layer {
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    for (i, b) in data.iter_mut().enumerate() {
        *b = if random {
            // xorshift64: incompressible enough for gzip.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        } else {
            b'a' + (i % 23) as u8
        };
    }
    let mut tar = TarBuilder::new();
    tar.dir("data", 0o755, 0, 0)
        .file("data/blob", 0o644, 0, 0, &data);
    gzip_layer(tar.finish())
}

fn push(registry: &Registry, repo: &str, layers: &[Layer]) -> String {
    let src = tempfile::tempdir().unwrap();
    let mut all = vec![gzip_layer(busybox_layer())];
    all.extend(layers.iter().map(|l| Layer {
        blob: l.blob.clone(),
        diff_id: l.diff_id.clone(),
        media_type: l.media_type,
    }));
    registry.push(
        &layout(src.path(), "latest", &all),
        &format!("{repo}:latest"),
    );
    format!("{}/{repo}:latest", registry.addr)
}

fn req(reference: &str) -> pb::PullImageRequest {
    pb::PullImageRequest {
        reference: reference.into(),
        ..Default::default()
    }
}

/// The status of a failed pull says disk full, where, and what to do.
fn assert_no_space(status: &tonic::Status, under: &Path, what: &str) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        banger_proto::rpc::status::reason_of(status),
        Some("NO_SPACE"),
        "{status:?}"
    );
    let msg = status.message();
    assert!(
        msg.contains("no space left for") && msg.contains(&under.display().to_string()),
        "{msg}"
    );
    assert!(msg.contains(what), "{msg}");
    assert!(
        msg.contains("MiB free") && msg.contains("banger image prune"),
        "{msg}"
    );
}

/// Every file under `state` but verified blobs (`blobs/sha256/*`): what a
/// failed pull must not leave.
fn only_blobs(state: &Path) -> Vec<std::path::PathBuf> {
    files_under(state)
        .into_iter()
        .filter(|p| p.parent() != Some(&state.join("blobs/sha256")))
        .collect()
}

#[test]
fn disk_full_during_download_and_build_leaves_nothing_and_the_store_recovers() {
    banger_test_support::gate!(Priv, ROOT);
    in_private_mounts(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let registry = Registry::start();
            // Two images of incompressible 6 MiB layers, one of a layer that
            // is tiny as a blob but 24 MiB unpacked.
            let big_a = push(&registry, "big-a", &[one_file_layer(6 << 20, true, 1)]);
            let big_b = push(&registry, "big-b", &[one_file_layer(6 << 20, true, 2)]);
            let wide = push(&registry, "wide", &[one_file_layer(24 << 20, false, 0)]);

            let ts = TestStore::new();
            let state = ts.state.path().to_path_buf();
            mount_tmpfs(&state, 64 << 20);
            let sock = tempfile::tempdir().unwrap();
            let mut client = serve(ts.open(config(&[&registry.addr])), sock.path()).await;

            // 1. The download does not fit: refused before a byte lands.
            let filler = fill(&state, 3 << 20);
            let before = free(&state);
            let (_, r) = pull(&mut client, req(&big_a)).await;
            assert_no_space(&r.unwrap_err(), &state.join("blobs"), "MiB needed");
            assert!(files_under(&state).is_empty(), "{:?}", files_under(&state));
            assert!(free(&state) >= before, "space not given back");

            // 2. Two pulls that fit one at a time but not together: each
            // checks before it starts, so at least one runs out while it
            // writes (or is refused up front); whichever way, the failed
            // one keeps no partial blob.
            std::fs::remove_file(&filler).unwrap();
            let filler = fill(&state, 10 << 20);
            let before = free(&state);
            let (mut c2, mut c3) = (client.clone(), client.clone());
            let ((_, a), (_, b)) =
                tokio::join!(pull(&mut c2, req(&big_a)), pull(&mut c3, req(&big_b)));
            let failed: Vec<_> = [&a, &b]
                .into_iter()
                .filter_map(|r| r.as_ref().err())
                .collect();
            assert!(
                !failed.is_empty(),
                "both 6 MiB pulls fit in 10 MiB? {a:?} {b:?}"
            );
            for status in failed {
                assert_no_space(status, &state, "free on its filesystem");
                // Which way it ran out (up front, while writing a blob, or
                // at the build), for the log.
                eprintln!("concurrent pull: {}", status.message());
            }
            let kept: u64 = files_under(&state)
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            // What stays: the blobs of a pull that succeeded (verified,
            // kept for the next pull) and its image; nothing half-written.
            for p in only_blobs(&state) {
                assert!(
                    p.starts_with(state.join("images"))
                        && !p.starts_with(state.join("images/.staging")),
                    "left behind: {p:?}"
                );
            }
            assert!(
                // tmpfs directories take a little of their own.
                free(&state) + kept + (256 << 10) >= before,
                "space not given back: {} free + {kept} kept < {before} before; {a:?} {b:?} {:?}",
                free(&state),
                files_under(&state)
            );
            for name in ["big-a-latest", "big-b-latest"] {
                let _ = client
                    .delete_image(pb::DeleteImageRequest { name: name.into() })
                    .await;
            }
            client.prune_blobs(pb::PruneBlobsRequest {}).await.unwrap();
            assert!(files_under(&state).is_empty(), "{:?}", files_under(&state));

            // 3. The blobs fit, the ext4 does not: refused before mke2fs
            // writes, no staging, no image; the verified blobs are kept.
            std::fs::remove_file(&filler).unwrap();
            let filler = fill(&state, 12 << 20);
            let before = free(&state);
            let (_, r) = pull(&mut client, req(&wide)).await;
            assert_no_space(
                &r.unwrap_err(),
                &state.join("images/.staging"),
                "rootfs.ext4",
            );
            assert!(
                only_blobs(&state).is_empty(),
                "left behind: {:?}",
                only_blobs(&state)
            );
            let blob_bytes: u64 = files_under(&state)
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum();
            assert!(
                free(&state) + blob_bytes + (64 << 10) >= before,
                "space not given back"
            );

            // 4. With room again the store is healthy: the same pulls work.
            std::fs::remove_file(&filler).unwrap();
            for reference in [&big_a, &wide] {
                let (_, r) = pull(&mut client, req(reference)).await;
                let image = r.unwrap_or_else(|e| panic!("{reference} after freeing space: {e:?}"));
                assert!(image.size_bytes > 0);
            }
            let listed = client
                .list_images(pb::ListImagesRequest {})
                .await
                .unwrap()
                .into_inner()
                .images;
            assert_eq!(listed.len(), 2, "{listed:?}");
        });
    });
}
