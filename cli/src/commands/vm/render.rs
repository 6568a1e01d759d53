//! What `banger vm …` prints: [`VmView`] (the table, one VM, `--json`)
//! and [`TimingsView`] (`vm create --timings`), per the rule in
//! `crate::output`.

use anyhow::Result;
use banger_proto::vmm::v1 as pb;
use serde::Serialize;

use crate::context::Context;
use crate::output;
use crate::progress::Timing;

/// A VM as `vm list`, `vm show` and the lifecycle commands print it.
#[derive(Debug, Serialize)]
pub(super) struct VmView {
    id: String,
    name: String,
    /// `creating`, `running`, `stopped`, `error`, `deleting` or `unknown`.
    state: &'static str,
    image: String,
    kernel: String,
    vcpus: u32,
    memory_mib: u32,
    disk_bytes: u64,
    /// `firecracker`, `qemu`, or empty.
    hypervisor: &'static str,
    hypervisor_reason: String,
    accelerator: String,
    accelerator_reason: String,
    ip: String,
    mac: String,
    tap: String,
    nat: bool,
    pid: u32,
    created_unix: i64,
    started_unix: i64,
    error: String,
    vsock_path: String,
    ssh_host_public_key: String,
    image_prepared: bool,
    probes: Vec<ProbeView>,
}

/// One readiness probe of a VM.
#[derive(Debug, Serialize)]
struct ProbeView {
    capability: String,
    state: String,
    detail: String,
}

impl From<&pb::Vm> for VmView {
    fn from(vm: &pb::Vm) -> Self {
        VmView {
            id: vm.id.clone(),
            name: vm.name.clone(),
            state: state_name(vm.state),
            image: vm.image.clone(),
            kernel: vm.kernel.clone(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            disk_bytes: vm.disk_bytes,
            hypervisor: hypervisor_name(vm.hypervisor),
            hypervisor_reason: vm.hypervisor_reason.clone(),
            accelerator: vm.accelerator.clone(),
            accelerator_reason: vm.accelerator_reason.clone(),
            ip: vm.ip.clone(),
            mac: vm.mac.clone(),
            tap: vm.tap.clone(),
            nat: vm.nat,
            pid: vm.pid,
            created_unix: vm.created_unix,
            started_unix: vm.started_unix,
            error: vm.error.clone(),
            vsock_path: vm.vsock_path.clone(),
            ssh_host_public_key: vm.ssh_host_public_key.clone(),
            image_prepared: vm.image_prepared,
            probes: vm
                .probes
                .iter()
                .map(|p| ProbeView {
                    capability: p.capability.clone(),
                    state: p.state.clone(),
                    detail: p.detail.clone(),
                })
                .collect(),
        }
    }
}

/// `vm list`: a table, or the VMs as JSON.
pub(super) fn print_vms(ctx: &Context, vms: &[pb::Vm]) -> Result<()> {
    let views: Vec<VmView> = vms.iter().map(VmView::from).collect();
    if ctx.json {
        return output::print_json(&views);
    }
    println!("{}", vms_table(&views));
    // An orphan's line says which process it is and how to end it.
    for vm in vms
        .iter()
        .filter(|v| v.state == pb::VmState::Orphaned as i32)
    {
        println!("{}: {}", vm.name, vm.error);
    }
    Ok(())
}

fn vms_table(vms: &[VmView]) -> comfy_table::Table {
    let mut t = output::table([
        "NAME", "STATE", "IP", "IMAGE", "KERNEL", "VCPUS", "MEMORY", "AGE",
    ]);
    for vm in vms {
        t.add_row([
            vm.name.clone(),
            vm.state.to_string(),
            vm.ip.clone(),
            vm.image.clone(),
            vm.kernel.clone(),
            vm.vcpus.to_string(),
            format!("{} MiB", vm.memory_mib),
            output::age(vm.created_unix),
        ]);
    }
    t
}

pub(super) fn state_name(state: i32) -> &'static str {
    match pb::VmState::try_from(state) {
        Ok(pb::VmState::Creating) => "creating",
        Ok(pb::VmState::Running) => "running",
        Ok(pb::VmState::Stopped) => "stopped",
        Ok(pb::VmState::Error) => "error",
        Ok(pb::VmState::Deleting) => "deleting",
        Ok(pb::VmState::Orphaned) => "orphaned",
        _ => "unknown",
    }
}

/// `firecracker`, `qemu`, or empty for an unknown value.
pub(crate) fn hypervisor_name(h: i32) -> &'static str {
    match pb::Hypervisor::try_from(h) {
        Ok(pb::Hypervisor::Firecracker) => "firecracker",
        Ok(pb::Hypervisor::Qemu) => "qemu",
        _ => "",
    }
}

/// `vm show` and every command that ends with one VM.
pub(super) fn print_vm(ctx: &Context, vm: &pb::Vm) -> Result<()> {
    let view = VmView::from(vm);
    if ctx.json {
        return output::print_json(&view);
    }
    print!("{}", vm_lines(&view));
    Ok(())
}

/// ` (why)`, or nothing when there is no reason.
fn reason(why: &str) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    }
}

