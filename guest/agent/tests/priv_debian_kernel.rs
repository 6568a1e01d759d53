//! The agent's initramfs `init` mode, booting Debian's real signed cloud
//! kernel under QEMU TCG `-M microvm` — the kernel whose virtio-mmio,
//! virtio-blk, virtio-net and vsock drivers are modules and which has no
//! IP_PNP, so the init must load them and configure eth0 itself.
//!
//! Scaffolding (not the product's code path, which is kernelcat's): the
//! host's apt downloads the `.deb` the `linux-image-6.12-cloud-amd64` meta
//! package depends on (cached under target/test-cache/debian-kernel/),
//! `dpkg-deb -x` unpacks it, the ELF vmlinux is cut out of the bzImage the
//! way the kernel's `scripts/extract-vmlinux` does (find a compression magic,
//! decompress from there with the CLI, keep what is an ELF), and the
//! initramfs is laid out as INITRAMFS-CONTRACT says and packed with `cpio`.
//!
//! Each VM runs in a network namespace of its own; its NIC is on a QEMU hub
//! with nothing else on it, so the guest has an eth0 and no route anywhere.

mod common;
#[path = "common/guest_bundle.rs"]
mod guest_bundle;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use banger_proto::agent::v1::ShutdownRequest;
use banger_proto::agent::v1::agent_client::AgentClient;
use banger_proto::rpc::hybrid_vsock::{self, AGENT_PORT};

const META_PACKAGE: &str = "linux-image-6.12-cloud-amd64";
/// Drivers a banger microVM needs that this kernel builds as modules.
const NEEDED: [&str; 4] = [
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
];
const MARKER: &str = "ROOT-INIT-MARKER";
const IP_ARG: &str = "ip=172.30.0.5::172.30.0.1:255.255.255.0:initbox:eth0:off:10.0.0.53";

use banger_test_support::qemu::Reaped;

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-cache/debian-kernel");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The unpacked Debian kernel package: its vmlinux (ELF), module tree
/// and version.
struct DebianKernel {
    _dir: tempfile::TempDir,
    root: PathBuf,
    version: String,
    vmlinux: PathBuf,
}

/// Downloads (once, cached): call it outside any network namespace.
fn debian_kernel() -> &'static DebianKernel {
    static KERNEL: OnceLock<DebianKernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        for (p, pkg) in [
            ("apt-get", "apt"),
            ("dpkg-deb", "dpkg"),
            ("zstd", "zstd"),
            ("xz", "xz-utils"),
            ("cpio", "cpio"),
            ("mkfs.ext4", "e2fsprogs"),
        ] {
            banger_test_support::require_program(p, pkg);
        }
        // The exact package the meta package points at today.
        let depends = String::from_utf8(run(
            Command::new("apt-cache").args(["depends", META_PACKAGE])
        ))
        .unwrap();
        let package = depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-6.12.") && p.ends_with("-cloud-amd64"))
            .unwrap_or_else(|| {
                panic!(
                    "`apt-cache depends {META_PACKAGE}` names no kernel package (is \
                     bookworm-security in the apt sources, and `apt-get update` done?):\n{depends}"
                )
            })
            .to_owned();
        let cache = cache_dir();
        let find_deb = || {
            std::fs::read_dir(&cache)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                    })
                })
        };
        let deb = find_deb().unwrap_or_else(|| {
            run(Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&cache));
            find_deb().expect("apt-get download left no .deb")
        });
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pkg");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        let version = package
            .strip_prefix("linux-image-")
            .expect("linux-image-")
            .to_owned();
        let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
        let vmlinux = dir.path().join("vmlinux");
        extract_vmlinux(&vmlinuz, &vmlinux);
        eprintln!(
            "Debian kernel: {package} from {} ({} MB vmlinux)",
            deb.display(),
            std::fs::metadata(&vmlinux).unwrap().len() >> 20
        );
        DebianKernel {
            _dir: dir,
            root,
            version,
            vmlinux,
        }
    })
}

