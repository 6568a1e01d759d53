//! The real transport: the static agent inside a QEMU TCG microVM (fixture
//! kernel, a tiny busybox initramfs), reached from the host through the
//! hybrid-vsock socket that rust-vmm's `vhost-device-vsock` provides behind
//! `-device vhost-user-vsock-device` — exactly how vmm talks to guests.
//! No network device, so no namespace is needed.

#[path = "common/bookworm.rs"]
mod bookworm;
mod common;
#[path = "common/guest_bundle.rs"]
mod guest_bundle;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_proto::agent::v1::ShutdownRequest;
use banger_proto::agent::v1::agent_client::AgentClient;
use banger_proto::rpc::hybrid_vsock::{self, AGENT_PORT};

use banger_test_support::qemu::Reaped;

/// The `newc` cpio format the kernel unpacks as initramfs.
#[derive(Default)]
struct Newc {
    out: Vec<u8>,
    ino: u32,
}

impl Newc {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }
    fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name, 0o100755, data);
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t tmpfs tmpfs /tmp
/bin/busybox --install -s /bin
export PATH=/bin
echo "test-init: starting banger-agent"
/bin/banger-agent
echo "test-init: banger-agent exited with $?"
poweroff -f
"#;

fn initramfs(dir: &Path) -> PathBuf {
    let agent = std::fs::read(guest_bundle::bundle().join("banger-agent")).expect("agent");
    let busybox = std::fs::read("/usr/bin/busybox").expect("read /usr/bin/busybox");
    let mut cpio = Newc::default();
    for d in ["bin", "proc", "sys", "dev", "tmp", "run"] {
        cpio.dir(d);
    }
    cpio.file("bin/busybox", &busybox);
    cpio.file("bin/banger-agent", &agent);
    cpio.file("init", INIT.as_bytes());
    let path = dir.join("initramfs.cpio");
    std::fs::write(&path, cpio.finish()).expect("write initramfs");
    path
}

use banger_test_support::qemu::tsc_khz;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_a_tcg_guest_over_hybrid_vsock() {
    banger_test_support::gate!(Priv, ROOT, QEMU);
    banger_test_support::require_program("qemu-system-x86_64", "qemu-system-x86");
    banger_test_support::require_program("busybox", "busybox-static");
    assert!(
        Command::new("vhost-device-vsock")
            .arg("--version")
            .output()
            .is_ok(),
        "this test needs `vhost-device-vsock`: `cargo install --locked vhost-device-vsock@0.3.0` \
         (scripts/setup.sh --deps does this, from scripts/deps/guest.cargo)"
    );
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs(dir.path());
    let kernel = banger_test_support::fixtures::kernel_vmlinux();
    let vhost_sock = dir.path().join("vhost-user.sock");
    let uds = dir.path().join("vsock.sock");
    let console = dir.path().join("console.log");

    let _vhost = banger_test_support::qemu::vhost_vsock(&vhost_sock, &uds);

    let booted = Instant::now();
    let mut qemu = Reaped(
        Command::new("qemu-system-x86_64")
            .args(banger_test_support::qemu::microvm_args(256))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 reboot=k panic=-1 tsc_early_khz={}",
                tsc_khz()
            ))
            .arg("-chardev")
            .arg(format!("socket,id=vsock,path={}", vhost_sock.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=vsock"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64"),
    );
    let console_log = || std::fs::read_to_string(&console).unwrap_or_default();

    let pong = match hybrid_vsock::wait_ready(&uds, AGENT_PORT, Duration::from_secs(180)).await {
        Ok(p) => p,
        Err(e) => panic!("{e}\n--- console ---\n{}", console_log()),
    };
    eprintln!(
        "TIMING: QEMU start → agent answered Ping over hybrid vsock: {:?} (guest uptime {:.2} s)",
        booted.elapsed(),
        pong.uptime_seconds
    );

    let channel = hybrid_vsock::connect(&uds, AGENT_PORT, Duration::from_secs(10))
        .await
        .unwrap();
    common::ping(channel.clone()).await;
    let started = Instant::now();
    common::exec_suite(channel.clone()).await;
    eprintln!(
        "TIMING: exec suite in the TCG guest: {:?}",
        started.elapsed()
    );
    let facts = common::facts(channel.clone()).await;
    assert_eq!(facts.init_system, "other");
    assert!(facts.kernel_release.starts_with("6.12"), "{facts:?}");

    AgentClient::new(channel)
        .shutdown(ShutdownRequest { reboot: false })
        .await
        .unwrap();
    let mut status = None;
    for _ in 0..1200 {
        if let Some(s) = qemu.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status =
        status.unwrap_or_else(|| panic!("QEMU still runs after Shutdown\n{}", console_log()));
    assert!(
        status.success(),
        "QEMU exit {status}\n--- console ---\n{}",
        console_log()
    );
    assert!(
        console_log().contains("reboot: Power down"),
        "{}",
        console_log()
    );
}

