//! QEMU `-M microvm`: virtio-mmio disk and net, the serial console appended
//! to the VM's log, and the guest's vsock served by a `vhost-device-vsock`
//! daemon started before QEMU (it creates the vhost-user socket QEMU dials)
//! so the host reaches the agent through the same hybrid-vsock socket as
//! under Firecracker (DESIGN §5). vhost-user needs shared guest memory,
//! hence the memfd memory backend.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Hypervisor, LaunchSpec, Launched};
use banger_proto::host::Kvm;

use crate::config::{Backend, QemuAccel, VmmConfig};
use crate::error::{Error, Result};
use crate::record::VmPaths;

/// The accelerator actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Resolves `qemu_accel` against what the host's KVM offers
/// ([`banger_proto::host::probe_kvm`]): `auto` picks KVM only when it runs
/// guests (not `kvm_pvm`, whose vCPUs die with KVM_EXIT_INTERNAL_ERROR, and
/// only when the vmm may open it). The reason is always said.
pub fn choose_accel(setting: QemuAccel, kvm: &Kvm) -> (Accel, String) {
    match setting {
        QemuAccel::Kvm => (Accel::Kvm, "[vmm] qemu_accel = \"kvm\"".into()),
        QemuAccel::Tcg => (Accel::Tcg, "[vmm] qemu_accel = \"tcg\"".into()),
        QemuAccel::Auto if kvm.runs_guests() => {
            (Accel::Kvm, "qemu_accel = auto: /dev/kvm runs guests".into())
        }
        QemuAccel::Auto => (
            Accel::Tcg,
            format!(
                "qemu_accel = auto: {}; using TCG (software emulation, much slower)",
                kvm.describe()
            ),
        ),
    }
}

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: String,
    pub vhost_vsock_binary: String,
    pub accel: Accel,
    /// Why [`Self::accel`] (see [`choose_accel`]).
    pub accel_why: String,
}

impl Qemu {
    /// Whether QEMU and its vsock daemon start (`--version` of each).
    pub fn probe(&self) -> super::Availability {
        let qemu = super::probe_binary(&self.binary)?;
        match super::probe_binary(&self.vhost_vsock_binary) {
            Ok(v) => Ok(format!("{qemu}; {v}")),
            Err(e) => Err(format!("{e} (QEMU's guests need it for the agent)")),
        }
    }
}

impl Qemu {
    /// From `[vmm]` and the host's KVM, probed once at vmm start.
    pub fn from_config(cfg: &VmmConfig, kvm: &Kvm) -> Qemu {
        let (accel, why) = choose_accel(cfg.qemu_accel, kvm);
        if accel == Accel::Tcg && cfg.qemu_accel == QemuAccel::Auto {
            tracing::warn!("{why}");
        }
        Qemu {
            binary: cfg.qemu_binary.clone(),
            vhost_vsock_binary: cfg.vhost_vsock_binary.clone(),
            accel,
            accel_why: why,
        }
    }
}

/// Doubles commas, QEMU's escape inside `-opt a=b,c=d` values.
fn esc(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The microvm firmware (in QEMU's data dir; qemu-system-data ships it).
pub const QBOOT: &str = "qboot.rom";

/// QEMU's arguments for `spec`.
pub fn argv(spec: &LaunchSpec, accel: Accel) -> Vec<String> {
    let p = &spec.paths;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    // qboot, QEMU's own minimal microvm firmware: Debian's QEMU 10 defaults
    // microvm to a SeaBIOS build that lets the initrd overwrite the ACPI
    // tables (Debian's cloud kernel then finds no virtio devices) and
    // sometimes hangs after "Booting from ROM"; qboot is also faster.
    push(&["-bios", QBOOT, "-M", "microvm,memory-backend=mem"]);
    push(&[
        "-object",
        &format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            spec.memory_mib
        ),
    ]);
    match accel {
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", "max"]),
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
    }
    push(&[
        "-smp",
        &spec.vcpus.to_string(),
        "-m",
        &format!("{}M", spec.memory_mib),
    ]);
    push(&[
        "-nodefaults",
        "-nographic",
        "-no-reboot",
        "-monitor",
        "none",
    ]);
    push(&[
        "-chardev",
        &format!("file,id=console,path={},append=on", esc(&p.console_log())),
        "-serial",
        "chardev:console",
    ]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", esc(&p.qmp())),
    ]);
    push(&["-kernel", &spec.kernel.display().to_string()]);
    if let Some(initrd) = &spec.initrd {
        push(&["-initrd", &initrd.display().to_string()]);
    }
    push(&["-append", &spec.cmdline]);
    push(&[
        "-drive",
        &format!("id=root,file={},format=raw,if=none", esc(&spec.disk)),
        "-device",
        "virtio-blk-device,drive=root",
    ]);
    if let Some((tap, mac)) = &spec.net {
        push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={mac}"),
        ]);
    }
    if spec.vsock {
        push(&[
            "-chardev",
            &format!("socket,id=vsock,path={}", esc(&p.vhost_user())),
            "-device",
            "vhost-user-vsock-device,chardev=vsock",
        ]);
    }
    a
}