/// `scripts/extract-vmlinux`: try each compression magic at each offset it
/// occurs at; the first decompression that yields an ELF is the kernel.
fn extract_vmlinux(bzimage: &Path, out: &Path) {
    let data = std::fs::read(bzimage).unwrap();
    let formats: [(&[u8], &str); 3] = [
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (&[0x1f, 0x8b, 0x08], "gzip"),
    ];
    for (magic, tool) in formats {
        let offsets = data
            .windows(magic.len())
            .enumerate()
            .filter(|(_, w)| *w == magic)
            .map(|(i, _)| i);
        for offset in offsets {
            let mut child = Command::new(tool)
                .arg("-dc")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let tail = data[offset..].to_vec();
            let feeder = std::thread::spawn(move || {
                let _ = stdin.write_all(&tail);
            });
            // Trailing data after the stream makes the tool exit non-zero,
            // as in extract-vmlinux: judge by what came out.
            let output = child.wait_with_output().unwrap();
            let _ = feeder.join();
            if output.stdout.starts_with(b"\x7fELF") {
                std::fs::write(out, &output.stdout).unwrap();
                return;
            }
        }
    }
    panic!("no ELF vmlinux found in {}", bzimage.display());
}

/// `depends=` of a module, read from its `.modinfo` strings.
fn module_depends(ko: &Path) -> Vec<String> {
    let raw = run(Command::new("xz").arg("-dc").arg(ko));
    raw.split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The generated initramfs (gzip'd newc, per the contract): `/init` = the
/// static agent, the needed modules in dependency order.
fn initramfs(kernel: &DebianKernel, work: &Path) -> PathBuf {
    let config =
        std::fs::read_to_string(kernel.root.join(format!("boot/config-{}", kernel.version)))
            .unwrap();
    assert!(
        config.lines().any(|l| l == "# CONFIG_IP_PNP is not set"),
        "this test is about a kernel without IP_PNP"
    );
    let modroot = kernel.root.join(format!("lib/modules/{}", kernel.version));
    let mut by_name = BTreeMap::new();
    for entry in walkdir(&modroot) {
        let name = entry.file_name().unwrap().to_str().unwrap();
        if let Some(stem) = name.strip_suffix(".ko.xz") {
            by_name.insert(stem.replace('-', "_"), entry.clone());
        }
    }
    let mut order: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        by_name: &BTreeMap<String, PathBuf>,
        order: &mut Vec<String>,
        depth: usize,
    ) {
        assert!(depth < 32, "module dependency cycle at {name}");
        if order.iter().any(|o| o == name) {
            return;
        }
        let ko = by_name
            .get(name)
            .unwrap_or_else(|| panic!("module {name} not in the package"));
        for dep in module_depends(ko) {
            visit(&dep, by_name, order, depth + 1);
        }
        order.push(name.to_owned());
    }
    for m in NEEDED {
        visit(m, &by_name, &mut order, 0);
    }
    eprintln!("modules, in load order: {order:?}");

    let tree = work.join("initramfs");
    for d in ["dev", "proc", "sys", "newroot", "run", "tmp", "etc/banger"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    let agent = guest_bundle::bundle().join("banger-agent");
    std::fs::copy(&agent, tree.join("init")).unwrap();
    let mut list = String::from("# written by the test, dependencies first\n");
    for name in &order {
        let src = &by_name[name];
        let rel = src.strip_prefix(&kernel.root).unwrap();
        let dst = tree.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, &dst).unwrap();
        list.push_str(&format!("/{}\n", rel.display()));
    }
    std::fs::write(tree.join("etc/banger/modules"), list).unwrap();
    std::fs::write(
        tree.join("etc/banger/initramfs.json"),
        format!(
            "{{\"kernel_version\": \"{}\", \"ip_pnp\": false}}",
            kernel.version
        ),
    )
    .unwrap();
    cpio_gz(&tree, &work.join("initrd.gz"))
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `find . | sort | cpio -o -H newc -R 0:0 | gzip -n`.
fn cpio_gz(tree: &Path, out: &Path) -> PathBuf {
    let status = Command::new("sh")
        .arg("-c")
        .arg("set -e; cd \"$1\"; find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -n -1 > \"$2\"")
        .arg("sh")
        .arg(tree)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "cpio failed");
    out.to_owned()
}

/// A small ext4 root: static busybox, `sbin/init` = `init`, plus `extra`
/// files (path, source, mode).
fn root_disk(work: &Path, init: &str, extra: &[(&str, &Path)]) -> PathBuf {
    banger_test_support::require_program("busybox", "busybox-static");
    let tree = work.join("root");
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "run", "etc"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", tree.join("bin/busybox")).unwrap();
    for (path, src) in extra {
        std::fs::copy(src, tree.join(path)).unwrap();
    }
    std::fs::write(tree.join("sbin/init"), init).unwrap();
    run(Command::new("chmod").arg("755").arg(tree.join("sbin/init")));
    let disk = work.join("root.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&disk)
        .arg("96M"));
    disk
}

use banger_test_support::qemu::tsc_khz;

/// QEMU TCG microvm with a serial console into `console`; `extra` adds
/// devices.
fn qemu(kernel: &Path, initrd: &Path, append: &str, console: &Path, extra: &[String]) -> Reaped {
    banger_test_support::require_program("qemu-system-x86_64", "qemu-system-x86");
    Reaped(
        Command::new("qemu-system-x86_64")
            .args(banger_test_support::qemu::microvm_args(512))
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 reboot=k panic=-1 tsc_early_khz={} {append}",
                tsc_khz()
            ))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(console).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64"),
    )
}

