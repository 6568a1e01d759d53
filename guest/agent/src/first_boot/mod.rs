//! `banger-first-boot`: the first program a banger VM runs (the agent
//! binary as `banger-agent first-boot`, or by the name `banger-first-boot`).
//!
//! Modes:
//! - **PID 1** (`init=/usr/local/libexec/banger-first-boot`; `--pid1` forces
//!   it in tests): mount the API filesystems, apply the identity, make sure
//!   the image has an init — installing systemd/openrc and an SSH server
//!   with its package manager if not ([`distro`], [`install`]) — enable the
//!   agent and sshd, and exec the init ([`handover`]). An image with no
//!   init, no package manager and no known distribution (busybox,
//!   scratch-like) gets a minimal supervisor instead ([`supervisor`]).
//!   With `purpose: prepare` in identity.json, install what is missing,
//!   leave the filesystem clean for every later VM ([`prepare`]) and power
//!   off.
//! - **`--oneshot`** (`banger-first-boot.service`, images that boot their own
//!   systemd): the identity only.
//!
//! Every phase is a [`FirstBootEvent`] line on the console ([`events`]).
//! Failures never panic PID 1: the `Failed` event, a `FAILED:` line, and a
//! rescue shell ([`rescue`]). Test hooks: `BANGER_ROOT` (the guest root;
//! no mounts, hostname or power-off then), `BANGER_RESCUE_SHELL`.

pub mod classify;
pub mod distro;
pub mod error;
pub mod events;
pub mod handover;
pub mod identity;
pub mod install;
pub mod mounts;
pub mod network;
pub mod os_release;
pub mod prepare;
pub mod rescue;
pub mod root;
pub mod supervisor;

use std::ffi::OsString;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;

use banger_proto::guest::{AGENT_PATH, FirstBootEvent, Identity, Purpose};

pub use error::FirstBootError;
use events::Console;
use identity::Loaded;
use root::Root;

/// How this run was started.
#[derive(Debug, Clone)]
pub struct Options {
    pub root: Root,
    /// PID-1 duties (mounts, exec, rescue shell).
    pub pid1: bool,
    pub oneshot: bool,
    /// The kernel's leftover arguments, for the init.
    pub init_args: Vec<OsString>,
    pub rescue_shell: PathBuf,
}

impl Options {
    pub fn from_args(args: Vec<OsString>) -> Options {
        let mut pid1 = std::process::id() == 1;
        let mut oneshot = false;
        let mut init_args = Vec::new();
        for a in args {
            match a.to_str() {
                Some("--oneshot") => oneshot = true,
                Some("--pid1") => pid1 = true,
                _ => init_args.push(a),
            }
        }
        let root = Root::new(std::env::var_os("BANGER_ROOT").unwrap_or_else(|| "/".into()));
        let rescue_shell = std::env::var_os("BANGER_RESCUE_SHELL")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.resolve("/bin/sh"));
        Options {
            root,
            pid1: pid1 && !oneshot,
            oneshot,
            init_args,
            rescue_shell,
        }
    }
}

/// The mode's entry point (`args`: what follows the mode name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let opts = Options::from_args(args);
    let console = if opts.oneshot && opts.root.is_system() {
        Console::console_or_stderr()
    } else if std::process::id() == 1 {
        Console::stdout()
    } else {
        Console::stderr()
    };
    if !opts.pid1 && !opts.oneshot {
        console.log("usage: run as PID 1 (init=/usr/local/libexec/banger-first-boot), or with --oneshot (or --pid1 in tests)");
        return ExitCode::from(2);
    }
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&opts, &console)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            Err(Box::new(("first boot".into(), FirstBootError::Panic(what))))
        });
    let Err(failure) = outcome else {
        return ExitCode::SUCCESS;
    };
    let (step, err) = *failure;
    rescue::report(&console, &step, &err);
    if opts.pid1 && std::process::id() == 1 {
        rescue::pid1_loop(&console, opts.rescue_shell.clone());
    }
    if opts.pid1 {
        rescue::once(&console, opts.rescue_shell.clone());
    }
    ExitCode::FAILURE
}

/// A step's result: its name travels with the error (boxed: the error is large).
type Step<T> = Result<T, Box<(String, FirstBootError)>>;

/// Names the step an error happened in.
fn step<T>(name: &str, r: Result<T, FirstBootError>) -> Step<T> {
    r.map_err(|e| Box::new((name.to_owned(), e)))
}

