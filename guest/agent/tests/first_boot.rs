//! `banger-first-boot` without a VM: the script runs against a temp root
//! (`BANGER_ROOT`, which prefixes every guest path and disables mounts and
//! the kernel hostname) with stub package managers and a stub init on PATH
//! that record their arguments. A prefix rather than `chroot`/`unshare -m`
//! keeps these tests unprivileged and lets them run the same script under
//! dash, bash and busybox sh with the host's tools; the real PID-1 path is
//! proven under systemd-nspawn (nspawn.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../first-boot/banger-first-boot")
}

const IDENTITY: &str = r#"{
  "hostname": "web-1",
  "ssh_authorized_keys": [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5 alice@laptop",
    "ssh-rsa AAAAB3NzaC1yc2E= bob \"the\" builder"
  ],
  "dns": [
    "1.1.1.1",
    "9.9.9.9"
  ],
  "ip": "172.30.0.2/24",
  "gateway": "172.30.0.1"
}
"#;

/// The shells the script must run under.
const SHELLS: &[&[&str]] = &[&["dash"], &["bash", "--posix"], &["busybox", "sh"]];

struct Guest {
    _dir: tempfile::TempDir,
    root: PathBuf,
    stubs: PathBuf,
    record: PathBuf,
}

fn write_exec(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Guest {
    /// A root with this os-release, the identity, the agent unit and
    /// openrc script (as imagestore injects them), and stubs that record
    /// calls. Package manager stubs "install" a stub init into the root.
    fn new(os_release: &str) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let stubs = dir.path().join("stubs");
        let record = dir.path().join("record");
        std::fs::create_dir_all(root.join("etc/banger")).unwrap();
        std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        std::fs::write(root.join("etc/os-release"), os_release).unwrap();
        std::fs::write(root.join("etc/banger/identity.json"), IDENTITY).unwrap();
        std::fs::write(root.join("etc/systemd/system/banger-agent.service"), "").unwrap();
        write_exec(&root.join("etc/init.d/banger-agent"), "");
        let recorder = format!(
            "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> {}\n",
            record.display()
        );
        let systemd = format!(
            "{recorder}mkdir -p \"$BANGER_ROOT/usr/lib/systemd\" \"$BANGER_ROOT/usr/lib/systemd/system\"\n\
             cp \"$0.init\" \"$BANGER_ROOT/usr/lib/systemd/systemd\"\n\
             touch \"$BANGER_ROOT/usr/lib/systemd/system/ssh.service\"\n"
        );
        for pm in ["apt-get", "dnf", "yum", "pacman", "zypper"] {
            write_exec(&stubs.join(pm), &systemd);
            write_exec(&stubs.join(format!("{pm}.init")), &recorder);
        }
        write_exec(
            &stubs.join("apk"),
            &format!(
                "{recorder}mkdir -p \"$BANGER_ROOT/sbin\" \"$BANGER_ROOT/etc/init.d\"\n\
                 cp \"$0.init\" \"$BANGER_ROOT/sbin/openrc-init\"\n\
                 touch \"$BANGER_ROOT/sbin/openrc\"; chmod +x \"$BANGER_ROOT/sbin/openrc\"\n\
                 touch \"$BANGER_ROOT/etc/init.d/sshd\"\n"
            ),
        );
        write_exec(&stubs.join("apk.init"), &recorder);
        write_exec(&stubs.join("rescue-shell"), &recorder);
        Guest {
            _dir: dir,
            root,
            stubs,
            record,
        }
    }

    /// Runs the script under `shell` with `args`; returns (success, stderr).
    fn run(&self, shell: &[&str], args: &[&str]) -> (bool, String) {
        let out = Command::new(shell[0])
            .args(&shell[1..])
            .arg(script())
            .args(args)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", self.stubs.display()))
            .env("BANGER_ROOT", &self.root)
            .env("BANGER_RESCUE_SHELL", self.stubs.join("rescue-shell"))
            .output()
            .unwrap_or_else(|e| panic!("run {shell:?}: {e}"));
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        for line in log.lines() {
            assert!(
                line.starts_with("banger-first-boot: "),
                "unprefixed log line {line:?}"
            );
        }
        (out.status.success(), log)
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn link(&self, path: &str) -> String {
        std::fs::read_link(self.root.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .display()
            .to_string()
    }

    fn mode(&self, path: &str) -> u32 {
        std::fs::metadata(self.root.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }
}

fn assert_identity(g: &Guest) {
    assert_eq!(g.read("etc/hostname"), "web-1\n");
    assert!(g.read("etc/hosts").contains("127.0.1.1\tweb-1\n"));
    assert_eq!(
        g.read("etc/resolv.conf"),
        "nameserver 1.1.1.1\nnameserver 9.9.9.9\n"
    );
    assert_eq!(
        g.read("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG5 alice@laptop\n\
         ssh-rsa AAAAB3NzaC1yc2E= bob \"the\" builder\n"
    );
    assert_eq!(g.mode("root/.ssh"), 0o700);
    assert_eq!(g.mode("root/.ssh/authorized_keys"), 0o600);
}

fn assert_systemd_enabled(g: &Guest) {
    assert_eq!(g.link("etc/systemd/system/dev-ttyS0.device"), "/dev/null");
    assert_eq!(g.link("etc/systemd/system/dev-vdb.device"), "/dev/null");
    assert_eq!(
        g.link("etc/systemd/system/sysinit.target.wants/banger-agent.service"),
        "/etc/systemd/system/banger-agent.service"
    );
    assert_eq!(
        g.link("etc/systemd/system/multi-user.target.wants/ssh.service"),
        "/usr/lib/systemd/system/ssh.service"
    );
}

/// (os-release, expected package manager calls, expected init stub).
fn installs(os_release: &str) -> (Vec<String>, String) {
    let g = Guest::new(os_release);
    let (ok, log) = g.run(&["dash"], &["--pid1", "splash"]);
    assert!(ok, "{log}");
    let calls = g.calls();
    let (init, pm) = calls
        .split_last()
        .unwrap_or_else(|| panic!("no calls: {log}"));
    (pm.to_vec(), init.clone())
}

#[test]
fn debian_without_init_installs_systemd_and_ssh_under_every_shell() {
    for shell in SHELLS {
        let g = Guest::new("ID=debian\nVERSION_ID=\"12\"\n");
        let (ok, log) = g.run(shell, &["--pid1", "quiet"]);
        assert!(ok, "{shell:?}: {log}");
        assert_eq!(
            g.calls(),
            vec![
                "apt-get update",
                "apt-get install -y --no-install-recommends systemd-sysv openssh-server",
                // The init gets the kernel's leftover arguments, not ours.
                "systemd quiet",
            ],
            "{shell:?}: {log}"
        );
        assert_identity(&g);
        assert_systemd_enabled(&g);
        assert!(
            log.contains("banger-first-boot: exec /usr/lib/systemd/systemd"),
            "{log}"
        );
    }
}

#[test]
fn distro_families_use_their_package_manager() {
    let cases = [
        (
            "ID=ubuntu\n",
            "apt-get install -y --no-install-recommends systemd-sysv openssh-server",
        ),
        ("ID=fedora\n", "dnf install -y systemd openssh-server"),
        (
            "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
            "dnf install -y systemd openssh-server",
        ),
        (
            "ID=arch\n",
            "pacman -Sy --noconfirm --needed systemd openssh",
        ),
        (
            "ID=\"opensuse-tumbleweed\"\nID_LIKE=\"opensuse suse\"\n",
            "zypper --non-interactive install systemd openssh-server",
        ),
        // ID unknown: ID_LIKE decides.
        (
            "ID=mydistro\nID_LIKE='debian'\n",
            "apt-get install -y --no-install-recommends systemd-sysv openssh-server",
        ),
        (
            "ID=myrhel\nID_LIKE=\"rhel\"\n",
            "dnf install -y systemd openssh-server",
        ),
    ];
    for (os_release, expected) in cases {
        let (pm, init) = installs(os_release);
        assert_eq!(pm.last().unwrap(), expected, "{os_release}");
        assert_eq!(init, "systemd splash", "{os_release}");
    }
}

#[test]
fn alpine_gets_openrc_with_agent_and_sshd_registered() {
    let g = Guest::new("NAME=\"Alpine Linux\"\nID=alpine\n");
    let (ok, log) = g.run(&["busybox", "sh"], &["--pid1"]);
    assert!(ok, "{log}");
    assert_eq!(
        g.calls(),
        vec!["apk add --no-cache openrc openssh", "openrc-init "]
    );
    assert_eq!(
        g.link("etc/runlevels/default/banger-agent"),
        "/etc/init.d/banger-agent"
    );
    assert_eq!(g.link("etc/runlevels/default/sshd"), "/etc/init.d/sshd");
    assert_identity(&g);
}

#[test]
fn unknown_distro_leaves_a_rescue_shell() {
    let g = Guest::new("ID=plan9\n");
    let (_, log) = g.run(&["dash"], &["--pid1"]);
    assert!(
        log.contains("banger-first-boot: FAILED: unknown distribution (ID=plan9"),
        "{log}"
    );
    assert_eq!(g.calls(), vec!["rescue-shell "], "{log}");
}

#[test]
fn image_with_systemd_execs_it_without_installing_and_second_boot_does_nothing_new() {
    let g = Guest::new("ID=debian\n");
    write_exec(
        &g.root.join("usr/lib/systemd/systemd"),
        &std::fs::read_to_string(g.stubs.join("apt-get.init")).unwrap(),
    );
    std::fs::create_dir_all(g.root.join("usr/lib/systemd/system")).unwrap();
    std::fs::write(g.root.join("usr/lib/systemd/system/ssh.service"), "").unwrap();
    let (ok, first) = g.run(&["bash"], &["--pid1"]);
    assert!(ok, "{first}");
    assert_eq!(g.calls(), vec!["systemd "]);
    assert_identity(&g);
    assert_systemd_enabled(&g);

    let (ok, second) = g.run(&["dash"], &["--pid1"]);
    assert!(ok, "{second}");
    assert!(second.contains("identity already applied"), "{second}");
    assert!(!second.contains("linked"), "second boot relinked: {second}");
    assert_eq!(g.calls(), vec!["systemd ", "systemd "]);

    // A changed identity is applied again.
    std::fs::write(
        g.root.join("etc/banger/identity.json"),
        IDENTITY.replace("web-1", "web-2"),
    )
    .unwrap();
    let (ok, third) = g.run(&["dash"], &["--pid1"]);
    assert!(ok, "{third}");
    assert_eq!(g.read("etc/hostname"), "web-2\n");
    assert!(g.read("etc/hosts").contains("127.0.1.1\tweb-2\n"));
    assert!(!g.read("etc/hosts").contains("web-1"));
}

#[test]
fn oneshot_applies_identity_only() {
    let g = Guest::new("ID=debian\n");
    // A resolv.conf symlink (systemd-resolved stub) is replaced by a file.
    std::os::unix::fs::symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        g.root.join("etc/resolv.conf"),
    )
    .unwrap();
    let (ok, log) = g.run(&["busybox", "sh"], &["--oneshot"]);
    assert!(ok, "{log}");
    assert!(
        g.calls().is_empty(),
        "oneshot must not install or exec: {:?}",
        g.calls()
    );
    assert_identity(&g);
    assert!(!g.root.join("etc/systemd/system/dev-vdb.device").exists());
}

#[test]
fn empty_and_missing_fields_are_tolerated() {
    let g = Guest::new("ID=debian\n");
    std::fs::write(
        g.root.join("etc/banger/identity.json"),
        "{\n  \"hostname\": \"solo\",\n  \"ssh_authorized_keys\": [],\n  \"dns\": []\n}\n",
    )
    .unwrap();
    let (ok, log) = g.run(&["dash"], &["--oneshot"]);
    assert!(ok, "{log}");
    assert_eq!(g.read("etc/hostname"), "solo\n");
    assert!(!g.root.join("etc/resolv.conf").exists());
    assert!(!g.root.join("root/.ssh/authorized_keys").exists());
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    banger_test_support::require_program("shellcheck", "shellcheck");
    let guest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for (file, shell) in [
        ("first-boot/banger-first-boot", "sh"),
        ("openrc/banger-agent", "sh"),
    ] {
        let out = Command::new("shellcheck")
            .args(["-s", shell])
            .arg(guest.join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "shellcheck {file}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let build = guest.join("../scripts/build-guest.sh");
    let out = Command::new("shellcheck").arg(&build).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
