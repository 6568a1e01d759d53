//! Test doubles for the vmm's seams, shared by its unit tests and the
//! integration tests in `tests/`: [`RecordingPeers`] (kernelcat, imagestore
//! and netd), [`RecordingGuest`] (the agent) and [`ShHypervisor`] (a
//! backend whose "VM" is a `sh`). Not part of the vmm's API: it is public
//! only so that `tests/` uses these instead of copies.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use banger_proto::rpc::hybrid_vsock::HybridVsockError;

use crate::config::{Backend, VmmConfig};
use crate::error::{Error, Result};
use crate::guest::Guest;
use crate::hypervisor::{self, Hypervisor, LaunchSpec, Launched};
use crate::manager::{CreateSpec, Manager};
use crate::peers::Peers;
use crate::record::{ImageInfo, KernelInfo, Lease, Store, VmPaths};

/// Peers double: serves one image (under any name but `missing`) and one
/// kernel (under any name; `broken` gives a vmlinux path that does not
/// exist), a fixed lease, and records every call.
#[derive(Debug)]
pub struct RecordingPeers {
    pub image: PathBuf,
    pub kernel: PathBuf,
    /// The lease handed out; `nat` is the request's.
    pub lease: Lease,
    pub has_agent: bool,
    pub has_ssh_server: bool,
    /// The image is a registry image with a distribution but no init or
    /// sshd: VMs of it need a prepared filesystem.
    pub unprepared: bool,
    /// imagestore "down": releases of image holds fail (Unavailable).
    pub imagestore_down: std::sync::atomic::AtomicBool,
    calls: Mutex<Vec<String>>,
}

impl RecordingPeers {
    /// Serves `image` and `kernel`, and 10.99.0.5/24 (gateway and DNS
    /// 10.99.0.1) on `tap`; the image has neither agent nor SSH server.
    pub fn new(image: PathBuf, kernel: PathBuf, tap: &str) -> Self {
        RecordingPeers {
            image,
            kernel,
            lease: Lease {
                tap: tap.into(),
                ip: "10.99.0.5".into(),
                prefix_len: 24,
                gateway: "10.99.0.1".into(),
                mac: "06:00:0a:63:00:05".into(),
                dns: vec!["10.99.0.1".into()],
                nat: false,
            },
            has_agent: false,
            has_ssh_server: false,
            unprepared: false,
            imagestore_down: Default::default(),
            calls: Mutex::default(),
        }
    }

    /// The image declares the banger agent.
    pub fn with_agent(mut self) -> Self {
        self.has_agent = true;
        self
    }

    /// The image declares an SSH server.
    pub fn with_ssh_server(mut self) -> Self {
        self.has_ssh_server = true;
        self
    }

    /// Every call so far, as `"<method> <args…>"`.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    /// Which of the lease, kernel hold and image hold were never
    /// released: empty after a full rollback or delete.
    pub fn unreleased(&self) -> Vec<&'static str> {
        let calls = self.calls();
        ["release_lease", "release_kernel", "release_image"]
            .into_iter()
            .filter(|p| !calls.iter().any(|c| c.starts_with(p)))
            .collect()
    }

    /// Forgets the calls so far.
    pub fn clear_calls(&self) {
        self.calls.lock().expect("calls").clear();
    }

    fn log(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }
}

