//! The initramfs init: `banger-agent` run as `/init` (PID 1) in the
//! initramfs kernelcat generates for kernels whose drivers are modules
//! (Debian's cloud kernel). It does what the kernel would do itself with
//! everything built in, then hands over to the real root:
//!
//! 1. mounts devtmpfs (and takes `/dev/console` as stdio: the generated
//!    initramfs has no device nodes, so until then output goes nowhere),
//!    proc and sysfs;
//! 2. loads each module of `/etc/banger/modules` in order with
//!    `finit_module(2)` (compressed ones with `MODULE_INIT_COMPRESSED_FILE`:
//!    the kernel decompresses);
//! 3. reads `/proc/cmdline` ([`config::Cmdline`]);
//! 4. configures `lo` and the `ip=` interface over rtnetlink when the kernel
//!    has no IP_PNP ([`netlink`]) — DNS servers need no file: first boot
//!    reads them from `identity.json`, and `ip=` stays in /proc/cmdline;
//! 5. waits (bounded) for the root device, mounts it on `/newroot`;
//! 6. `switch_root`: frees the initramfs' files, moves /dev /proc /sys into
//!    the new root, `mount --move` it over `/`, chroots and execs `init=`
//!    with the arguments the kernel gave us.
//!
//! Each step prints `banger-init: <step>` on the console. A failure prints
//! `banger-init: FAILED <step>: <cause>` and PID 1 exits: the kernel then
//! panics ("Attempted to kill init"), and with the `panic=1` vmm puts on
//! every command line the VM resets, which `-no-reboot` / Firecracker turn
//! into the hypervisor exiting — so the host sees the failure at once, with
//! the FAILED line in the console tail, instead of waiting out its readiness
//! timeout on a guest sleeping forever. (Without `panic=` the kernel halts
//! after the message: still not silent.)

pub mod config;
pub mod netlink;

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, IntoRawFd as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

use config::{Cmdline, InitramfsInfo, IpConfig};

/// The module list in the initramfs.
pub const MODULES_FILE: &str = "/etc/banger/modules";
/// Facts about the kernel the initramfs was made for.
pub const INFO_FILE: &str = "/etc/banger/initramfs.json";
/// Where the real root is mounted before the switch.
const NEWROOT: &str = "/newroot";
/// How long to wait for the root device node to appear.
const ROOT_WAIT: Duration = Duration::from_secs(10);
/// How long to wait for the `ip=` interface (virtio-net probes during its
/// module load, so it is normally there at once).
const LINK_WAIT: Duration = Duration::from_secs(5);
/// `MODULE_INIT_COMPRESSED_FILE` of `<linux/module.h>` (Linux 5.17+; not
/// yet in the libc/nix bindings).
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Run outside an initramfs (e.g. `banger-agent init` on a host).
    #[error(
        "must run as PID 1 in an initramfs (this is process {pid}); the kernel starts it as /init"
    )]
    NotPid1 { pid: i32 },
    /// A file of the initramfs or the new root could not be read.
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A text we read does not say what it must.
    #[error("bad {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    /// A syscall failed.
    #[error("{call}: {errno}")]
    Sys { call: String, errno: nix::Error },
    /// The modules were built for another kernel.
    #[error("the initramfs is for kernel {want}, but this kernel is {have}")]
    WrongKernel { want: String, have: String },
    /// The device `root=` names never appeared.
    #[error(
        "{device} did not appear within {secs} s (is its driver among {MODULES_FILE}? see the kernel messages above)"
    )]
    NoRootDevice { device: String, secs: u64 },
    /// The interface `ip=` names never appeared.
    #[error("interface {device} did not appear within {secs} s")]
    NoLink { device: String, secs: u64 },
    /// exec of the real init failed.
    #[error("cannot exec {init} in the new root: {source}")]
    Exec {
        init: String,
        source: std::io::Error,
    },
}

fn sys(call: impl Into<String>) -> impl FnOnce(nix::Error) -> InitError {
    let call = call.into();
    move |errno| InitError::Sys { call, errno }
}

fn read(path: &str) -> Result<String, InitError> {
    fs::read_to_string(path).map_err(|source| InitError::Read {
        path: path.into(),
        source,
    })
}

/// Prints a console line. Errors are ignored: there is nowhere else to say it.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "banger-init: {line}");
    let _ = out.flush();
}

/// Runs one step: announces it, and names it if it fails.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T, InitError>) -> Result<T, (String, InitError)> {
    say(name);
    f().map_err(|e| (name.to_owned(), e))
}