// ---------------------------------------------------------------------------
// banger-first-boot as PID 1 of a disk root, booted the way vmm boots an
// image without an initrd: `root=/dev/vda rw init=/usr/local/libexec/banger-first-boot`.

/// The guest bundle's files installed the way imagestore installs them,
/// plus an identity.
fn install_bundle(tree: &Path, identity: &str) {
    use std::os::unix::fs::PermissionsExt;
    let bundle = guest_bundle::bundle();
    for d in [
        "usr/local/bin",
        "usr/local/libexec",
        "etc/banger",
        "etc/systemd/system",
    ] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    let agent = tree.join("usr/local/bin/banger-agent");
    std::fs::copy(bundle.join("banger-agent"), &agent).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The bundle's banger-first-boot is a symlink to the agent.
    assert_eq!(
        std::fs::read_link(bundle.join("banger-first-boot")).unwrap(),
        Path::new("banger-agent")
    );
    let _ = std::fs::remove_file(tree.join("usr/local/libexec/banger-first-boot"));
    std::os::unix::fs::symlink(
        "/usr/local/bin/banger-agent",
        tree.join("usr/local/libexec/banger-first-boot"),
    )
    .unwrap();
    for unit in ["banger-agent.service", "banger-first-boot.service"] {
        std::fs::copy(
            bundle.join(unit),
            tree.join("etc/systemd/system").join(unit),
        )
        .unwrap();
        let wants = tree.join("etc/systemd/system/sysinit.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        let _ = std::fs::remove_file(wants.join(unit));
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit))
            .unwrap();
    }
    std::fs::write(tree.join("etc/banger/identity.json"), identity).unwrap();
}

fn mkfs(tree: &Path, disk: &Path, size: &str) {
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(tree)
        .arg(disk)
        .arg(size)
        .status()
        .unwrap();
    assert!(status.success(), "mkfs.ext4 -d {} failed", tree.display());
}

/// A disk VM with vsock: QEMU and vhost-device-vsock, their sockets and console.
struct DiskVm {
    qemu: Reaped,
    _vhost: Reaped,
    uds: PathBuf,
    console: PathBuf,
}