fn run(opts: &Options, console: &Console) -> Step<()> {
    let root = &opts.root;
    console.event(&FirstBootEvent::Started {
        version: banger_proto::VERSION.into(),
    });
    console.log(format!(
        "starting (banger-agent {}, PID {}{})",
        banger_proto::VERSION,
        std::process::id(),
        if opts.oneshot { ", oneshot" } else { "" }
    ));
    if opts.pid1 && root.is_system() {
        step("mounting the API filesystems", mounts::mount_all(console))?;
        if nix::fcntl::fcntl(std::io::stdout(), nix::fcntl::FcntlArg::F_GETFD).is_err() {
            let _ = crate::init::console_as_stdio();
        }
    }
    let loaded = step("reading identity.json", identity::load(root))?;
    if loaded.is_none() {
        console.log(format!(
            "no {}; keeping the image's hostname, DNS and keys",
            banger_proto::guest::IDENTITY_PATH
        ));
    }
    let purpose = loaded
        .as_ref()
        .map(|l| l.identity.purpose)
        .unwrap_or_default();
    if opts.oneshot {
        if let Some(l) = &loaded {
            apply_identity(root, l, console)?;
        }
        return Ok(());
    }
    match purpose {
        Purpose::Vm => boot_vm(opts, loaded.as_ref(), console),
        Purpose::Prepare => prepare_image(root, loaded.as_ref(), console),
    }
}

/// What os-release says, with a refused file logged as missing.
fn read_os(root: &Root, console: &Console) -> Option<os_release::OsRelease> {
    match os_release::read(root) {
        Ok(os) => os,
        Err(why) => {
            console.warn(format!("os-release ignored: {why}"));
            None
        }
    }
}

/// The image's distribution family and its manager, if present.
fn manager_of(
    root: &Root,
    console: &Console,
) -> (
    Option<os_release::OsRelease>,
    Option<distro::Family>,
    Option<(distro::Manager, String)>,
) {
    let os = read_os(root, console);
    let family = os.as_ref().and_then(distro::Family::of);
    let manager = family.and_then(|f| install::find_manager(root, f.managers()));
    (os, family, manager)
}

/// Applies the identity unless this exact one was applied before.
fn apply_identity(root: &Root, loaded: &Loaded, console: &Console) -> Step<()> {
    if identity::already_applied(root, loaded) {
        console.log("identity already applied");
        return Ok(());
    }
    let name = "applying the identity";
    let valid = identity::validate(&loaded.identity, &mut |w| console.warn(w));
    step(
        name,
        identity::apply(root, &valid, root.is_system(), console),
    )?;
    if !loaded.identity.network.is_empty() {
        let (_, family, manager) = manager_of(root, console);
        if let (Some(f), Some((m, _))) = (family, manager) {
            // Kept in a VM: its package manager goes on working the same way.
            let _ = step(
                "applying the network settings",
                network::apply(root, f.name(), &m, &loaded.identity.network, console),
            )?;
        }
    }
    step(name, identity::mark_applied(root, loaded))?;
    console.log("identity applied");
    Ok(())
}

/// The image's family and package manager, or why there is none.
fn require_manager(
    root: &Root,
    console: &Console,
) -> Step<(distro::Family, distro::Manager, String)> {
    let (os, family, manager) = manager_of(root, console);
    let os = os.unwrap_or_default();
    let Some(family) = family else {
        return step(
            "choosing a package manager",
            Err(FirstBootError::UnknownDistribution {
                id: os.id.clone(),
                id_like: os.id_like.join(" "),
            }),
        );
    };
    let Some((manager, program)) = manager else {
        let names: Vec<&str> = family.managers().iter().map(|m| m.program).collect();
        return step(
            "choosing a package manager",
            Err(FirstBootError::NoPackageManager {
                manager: names.join(" or "),
                detail: format!(
                    "the image is {} ({} family) but has no {} in {}",
                    if os.id.is_empty() { "unnamed" } else { &os.id },
                    family.name(),
                    names.join(" or "),
                    distro::PATH
                ),
            }),
        );
    };
    Ok((family, manager, program))
}

/// What an image without `init` (and maybe without sshd) needs.
fn packages_for(manager: &distro::Manager, init: bool, ssh: bool) -> Vec<String> {
    let mut p: Vec<String> = Vec::new();
    if !init {
        p.extend(manager.init_packages.iter().map(|s| s.to_string()));
    }
    if !ssh {
        p.extend(manager.ssh_packages.iter().map(|s| s.to_string()));
    }
    p
}

