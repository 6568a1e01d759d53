//! `banger-first-boot` (the agent's first-boot mode) really as PID 1: a debootstrapped Debian bookworm
//! (minbase + systemd, cached under `target/test-cache/`) booted by
//! `systemd-nspawn` with first boot as the container's init (nspawn runs
//! the given program as PID 1 unless `--as-pid2`), which applies the
//! identity, enables the agent and execs systemd. The static agent inside
//! listens on a unix socket bind-mounted from the host (a drop-in replaces
//! its vsock listener: a container shares the host's vsock), and the test
//! drives it: `systemctl is-system-running` is not `offline`,
//! `banger-agent` is active, Facts say systemd, Shutdown powers the
//! container off (nspawn exits 0). A second boot proves idempotence.
//! `--private-network`: the container has no network at all.

#[path = "common/bookworm.rs"]
mod bookworm;
mod common;
#[path = "common/guest_bundle.rs"]
mod guest_bundle;

use bookworm::{bookworm, copy_tree, debootstrap, init_repo};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_proto::agent::v1::ShutdownRequest;
use banger_proto::agent::v1::agent_client::AgentClient;
use tonic::transport::{Channel, Endpoint};

use banger_test_support::qemu::Reaped;

fn install(root: &Path, bundle: &Path, from: &str, to: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let dest = root.join(to);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(bundle.join(from), &dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).unwrap();
}

const IDENTITY: &str = r#"{
  "hostname": "nspawned",
  "ssh_authorized_keys": [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2OBhyKo1LWcDCdg2dQBoe23VhQHi50q8/oiiPmQMUC test@banger"
  ],
  "dns": [
    "127.0.0.53"
  ]
}
"#;

fn boot(root: &Path, socks: &Path, console: &Path, machine: &str, extra: &[String]) -> Reaped {
    let log = std::fs::File::create(console).unwrap();
    Reaped(
        Command::new("systemd-nspawn")
            .args(extra)
            .arg("--quiet")
            .arg("-D")
            .arg(root)
            .arg(format!("--machine={machine}"))
            .args([
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=pipe",
            ])
            .arg("--kill-signal=SIGRTMIN+3")
            .arg(format!("--bind={}:/banger-test", socks.display()))
            .arg("/usr/local/libexec/banger-first-boot")
            .stdin(Stdio::null())
            // One open file for both, so they share the offset.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start systemd-nspawn"),
    )
}

