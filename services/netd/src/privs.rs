//! Capabilities: netd needs CAP_NET_ADMIN and nothing else. At start it
//! refuses to run without it and drops every other capability it was given.

use caps::{CapSet, Capability, CapsHashSet};
use thiserror::Error;

/// Why netd cannot run with the privileges it has.
#[derive(Debug, Error)]
pub enum PrivError {
    /// CAP_NET_ADMIN is not in the effective set.
    #[error(
        "CAP_NET_ADMIN is not effective, and banger-netd needs it to manage the bridge, taps and nftables; \
         run it as root, or with the capability (systemd: AmbientCapabilities=CAP_NET_ADMIN; \
         shell: setpriv --inh-caps=+net_admin --ambient-caps=+net_admin …)"
    )]
    NoNetAdmin,
    /// Reading or changing a capability set failed.
    #[error("cannot {what}: {message}")]
    Caps { what: String, message: String },
}

fn caps_err(what: &str) -> impl FnOnce(caps::errors::CapsError) -> PrivError + '_ {
    move |e| PrivError::Caps {
        what: what.to_owned(),
        message: e.to_string(),
    }
}

/// Fails with [`PrivError::NoNetAdmin`] unless CAP_NET_ADMIN is effective
/// (checked first, so a netd without it says so before any netlink call).
pub fn require_net_admin() -> Result<(), PrivError> {
    let has = caps::has_cap(None, CapSet::Effective, Capability::CAP_NET_ADMIN)
        .map_err(caps_err("read the effective capabilities"))?;
    if has {
        Ok(())
    } else {
        Err(PrivError::NoNetAdmin)
    }
}

/// Keeps only CAP_NET_ADMIN in the effective, permitted, inheritable,
/// ambient and bounding sets, and returns the effective set.
///
/// Inheritable and ambient keep CAP_NET_ADMIN so the `nft` binary netd
/// runs keeps it too when netd is not root. The bounding set can only be
/// reduced with CAP_SETPCAP; without it (e.g. systemd already bounded us)
/// extra bounding capabilities are left and logged.
pub fn restrict_to_net_admin() -> Result<CapsHashSet, PrivError> {
    require_net_admin()?;
    let only: CapsHashSet = [Capability::CAP_NET_ADMIN].into_iter().collect();
    let can_setpcap = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(caps_err("read the effective capabilities"))?;
    let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("read the bounding set"))?;
    let extra: Vec<Capability> = bounding.difference(&only).copied().collect();
    if can_setpcap {
        for cap in &extra {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(caps_err(&format!("drop {cap} from the bounding set")))?;
        }
    } else if !extra.is_empty() {
        tracing::warn!(
            count = extra.len(),
            "cannot shrink the bounding set without CAP_SETPCAP; leaving it"
        );
    }
    caps::set(None, CapSet::Inheritable, &only).map_err(caps_err("set the inheritable set"))?;
    if let Err(e) = caps::set(None, CapSet::Ambient, &only) {
        tracing::warn!(error = %e, "cannot raise CAP_NET_ADMIN in the ambient set; `nft` may lack it when netd is not root");
    }
    caps::set(None, CapSet::Effective, &only).map_err(caps_err("set the effective set"))?;
    caps::set(None, CapSet::Permitted, &only).map_err(caps_err("set the permitted set"))?;
    caps::read(None, CapSet::Effective).map_err(caps_err("read the effective capabilities"))
}
