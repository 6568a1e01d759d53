//! The end-to-end tier: the whole product, for real, inside a private
//! network namespace. `banger up`; a Debian bookworm image (debootstrap with
//! systemd and openssh-server) pushed to a local registry and pulled as
//! `docker.io/library/debian:bookworm` through the mirror config; the fixture
//! kernel imported as `generic-6.12`; `vm create --nat` under QEMU TCG;
//! `vm ssh -- id`, which verifies the VM's own host key (and refuses any
//! other); `vm exec`; a vmm restart with a VM running; two VMs that cannot
//! reach each other; `vm run --rm` of the pulled reference (the image store
//! names it, no second pull); a vmm killed during create; stop/start/rm;
//! and after rm no tap, lease, nftables element, disk, record or
//! known_hosts entry left.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banger_test_support::cli::{self, Banger as Env};
use banger_test_support::fixtures::repo_root;
use banger_test_support::netns::in_new_netns;
use banger_test_support::otlp::{Collector, ReceivedSpan};
use banger_test_support::registry::Registry;
use banger_test_support::serve::FileServer;
use banger_test_support::wait::wait_until;
use banger_test_support::{leaks, procs};

/// `banger vm create NAME` is one trace: the CLI's root span → vmm's
/// CreateVm → a span per step carrying the VM name → the imagestore,
/// kernelcat and netd calls made in those steps.
fn assert_create_is_one_trace(collector: &Collector, vm: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = ["vm resolving", "vm network", "vm booting", "vm waiting"];
    loop {
        let spans = collector.spans();
        let Some(root) = spans
            .iter()
            .find(|s| s.service == "banger" && s.name == "banger vm create")
        else {
            assert!(
                Instant::now() < deadline,
                "no `banger vm create` root span exported"
            );
            std::thread::sleep(Duration::from_millis(300));
            continue;
        };
        let trace: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id)
            .collect();
        let find = |service: &str, name: &str| {
            trace
                .iter()
                .find(|s| s.service == service && s.name == name)
                .copied()
        };
        let complete = wanted.iter().all(|w| find("banger-vmm", w).is_some())
            && find("banger-netd", "banger.netd.v1.Netd/Allocate").is_some()
            && find(
                "banger-imagestore",
                "banger.imagestore.v1.ImageStore/ResolveImage",
            )
            .is_some()
            && find(
                "banger-kernelcat",
                "banger.kernelcat.v1.KernelCat/ResolveKernel",
            )
            .is_some();
        if !complete {
            assert!(
                Instant::now() < deadline,
                "incomplete create trace: {:#?}",
                trace
                    .iter()
                    .map(|s| format!("{}: {}", s.service, s.name))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        let server = find("banger-vmm", "banger.vmm.v1.Vmm/CreateVm").expect("vmm CreateVm span");
        assert_eq!(
            server.parent_span_id, root.span_id,
            "CreateVm is a child of the CLI's root"
        );
        for step in wanted {
            let span = find("banger-vmm", step).unwrap();
            assert!(
                span.attributes.iter().any(|(k, v)| k == "vm" && v == vm),
                "{step} lacks the vm attribute: {span:?}"
            );
        }
        // Under the step, possibly through vmm's own client span.
        let child_of = |child: &ReceivedSpan, step: &str| {
            let step_id = &find("banger-vmm", step).unwrap().span_id;
            let mut cursor = Some(child);
            while let Some(span) = cursor {
                if &span.parent_span_id == step_id {
                    return;
                }
                cursor = trace
                    .iter()
                    .find(|s| s.span_id == span.parent_span_id)
                    .copied();
            }
            panic!("{} ({}) is not under `{step}`", child.name, child.service);
        };
        child_of(
            find(
                "banger-imagestore",
                "banger.imagestore.v1.ImageStore/ResolveImage",
            )
            .unwrap(),
            "vm resolving",
        );
        child_of(
            find(
                "banger-kernelcat",
                "banger.kernelcat.v1.KernelCat/ResolveKernel",
            )
            .unwrap(),
            "vm resolving",
        );
        child_of(
            find("banger-netd", "banger.netd.v1.Netd/Allocate").unwrap(),
            "vm network",
        );
        return;
    }
}

/// Runs `examples/python/create_exec_delete.py` against the vmm socket.
fn python_example_creates_execs_deletes(env: &Env) {
    let python = repo_root().join("target/clients/py/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup.sh --deps (installs the stock Python gRPC client)",
        python.display()
    );
    let out = Command::new(python)
        .arg(repo_root().join("examples/python/create_exec_delete.py"))
        .arg("--socket")
        .arg(env.home.join("run/vmm.sock"))
        .args(["--image", "debian-bookworm", "--name", "pybox", "--"])
        .args(["sh", "-c", "cat /etc/hostname; exit 3"])
        .stdin(Stdio::null())
        .output()
        .expect("run the Python example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "$ examples/python/create_exec_delete.py\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "the command's exit code comes back"
    );
    for expected in [
        "[network]",
        "created pybox",
        "\npybox\n",
        "exit status 3",
        "deleted pybox",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} not in the example's output"
        );
    }
    let vms = env.json(&["vm", "list"]);
    assert!(
        !vms.to_string().contains("pybox"),
        "the example's VM is gone: {vms}"
    );
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn guard_elements() -> String {
    sh("nft -j list set bridge banger leases")
}

