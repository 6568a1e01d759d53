//! End-to-end tier "the unmodified Docker Hub image" (issue #12), inside a
//! private network namespace: `debian:bookworm` as Docker Hub ships it (no
//! init, no systemd, no sshd, the official apt configuration; see
//! `banger_test_support::minbase`) pushed to a local registry as
//! `docker.io/library/debian:bookworm`; a Debian mirror made of Debian's real
//! signed files (`banger_test_support::debian_mirror`) served on port 80 of
//! the bridge's gateway, and DNS on the gateway answering its host names,
//! handed to guests by `[netd] dns`. With DEFAULT timeouts:
//!
//! - `vm create a --nat` prepares the image once (the guest's own apt
//!   installs systemd-sysv and openssh-server from the mirror), showing
//!   progress; `vm ssh a -- id` is root;
//! - `vm create b` runs no package manager (proved from inside b: dpkg's and
//!   apt's logs unchanged since before b booted, identical to a's; and from
//!   outside: no DNS question, no mirror request) and is ready about as fast
//!   as a systemd image (`c`, the debootstrapped systemd image of the other
//!   tier, created in the same run);
//! - with DNS answering NXDOMAIN, creating a VM of a never-prepared image
//!   (the same image plus one tiny layer) fails well before the readiness
//!   timeout, names DNS, keeps the console log, and leaks nothing.
//!
//! Figures (stderr, `FIGURES`): fixture build, preparation (a's create),
//! b's and c's create→SSH.
//!
//! The assertions that need all of #12 (vmm's preparation and the Rust
//! first boot with its console events) are marked `host_side(…)`: with
//! [`ISSUE12_MERGED`] false (a branch without them) they print `PENDING`
//! instead of failing. Costs ~4–7 min under TCG (the install in the
//! preparation VM dominates: 110–250 s here).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use banger_test_support::cli::{self, Banger as Env, text};
use banger_test_support::debian_mirror::{self, MIRROR_HOSTS};
use banger_test_support::netns::in_new_netns;
use banger_test_support::registry::{Registry, push_with_skopeo};
use banger_test_support::serve::{DnsServer, FileServer};
use banger_test_support::{debian_archive, leaks, minbase, procs};

/// Whether vmm's preparation and the Rust first boot (console events,
/// power-off when prepared, DNS failures named) are both in.
const ISSUE12_MERGED: bool = true;

/// The bridge's subnet and its gateway (netd's default, spelled out: the
/// servers and `[netd] dns` name the gateway).
const SUBNET: &str = "172.30.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// vmm's default readiness timeout; "fails fast" means well within it.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// An assertion only #12's host side can satisfy (see the module docs).
fn host_side(ok: bool, what: &str) {
    if ISSUE12_MERGED {
        assert!(ok, "{what}");
    } else if !ok {
        eprintln!("PENDING (#12): {what}");
    }
}