impl DiskVm {
    fn boot(dir: &Path, disk: &Path, memory_mib: u32) -> DiskVm {
        banger_test_support::require_program("qemu-system-x86_64", "qemu-system-x86");
        let vhost_sock = dir.join("vhost-user.sock");
        let uds = dir.join("vsock.sock");
        let console = dir.join("console.log");
        let vhost = banger_test_support::qemu::vhost_vsock(&vhost_sock, &uds);
        let qemu = Reaped(
            Command::new("qemu-system-x86_64")
                .args(banger_test_support::qemu::microvm_args(memory_mib))
                .arg("-kernel")
                .arg(banger_test_support::fixtures::kernel_vmlinux())
                .arg("-append")
                // What vmm's cmdline::build gives a direct boot.
                .arg(format!(
                    "console=ttyS0 reboot=k panic=1 root=/dev/vda rw \
                     init=/usr/local/libexec/banger-first-boot tsc_early_khz={} \
                     systemd.mask=dev-ttyS0.device systemd.mask=dev-vdb.device",
                    tsc_khz()
                ))
                .arg("-drive")
                .arg(format!(
                    "id=root,file={},format=raw,if=none",
                    disk.display()
                ))
                .args(["-device", "virtio-blk-device,drive=root"])
                .arg("-chardev")
                .arg(format!("socket,id=vsock,path={}", vhost_sock.display()))
                .args(["-device", "vhost-user-vsock-device,chardev=vsock"])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&console).unwrap())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start qemu-system-x86_64"),
        );
        DiskVm {
            qemu,
            _vhost: vhost,
            uds,
            console,
        }
    }

    fn console_log(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    async fn channel(&self, timeout: Duration) -> (tonic::transport::Channel, f64) {
        let pong = match hybrid_vsock::wait_ready(&self.uds, AGENT_PORT, timeout).await {
            Ok(p) => p,
            Err(e) => panic!("{e}\n--- console ---\n{}", self.console_log()),
        };
        let ch = hybrid_vsock::connect(&self.uds, AGENT_PORT, Duration::from_secs(10))
            .await
            .unwrap();
        (ch, pong.uptime_seconds)
    }

    async fn shutdown(mut self, channel: tonic::transport::Channel) -> String {
        AgentClient::new(channel)
            .shutdown(ShutdownRequest { reboot: false })
            .await
            .unwrap();
        for _ in 0..1200 {
            if let Some(status) = self.qemu.0.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "QEMU exit {status}\n{}",
                    self.console_log()
                );
                return self.console_log();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("QEMU still runs after Shutdown\n{}", self.console_log());
    }
}

async fn sh_out(channel: &tonic::transport::Channel, script: &str) -> String {
    let ran = common::exec(channel.clone(), common::sh(script), vec![]).await;
    String::from_utf8_lossy(&ran.stdout).trim().to_owned()
}

fn console_events(console: &str) -> Vec<banger_proto::guest::FirstBootEvent> {
    console
        .lines()
        .filter_map(banger_proto::guest::FirstBootEvent::parse_console_line)
        .collect()
}

const TEST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2OBhyKo1LWcDCdg2dQBoe23VhQHi50q8/oiiPmQMUC test@banger";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_supervises_the_agent_in_a_busybox_root() {
    banger_test_support::gate!(Priv, ROOT, QEMU);
    banger_test_support::require_program("busybox", "busybox-static");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    // A busybox image as `scripts/make-test-image.sh busybox` builds it.
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root",
    ] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", tree.join("bin/busybox")).unwrap();
    let list = Command::new("/usr/bin/busybox")
        .arg("--list-full")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "bin/busybox" && !tree.join(applet).exists() {
            std::os::unix::fs::symlink("/bin/busybox", tree.join(applet)).unwrap();
        }
    }
    std::fs::write(tree.join("etc/os-release"), "ID=busybox\nNAME=BusyBox\n").unwrap();
    install_bundle(
        &tree,
        &format!(
            "{{\"hostname\": \"tiny-1\", \"ssh_authorized_keys\": [\"{TEST_KEY}\"], \"dns\": [\"10.0.0.53\"]}}"
        ),
    );
    let disk = dir.path().join("root.ext4");
    mkfs(&tree, &disk, "64M");

    let booted = Instant::now();
    let vm = DiskVm::boot(dir.path(), &disk, 256);
    let (ch, uptime) = vm.channel(Duration::from_secs(180)).await;
    eprintln!(
        "TIMING: busybox root, first boot as supervisor: QEMU start → agent answered {:?} (guest uptime {uptime:.2} s)",
        booted.elapsed()
    );
    assert_eq!(sh_out(&ch, "cat /proc/1/comm").await, "banger-first-bo");
    assert_eq!(
        sh_out(&ch, "hostname; cat /etc/hostname").await,
        "tiny-1\ntiny-1"
    );
    assert_eq!(
        sh_out(&ch, "cat /etc/resolv.conf").await,
        "nameserver 10.0.0.53"
    );
    assert_eq!(
        sh_out(&ch, "cat /root/.ssh/authorized_keys").await,
        TEST_KEY
    );
    let facts = common::facts(ch.clone()).await;
    assert_eq!(facts.init_system, "other");

    // Orphans are reaped by PID 1: a double-forked sleep exits, no zombie stays.
    sh_out(&ch, "(sleep 1 &) ; true").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let zombies = sh_out(
        &ch,
        "cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == \"Z\"' | wc -l",
    )
    .await;
    assert_eq!(zombies, "0", "zombies left unreaped");

    // The agent dies: PID 1 starts it again.
    let before = sh_out(&ch, "pidof banger-agent || echo none").await;
    // Detached, so this Exec ends before its agent does.
    sh_out(
        &ch,
        "(sleep 1; kill -9 $(pidof banger-agent)) >/dev/null 2>&1 &",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ch, _) = vm.channel(Duration::from_secs(60)).await;
    let after = sh_out(&ch, "pidof banger-agent").await;
    assert_ne!(before, after, "the agent was not restarted");
    common::ping(ch.clone()).await;

    let console = vm.shutdown(ch).await;
    assert!(console.contains("reboot: Power down"), "{console}");
    let events = console_events(&console);
    assert!(
        events.contains(&banger_proto::guest::FirstBootEvent::Handover {
            init: "banger-agent".into()
        }),
        "{console}"
    );
    assert!(
        console.contains("banger-first-boot: warning: banger-agent ended"),
        "{console}"
    );
    // Shutdown went through PID 1, which left the disk clean.
    assert!(
        console.contains("banger-first-boot: SIGPWR: stopping and powering off"),
        "{console}"
    );
    assert!(
        console.contains("banger-first-boot: remounted / read-only"),
        "{console}"
    );
    assert!(!console.contains("FAILED"), "{console}");
}

