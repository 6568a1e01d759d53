//! The leak checker of the chaos and end-to-end tiers: everything a VM can
//! own, compared with the VMs that exist. Run it inside the test's network
//! namespace, with the four services up and idle.
//!
//! What counts as a leak: a `bg-` tap without a lease; a lease without a VM
//! record (or a VM whose lease netd forgot); a guard or NAT element beyond
//! the leases'; a rule of banger's nft tables present twice; an entry of
//! `$STATE/vms` that is no VM (except `.prepared`/`.failed`); a hypervisor
//! or vhost-device-vsock process naming the home that no running VM owns;
//! an image or kernel hold of no VM; a staging or temp file under `$STATE`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Every leak found, one line each (empty: no leak). `banger_json` runs
/// `banger --json ARGS` against the home and returns its parsed output.
pub fn leaks(home: &Path, banger_json: &dyn Fn(&[&str]) -> Value) -> Vec<String> {
    let mut out = Vec::new();
    let vms = banger_json(&["vm", "list"]);
    let vms = vms.as_array().cloned().unwrap_or_default();
    let leases = banger_json(&["network", "leases"]);
    let leases = leases.as_array().cloned().unwrap_or_default();
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();

    let vm_ids: BTreeSet<String> = vms.iter().map(|v| s(v, "id")).collect();
    let vm_names: BTreeSet<String> = vms.iter().map(|v| s(v, "name")).collect();
    let lease_vms: BTreeSet<String> = leases.iter().map(|l| s(l, "vm")).collect();
    let lease_taps: BTreeSet<String> = leases.iter().map(|l| s(l, "tap")).collect();
    let lease_pairs: BTreeSet<(String, String)> =
        leases.iter().map(|l| (s(l, "tap"), s(l, "ip"))).collect();
    let nat_ips: BTreeSet<String> = leases
        .iter()
        .filter(|l| l["nat"].as_bool() == Some(true))
        .map(|l| s(l, "ip"))
        .collect();

    for l in &leases {
        if !vm_ids.contains(&s(l, "vm")) {
            out.push(format!("lease of no VM: {l}"));
        }
    }
    for v in &vms {
        if !s(v, "tap").is_empty() && !lease_vms.contains(&s(v, "id")) {
            out.push(format!(
                "VM {} has a tap {} netd holds no lease for",
                s(v, "name"),
                s(v, "tap")
            ));
        }
    }
    for tap in taps() {
        if !lease_taps.contains(&tap) {
            out.push(format!("tap without a lease: {tap}"));
        }
    }
    for pair in guard_elements() {
        if !lease_pairs.contains(&pair) {
            out.push(format!("guard element without a lease: {pair:?}"));
        }
    }
    for ip in nat_elements() {
        if !nat_ips.contains(&ip) {
            out.push(format!("NAT element without a NAT lease: {ip}"));
        }
    }
    out.extend(duplicated_rules());

    let vms_dir = home.join("state/vms");
    for entry in std::fs::read_dir(&vms_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != ".prepared" && name != ".failed" && !vm_names.contains(&name) {
            out.push(format!("{} is no VM's", entry.path().display()));
        }
    }

    // An orphaned VM (its record was lost, its hypervisor found and
    // listed again) is known: its process is not a leak while it runs.
    let running_pids: BTreeSet<i64> = vms
        .iter()
        .filter(|v| v["state"] == "running" || v["state"] == "orphaned")
        .filter_map(|v| v["pid"].as_i64())
        .collect();
    let (hypervisors, helpers) = processes_naming(home);
    for (pid, cmd) in &hypervisors {
        if !running_pids.contains(pid) {
            out.push(format!("hypervisor of no running VM: {pid} {cmd}"));
        }
    }
    if helpers.len() > running_pids.len() {
        out.push(format!(
            "{} vhost-device-vsock processes for {} running VMs: {helpers:?}",
            helpers.len(),
            running_pids.len()
        ));
    }

    for (what, list) in [("image", ["image", "list"]), ("kernel", ["kernel", "list"])] {
        for item in banger_json(&list).as_array().cloned().unwrap_or_default() {
            for holder in item["holders"].as_array().cloned().unwrap_or_default() {
                let holder = holder.as_str().unwrap_or_default().to_owned();
                if !vm_ids.contains(&holder) {
                    out.push(format!(
                        "{what} {} held by {holder}, no VM",
                        s(&item, "name")
                    ));
                }
            }
        }
    }

    let mut staging = Vec::new();
    temp_files(&home.join("state"), &mut staging);
    out.extend(
        staging
            .into_iter()
            .map(|p| format!("staging/temp file left: {p}")),
    );
    out
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `bg-` links of this namespace.
pub fn taps() -> Vec<String> {
    sh("ip -o link show")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or_default().to_owned())
        .filter(|n| n.starts_with("bg-"))
        .collect()
}

