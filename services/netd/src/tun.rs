//! Persistent tap devices through `/dev/net/tun` ioctls: the only `unsafe`
//! in netd. A persistent tap outlives the file descriptor that made it, and
//! TUNSETOWNER/TUNSETGROUP let the hypervisor (running as the vmm's user,
//! without privileges) attach to it later.

use std::fs::{File, OpenOptions};
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

fn tun_err(name: &str, what: &'static str) -> impl FnOnce(nix::Error) -> Error {
    let tap = name.to_owned();
    move |source| Error::Tun { tap, what, source }
}

/// Opens /dev/net/tun and attaches the descriptor to tap `name` (creating
/// a non-persistent one if it does not exist), as a hypervisor does.
/// Fails with EBUSY while another descriptor holds the tap.
pub fn attach(name: &str) -> Result<File, Error> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(tun_err(name, "naming")(nix::Error::EINVAL));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|e| {
            tun_err(
                name,
                "opening /dev/net/tun (netd's user needs read-write access; Debian's udev makes it 0666)",
            )(nix::Error::from_raw(e.raw_os_error().unwrap_or(0)))
        })?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: the descriptor is an open /dev/net/tun owned by `file`, alive
    // for the call; `req` is an initialised, NUL-terminated ifreq of the
    // size the kernel copies in.
    unsafe { tun_set_iff(file.as_raw_fd(), &req) }.map_err(tun_err(name, "TUNSETIFF"))?;
    Ok(file)
}

/// Creates `name` as a persistent tap owned by `uid`/`gid`. The caller
/// attaches it to the bridge and sets it up over netlink. Only for taps
/// that do not exist yet: re-opening one a hypervisor holds fails (EBUSY).
/// Owner, group and persistence are set on one descriptor before it
/// closes, so a crash half-way leaves no tap at all rather than one with
/// the wrong owner.
pub fn create_persistent_tap(name: &str, uid: u32, gid: u32) -> Result<(), Error> {
    let file = attach(name)?;
    let fd = file.as_raw_fd();
    // SAFETY: integer-argument ioctls on the live tun descriptor `file`
    // owns; the kernel only reads the value.
    unsafe { tun_set_owner(fd, uid as libc::c_int) }.map_err(tun_err(name, "TUNSETOWNER"))?;
    // SAFETY: as above.
    unsafe { tun_set_group(fd, gid as libc::c_int) }.map_err(tun_err(name, "TUNSETGROUP"))?;
    // SAFETY: as above.
    unsafe { tun_set_persist(fd, 1) }.map_err(tun_err(name, "TUNSETPERSIST"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<super::IfReq>(), 40);
    }
}