#[tonic::async_trait]
impl Peers for RecordingPeers {
    async fn resolve_image(&self, name: &str, holder: &str) -> Result<ImageInfo> {
        self.log(format!("resolve_image {name} {holder}"));
        if name == "missing" {
            return Err(Error::Peer {
                service: "imagestore",
                code: tonic::Code::NotFound,
                reason: Some("IMAGE_MISSING"),
                message: format!("no image {name}"),
            });
        }
        Ok(ImageInfo {
            name: name.into(),
            ext4_path: self.image.clone(),
            digest: format!("sha256:{}", "0".repeat(64)),
            direct_boot: self.unprepared,
            os_id: if self.unprepared {
                "debian".into()
            } else {
                String::new()
            },
            default_kernel: String::new(),
            size_bytes: std::fs::metadata(&self.image).map_or(0, |m| m.len()),
            has_agent: self.has_agent,
            has_ssh_server: self.has_ssh_server,
            ..Default::default()
        })
    }
    async fn release_image(&self, name: &str, holder: &str) -> Result<()> {
        if self
            .imagestore_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::Peer {
                service: "imagestore",
                code: tonic::Code::Unavailable,
                reason: None,
                message: "connection refused".into(),
            });
        }
        self.log(format!("release_image {name} {holder}"));
        Ok(())
    }
    async fn resolve_kernel(&self, name: &str, holder: &str) -> Result<KernelInfo> {
        self.log(format!("resolve_kernel {name} {holder}"));
        let vmlinux_path = if name == "broken" {
            PathBuf::from("/nonexistent/vmlinux") // a hypervisor refuses it
        } else {
            self.kernel.clone()
        };
        Ok(KernelInfo {
            name: name.into(),
            vmlinux_path,
            initrd_path: None,
            kernel_version: "6.12".into(),
        })
    }
    async fn release_kernel(&self, name: &str, holder: &str) -> Result<()> {
        self.log(format!("release_kernel {name} {holder}"));
        Ok(())
    }
    async fn allocate(&self, vm_id: &str, nat: bool) -> Result<Lease> {
        self.log(format!("allocate {vm_id} {nat}"));
        Ok(Lease {
            nat,
            ..self.lease.clone()
        })
    }
    async fn release_lease(&self, vm_id: &str) -> Result<()> {
        self.log(format!("release_lease {vm_id}"));
        Ok(())
    }
    async fn holds_of(&self, holder: &str) -> Result<crate::peers::Holds> {
        if self
            .imagestore_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Error::Peer {
                service: "imagestore",
                code: tonic::Code::Unavailable,
                reason: None,
                message: "connection refused".into(),
            });
        }
        // What was resolved or allocated for `holder` and not released yet.
        let calls = self.calls();
        let open = |take: &str, give: &str| {
            calls
                .iter()
                .filter_map(|c| {
                    let mut w = c.split(' ');
                    (w.next() == Some(take) && c.ends_with(&format!(" {holder}")))
                        .then(|| w.next().unwrap_or_default().to_owned())
                })
                .rfind(|n| !calls.contains(&format!("{give} {n} {holder}")))
        };
        let nat = calls
            .iter()
            .rev()
            .find_map(|c| c.strip_prefix(&format!("allocate {holder} ")))
            .filter(|_| !calls.contains(&format!("release_lease {holder}")));
        Ok(crate::peers::Holds {
            image: open("resolve_image", "release_image"),
            kernel: open("resolve_kernel", "release_kernel"),
            lease: nat.map(|nat| Lease {
                nat: nat == "true",
                ..self.lease.clone()
            }),
        })
    }
}

/// Guest double: an agent that answers ping at once (or never, with
/// `unreachable`), takes shutdown requests without acting on them, and
/// runs no commands. Records every call.
#[derive(Debug, Default)]
pub struct RecordingGuest {
    pub unreachable: bool,
    calls: Mutex<Vec<String>>,
}

impl RecordingGuest {
    /// Every call so far, by method name.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }

    fn log(&self, call: &str) {
        self.calls.lock().expect("calls").push(call.into());
    }
}

#[tonic::async_trait]
impl Guest for RecordingGuest {
    async fn ping(&self, vsock: &Path, timeout: Duration) -> Result<String> {
        self.log("ping");
        if self.unreachable {
            tokio::time::sleep(timeout).await;
            return Err(Error::AgentNotReady(HybridVsockError::NotReady {
                path: vsock.to_path_buf(),
                deadline: timeout,
                last: "the test double never answers".into(),
            }));
        }
        Ok("test-double".into())
    }
    async fn wait_listening(
        &self,
        _: &Path,
        _: u16,
        timeout: Duration,
    ) -> Result<crate::guest::Listening> {
        self.log("wait_listening");
        if self.unreachable {
            tokio::time::sleep(timeout).await;
            return Ok(crate::guest::Listening::No);
        }
        Ok(crate::guest::Listening::Yes {
            address: "0.0.0.0:22".into(),
        })
    }
    async fn shutdown(&self, _: &Path) -> Result<()> {
        self.log("shutdown");
        Ok(())
    }
    async fn exec_channel(&self, _: &Path) -> Result<tonic::transport::Channel> {
        self.log("exec_channel");
        Err(Error::AgentCall {
            call: "Exec",
            message: "the test double runs no commands".into(),
        })
    }
}

/// Hypervisor double: a `sh` whose command line names the VM's run dir (so
/// `is_ours` recognises it), writes `booted` to the console and sleeps; or,
/// with `fail`, a launch that fails. A preparation VM (id `prep-…`) prints
/// first boot's events instead — an install, then `Prepared` and exit, or
/// with `prepare_fails` a DNS failure — and is counted.
#[derive(Debug, Default)]
pub struct ShHypervisor {
    pub fail: bool,
    pub prepare_fails: bool,
    pub preparations: std::sync::atomic::AtomicUsize,
}

/// The shell that plays a preparation VM's first boot.
fn preparation_script(console: &Path, fails: bool) -> String {
    use banger_proto::guest::{FailureCause, FirstBootEvent};
    let installing = FirstBootEvent::Installing {
        manager: "apt".into(),
        packages: vec!["systemd-sysv".into(), "openssh-server".into()],
    };
    let last = if fails {
        FirstBootEvent::Failed {
            step: "apt-get update".into(),
            cause: FailureCause::Dns,
            message: "Temporary failure resolving deb.debian.org".into(),
            excerpt: vec![],
        }
    } else {
        FirstBootEvent::Prepared {
            packages: vec!["systemd-sysv".into(), "openssh-server".into()],
        }
    };
    let log = console.display();
    format!(
        "printf '%s\\n' '{}' >> {log}; sleep 1; printf '%s\\n' '{}' >> {log}; {}",
        installing.to_console_line(),
        last.to_console_line(),
        // A failed first boot leaves a rescue shell: the VM keeps running.
        if fails { "sleep 30" } else { ":" }
    )
}

