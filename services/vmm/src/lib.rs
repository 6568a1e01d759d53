//! `banger-vmm` owns VMs: their records under `$STATE/vms`, their disks,
//! their hypervisor processes (Firecracker, or QEMU `microvm`), and the
//! client side of the guest agent.
//!
//! Read top-down: [`record`] (what a VM is), [`cmdline`] and [`disk`] (what a
//! boot needs), [`hypervisor`] (the backends), [`peers`] and [`guest`] (the
//! other services and the guest agent, behind traits), [`manager`] (the
//! lifecycle, one file per job),
//! then [`service`] (the gRPC adapter) and [`convert`] (errors as gRPC codes).

pub mod cmdline;
pub mod config;
pub mod convert;
pub mod disk;
pub mod error;
pub mod firstboot;
pub mod guest;
pub mod hypervisor;
pub mod manager;
pub mod peers;
pub mod record;
pub mod service;
#[doc(hidden)]
pub mod testing;
pub mod validate;

pub use error::{Error, Result};
pub use service::VmmService;
