//! The real transport: the static agent inside a QEMU TCG microVM (fixture
//! kernel, a tiny busybox initramfs), reached from the host through the
//! hybrid-vsock socket that rust-vmm's `vhost-device-vsock` provides behind
//! `-device vhost-user-vsock-device` — exactly how vmm talks to guests.
//! No network device, so no namespace is needed.

mod common;
#[path = "common/guest_bundle.rs"]
mod guest_bundle;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_proto::agent::v1::ShutdownRequest;
use banger_proto::agent::v1::agent_client::AgentClient;
use banger_proto::rpc::hybrid_vsock::{self, AGENT_PORT};

/// Kills a child process (by its pid) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// The host TSC frequency in kHz, from `cpu MHz` (see DESIGN §7: without
/// `tsc_early_khz` about one TCG boot in six hangs in calibration).
fn tsc_khz() -> u64 {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .expect("cpu MHz in /proc/cpuinfo");
    (mhz * 1000.0).round() as u64
}

fn wait_for(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} did not appear", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_in_a_tcg_guest_over_hybrid_vsock() {
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

    let _vhost = Reaped(
        Command::new("vhost-device-vsock")
            .arg("--guest-cid=3")
            .arg(format!("--socket={}", vhost_sock.display()))
            .arg(format!("--uds-path={}", uds.display()))
            .stdout(Stdio::null())
            .spawn()
            .expect("start vhost-device-vsock"),
    );
    wait_for(&vhost_sock);

    let booted = Instant::now();
    let mut qemu = Reaped(
        Command::new("qemu-system-x86_64")
            // qboot: see banger_vmm's QBOOT (Debian's SeaBIOS microvm build is unreliable).
            .args(["-bios", "qboot.rom", "-M", "microvm,memory-backend=mem"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256"])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
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
