//! banger's SSH client side: its own key pair, one pinned known_hosts file
//! per VM (the host key the vmm generated), and the ControlMaster sockets
//! that let a VM's sessions share one connection. Everything lives under
//! `$XDG_CONFIG_HOME/banger` (else `~/.config/banger`), with the user's
//! rights.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use banger_proto::vmm::v1 as pb;

/// banger's SSH key pair.
pub struct SshKey {
    pub private: PathBuf,
    /// The public key line, as `authorized_keys` takes it.
    pub public: String,
}

/// `$XDG_CONFIG_HOME/banger` (else `~/.config/banger`): banger's SSH key
/// and the known host keys of the user's VMs.
fn config_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set: cannot place banger's SSH files")?;
    Ok(base.join("banger"))
}

/// `~/.config/banger/id_ed25519`, made with `ssh-keygen` on first use.
pub fn ensure_ssh_key() -> Result<SshKey> {
    let dir = config_dir()?;
    let private = dir.join("id_ed25519");
    let public_path = dir.join("id_ed25519.pub");
    if !private.exists() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        make_ssh_key(&dir, &private, &public_path)?;
    }
    let public = std::fs::read_to_string(&public_path)
        .with_context(|| format!("cannot read {}", public_path.display()))?
        .trim()
        .to_owned();
    Ok(SshKey { private, public })
}

