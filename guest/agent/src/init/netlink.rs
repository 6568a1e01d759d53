//! Just enough rtnetlink to bring an interface up, give it an IPv4 address
//! and add a default route — what the kernel's `ip=` autoconfiguration does
//! when the kernel has it (CONFIG_IP_PNP), for kernels that do not.
//!
//! Netlink rather than the old `SIOCSIFADDR`/`SIOCADDRT` ioctls: the
//! messages are plain bytes (built and unit-tested here, no `unsafe`), and
//! the route ioctl's `struct rtentry` is not even in the musl bindings.
//! The layouts are those of `<linux/netlink.h>` and `<linux/rtnetlink.h>`.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

// <linux/netlink.h>
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
// <linux/rtnetlink.h>
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
// <linux/if_addr.h>
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
// <linux/if.h>
const IFF_UP: u32 = 0x1;
const AF_INET: u8 = 2;
const AF_UNSPEC: u8 = 0;

/// One request message under construction.
struct Message(Vec<u8>);

impl Message {
    /// `nlmsghdr` with the length patched in by [`Message::finish`].
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        Message(b)
    }
    fn bytes(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self
    }
    /// An `rtattr`, padded to 4 bytes.
    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len() as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// `RTM_NEWLINK` setting IFF_UP on interface `index`.
pub fn link_up(index: u32, seq: u32) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWLINK, 0, seq);
    // struct ifinfomsg { family, pad, type, index, flags, change }
    m.bytes(&[AF_UNSPEC, 0])
        .bytes(&0u16.to_ne_bytes())
        .bytes(&(index as i32).to_ne_bytes())
        .bytes(&IFF_UP.to_ne_bytes())
        .bytes(&IFF_UP.to_ne_bytes());
    m.finish()
}

/// `RTM_NEWADDR` of `address/prefix_len` (with its broadcast) on `index`.
pub fn add_address(index: u32, address: Ipv4Addr, prefix_len: u8, seq: u32) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq);
    // struct ifaddrmsg { family, prefixlen, flags, scope, index }
    m.bytes(&[AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE])
        .bytes(&index.to_ne_bytes())
        .attr(IFA_LOCAL, &address.octets())
        .attr(IFA_ADDRESS, &address.octets());
    if prefix_len < 31 {
        let host_bits = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
        let broadcast = Ipv4Addr::from(u32::from(address) | host_bits);
        m.attr(IFA_BROADCAST, &broadcast.octets());
    }
    m.finish()
}

/// `RTM_NEWROUTE` of the default route via `gateway` out of `index`.
pub fn default_route(index: u32, gateway: Ipv4Addr, seq: u32) -> Vec<u8> {
    let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq);
    // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type, flags }
    m.bytes(&[
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ])
    .bytes(&0u32.to_ne_bytes())
    .attr(RTA_GATEWAY, &gateway.octets())
    .attr(RTA_OIF, &index.to_ne_bytes());
    m.finish()
}