/// The debootstrapped bookworm with systemd and openssh-server that
/// `scripts/make-test-image.sh bookworm` caches in target/test-cache/bookworm.
fn bookworm_rootfs() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cache = repo.join("target/test-cache/bookworm");
    if !cache.join("rootfs.done").exists() {
        banger_test_support::require_root();
        let status = Command::new(repo.join("scripts/make-test-image.sh"))
            .args(["bookworm", "-", "x:latest"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "scripts/make-test-image.sh bookworm failed"
        );
    }
    cache.join("rootfs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_boot_hands_a_systemd_image_to_systemd_with_agent_sshd_and_a_console_login() {
    banger_test_support::gate!(Priv, ROOT, QEMU);
    let rootfs = bookworm_rootfs();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&rootfs)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(status.success());
    install_bundle(
        &tree,
        &format!(
            "{{\n  \"hostname\": \"sysd-1\",\n  \"ssh_authorized_keys\": [\n    \"{TEST_KEY}\"\n  ],\n  \"dns\": [\n    \"10.0.0.53\"\n  ]\n}}\n"
        ),
    );
    let disk = dir.path().join("root.ext4");
    mkfs(&tree, &disk, "1G");
    drop(tree);

    let booted = Instant::now();
    let vm = DiskVm::boot(dir.path(), &disk, 512);
    let (ch, uptime) = vm.channel(Duration::from_secs(300)).await;
    eprintln!(
        "TIMING: bookworm+systemd, Rust first boot: QEMU start → agent answered {:?} (guest uptime {uptime:.2} s)",
        booted.elapsed()
    );
    assert_eq!(sh_out(&ch, "cat /proc/1/comm").await, "systemd");
    let state = sh_out(&ch, "systemctl is-system-running --wait").await;
    let failed = sh_out(&ch, "systemctl --failed --no-legend --plain").await;
    eprintln!("systemctl is-system-running: {state}; failed: {failed:?}");
    assert!(
        ["running", "degraded"].contains(&state.as_str()),
        "{state}: {failed}"
    );
    assert!(
        !failed.contains("getty"),
        "the console getty failed: {failed}"
    );
    assert_eq!(
        sh_out(&ch, "systemctl is-active banger-agent").await,
        "active"
    );
    assert_eq!(sh_out(&ch, "systemctl is-active ssh").await, "active");
    assert_eq!(
        sh_out(&ch, "systemctl is-active serial-getty@ttyS0").await,
        "active"
    );
    // PID 1 applied the identity, so the oneshot had nothing to do.
    assert_eq!(
        sh_out(
            &ch,
            "systemctl show -p ConditionResult --value banger-first-boot"
        )
        .await,
        "no"
    );
    assert_eq!(sh_out(&ch, "hostname").await, "sysd-1");
    assert_eq!(
        sh_out(&ch, "cat /root/.ssh/authorized_keys").await,
        TEST_KEY
    );
    let console = vm.shutdown(ch).await;
    let events = console_events(&console);
    assert!(
        events.contains(&banger_proto::guest::FirstBootEvent::Handover {
            init: "/usr/lib/systemd/systemd".into()
        }),
        "{console}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, banger_proto::guest::FirstBootEvent::Installing { .. })),
        "{console}"
    );
    assert!(
        console.contains("login:"),
        "no login prompt on ttyS0:\n{console}"
    );
}

