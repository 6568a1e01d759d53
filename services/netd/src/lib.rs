//! `banger-netd` owns host networking for VMs: the bridge, one tap per VM,
//! IP leases under `$STATE/netd`, and NAT in its own `inet banger` nftables
//! table. It is the only banger process with CAP_NET_ADMIN.
//!
//! Top-down: [`config`] (`[netd]`), [`lease`] (derivations, persistence),
//! [`manager`] (allocation, release, status, reconcile) over the [`ops`]
//! trait, whose real implementation is [`linux`] (+ [`tun`] ioctls);
//! [`service`] adapts it to gRPC; [`privs`] handles capabilities.

pub mod config;
pub mod error;
pub mod lease;
pub mod linux;
pub mod manager;
pub mod ops;
pub mod privs;
pub mod service;
pub mod tun;

pub use config::NetdConfig;
pub use error::Error;
pub use manager::Manager;
pub use service::NetdService;