/// Installs `packages` with the image's manager. `restore_after` puts the
/// network settings (and resolv.conf) back afterwards (preparation).
fn install_packages(
    root: &Root,
    found: (distro::Family, distro::Manager, String),
    identity: Option<&Identity>,
    console: &Console,
    packages: &[String],
    restore_after: bool,
) -> Step<()> {
    let (family, manager, program) = found;
    step(
        "checking the architecture",
        install::check_architecture(root, &program),
    )?;
    step(
        "checking the architecture",
        install::check_architecture(root, "/bin/sh"),
    )?;
    console.log(format!(
        "installing {} with {} for the {} family (needs the network)",
        packages.join(" "),
        manager.name,
        family.name()
    ));
    let net = identity.map(|i| i.network.clone()).unwrap_or_default();
    let resolv = root.read_capped("/etc/resolv.conf", 1 << 20).ok().flatten();
    let resolv_link = root.read_link("/etc/resolv.conf");
    if restore_after && let Some(id) = identity {
        let valid = identity::validate(id, &mut |w| console.warn(w));
        step(
            "writing resolv.conf",
            identity::apply_dns(root, &valid.dns, console),
        )?;
    }
    let restore = step(
        "applying the network settings",
        network::apply(root, family.name(), &manager, &net, console),
    )?;
    let proxy = network::Proxy::from_settings(&net, &mut |_| {});
    let runner = install::Runner {
        root,
        console,
        manager,
        program,
        env: proxy.env(),
    };
    let result = install::install(&runner, packages);
    if restore_after {
        prepare::clean(&runner, &manager);
        restore.undo(root, console);
        let back = match (resolv_link, resolv) {
            (Some(target), _) => {
                let _ = root.remove("/etc/resolv.conf");
                root.link(&target.to_string_lossy(), "/etc/resolv.conf")
                    .map(|_| ())
            }
            (None, Some(data)) => root.write("/etc/resolv.conf", &data, 0o644),
            (None, None) => root.remove("/etc/resolv.conf"),
        };
        if let Err(e) = back {
            console.warn(format!("cannot restore /etc/resolv.conf: {e}"));
        }
    }
    // A Command error names its own step (`apt update`); the rescue
    // report prefers that.
    result.map_err(|e| Box::new((format!("{} install", manager.name), e)))
}

/// Whether the image is busybox/scratch-like: no init, no known
/// distribution and no package manager of any family.
fn is_bare(root: &Root, console: &Console) -> bool {
    let (_, family, _) = manager_of(root, console);
    family.is_none()
        && !distro::ALL_PROGRAMS
            .iter()
            .any(|p| install::find_program(root, p).is_some())
}

fn boot_vm(opts: &Options, loaded: Option<&Loaded>, console: &Console) -> Step<()> {
    let root = &opts.root;
    if let Some(l) = loaded {
        apply_identity(root, l, console)?;
    }
    let init = match handover::find(root) {
        Some(init) => init,
        None if is_bare(root, console) => return supervise(root, console),
        None => {
            let found = require_manager(root, console)?;
            // Only the init is required here; sshd comes with it.
            let packages = packages_for(&found.1, false, false);
            let manager = found.1.name;
            console.log(
                "no init in the image; installing one (preparing the image first does this once per image)",
            );
            install_packages(
                root,
                found,
                loaded.map(|l| &l.identity),
                console,
                &packages,
                false,
            )?;
            handover::find(root).ok_or_else(|| {
                Box::new((
                    "finding the init".to_owned(),
                    FirstBootError::NoInitAfterInstall {
                        manager: manager.into(),
                        packages,
                    },
                ))
            })?
        }
    };
    step(
        "enabling the agent and sshd",
        handover::setup(root, &init, console),
    )?;
    handover::ssh_host_keys(root, console);
    console.event(&FirstBootEvent::Handover {
        init: init.path().into(),
    });
    console.log(format!("exec {}", init.path()));
    step(
        "handing over to the init",
        Err(handover::exec(root, init.path(), &opts.init_args)),
    )
}

fn supervise(root: &Root, console: &Console) -> Step<()> {
    if !root.is_executable(AGENT_PATH) {
        return step(
            "starting the agent",
            Err(FirstBootError::NoAgent {
                path: AGENT_PATH.into(),
            }),
        );
    }
    console.log("no init and nothing to install one with: supervising banger-agent as PID 1");
    console.event(&FirstBootEvent::Handover {
        init: "banger-agent".into(),
    });
    step("supervising the agent", supervisor::run(root, console))
}

fn prepare_image(root: &Root, loaded: Option<&Loaded>, console: &Console) -> Step<()> {
    let init = handover::find(root);
    let bare = init.is_none() && is_bare(root, console);
    let mut packages = Vec::new();
    if !bare {
        let ssh = handover::has_ssh_server(root);
        if init.is_none() || !ssh {
            let found = require_manager(root, console)?;
            packages = packages_for(&found.1, init.is_some(), ssh);
            console.log(format!(
                "preparing the image: installing {}",
                packages.join(" ")
            ));
            install_packages(
                root,
                found,
                loaded.map(|l| &l.identity),
                console,
                &packages,
                true,
            )?;
        }
    }
    if packages.is_empty() {
        console.log("the image has everything it needs; nothing to install");
    }
    match init.or_else(|| handover::find(root)) {
        Some(init) => step(
            "enabling the agent and sshd",
            handover::setup(root, &init, console),
        )?,
        None if bare => {}
        None => {
            return step(
                "finding the init",
                Err(FirstBootError::NoInitAfterInstall {
                    manager: "the package manager".into(),
                    packages,
                }),
            );
        }
    }
    prepare::leave_clean(root, console);
    console.log(format!(
        "prepared ({}); powering off",
        if packages.is_empty() {
            "nothing installed".to_owned()
        } else {
            packages.join(" ")
        }
    ));
    let prepared = FirstBootEvent::Prepared { packages };
    step(
        "powering off",
        supervisor::power_off(root, console, Some(&prepared)),
    )
}