/// Makes the key pair under a name of this process and publishes it with
/// hard links, the public key first: parallel first uses (several `vm
/// create` at once on a fresh host) agree on one pair, and whoever sees
/// the private key also finds its public key. A loser waits for the
/// winner's private key.
fn make_ssh_key(dir: &Path, private: &Path, public: &Path) -> Result<()> {
    let mine = dir.join(format!(".id_ed25519.{}", std::process::id()));
    let mine_pub = dir.join(format!(".id_ed25519.{}.pub", std::process::id()));
    let _ = std::fs::remove_file(&mine);
    let _ = std::fs::remove_file(&mine_pub);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f"])
        .arg(&mine)
        .stdin(std::process::Stdio::null())
        .status()
        .context("cannot run ssh-keygen: install openssh-client")?;
    if !status.success() {
        bail!("ssh-keygen failed ({status})");
    }
    let won =
        std::fs::hard_link(&mine_pub, public).is_ok() && std::fs::hard_link(&mine, private).is_ok();
    let _ = std::fs::remove_file(&mine);
    let _ = std::fs::remove_file(&mine_pub);
    if !won {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !private.exists() {
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} exists without {}: remove it to make a new key",
                    public.display(),
                    private.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// `~/.config/banger/known_hosts.d/<vm>`: the one host key `vm ssh` accepts
/// for that VM, under the alias of the VM's name (so a reused IP never
/// matches another VM's entry).
fn known_hosts_path(vm: &str) -> Result<PathBuf> {
    // The name becomes a file name: only a DNS label may.
    banger_proto::names::validate("vm", vm)?;
    Ok(config_dir()?.join("known_hosts.d").join(vm))
}

/// Records the host key the vmm generated for `vm` (at create, the creator
/// pins it; a later create of the same name replaces it).
pub fn record_host_key(vm: &pb::Vm) -> Result<()> {
    if vm.ssh_host_public_key.is_empty() {
        return Ok(());
    }
    let path = known_hosts_path(&vm.name)?;
    let dir = path.parent().expect("known_hosts.d");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    banger_proto::fsutil::write_atomic(&path, known_hosts_line(vm).as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn known_hosts_line(vm: &pb::Vm) -> String {
    format!("{} {}\n", vm.name, vm.ssh_host_public_key.trim())
}

/// Drops the known host key of a deleted VM; absent is fine.
pub fn forget_host_key(vm: &str) -> Result<()> {
    let path = known_hosts_path(vm)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// How `vm ssh` checks the guest's host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKeyCheck {
    /// Only the pinned key in the VM's known_hosts file.
    Strict,
    /// A VM from before host-key pinning: trust the first key it shows and
    /// pin that.
    FirstUse,
}

/// The control socket `vm ssh` multiplexes a VM's sessions over:
/// `~/.config/banger/mux/<hash>`, the hash of the VM's name, address,
/// the host key the vmm made and the pin in its known_hosts file, so a
/// re-created VM (new key), a reused address or a changed pin never
/// reaches an old master (whose connection verified the key it was made
/// with). `None` when the path would not fit a unix socket (then every call
/// connects on its own).
fn control_path(vm: &pb::Vm) -> Result<Option<PathBuf>> {
    use std::hash::{Hash, Hasher};
    let pin = std::fs::read(known_hosts_path(&vm.name)?).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&vm.name, &vm.ip, vm.ssh_host_public_key.trim(), pin).hash(&mut h);
    let path = config_dir()?
        .join("mux")
        .join(format!("{:016x}", h.finish()));
    // sun_path is 108 bytes; ssh adds a temporary suffix while binding.
    Ok((path.as_os_str().len() <= 80).then_some(path))
}

/// Ends the SSH master of a deleted VM, if one runs.
pub fn close_control_master(vm: &pb::Vm) {
    let Ok(Some(path)) = control_path(vm) else {
        return;
    };
    if path.exists() {
        let _ = std::process::Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", path.display()))
            .args(["-O", "exit", "banger-vm"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_file(&path);
    }
}

/// The `ssh` argv for a VM: banger's key, and the VM's own known_hosts
/// file under the VM's name as alias, checked strictly; with a control
/// path, sessions share one connection (the first call opens it, later
/// calls within a minute of the last skip the key exchange, which is most
/// of a connection's cost to a TCG guest).
fn ssh_argv(
    key: &std::path::Path,
    known_hosts: &std::path::Path,
    check: HostKeyCheck,
    control: Option<&std::path::Path>,
    vm: &str,
    ip: &str,
    command: &[String],
) -> Vec<String> {
    let strict = match check {
        HostKeyCheck::Strict => "yes",
        HostKeyCheck::FirstUse => "accept-new",
    };
    let mut a: Vec<String> = vec![
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        format!("StrictHostKeyChecking={strict}"),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        format!("HostKeyAlias={vm}"),
        "-o".into(),
        "HostKeyAlgorithms=ssh-ed25519".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
    ];
    if let Some(control) = control {
        a.extend([
            "-o".into(),
            "ControlMaster=auto".into(),
            "-o".into(),
            format!("ControlPath={}", control.display()),
            "-o".into(),
            "ControlPersist=60".into(),
        ]);
    }
    a.push(format!("root@{ip}"));
    if !command.is_empty() {
        a.push("--".into());
        a.extend(command.iter().cloned());
    }
    a
}

/// Runs `ssh` into `vm` (running, with an address) as root with banger's
/// key, checking the host key pinned for it; its exit code is ours.
pub fn session(vm: &pb::Vm, command: &[String]) -> Result<ExitCode> {
    let key = ensure_ssh_key()?;
    let known_hosts = known_hosts_path(&vm.name)?;
    let check = if vm.ssh_host_public_key.is_empty() {
        eprintln!(
            "warning: VM {} has no pinned SSH host key (it was created before banger pinned them); \
             trusting the key it shows now and recording it in {}",
            vm.name,
            known_hosts.display()
        );
        std::fs::create_dir_all(known_hosts.parent().expect("known_hosts.d"))?;
        HostKeyCheck::FirstUse
    } else {
        if !known_hosts.exists() {
            // A VM created by another client: the vmm's word is the pin.
            record_host_key(vm)?;
        }
        HostKeyCheck::Strict
    };
    // Only for pinned keys: a first-use check must see the key itself.
    let control = match check {
        HostKeyCheck::Strict => control_path(vm)?,
        HostKeyCheck::FirstUse => None,
    };
    if let Some(dir) = control.as_deref().and_then(|c| c.parent()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let status = std::process::Command::new("ssh")
        .args(ssh_argv(
            &key.private,
            &known_hosts,
            check,
            control.as_deref(),
            &vm.name,
            &vm.ip,
            command,
        ))
        .status()
        .context("cannot run ssh: install openssh-client")?;
    if status.code() == Some(255)
        && check == HostKeyCheck::Strict
        && std::fs::read_to_string(&known_hosts).ok().as_deref() != Some(&known_hosts_line(vm))
    {
        eprintln!(
            "banger: the host key pinned for {} in {} is not the one the vmm made for it; \
             if the VM was re-created by another client, delete that file and retry",
            vm.name,
            known_hosts.display()
        );
    }
    Ok(ExitCode::from(
        status.code().unwrap_or(255).clamp(0, 255) as u8
    ))
}

/// Whether the vmm's readiness check saw this VM's sshd answer.
pub fn known_ready(vm: &pb::Vm) -> bool {
    vm.probes
        .iter()
        .any(|p| p.capability == "ssh" && p.state == "ready")
}

/// Waits until `ip:port` accepts a TCP connection, at most `timeout`.
pub async fn wait_tcp(ip: &str, port: u16, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((ip, port)),
        )
        .await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_command_line_checks_the_pinned_host_key() {
        let a = ssh_argv(
            std::path::Path::new("/k/id"),
            std::path::Path::new("/k/known_hosts.d/box"),
            HostKeyCheck::Strict,
            Some(std::path::Path::new("/k/mux/0123")),
            "box",
            "10.0.0.2",
            &["id".into()],
        );
        assert_eq!(
            a.join(" "),
            "-i /k/id -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/k/known_hosts.d/box \
             -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias=box -o HostKeyAlgorithms=ssh-ed25519 \
             -o LogLevel=ERROR -o IdentitiesOnly=yes \
             -o ControlMaster=auto -o ControlPath=/k/mux/0123 -o ControlPersist=60 \
             root@10.0.0.2 -- id"
        );
    }

    #[test]
    fn known_hosts_paths_are_vm_names_only() {
        assert!(known_hosts_path("../../etc/passwd").is_err());
        assert!(known_hosts_path("a/b").is_err());
        let vm = pb::Vm {
            name: "box".into(),
            ssh_host_public_key: "ssh-ed25519 AAAAC3 box\n".into(),
            ..Default::default()
        };
        assert_eq!(known_hosts_line(&vm), "box ssh-ed25519 AAAAC3 box\n");
    }
}
