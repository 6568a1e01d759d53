//! The real [`NetOps`]: rtnetlink for links and addresses, tun ioctls for
//! taps, the `nftables` crate (one atomic JSON batch through `nft`) for
//! table `inet banger`, /proc/sys for forwarding. Nothing here shells out
//! to `ip` or `iptables`, and nothing touches any other nftables table.
//!
//! `netlink.rs` holds the bridge, taps and links, `nft.rs` the table and
//! its NAT set; [`LinuxOps`] routes each [`NetOps`] call to one of them and
//! owns the `ip_forward` sysctl.

mod netlink;
mod nft;

pub use nft::{
    GUARD_SET, NAT_SET, TABLE, forward_drops, guard_batch, guard_elements, guard_matches,
    set_elements, table_batch, table_matches,
};

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::error::Error;
use crate::ops::{Guard, Link, NetOps};
use netlink::Netlink;
use nft::Nft;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Kernel-backed [`NetOps`] for the network namespace it was created in.
#[derive(Clone)]
pub struct LinuxOps {
    netlink: Netlink,
    nft: Nft,
}

impl std::fmt::Debug for LinuxOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinuxOps")
    }
}

impl LinuxOps {
    /// Opens a netlink connection in the current network namespace; must
    /// run inside a tokio runtime (the connection is a spawned task).
    pub fn new() -> Result<LinuxOps, Error> {
        Ok(LinuxOps {
            netlink: Netlink::new()?,
            nft: Nft,
        })
    }
}

#[tonic::async_trait]
impl NetOps for LinuxOps {
    async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<bool, Error> {
        self.netlink.ensure_bridge(name, gateway, prefix_len).await
    }

    async fn ensure_tap(&self, tap: &str, uid: u32, gid: u32, bridge: &str) -> Result<(), Error> {
        self.netlink.ensure_tap(tap, uid, gid, bridge).await
    }

    async fn delete_tap(&self, tap: &str) -> Result<(), Error> {
        self.netlink.delete_tap(tap).await
    }

    async fn links(&self) -> Result<Vec<Link>, Error> {
        self.netlink.links().await
    }

    async fn ensure_nat_table(&self, bridge: &str) -> Result<bool, Error> {
        self.nft.ensure_nat_table(bridge).await
    }

    async fn remove_nat_table(&self) -> Result<bool, Error> {
        self.nft.remove_nat_table().await
    }

    async fn nat_installed(&self, bridge: &str) -> Result<bool, Error> {
        self.nft.nat_installed(bridge).await
    }

    async fn nat_sources(&self) -> Result<BTreeSet<Ipv4Addr>, Error> {
        self.nft.nat_sources().await
    }

    async fn add_nat_source(&self, ip: Ipv4Addr) -> Result<(), Error> {
        self.nft.add_nat_source(ip).await
    }

    async fn remove_nat_source(&self, ip: Ipv4Addr) -> Result<(), Error> {
        self.nft.remove_nat_source(ip).await
    }

    async fn ensure_guard(&self, guard: &Guard) -> Result<bool, Error> {
        self.nft.ensure_guard(guard).await
    }

    async fn guard_entries(&self) -> Result<BTreeSet<(String, Ipv4Addr)>, Error> {
        self.nft.guard_entries().await
    }

    async fn add_guard_entry(&self, tap: &str, ip: Ipv4Addr) -> Result<(), Error> {
        self.nft.add_guard_entry(tap, ip).await
    }

    async fn remove_guard_entry(&self, tap: &str, ip: Ipv4Addr) -> Result<(), Error> {
        self.nft.remove_guard_entry(tap, ip).await
    }

    async fn foreign_forward_drops(&self) -> Result<Vec<String>, Error> {
        self.nft.foreign_forward_drops().await
    }

    async fn ip_forward(&self) -> Result<bool, Error> {
        let text = tokio::fs::read_to_string(IP_FORWARD)
            .await
            .map_err(|source| Error::Sysctl {
                path: IP_FORWARD,
                source,
            })?;
        Ok(text.trim() == "1")
    }

    #[tracing::instrument(skip(self))]
    async fn set_ip_forward(&self, on: bool) -> Result<(), Error> {
        tokio::fs::write(IP_FORWARD, if on { "1\n" } else { "0\n" })
            .await
            .map_err(|source| Error::Sysctl {
                path: IP_FORWARD,
                source,
            })
    }
}
