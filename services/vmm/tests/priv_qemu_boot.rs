//! Real tier: the QEMU backend boots the fixture kernel under TCG on a tiny
//! busybox guest, with the vhost-device-vsock daemon wired in, and QEMU
//! exits 0 when the guest powers off. Also times a bare QEMU boot of the
//! same kernel and disk next to the backend's, for the report.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use banger_vmm::cmdline::{self, CmdlineSpec};
use banger_vmm::hypervisor::qemu::{Accel, Qemu};
use banger_vmm::hypervisor::{self, Hypervisor, LaunchSpec};
use banger_vmm::record::Store;

fn tsc() -> Option<u32> {
    cmdline::host_tsc_khz()
}

#[tokio::test]
async fn qemu_backend_boots_busybox_guest_under_tcg() {
    banger_test_support::gate!(Priv, ROOT, QEMU, VHOST_VSOCK, SHARED);
    banger_test_support::require_program("qemu-system-x86_64", "qemu-system-x86");
    banger_test_support::require_program(
        "vhost-device-vsock",
        "(cargo) `cargo install --locked vhost-device-vsock --version 0.3.0`; scripts/setup.sh --deps",
    );
    let dir = tempfile::tempdir().unwrap();
    let _sweeper = common::ProcessSweeper(dir.path().to_path_buf());
    let img = common::busybox_ext4(dir.path(), "");
    let kernel = banger_test_support::fixtures::kernel_vmlinux();
    let store = Store::new(&dir.path().join("state/vms"), &dir.path().join("run"));
    let paths = store.paths("tiny", "00000000000000aa");
    std::fs::create_dir_all(&paths.dir).unwrap();
    std::fs::copy(&img, paths.disk()).unwrap();
    let line = format!(
        "{} init=/init",
        cmdline::build(&CmdlineSpec {
            hostname: "tiny",
            lease: None,
            direct_boot: false,
            tsc_khz: tsc(),
            systemd: None,
        })
    );
    let spec = LaunchSpec {
        id: "00000000000000aa".into(),
        kernel: kernel.clone(),
        initrd: None,
        cmdline: line.clone(),
        disk: paths.disk(),
        vcpus: 1,
        memory_mib: 256,
        net: None,
        vsock: true,
        paths: paths.clone(),
    };
    let qemu = Qemu {
        binary: "qemu-system-x86_64".into(),
        vhost_vsock_binary: "vhost-device-vsock".into(),
        accel: Accel::Tcg,
        accel_why: "tests run under TCG".into(),
    };
    let started = Instant::now();
    let mut launched = qemu.launch(&spec).await.expect("launch");
    assert!(
        hypervisor::is_ours(launched.pid, &paths),
        "pid {} not recognised as this VM's ({}: {:?}); hypervisor log:\n{}",
        launched.pid,
        paths.run.display(),
        std::fs::read_to_string(format!("/proc/{}/cmdline", launched.pid)),
        std::fs::read_to_string(paths.hypervisor_log()).unwrap_or_default()
    );
    let helper = launched.helper_pid.expect("vhost-device-vsock pid");
    assert!(hypervisor::is_ours(helper, &paths));
    assert!(paths.vsock().exists(), "hybrid-vsock socket missing");
    let status = tokio::time::timeout(Duration::from_secs(120), launched.child.wait())
        .await
        .expect("guest did not power off within 120 s")
        .unwrap();
    let backend_secs = started.elapsed().as_secs_f64();
    let console = std::fs::read_to_string(paths.console_log()).unwrap_or_default();
    assert!(
        console.contains(common::MARKER),
        "marker missing; console:\n{console}\nhypervisor log:\n{}",
        std::fs::read_to_string(paths.hypervisor_log()).unwrap_or_default()
    );
    assert!(status.success(), "qemu exited {status}");
    hypervisor::cleanup_after_exit(&paths, launched.helper_pid);
    assert!(hypervisor::wait_gone(helper, Duration::from_secs(5)).await);
    assert!(!paths.run.exists(), "run dir (sockets) left behind");

    // Bare QEMU, same kernel, disk and command line, no vsock daemon.
    let bare_log = dir.path().join("bare.log");
    let started = Instant::now();
    let status = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-bios",
            "qboot.rom",
            "-M",
            "microvm",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "256M",
        ])
        .args([
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", bare_log.display()))
        .arg("-kernel")
        .arg(&kernel)
        .arg("-append")
        .arg(&line)
        .arg("-drive")
        .arg(format!("id=root,file={},format=raw,if=none", img.display()))
        .args(["-device", "virtio-blk-device,drive=root"])
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    let bare_secs = started.elapsed().as_secs_f64();
    assert!(status.success());
    assert!(
        std::fs::read_to_string(&bare_log)
            .unwrap()
            .contains(common::MARKER)
    );
    println!(
        "TIMING boot-to-poweroff: bare qemu {bare_secs:.2}s, banger qemu backend {backend_secs:.2}s"
    );
    let _ = Path::new("");
}
