//! `banger doctor`: checks what VM creation needs on this host and says how
//! to fix each problem. Exits non-zero when something blocks VM creation.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Result;
use banger_proto::config::Service;
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::context::Context;
use crate::output;

/// `banger doctor` flags.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    /// Works, but not as well as it could, or a risk.
    Warn,
    /// Blocks VM creation.
    Fail,
}

/// One check's result.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub check: String,
    pub severity: Severity,
    /// What was found, and for warn/fail what to do about it.
    pub detail: String,
}

/// `banger doctor --json`: whether nothing blocks VM creation, and every
/// check (the table's rows).
#[derive(Debug, Serialize)]
struct DoctorView<'a> {
    ok: bool,
    checks: &'a [Finding],
}

fn finding(check: &str, severity: Severity, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.to_owned(),
        severity,
        detail: detail.into(),
    }
}

pub async fn doctor(ctx: &Context, _args: DoctorArgs) -> Result<ExitCode> {
    let mut findings = vec![check_kvm()];
    if let Some(from_vmm) = vmm_hypervisors(ctx).await {
        findings.extend(from_vmm);
    } else {
        // No vmm to ask: look at the default binaries from here.
        let hypervisors = check_hypervisors();
        let usable_hypervisor = hypervisors
            .iter()
            .any(|f| f.check == "qemu" && f.severity == Severity::Ok);
        findings.extend(hypervisors);
        if !usable_hypervisor {
            findings.push(finding(
                "hypervisor",
                Severity::Fail,
                "no usable hypervisor: install QEMU (`apt-get install qemu-system-x86`) or put `firecracker` on PATH on a host whose KVM runs guests",
            ));
        }
    }
    findings.push(check_tun());
    findings.push(check_nft());
    findings.push(check_ip_forward());
    findings.push(check_forward_policy());
    findings.extend(check_services(ctx).await);
    findings.push(check_free_space(&ctx.config.paths.state_dir));

    let blocked = findings.iter().any(|f| f.severity == Severity::Fail);
    if ctx.json {
        output::print_json(&DoctorView {
            ok: !blocked,
            checks: &findings,
        })?;
    } else {
        let mut table = output::table(["CHECK", "STATUS", "DETAIL"]);
        for f in &findings {
            let status = match f.severity {
                Severity::Ok => "ok",
                Severity::Warn => "warn",
                Severity::Fail => "FAIL",
            };
            table.add_row([f.check.as_str(), status, f.detail.as_str()]);
        }
        println!("{table}");
        if blocked {
            eprintln!(
                "banger doctor: something above blocks VM creation (FAIL rows say how to fix it)"
            );
        }
    }
    Ok(if blocked {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// KVM that exists but cannot run unmodified guests (`kvm_pvm`) is the
/// trap on nested cloud machines: Firecracker and QEMU+KVM die with
/// KVM_EXIT_INTERNAL_ERROR, so only QEMU TCG works there. The probe is the
/// vmm's own (banger-proto's `host::probe_kvm`), run as this user.
fn check_kvm() -> Finding {
    use banger_proto::host::Kvm;
    let kvm = banger_proto::host::probe_kvm();
    let detail = kvm.describe();
    match kvm {
        Kvm::Usable => finding("kvm", Severity::Ok, detail),
        Kvm::Absent | Kvm::Pvm => finding(
            "kvm",
            Severity::Warn,
            format!(
                "{detail}: Firecracker cannot run here; `[vmm] hypervisor = \"auto\"` uses QEMU with TCG (slow)"
            ),
        ),
        Kvm::Unusable { .. } => finding("kvm", Severity::Warn, detail),
    }
}

/// The vmm's own word on its backends (`GetHypervisors`): which one a
/// create gets and why, and whether each can boot guests with the binaries
/// `[vmm]` names. `None` when the vmm does not answer.
async fn vmm_hypervisors(ctx: &Context) -> Option<Vec<Finding>> {
    use banger_proto::vmm::v1 as pb;
    let channel = ctx.channel(Service::Vmm).await.ok()?;
    let report = pb::vmm_client::VmmClient::new(channel)
        .get_hypervisors(pb::GetHypervisorsRequest {})
        .await
        .ok()?
        .into_inner();
    let name = super::vm::hypervisor_name;
    let mut out = Vec::new();
    let default_ok = report
        .hypervisors
        .iter()
        .any(|h| h.hypervisor == report.default_hypervisor && h.available);
    out.push(finding(
        "hypervisor",
        if default_ok {
            Severity::Ok
        } else {
            Severity::Fail
        },
        format!(
            "vmm creates VMs on {} ({})",
            name(report.default_hypervisor),
            report.default_reason
        ),
    ));
    for h in &report.hypervisors {
        out.push(finding(
            name(h.hypervisor),
            if h.available {
                Severity::Ok
            } else {
                Severity::Warn
            },
            if h.available {
                format!(
                    "{}; accel {} ({})",
                    h.detail, h.accelerator, h.accelerator_reason
                )
            } else {
                h.detail.clone()
            },
        ));
    }
    Some(out)
}

fn version_of(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
}

fn check_hypervisors() -> Vec<Finding> {
    vec![
        match version_of("qemu-system-x86_64", "--version") {
            Some(v) => finding("qemu", Severity::Ok, v),
            None => finding(
                "qemu",
                Severity::Warn,
                "qemu-system-x86_64 not found: `apt-get install qemu-system-x86`",
            ),
        },
        match version_of("vhost-device-vsock", "--version") {
            Some(v) => finding("vhost-device-vsock", Severity::Ok, v),
            None => finding(
                "vhost-device-vsock",
                Severity::Warn,
                "not found: the guest agent is unreachable under QEMU; `cargo install --locked vhost-device-vsock@0.3.0`",
            ),
        },
        match version_of("firecracker", "--version") {
            Some(v) => finding("firecracker", Severity::Ok, v),
            None => finding(
                "firecracker",
                Severity::Warn,
                "firecracker not on PATH: only the QEMU backend is available (download a release from the Firecracker project)",
            ),
        },
    ]
}

fn check_tun() -> Finding {
    match std::fs::metadata("/dev/net/tun") {
        Ok(m) if m.file_type().is_char_device() => {
            finding("tun", Severity::Ok, "/dev/net/tun is present")
        }
        _ => finding(
            "tun",
            Severity::Fail,
            "/dev/net/tun is missing: `modprobe tun` (VM networking needs tap devices)",
        ),
    }
}

fn check_nft() -> Finding {
    match version_of("nft", "--version") {
        Some(v) => finding("nftables", Severity::Ok, v),
        None => finding(
            "nftables",
            Severity::Fail,
            "nft not found: `apt-get install nftables` (netd installs NAT through it)",
        ),
    }
}

fn check_ip_forward() -> Finding {
    match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward") {
        Ok(v) if v.trim() == "1" => finding("ip_forward", Severity::Ok, "enabled"),
        Ok(_) => finding(
            "ip_forward",
            Severity::Warn,
            "disabled: netd enables it when NAT is on; if VMs cannot reach out, check `sysctl net.ipv4.ip_forward`",
        ),
        Err(e) => finding("ip_forward", Severity::Warn, format!("cannot read: {e}")),
    }
}

/// A `policy drop` on a forward hook outside our table (Docker, ufw) drops
/// NAT'd VM traffic before our accept rules can matter.
fn check_forward_policy() -> Finding {
    let Ok(out) = Command::new("nft").args(["-j", "list", "chains"]).output() else {
        return finding(
            "forward policy",
            Severity::Warn,
            "cannot run `nft list chains`",
        );
    };
    if !out.status.success() {
        return finding(
            "forward policy",
            Severity::Warn,
            format!(
                "cannot list nftables chains ({}); run doctor as root to check",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        );
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return finding(
            "forward policy",
            Severity::Warn,
            "unreadable `nft -j` output",
        );
    };
    let dropping: Vec<String> = json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("chain"))
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop" && c["table"] != "banger")
        .map(|c| {
            format!(
                "{} {} {}",
                c["family"].as_str().unwrap_or("?"),
                c["table"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if dropping.is_empty() {
        finding(
            "forward policy",
            Severity::Ok,
            "no foreign forward chain drops by default",
        )
    } else {
        finding(
            "forward policy",
            Severity::Warn,
            format!(
                "forward chain(s) with policy drop ({}), typically Docker or ufw: NAT'd VM traffic may be dropped; allow the banger bridge there (e.g. `iptables -I DOCKER-USER -i banger0 -j ACCEPT` / `ufw route allow in on banger0`)",
                dropping.join(", ")
            ),
        )
    }
}

async fn check_services(ctx: &Context) -> Vec<Finding> {
    let mut out = Vec::new();
    for service in Service::ALL {
        let socket = ctx.config.paths.socket(service);
        let name = format!("service {service}");
        let healthy = match ctx.channel(service).await {
            Ok(channel) => HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.api_service().to_owned(),
                })
                .await
                .is_ok_and(|r| r.get_ref().status == 1),
            Err(_) => false,
        };
        if !healthy {
            out.push(finding(
                &name,
                Severity::Fail,
                format!(
                    "not answering on {}: start the services (`banger up`, or `systemctl start banger-{service}.socket`)",
                    socket.display()
                ),
            ));
            continue;
        }
        let meta = std::fs::metadata(&socket).ok();
        let mode = meta.as_ref().map(|m| m.permissions().mode() & 0o777);
        let detail = format!(
            "{} (mode {:o}, gid {})",
            socket.display(),
            mode.unwrap_or_default(),
            meta.as_ref().map(|m| m.gid()).unwrap_or_default()
        );
        let severity = if mode.is_some_and(|m| m & 0o007 != 0) {
            Severity::Warn
        } else {
            Severity::Ok
        };
        out.push(finding(
            &name,
            severity,
            if severity == Severity::Warn {
                format!("{detail}: socket is world-accessible; it should be 0660")
            } else {
                detail
            },
        ));
    }
    out
}

fn check_free_space(state_dir: &Path) -> Finding {
    let probe = state_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match nix::sys::statvfs::statvfs(probe) {
        Ok(st) => {
            let free = st.blocks_available() * st.fragment_size();
            let detail = format!("{} free at {}", output::human_bytes(free), probe.display());
            if free < 2 << 30 {
                finding(
                    "disk space",
                    Severity::Fail,
                    format!("{detail}: images and VM disks need several GiB; free some space"),
                )
            } else if free < 10 << 30 {
                finding(
                    "disk space",
                    Severity::Warn,
                    format!("{detail}: getting low"),
                )
            } else {
                finding("disk space", Severity::Ok, detail)
            }
        }
        Err(e) => finding(
            "disk space",
            Severity::Warn,
            format!("cannot stat {}: {e}", probe.display()),
        ),
    }
}
