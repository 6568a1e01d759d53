//! Firecracker: spawned with its API socket, configured through its HTTP API
//! (logger, machine-config, boot-source, drives, network-interfaces, vsock),
//! then `InstanceStart`. The serial console is Firecracker's stdout, appended
//! to the VM's console log. Stop is `SendCtrlAltDel`; the manager kills
//! after its timeout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use banger_proto::host::Kvm;

use super::{Hypervisor, LaunchSpec, Launched};
use crate::config::Backend;
use crate::error::{Error, Result};
use crate::record::VmPaths;

/// Guest CID of every VM; each VM has its own vsock device and socket.
pub const GUEST_CID: u32 = 3;

/// The Firecracker backend.
#[derive(Debug, Clone)]
pub struct Firecracker {
    pub binary: String,
    /// Whether it can boot guests here (probed at vmm start).
    pub availability: super::Availability,
}

impl Firecracker {
    /// `binary`, probed: it must start (`--version`) and the host's KVM
    /// must run guests.
    pub fn probed(binary: &str, kvm: &Kvm) -> Firecracker {
        let availability = if kvm.runs_guests() {
            super::probe_binary(binary)
        } else {
            Err(kvm.describe())
        };
        Firecracker {
            binary: binary.to_owned(),
            availability,
        }
    }
}

