//! `banger-vmm` owns VMs: their records under `$STATE/vms`, their disks,
//! their hypervisor processes (Firecracker, or QEMU `microvm`), and the
//! client side of the guest agent.
//!
//! Read top-down: [`record`] (what a VM is), [`cmdline`] and [`disk`] (what a
//! boot needs), [`hypervisor`] (the backends), [`manager`] (the lifecycle),
//! then [`service`] (the gRPC adapter).

pub mod cmdline;
pub mod config;
pub mod disk;
pub mod error;
pub mod hypervisor;
pub mod manager;
pub mod peers;
pub mod record;
pub mod service;
pub mod validate;

pub use error::{Error, Result};
pub use service::VmmService;
