//! Tiny guests for the real-hypervisor tier: a busybox-static root ext4
//! whose `/init` prints a marker and powers off, made with `mkfs.ext4 -d`.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use banger_proto::rpc::TracedChannel;
use banger_proto::rpc::progress::{LongEvent, Step};
use banger_proto::vmm::v1 as pb;
use banger_proto::vmm::v1::vmm_client::VmmClient;
use banger_proto::vmm::v1::vmm_server::VmmServer;
use banger_test_support::inproc;
use banger_test_support::wait::wait_until_async;
use banger_vmm::VmmService;
use banger_vmm::config::{QemuAccel, VmmConfig};
use banger_vmm::guest::AgentGuest;
use banger_vmm::hypervisor::Hypervisor;
use banger_vmm::hypervisor::qemu::{Accel, Qemu};
use banger_vmm::manager::Manager;
use banger_vmm::record::Store;
pub use banger_vmm::testing::RecordingPeers;
use tonic::service::Routes;

/// The marker the guest's init prints on the console.
pub const MARKER: &str = "BANGER-TEST-GUEST-UP";

/// Builds `dir/guest.ext4` (64 MiB): busybox, and `/init` that prints
/// [`MARKER`] plus `extra` shell lines, then `poweroff -f`.
pub fn busybox_ext4(dir: &Path, extra: &str) -> PathBuf {
    busybox_ext4_with(dir, &[], extra)
}

/// [`busybox_ext4`] plus host files copied to guest paths (mode 0755).
pub fn busybox_ext4_with(dir: &Path, files: &[(&str, &Path)], extra: &str) -> PathBuf {
    banger_test_support::require_program("mkfs.ext4", "e2fsprogs");
    banger_test_support::require_program("busybox", "busybox-static");
    let tree = dir.join("guest-tree");
    for d in ["bin", "sbin", "proc", "sys", "dev", "etc", "tmp", "root"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap();
    std::fs::copy(busybox, tree.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).unwrap();
    for (guest, host) in files {
        std::fs::copy(host, tree.join(guest)).unwrap();
        std::fs::set_permissions(tree.join(guest), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         echo {MARKER} hostname=$(/bin/busybox cat /etc/hostname)\n\
         {extra}\n\
         /bin/busybox poweroff -f\n"
    );
    std::fs::write(tree.join("init"), init).unwrap();
    std::fs::set_permissions(tree.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Kernels boot /sbin/init when the command line names no init.
    std::os::unix::fs::symlink("/init", tree.join("sbin/init")).unwrap();
    let img = dir.join("guest.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("64M")
        .status()
        .unwrap();
    assert!(status.success(), "mkfs.ext4 failed");
    img
}

/// Polls `path` until it contains `needle` or `secs` pass.
pub async fn wait_for_text(path: &Path, needle: &str, secs: u64) -> bool {
    wait_until_async(std::time::Duration::from_secs(secs), || {
        std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
    })
    .await
}

pub fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap();
    assert!(st.success(), "{cmd} failed");
}

/// A manager with the real QEMU (TCG) and agent client over `peers`.
pub fn manager(dir: &std::path::Path, peers: Arc<RecordingPeers>) -> Manager {
    let cfg = VmmConfig {
        qemu_accel: QemuAccel::Tcg,
        default_memory_mib: 256,
        ready_timeout_secs: 60,
        ..Default::default()
    };
    let backends: Vec<Arc<dyn Hypervisor>> = vec![Arc::new(Qemu {
        binary: cfg.qemu_binary.clone(),
        vhost_vsock_binary: cfg.vhost_vsock_binary.clone(),
        accel: Accel::Tcg,
        accel_why: "tests run under TCG".into(),
    })];
    Manager::new(
        cfg,
        Store::new(&dir.join("state/vmm/vms"), &dir.join("run/vmm")),
        peers,
        Arc::new(AgentGuest),
        backends,
    )
}

pub async fn create(
    client: &mut VmmClient<banger_proto::rpc::TracedChannel>,
    name: &str,
    kernel: &str,
) -> std::result::Result<(Vec<String>, pb::Vm), tonic::Status> {
    let mut stream = client
        .create_vm(pb::CreateVmRequest {
            name: name.into(),
            image: "busybox".into(),
            kernel: kernel.into(),
            memory_mib: 256,
            nat: true,
            ssh_authorized_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9gQtxjDPmHJhap51lRxwAqkw/Ne2kdxvQmZb3iW/UI test@host"
                    .into(),
            ],
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut phases = Vec::new();
    let mut done = None;
    while let Some(ev) = stream.message().await? {
        match ev.into_step().expect("an empty create event") {
            Step::Update(p) => {
                if p.seconds > 0.0 {
                    phases.push(format!("{} {:.2}s", p.phase, p.seconds));
                }
            }
            Step::Done(vm) => {
                assert!(done.is_none(), "a second done event: {vm:?}");
                done = Some(vm);
            }
        }
    }
    Ok((phases, done.expect("create ended without done")))
}

pub async fn console(
    client: &mut VmmClient<banger_proto::rpc::TracedChannel>,
    name: &str,
) -> String {
    let mut s = client
        .console_log(pb::ConsoleLogRequest {
            name: name.into(),
            follow: false,
            tail_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.message().await.unwrap() {
        out.extend(c.data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn wait_console(
    client: &mut VmmClient<banger_proto::rpc::TracedChannel>,
    name: &str,
    needle: &str,
) -> String {
    for _ in 0..600 {
        let text = console(client, name).await;
        if text.contains(needle) {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "console of {name} never showed {needle:?}:\n{}",
        console(client, name).await
    );
}

/// A vmm served on `dir/run/vmm.sock` over `mgr`, a client to it, and the
/// sender that stops it.
pub async fn serve(
    dir: &Path,
    mgr: Manager,
) -> (
    VmmClient<TracedChannel>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::result::Result<(), banger_proto::rpc::RuntimeError>>,
) {
    let service = VmmService::with_manager(mgr);
    let served = inproc::serve(
        &dir.join("run/vmm.sock"),
        "banger-vmm",
        &[],
        Routes::new(VmmServer::new(service)),
    )
    .await;
    let (channel, stop_tx, server) = served.into_parts();
    (VmmClient::new(channel), stop_tx, server)
}

/// Kills, when dropped, every process mentioning the dir (VMs and vhost
/// daemons a failing test would leave running).
#[allow(unused_imports)] // not every test binary sweeps
pub use banger_test_support::procs::Sweeper as ProcessSweeper;
