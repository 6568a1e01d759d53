//! The privilege split is real, not only written down: `deploy/install.sh
//! --root` applied to a debootstrapped Debian bookworm (minbase + systemd,
//! cached under `target/test-cache/bookworm-systemd` like the guest agent's nspawn
//! tests, plus the host prerequisites `ca-certificates` and `nftables`),
//! booted with a real systemd by `systemd-nspawn --boot`
//! (`--private-network`: netd's bridge lives in the container's own network
//! namespace). From inside the container (`nsenter` into its PID 1) the test
//! checks that the four units are active, that each service runs as its user
//! with `CapEff` and `CapBnd` in `/proc/PID/status` exactly the designed
//! set, that netd's CAP_NET_ADMIN sufficed for its bridge and nftables
//! table, that the sockets are `0660 root:banger`, and that the CLI is
//! served for a member of group `banger` and refused (`Permission denied`)
//! for anyone else, by the directory and by the socket itself.

use banger_test_support::fixtures::repo_root as repo;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Each service with the capabilities DESIGN §2 gives it (effective and
/// bounding set alike) and its user.
const SERVICES: [(&str, u64, &str); 4] = [
    ("kernelcat", 0, "banger"),
    ("imagestore", 0, "banger"),
    ("netd", 1 << CAP_NET_ADMIN, "banger-net"),
    ("vmm", 0, "banger"),
];

const CAP_NET_ADMIN: u32 = 12;

/// The directory holding `banger` and the four service binaries.
fn bin_dir() -> PathBuf {
    banger_test_support::cli::bin_dir(env!("CARGO_BIN_EXE_banger"), false)
}

/// Bookworm minbase with systemd, debootstrapped on first use into
/// `target/test-cache/bookworm-systemd` (the same cache and recipe as
/// guest/agent/tests/priv_nspawn.rs).
fn bookworm() -> PathBuf {
    banger_test_support::fixtures::debootstrap(
        "bookworm-systemd",
        Some("systemd,systemd-sysv,dbus"),
    )
}

/// The bookworm root plus what a banger host needs from Debian besides
/// systemd (deploy/README.md): `ca-certificates` (kernelcat's and
/// imagestore's HTTPS roots), `nftables` (netd runs `nft`) and e2fsprogs
/// 1.47.1 or newer with libarchive13 from bookworm-backports (imagestore's
/// `mke2fs -d -`). Installed once with apt in a chroot (the Debian mirror
/// is the allowed registry) and cached as
/// `target/test-cache/bookworm-banger-host-2`.
fn with_prerequisites() -> PathBuf {
    let cache = repo().join("target/test-cache");
    let rootfs = cache.join("bookworm-banger-host-2");
    if rootfs.join("usr/sbin/nft").exists() {
        return rootfs;
    }
    let base = bookworm();
    let partial = cache.join("bookworm-banger-host-2.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&base)
        .arg(&partial)
        .status()
        .unwrap();
    assert!(status.success(), "copying {} failed", base.display());
    let _ = std::fs::copy("/etc/resolv.conf", partial.join("etc/resolv.conf"));
    let status = Command::new("nice")
        .args(["-n", "10", "chroot"])
        .arg(&partial)
        .args([
            "sh",
            "-c",
            "printf 'Types: deb\\nURIs: http://deb.debian.org/debian\\nSuites: bookworm-backports\\n\
             Components: main\\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n' \
             >/etc/apt/sources.list.d/backports.sources && \
             apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -q -y \
             --no-install-recommends ca-certificates nftables libarchive13 \
             e2fsprogs/bookworm-backports libext2fs2/bookworm-backports && apt-get clean",
        ])
        .status()
        .expect("run apt-get in a chroot");
    assert!(
        status.success(),
        "apt-get install ca-certificates nftables e2fsprogs failed: {status}"
    );
    std::fs::rename(&partial, &rootfs).unwrap();
    rootfs
}

/// A booted container; powered off (then killed) on drop, so a failing
/// assertion still cleans up.
struct Container {
    nspawn: Child,
    leader: u32,
    console: PathBuf,
}

impl Container {
    fn boot(root: &Path, machine: &str, console: &Path) -> Container {
        let log = std::fs::File::create(console).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .arg("--quiet")
            .arg("--boot")
            .arg("-D")
            .arg(root)
            .arg(format!("--machine={machine}"))
            .args([
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=pipe",
                // netd's unit allows /dev/net/tun; the container has none by default.
                "--bind=/dev/net/tun",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start systemd-nspawn");
        // Owned from here on: a panic below still powers it off.
        let mut container = Container {
            nspawn,
            leader: 0,
            console: console.to_path_buf(),
        };
        // The container's PID 1 is nspawn's child once it runs systemd.
        for _ in 0..600 {
            if let Some(status) = container.nspawn.try_wait().unwrap() {
                panic!(
                    "systemd-nspawn exited ({status}) while booting\n{}",
                    container.console()
                );
            }
            let children = std::fs::read_to_string(format!(
                "/proc/{0}/task/{0}/children",
                container.nspawn.id()
            ))
            .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "systemd")
            }) {
                container.leader = pid.parse().unwrap();
                return container;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no systemd PID 1 in the container\n{}", container.console());
    }

    /// Runs `argv` inside every namespace of the container.
    fn exec(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "--"])
            .args(argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .output()
            .expect("run nsenter")
    }

    /// `sh -c script` inside the container: its trimmed stdout.
    fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `/usr/local/bin/banger ARGS` as `user` (sockets from /run/banger):
    /// whether it succeeded, and its stdout and stderr.
    fn as_user(&self, user: &str, args: &[&str]) -> (bool, String) {
        let mut argv = vec!["runuser", "-u", user, "--", "/usr/local/bin/banger"];
        argv.extend_from_slice(args);
        let out = self.exec(&argv);
        let said = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    }

    fn journal(&self, unit: &str) -> String {
        self.sh(&format!(
            "systemctl status --no-pager {unit} 2>&1; journalctl --no-pager -u {unit} 2>&1 | tail -n 40"
        ))
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.leader != 0 {
            let _ = self.exec(&["systemctl", "poweroff", "--no-block"]);
        }
        for _ in 0..300 {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The capability mask on line `field` (`CapEff`, `CapBnd`) of a
/// `/proc/PID/status`.
fn caps(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// The real uid on the `Uid:` line of a `/proc/PID/status`.
fn uid(status: &str) -> Option<String> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next().map(str::to_owned)
}

#[test]
fn installed_units_run_with_exactly_the_designed_privileges() {
    banger_test_support::gate!(Priv, ROOT, NSPAWN);
    banger_test_support::require_program("systemd-nspawn", "systemd-container");
    banger_test_support::require_program("nsenter", "util-linux");
    banger_test_support::require_program("systemd-sysusers", "systemd");
    let cached = with_prerequisites();
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // A private copy: the cached rootfs stays pristine.
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&cached)
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success(), "copying the cached rootfs failed");

    let out = Command::new(repo().join("deploy/install.sh"))
        .arg("--root")
        .arg(&root)
        .arg("--bin-dir")
        .arg(bin_dir())
        .output()
        .expect("run deploy/install.sh");
    assert!(
        out.status.success(),
        "install.sh --root failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, _, _) in SERVICES {
        for kind in ["socket", "service"] {
            let unit = format!("banger-{name}.{kind}");
            let wants = if kind == "socket" {
                "sockets.target.wants"
            } else {
                "multi-user.target.wants"
            };
            assert!(
                root.join("etc/systemd/system")
                    .join(wants)
                    .join(&unit)
                    .symlink_metadata()
                    .is_ok(),
                "install.sh did not enable {unit}"
            );
        }
    }

    let machine = format!("banger-inst-{}", std::process::id());
    let container = Container::boot(&root, &machine, &dir.path().join("console.log"));
    // Until systemd's bus is up, systemctl cannot even ask.
    let mut state = String::new();
    for _ in 0..600 {
        state = container.sh("systemctl is-system-running --wait 2>/dev/null");
        if ["running", "degraded"].contains(&state.as_str()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ["running", "degraded"].contains(&state.as_str()),
        "the container never finished booting ({state:?})\n{}",
        container.console()
    );
    eprintln!(
        "TIMING: copy root + install.sh + boot → is-system-running ({state}): {:?}",
        started.elapsed()
    );

    for (name, want, user) in SERVICES {
        let unit = format!("banger-{name}.service");
        let active = container.sh(&format!("systemctl is-active {unit}"));
        assert_eq!(
            active,
            "active",
            "{unit} is not active\n{}\n--- console ---\n{}",
            container.journal(&unit),
            container.console()
        );
        let pid = container.sh(&format!("systemctl show -p MainPID --value {unit}"));
        let status = container.sh(&format!("cat /proc/{pid}/status"));
        for field in ["CapEff", "CapBnd"] {
            let have = caps(&status, field)
                .unwrap_or_else(|| panic!("no {field} for {unit} (MainPID {pid}):\n{status}"));
            assert_eq!(
                have, want,
                "{unit} runs with {field} {have:#x}, designed {want:#x}\n{status}"
            );
        }
        assert_eq!(
            uid(&status),
            Some(container.sh(&format!("id -u {user}"))),
            "{unit} does not run as {user}\n{status}"
        );
        let sock = format!("/run/banger/{name}.sock");
        assert_eq!(
            container.sh(&format!("stat -c '%a %U:%G %F' {sock}")),
            "660 root:banger socket",
            "{sock} has the wrong mode or owner"
        );
    }

    // CAP_NET_ADMIN is enough for netd: its bridge (administratively up)
    // and its nftables table exist in the container's network namespace.
    let flags =
        container.sh("test -d /sys/class/net/banger0/bridge && cat /sys/class/net/banger0/flags");
    assert!(
        u32::from_str_radix(flags.trim_start_matches("0x"), 16).is_ok_and(|f| f & 1 == 1),
        "netd did not create and bring up its bridge banger0 (flags {flags:?})\n{}",
        container.journal("banger-netd.service")
    );
    let tables = container.sh("nft list tables");
    assert!(
        tables.lines().any(|l| l.trim() == "table inet banger"),
        "netd did not create table inet banger: {tables:?}\n{}",
        container.journal("banger-netd.service")
    );

    // A member of group banger is served; anyone else is refused.
    let add = container.exec(&["useradd", "--create-home", "-G", "banger", "member"]);
    assert!(add.status.success(), "useradd member: {add:?}");
    let add = container.exec(&["useradd", "--create-home", "outsider"]);
    assert!(add.status.success(), "useradd outsider: {add:?}");

    let served = container.as_user("member", &["status"]);
    assert!(
        served.0,
        "banger status as a member of banger failed:\n{}",
        served.1
    );
    let served = container.as_user("member", &["kernel", "list"]);
    assert!(
        served.0,
        "banger kernel list as a member failed:\n{}",
        served.1
    );

    let refused = container.as_user("outsider", &["status"]);
    assert!(
        !refused.0 && refused.1.matches(" down ").count() == SERVICES.len(),
        "banger status as an outsider should find every service down:\n{}",
        refused.1
    );
    let refused = container.as_user("outsider", &["kernel", "list"]);
    assert!(
        !refused.0 && refused.1.to_lowercase().contains("permission denied"),
        "banger kernel list as an outsider should be refused with permission denied:\n{}",
        refused.1
    );
    eprintln!("outsider refused: {}", refused.1.trim());
    // /run/banger (0750 root:banger) already keeps outsiders out; with the
    // directory opened up, the sockets' own 0660 still refuses them.
    container.sh("chmod 0751 /run/banger");
    let refused = container.as_user("outsider", &["kernel", "list"]);
    container.sh("chmod 0750 /run/banger");
    assert!(
        !refused.0 && refused.1.to_lowercase().contains("permission denied"),
        "with /run/banger searchable, the socket itself should refuse an outsider:\n{}",
        refused.1
    );

    // Under the real unit (no capability, RestrictSUIDSGID=, PrivateDevices=)
    // an image with setuid files, a device node and a file capability is
    // built: they exist only inside the ext4 file.
    let archive = root.join("srv/suid.tar");
    suid_archive(&archive);
    let imported = container.as_user("member", &["image", "import", "suid", "/srv/suid.tar"]);
    assert!(
        imported.0,
        "image import under the unit failed:\n{}\n{}",
        imported.1,
        container.journal("banger-imagestore.service")
    );
    let ext4 = "/var/lib/banger/images/suid/rootfs.ext4";
    let stat = |p: &str| container.sh(&format!("debugfs -R 'stat {p}' {ext4} 2>/dev/null"));
    let su = stat("/bin/su");
    assert!(
        su.contains("Mode:  04755") && su.contains("security.capability"),
        "{su}"
    );
    assert!(stat("/dev/null").contains("Type: character special"));
    assert_eq!(
        container.sh(
            "find /var/lib/banger/images /var/lib/banger/blobs -perm /6000 -o -type c -o -type b"
        ),
        "",
        "setuid files or devices on the host"
    );
    eprintln!("TIMING: total {:?}", started.elapsed());
}

/// A `docker save` archive of one layer: a setuid-root file with a file
/// capability and a device node.
fn suid_archive(out: &Path) {
    let script = r#"
import hashlib, io, json, sys, tarfile
def add(t, name, data=b"", **kw):
    ti = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(ti, k, v)
    ti.size = len(data)
    t.addfile(ti, io.BytesIO(data) if data else None)
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
    add(t, "bin", type=tarfile.DIRTYPE, mode=0o755)
    cap = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12
    ti = tarfile.TarInfo("bin/su"); ti.mode = 0o4755; ti.size = 2
    ti.pax_headers = {"SCHILY.xattr.security.capability": cap}
    t.addfile(ti, io.BytesIO(b"su"))
    add(t, "dev", type=tarfile.DIRTYPE, mode=0o755)
    add(t, "dev/null", type=tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
layer = layer.getvalue()
config = json.dumps({"architecture": "amd64", "os": "linux",
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
with tarfile.open(sys.argv[1], "w") as t:
    add(t, "manifest.json", json.dumps([{"Config": "config.json", "Layers": ["l/layer.tar"]}]).encode(), mode=0o644)
    add(t, "config.json", config, mode=0o644)
    add(t, "l/layer.tar", layer, mode=0o644)
"#;
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(out)
        .status()
        .expect("run python3");
    assert!(status.success(), "building the test archive failed");
    let status = Command::new("chmod").arg("0644").arg(out).status().unwrap();
    assert!(status.success());
}
