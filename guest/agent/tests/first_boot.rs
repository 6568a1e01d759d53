//! `banger-agent first-boot` without a VM: the real binary runs against a
//! temp root (`BANGER_ROOT`: every guest path is resolved inside it; no
//! mounts, kernel hostname or power-off), with stub package managers and a
//! stub init inside that root which record their arguments and "install"
//! files. The events it prints are parsed with the host's own parser
//! (`FirstBootEvent::parse_console_line`). The real PID-1 paths are proven
//! under QEMU (qemu.rs: busybox supervisor, systemd image) and
//! systemd-nspawn (priv_nspawn.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use banger_proto::guest::{FailureCause, FirstBootEvent};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2OBhyKo1LWcDCdg2dQBoe23VhQHi50q8/oiiPmQMUC alice@laptop";

fn identity(extra: &str) -> String {
    format!(
        r#"{{
  "hostname": "web-1",
  "ssh_authorized_keys": [
    "{KEY}",
    "ssh-rsa AAAA\nssh-ed25519 AAAA attacker"
  ],
  "dns": [
    "1.1.1.1",
    "9.9.9.9"
  ]{extra}
}}
"#
    )
}

struct Guest {
    _dir: tempfile::TempDir,
    root: PathBuf,
    record: PathBuf,
    shell: PathBuf,
}