/// `vm create` with default settings and `--timings` (the only output
/// of the phases when stderr is not a terminal), and the seconds of its
/// `preparing` phase, if it really prepared.
fn create(env: &Env, args: &[&str]) -> (Output, Option<f64>) {
    let mut full = vec!["vm", "create", "--timings"];
    full.extend_from_slice(args);
    let out = env.run(&full);
    let preparing = text(&out).lines().find_map(|l| {
        let mut words = l
            .split(|c: char| c.is_whitespace() || c == '|' || c == '│')
            .filter(|w| !w.is_empty());
        (words.next() == Some("preparing"))
            .then(|| words.next()?.parse().ok())
            .flatten()
    });
    // vmm reports a (near-)zero `preparing` phase when it finds the
    // image prepared already: only a real one counts.
    (out, preparing.filter(|s| *s >= 1.0))
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a VM owns on the host, to compare before and after a failed create.
#[derive(Debug, PartialEq, Eq)]
struct Owned {
    taps: Vec<String>,
    nat_elements: String,
    guard_elements: String,
    vm_dirs: Vec<String>,
    hypervisors: usize,
}

fn owned(env: &Env) -> Owned {
    let mut taps = leaks::taps();
    taps.sort();
    let mut vm_dirs: Vec<String> = std::fs::read_dir(env.home.join("state/vms"))
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                // `.prepared` holds images' prepared filesystems, no VM.
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    vm_dirs.sort();
    let hypervisors = procs::command_lines_mentioning(&env.home, &["qemu-system"]).len();
    Owned {
        taps,
        nat_elements: sh("nft -j list set inet banger nat_sources"),
        guard_elements: sh("nft -j list set bridge banger leases"),
        vm_dirs,
        hypervisors,
    }
}

/// Proof from inside the guest that no package manager ran since it
/// booted: the boot time (Unix seconds) and the mtimes of dpkg's and apt's
/// state and logs, plus a digest of dpkg's log to compare between VMs.
struct PackageState {
    booted: i64,
    mtimes: Vec<(String, i64)>,
    dpkg_log_sha: String,
}

fn package_state(env: &Env, vm: &str) -> PackageState {
    let files = [
        "/var/log/dpkg.log",
        "/var/log/apt/history.log",
        "/var/lib/dpkg/status",
    ];
    let script = format!(
        "echo booted $(( $(date +%s) - $(cut -d. -f1 /proc/uptime) )); \
         for f in {}; do echo mtime $f $(stat -c %Y $f); done; \
         echo sha $(sha256sum /var/log/dpkg.log | cut -d' ' -f1)",
        files.join(" ")
    );
    let out = env.ok(&["vm", "exec", vm, "--", "sh", "-c", &script]);
    let mut state = PackageState {
        booted: 0,
        mtimes: Vec::new(),
        dpkg_log_sha: String::new(),
    };
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["booted", t] => state.booted = t.parse().unwrap(),
            ["mtime", f, t] => state.mtimes.push(((*f).into(), t.parse().unwrap())),
            ["sha", s] => state.dpkg_log_sha = (*s).into(),
            _ => panic!("unexpected line from {vm}: {line:?} in {out}"),
        }
    }
    assert_eq!(state.mtimes.len(), files.len(), "{vm}: {out}");
    state
}

