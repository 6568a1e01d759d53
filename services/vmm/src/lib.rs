//! `banger-vmm` owns VMs: their records under `$STATE/vms`, their disks,
//! their hypervisor processes (Firecracker, or QEMU `microvm`), and the
//! client side of the guest agent.

pub mod service;

pub use service::VmmService;
