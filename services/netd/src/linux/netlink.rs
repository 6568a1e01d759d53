//! Links and addresses through rtnetlink: the bridge (fixed MAC, gateway
//! address, up) and taps as its ports (created through [`crate::tun`]).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use crate::error::Error;
use crate::ops::Link;

/// A netlink connection in the network namespace it was opened in.
#[derive(Clone)]
pub(super) struct Netlink {
    handle: Handle,
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |e| Error::Netlink {
        what,
        message: e.to_string(),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

impl Netlink {
    /// Opens a netlink connection in the current network namespace; must
    /// run inside a tokio runtime (the connection is a spawned task).
    pub(super) fn new() -> Result<Netlink, Error> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Netlink {
            what: "opening a netlink socket".into(),
            message: e.to_string(),
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("looking up link {name}"))(e)),
        }
    }

    async fn set_up(&self, index: u32, controller: Option<u32>, name: &str) -> Result<(), Error> {
        let mut msg = LinkUnspec::new_with_index(index).up();
        if let Some(c) = controller {
            msg = msg.controller(c);
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(nl(format!("setting {name} up")))
    }

    #[tracing::instrument(skip(self))]
    pub(super) async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<bool, Error> {
        let mut changed = false;
        // A bridge without an explicit address takes the lowest of its
        // ports' and changes it as taps come and go, leaving guests with a
        // stale gateway MAC; a fixed one derived from the gateway avoids that.
        let mac = mac_bytes(gateway);
        let link = match self.link_by_name(name).await? {
            Some(link) => link,
            None => {
                self.handle
                    .link()
                    .add(LinkBridge::new(name).address(mac.to_vec()).build())
                    .execute()
                    .await
                    .map_err(nl(format!("creating bridge {name}")))?;
                changed = true;
                self.link_by_name(name)
                    .await?
                    .ok_or_else(|| Error::Netlink {
                        what: format!("creating bridge {name}"),
                        message: "the bridge vanished right after creation".into(),
                    })?
            }
        };
        let info = to_link(&link);
        if !info.is_bridge {
            return Err(Error::Config(format!(
                "{name} exists and is not a bridge; delete it or set another [netd] bridge"
            )));
        }
        let has_mac = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Address(m) if m[..] == mac[..]));
        if !has_mac {
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(info.index)
                        .address(mac.to_vec())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl(format!("setting the address of {name}")))?;
            changed = true;
        }
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(info.index)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("listing addresses of {name}")))?;
        let has_gateway = addrs.iter().any(|a| {
            a.header.prefix_len == prefix_len
                && a.attributes
                    .iter()
                    .any(|attr| matches!(attr, AddressAttribute::Local(IpAddr::V4(ip)) if *ip == gateway))
        });
        if !has_gateway {
            self.handle
                .address()
                .add(info.index, IpAddr::V4(gateway), prefix_len)
                .execute()
                .await
                .map_err(nl(format!("adding {gateway}/{prefix_len} to {name}")))?;
            changed = true;
        }
        if !info.up {
            self.set_up(info.index, None, name).await?;
            changed = true;
        }
        Ok(changed)
    }

    #[tracing::instrument(skip(self))]
    pub(super) async fn ensure_tap(
        &self,
        tap: &str,
        uid: u32,
        gid: u32,
        bridge: &str,
    ) -> Result<(), Error> {
        // An existing tap is left to whoever holds it (a running VM's
        // hypervisor: TUNSETIFF on it would fail with EBUSY); only its
        // bridge port and up state are repaired.
        if self.link_by_name(tap).await?.is_none() {
            crate::tun::create_persistent_tap(tap, uid, gid)?;
        }
        let bridge_link = self
            .link_by_name(bridge)
            .await?
            .ok_or_else(|| Error::Netlink {
                what: format!("attaching {tap}"),
                message: format!("bridge {bridge} does not exist; restart banger-netd"),
            })?;
        let tap_link = self
            .link_by_name(tap)
            .await?
            .ok_or_else(|| Error::Netlink {
                what: format!("attaching {tap}"),
                message: "the tap vanished right after creation".into(),
            })?;
        let (t, b) = (to_link(&tap_link), to_link(&bridge_link));
        if t.controller != Some(b.index) || !t.up {
            self.set_up(t.index, Some(b.index), tap).await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    pub(super) async fn delete_tap(&self, tap: &str) -> Result<(), Error> {
        let Some(link) = self.link_by_name(tap).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
            Err(e) => Err(nl(format!("deleting {tap}"))(e)),
        }
    }

    pub(super) async fn links(&self) -> Result<Vec<Link>, Error> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))?;
        Ok(msgs.iter().map(to_link).collect())
    }
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        is_bridge: false,
        controller: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::LinkInfo(infos) => {
                link.is_bridge = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
            }
            _ => {}
        }
    }
    link
}

/// The bridge's MAC: the lease MAC scheme applied to the gateway address.
fn mac_bytes(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x02, 0xba, a, b, c, d]
}