/// `debugfs -R CMD disk` output (the disk is not mounted on the host).
fn debugfs(disk: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for the guest to power off by itself.
async fn wait_poweroff(vm: &mut DiskVm, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = vm.qemu.0.try_wait().unwrap() {
            assert!(status.success(), "QEMU exit {status}\n{}", vm.console_log());
            return vm.console_log();
        }
        assert!(
            Instant::now() < deadline,
            "no poweroff within {timeout:?}\n{}",
            vm.console_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Preparation for real: a minbase bookworm (no init, no sshd) whose only
/// package source is a placeholder URL that the identity's mirror setting
/// rewrites to a local repository inside the disk. The preparation VM
/// installs with real apt under TCG, cleans up and powers off; then a VM of
/// the prepared disk boots straight into systemd with sshd, and dpkg never
/// ran again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preparation_installs_once_and_the_prepared_disk_boots_systemd_without_apt() {
    banger_test_support::gate!(Priv, ROOT, QEMU);
    use banger_proto::guest::FirstBootEvent;
    banger_test_support::require_program("debugfs", "e2fsprogs");
    let minbase = bookworm::debootstrap("bookworm-minbase", None);
    let repo = bookworm::init_repo(&minbase);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    bookworm::copy_tree(&minbase, &tree);
    bookworm::copy_tree(&repo, &tree.join("banger-repo"));
    let _ = std::fs::remove_file(tree.join("etc/apt/sources.list.d/debian.sources"));
    let placeholder = "deb [trusted=yes] http://mirror.invalid/repo ./\n";
    std::fs::write(tree.join("etc/apt/sources.list"), placeholder).unwrap();
    let _ = std::fs::remove_file(tree.join("etc/machine-id"));
    install_bundle(
        &tree,
        &format!(
            r#"{{"hostname": "prep", "ssh_authorized_keys": ["{TEST_KEY}"], "dns": ["10.0.0.53"],
               "purpose": "prepare",
               "network": {{"http_proxy": "http://proxy.invalid:3128",
                            "mirrors": {{"debian": {{"http://mirror.invalid/repo": "file:/banger-repo"}}}}}}}}"#
        ),
    );
    let disk = dir.path().join("root.ext4");
    mkfs(&tree, &disk, "2G");
    drop(tree);

    let started = Instant::now();
    let mut vm = DiskVm::boot(dir.path(), &disk, 512);
    let console = wait_poweroff(&mut vm, Duration::from_secs(900)).await;
    let prepared_in = started.elapsed();
    drop(vm);
    let events = console_events(&console);
    let packages = vec!["systemd-sysv".to_string(), "openssh-server".to_string()];
    assert!(
        events.contains(&FirstBootEvent::Installing {
            manager: "apt".into(),
            packages: packages.clone()
        }),
        "{console}"
    );
    let progress = events
        .iter()
        .filter(|e| matches!(e, FirstBootEvent::Progress { .. }))
        .count();
    assert!(progress >= 3, "{progress} progress events\n{console}");
    assert_eq!(
        events.last(),
        Some(&FirstBootEvent::Prepared {
            packages: packages.clone()
        }),
        "{console}"
    );
    assert!(console.contains("reboot: Power down"), "{console}");
    eprintln!("TIMING: preparation (apt under TCG, then poweroff): {prepared_in:?}");

    // Cleanly remounted read-only before the poweroff: no journal to replay
    // over what the host writes next (debugfs does not replay it).
    let header = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&disk)
        .output()
        .unwrap();
    let header = String::from_utf8_lossy(&header.stdout);
    assert!(!header.contains("needs_recovery"), "{header}");
    assert!(
        console.contains("banger-first-boot: remounted / read-only"),
        "{console}"
    );
    // The prepared filesystem: fit for every VM.
    assert!(debugfs(&disk, "stat /usr/lib/systemd/systemd").contains("Type: regular"));
    assert!(debugfs(&disk, "stat /usr/sbin/sshd").contains("Type: regular"));
    let machine_id = debugfs(&disk, "stat /etc/machine-id");
    assert!(
        machine_id.contains("Size: 0\n") || machine_id.contains("Size: 0 "),
        "{machine_id}"
    );
    assert!(!debugfs(&disk, "ls -l /etc/ssh").contains("ssh_host_"));
    let lists = debugfs(&disk, "ls /var/lib/apt/lists");
    assert!(
        !lists.contains("Packages") && !lists.contains("banger-repo"),
        "{lists}"
    );
    assert_eq!(debugfs(&disk, "cat /etc/apt/sources.list"), placeholder);
    assert!(!debugfs(&disk, "ls /etc/apt/apt.conf.d").contains("80banger-proxy"));
    assert!(!debugfs(&disk, "ls /var/lib/banger").contains("identity.applied"));
    assert_eq!(
        debugfs(&disk, "stat /root/.ssh/authorized_keys"),
        "",
        "the preparation VM's keys were left behind"
    );
    let dpkg_log = debugfs(&disk, "cat /var/log/dpkg.log");
    assert!(dpkg_log.contains(" install openssh-server"), "{dpkg_log}");

    // A VM of the prepared disk (vmm would write its identity the same way).
    let identity = dir.path().join("identity.json");
    std::fs::write(
        &identity,
        format!("{{\"hostname\": \"after-prep\", \"ssh_authorized_keys\": [\"{TEST_KEY}\"]}}"),
    )
    .unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg("rm /etc/banger/identity.json")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!(
            "write {} /etc/banger/identity.json",
            identity.display()
        ))
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let booted = Instant::now();
    let vm = DiskVm::boot(dir.path(), &disk, 512);
    let (ch, _) = vm.channel(Duration::from_secs(300)).await;
    eprintln!(
        "TIMING: prepared disk: QEMU start → agent answered {:?}",
        booted.elapsed()
    );
    assert_eq!(sh_out(&ch, "cat /proc/1/comm").await, "systemd");
    let state = sh_out(&ch, "systemctl is-system-running --wait").await;
    let failed = sh_out(&ch, "systemctl --failed --no-legend --plain").await;
    assert!(
        ["running", "degraded"].contains(&state.as_str()),
        "{state}: {failed}"
    );
    assert_eq!(sh_out(&ch, "systemctl is-active ssh").await, "active");
    assert_eq!(sh_out(&ch, "hostname").await, "after-prep");
    assert_eq!(
        sh_out(&ch, "cat /var/log/dpkg.log").await,
        dpkg_log.trim(),
        "dpkg ran again in the VM"
    );
    let machine_id = sh_out(&ch, "cat /etc/machine-id").await;
    assert_eq!(
        machine_id.len(),
        32,
        "systemd made a machine id: {machine_id:?}"
    );
    let console = vm.shutdown(ch).await;
    assert!(
        !console_events(&console)
            .iter()
            .any(|e| matches!(e, FirstBootEvent::Installing { .. })),
        "{console}"
    );
}
