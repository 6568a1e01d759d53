//! What `banger vm …` prints: the VM table and one VM.

use anyhow::Result;
use banger_proto::vmm::v1 as pb;
use serde_json::json;

use crate::context::Context;
use crate::output;

/// `vm list`: a table, or the VMs as JSON.
pub(super) fn print_vms(ctx: &Context, vms: &[pb::Vm]) -> Result<()> {
    if ctx.json {
        return output::print_json(&vms.iter().map(vm_json).collect::<Vec<_>>());
    }
    let mut t = output::table([
        "NAME", "STATE", "IP", "IMAGE", "KERNEL", "VCPUS", "MEMORY", "AGE",
    ]);
    for vm in vms {
        t.add_row([
            vm.name.clone(),
            state_name(vm.state).to_string(),
            vm.ip.clone(),
            vm.image.clone(),
            vm.kernel.clone(),
            vm.vcpus.to_string(),
            format!("{} MiB", vm.memory_mib),
            output::age(vm.created_unix),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub(super) fn state_name(state: i32) -> &'static str {
    match pb::VmState::try_from(state) {
        Ok(pb::VmState::Creating) => "creating",
        Ok(pb::VmState::Running) => "running",
        Ok(pb::VmState::Stopped) => "stopped",
        Ok(pb::VmState::Error) => "error",
        Ok(pb::VmState::Deleting) => "deleting",
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

fn vm_json(vm: &pb::Vm) -> serde_json::Value {
    json!({
        "id": vm.id,
        "name": vm.name,
        "state": state_name(vm.state),
        "image": vm.image,
        "kernel": vm.kernel,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "disk_bytes": vm.disk_bytes,
        "hypervisor": hypervisor_name(vm.hypervisor),
        "hypervisor_reason": vm.hypervisor_reason,
        "accelerator": vm.accelerator,
        "accelerator_reason": vm.accelerator_reason,
        "ip": vm.ip,
        "mac": vm.mac,
        "tap": vm.tap,
        "nat": vm.nat,
        "pid": vm.pid,
        "created_unix": vm.created_unix,
        "started_unix": vm.started_unix,
        "error": vm.error,
        "vsock_path": vm.vsock_path,
        "ssh_host_public_key": vm.ssh_host_public_key,
        "image_prepared": vm.image_prepared,
        "probes": vm.probes.iter().map(|p| json!({
            "capability": p.capability, "state": p.state, "detail": p.detail
        })).collect::<Vec<_>>(),
    })
}

/// `vm show` and every command that ends with one VM.
pub(super) fn print_vm(ctx: &Context, vm: &pb::Vm) -> Result<()> {
    if ctx.json {
        return output::print_json(&vm_json(vm));
    }
    println!("name:       {}", vm.name);
    println!("state:      {}", state_name(vm.state));
    println!("id:         {}", vm.id);
    if vm.image_prepared {
        println!("image:      {} (its prepared filesystem)", vm.image);
    } else {
        println!("image:      {}", vm.image);
    }
    println!("kernel:     {}", vm.kernel);
    println!("vcpus:      {}", vm.vcpus);
    println!("memory:     {} MiB", vm.memory_mib);
    println!("disk:       {}", output::human_bytes(vm.disk_bytes));
    println!(
        "hypervisor: {}{}",
        hypervisor_name(vm.hypervisor),
        if vm.hypervisor_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", vm.hypervisor_reason)
        }
    );
    if !vm.accelerator.is_empty() {
        println!(
            "accel:      {}{}",
            vm.accelerator,
            if vm.accelerator_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", vm.accelerator_reason)
            }
        );
    }
    println!("ip:         {}", vm.ip);
    println!("mac:        {}", vm.mac);
    println!("tap:        {}", vm.tap);
    println!("nat:        {}", vm.nat);
    if vm.pid > 0 {
        println!("pid:        {}", vm.pid);
    }
    if !vm.ssh_host_public_key.is_empty() {
        println!("host key:   {}", vm.ssh_host_public_key);
    }
    for p in &vm.probes {
        println!("ready:      {}: {} ({})", p.capability, p.state, p.detail);
    }
    if !vm.error.is_empty() {
        println!("error:      {}", vm.error);
    }
    Ok(())
}
