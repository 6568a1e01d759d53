//! After a preparation install: leave the filesystem fit to be copied for
//! every later VM — package caches and indexes emptied (as the official
//! images ship them), no machine id (systemd makes one per boot when the
//! file is empty), no SSH host keys (vmm injects each VM's own), no
//! identity-applied marker (each VM applies its own identity), and the
//! network settings and resolv.conf of the preparation VM put back.

use super::distro::Manager;
use super::events::Console;
use super::identity::APPLIED;
use super::install::Runner;
use super::root::Root;

/// Empties the manager's caches (errors are warnings: the image is usable).
pub fn clean(runner: &Runner<'_>, manager: &Manager) {
    if !manager.clean.is_empty() {
        let argv: Vec<String> = manager.clean.iter().map(|s| s.to_string()).collect();
        if let Err(e) = runner.run("clean", &argv) {
            runner
                .console
                .warn(format!("cleaning the package cache: {e}"));
        }
    }
}

/// Removes everything below `dir` but keeps `dir` (and a `partial` or
/// `lock` apt recreates anyway).
fn empty_dir(root: &Root, dir: &str, console: &Console) {
    let path = root.resolve(dir);
    for name in root.list(dir) {
        let p = path.join(&name);
        let gone = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        if let Err(e) = gone {
            console.warn(format!("cannot remove {dir}/{name}: {e}"));
        }
    }
}

/// The per-VM and per-preparation state removed; see the module docs.
pub fn leave_clean(root: &Root, console: &Console) {
    empty_dir(root, "/var/lib/apt/lists", console);
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        // A symlink (dbus → /etc/machine-id) is kept; a file is emptied.
        let real = root.resolve_parent(path);
        if real.is_file()
            && !real.is_symlink()
            && let Err(e) = root.write(path, b"", 0o444)
        {
            console.warn(format!("cannot empty {path}: {e}"));
        }
    }
    for name in root.list("/etc/ssh") {
        if name.starts_with("ssh_host_") {
            let path = format!("/etc/ssh/{name}");
            match root.remove(&path) {
                Ok(()) => console.log(format!("removed {path}")),
                Err(e) => console.warn(e),
            }
        }
    }
    if let Err(e) = root.remove(APPLIED) {
        console.warn(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_vm_state_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in [
            "var/lib/apt/lists/partial",
            "etc/ssh",
            "var/lib/banger",
            "var/lib/dbus",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("var/lib/apt/lists/deb.debian.org_InRelease"), "x").unwrap();
        std::fs::write(r.join("etc/machine-id"), "0123456789abcdef\n").unwrap();
        std::os::unix::fs::symlink("/etc/machine-id", r.join("var/lib/dbus/machine-id")).unwrap();
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key.pub"), "k").unwrap();
        std::fs::write(r.join("etc/ssh/sshd_config"), "keep").unwrap();
        std::fs::write(r.join("var/lib/banger/identity.applied"), "x").unwrap();
        let root = Root::new(r);
        leave_clean(&root, &Console::new(Box::new(std::io::sink())));
        assert!(root.list("/var/lib/apt/lists").is_empty());
        assert!(r.join("var/lib/apt/lists").is_dir());
        assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");
        assert!(r.join("var/lib/dbus/machine-id").is_symlink());
        assert_eq!(root.list("/etc/ssh"), ["sshd_config"]);
        assert!(!r.join("var/lib/banger/identity.applied").exists());
    }
}