/// The init mode's entry point. `args` are the arguments after the mode
/// (`/init ARGS…` or `banger-agent init ARGS…`): the kernel's
/// unrecognised command-line words, passed on to the real init.
/// Returns only on failure (after saying why).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let pid = std::process::id() as i32;
    if pid != 1 {
        eprintln!("banger-agent init: {}", InitError::NotPid1 { pid });
        return ExitCode::FAILURE;
    }
    // A bug here must still end in a FAILED line, not a bare exit.
    let outcome = std::panic::catch_unwind(|| run(args)).unwrap_or_else(|panic| {
        let cause = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        Err((
            "init".into(),
            InitError::Parse {
                what: "internal state",
                detail: cause,
            },
        ))
    });
    if let Err((step, cause)) = outcome {
        say(&format!("FAILED {step}: {cause}"));
    }
    nix::unistd::sync();
    // PID 1 exiting panics the kernel: see the module docs.
    ExitCode::FAILURE
}

fn run(args: Vec<OsString>) -> Result<(), (String, InitError)> {
    let started = Instant::now();
    // Nothing can be printed before this: there is no console yet.
    let console = mount_dev_and_console();
    say(&format!(
        "started (banger-agent {}); console: {}",
        banger_proto::VERSION,
        match &console {
            Ok(()) => "/dev/console".to_string(),
            Err(e) => format!("none ({e})"),
        }
    ));
    console.map_err(|e| ("mounting /dev".to_string(), e))?;
    step("mounting /proc and /sys", || {
        mount_fs("proc", "/proc", "proc")?;
        mount_fs("sysfs", "/sys", "sysfs")
    })?;
    let info = step(&format!("reading {INFO_FILE}"), || {
        let info = InitramfsInfo::parse(&read(INFO_FILE)?)?;
        let have = nix::sys::utsname::uname()
            .map_err(sys("uname"))?
            .release()
            .to_string_lossy()
            .into_owned();
        if have != info.kernel_version {
            return Err(InitError::WrongKernel {
                want: info.kernel_version,
                have,
            });
        }
        Ok(info)
    })?;
    let modules = step(&format!("reading {MODULES_FILE}"), || {
        config::parse_modules(&read(MODULES_FILE)?)
    })?;
    for module in &modules {
        step(&format!("loading {module}"), || load_module(module))?;
    }
    let cmdline = step("reading /proc/cmdline", || {
        Cmdline::parse(&read("/proc/cmdline")?)
    })?;
    if let Some(ip) = cmdline.ip.as_ref().filter(|_| !info.ip_pnp) {
        step(
            &format!("configuring {} {}/{}", ip.device, ip.address, ip.prefix_len),
            || configure_network(ip),
        )?;
    }
    step(&format!("waiting for {}", cmdline.root), || {
        wait_for_device(&cmdline.root)
    })?;
    step(
        &format!(
            "mounting {} ({}, {}) on {NEWROOT}",
            cmdline.root,
            cmdline.rootfstype,
            if cmdline.read_only { "ro" } else { "rw" }
        ),
        || mount_root(&cmdline),
    )?;
    step(
        &format!(
            "switching to the new root after {:.2} s, exec {}",
            started.elapsed().as_secs_f64(),
            cmdline.init
        ),
        || switch_root(&cmdline.init, &args),
    )
}

