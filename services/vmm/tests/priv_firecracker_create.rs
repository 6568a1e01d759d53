//! The create flow with the real Firecracker binary, where one is on PATH
//! (Firecracker has no Debian package; CI here says the tier did not run).
//! On hosts whose KVM cannot run guests (kvm_pvm) the guest dies with
//! KVM_EXIT_INTERNAL_ERROR a few seconds after InstanceStart: the create
//! must fail with a clear error naming Firecracker and roll everything back
//! — what real users on such hosts will hit. Runs in a private netns.

mod common;

use std::sync::Arc;

use banger_proto::vmm::v1 as pb;
use banger_vmm::config::{BackendSetting, VmmConfig};
use banger_vmm::guest::AgentGuest;
use banger_vmm::hypervisor::Hypervisor;
use banger_vmm::hypervisor::firecracker::Firecracker;
use banger_vmm::manager::Manager;
use banger_vmm::record::Store;
use common::{RecordingPeers, create, sh};

fn firecracker_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("firecracker").is_file())
    })
}

#[test]
fn firecracker_create_rolls_back_a_guest_that_dies() {
    if !firecracker_on_path() {
        banger_test_support::tier::unavailable(
            banger_test_support::tier::Tier::Priv,
            "FIRECRACKER TIER: firecracker is not on PATH (no Debian package)",
        );
        return;
    }
    banger_test_support::gate!(Priv, ROOT);
    if !banger_proto::host::probe_kvm().runs_guests() {
        println!("FIRECRACKER TIER: this KVM cannot run guests; checking the failure path");
    } else {
        banger_test_support::tier::unavailable(
            banger_test_support::tier::Tier::Priv,
            "FIRECRACKER TIER: this host's KVM may boot the guest; this test covers the failure path only",
        );
        return;
    }
    let kernel = banger_test_support::fixtures::kernel_vmlinux();
    banger_test_support::netns::in_new_netns(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let _sweeper = common::ProcessSweeper(dir.path().to_path_buf());
            sh(
                "ip tuntap add dev bgtest0 mode tap && ip addr add 10.99.0.1/24 dev bgtest0 \
                && ip link set bgtest0 up",
            );
            let image =
                common::busybox_ext4(dir.path(), "while true; do /bin/busybox sleep 3600; done");
            let peers = Arc::new(RecordingPeers::new(image, kernel, "bgtest0").with_ssh_server());
            let cfg = VmmConfig {
                hypervisor: BackendSetting::Firecracker,
                default_memory_mib: 256,
                ready_timeout_secs: 90,
                ..Default::default()
            };
            let backends: Vec<Arc<dyn Hypervisor>> = vec![Arc::new(Firecracker::probed(
                "firecracker",
                &banger_proto::host::probe_kvm(),
            ))];
            let mgr = Manager::new(
                cfg,
                Store::new(
                    &dir.path().join("state/vmm/vms"),
                    &dir.path().join("run/vmm"),
                ),
                peers.clone(),
                Arc::new(AgentGuest),
                backends,
            );
            let (mut client, stop_tx, server) = common::serve(dir.path(), mgr).await;
            let err = create(&mut client, "box", "generic-6.12")
                .await
                .expect_err("the guest cannot boot on this KVM");
            assert!(
                err.message().to_lowercase().contains("firecracker"),
                "{}",
                err.message()
            );
            assert!(
                !dir.path().join("state/vmm/vms/box").exists(),
                "VM dir left"
            );
            assert!(peers.unreleased().is_empty(), "{:?}", peers.calls());
            let list = client
                .list_vms(pb::ListVmsRequest {})
                .await
                .unwrap()
                .into_inner();
            assert!(list.vms.is_empty(), "{:?}", list.vms);
            let _ = stop_tx.send(());
            server.await.unwrap().unwrap();
            sh("ip link del bgtest0");
        });
    });
}