/// Reads the kernel's answer to request `seq`: `Ok` for an ACK, the errno
/// for an `NLMSG_ERROR` carrying one. Messages about other sequence numbers
/// are skipped.
pub fn parse_ack(mut buf: &[u8], seq: u32) -> Option<Result<(), nix::Error>> {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let msg_seq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        if kind == NLMSG_ERROR && msg_seq == seq && len >= 20 {
            let err = i32::from_ne_bytes(buf[16..20].try_into().ok()?);
            return Some(if err == 0 {
                Ok(())
            } else {
                Err(nix::Error::from_raw(-err))
            });
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    None
}

/// A NETLINK_ROUTE socket talking to the kernel.
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> nix::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        Ok(Rtnl { fd, seq: 0 })
    }

    /// Sends the request `build(seq)` makes and waits for its ACK.
    pub fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> nix::Result<()> {
        self.seq += 1;
        let msg = build(self.seq);
        sendto(
            self.fd.as_raw_fd(),
            &msg,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            if let Some(answer) = parse_ack(&buf[..n], self.seq) {
                return answer;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes(b[i..i + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes(b[i..i + 4].try_into().unwrap())
    }

    #[test]
    fn link_up_layout() {
        let m = link_up(7, 1);
        assert_eq!(m.len(), 32);
        assert_eq!(u32_at(&m, 0), 32);
        assert_eq!(u16_at(&m, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&m, 8), 1);
        assert_eq!(u32_at(&m, 20), 7, "ifi_index");
        assert_eq!(u32_at(&m, 24), IFF_UP, "ifi_flags");
        assert_eq!(u32_at(&m, 28), IFF_UP, "ifi_change");
    }

    #[test]
    fn address_layout() {
        let m = add_address(2, Ipv4Addr::new(172, 30, 0, 5), 24, 9);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(m.len(), 16 + 8 + 3 * 8);
        assert_eq!(u16_at(&m, 4), RTM_NEWADDR);
        assert_eq!(&m[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(u32_at(&m, 20), 2);
        assert_eq!(u16_at(&m, 24), 8);
        assert_eq!(u16_at(&m, 26), IFA_LOCAL);
        assert_eq!(&m[28..32], &[172, 30, 0, 5]);
        assert_eq!(u16_at(&m, 34), IFA_ADDRESS);
        assert_eq!(u16_at(&m, 42), IFA_BROADCAST);
        assert_eq!(&m[44..48], &[172, 30, 0, 255]);
        // Point-to-point sized nets have no broadcast; /0 does not overflow.
        assert_eq!(add_address(2, Ipv4Addr::new(10, 0, 0, 1), 31, 1).len(), 40);
        assert_eq!(add_address(2, Ipv4Addr::new(10, 0, 0, 1), 32, 1).len(), 40);
        let m = add_address(2, Ipv4Addr::new(10, 0, 0, 1), 0, 1);
        assert_eq!(&m[44..48], &[255, 255, 255, 255]);
    }

    #[test]
    fn route_layout() {
        let m = default_route(3, Ipv4Addr::new(172, 30, 0, 1), 4);
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(u16_at(&m, 4), RTM_NEWROUTE);
        assert_eq!(
            &m[16..24],
            &[AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST]
        );
        assert_eq!(u16_at(&m, 30), RTA_GATEWAY);
        assert_eq!(&m[32..36], &[172, 30, 0, 1]);
        assert_eq!(u16_at(&m, 38), RTA_OIF);
        assert_eq!(u32_at(&m, 40), 3);
    }

    fn error_msg(seq: u32, errno: i32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-errno).to_ne_bytes());
        b.extend_from_slice(&[0; 16]);
        b
    }

    #[test]
    fn acks_and_errors() {
        assert_eq!(parse_ack(&error_msg(5, 0), 5), Some(Ok(())));
        assert_eq!(
            parse_ack(&error_msg(5, libc::ENODEV), 5),
            Some(Err(nix::Error::ENODEV))
        );
        // Another request's answer is skipped, then ours is found.
        let mut two = error_msg(4, libc::EPERM);
        two.extend(error_msg(5, 0));
        assert_eq!(parse_ack(&two, 5), Some(Ok(())));
        assert_eq!(parse_ack(&error_msg(4, 0), 5), None);
        // Hostile framing never panics or loops.
        assert_eq!(parse_ack(&[], 1), None);
        assert_eq!(parse_ack(&[0xff; 15], 1), None);
        let mut short = error_msg(1, 0);
        short[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse_ack(&short, 1), None);
        let mut long = error_msg(1, 0);
        long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(parse_ack(&long, 1), None);
        let mut truncated = error_msg(1, 0);
        truncated[0..4].copy_from_slice(&17u32.to_ne_bytes());
        truncated.truncate(17);
        assert_eq!(parse_ack(&truncated, 1), None);
    }
}
