//! Persistent tap devices through `/dev/net/tun` ioctls: the only `unsafe`
//! in netd. A persistent tap outlives the file descriptor that made it, and
//! TUNSETOWNER/TUNSETGROUP let the hypervisor (running as the vmm's user,
//! without privileges) attach to it later.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::error::Error;

const TUN_DEVICE: &str = "/dev/net/tun";

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags; the
/// kernel copies `sizeof(struct ifreq)` = 40 bytes on 64-bit, so we pad.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, IfReq);
nix::ioctl_write_int_bad!(tun_set_persist, libc::TUNSETPERSIST);
nix::ioctl_write_int_bad!(tun_set_owner, libc::TUNSETOWNER);
nix::ioctl_write_int_bad!(tun_set_group, libc::TUNSETGROUP);

/// Creates `name` as a persistent tap (or re-opens the existing one) and
/// sets its owner and group. The caller attaches it to the bridge and sets
/// it up over netlink.
pub fn create_persistent_tap(name: &str, uid: u32, gid: u32) -> Result<(), Error> {
    let err = |what: &'static str| {
        move |source: nix::Error| Error::Tun {
            tap: name.to_owned(),
            what,
            source,
        }
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(err("naming")(nix::Error::EINVAL));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|e| {
            err("opening /dev/net/tun (netd's user needs read-write access; Debian's udev makes it 0666)")(
                nix::Error::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })?;
    let fd = file.as_raw_fd();
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `fd` is an open /dev/net/tun descriptor owned by `file`, which
    // lives until the end of this function; `req` is a properly initialised,
    // NUL-terminated ifreq of the size the kernel copies in.
    unsafe { tun_set_iff(fd, &req) }.map_err(err("TUNSETIFF"))?;
    // SAFETY: integer-argument ioctls on the same live tun descriptor; the
    // kernel only reads the value.
    unsafe { tun_set_owner(fd, uid as libc::c_int) }.map_err(err("TUNSETOWNER"))?;
    // SAFETY: as above.
    unsafe { tun_set_group(fd, gid as libc::c_int) }.map_err(err("TUNSETGROUP"))?;
    // SAFETY: as above.
    unsafe { tun_set_persist(fd, 1) }.map_err(err("TUNSETPERSIST"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
    }
}