/// vhost-device-vsock's arguments: guest CID 3 (every VM has its own daemon,
/// so CIDs never clash), the vhost-user socket QEMU dials, and the
/// hybrid-vsock socket the host dials.
pub fn vhost_argv(paths: &VmPaths) -> Vec<String> {
    vec![
        "--guest-cid".into(),
        "3".into(),
        "--socket".into(),
        paths.vhost_user().display().to_string(),
        "--uds-path".into(),
        paths.vsock().display().to_string(),
    ]
}

#[tonic::async_trait]
impl Hypervisor for Qemu {
    fn backend(&self) -> Backend {
        Backend::Qemu
    }

    fn emulated(&self) -> bool {
        self.accel == Accel::Tcg
    }

    fn availability(&self) -> super::Availability {
        self.probe()
    }

    fn accelerator(&self) -> super::AccelChoice {
        super::AccelChoice {
            name: self.accel.as_str(),
            why: self.accel_why.clone(),
        }
    }

    #[tracing::instrument(skip_all, fields(vm = %spec.id, accel = self.accel.as_str()))]
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched> {
        let p = &spec.paths;
        std::fs::create_dir_all(&p.run).map_err(Error::io("cannot create", &p.run))?;
        let mut helper = None;
        if spec.vsock {
            let mut cmd = super::detached(&self.vhost_vsock_binary);
            cmd.args(vhost_argv(p))
                .stdout(super::open_log(&p.hypervisor_log())?)
                .stderr(super::open_log(&p.hypervisor_log())?);
            let mut child = super::spawn(
                cmd,
                "install it with `cargo install --locked vhost-device-vsock --version 0.3.0` \
                 or set [vmm] vhost_vsock_binary",
            )?;
            let waited = super::wait_for_socket(
                &p.vhost_user(),
                &mut child,
                "vhost-device-vsock",
                Duration::from_secs(10),
            )
            .await;
            let pid = child.id().unwrap_or_default();
            // Reap it whenever it exits; it is ended by pid after QEMU.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            if let Err(e) = waited {
                super::kill(pid);
                return Err(e);
            }
            helper = Some(pid);
        }
        let mut cmd = super::detached(&self.binary);
        cmd.args(argv(spec, self.accel))
            .stdout(super::open_log(&p.hypervisor_log())?)
            .stderr(super::open_log(&p.hypervisor_log())?);
        let child = match super::spawn(
            cmd,
            "install it with `apt-get install qemu-system-x86` or set [vmm] qemu_binary",
        ) {
            Ok(c) => c,
            Err(e) => {
                super::cleanup_after_exit(p, helper);
                return Err(e);
            }
        };
        Ok(Launched {
            pid: child.id().unwrap_or_default(),
            helper_pid: helper,
            accel: Some(self.accel.as_str().into()),
            child,
        })
    }

    async fn request_stop(&self, paths: &VmPaths) -> Result<()> {
        tokio::time::timeout(
            Duration::from_secs(5),
            qmp(&paths.qmp(), "system_powerdown"),
        )
        .await
        .map_err(|_| qmp_error("no answer within 5 s".into()))?
    }
}

fn qmp_error(message: String) -> Error {
    Error::HypervisorApi {
        api: "QMP",
        message,
    }
}

