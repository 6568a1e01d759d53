//! Capabilities: netd needs CAP_NET_ADMIN and nothing else. At start it
//! refuses to run without it and drops every other capability it was given,
//! in every thread.
//!
//! Capabilities are per thread, and netd drops them only once its socket is
//! bound (its `chown` to `[paths] socket_group` needs CAP_CHOWN), when the
//! async runtime's threads already exist. So the calling thread restricts
//! itself, then has every other thread do the same from a signal handler
//! (what libpsx does for C programs), and reads every thread's sets back
//! from /proc: netd does not start unless all of them hold CAP_NET_ADMIN
//! alone.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

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
    let keep = 1u64 << Capability::CAP_NET_ADMIN.index();
    restrict_other_threads(keep, can_setpcap)?;
    caps::read(None, CapSet::Effective).map_err(caps_err("read the effective capabilities"))
}

/// The sets every other thread takes in [`on_restrict`].
static KEEP: AtomicU64 = AtomicU64::new(0);
static LAST_CAP: AtomicU32 = AtomicU32::new(0);
static SHRINK_BOUNDING: AtomicU32 = AtomicU32::new(0);
/// Threads that ran [`on_restrict`].
static RESTRICTED: AtomicUsize = AtomicUsize::new(0);

/// `capset(2)`'s header and data (version 3: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Runs on each other thread: the same sets the calling thread took, with
/// raw syscalls only (async-signal-safe).
extern "C" fn on_restrict(_: libc::c_int) {
    let keep = KEEP.load(Ordering::SeqCst);
    if SHRINK_BOUNDING.load(Ordering::SeqCst) == 1 {
        for cap in 0..=LAST_CAP.load(Ordering::SeqCst) {
            if keep & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments only.
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            }
        }
    }
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let word = |w: u32| CapData {
        effective: (keep >> (32 * w)) as u32,
        permitted: (keep >> (32 * w)) as u32,
        inheritable: (keep >> (32 * w)) as u32,
    };
    let data = [word(0), word(1)];
    // SAFETY: capset reads the header and the two data words, all live
    // locals of this frame; pid 0 is the calling thread.
    unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    // Ambient as on the calling thread: only what is kept (and allowed).
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        for cap in 0..64u64 {
            if keep & (1 << cap) != 0 {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    cap as libc::c_ulong,
                    0,
                    0,
                );
            }
        }
    }
    RESTRICTED.fetch_add(1, Ordering::SeqCst);
}

fn thread_ids() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Makes every thread but the caller take `keep` as its effective,
/// permitted, inheritable and ambient sets (and its bounding set when
/// `shrink_bounding`), then checks every thread's sets in /proc.
fn restrict_other_threads(keep: u64, shrink_bounding: bool) -> Result<(), PrivError> {
    let fail = |message: String| PrivError::Caps {
        what: "restrict every thread".into(),
        message,
    };
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    KEEP.store(keep, Ordering::SeqCst);
    LAST_CAP.store(last, Ordering::SeqCst);
    SHRINK_BOUNDING.store(u32::from(shrink_bounding), Ordering::SeqCst);
    // A real-time signal nothing else in netd uses (glibc keeps the first
    // ones for itself; SIGRTMIN() accounts for that).
    let signal = libc::SIGRTMIN() + 6;
    // SAFETY: the handler only makes raw syscalls and touches atomics;
    // the sigaction struct is a zeroed local with the fields set (nix's
    // typed signals have no real-time ones, hence libc).
    unsafe {
        let mut raw: libc::sigaction = std::mem::zeroed();
        raw.sa_sigaction = on_restrict as *const () as usize;
        raw.sa_flags = libc::SA_RESTART;
        if libc::sigaction(signal, &raw, std::ptr::null_mut()) != 0 {
            return Err(fail(format!(
                "cannot install the handler: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    let me = nix::unistd::gettid().as_raw();
    let pid = std::process::id() as libc::c_int;
    let mut done = std::collections::HashSet::from([me]);
    // Threads started meanwhile by a thread not yet restricted would have
    // its sets: go again until no new thread appears.
    for _ in 0..20 {
        let pending: Vec<i32> = thread_ids()
            .into_iter()
            .filter(|t| !done.contains(t))
            .collect();
        if pending.is_empty() {
            break;
        }
        let before = RESTRICTED.load(Ordering::SeqCst);
        let mut sent = 0;
        for &tid in &pending {
            // SAFETY: tgkill with integer arguments; a thread that ended
            // meanwhile is ESRCH, not counted.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) } == 0 {
                sent += 1;
            }
            done.insert(tid);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while RESTRICTED.load(Ordering::SeqCst) < before + sent {
            if std::time::Instant::now() > deadline {
                return Err(fail(format!(
                    "{} of {sent} threads did not take the signal",
                    before + sent - RESTRICTED.load(Ordering::SeqCst)
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    let want = format!("{keep:016x}");
    for tid in thread_ids() {
        let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
            continue; // ended meanwhile
        };
        for field in ["CapEff:", "CapPrm:", "CapInh:"]
            .into_iter()
            .chain(shrink_bounding.then_some("CapBnd:"))
        {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .map(str::trim)
                .unwrap_or("?");
            if value != want {
                return Err(fail(format!(
                    "thread {tid} still has {field} {value} (want {want})"
                )));
            }
        }
    }
    Ok(())
}