/// Mounts devtmpfs on /dev and makes /dev/console stdin, stdout and stderr.
fn mount_dev_and_console() -> Result<(), InitError> {
    let _ = fs::create_dir("/dev");
    match mount_fs("devtmpfs", "/dev", "devtmpfs") {
        // The kernel may have mounted it already (CONFIG_DEVTMPFS_MOUNT
        // applies to initramfs on some kernels).
        Ok(())
        | Err(InitError::Sys {
            errno: nix::Error::EBUSY,
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    console_as_stdio()
}

/// Makes `/dev/console` stdin, stdout and stderr (first boot uses it too
/// when the kernel started it without a console).
pub(crate) fn console_as_stdio() -> Result<(), InitError> {
    let console = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(|source| InitError::Read {
            path: "/dev/console".into(),
            source,
        })?;
    nix::unistd::dup2_stdin(&console).map_err(sys("dup2 stdin"))?;
    nix::unistd::dup2_stdout(&console).map_err(sys("dup2 stdout"))?;
    nix::unistd::dup2_stderr(&console).map_err(sys("dup2 stderr"))?;
    if console.as_raw_fd() <= 2 {
        // The open took a free stdio slot: that slot is the console now,
        // so it must stay open.
        let _ = console.into_raw_fd();
    }
    Ok(())
}

/// Mounts an API filesystem with the flags systemd would give it (the real
/// root's init keeps these mounts): /dev nosuid, proc and sysfs also
/// noexec and nodev.
fn mount_fs(source: &str, target: &str, fstype: &str) -> Result<(), InitError> {
    let _ = fs::create_dir(target);
    let (flags, data) = if fstype == "devtmpfs" {
        (MsFlags::MS_NOSUID, Some("mode=0755"))
    } else {
        (
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            None,
        )
    };
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(sys(format!("mount -t {fstype} {source} {target}")))
}

/// `finit_module(2)`; a module already loaded (or built in) is fine.
fn load_module(path: &str) -> Result<(), InitError> {
    let file = fs::File::open(path).map_err(|source| InitError::Read {
        path: path.into(),
        source,
    })?;
    let flags = if config::module_compression(path).is_some() {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    };
    match nix::kmod::finit_module(
        &file,
        c"",
        nix::kmod::ModuleInitFlags::from_bits_retain(flags),
    ) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        // The step already names the module.
        Err(errno) => Err(InitError::Sys {
            call: "finit_module".into(),
            errno,
        }),
    }
}

/// `lo` up; the `ip=` interface up with its address; the default route;
/// the kernel host name — what IP_PNP would have done.
pub fn configure_network(ip: &IpConfig) -> Result<(), InitError> {
    let mut rtnl = netlink::Rtnl::open().map_err(sys("socket(NETLINK_ROUTE)"))?;
    let lo = nix::net::if_::if_nametoindex("lo").map_err(sys("if_nametoindex lo"))?;
    rtnl.request(|seq| netlink::link_up(lo, seq))
        .map_err(sys("set lo up"))?;
    let deadline = Instant::now() + LINK_WAIT;
    let index = loop {
        match nix::net::if_::if_nametoindex(ip.device.as_str()) {
            Ok(i) => break i,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => {
                return Err(InitError::NoLink {
                    device: ip.device.clone(),
                    secs: LINK_WAIT.as_secs(),
                });
            }
        }
    };
    rtnl.request(|seq| netlink::add_address(index, ip.address, ip.prefix_len, seq))
        .map_err(sys(format!(
            "add {}/{} to {}",
            ip.address, ip.prefix_len, ip.device
        )))?;
    rtnl.request(|seq| netlink::link_up(index, seq))
        .map_err(sys(format!("set {} up", ip.device)))?;
    if let Some(gw) = ip.gateway {
        rtnl.request(|seq| netlink::default_route(index, gw, seq))
            .map_err(sys(format!("add default route via {gw} dev {}", ip.device)))?;
    }
    if let Some(host) = &ip.hostname {
        nix::unistd::sethostname(host).map_err(sys(format!("sethostname {host}")))?;
    }
    Ok(())
}

fn wait_for_device(device: &str) -> Result<(), InitError> {
    let deadline = Instant::now() + ROOT_WAIT;
    while !Path::new(device).exists() {
        if Instant::now() >= deadline {
            return Err(InitError::NoRootDevice {
                device: device.into(),
                secs: ROOT_WAIT.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn mount_root(cmdline: &Cmdline) -> Result<(), InitError> {
    let _ = fs::create_dir(NEWROOT);
    let flags = if cmdline.read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(
        Some(cmdline.root.as_str()),
        NEWROOT,
        Some(cmdline.rootfstype.as_str()),
        flags,
        None::<&str>,
    )
    .map_err(sys(format!(
        "mount -t {} {} {NEWROOT}",
        cmdline.rootfstype, cmdline.root
    )))
}

/// What busybox `switch_root` does: free the initramfs (it stays in RAM
/// otherwise), move the API filesystems, make the new root `/`, exec init.
fn switch_root(init: &str, args: &[OsString]) -> Result<(), InitError> {
    free_initramfs();
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEWROOT}{dir}");
        // A root without the mount point gets none; unmount so nothing
        // keeps the old root's files alive.
        let moved = Path::new(&target).is_dir()
            && mount(
                Some(dir),
                target.as_str(),
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            )
            .is_ok();
        if !moved {
            let _ = nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    nix::unistd::chdir(NEWROOT).map_err(sys(format!("chdir {NEWROOT}")))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("mount --move . /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot ."))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    // exec only returns on failure.
    let source = std::process::Command::new(init).args(args).exec();
    Err(InitError::Exec {
        init: init.into(),
        source,
    })
}

/// Deletes the initramfs' own files (not the mounts under it), only when
/// `/` really is the initramfs (ramfs/tmpfs): a mistaken run elsewhere must
/// never delete a disk's files.
fn free_initramfs() {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    // <linux/magic.h>; nix names TMPFS_MAGIC only.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6_u32 as _);
    let Ok(root) = statfs("/") else { return };
    if root.filesystem_type() != RAMFS_MAGIC && root.filesystem_type() != TMPFS_MAGIC {
        return;
    }
    let Ok(meta) = fs::symlink_metadata("/") else {
        return;
    };
    remove_tree(Path::new("/"), std::os::unix::fs::MetadataExt::dev(&meta));
}

/// Removes what is under `dir` on device `dev`, skipping mount points.
fn remove_tree(dir: &Path, dev: u64) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev || path == Path::new(NEWROOT) {
            continue;
        }
        if meta.is_dir() {
            remove_tree(&path, dev);
            let _ = fs::remove_dir(&path);
        } else {
            let _ = fs::remove_file(&path);
        }
    }
}