fn set_elements(family: &str, set: &str) -> Vec<Value> {
    let listing: Value =
        serde_json::from_str(&sh(&format!("nft -j list set {family} banger {set}")))
            .unwrap_or(Value::Null);
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["set"]["elem"].as_array().cloned())
        .flatten()
        .collect()
}

/// The bridge guard's (tap, ip) pairs.
fn guard_elements() -> Vec<(String, String)> {
    set_elements("bridge", "leases")
        .into_iter()
        .map(|e| {
            let parts = e["concat"].as_array().cloned().unwrap_or_default();
            let part = |i: usize| parts.get(i).map(plain).unwrap_or_default();
            (part(0), part(1))
        })
        .collect()
}

fn nat_elements() -> Vec<String> {
    set_elements("inet", "nat_sources")
        .iter()
        .map(plain)
        .collect()
}

fn plain(v: &Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string())
}

/// Rules of banger's tables that appear twice in one chain.
fn duplicated_rules() -> Vec<String> {
    let mut out = Vec::new();
    for family in ["inet", "bridge"] {
        let listing: Value =
            serde_json::from_str(&sh(&format!("nft -j list table {family} banger")))
                .unwrap_or(Value::Null);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for o in listing["nftables"].as_array().into_iter().flatten() {
            if let Some(rule) = o.get("rule") {
                let key = format!("{} {}", rule["chain"], rule["expr"]);
                *seen.entry(key).or_default() += 1;
            }
        }
        for (rule, n) in seen.into_iter().filter(|(_, n)| *n > 1) {
            out.push(format!("{family} banger rule present {n} times: {rule}"));
        }
    }
    out
}

/// A pid and its command line.
type Process = (i64, String);

/// (pid, cmdline) of QEMU/Firecracker and of vhost-device-vsock processes
/// whose command line names `home`.
fn processes_naming(home: &Path) -> (Vec<Process>, Vec<Process>) {
    let needle = home.display().to_string();
    let mut hypervisors = Vec::new();
    let mut helpers = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if !cmd.contains(&needle) {
            continue;
        }
        if cmd.contains("vhost-device-vsock") {
            helpers.push((pid, cmd));
        } else if cmd.contains("qemu-system") || cmd.contains("firecracker") {
            hypervisors.push((pid, cmd));
        }
    }
    (hypervisors, helpers)
}

/// Temp and staging leftovers: `.tmp*`, `.staging-*` (kernelcat), `*.tmp`
/// and `*.partial` entries, and anything inside a `.staging` (imagestore)
/// or `tmp` (blobs) dir.
fn temp_files(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if name.starts_with(".tmp")
            || name.starts_with(".staging-")
            || name.ends_with(".tmp")
            || name.ends_with(".partial")
        {
            out.push(path.display().to_string());
        } else if is_dir && (name == ".staging" || name == "tmp") {
            for inner in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                out.push(inner.path().display().to_string());
            }
        } else if is_dir {
            temp_files(&path, out);
        }
    }
}
