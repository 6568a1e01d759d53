//! Privileged tier: the fixtures of the unmodified-image end-to-end tier
//! (`cli/tests/e2e_unmodified_image.rs`), proven without banger. The minbase
//! image is what Docker Hub's `debian:bookworm` is (no init, no systemd, no
//! sshd, the official apt configuration); the mirror, served on 127.0.0.1:80
//! of a namespace with only loopback, with DNS on 127.0.0.1:53 answering
//! `deb.debian.org`, lets that image's own apt — in a chroot of a copy —
//! verify Debian's real signatures and install `systemd-sysv
//! openssh-server`; without DNS, or with a tampered `InRelease`, the same
//! `apt-get update --error-on=any` fails and says why.
//!
//! Needs root, debootstrap, umoci, lz4, gpgv, and the Debian mirror on a
//! cold cache (everything is fetched before entering the namespace).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use banger_test_support::debian_mirror::{self, MIRROR_HOSTS};
use banger_test_support::minbase::{self, check_official};
use banger_test_support::netns::in_new_netns;
use banger_test_support::serve::{DnsServer, FileServer};

const PACKAGES: [&str; 2] = ["systemd-sysv", "openssh-server"];

/// `argv` in a chroot of `root`, in a private mount namespace with /proc
/// and the host's /dev (gone with the process).
fn in_chroot(root: &Path, argv: &str) -> Output {
    let started = Instant::now();
    let out = Command::new("unshare")
        .args(["--mount", "--fork", "--", "sh", "-c"])
        .arg(
            "mount -t proc proc \"$0/proc\" && mount --rbind /dev \"$0/dev\" && \
             exec chroot \"$0\" /bin/sh -c \"$1\"",
        )
        .arg(root)
        .arg(argv)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .output()
        .expect("run unshare + chroot");
    eprintln!(
        "$ {argv}   ({:.1?}, {})\n{}{}",
        started.elapsed(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_official_minbase_image_installs_systemd_and_sshd_from_the_local_mirror() {
    banger_test_support::gate!(Priv, ROOT);
    banger_test_support::require_program("unshare", "util-linux");
    let started = Instant::now();
    let image = minbase::debian_bookworm_minbase();
    let image_time = started.elapsed();
    check_official(&image.rootfs).expect("the cached image is the official one");
    let started = Instant::now();
    let mirror = debian_mirror::guest_mirror(&image.rootfs, &PACKAGES);
    let mirror_time = started.elapsed();
    assert_eq!(
        mirror.suites,
        ["bookworm", "bookworm-updates", "bookworm-security"]
    );
    for wanted in PACKAGES.iter().chain(&["systemd", "openssh-client"]) {
        assert!(
            mirror.debs.iter().any(|d| d.package == *wanted),
            "{wanted} is not in the closure: {:?}",
            mirror.debs
        );
    }
    assert!(
        mirror.debs.iter().all(|d| !d.paths.is_empty()),
        "every .deb is served"
    );

    // The image's own tree, copied: apt changes it.
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    banger_test_support::run(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&image.rootfs)
            .arg(&root),
    );
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    // No services started from maintainer scripts (sshd would outlive the test).
    std::fs::write(root.join("usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n").unwrap();
    banger_test_support::run(
        Command::new("chmod")
            .arg("755")
            .arg(root.join("usr/sbin/policy-rc.d")),
    );
    let tree: PathBuf = mirror.root().to_path_buf();
    let debs = mirror.debs.clone();

    let (update_time, install_time) = in_new_netns(move || {
        let any = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let files = FileServer::start(&tree, any(80));
        let names: Vec<(&str, Ipv4Addr)> = MIRROR_HOSTS
            .iter()
            .map(|h| (*h, Ipv4Addr::LOCALHOST))
            .collect();
        let dns = DnsServer::start(any(53), &names);

        // No DNS answer for the mirror: update fails, naming resolution.
        dns.set_answering(false);
        let out = in_chroot(&root, "apt-get update --error-on=any");
        assert!(!out.status.success(), "apt-get update passed without DNS");
        assert!(
            text(&out).contains("resolve"),
            "the failure names DNS: {}",
            text(&out)
        );
        assert!(
            dns.queries()
                .iter()
                .any(|q| q.name == "deb.debian.org" && q.rcode == 3),
            "the chroot's resolver asked our DNS: {:?}",
            dns.queries()
        );
        dns.set_answering(true);

        // One byte of Debian's signed text changed: apt refuses the suite.
        let inrelease = tree.join("debian/dists/bookworm/InRelease");
        let genuine = std::fs::read(&inrelease).unwrap();
        let at = genuine
            .windows(9)
            .position(|w| w == b"Codename:")
            .expect("InRelease has a Codename");
        let mut tampered = genuine.clone();
        tampered[at + 10] ^= 0x20;
        std::fs::write(&inrelease, &tampered).unwrap();
        let out = in_chroot(&root, "apt-get update --error-on=any");
        assert!(
            !out.status.success(),
            "apt-get update accepted a tampered InRelease"
        );
        assert!(
            text(&out).contains("BADSIG") || text(&out).contains("signature"),
            "the failure names the signature: {}",
            text(&out)
        );
        std::fs::write(&inrelease, &genuine).unwrap();

        // The real thing: verified update, then the install.
        let started = Instant::now();
        let out = in_chroot(&root, "apt-get update --error-on=any");
        let update_time = started.elapsed();
        assert!(
            out.status.success(),
            "apt-get update failed: {}",
            text(&out)
        );
        for suite in ["bookworm", "bookworm-updates", "bookworm-security"] {
            assert!(
                text(&out).contains(&format!(" {suite} InRelease")),
                "{suite} InRelease fetched: {}",
                text(&out)
            );
        }
        let started = Instant::now();
        let out = in_chroot(
            &root,
            "apt-get install -y -q --no-install-recommends systemd-sysv openssh-server",
        );
        let install_time = started.elapsed();
        assert!(
            out.status.success(),
            "apt-get install failed: {}",
            text(&out)
        );
        let fetched: Vec<String> = files
            .requests()
            .into_iter()
            .filter(|r| r.status == 200 && r.path.ends_with(".deb"))
            .map(|r| r.path)
            .collect();
        for deb in &debs {
            assert!(
                deb.paths.iter().any(|p| fetched.contains(p)),
                "{} {} was not fetched from the mirror: {fetched:?}",
                deb.package,
                deb.version
            );
        }
        let missed: Vec<_> = files
            .requests()
            .into_iter()
            .filter(|r| r.status != 200)
            .collect();
        assert!(
            missed.is_empty(),
            "apt asked for what a Debian mirror has and this one lacks: {missed:?}"
        );
        (update_time, install_time)
    });
    let init = std::fs::read_link(root_of(&work).join("sbin/init")).expect("/sbin/init now exists");
    assert!(
        init.ends_with("systemd"),
        "/sbin/init -> {}",
        init.display()
    );
    assert!(root_of(&work).join("usr/sbin/sshd").is_file());
    eprintln!(
        "FIGURES minbase image {image_time:.1?}, mirror {mirror_time:.1?} ({} debs), \
         apt-get update {update_time:.1?}, install {install_time:.1?}",
        mirror.debs.len()
    );
}

fn root_of(work: &tempfile::TempDir) -> PathBuf {
    work.path().join("root")
}