fn nat_elements() -> String {
    sh("nft -j list set inet banger nat_sources")
}

fn hypervisors_of(home: &Path) -> Vec<String> {
    procs::command_lines_mentioning(home, &["qemu-system", "vhost-device-vsock"])
}

/// The guest's SSH host public keys (`/etc/ssh/ssh_host_*_key.pub`), one
/// per line, read through the agent.
fn guest_host_keys(env: &Env, vm: &str) -> String {
    env.ok(&[
        "vm",
        "exec",
        vm,
        "--",
        "sh",
        "-c",
        "cat /etc/ssh/ssh_host_*_key.pub",
    ])
    .trim()
    .to_owned()
}

#[test]
fn vm_lifecycle_end_to_end() {
    banger_test_support::gate!(E2e, ROOT, QEMU, VHOST_VSOCK, SHARED);
    let bins = cli::bin_dir(env!("CARGO_BIN_EXE_banger"), true);
    // debootstrap needs the Debian mirror: build (or reuse) the image's
    // rootfs and OCI layout before entering the namespace, which has no
    // route out; inside it the script only pushes the cached layout.
    let status = Command::new(repo_root().join("scripts/make-test-image.sh"))
        .args(["bookworm", "-", "library/debian:bookworm"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "make-test-image.sh bookworm (build) failed"
    );
    // Debian's real signed archive with the 6.12 cloud kernel, fetched
    // (apt lists + `apt-get download`, cached) before the namespace too.
    let debian = banger_test_support::debian_archive::bookworm_security();
    in_new_netns(move || {
        // Multi-threaded: the receiver answers while this thread waits on commands.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let collector = rt.block_on(Collector::start());
        let work = tempfile::tempdir().unwrap();
        // Services started by `up` inherit the OTLP settings: one trace per command.
        let env = Env::new(bins, work.path().join("home"), work.path().join("user"))
            .with_env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
            .with_env("OTEL_BSP_SCHEDULE_DELAY", "200");
        std::fs::create_dir_all(&env.home).unwrap();
        std::fs::create_dir_all(&env.user_home).unwrap();

        // A real registry on 127.0.0.1, filled with a debootstrapped bookworm.
        let registry = Registry::start();
        let status = Command::new(repo_root().join("scripts/make-test-image.sh"))
            .args(["bookworm", &registry.addr, "library/debian:bookworm"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "make-test-image.sh bookworm failed");
        // ... and the local copy of Debian's archive, served on 127.0.0.1
        // as the mirror of deb.debian.org/debian-security.
        let archive_dir = work.path().join("debian-archive");
        debian.write_to(&archive_dir);
        let archive = FileServer::start(&archive_dir, "127.0.0.1:0".parse().unwrap());
        std::fs::write(
            env.home.join("banger.toml"),
            format!(
                "[kernelcat.archive_mirrors]\n\
                 \"http://deb.debian.org/debian-security\" = [\"http://{m}/debian-security\"]\n\
                 [imagestore]\ninsecure_registries = [\"{a}\"]\n\
                 [imagestore.mirrors]\n\"docker.io\" = [\"http://{a}\"]\n\
                 [vmm]\nhypervisor = \"qemu\"\nqemu_accel = \"auto\"\n\
                 # TCG on a loaded 2-core machine: be patient.\n\
                 ready_timeout_secs = 300\n",
                a = registry.addr,
                m = archive.addr,
            ),
        )
        .unwrap();
        let vmlinux = work.path().join("vmlinux");
        std::fs::copy(banger_test_support::fixtures::kernel_vmlinux(), &vmlinux).unwrap();

        env.ok(&["up"]);
        env.ok(&[
            "kernel",
            "import",
            "generic-6.12",
            "--vmlinux",
            vmlinux.to_str().unwrap(),
        ]);
        env.ok(&[
            "image",
            "pull",
            "docker.io/library/debian:bookworm",
            "--kernel-ref",
            "generic-6.12",
        ]);
        let image = env.json(&["image", "show", "debian-bookworm"]);
        assert_eq!(
            image["reference"], "docker.io/library/debian:bookworm",
            "{image:#}"
        );

        // Create with NAT and SSH in.
        let fixture_started = Instant::now();
        env.ok(&[
            "vm",
            "create",
            "--image",
            "debian-bookworm",
            "--name",
            "testbox",
            "--nat",
        ]);
        let fixture_ready = fixture_started.elapsed();
        let out = env.ok(&[
            "vm",
            "ssh",
            "testbox",
            "--",
            "id; uname -r; systemctl is-active banger-agent",
        ]);
        assert!(out.contains("uid=0(root)"), "{out}");
        assert!(out.contains("6.12."), "kernel version in {out}");
        assert!(
            out.lines().any(|l| l.trim() == "active"),
            "agent active in {out}"
        );
        let os = env.ok(&["vm", "exec", "testbox", "--", "cat", "/etc/os-release"]);
        assert!(os.contains("bookworm"), "{os}");
        let failing = env.run(&["vm", "exec", "testbox", "--", "sh", "-c", "exit 7"]);
        assert_eq!(failing.status.code(), Some(7), "exit code propagated");
        assert_create_is_one_trace(&collector, "testbox");
        let vm1 = env.json(&["vm", "show", "testbox"]);
        assert_eq!(vm1["state"], "running", "{vm1:#}");
        // The guest serves exactly the host key the vmm made and reported
        // (the `vm ssh` above already verified it strictly).
        let host_key1 = vm1["ssh_host_public_key"].as_str().unwrap().to_owned();
        assert!(host_key1.starts_with("ssh-ed25519 "), "{vm1:#}");
        assert_eq!(guest_host_keys(&env, "testbox"), host_key1);
        let leases = env.json(&["network", "leases"]);
        assert_eq!(leases.as_array().unwrap().len(), 1, "{leases:#}");
        assert!(
            nat_elements().contains(vm1["ip"].as_str().unwrap()),
            "NAT element for the VM"
        );

        // vmm restarted with the VM running: adopted, same process, reachable.
        let vmm = env.pid_of("vmm").expect("vmm pid file");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(vmm),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let socket = env.home.join("run/vmm.sock");
        wait_until(Duration::from_secs(30), || !socket.exists());
        env.ok(&["up"]);
        let adopted = env.json(&["vm", "show", "testbox"]);
        assert_eq!(adopted["state"], "running", "{adopted:#}");
        assert_eq!(adopted["pid"], vm1["pid"], "the same hypervisor process");
        env.ok(&["vm", "ssh", "testbox", "--", "true"]);

        // `banger down` with a VM running says so and leaves it running; the
        // next `up` adopts it.
        let down = env.run(&["down"]);
        assert!(down.status.success());
        let said = String::from_utf8_lossy(&down.stderr);
        assert!(
            said.contains("still running: testbox") && said.contains("--stop-vms"),
            "down names the running VM and the way to stop it: {said}"
        );
        assert!(
            hypervisors_of(&env.home)
                .iter()
                .any(|c| c.contains("qemu-system")),
            "the VM kept running"
        );
        env.ok(&["up"]);
        assert_eq!(env.json(&["vm", "show", "testbox"])["pid"], vm1["pid"]);
        env.ok(&["vm", "ssh", "testbox", "--", "true"]);

        // A second VM: another IP, and the two reach each other.
        env.ok(&[
            "vm",
            "create",
            "--image",
            "debian-bookworm",
            "--name",
            "testbox2",
            "--nat",
        ]);
        let vm2 = env.json(&["vm", "show", "testbox2"]);
        assert_ne!(vm1["ip"], vm2["ip"], "two VMs, two addresses");
        let host_key2 = vm2["ssh_host_public_key"].as_str().unwrap().to_owned();
        assert_ne!(host_key1, host_key2, "two VMs of one image, two host keys");
        assert_eq!(guest_host_keys(&env, "testbox2"), host_key2);
        // A pinned key that is not the guest's (as when a neighbour answers
        // for the VM's address): `vm ssh` refuses; with the right pin back, it
        // goes through.
        let pin = env.user_home.join(".config/banger/known_hosts.d/testbox2");
        let genuine = std::fs::read_to_string(&pin).unwrap();
        assert_eq!(genuine, format!("testbox2 {host_key2}\n"));
        std::fs::write(&pin, format!("testbox2 {host_key1}\n")).unwrap();
        let refused = env.run(&["vm", "ssh", "testbox2", "--", "true"]);
        assert_eq!(
            refused.status.code(),
            Some(255),
            "vm ssh accepted a host key other than the pinned one"
        );
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("not the one the vmm made"),
            "no hint about the pin"
        );
        std::fs::write(&pin, &genuine).unwrap();
        env.ok(&["vm", "ssh", "testbox2", "--", "true"]);
        // VMs are isolated from each other by default ([netd] vm_to_vm).
        let probe = env.run(&[
            "vm",
            "exec",
            "testbox2",
            "--",
            "timeout",
            "5",
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{}/22; head -c 7 <&3",
                vm1["ip"].as_str().unwrap()
            ),
        ]);
        assert!(
            !probe.status.success() && !String::from_utf8_lossy(&probe.stdout).contains("SSH-"),
            "testbox2 reached testbox's sshd although VMs are isolated"
        );
        env.ok(&["vm", "rm", "--force", "testbox2"]);
        assert!(!pin.exists(), "vm rm left the VM's known_hosts entry");

        // Another tool's view: the documented Python example creates a VM
        // through the raw gRPC API with a stock grpcio client (progress
        // streamed), runs a command through the agent, and deletes it.
        python_example_creates_execs_deletes(&env);

        // A fresh host's kernel: `debian-6.12` is in the embedded catalog, and
        // `vm create` pulls it itself — through Debian's signature chain, from
        // the local mirror — then boots it with the generated initramfs.
        let started = Instant::now();
        env.ok(&[
            "vm",
            "create",
            "--image",
            "debian-bookworm",
            "--name",
            "debbox",
            "--kernel",
            "debian-6.12",
            "--nat",
        ]);
        let with_pull = started.elapsed();
        let out = env.ok(&[
            "vm",
            "ssh",
            "debbox",
            "--",
            "uname -r; systemctl is-active banger-agent",
        ]);
        assert!(
            out.lines()
                .next()
                .is_some_and(|l| l.ends_with("-cloud-amd64")),
            "Debian's kernel runs: {out}"
        );
        assert!(
            out.lines().any(|l| l.trim() == "active"),
            "the agent answers over vsock, so the vsock modules loaded: {out}"
        );
        let exec = env.ok(&["vm", "exec", "debbox", "--", "cat", "/proc/cmdline"]);
        assert!(!exec.contains("nomodule"), "{exec}");
        let kernel = env.json(&["kernel", "show", "debian-6.12"]);
        assert!(
            kernel.to_string().contains(&debian.kernel_package),
            "kernel show names the Debian package: {kernel:#}"
        );
        env.ok(&["vm", "rm", "--force", "debbox"]);
        // The same create again, the kernel now stored: boot to ready only.
        let started = Instant::now();
        env.ok(&[
            "vm",
            "create",
            "--image",
            "debian-bookworm",
            "--name",
            "debbox",
            "--kernel",
            "debian-6.12",
        ]);
        let debian_ready = started.elapsed();
        env.ok(&["vm", "ssh", "debbox", "--", "true"]);
        env.ok(&["vm", "rm", "--force", "debbox"]);
        eprintln!(
            "FIGURES create→ready: generic-6.12 {fixture_ready:.1?}; debian-6.12 {debian_ready:.1?} \
             ({:.2}x), {with_pull:.1?} with the kernel pull",
            debian_ready.as_secs_f64() / fixture_ready.as_secs_f64()
        );

        // `vm run`: the image store names the image from the reference and
        // finds it stored (no second pull, no new image); the session's
        // output is ours, and --rm removes the VM and its pinned host key.
        let images_before = env.json(&["image", "list"]).as_array().unwrap().len();
        let ran = env.ok(&[
            "vm",
            "run",
            "docker.io/library/debian:bookworm",
            "--name",
            "runbox",
            "--rm",
            "--",
            "echo",
            "ran-in-runbox",
        ]);
        assert!(ran.contains("ran-in-runbox"), "{ran}");
        assert_eq!(
            env.json(&["image", "list"]).as_array().unwrap().len(),
            images_before
        );
        assert!(
            !env.json(&["vm", "list"]).to_string().contains("runbox"),
            "vm run --rm deleted its VM"
        );
        assert!(
            !env.user_home
                .join(".config/banger/known_hosts.d/runbox")
                .exists(),
            "and forgot its host key"
        );

        // `down --stop-vms` stops the VM cleanly before the services; after
        // `up` it is there, stopped. Then start keeps the VM and its disk.
        let down = env.json(&["down", "--stop-vms"]);
        assert_eq!(down["vms_left_running"], serde_json::json!([]), "{down:#}");
        assert_eq!(down["stopped"].as_array().unwrap().len(), 4, "{down:#}");
        wait_until(Duration::from_secs(20), || {
            hypervisors_of(&env.home).is_empty()
        });
        assert_eq!(
            hypervisors_of(&env.home),
            Vec::<String>::new(),
            "the VM was stopped"
        );
        env.ok(&["up"]);
        assert_eq!(env.json(&["vm", "show", "testbox"])["state"], "stopped");
        env.ok(&["vm", "start", "testbox"]);
        env.ok(&["vm", "ssh", "testbox", "--", "true"]);
        env.ok(&["vm", "rm", "--force", "testbox"]);

        // vmm killed with -9 in the middle of a create: nothing leaks.
        let mut create: Child = env
            .cmd(&[
                "vm",
                "create",
                "--image",
                "debian-bookworm",
                "--name",
                "crashbox",
                "--nat",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(60), || {
            !hypervisors_of(&env.home).is_empty()
        });
        assert!(
            !hypervisors_of(&env.home).is_empty(),
            "the create never started QEMU"
        );
        procs::kill9(env.pid_of("vmm").expect("vmm pid file"));
        let _ = create.wait();
        env.ok(&["up"]);
        let after = env.json(&["vm", "list"]);
        let after = after.as_array().unwrap();
        assert!(
            after
                .iter()
                .all(|v| v["name"] != "crashbox" || v["state"] != "creating"),
            "a half-done create survived the restart: {after:#?}"
        );
        if after.iter().any(|v| v["name"] == "crashbox") {
            env.ok(&["vm", "rm", "--force", "crashbox"]);
        }

        // Nothing a VM owned is left.
        assert_eq!(env.json(&["vm", "list"]), serde_json::json!([]));
        assert_eq!(env.json(&["network", "leases"]), serde_json::json!([]));
        assert_eq!(leaks::taps(), Vec::<String>::new(), "taps left behind");
        let guard = guard_elements();
        assert!(
            guard.contains("\"leases\"") && !guard.contains("\"elem\""),
            "guard elements left (or no guard set): {guard}"
        );
        let elements = nat_elements();
        assert!(
            !elements.contains("\"elem\""),
            "NAT elements left: {elements}"
        );
        let vms_dir = env.home.join("state/vms");
        let left: Vec<_> = std::fs::read_dir(&vms_dir)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "VM dirs left in {}: {left:?}",
            vms_dir.display()
        );
        wait_until(Duration::from_secs(20), || {
            hypervisors_of(&env.home).is_empty()
        });
        assert_eq!(
            hypervisors_of(&env.home),
            Vec::<String>::new(),
            "hypervisor processes left"
        );
        let image = env.json(&["image", "show", "debian-bookworm"]);
        assert_eq!(
            image["holders"],
            serde_json::json!([]),
            "image holds left: {image:#}"
        );

        env.ok(&["down"]);
        drop(registry);
    });
}