fn write_exec(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// What a run printed and how it ended.
struct Ran {
    ok: bool,
    log: String,
    events: Vec<FirstBootEvent>,
}

impl Ran {
    fn failed(&self) -> (String, FailureCause, String, Vec<String>) {
        self.events
            .iter()
            .find_map(|e| match e {
                FirstBootEvent::Failed {
                    step,
                    cause,
                    message,
                    excerpt,
                } => Some((step.clone(), *cause, message.clone(), excerpt.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Failed event:\n{}", self.log))
    }
}

impl Guest {
    /// A root with this os-release, the identity, the agent unit and
    /// openrc script (as imagestore injects them).
    fn new(os_release: &str) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let record = dir.path().join("record");
        std::fs::create_dir_all(root.join("etc/banger")).unwrap();
        std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        if !os_release.is_empty() {
            std::fs::write(root.join("etc/os-release"), os_release).unwrap();
        }
        std::fs::write(root.join("etc/banger/identity.json"), identity("")).unwrap();
        std::fs::write(root.join("etc/systemd/system/banger-agent.service"), "").unwrap();
        write_exec(&root.join("etc/init.d/banger-agent"), "");
        let shell = dir.path().join("rescue-shell");
        let g = Guest {
            _dir: dir,
            root,
            record,
            shell,
        };
        write_exec(&g.shell, &g.recorder("rescue-shell"));
        g
    }

    fn recorder(&self, name: &str) -> String {
        format!(
            "#!/bin/sh\necho \"{name} $*\" >> '{}'\n",
            self.record.display()
        )
    }

    /// A package manager stub at `/usr/bin/NAME` that records, then runs `body`.
    fn manager(&self, name: &str, body: &str) {
        write_exec(
            &self.root.join("usr/bin").join(name),
            &format!("{}{body}", self.recorder(name)),
        );
    }

    /// A manager whose install puts systemd, ssh.service and sshd in the root.
    fn systemd_installer(&self, name: &str) {
        let init = self.root.join("stub-init");
        write_exec(&init, &self.recorder("systemd"));
        self.manager(
            name,
            &format!(
                "case \"$*\" in *install*|-S\\ *) \
                 mkdir -p \"$BANGER_ROOT/usr/lib/systemd/system\" \"$BANGER_ROOT/usr/sbin\"; \
                 cp '{}' \"$BANGER_ROOT/usr/lib/systemd/systemd\"; \
                 touch \"$BANGER_ROOT/usr/lib/systemd/system/ssh.service\"; \
                 cp '{}' \"$BANGER_ROOT/usr/sbin/sshd\"; \
                 mkdir -p \"$BANGER_ROOT/etc/ssh\"; touch \"$BANGER_ROOT/etc/ssh/ssh_host_rsa_key\"; \
                 echo 'pmstatus:systemd:50.0:Unpacking systemd (amd64)'; \
                 echo 'pmstatus:systemd:100:Installed systemd'; \
                 echo 'Setting up systemd'; \
                 echo 0123456789abcdef > \"$BANGER_ROOT/etc/machine-id\";; esac\n",
                init.display(),
                init.display(),
            ),
        );
    }

    fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_banger-agent"))
            .arg("first-boot")
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("BANGER_ROOT", &self.root)
            .env("BANGER_RESCUE_SHELL", &self.shell)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Ran {
        let out = self.spawn(args).wait_with_output().unwrap();
        ran(out)
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

fn ran(out: std::process::Output) -> Ran {
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut events = Vec::new();
    for line in log.lines() {
        if let Some(e) = FirstBootEvent::parse_console_line(line) {
            events.push(e);
        } else {
            assert!(
                line.starts_with("banger-first-boot: "),
                "unprefixed log line {line:?}\n{log}"
            );
        }
    }
    assert!(
        matches!(events.first(), Some(FirstBootEvent::Started { .. })),
        "{log}"
    );
    Ran {
        ok: out.status.success(),
        log,
        events,
    }
}

fn assert_identity(g: &Guest) {
    assert_eq!(g.read("etc/hostname"), "web-1\n");
    assert!(g.read("etc/hosts").contains("127.0.1.1\tweb-1\n"));
    assert_eq!(
        g.read("etc/resolv.conf"),
        "nameserver 1.1.1.1\nnameserver 9.9.9.9\n"
    );
    // The key with a newline in it was skipped, not split into two lines.
    assert_eq!(g.read("root/.ssh/authorized_keys"), format!("{KEY}\n"));
    assert_eq!(g.mode("root/.ssh"), 0o700);
    assert_eq!(g.mode("root/.ssh/authorized_keys"), 0o600);
}

fn assert_systemd_enabled(g: &Guest) {
    assert_eq!(g.link("etc/systemd/system/dev-vdb.device"), "/dev/null");
    assert!(
        !g.root.join("etc/systemd/system/dev-ttyS0.device").exists(),
        "dev-ttyS0 must stay unmasked for the console login"
    );
    assert_eq!(
        g.link("etc/systemd/system/sysinit.target.wants/banger-agent.service"),
        "/etc/systemd/system/banger-agent.service"
    );
    assert_eq!(
        g.link("etc/systemd/system/multi-user.target.wants/ssh.service"),
        "/usr/lib/systemd/system/ssh.service"
    );
}

#[test]
fn debian_without_init_installs_systemd_and_ssh_with_progress_events() {
    let g = Guest::new("ID=debian\nVERSION_ID=\"12\"\n");
    g.systemd_installer("apt-get");
    let r = g.run(&["--pid1", "quiet"]);
    assert!(r.ok, "{}", r.log);
    let calls = g.calls();
    assert_eq!(calls.len(), 3, "{calls:?}\n{}", r.log);
    assert!(
        calls[0].starts_with("apt-get update --error-on=any -qq"),
        "{calls:?}"
    );
    assert!(
        calls[1].starts_with("apt-get install -y -qq --no-install-recommends -o APT::Status-Fd=1")
    );
    assert!(
        calls[1].ends_with(" systemd-sysv openssh-server"),
        "{calls:?}"
    );
    // The init gets the kernel's leftover arguments, not ours.
    assert_eq!(calls[2], "systemd quiet");
    assert_identity(&g);
    assert_systemd_enabled(&g);
    let phases: Vec<String> = r
        .events
        .iter()
        .map(|e| match e {
            FirstBootEvent::Installing { manager, packages } => {
                format!("installing {manager} {}", packages.join(","))
            }
            FirstBootEvent::Progress {
                step, done, total, ..
            } => format!("{step} {done}/{total}"),
            FirstBootEvent::Installed { packages, .. } => format!("installed {}", packages.len()),
            FirstBootEvent::Handover { init } => format!("handover {init}"),
            other => format!("{other:?}")
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned(),
        })
        .collect();
    assert_eq!(
        phases,
        [
            "Started",
            "installing apt systemd-sysv,openssh-server",
            "update 0/1",
            "update 1/1",
            "unpack 50/100",
            "configure 100/100",
            "installed 2",
            "handover /usr/lib/systemd/systemd",
        ],
        "{}",
        r.log
    );
    // Status lines are events, not log noise; other output is logged.
    assert!(
        !r.log.contains("banger-first-boot: apt-get: pmstatus"),
        "{}",
        r.log
    );
    assert!(
        r.log
            .contains("banger-first-boot: apt-get: Setting up systemd"),
        "{}",
        r.log
    );
}

#[test]
fn distro_families_use_their_package_manager() {
    let cases = [
        ("ID=ubuntu\n", "apt-get", "apt-get install -y -qq"),
        (
            "ID=fedora\n",
            "dnf",
            "dnf install -y -q --setopt=install_weak_deps=False",
        ),
        (
            "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n",
            "dnf",
            "dnf install",
        ),
        ("ID=arch\n", "pacman", "pacman -S --noconfirm --needed"),
        (
            "ID=\"opensuse-tumbleweed\"\nID_LIKE=\"opensuse suse\"\n",
            "zypper",
            "zypper --non-interactive --quiet install --no-recommends",
        ),
        (
            "ID=mydistro\nID_LIKE='debian'\n",
            "apt-get",
            "apt-get install",
        ),
        ("ID=myrhel\nID_LIKE=\"rhel\"\n", "dnf", "dnf install"),
    ];
    for (os_release, manager, install) in cases {
        let g = Guest::new(os_release);
        g.systemd_installer(manager);
        let r = g.run(&["--pid1", "splash"]);
        assert!(r.ok, "{os_release}: {}", r.log);
        let calls = g.calls();
        let (init, pm) = calls.split_last().unwrap();
        assert!(
            pm.last().unwrap().starts_with(install),
            "{os_release}: {calls:?}"
        );
        assert_eq!(init, "systemd splash", "{os_release}");
    }
    // yum when a RHEL image has no dnf.
    let g = Guest::new("ID=centos\n");
    g.systemd_installer("yum");
    let r = g.run(&["--pid1"]);
    assert!(r.ok, "{}", r.log);
    assert!(
        g.calls()[0].starts_with("yum install -y -q"),
        "{:?}",
        g.calls()
    );
}

#[test]
fn alpine_gets_openrc_with_agent_and_sshd_registered() {
    let g = Guest::new("NAME=\"Alpine Linux\"\nID=alpine\n");
    let init = g.root.join("stub-init");
    write_exec(&init, &g.recorder("openrc-init"));
    g.manager(
        "apk",
        &format!(
            "mkdir -p \"$BANGER_ROOT/sbin\" \"$BANGER_ROOT/etc/init.d\"\n\
             cp '{}' \"$BANGER_ROOT/sbin/openrc-init\"\n\
             cp '{}' \"$BANGER_ROOT/sbin/openrc\"\n\
             touch \"$BANGER_ROOT/etc/init.d/sshd\"\n",
            init.display(),
            init.display()
        ),
    );
    let r = g.run(&["--pid1"]);
    assert!(r.ok, "{}", r.log);
    assert_eq!(
        g.calls(),
        [
            "apk add --no-cache --quiet --no-progress openrc openssh",
            "openrc-init "
        ]
    );
    assert_eq!(
        g.link("etc/runlevels/default/banger-agent"),
        "/etc/init.d/banger-agent"
    );
    assert_eq!(g.link("etc/runlevels/default/sshd"), "/etc/init.d/sshd");
    assert_identity(&g);
}

#[test]
fn unknown_distro_with_a_package_manager_fails_with_its_cause() {
    let g = Guest::new("ID=plan9\n");
    g.systemd_installer("apt-get");
    let r = g.run(&["--pid1"]);
    assert!(!r.ok);
    let (_, cause, message, _) = r.failed();
    assert_eq!(cause, FailureCause::UnknownDistribution);
    assert!(message.contains("ID=\"plan9\""), "{message}");
    assert!(r.log.contains("banger-first-boot: FAILED: "), "{}", r.log);
    assert_eq!(g.calls(), ["rescue-shell "], "{}", r.log);
}

#[test]
fn a_known_distro_without_its_package_manager_says_so() {
    let g = Guest::new("ID=debian\n");
    let r = g.run(&["--pid1"]);
    assert!(!r.ok);
    let (_, cause, message, _) = r.failed();
    assert_eq!(cause, FailureCause::NoPackageManager, "{}", r.log);
    assert!(message.contains("apt-get"), "{message}");
}

#[test]
fn dns_failure_in_apt_update_is_reported_as_dns_and_install_never_runs() {
    let g = Guest::new("ID=debian\n");
    g.manager(
        "apt-get",
        "echo \"W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'\" >&2\n\
         echo 'E: Some index files failed to download. They have been ignored, or old ones used instead.' >&2\n\
         exit 100\n",
    );
    let r = g.run(&["--pid1"]);
    assert!(!r.ok);
    let (step, cause, message, excerpt) = r.failed();
    assert_eq!(step, "apt update");
    assert!(message.contains("Temporary failure resolving"), "{message}");
    assert_eq!(cause, FailureCause::Dns);
    assert!(
        excerpt[0].contains("Temporary failure resolving 'deb.debian.org'"),
        "{excerpt:?}"
    );
    assert_eq!(
        g.calls().len(),
        2,
        "update, then the rescue shell: {:?}",
        g.calls()
    );
    assert!(r.log.contains(FailureCause::Dns.hint()), "{}", r.log);
}

#[test]
fn a_full_disk_during_install_is_disk_full() {
    let g = Guest::new("ID=debian\n");
    g.manager(
        "apt-get",
        "case \"$*\" in *install*) echo 'dpkg: error processing archive /var/cache/apt/archives/libc6.deb (--unpack):' \
         ; echo ' cannot copy extracted data for ./usr/lib/x.so: failed to write (No space left on device)'; exit 100;; esac\n",
    );
    let r = g.run(&["--pid1"]);
    let (step, cause, _, _) = r.failed();
    assert_eq!(
        (step.as_str(), cause),
        ("apt install", FailureCause::DiskFull)
    );
}

#[test]
fn image_with_systemd_execs_it_without_installing_and_second_boot_does_nothing_new() {
    let g = Guest::new("ID=debian\n");
    g.systemd_installer("apt-get");
    write_exec(
        &g.root.join("usr/lib/systemd/systemd"),
        &g.recorder("systemd"),
    );
    std::fs::create_dir_all(g.root.join("usr/lib/systemd/system")).unwrap();
    std::fs::write(g.root.join("usr/lib/systemd/system/ssh.service"), "").unwrap();
    write_exec(&g.root.join("sbin/agetty"), "");
    let first = g.run(&["--pid1"]);
    assert!(first.ok, "{}", first.log);
    assert_eq!(g.calls(), ["systemd "]);
    assert_identity(&g);
    assert_systemd_enabled(&g);
    assert!(
        g.read("etc/systemd/system/serial-getty@ttyS0.service")
            .contains("agetty")
    );
    assert!(
        !g.read("etc/systemd/system/serial-getty@ttyS0.service")
            .contains("BindsTo"),
        "the console getty must not wait for dev-ttyS0.device"
    );
    assert!(
        !first
            .events
            .iter()
            .any(|e| matches!(e, FirstBootEvent::Installing { .. }))
    );

    let second = g.run(&["--pid1"]);
    assert!(second.ok, "{}", second.log);
    assert!(
        second.log.contains("identity already applied"),
        "{}",
        second.log
    );
    assert!(
        !second.log.contains("linked"),
        "second boot relinked: {}",
        second.log
    );
    assert_eq!(g.calls(), ["systemd ", "systemd "]);

    // A changed identity is applied again.
    std::fs::write(
        g.root.join("etc/banger/identity.json"),
        identity("").replace("web-1", "web-2"),
    )
    .unwrap();
    let third = g.run(&["--pid1"]);
    assert!(third.ok, "{}", third.log);
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
    let r = g.run(&["--oneshot"]);
    assert!(r.ok, "{}", r.log);
    assert!(
        g.calls().is_empty(),
        "oneshot must not install or exec: {:?}",
        g.calls()
    );
    assert_identity(&g);
    assert!(!g.root.join("etc/systemd/system/dev-vdb.device").exists());
    assert!(g.root.join("var/lib/banger/identity.applied").exists());
}

#[test]
fn hostile_identity_values_stay_data() {
    let g = Guest::new("ID=debian\n");
    let pwned = g.root.join("pwned");
    let evil = format!(
        r#"{{"hostname": "x$(touch {p})`touch {p}`", "ssh_authorized_keys": ["ssh-ed25519 AAAA\\\\n$(touch {p})", "command=\"touch {p}\" {KEY}"], "dns": ["1.1.1.1\nnameserver 6.6.6.6", "'; touch {p}"]}}"#,
        p = pwned.display()
    );
    std::fs::write(g.root.join("etc/banger/identity.json"), evil).unwrap();
    std::fs::write(g.root.join("etc/hostname"), "image\n").unwrap();
    let r = g.run(&["--oneshot"]);
    assert!(r.ok, "{}", r.log);
    assert!(!pwned.exists());
    assert_eq!(g.read("etc/hostname"), "image\n");
    assert!(!g.root.join("root/.ssh/authorized_keys").exists());
    assert!(!g.root.join("etc/resolv.conf").exists());
    assert_eq!(r.log.matches("warning:").count(), 5, "{}", r.log);
    // Not JSON at all: a clear failure, nothing written.
    std::fs::write(
        g.root.join("etc/banger/identity.json"),
        "hostname=$(reboot)",
    )
    .unwrap();
    let r = g.run(&["--oneshot"]);
    assert!(!r.ok);
    assert!(
        r.failed().2.contains("is not a valid identity"),
        "{}",
        r.log
    );
}

#[test]
fn hostile_os_release_is_ignored_not_followed_or_blocked_on() {
    // A FIFO: a plain open would block forever.
    let g = Guest::new("");
    nix::unistd::mkfifo(
        &g.root.join("etc/os-release"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    g.systemd_installer("apt-get");
    let r = g.run(&["--pid1"]);
    assert!(r.log.contains("os-release ignored"), "{}", r.log);
    assert_eq!(r.failed().1, FailureCause::UnknownDistribution);
    // A symlink to the host's os-release resolves inside the root: nothing.
    let g = Guest::new("");
    std::os::unix::fs::symlink("/usr/lib/os-release", g.root.join("etc/os-release")).unwrap();
    g.systemd_installer("apt-get");
    let r = g.run(&["--pid1"]);
    assert_eq!(r.failed().1, FailureCause::UnknownDistribution, "{}", r.log);
}

#[test]
fn bare_image_gets_the_agent_supervised_and_powers_off_on_sigterm() {
    let g = Guest::new("ID=busybox\n");
    write_exec(
        &g.root.join("usr/local/bin/banger-agent"),
        &format!("{}exit 1\n", g.recorder("agent")),
    );
    let child = g.spawn(&["--pid1"]);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // The agent dies at once: it is restarted (at most once a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while g.calls().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "agent not restarted: {:?}",
            g.calls()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let r = ran(child.wait_with_output().unwrap());
    assert!(r.ok, "{}", r.log);
    assert!(
        r.events.contains(&FirstBootEvent::Handover {
            init: "banger-agent".into()
        }),
        "{}",
        r.log
    );
    assert!(
        r.log.contains("SIGTERM: stopping and powering off"),
        "{}",
        r.log
    );
    assert_identity(&g);
    // Without an agent there is nothing to run: a clear failure.
    let g = Guest::new("");
    let r = g.run(&["--pid1"]);
    assert!(
        r.failed()
            .2
            .contains("/usr/local/bin/banger-agent is missing"),
        "{}",
        r.log
    );
}

#[test]
fn preparation_installs_cleans_up_and_restores_the_image_settings() {
    let g = Guest::new("ID=debian\n");
    g.systemd_installer("apt-get");
    std::fs::create_dir_all(g.root.join("etc/apt/sources.list.d")).unwrap();
    std::fs::create_dir_all(g.root.join("var/lib/apt/lists")).unwrap();
    std::fs::write(g.root.join("var/lib/apt/lists/x_InRelease"), "x").unwrap();
    let sources = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n";
    std::fs::write(
        g.root.join("etc/apt/sources.list.d/debian.sources"),
        sources,
    )
    .unwrap();
    // The stub checks, while it runs, that the settings are in place.
    let during = g.root.join("during");
    let check = format!(
        "cat \"$BANGER_ROOT/etc/apt/sources.list.d/debian.sources\" \"$BANGER_ROOT/etc/apt/apt.conf.d/80banger-proxy\" \"$BANGER_ROOT/etc/resolv.conf\" > '{}'; env | grep -i _proxy >> '{}'\n",
        during.display(),
        during.display()
    );
    let apt = std::fs::read_to_string(g.root.join("usr/bin/apt-get")).unwrap();
    write_exec(&g.root.join("usr/bin/apt-get"), &format!("{apt}{check}"));
    std::fs::write(
        g.root.join("etc/banger/identity.json"),
        identity(
            r#",
  "purpose": "prepare",
  "network": {
    "http_proxy": "http://proxy.lan:3128",
    "mirrors": {"debian": {"http://deb.debian.org/debian": "http://172.30.0.1:8080/debian"}}
  }"#,
        ),
    )
    .unwrap();
    let r = g.run(&["--pid1"]);
    assert!(r.ok, "{}", r.log);
    let calls = g.calls();
    assert!(calls[0].starts_with("apt-get update"), "{calls:?}");
    assert!(
        calls[1].ends_with("systemd-sysv openssh-server"),
        "{calls:?}"
    );
    assert_eq!(calls[2], "apt-get clean");
    assert_eq!(calls.len(), 3, "no init exec'd: {calls:?}");
    let during = std::fs::read_to_string(&during).unwrap();
    assert!(
        during.contains("URIs: http://172.30.0.1:8080/debian\n"),
        "{during}"
    );
    assert!(
        during.contains("Acquire::http::Proxy \"http://proxy.lan:3128\";"),
        "{during}"
    );
    assert!(during.contains("nameserver 1.1.1.1"), "{during}");
    assert!(
        during.contains("http_proxy=http://proxy.lan:3128"),
        "{during}"
    );
    // Afterwards: the image's own settings, no per-VM state.
    assert_eq!(g.read("etc/apt/sources.list.d/debian.sources"), sources);
    assert!(!g.root.join("etc/apt/apt.conf.d/80banger-proxy").exists());
    assert!(!g.root.join("etc/resolv.conf").exists());
    assert!(!g.root.join("etc/hostname").exists());
    assert!(!g.root.join("root/.ssh/authorized_keys").exists());
    assert!(!g.root.join("var/lib/banger/identity.applied").exists());
    assert_eq!(g.read("etc/machine-id"), "");
    assert!(!g.root.join("etc/ssh/ssh_host_rsa_key").exists());
    assert!(
        std::fs::read_dir(g.root.join("var/lib/apt/lists"))
            .unwrap()
            .next()
            .is_none()
    );
    assert_systemd_enabled(&g);
    assert_eq!(
        r.events.last(),
        Some(&FirstBootEvent::Prepared {
            packages: vec!["systemd-sysv".into(), "openssh-server".into()]
        }),
        "{}",
        r.log
    );
}

#[test]
fn usage_without_a_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_banger-agent"))
        .arg("first-boot")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    banger_test_support::require_program("shellcheck", "shellcheck");
    let guest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(guest.join("openrc/banger-agent"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck openrc/banger-agent:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let build = guest.join("../scripts/build-guest.sh");
    let out = Command::new("shellcheck").arg(&build).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
