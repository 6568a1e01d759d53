//! End-to-end tier, in a private network namespace: a VM of the
//! debootstrapped bookworm image (systemd, openssh-server, udev) boots its
//! systemd directly (`init=/sbin/init`, no first boot before it) with the
//! default set of masked units, under QEMU TCG, and is still a healthy
//! system: `systemctl is-system-running` says `running`, journald records
//! the boot, `banger vm logs` prints the console, the serial console offers
//! a login (serial-getty@ttyS0 active, its prompt on the console), and first
//! boot's oneshot is skipped: vmm applied the identity and wrote its stamp.

use std::process::{Command, Stdio};

use banger_test_support::cli::{self, Banger as Env};
use banger_test_support::fixtures::repo_root;
use banger_test_support::netns::in_new_netns;

/// `vm ssh box -- sh -c CMD`, stdout.
fn guest(env: &Env, cmd: &str) -> String {
    env.ok(&["vm", "ssh", "box", "--", cmd])
}

#[test]
fn systemd_image_boots_directly_trimmed_and_healthy() {
    banger_test_support::gate!(E2e, ROOT, QEMU, VHOST_VSOCK, SHARED);
    // Build (or reuse) the image's OCI layout before the namespace (debootstrap
    // needs the Debian mirror); imported from a tar, no registry needed.
    let out = Command::new(repo_root().join("scripts/make-test-image.sh"))
        .args(["bookworm", "-", "library/debian:bookworm"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "make-test-image.sh bookworm failed");
    let layout = String::from_utf8(out.stdout).unwrap();
    let layout = layout
        .trim()
        .strip_prefix("oci:")
        .and_then(|l| l.rsplit_once(':'))
        .expect("oci:DIR:TAG")
        .0
        .to_owned();
    in_new_netns(move || {
        let work = tempfile::tempdir().unwrap();
        let env = Env::new(
            cli::bin_dir(env!("CARGO_BIN_EXE_banger"), true),
            work.path().join("home"),
            work.path().join("user"),
        );
        std::fs::create_dir_all(&env.home).unwrap();
        std::fs::create_dir_all(&env.user_home).unwrap();
        std::fs::write(
            env.home.join("banger.toml"),
            "[vmm]\n# TCG on a loaded 2-core machine: be patient.\nready_timeout_secs = 300\n",
        )
        .unwrap();
        let tar = work.path().join("bookworm-oci.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar of the OCI layout failed");
        let vmlinux = work.path().join("vmlinux");
        std::fs::copy(banger_test_support::fixtures::kernel_vmlinux(), &vmlinux).unwrap();

        env.ok(&["up"]);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            env.ok(&[
                "kernel",
                "import",
                "generic-6.12",
                "--vmlinux",
                vmlinux.to_str().unwrap(),
            ]);
            env.ok(&[
                "image",
                "import",
                "debian-bookworm",
                tar.to_str().unwrap(),
                "--kernel-ref",
                "generic-6.12",
            ]);
            env.ok(&[
                "vm",
                "create",
                "--image",
                "debian-bookworm",
                "--name",
                "box",
                "--timings",
            ]);
            let cmdline = guest(&env, "cat /proc/cmdline");
            let words: Vec<&str> = cmdline.split_whitespace().collect();
            assert!(words.contains(&"init=/sbin/init"), "{cmdline}");
            assert!(
                words.contains(&"systemd.mask=e2scrub_reap.service"),
                "{cmdline}"
            );
            assert!(!cmdline.contains("dev-ttyS0"), "{cmdline}");
            // systemd itself is PID 1: nothing ran before it.
            assert_eq!(guest(&env, "cat /proc/1/comm").trim(), "systemd");

            // A healthy system: running (or the failed units, named).
            let state = env.run(&[
                "vm",
                "ssh",
                "box",
                "--",
                "systemctl is-system-running --wait",
            ]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            assert_eq!(
                state,
                "running",
                "failed units: {}",
                guest(&env, "systemctl --failed --no-legend --plain")
            );
            // The masked units really are masked, and nothing failed for it.
            assert_eq!(
                guest(&env, "systemctl is-enabled e2scrub_reap.service || true").trim(),
                "masked-runtime"
            );
            // journald records this boot, from the kernel on.
            let journal = guest(&env, "journalctl -b --no-pager -o cat | head -n 400");
            assert!(journal.contains("Linux version"), "{journal}");
            assert!(
                guest(&env, "journalctl -b --no-pager -o cat -u ssh.service")
                    .contains("Server listening"),
                "sshd's start is in the journal"
            );
            // First boot's oneshot had nothing to do: vmm applied the
            // identity and wrote the stamp, so the unit was skipped by its
            // condition without starting a process.
            assert_eq!(
                guest(
                    &env,
                    "systemctl show -p ConditionResult --value banger-first-boot.service"
                )
                .trim(),
                "no"
            );
            assert!(guest(&env, "cat /var/lib/banger/identity.applied").starts_with("fnv1a64:"));
            assert_eq!(guest(&env, "hostname").trim(), "box");
            assert!(
                guest(&env, "cat /etc/hosts")
                    .lines()
                    .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["127.0.1.1", "box"])
            );
            // Console login: the getty on ttyS0 runs and its prompt is on
            // the console `vm logs` prints.
            assert_eq!(
                guest(&env, "systemctl is-active serial-getty@ttyS0.service").trim(),
                "active"
            );
            let console = env.ok(&["vm", "logs", "box"]);
            assert!(console.contains("box login:"), "no login prompt on ttyS0");
            env.ok(&["vm", "rm", "--force", "box"]);
        }));
        let _ = env.run(&["down", "--stop-vms"]);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    });
}