#[tonic::async_trait]
impl Hypervisor for ShHypervisor {
    fn backend(&self) -> Backend {
        Backend::Qemu
    }
    fn emulated(&self) -> bool {
        true
    }
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched> {
        if self.fail {
            return Err(Error::LaunchFailed {
                program: "fake".into(),
                reason: "launch failure".into(),
            });
        }
        std::fs::create_dir_all(&spec.paths.run)
            .map_err(Error::io("cannot create", &spec.paths.run))?;
        std::fs::write(spec.paths.vsock(), b"")
            .map_err(Error::io("cannot write", spec.paths.vsock()))?;
        let script = if spec.id.starts_with("prep-") {
            self.preparations
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            preparation_script(&spec.paths.console_log(), self.prepare_fails)
        } else {
            format!(
                "echo booted >> {}; echo fake-hypervisor-started >> {}; sleep 30; :",
                spec.paths.console_log().display(),
                spec.paths.hypervisor_log().display()
            )
        };
        let mut cmd = hypervisor::detached("sh");
        cmd.arg("-c").arg(script).arg(&spec.paths.run);
        let child = hypervisor::spawn(cmd, "sh")?;
        Ok(Launched {
            pid: child.id().unwrap_or_default(),
            helper_pid: None,
            accel: Some("tcg".into()),
            child,
        })
    }
    async fn request_stop(&self, _: &VmPaths) -> Result<()> {
        Ok(())
    }
}

/// A manager over a temp dir with all three doubles, as the unit tests
/// use it: a 4 MiB ext4 image, 4 MiB of disk headroom, a fixed TSC rate.
#[derive(Debug)]
pub struct Doubles {
    pub dir: tempfile::TempDir,
    pub peers: Arc<RecordingPeers>,
    pub guest: Arc<RecordingGuest>,
    pub fail_launch: bool,
    pub hypervisor: Arc<ShHypervisor>,
    pub mgr: Manager,
}

impl Doubles {
    /// An image without agent; launches fail with `fail_launch`.
    pub fn new(fail_launch: bool) -> Self {
        Self::build(false, false, fail_launch)
    }

    /// An image with the agent, answering (`answers`) or not.
    pub fn with_agent(answers: bool) -> Self {
        Self::build(true, !answers, false)
    }

    /// A registry image of a distribution without init or sshd, with the
    /// agent answering; its preparations succeed or (`fails`) fail.
    pub fn unprepared(fails: bool) -> Self {
        Self::build_with(true, false, false, Some(fails))
    }

    fn build(agent: bool, unreachable: bool, fail_launch: bool) -> Self {
        Self::build_with(agent, unreachable, fail_launch, None)
    }

    fn build_with(
        agent: bool,
        unreachable: bool,
        fail_launch: bool,
        prepare_fails: Option<bool>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("image.ext4");
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .arg("4M")
            .status()
            .expect("mkfs.ext4 (apt-get install e2fsprogs)");
        assert!(st.success(), "mkfs.ext4 failed");
        let mut peers = RecordingPeers::new(image, "/k".into(), "bg-test");
        peers.has_agent = agent;
        peers.unprepared = prepare_fails.is_some();
        let peers = Arc::new(peers);
        let guest = Arc::new(RecordingGuest {
            unreachable,
            ..Default::default()
        });
        let hypervisor = Arc::new(ShHypervisor {
            fail: fail_launch,
            prepare_fails: prepare_fails.unwrap_or(false),
            ..Default::default()
        });
        let mgr = Self::manager(dir.path(), &peers, &guest, &hypervisor);
        Doubles {
            dir,
            peers,
            guest,
            fail_launch,
            hypervisor,
            mgr,
        }
    }

    /// A second manager over the same state and doubles: a vmm restart.
    pub fn restarted(&self) -> Manager {
        Self::manager(self.dir.path(), &self.peers, &self.guest, &self.hypervisor)
    }

    fn manager(
        dir: &Path,
        peers: &Arc<RecordingPeers>,
        guest: &Arc<RecordingGuest>,
        hypervisor: &Arc<ShHypervisor>,
    ) -> Manager {
        Manager::new(
            VmmConfig {
                tsc_khz: 1_000_000,
                disk_headroom_mib: 4,
                ..Default::default()
            },
            Store::new(&dir.join("state/vms"), &dir.join("run")),
            peers.clone(),
            guest.clone(),
            vec![hypervisor.clone()],
        )
    }
}

/// A create of `name` from `image` with NAT and one SSH key.
pub fn spec(name: &str, image: &str) -> CreateSpec {
    CreateSpec {
        name: name.into(),
        image: image.into(),
        nat: true,
        ssh_authorized_keys: vec!["ssh-ed25519 AAAA k".into()],
        ..Default::default()
    }
}