#[test]
fn an_unmodified_docker_hub_image_is_prepared_once_and_fails_fast_without_a_mirror() {
    banger_test_support::gate!(E2e, ROOT, QEMU, VHOST_VSOCK, SHARED);
    let bins = cli::bin_dir(env!("CARGO_BIN_EXE_banger"), true);
    // Everything that needs the internet, before the namespace: the image,
    // the mirror for its apt, the kernel archive, the systemd image.
    let started = Instant::now();
    let image = minbase::debian_bookworm_minbase();
    let mirror = debian_mirror::guest_mirror(&image.rootfs, &["systemd-sysv", "openssh-server"]);
    let kernel_archive = debian_archive::bookworm_security();
    mirror.add_archive(&kernel_archive);
    let repo = banger_test_support::fixtures::repo_root();
    let status = Command::new(repo.join("scripts/make-test-image.sh"))
        .args(["bookworm", "-", "library/debian:bookworm"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "make-test-image.sh bookworm (build) failed"
    );
    let systemd_layout = repo.join("target/test-cache/bookworm/oci");
    let fixtures_time = started.elapsed();

    in_new_netns(move || {
        let work = tempfile::tempdir().unwrap();
        let env = Env::new(bins, work.path().join("home"), work.path().join("user"));
        // A failed test must not leave services or guests running in its
        // (then unreachable) namespace.
        let _down = cli::Down(env.clone());
        std::fs::create_dir_all(&env.home).unwrap();
        std::fs::create_dir_all(&env.user_home).unwrap();

        let registry = Registry::start();
        image.push(&registry, minbase::TAG, "library/debian:bookworm");
        image.push(
            &registry,
            minbase::MARKED_TAG,
            "library/debian:bookworm-marked",
        );
        push_with_skopeo(
            &format!("oci:{}:latest", systemd_layout.display()),
            &format!("docker://{}/library/debian:bookworm-systemd", registry.addr),
            &["--format", "v2s2"],
        );
        // On every address of the namespace: loopback for kernelcat, the
        // gateway (once netd made the bridge) for guests.
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let files = FileServer::start(mirror.root(), any(80));
        let names: Vec<(&str, Ipv4Addr)> = MIRROR_HOSTS.iter().map(|h| (*h, GATEWAY)).collect();
        let dns = DnsServer::start(any(53), &names);
        std::fs::write(
            env.home.join("banger.toml"),
            format!(
                "[kernelcat.archive_mirrors]\n\
                 \"http://deb.debian.org/debian-security\" = [\"http://127.0.0.1/debian-security\"]\n\
                 [imagestore]\ninsecure_registries = [\"{a}\"]\n\
                 [imagestore.mirrors]\n\"docker.io\" = [\"http://{a}\"]\n\
                 [netd]\nsubnet = \"{SUBNET}\"\ndns = [\"{GATEWAY}\"]\n\
                 [vmm]\nhypervisor = \"qemu\"\nqemu_accel = \"auto\"\n",
                a = registry.addr,
            ),
        )
        .unwrap();

        env.ok(&["up"]);
        for tag in ["bookworm", "bookworm-marked", "bookworm-systemd"] {
            env.ok(&[
                "image",
                "pull",
                &format!("docker.io/library/debian:{tag}"),
                "--kernel-ref",
                "debian-6.12",
            ]);
        }
        let shown = env.json(&["image", "show", "debian-bookworm"]);
        assert_eq!(
            shown["needs_preparation"],
            serde_json::json!(true),
            "the minbase image needs preparing: {shown:#}"
        );
        assert!(
            shown["preparation"].is_null(),
            "nothing prepared yet: {shown:#}"
        );
        let systemd_image = env.json(&["image", "show", "debian-bookworm-systemd"]);
        assert_eq!(
            systemd_image["needs_preparation"],
            serde_json::json!(false),
            "the systemd image needs no preparation: {systemd_image:#}"
        );

        // A: the first VM of the image prepares it.
        let started = Instant::now();
        let (out, a_preparing) = create(
            &env,
            &["--image", "debian-bookworm", "--name", "a", "--nat"],
        );
        let a_time = started.elapsed();
        assert!(out.status.success(), "vm create a failed: {}", text(&out));
        host_side(
            a_preparing.is_some(),
            &format!("a's create had a preparing phase: {}", text(&out)),
        );
        let id = env.ok(&["vm", "ssh", "a", "--", "id"]);
        assert!(id.contains("uid=0(root)"), "{id}");
        let shown = env.json(&["image", "show", "debian-bookworm"]);
        let preparation = &shown["preparation"];
        host_side(
            preparation["prepared"] == serde_json::json!(true)
                && preparation["has_systemd"] == serde_json::json!(true)
                && preparation["has_ssh_server"] == serde_json::json!(true),
            &format!("debian-bookworm is prepared, with systemd and sshd: {shown:#}"),
        );
        let packages = preparation["packages"].to_string();
        host_side(
            packages.contains("systemd-sysv") && packages.contains("openssh-server"),
            &format!("the preparation records what it installed: {shown:#}"),
        );
        let prepare_seconds = preparation["seconds"].as_f64().unwrap_or(0.0);
        let digest = shown["digest"].as_str().unwrap().replace(':', "-");
        host_side(
            env.home
                .join(format!("state/vms/.prepared/{digest}/rootfs.ext4"))
                .is_file(),
            "the prepared filesystem is kept under state/vms/.prepared/<digest>",
        );
        // The install ran in a one-off preparation VM, so even a booted a
        // copy of its result.
        let a_state = package_state(&env, "a");
        for (file, mtime) in &a_state.mtimes {
            host_side(
                *mtime < a_state.booted,
                &format!(
                    "{file} changed after a booted ({mtime} ≥ {})",
                    a_state.booted
                ),
            );
        }
        assert!(
            files.requests().iter().any(|r| r.path.ends_with(".deb")),
            "the guest's apt fetched from the mirror"
        );

        // B: same image, no package manager, systemd-image speed.
        let dns_before = dns.queries().len();
        let files_before = files.requests().len();
        let started = Instant::now();
        let (out, preparing) = create(&env, &["--image", "debian-bookworm", "--name", "b"]);
        assert!(out.status.success(), "vm create b failed: {}", text(&out));
        host_side(
            preparing.is_none(),
            &format!("b's create prepared again: {}", text(&out)),
        );
        env.ok(&["vm", "ssh", "b", "--", "true"]);
        let b_time = started.elapsed();
        let b_state = package_state(&env, "b");
        for (file, mtime) in &b_state.mtimes {
            host_side(
                *mtime < b_state.booted,
                &format!(
                    "{file} changed after b booted ({mtime} ≥ {})",
                    b_state.booted
                ),
            );
        }
        host_side(
            b_state.dpkg_log_sha == a_state.dpkg_log_sha,
            "b's dpkg log is a's (the prepared image's), untouched",
        );
        host_side(
            dns.queries().len() == dns_before,
            &format!(
                "b asked DNS for the mirror: {:?}",
                &dns.queries()[dns_before..]
            ),
        );
        host_side(
            files.requests().len() == files_before,
            &format!(
                "b fetched from the mirror: {:?}",
                &files.requests()[files_before..]
            ),
        );

        // C: the debootstrapped systemd image, for comparison.
        let started = Instant::now();
        let (out, _) = create(&env, &["--image", "debian-bookworm-systemd", "--name", "c"]);
        assert!(out.status.success(), "vm create c failed: {}", text(&out));
        env.ok(&["vm", "ssh", "c", "--", "true"]);
        let c_time = started.elapsed();
        eprintln!(
            "FIGURES fixtures {fixtures_time:.1?}; a's create {a_time:.1?} (preparing phase \
             {a_preparing:?} s, image show: {prepare_seconds:.1} s); create→ssh: b {b_time:.1?}, \
             systemd image c {c_time:.1?} ({:.2}x)",
            b_time.as_secs_f64() / c_time.as_secs_f64()
        );
        host_side(
            b_time.as_secs_f64() <= 1.5 * c_time.as_secs_f64(),
            "b is ready in about the time a systemd image needs",
        );
        env.ok(&["vm", "rm", "--force", "c"]);

        // No mirror: a never-prepared image (new digest), DNS says NXDOMAIN.
        let before = owned(&env);
        dns.set_answering(false);
        let dns_before = dns.queries().len();
        let started = Instant::now();
        let out = env.run(&[
            "vm",
            "create",
            "--image",
            "debian-bookworm-marked",
            "--name",
            "nomirror",
            "--nat",
        ]);
        let failed_after = started.elapsed();
        dns.set_answering(true);
        eprintln!("FIGURES no-mirror create failed after {failed_after:.1?}");
        assert!(!out.status.success(), "create without a mirror succeeded");
        assert!(
            dns.queries()[dns_before..]
                .iter()
                .any(|q| q.name == "deb.debian.org" && q.rcode == 3),
            "the guest asked our DNS for the mirror (and got NXDOMAIN): {:?}",
            &dns.queries()[dns_before..]
        );
        host_side(
            failed_after < DEFAULT_READY_TIMEOUT - Duration::from_secs(30),
            &format!("fails well before the timeout: {failed_after:.1?}"),
        );
        let said = text(&out).to_lowercase();
        host_side(
            said.contains("dns") || said.contains("resolv"),
            &format!("the error names DNS: {}", text(&out)),
        );
        // Kept (apt's attempt to reach the mirror is in it) where `vm logs`
        // finds it, or where the error says.
        let logs = env.run(&["vm", "logs", "nomirror"]);
        let by_name = logs.status.success() && text(&logs).contains("deb.debian.org");
        let error_text = text(&out);
        let by_path = error_text
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
            .map(|w| w.trim_end_matches([':', '.', ';']))
            .filter(|w| w.starts_with('/'))
            .filter_map(|w| std::fs::read(w).ok())
            .any(|log| String::from_utf8_lossy(&log).contains("deb.debian.org"));
        host_side(
            by_name || by_path,
            &format!(
                "the failed create's console log is kept (vm logs: {}; error: {error_text})",
                text(&logs)
            ),
        );
        let shown = env.json(&["image", "show", "debian-bookworm-marked"]);
        let preparation = &shown["preparation"];
        host_side(
            preparation["prepared"] == serde_json::json!(false)
                && preparation["failed_reason"]
                    .as_str()
                    .is_some_and(|r| r.to_lowercase().contains("dns")),
            &format!("a failed preparation leaves the image unprepared, saying why: {shown:#}"),
        );
        let vms = env.json(&["vm", "list"]);
        assert!(
            vms.as_array()
                .unwrap()
                .iter()
                .all(|v| v["name"] != "nomirror"),
            "the failed VM's record was rolled back: {vms:#}"
        );
        assert_eq!(owned(&env), before, "the failed create leaked");

        // Clean up; nothing of any VM left.
        env.ok(&["vm", "rm", "--force", "a"]);
        env.ok(&["vm", "rm", "--force", "b"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while owned(&env).hypervisors > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let after = owned(&env);
        assert_eq!(after.taps, Vec::<String>::new(), "{after:?}");
        assert_eq!(after.vm_dirs, Vec::<String>::new(), "{after:?}");
        assert_eq!(after.hypervisors, 0, "{after:?}");
        assert!(!after.nat_elements.contains("\"elem\""), "{after:?}");
        assert!(!after.guard_elements.contains("\"elem\""), "{after:?}");
        assert_eq!(env.json(&["network", "leases"]), serde_json::json!([]));
        env.ok(&["down"]);
        drop(registry);
    });
}
