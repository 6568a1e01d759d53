//! `banger-netd` owns host networking for VMs: the bridge, one tap per VM,
//! IP leases under `$STATE/netd`, and NAT in its own `inet banger` nftables
//! table. It is the only banger process with CAP_NET_ADMIN.

pub mod service;

pub use service::NetdService;