fn vm_lines(vm: &VmView) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(o, "{:11} {v}", format!("{k}:"));
    };
    line("name", &vm.name);
    line("state", &vm.state);
    line("id", &vm.id);
    if vm.image_prepared {
        line("image", &format!("{} (its prepared filesystem)", vm.image));
    } else {
        line("image", &vm.image);
    }
    line("kernel", &vm.kernel);
    line("vcpus", &vm.vcpus);
    line("memory", &format!("{} MiB", vm.memory_mib));
    line("disk", &output::human_bytes(vm.disk_bytes));
    line(
        "hypervisor",
        &format!("{}{}", vm.hypervisor, reason(&vm.hypervisor_reason)),
    );
    if !vm.accelerator.is_empty() {
        line(
            "accel",
            &format!("{}{}", vm.accelerator, reason(&vm.accelerator_reason)),
        );
    }
    line("ip", &vm.ip);
    line("mac", &vm.mac);
    line("tap", &vm.tap);
    line("nat", &vm.nat);
    if vm.pid > 0 {
        line("pid", &vm.pid);
    }
    if !vm.ssh_host_public_key.is_empty() {
        line("host key", &vm.ssh_host_public_key);
    }
    for p in &vm.probes {
        line(
            "ready",
            &format!("{}: {} ({})", p.capability, p.state, p.detail),
        );
    }
    if !vm.error.is_empty() {
        line("error", &vm.error);
    }
    o
}

/// `vm create --timings`: the phases that ended and their sum.
#[derive(Debug, Serialize)]
pub(super) struct TimingsView<'a> {
    timings: &'a [Timing],
    total_seconds: f64,
}

impl<'a> TimingsView<'a> {
    pub(super) fn new(timings: &'a [Timing]) -> Self {
        TimingsView {
            timings,
            total_seconds: timings.iter().map(|t| t.seconds).sum(),
        }
    }
}

/// `vm create` with `--timings` or not: one JSON document under `--json`
/// (the VM's fields, and `timings` when asked for), else the phases as a
/// table and the backend's reasons on stderr, and the VM on stdout.
pub(super) fn print_created(ctx: &Context, vm: &pb::Vm, timings: Option<&[Timing]>) -> Result<()> {
    if ctx.json {
        return output::print_json(&CreatedView {
            vm: VmView::from(vm),
            timings: timings.map(TimingsView::new),
        });
    }
    if let Some(timings) = timings {
        print_timings(&TimingsView::new(timings));
        if !vm.accelerator.is_empty() {
            eprintln!(
                "hypervisor {} ({}): {}; {}",
                hypervisor_name(vm.hypervisor),
                vm.accelerator,
                vm.hypervisor_reason,
                vm.accelerator_reason
            );
        }
    }
    print_vm(ctx, vm)
}

/// What `vm create --json` prints: the VM, plus its timings when asked.
#[derive(Debug, Serialize)]
struct CreatedView<'a> {
    #[serde(flatten)]
    vm: VmView,
    #[serde(skip_serializing_if = "Option::is_none")]
    timings: Option<TimingsView<'a>>,
}

/// The timings as a table on stderr (stdout keeps the VM).
fn print_timings(view: &TimingsView) {
    let mut t = output::table(["PHASE", "SECONDS", "DETAIL"]);
    for p in view.timings {
        t.add_row([
            p.phase.clone(),
            format!("{:.2}", p.seconds),
            p.detail.clone(),
        ]);
    }
    t.add_row([
        "total".to_string(),
        format!("{:.2}", view.total_seconds),
        String::new(),
    ]);
    eprintln!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> pb::Vm {
        pb::Vm {
            name: "box".into(),
            state: pb::VmState::Running as i32,
            hypervisor: pb::Hypervisor::Qemu as i32,
            hypervisor_reason: "configured".into(),
            memory_mib: 512,
            ip: "172.30.0.2".into(),
            probes: vec![pb::ReadinessProbe {
                capability: "ssh".into(),
                state: "ready".into(),
                detail: "port 22".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn one_view_feeds_json_and_text() {
        let view = VmView::from(&vm());
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["hypervisor"], "qemu");
        assert_eq!(json["memory_mib"], 512);
        assert_eq!(json["probes"][0]["capability"], "ssh");
        // The JSON field names are the ones `vm show --json` always had.
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys.join(" "),
            "accelerator accelerator_reason created_unix disk_bytes error hypervisor \
             hypervisor_reason id image image_prepared ip kernel mac memory_mib name nat pid \
             probes ssh_host_public_key started_unix state tap vcpus vsock_path"
        );
        let text = vm_lines(&view);
        assert!(text.contains("state:      running\n"), "{text}");
        assert!(text.contains("hypervisor: qemu (configured)\n"), "{text}");
        assert!(
            text.contains("ready:      ssh: ready (port 22)\n"),
            "{text}"
        );
        assert!(!text.contains("accel:"), "{text}");
        let table = vms_table(&[view]).to_string();
        assert!(
            table.contains("box") && table.contains("512 MiB"),
            "{table}"
        );
    }

    #[test]
    fn timings_sum_their_phases() {
        let t = [
            Timing {
                phase: "disk".into(),
                seconds: 0.25,
                detail: "reflink".into(),
            },
            Timing {
                phase: "booting".into(),
                seconds: 1.0,
                detail: String::new(),
            },
        ];
        let json = serde_json::to_value(TimingsView::new(&t)).unwrap();
        assert_eq!(json["total_seconds"], 1.25);
        assert_eq!(json["timings"][0]["detail"], "reflink");

        // `vm create --timings --json` is one document: the VM and its timings.
        let created = CreatedView {
            vm: VmView::from(&vm()),
            timings: Some(TimingsView::new(&t)),
        };
        let json = serde_json::to_value(&created).unwrap();
        assert_eq!(
            json["name"],
            serde_json::to_value(VmView::from(&vm())).unwrap()["name"]
        );
        assert_eq!(json["timings"]["total_seconds"], 1.25);
        let plain = CreatedView {
            vm: VmView::from(&vm()),
            timings: None,
        };
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::to_value(VmView::from(&vm())).unwrap(),
            "without --timings the document is the VM's, as before"
        );
    }
}