fn disk_and_nic(disk: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("id=root,file={},format=raw,if=none", disk.display()),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
        // A hub with only the guest on it: an eth0 with nowhere to go.
        "-netdev".into(),
        "hubport,id=n0,hubid=0".into(),
        "-device".into(),
        "virtio-net-device,netdev=n0".into(),
    ]
}

/// Waits for QEMU to exit (the guest powers off), returning the console
/// text and the time from `start` to `marker` appearing in it.
fn wait_marker(
    qemu: &mut Reaped,
    console: &Path,
    start: Instant,
    marker: &str,
) -> (String, Duration) {
    let deadline = start + Duration::from_secs(240);
    let mut seen = None;
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if seen.is_none() && text.contains(marker) {
            seen = Some(start.elapsed());
        }
        if let Some(status) = qemu.0.try_wait().unwrap() {
            let text = std::fs::read_to_string(console).unwrap_or_default();
            let at = seen.unwrap_or_else(|| {
                panic!("QEMU exited ({status}) before {marker}\n--- console ---\n{text}")
            });
            assert!(
                status.success(),
                "QEMU exit {status}\n--- console ---\n{text}"
            );
            return (text, at);
        }
        assert!(
            Instant::now() < deadline,
            "no poweroff within 240 s\n--- console ---\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The root's init: what the host needs from the initramfs, checked from
/// inside the switched root.
const ROOT_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
echo "root-init: pid $$ argv [$*]"
ip -4 addr show eth0 | grep -q "inet 172.30.0.5/24 brd 172.30.0.255" && echo "root-init: eth0 address ok"
ip link show eth0 | grep -q "state UP\|,UP" && echo "root-init: eth0 up ok"
ip link show lo | grep -q ",UP" && echo "root-init: lo up ok"
ip route | grep -q "^default via 172.30.0.1 dev eth0" && echo "root-init: default route ok"
grep -q "^/dev/vda / ext4 rw" /proc/mounts && echo "root-init: /dev/vda on / rw ok"
[ "$(hostname)" = initbox ] && echo "root-init: hostname ok"
[ -e /init ] || [ -e /newroot ] || echo "root-init: initramfs gone ok"
echo "ROOT-INIT-MARKER"
poweroff -f
"#;

/// The fixture kernel's comparison boot (everything built in): a busybox
/// initramfs printing the same marker, as tests/priv_qemu.rs boots it.
const FIXTURE_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "ROOT-INIT-MARKER"
/bin/busybox poweroff -f
"#;

#[test]
fn debian_kernel_boots_through_the_agent_init_to_the_real_root() {
    banger_test_support::gate!(Priv, ROOT, QEMU);
    // Downloads and builds happen out here; the namespace has no route out.
    let kernel = debian_kernel();
    let _ = guest_bundle::bundle();
    let _ = banger_test_support::fixtures::kernel_vmlinux();
    banger_test_support::netns::in_new_netns(|| {
        let work = tempfile::tempdir().unwrap();
        let initrd = initramfs(kernel, work.path());
        let disk = root_disk(work.path(), ROOT_INIT, &[]);
        let console = work.path().join("console.log");

        // The fixture first, same run: the baseline of the ratio.
        let fixture = work.path().join("fixture");
        for d in ["bin", "proc", "dev"] {
            std::fs::create_dir_all(fixture.join(d)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", fixture.join("bin/busybox")).unwrap();
        std::fs::write(fixture.join("init"), FIXTURE_INIT).unwrap();
        run(Command::new("chmod").arg("755").arg(fixture.join("init")));
        let fixture_initrd = cpio_gz(&fixture, &work.path().join("fixture.gz"));
        let fixture_console = work.path().join("fixture.log");
        let start = Instant::now();
        let mut vm = qemu(
            &banger_test_support::fixtures::kernel_vmlinux(),
            &fixture_initrd,
            "",
            &fixture_console,
            &[],
        );
        let (_, fixture_at) = wait_marker(&mut vm, &fixture_console, start, MARKER);
        drop(vm);

        let start = Instant::now();
        let mut vm = qemu(
            &kernel.vmlinux,
            &initrd,
            &format!("root=/dev/vda rw {IP_ARG} init=/sbin/init -- hello world"),
            &console,
            &disk_and_nic(&disk),
        );
        let (text, debian_at) = wait_marker(&mut vm, &console, start, MARKER);
        for want in [
            "banger-init: started",
            "banger-init: loading /lib/modules/",
            "banger-init: configuring eth0 172.30.0.5/24",
            "banger-init: switching to the new root",
            "root-init: pid 1 argv [hello world]",
            "root-init: eth0 address ok",
            "root-init: eth0 up ok",
            "root-init: lo up ok",
            "root-init: default route ok",
            "root-init: /dev/vda on / rw ok",
            "root-init: hostname ok",
            "root-init: initramfs gone ok",
        ] {
            assert!(text.contains(want), "no {want:?} in the console:\n{text}");
        }
        assert!(!text.contains("FAILED"), "{text}");
        eprintln!(
            "TIMING: QEMU start → root init marker: Debian {} + agent initramfs {:.2} s, \
             fixture kernel + busybox initramfs {:.2} s, ratio {:.2}",
            kernel.version,
            debian_at.as_secs_f64(),
            fixture_at.as_secs_f64(),
            debian_at.as_secs_f64() / fixture_at.as_secs_f64()
        );
    });
}

#[test]
fn a_module_that_fails_to_load_is_named_on_the_console() {
    banger_test_support::gate!(Priv, ROOT, QEMU);
    let kernel = debian_kernel();
    let _ = guest_bundle::bundle();
    banger_test_support::netns::in_new_netns(|| {
        let work = tempfile::tempdir().unwrap();
        let initrd_dir = work.path();
        let _ = initramfs(kernel, initrd_dir);
        // Corrupt one module: the kernel refuses it, the init says which.
        let tree = initrd_dir.join("initramfs");
        let list = std::fs::read_to_string(tree.join("etc/banger/modules")).unwrap();
        let victim = list
            .lines()
            .find(|l| l.ends_with("virtio_blk.ko.xz"))
            .unwrap()
            .to_owned();
        std::fs::write(tree.join(victim.trim_start_matches('/')), b"not a module").unwrap();
        let initrd = cpio_gz(&tree, &initrd_dir.join("bad.gz"));
        let console = work.path().join("console.log");
        let start = Instant::now();
        let mut vm = qemu(&kernel.vmlinux, &initrd, "root=/dev/vda rw", &console, &[]);
        // PID 1 exits → kernel panic → panic=-1 resets → -no-reboot exits.
        let want = format!("banger-init: FAILED loading {victim}: finit_module: ");
        let (text, at) = wait_marker(&mut vm, &console, start, &want);
        assert!(text.contains("Attempted to kill init"), "{text}");
        eprintln!(
            "TIMING: bad module → FAILED line on the console after {:.2} s",
            at.as_secs_f64()
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_on_the_debian_kernel_answers_over_vsock() {
    banger_test_support::gate!(Priv, ROOT, QEMU);
    assert!(
        Command::new("vhost-device-vsock")
            .arg("--version")
            .output()
            .is_ok(),
        "this test needs `vhost-device-vsock` (scripts/setup.sh --deps, scripts/deps/guest.cargo)"
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_owned();
    let (qemu_vm, _vhost, uds, console) = tokio::task::spawn_blocking(move || {
        let kernel = debian_kernel();
        let _ = guest_bundle::bundle();
        banger_test_support::netns::in_new_netns(move || {
            let initrd = initramfs(kernel, &dir);
            let agent = guest_bundle::bundle().join("banger-agent");
            let disk = root_disk(
                &dir,
                "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
                 mount -t tmpfs tmpfs /tmp\necho root-init: starting the agent\n\
                 /bin/banger-agent\necho root-init: agent exited $?\npoweroff -f\n",
                &[("bin/banger-agent", &agent)],
            );
            let vhost_sock = dir.join("vhost-user.sock");
            let uds = dir.join("vsock.sock");
            let console = dir.join("console.log");
            let vhost = banger_test_support::qemu::vhost_vsock(&vhost_sock, &uds);
            let mut extra = disk_and_nic(&disk);
            extra.extend([
                "-chardev".into(),
                format!("socket,id=vsock,path={}", vhost_sock.display()),
                "-device".into(),
                "vhost-user-vsock-device,chardev=vsock".into(),
            ]);
            let vm = qemu(
                &kernel.vmlinux,
                &initrd,
                &format!("root=/dev/vda rw {IP_ARG} init=/sbin/init"),
                &console,
                &extra,
            );
            (vm, vhost, uds, console)
        })
    })
    .await
    .unwrap();
    let mut qemu_vm = qemu_vm;
    let console_log = || std::fs::read_to_string(&console).unwrap_or_default();
    let booted = Instant::now();
    let pong = match hybrid_vsock::wait_ready(&uds, AGENT_PORT, Duration::from_secs(240)).await {
        Ok(p) => p,
        Err(e) => panic!("{e}\n--- console ---\n{}", console_log()),
    };
    eprintln!(
        "TIMING: Debian kernel: agent answered Ping over vsock {:?} after QEMU start (guest uptime {:.2} s)",
        booted.elapsed(),
        pong.uptime_seconds
    );
    let channel = hybrid_vsock::connect(&uds, AGENT_PORT, Duration::from_secs(10))
        .await
        .unwrap();
    common::ping(channel.clone()).await;
    let facts = common::facts(channel.clone()).await;
    assert_eq!(facts.kernel_release, debian_kernel().version, "{facts:?}");
    let ran = common::exec(
        channel.clone(),
        common::sh("ip -4 addr show eth0; grep ' / ' /proc/mounts"),
        vec![],
    )
    .await;
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(out.contains("inet 172.30.0.5/24"), "{out}");
    assert!(out.contains("/dev/vda / ext4 rw"), "{out}");
    AgentClient::new(channel)
        .shutdown(ShutdownRequest { reboot: false })
        .await
        .unwrap();
    for _ in 0..1200 {
        if qemu_vm.0.try_wait().unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("QEMU still runs after Shutdown\n{}", console_log());
}
