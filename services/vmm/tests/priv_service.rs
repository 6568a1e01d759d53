//! In-process service tier with a real hypervisor: the vmm served on a temp
//! socket, peers replaced by a recording double, a busybox guest booted by
//! QEMU under TCG on a tap inside a private network namespace. Proves the
//! create → list → console → stop → start → rm lifecycle, reconcile
//! adoption after a "vmm restart", and full rollback of a failed boot.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use banger_proto::vmm::v1 as pb;
use common::{RecordingPeers, create, manager, sh, wait_console};

#[test]
fn vm_lifecycle_with_real_qemu_in_a_netns() {
    banger_test_support::gate!(Priv, ROOT, QEMU, VHOST_VSOCK, SHARED);
    banger_test_support::require_program("qemu-system-x86_64", "qemu-system-x86");
    banger_test_support::require_program("vhost-device-vsock", "(cargo) vhost-device-vsock");
    let kernel = banger_test_support::fixtures::kernel_vmlinux();
    banger_test_support::netns::in_new_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(lifecycle(kernel));
    });
}

async fn lifecycle(kernel: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let _sweeper = common::ProcessSweeper(dir.path().to_path_buf());
    sh(
        "ip tuntap add dev bgtest0 mode tap && ip addr add 10.99.0.1/24 dev bgtest0 \
        && ip link set bgtest0 up",
    );
    let image = common::busybox_ext4(
        dir.path(),
        // A fake sshd: the banner is all the vmm's SSH probe reads.
        "/bin/busybox ip -4 addr show eth0 | /bin/busybox grep inet\n\
         printf '#!/bin/busybox sh\\necho SSH-2.0-banger-fake\\n' > /tmp/banner\n\
         /bin/busybox chmod +x /tmp/banner\n\
         /bin/busybox nc -ll -p 22 -e /tmp/banner &\n\
         while true; do /bin/busybox sleep 3600; done",
    );
    let peers = Arc::new(RecordingPeers::new(image, kernel, "bgtest0").with_ssh_server());
    let mgr = manager(dir.path(), peers.clone());
    let (mut client, stop_tx, server) = common::serve(dir.path(), mgr).await;

    // Create: phases stream, VM running with its lease and identity.
    let (phases, vm) = create(&mut client, "box", "generic-6.12").await.unwrap();
    println!("TIMING create phases: {}", phases.join(", "));
    assert_eq!(vm.state, pb::VmState::Running as i32, "{vm:?}");
    assert_eq!(vm.ip, "10.99.0.5");
    assert!(vm.pid > 0);
    for p in [
        "resolving",
        "network",
        "disk",
        "identity",
        "booting",
        "waiting",
    ] {
        assert!(
            phases.iter().any(|x| x.starts_with(p)),
            "no {p} phase in {phases:?}"
        );
    }
    let text = wait_console(&mut client, "box", "inet 10.99.0.5/24").await;
    // The identity landed in the disk and the kernel configured eth0 from ip=.
    assert!(text.contains("hostname=box"), "{text}");
    assert!(text.contains("inet 10.99.0.5/24"), "{text}");
    assert!(text.contains("tsc_early_khz="), "{text}");

    // Creating the same spec again is idempotent; a different spec is refused.
    let (_, again) = create(&mut client, "box", "generic-6.12").await.unwrap();
    assert_eq!(again.id, vm.id);
    let mut other = pb::CreateVmRequest {
        name: "box".into(),
        image: "busybox".into(),
        vcpus: 2,
        ..Default::default()
    };
    other.memory_mib = 256;
    let err = client.create_vm(other).await;
    let err = match err {
        Err(s) => s,
        Ok(s) => s.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

    let list = client
        .list_vms(pb::ListVmsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.vms.len(), 1);
    // Readiness went over the tap: the SSH probe read the guest's banner.
    let probes: Vec<_> = list.vms[0]
        .probes
        .iter()
        .map(|p| format!("{} {}", p.capability, p.state))
        .collect();
    assert_eq!(probes, ["agent skipped", "ssh ready"]);

    // A second manager over the same state (a vmm restart) adopts the VM.
    let restarted = manager(dir.path(), peers.clone());
    restarted.reconcile().await.unwrap();
    let adopted = restarted.get("box").unwrap();
    assert_eq!(adopted.vm.state, banger_vmm::record::VmState::Running);
    assert_eq!(adopted.vm.pid, Some(vm.pid));

    // Deleting a running VM needs --force.
    let err = client
        .delete_vm(pb::DeleteVmRequest {
            name: "box".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // Stop: busybox ignores the ACPI power button, so the timeout kills it.
    let stopped = client
        .stop_vm(pb::StopVmRequest {
            name: "box".into(),
            force: false,
            timeout_seconds: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.state, pb::VmState::Stopped as i32);
    assert!(
        !std::path::Path::new(&format!("/proc/{}", vm.pid))
            .join("cmdline")
            .exists()
            || std::fs::read(format!("/proc/{}/cmdline", vm.pid))
                .unwrap()
                .is_empty()
    );

    // Start again: a fresh boot on the same disk.
    let started = client
        .start_vm(pb::StartVmRequest {
            name: "box".into(),
            ready_timeout_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.state, pb::VmState::Running as i32);
    assert_ne!(started.pid, vm.pid);
    wait_console(&mut client, "box", common::MARKER).await;

    // rm --force: process, sockets, disk, record, lease and holds all gone.
    client
        .delete_vm(pb::DeleteVmRequest {
            name: "box".into(),
            force: true,
        })
        .await
        .unwrap();
    assert!(!dir.path().join("state/vmm/vms/box").exists());
    assert!(!dir.path().join(format!("run/vmm/{}", vm.id)).exists());
    let calls = peers.calls();
    for c in [
        format!("release_lease {}", vm.id),
        format!("release_kernel generic-6.12 {}", vm.id),
        format!("release_image busybox {}", vm.id),
    ] {
        assert!(calls.contains(&c), "{c} missing from {calls:?}");
    }
    let err = client
        .get_vm(pb::GetVmRequest { name: "box".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // A boot that fails (the kernel file is missing) rolls everything
    // back and says why.
    peers.clear_calls();
    let err = create(&mut client, "bad", "broken").await.unwrap_err();
    println!("failed create says: {}", err.message());
    assert!(err.message().contains("qemu"), "{}", err.message());
    assert!(!dir.path().join("state/vmm/vms/bad").exists());
    let calls = peers.calls();
    assert!(
        calls.iter().any(|c| c.starts_with("release_lease")),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.starts_with("release_kernel broken")),
        "{calls:?}"
    );
    assert!(
        calls.iter().any(|c| c.starts_with("release_image busybox")),
        "{calls:?}"
    );
    let list = client
        .list_vms(pb::ListVmsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.vms.is_empty());

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    sh("ip link del bgtest0");
}