async fn try_channel(sock: &Path) -> Result<Channel, tonic::transport::Error> {
    let sock = sock.to_path_buf();
    Endpoint::from_static("http://agent.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(sock)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
}

async fn channel(sock: &Path) -> Channel {
    try_channel(sock).await.expect("connect to the agent")
}

/// Waits until the agent answers Ping (the container is booting).
async fn wait_agent(sock: &Path, nspawn: &mut Reaped, console: &Path) -> Duration {
    let start = Instant::now();
    for _ in 0..1200 {
        if let Some(status) = nspawn.0.try_wait().unwrap() {
            panic!(
                "systemd-nspawn exited ({status}) before the agent answered\n{}",
                std::fs::read_to_string(console).unwrap_or_default()
            );
        }
        if sock.exists()
            && let Ok(Ok(ch)) =
                tokio::time::timeout(Duration::from_secs(2), try_channel(sock)).await
            && AgentClient::new(ch)
                .ping(banger_proto::agent::v1::PingRequest {})
                .await
                .is_ok()
        {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the agent never answered\n{}",
        std::fs::read_to_string(console).unwrap_or_default()
    );
}

async fn run(ch: &Channel, script: &str) -> String {
    let ran = common::exec(ch.clone(), common::sh(script), vec![]).await;
    String::from_utf8_lossy(&ran.stdout).trim().to_owned()
}

async fn shutdown(ch: Channel, nspawn: &mut Reaped, console: &Path) {
    AgentClient::new(ch)
        .shutdown(ShutdownRequest { reboot: false })
        .await
        .unwrap();
    for _ in 0..1200 {
        if let Some(status) = nspawn.0.try_wait().unwrap() {
            assert!(
                status.success(),
                "nspawn exit {status}\n{}",
                std::fs::read_to_string(console).unwrap_or_default()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the container did not power off\n{}",
        std::fs::read_to_string(console).unwrap_or_default()
    );
}

/// Copies `rootfs` to `<dir>/root` and injects the guest bundle the way
/// imagestore does, plus the test drop-in and an identity; returns the host
/// dir bind-mounted at /banger-test.
fn prepare(rootfs: &Path, dir: &Path) -> PathBuf {
    let bundle = guest_bundle::bundle();
    let root = dir.join("root");
    copy_tree(rootfs, &root);
    install(
        &root,
        &bundle,
        "banger-agent",
        "usr/local/bin/banger-agent",
        0o755,
    );
    install(
        &root,
        &bundle,
        "banger-first-boot",
        "usr/local/libexec/banger-first-boot",
        0o755,
    );
    install(
        &root,
        &bundle,
        "banger-agent.service",
        "etc/systemd/system/banger-agent.service",
        0o644,
    );
    std::fs::create_dir_all(root.join("etc/systemd/system/banger-agent.service.d")).unwrap();
    std::fs::write(
        root.join("etc/systemd/system/banger-agent.service.d/test.conf"),
        "[Service]\nExecStart=\nExecStart=/usr/local/bin/banger-agent --listen-unix /banger-test/agent.sock\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("etc/banger")).unwrap();
    std::fs::write(root.join("etc/banger/identity.json"), IDENTITY).unwrap();
    let socks = dir.join("socks");
    std::fs::create_dir_all(&socks).unwrap();
    socks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_as_pid1_execs_systemd_with_the_agent_active() {
    banger_test_support::gate!(Priv, ROOT, NSPAWN);
    banger_test_support::require_program("systemd-nspawn", "systemd-container");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let socks = prepare(&bookworm(), dir.path());
    let sock = socks.join("agent.sock");
    let machine = format!("banger-fb-{}", std::process::id());

    // First boot.
    let console = dir.path().join("console-1.log");
    let mut nspawn = boot(&root, &socks, &console, &machine, &[]);
    let took = wait_agent(&sock, &mut nspawn, &console).await;
    eprintln!("TIMING: nspawn first boot → agent answered: {took:?}");
    let ch = channel(&sock).await;
    let state = run(&ch, "systemctl is-system-running --wait").await;
    eprintln!("systemctl is-system-running: {state}");
    assert!(
        ["running", "degraded"].contains(&state.as_str()),
        "is-system-running: {state}\n{}",
        run(&ch, "systemctl --failed --no-legend").await
    );
    assert_eq!(run(&ch, "systemctl is-active banger-agent").await, "active");
    assert_eq!(
        run(&ch, "ps -o comm= -p 1 2>/dev/null || cat /proc/1/comm").await,
        "systemd"
    );
    assert_eq!(run(&ch, "cat /etc/hostname").await, "nspawned");
    assert_eq!(
        run(&ch, "stat -c %a /root/.ssh/authorized_keys").await,
        "600"
    );
    assert_eq!(
        run(&ch, "readlink /etc/systemd/system/dev-vdb.device").await,
        "/dev/null"
    );
    let facts = common::facts(ch.clone()).await;
    assert_eq!(facts.init_system, "systemd");
    assert_eq!(
        facts.os_release.get("ID").map(String::as_str),
        Some("debian")
    );
    shutdown(ch, &mut nspawn, &console).await;
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(log.contains("banger-first-boot: identity applied"), "{log}");
    assert!(
        log.contains("banger-first-boot: exec /usr/lib/systemd/systemd"),
        "{log}"
    );

    // Second boot: nothing left to do but exec systemd.
    let console = dir.path().join("console-2.log");
    let _ = std::fs::remove_file(&sock);
    let mut nspawn = boot(&root, &socks, &console, &machine, &[]);
    let took = wait_agent(&sock, &mut nspawn, &console).await;
    eprintln!("TIMING: nspawn second boot → agent answered: {took:?}");
    let ch = channel(&sock).await;
    shutdown(ch, &mut nspawn, &console).await;
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(
        log.contains("banger-first-boot: identity already applied"),
        "{log}"
    );
    assert!(!log.contains("banger-first-boot: linked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_installs_systemd_and_ssh_from_apt_when_the_image_has_no_init() {
    banger_test_support::gate!(Priv, ROOT, NSPAWN);
    banger_test_support::require_program("systemd-nspawn", "systemd-container");
    let minbase = debootstrap("bookworm-minbase", None);
    assert!(!minbase.join("usr/lib/systemd/systemd").exists());
    let repo = init_repo(&minbase);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let socks = prepare(&minbase, dir.path());
    // The container has no network: apt sees only the local repository.
    let _ = std::fs::remove_file(root.join("etc/apt/sources.list.d/debian.sources"));
    std::fs::write(
        root.join("etc/apt/sources.list"),
        "deb [trusted=yes] file:/banger-repo ./\n",
    )
    .unwrap();
    let sock = socks.join("agent.sock");
    let console = dir.path().join("console.log");
    let machine = format!("banger-fbi-{}", std::process::id());
    let mut nspawn = boot(
        &root,
        &socks,
        &console,
        &machine,
        &[format!("--bind-ro={}:/banger-repo", repo.display())],
    );
    let took = wait_agent(&sock, &mut nspawn, &console).await;
    eprintln!("TIMING: nspawn install boot → agent answered: {took:?}");
    let ch = channel(&sock).await;
    let state = run(&ch, "systemctl is-system-running --wait").await;
    eprintln!("systemctl is-system-running: {state}");
    assert!(["running", "degraded"].contains(&state.as_str()), "{state}");
    assert_eq!(run(&ch, "systemctl is-active banger-agent").await, "active");
    assert_eq!(run(&ch, "systemctl is-active ssh").await, "active");
    assert_eq!(run(&ch, "cat /proc/1/comm").await, "systemd");
    shutdown(ch, &mut nspawn, &console).await;
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(
        log.contains(
            "banger-first-boot: installing systemd-sysv openssh-server with apt for the debian family"
        ),
        "{log}"
    );
    // Real apt: its status lines became progress events, and it finished.
    use banger_proto::guest::FirstBootEvent;
    let events: Vec<FirstBootEvent> = log
        .lines()
        .filter_map(FirstBootEvent::parse_console_line)
        .collect();
    let progress = events
        .iter()
        .filter(|e| matches!(e, FirstBootEvent::Progress { .. }))
        .count();
    assert!(progress >= 3, "{progress} progress events\n{log}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            FirstBootEvent::Installed { packages, .. } if packages.len() == 2
        )),
        "{log}"
    );
    assert!(!log.contains('\r'), "progress bars on the console:\n{log}");
}
