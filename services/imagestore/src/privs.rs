//! imagestore needs no capability at all: owners, modes, devices and
//! xattrs of an image are bytes written into its ext4 by mke2fs/debugfs,
//! never onto the host. Started as root (dev mode, `banger up`), it drops
//! every capability — effective, permitted, inheritable, ambient and the
//! bounding set, so neither it nor mke2fs/debugfs (which, as uid 0, would
//! regain the bounding set on exec) holds one — and sets `no_new_privs`.
//!
//! Capabilities are per thread: this must run before the async runtime
//! starts its threads.

use caps::{CapSet, Capability, CapsHashSet};

/// Why the capabilities could not be dropped.
#[derive(Debug, thiserror::Error)]
#[error("cannot drop capabilities ({what}): {message}")]
pub struct PrivError {
    what: String,
    message: String,
}

fn err(what: &str) -> impl FnOnce(caps::errors::CapsError) -> PrivError + '_ {
    move |e| PrivError {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

/// Drops every capability of the calling thread (and of what it will
/// spawn or exec); returns the effective set left (empty).
pub fn drop_all() -> Result<CapsHashSet, PrivError> {
    let no_new_privs = || {
        nix::sys::prctl::set_no_new_privs().map_err(|e| PrivError {
            what: "set no_new_privs".into(),
            message: e.to_string(),
        })
    };
    let mut held = CapsHashSet::new();
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
        CapSet::Bounding,
    ] {
        held.extend(caps::read(None, set).map_err(err("read a capability set"))?);
    }
    // Under the systemd unit there is nothing to drop, and its syscall
    // filter (~@privileged) refuses capset itself.
    if held.is_empty() {
        no_new_privs()?;
        return Ok(held);
    }
    let bounding = caps::read(None, CapSet::Bounding).map_err(err("read the bounding set"))?;
    if !bounding.is_empty() {
        if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
            .map_err(err("read the effective set"))?
        {
            for cap in bounding {
                caps::drop(None, CapSet::Bounding, cap).map_err(err("shrink the bounding set"))?;
            }
        } else {
            // Without CAP_SETPCAP the bounding set stays, but with empty
            // permitted/inheritable sets and no_new_privs a non-root exec
            // gains nothing from it; as root (uid 0) it would.
            tracing::warn!("cannot empty the bounding set without CAP_SETPCAP");
        }
    }
    let none = CapsHashSet::new();
    caps::clear(None, CapSet::Ambient).map_err(err("clear the ambient set"))?;
    caps::set(None, CapSet::Inheritable, &none).map_err(err("clear the inheritable set"))?;
    caps::set(None, CapSet::Effective, &none).map_err(err("clear the effective set"))?;
    caps::set(None, CapSet::Permitted, &none).map_err(err("clear the permitted set"))?;
    no_new_privs()?;
    caps::read(None, CapSet::Effective).map_err(err("read the effective set"))
}