/// Runs one QMP command: greeting, `qmp_capabilities`, the command.
async fn qmp(socket: &Path, command: &str) -> Result<()> {
    let fail = |e: std::io::Error| qmp_error(format!("{}: {e}", socket.display()));
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(fail)?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let expect_return = async |lines: &mut tokio::io::Lines<_>| -> Result<()> {
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(fail)?
                .ok_or_else(|| qmp_error("closed the connection".into()))?;
            if line.contains("\"return\"") {
                return Ok(());
            }
            if line.contains("\"error\"") {
                return Err(qmp_error(format!("refused: {line}")));
            }
            // Greeting and asynchronous events: keep reading.
        }
    };
    for cmd in ["qmp_capabilities", command] {
        write
            .write_all(format!("{{\"execute\":\"{cmd}\"}}\n").as_bytes())
            .await
            .map_err(fail)?;
        expect_return(&mut lines).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Store;

    fn spec() -> LaunchSpec {
        let store = Store::new(Path::new("/s/vms"), Path::new("/r"));
        LaunchSpec {
            id: "0123456789abcdef".into(),
            kernel: "/k/vmlinux".into(),
            initrd: None,
            cmdline: "console=ttyS0 root=/dev/vda".into(),
            disk: "/s/vms/box/rootfs.ext4".into(),
            vcpus: 2,
            memory_mib: 512,
            net: Some(("bg-0123".into(), "06:00:ac:1e:00:05".into())),
            vsock: true,
            paths: store.paths("box", "0123456789abcdef"),
        }
    }

    #[test]
    fn tcg_argv() {
        let a = argv(&spec(), Accel::Tcg).join(" ");
        assert_eq!(
            a,
            "-bios qboot.rom -M microvm,memory-backend=mem \
             -object memory-backend-memfd,id=mem,size=512M,share=on \
             -accel tcg -cpu max -smp 2 -m 512M \
             -nodefaults -nographic -no-reboot -monitor none \
             -chardev file,id=console,path=/s/vms/box/console.log,append=on -serial chardev:console \
             -qmp unix:/r/0123456789abcdef/qmp.sock,server=on,wait=off \
             -kernel /k/vmlinux -append console=ttyS0 root=/dev/vda \
             -drive id=root,file=/s/vms/box/rootfs.ext4,format=raw,if=none \
             -device virtio-blk-device,drive=root \
             -netdev tap,id=net0,ifname=bg-0123,script=no,downscript=no \
             -device virtio-net-device,netdev=net0,mac=06:00:ac:1e:00:05 \
             -chardev socket,id=vsock,path=/r/0123456789abcdef/vhost.sock \
             -device vhost-user-vsock-device,chardev=vsock"
        );
        // The command line stays one argument however many spaces it has.
        assert!(argv(&spec(), Accel::Tcg).contains(&"console=ttyS0 root=/dev/vda".to_string()));
    }

    #[test]
    fn kvm_initrd_no_net_no_vsock() {
        let mut s = spec();
        s.net = None;
        s.vsock = false;
        s.initrd = Some("/k/initrd".into());
        s.disk = "/odd,dir/rootfs.ext4".into();
        let a = argv(&s, Accel::Kvm).join(" ");
        assert!(a.contains("-accel kvm -cpu host"));
        assert!(a.contains("-initrd /k/initrd"));
        assert!(a.contains("file=/odd,,dir/rootfs.ext4,"));
        assert!(!a.contains("netdev"));
        assert!(!a.contains("vsock"));
    }

    #[test]
    fn vhost_daemon_args() {
        assert_eq!(
            vhost_argv(&spec().paths).join(" "),
            "--guest-cid 3 --socket /r/0123456789abcdef/vhost.sock \
             --uds-path /r/0123456789abcdef/vsock.sock"
        );
    }

    #[test]
    fn accel_auto_falls_back_on_kvm_pvm() {
        let (a, w) = choose_accel(QemuAccel::Auto, &Kvm::Pvm);
        assert_eq!(a, Accel::Tcg);
        assert!(w.contains("kvm_pvm") && w.contains("TCG"), "{w}");
        let (a, w) = choose_accel(QemuAccel::Auto, &Kvm::Absent);
        assert_eq!(a, Accel::Tcg);
        assert!(w.contains("/dev/kvm is absent"), "{w}");
        let (a, w) = choose_accel(
            QemuAccel::Auto,
            &Kvm::Unusable {
                reason: "EACCES".into(),
            },
        );
        assert_eq!(a, Accel::Tcg);
        assert!(w.contains("EACCES"), "{w}");
        assert_eq!(choose_accel(QemuAccel::Auto, &Kvm::Usable).0, Accel::Kvm);
        assert_eq!(choose_accel(QemuAccel::Kvm, &Kvm::Pvm).0, Accel::Kvm);
        assert_eq!(choose_accel(QemuAccel::Tcg, &Kvm::Usable).0, Accel::Tcg);
    }
}
