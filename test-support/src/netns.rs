//! Private network namespaces: everything that creates a bridge, tap, NAT
//! rule or VM runs inside one of these, never in the host's namespace.

use std::process::Command;

use nix::sched::{CloneFlags, unshare};

/// Runs `f` on a new thread that first moves into a fresh network namespace
/// with only `lo` (up). Processes spawned from that thread inherit the
/// namespace; the rest of the test process stays where it was. Build any
/// tokio runtime *inside* `f` (current-thread) so its sockets live there too.
pub fn in_new_netns<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    crate::require_root();
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): are we root?");
        let status = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run `ip` (apt-get install iproute2)");
        assert!(status.success(), "ip link set lo up failed");
        f()
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A named namespace (`ip netns add`), deleted on drop; for tests that need
/// a second host, e.g. the "outside" of a NAT test.
#[derive(Debug)]
pub struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    /// Creates `banger-test-<tag>-<pid>` with `lo` up.
    pub fn new(tag: &str) -> NamedNetns {
        crate::require_root();
        let name = format!("banger-test-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NamedNetns { name };
        run(ns.exec(["ip", "link", "set", "lo", "up"]).as_mut());
        ns
    }

    /// A command that runs `argv` inside the namespace.
    pub fn exec<I, S>(&self, argv: I) -> Box<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        Box::new(cmd)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}