/// The API calls that configure a VM, in order, before `InstanceStart`.
pub fn config_requests(spec: &LaunchSpec) -> Vec<(String, Value)> {
    let p = &spec.paths;
    let mut boot = json!({
        "kernel_image_path": spec.kernel,
        "boot_args": spec.cmdline,
    });
    if let Some(initrd) = &spec.initrd {
        boot["initrd_path"] = json!(initrd);
    }
    let mut reqs = vec![
        (
            "/logger".to_string(),
            json!({
                "log_path": p.hypervisor_log(),
                "level": "Info",
                "show_level": true,
                "show_log_origin": false,
            }),
        ),
        (
            "/machine-config".into(),
            json!({"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib}),
        ),
        ("/boot-source".into(), boot),
        (
            "/drives/rootfs".into(),
            json!({
                "drive_id": "rootfs",
                "path_on_host": spec.disk,
                "is_root_device": true,
                "is_read_only": false,
            }),
        ),
    ];
    if let Some((tap, mac)) = &spec.net {
        reqs.push((
            "/network-interfaces/eth0".into(),
            json!({"iface_id": "eth0", "host_dev_name": tap, "guest_mac": mac}),
        ));
    }
    if spec.vsock {
        reqs.push((
            "/vsock".into(),
            json!({"guest_cid": GUEST_CID, "uds_path": p.vsock()}),
        ));
    }
    reqs
}

/// `PUT /actions {"action_type": …}`.
pub fn action(kind: &str) -> (String, Value) {
    ("/actions".into(), json!({ "action_type": kind }))
}

#[tonic::async_trait]
impl Hypervisor for Firecracker {
    fn backend(&self) -> Backend {
        Backend::Firecracker
    }

    fn emulated(&self) -> bool {
        false
    }

    fn availability(&self) -> super::Availability {
        self.availability.clone()
    }

    fn accelerator(&self) -> super::AccelChoice {
        super::AccelChoice {
            name: "kvm",
            why: "Firecracker always runs guests on KVM".into(),
        }
    }

    #[tracing::instrument(skip_all, fields(vm = %spec.id))]
    async fn launch(&self, spec: &LaunchSpec) -> Result<Launched> {
        let p = &spec.paths;
        std::fs::create_dir_all(&p.run).map_err(Error::io("cannot create", &p.run))?;
        // Firecracker refuses to start on an existing API socket or vsock path.
        let _ = std::fs::remove_file(p.api());
        let _ = std::fs::remove_file(p.vsock());
        // The logger needs an existing file.
        super::open_log(&p.hypervisor_log())?;
        let mut cmd = super::detached(&self.binary);
        cmd.arg("--api-sock")
            .arg(p.api())
            .arg("--id")
            .arg(&spec.id)
            .stdout(super::open_log(&p.console_log())?)
            .stderr(super::open_log(&p.console_log())?);
        let mut child = super::spawn(
            cmd,
            "Firecracker has no Debian package: install a release binary from \
             github.com/firecracker-microvm/firecracker or set [vmm] firecracker_binary",
        )?;
        let pid = child.id().unwrap_or_default();
        let configure = async {
            super::wait_for_socket(&p.api(), &mut child, "firecracker", Duration::from_secs(10))
                .await?;
            for (path, body) in config_requests(spec) {
                api_put(&p.api(), &path, &body).await?;
            }
            let (path, body) = action("InstanceStart");
            api_put(&p.api(), &path, &body).await
        };
        if let Err(e) = configure.await {
            super::kill(pid);
            let _ = child.wait().await;
            super::cleanup_after_exit(p, None);
            return Err(e);
        }
        Ok(Launched {
            pid,
            helper_pid: None,
            accel: None,
            child,
        })
    }

    async fn request_stop(&self, paths: &VmPaths) -> Result<()> {
        let (path, body) = action("SendCtrlAltDel");
        api_put(&paths.api(), &path, &body).await
    }
}

/// One `PUT` on the API socket; any 2xx is success, otherwise the error
/// carries Firecracker's `fault_message`.
pub async fn api_put(socket: &Path, path: &str, body: &Value) -> Result<()> {
    let socket: PathBuf = socket.to_path_buf();
    let api = |message: String| Error::HypervisorApi {
        api: "Firecracker API",
        message,
    };
    let fail = |e: std::io::Error| api(format!("{} {path}: {e}", socket.display()));
    let call = async {
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(fail)?;
        let body = body.to_string();
        let request = format!(
            "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(fail)?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.map_err(fail)?;
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| api(format!("{path}: malformed response {status_line:?}")))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.map_err(fail)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await.map_err(fail)?;
        if (200..300).contains(&code) {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&body);
        let fault = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(String::from))
            .unwrap_or_else(|| text.into_owned());
        Err(api(format!("refused PUT {path} ({code}): {fault}")))
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .map_err(|_| api(format!("{path}: no answer in 10 s")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Store;
    use std::sync::{Arc, Mutex};

    fn spec(root: &Path) -> LaunchSpec {
        let store = Store::new(&root.join("s/vms"), &root.join("r"));
        LaunchSpec {
            id: "0123456789abcdef".into(),
            kernel: "/k/vmlinux".into(),
            initrd: None,
            cmdline: "console=ttyS0 reboot=k panic=1 root=/dev/vda rw".into(),
            disk: "/s/box/rootfs.ext4".into(),
            vcpus: 2,
            memory_mib: 512,
            net: Some(("bg-0123".into(), "06:00:ac:1e:00:05".into())),
            vsock: true,
            paths: store.paths("box", "0123456789abcdef"),
        }
    }

    #[test]
    fn initrd_goes_into_boot_source() {
        let mut s = spec(Path::new("/x"));
        s.initrd = Some("/s/kernels/debian-6.12/initrd".into());
        let reqs = config_requests(&s);
        let boot = &reqs.iter().find(|(k, _)| k == "/boot-source").unwrap().1;
        assert_eq!(
            boot,
            &json!({"kernel_image_path": "/k/vmlinux",
                    "initrd_path": "/s/kernels/debian-6.12/initrd",
                    "boot_args": "console=ttyS0 reboot=k panic=1 root=/dev/vda rw"})
        );
    }

    #[test]
    fn request_bodies() {
        let root = Path::new("/x");
        let reqs = config_requests(&spec(root));
        let by_path = |p: &str| reqs.iter().find(|(k, _)| k == p).unwrap().1.clone();
        assert_eq!(
            reqs.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            [
                "/logger",
                "/machine-config",
                "/boot-source",
                "/drives/rootfs",
                "/network-interfaces/eth0",
                "/vsock"
            ]
        );
        assert_eq!(
            by_path("/boot-source"),
            json!({"kernel_image_path": "/k/vmlinux",
                   "boot_args": "console=ttyS0 reboot=k panic=1 root=/dev/vda rw"})
        );
        assert_eq!(
            by_path("/drives/rootfs"),
            json!({"drive_id": "rootfs", "path_on_host": "/s/box/rootfs.ext4",
                   "is_root_device": true, "is_read_only": false})
        );
        assert_eq!(
            by_path("/network-interfaces/eth0"),
            json!({"iface_id": "eth0", "host_dev_name": "bg-0123",
                   "guest_mac": "06:00:ac:1e:00:05"})
        );
        assert_eq!(
            by_path("/machine-config"),
            json!({"vcpu_count": 2, "mem_size_mib": 512})
        );
        assert_eq!(
            by_path("/vsock"),
            json!({"guest_cid": 3, "uds_path": "/x/r/0123456789abcdef/vsock.sock"})
        );
        assert_eq!(
            by_path("/logger"),
            json!({"log_path": "/x/s/vms/box/hypervisor.log", "level": "Info",
                   "show_level": true, "show_log_origin": false})
        );
        assert_eq!(
            action("InstanceStart").1,
            json!({"action_type": "InstanceStart"})
        );
    }

    /// A fake API socket: records each request and answers 204, or 400 with
    /// a fault message for paths listed in `refuse`.
    async fn fake_api(
        socket: PathBuf,
        refuse: &'static [&'static str],
    ) -> Arc<Mutex<Vec<(String, String, Value)>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap().to_string();
                let path = parts.next().unwrap().to_string();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).await.unwrap();
                    if h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.unwrap();
                let refused = refuse.contains(&path.as_str());
                log.lock()
                    .unwrap()
                    .push((method, path, serde_json::from_slice(&body).unwrap()));
                let mut stream = reader.into_inner();
                let answer = if refused {
                    let b = r#"{"fault_message":"The kernel file cannot be opened."}"#;
                    format!(
                        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                        b.len()
                    )
                } else {
                    "HTTP/1.1 204 No Content\r\n\r\n".to_string()
                };
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        seen
    }

    #[tokio::test]
    async fn api_client_sends_exact_bodies_and_surfaces_faults() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let seen = fake_api(sock.clone(), &["/boot-source"]).await;
        let s = spec(dir.path());
        for (path, body) in config_requests(&s)
            .into_iter()
            .filter(|(p, _)| p != "/boot-source")
        {
            api_put(&sock, &path, &body).await.unwrap();
        }
        let (path, body) = action("InstanceStart");
        api_put(&sock, &path, &body).await.unwrap();
        let err = api_put(
            &sock,
            "/boot-source",
            &json!({"kernel_image_path": "/nope"}),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("The kernel file cannot be opened."), "{err}");
        assert!(err.contains("400"), "{err}");
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|(m, _, _)| m == "PUT"));
        let expected: Vec<(String, Value)> = config_requests(&s)
            .into_iter()
            .filter(|(p, _)| p != "/boot-source")
            .chain([action("InstanceStart")])
            .collect();
        let got: Vec<(String, Value)> = seen
            .iter()
            .take(expected.len())
            .map(|(_, p, b)| (p.clone(), b.clone()))
            .collect();
        assert_eq!(got, expected);
    }

    /// The real-binary tier: runs wherever `firecracker` is on PATH. Here
    /// it proves configuration and InstanceStart are accepted and the
    /// process is supervised and cleaned up (guests may not boot on hosts
    /// whose KVM is kvm_pvm; that is the create flow's rollback case).
    #[tokio::test]
    async fn firecracker_tier() {
        let on_path = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|d| d.join("firecracker").is_file())
        });
        if !on_path {
            eprintln!("FIRECRACKER TIER NOT RUN: firecracker not on PATH");
            println!("FIRECRACKER TIER NOT RUN: firecracker not on PATH");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.kernel = banger_test_support::fixtures::kernel_vmlinux();
        s.net = None;
        let disk = dir.path().join("rootfs.ext4");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        s.disk = disk;
        std::fs::create_dir_all(&s.paths.dir).unwrap();
        let fc = Firecracker {
            binary: "firecracker".into(),
            availability: Ok(String::new()),
        };
        let mut launched = fc.launch(&s).await.expect("configure + InstanceStart");
        assert!(super::super::is_ours(launched.pid, &s.paths));
        let _ = fc.request_stop(&s.paths).await;
        if !super::super::wait_gone(launched.pid, Duration::from_secs(5)).await {
            super::super::kill(launched.pid);
        }
        launched.child.wait().await.unwrap();
        super::super::cleanup_after_exit(&s.paths, None);
        assert!(!s.paths.run.exists());
        println!("FIRECRACKER TIER RAN");
    }
}
