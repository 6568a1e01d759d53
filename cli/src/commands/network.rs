//! `banger network …`: read-only views of what banger-netd manages.

use std::process::ExitCode;

use anyhow::Result;
use banger_proto::config::Service;
use banger_proto::netd::v1 as pb;
use banger_proto::netd::v1::netd_client::NetdClient;
use serde::Serialize;

use crate::context::Context;
use crate::output;

/// `banger network` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum NetworkCommand {
    /// Bridge, subnet, NAT, uplinks, forwarding, leases and problems found.
    Status,
    /// Every VM's network lease (tap, IP, MAC, NAT).
    Leases,
}

pub async fn run(ctx: &Context, command: NetworkCommand) -> Result<ExitCode> {
    let mut client = NetdClient::new(ctx.channel(Service::Netd).await?);
    match command {
        NetworkCommand::Status => {
            let status = client
                .get_status(pb::GetStatusRequest {})
                .await?
                .into_inner();
            let view = StatusView::from(status);
            if ctx.json {
                output::print_json(&view)?;
            } else {
                print!("{}", render_status(&view));
            }
            // Problems are reported, not failures: the command worked.
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Leases => {
            let leases = client
                .list_leases(pb::ListLeasesRequest {})
                .await?
                .into_inner()
                .leases;
            let views: Vec<LeaseView> = leases.into_iter().map(LeaseView::from).collect();
            if ctx.json {
                output::print_json(&views)?;
            } else if views.is_empty() {
                eprintln!("no network leases (vmm allocates one per running VM)");
            } else {
                println!("{}", render_leases(&views));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `banger network status --json`.
#[derive(Debug, Serialize, PartialEq)]
struct StatusView {
    bridge: String,
    bridge_up: bool,
    subnet: String,
    gateway: String,
    nat: bool,
    uplinks: Vec<String>,
    ip_forward: bool,
    leases: u32,
    free_addresses: u32,
    problems: Vec<String>,
}

impl From<pb::NetworkStatus> for StatusView {
    fn from(s: pb::NetworkStatus) -> Self {
        StatusView {
            bridge: s.bridge,
            bridge_up: s.bridge_up,
            subnet: s.subnet,
            gateway: s.gateway,
            nat: s.nat_enabled,
            uplinks: s.uplinks,
            ip_forward: s.ip_forward,
            leases: s.lease_count,
            free_addresses: s.free_addresses,
            problems: s.problems,
        }
    }
}

/// One row of `banger network leases --json`.
#[derive(Debug, Serialize, PartialEq)]
struct LeaseView {
    vm: String,
    tap: String,
    ip: String,
    prefix_len: u32,
    gateway: String,
    mac: String,
    dns: Vec<String>,
    nat: bool,
    owner_uid: u32,
    owner_gid: u32,
    created_unix: i64,
}

impl From<pb::Lease> for LeaseView {
    fn from(l: pb::Lease) -> Self {
        LeaseView {
            vm: l.vm_id,
            tap: l.tap,
            ip: l.ip,
            prefix_len: l.prefix_len,
            gateway: l.gateway,
            mac: l.mac,
            dns: l.dns,
            nat: l.nat,
            owner_uid: l.owner_uid,
            owner_gid: l.owner_gid,
            created_unix: l.created_unix,
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn render_status(s: &StatusView) -> String {
    let mut t = output::table(["", ""]);
    let uplinks = if s.uplinks.is_empty() {
        "none".to_owned()
    } else {
        s.uplinks.join(", ")
    };
    for (k, v) in [
        (
            "bridge",
            format!("{} ({})", s.bridge, if s.bridge_up { "up" } else { "DOWN" }),
        ),
        ("subnet", s.subnet.clone()),
        ("gateway", s.gateway.clone()),
        ("nat", yes_no(s.nat).to_owned()),
        ("uplinks", uplinks),
        ("ip forwarding", yes_no(s.ip_forward).to_owned()),
        ("leases", s.leases.to_string()),
        ("free addresses", s.free_addresses.to_string()),
    ] {
        t.add_row([k.to_owned(), v]);
    }
    let mut out = format!("{}\n", t.lines().skip(1).collect::<Vec<_>>().join("\n"));
    if s.problems.is_empty() {
        out.push_str("\nno problems found\n");
    } else {
        out.push_str("\nproblems:\n");
        for p in &s.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out
}

fn render_leases(leases: &[LeaseView]) -> String {
    let mut t = output::table(["VM", "TAP", "IP", "MAC", "NAT"]);
    for l in leases {
        t.add_row([
            l.vm.clone(),
            l.tap.clone(),
            format!("{}/{}", l.ip, l.prefix_len),
            l.mac.clone(),
            yes_no(l.nat).to_owned(),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> pb::NetworkStatus {
        pb::NetworkStatus {
            bridge: "banger0".into(),
            bridge_up: true,
            subnet: "172.30.0.0/24".into(),
            gateway: "172.30.0.1".into(),
            nat_enabled: true,
            uplinks: vec!["eth0".into()],
            ip_forward: true,
            lease_count: 1,
            free_addresses: 252,
            problems: vec![],
        }
    }

    #[test]
    fn status_renders_every_field() {
        let text = render_status(&StatusView::from(status()));
        for needle in [
            "banger0 (up)",
            "172.30.0.0/24",
            "172.30.0.1",
            "eth0",
            "252",
            "no problems found",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
        let mut bad = status();
        bad.problems = vec!["bridge banger0 is down: restart banger-netd".into()];
        bad.bridge_up = false;
        let text = render_status(&StatusView::from(bad));
        assert!(
            text.contains("DOWN") && text.contains("  - bridge banger0 is down"),
            "{text}"
        );
    }

    #[test]
    fn leases_table_and_json() {
        let lease = pb::Lease {
            vm_id: "web".into(),
            tap: "bg-web".into(),
            ip: "172.30.0.2".into(),
            prefix_len: 24,
            gateway: "172.30.0.1".into(),
            mac: "02:ba:ac:1e:00:02".into(),
            dns: vec!["10.0.0.2".into()],
            nat: true,
            owner_uid: 990,
            owner_gid: 990,
            created_unix: 1,
        };
        let views = vec![LeaseView::from(lease)];
        let text = render_leases(&views);
        let header = text.lines().next().unwrap();
        for col in ["VM", "TAP", "IP", "MAC", "NAT"] {
            assert!(header.contains(col), "{header}");
        }
        assert!(text.contains("bg-web") && text.contains("172.30.0.2/24") && text.contains("yes"));
        let json = serde_json::to_value(&views).unwrap();
        assert_eq!(json[0]["vm"], "web");
        assert_eq!(json[0]["mac"], "02:ba:ac:1e:00:02");
        assert_eq!(json[0]["nat"], true);
    }
}
