//! The pulled Debian kernel really boots a microVM with its generated
//! initramfs: QEMU `-M microvm` under TCG (in a private network namespace,
//! slirp restricted, no route out), a virtio-mmio disk and NIC, and an
//! `/init` that loads the modules `/etc/banger/modules` lists in order
//! with `finit_module` — the agent's init mode does the same per the
//! contract; this stand-in (tests/boot-init.c) only reports and powers off.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use banger_kernelcat::KernelCatConfig;
use banger_test_support::debian_archive;
use common::{HttpServer, Route, Service, pull, serve_catalog};

#[tokio::test]
async fn the_pulled_kernel_boots_and_loads_its_modules() {
    banger_test_support::gate!(Priv, ROOT, QEMU, SHARED);
    banger_test_support::require_program("qemu-system-x86_64", "qemu-system-x86");
    banger_test_support::require_program("gcc", "build-essential");
    let a = debian_archive::bookworm_security();
    let server = HttpServer::start();
    for (path, data) in &a.files {
        server.route(path, Route::Ok(data.clone()));
    }
    let guest = tempfile::tempdir().unwrap();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/boot-init.c");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(guest.path().join("banger-agent"))
        .arg(src)
        .status()
        .unwrap();
    assert!(status.success(), "gcc -static (needs libc6-dev)");
    let catalog = HttpServer::start();
    serve_catalog(
        &catalog,
        vec![serde_json::json!({
            "name": "debian-boot",
            "debian": {
                "archive_url": server.url("/debian-security"),
                "suite": a.suite,
                "package": a.meta_package,
            }
        })],
    );
    let mut service = Service::start(KernelCatConfig {
        guest_dir: Some(guest.path().into()),
        ..common::settings(&catalog.url("/catalog.json"))
    })
    .await;
    let (_, result) = pull(&mut service.client, "debian-boot", false).await;
    let k = result.expect("pull");
    let dir = service.kernels().join("debian-boot");
    let disk = guest.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg("120")
        .args(["unshare", "-n", "qemu-system-x86_64"])
        .args(banger_test_support::qemu::microvm_args(1024))
        .arg("-kernel")
        .arg(dir.join("vmlinux"))
        .arg("-initrd")
        .arg(dir.join("initrd"))
        .arg("-append")
        .arg(banger_test_support::qemu::append(""))
        .arg("-drive")
        .arg(format!("id=d,file={},format=raw,if=none", disk.display()))
        .args(["-device", "virtio-blk-device,drive=d"])
        .args([
            "-netdev",
            // A NIC on an empty hub: eth0 exists, and leads nowhere.
            "hubport,id=n,hubid=0",
            "-device",
            "virtio-net-device,netdev=n",
        ])
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let console = String::from_utf8_lossy(&out.stdout);
    let smoke: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("SMOKE:"))
        .collect();
    let modules = k.debian.unwrap().modules;
    for m in &modules {
        assert!(
            smoke.contains(&format!("SMOKE: loaded {m}").as_str()),
            "{m} did not load:\n{console}"
        );
    }
    for want in [
        "SMOKE: /dev/vda present",
        "SMOKE: eth0 present",
        "SMOKE: vsock socket ok",
        "SMOKE: done fails=0",
    ] {
        assert!(smoke.contains(&want), "{want} missing:\n{console}");
    }
    eprintln!(
        "booted {} to a powered-off init in {elapsed:?} ({} modules)",
        k.kernel_version,
        modules.len()
    );
    assert!(elapsed < Duration::from_secs(120));
}
