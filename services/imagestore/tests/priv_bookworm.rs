//! SLOW (minutes on a cold cache: debootstrap from the Debian mirror): the
//! issue's end goal, `docker.io/library/debian:bookworm` reached through a
//! `docker.io` mirror, built into a bootable ext4. The image comes from
//! `scripts/make-test-image.sh bookworm` (cached under target/test-cache)
//! and is pushed with Docker v2 schema 2 media types. Everything after the
//! build runs in a private network namespace, so a fallback to the real
//! docker.io cannot leave the machine.

mod common;

use std::path::Path;
use std::process::Command;

use banger_imagestore::config::Ext4Writer;
use banger_test_support::registry::Registry;
use common::*;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-test-image.sh")
}

fn make_image(registry: &str) {
    let out = Command::new(script())
        .args(["bookworm", registry, "library/debian:bookworm"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-test-image.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn slow_debian_bookworm_via_docker_io_mirror() {
    banger_test_support::gate!(Priv, ROOT);
    banger_test_support::require_program("debootstrap", "debootstrap");
    banger_test_support::require_program("umoci", "umoci");
    // Build (or reuse) the rootfs and OCI layout, with network.
    make_image("-");
    banger_test_support::netns::in_new_netns(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let registry = Registry::start();
            make_image(&registry.addr);
            for writer in [Ext4Writer::Builtin, Ext4Writer::Mke2fs] {
                let mut cfg = config(&[]);
                cfg.ext4_writer = writer;
                cfg.mirrors.insert(
                    "docker.io".into(),
                    vec![format!("http://{}", registry.addr)],
                );
                let ts = TestStore::new();
                let sock = tempfile::tempdir().unwrap();
                let mut client = serve(ts.open(cfg), sock.path()).await;
                let request = banger_proto::imagestore::v1::PullImageRequest {
                    reference: "docker.io/library/debian:bookworm".into(),
                    kernel_ref: "generic-6.12".into(),
                    ..Default::default()
                };
                let (_, image) = pull(&mut client, request.clone()).await;
                let image = image.unwrap();
                assert_eq!(image.name, "debian-bookworm");
                assert_eq!(image.reference, "docker.io/library/debian:bookworm");
                assert_eq!(image.default_kernel, "generic-6.12");
                assert!(image.direct_boot);
                let g = image.guest.clone().unwrap();
                assert!(g.has_systemd, "{g:?}");
                assert!(g.has_ssh_server, "{g:?}");
                assert!(g.has_agent, "{g:?}");
                assert_eq!(g.os_id, "debian");
                assert_eq!(g.os_version_id, "12");

                let ext4 = ts.state.path().join("images/debian-bookworm/rootfs.ext4");
                let fsck = Command::new("e2fsck")
                    .arg("-fn")
                    .arg(&ext4)
                    .output()
                    .unwrap();
                assert!(
                    fsck.status.success(),
                    "{}",
                    String::from_utf8_lossy(&fsck.stdout)
                );
                assert_eq!(
                    debugfs_cat(&ext4, "/usr/local/libexec/banger-first-boot"),
                    b"fake banger-first-boot\n"
                );
                let sshd = debugfs_stat(&ext4, "/usr/sbin/sshd");
                assert!(sshd.contains("Type: regular"), "{sshd}");
                assert!(debugfs_stat(&ext4, "/usr/bin/passwd").contains("Mode:  04755"));
                // Headroom is there for the guest to write.
                assert!(image.size_bytes > image.content_bytes + (8 << 20));

                // A re-pull of the built digest is answered from the record.
                let (_, again) = pull(&mut client, request).await;
                assert_eq!(again.unwrap().created_unix, image.created_unix);

                // The ext4 of a real distro equals umoci's unpack, guest bits aside.
                let mut ours = describe_ext4(&ext4);
                for guest in [
                    "usr/local/bin/banger-agent",
                    "usr/local/libexec/banger-first-boot",
                    "etc/systemd/system/banger-agent.service",
                    "etc/systemd/system/banger-first-boot.service",
                    "etc/systemd/system/multi-user.target.wants/banger-agent.service",
                    "etc/systemd/system/multi-user.target.wants/banger-first-boot.service",
                ] {
                    assert!(
                        ours.remove(Path::new(guest)).is_some(),
                        "{guest} not injected"
                    );
                }
                let bundle = tempfile::tempdir().unwrap();
                let layout = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../target/test-cache/bookworm/oci");
                let out = Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:latest", layout.display()))
                    .arg(bundle.path().join("b"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "umoci: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let theirs = describe(&bundle.path().join("b/rootfs"));
                // The one directory injection had to create.
                assert!(!theirs.contains_key(Path::new("usr/local/libexec")));
                assert!(ours.remove(Path::new("usr/local/libexec")).is_some());
                assert_same(&ours, &theirs);
                let acl = theirs
                    .values()
                    .filter(|n| n.xattrs.keys().any(|k| k.starts_with("system.posix_acl")))
                    .count();
                assert!(acl > 0, "bookworm has ACLs (/var/log/journal)");
                // ACLs (systemd's /var/log/journal) and setuid bits made it.
                assert_eq!(ours[Path::new("usr/bin/passwd")].mode & 0o7777, 0o4755);
            }
        });
    });
}
