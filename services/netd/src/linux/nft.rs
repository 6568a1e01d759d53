//! Table `inet banger`: one atomic JSON batch through `nft` per change.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::error::Error;
use crate::ops::Guard;

/// Our nftables table: family `inet`, name `banger`.
pub const TABLE: &str = "banger";
/// The set of lease addresses that are masqueraded.
pub const NAT_SET: &str = "nat_sources";
/// The set of (tap, leased address) pairs the bridge guard lets through,
/// in table `bridge banger`.
pub const GUARD_SET: &str = "leases";
/// Bumped whenever the rules change, so an old table is repaired on start.
const RULES_VERSION: &str = "v1";

/// The `nft` side of [`super::LinuxOps`] (stateless: every call runs `nft`).
#[derive(Clone, Copy)]
pub(super) struct Nft;

impl Nft {
    #[tracing::instrument(skip(self))]
    pub(super) async fn ensure_nat_table(&self, bridge: &str) -> Result<bool, Error> {
        if table_matches(list_table().await?.as_ref(), bridge) {
            return Ok(false);
        }
        apply(table_batch(bridge)).await?;
        Ok(true)
    }

    #[tracing::instrument(skip(self))]
    pub(super) async fn remove_nat_table(&self) -> Result<bool, Error> {
        if list_table().await?.is_none() {
            return Ok(false);
        }
        apply(json!({"nftables": [
            {"delete": {"table": {"family": "inet", "name": TABLE}}}
        ]}))
        .await?;
        Ok(true)
    }

    pub(super) async fn nat_installed(&self, bridge: &str) -> Result<bool, Error> {
        Ok(table_matches(list_table().await?.as_ref(), bridge))
    }

    pub(super) async fn nat_sources(&self) -> Result<BTreeSet<Ipv4Addr>, Error> {
        Ok(list_table()
            .await?
            .map(|t| set_elements(&t))
            .unwrap_or_default())
    }

    #[tracing::instrument(skip(self))]
    pub(super) async fn add_nat_source(&self, ip: Ipv4Addr) -> Result<(), Error> {
        apply(json!({"nftables": [{"add": element(ip)}]})).await
    }

    #[tracing::instrument(skip(self))]
    pub(super) async fn remove_nat_source(&self, ip: Ipv4Addr) -> Result<(), Error> {
        // Adding first makes the delete succeed whether or not the element
        // was there, and both happen in one transaction.
        apply(json!({"nftables": [{"add": element(ip)}, {"delete": element(ip)}]})).await
    }

    #[tracing::instrument(skip(self))]
    pub(super) async fn ensure_guard(&self, guard: &Guard) -> Result<bool, Error> {
        if guard_matches(list_guard().await?.as_ref(), guard) {
            return Ok(false);
        }
        apply(guard_batch(guard)).await?;
        Ok(true)
    }

    pub(super) async fn guard_entries(&self) -> Result<BTreeSet<(String, Ipv4Addr)>, Error> {
        Ok(list_guard()
            .await?
            .map(|t| guard_elements(&t))
            .unwrap_or_default())
    }

    #[tracing::instrument(skip(self))]
    pub(super) async fn add_guard_entry(&self, tap: &str, ip: Ipv4Addr) -> Result<(), Error> {
        apply(json!({"nftables": [{"add": guard_element(tap, ip)}]})).await
    }

    #[tracing::instrument(skip(self))]
    pub(super) async fn remove_guard_entry(&self, tap: &str, ip: Ipv4Addr) -> Result<(), Error> {
        apply(json!({"nftables": [
            {"add": guard_element(tap, ip)}, {"delete": guard_element(tap, ip)}
        ]}))
        .await
    }

    pub(super) async fn foreign_forward_drops(&self) -> Result<Vec<String>, Error> {
        let out = tokio::task::spawn_blocking(|| {
            nftables::helper::get_current_ruleset_raw(
                nftables::helper::DEFAULT_NFT,
                ["list", "chains"],
            )
        })
        .await
        .map_err(|e| Error::Nft(format!("listing chains: {e}")))?
        .map_err(|e| Error::Nft(nft_message(e)))?;
        let listing: Value = serde_json::from_str(&out)
            .map_err(|e| Error::Nft(format!("unreadable `nft -j` output: {e}")))?;
        Ok(forward_drops(&listing))
    }
}

fn element(ip: Ipv4Addr) -> Value {
    json!({"element": {"family": "inet", "table": TABLE, "name": NAT_SET, "elem": [ip.to_string()]}})
}

fn comment(what: &str, bridge: &str) -> String {
    format!("banger:{RULES_VERSION}:{what}:{bridge}")
}

fn rule(chain: &str, what: &str, bridge: &str, expr: Value) -> Value {
    json!({"add": {"rule": {
        "family": "inet", "table": TABLE, "chain": chain,
        "comment": comment(what, bridge), "expr": expr
    }}})
}

fn meta_match(key: &str, op: &str, value: &str) -> Value {
    json!({"match": {"op": op, "left": {"meta": {"key": key}}, "right": value}})
}

/// Base chains we own: (name, type, hook, priority).
const CHAINS: [(&str, &str, &str, i32); 2] = [
    // srcnat priority: after any DNAT, like iptables' POSTROUTING nat.
    ("postrouting", "nat", "postrouting", 100),
    ("forward", "filter", "forward", 0),
];

/// The whole table as one batch: create what is missing, replace our
/// chains' rules, keep the set (and its elements). `nft` applies a batch
/// atomically, so the rules are never half there.
pub fn table_batch(bridge: &str) -> Value {
    let mut cmds = vec![
        json!({"add": {"table": {"family": "inet", "name": TABLE}}}),
        json!({"add": {"set": {"family": "inet", "table": TABLE, "name": NAT_SET, "type": "ipv4_addr"}}}),
    ];
    for (name, kind, hook, prio) in CHAINS {
        let chain = json!({"family": "inet", "table": TABLE, "name": name});
        // A base chain's type/hook/priority cannot be changed in place:
        // make sure it exists, empty and delete it, then create it right.
        cmds.push(json!({"add": {"chain": chain}}));
        cmds.push(json!({"flush": {"chain": chain}}));
        cmds.push(json!({"delete": {"chain": chain}}));
        cmds.push(json!({"add": {"chain": {
            "family": "inet", "table": TABLE, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"
        }}}));
    }
    let from_nat_source = json!({"match": {"op": "==",
        "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": format!("@{NAT_SET}")}});
    cmds.push(rule(
        "postrouting",
        "masquerade",
        bridge,
        json!([from_nat_source, meta_match("oifname", "!=", bridge), {"masquerade": null}]),
    ));
    cmds.push(rule(
        "forward",
        "forward-out",
        bridge,
        json!([meta_match("iifname", "==", bridge), from_nat_source,
               meta_match("oifname", "!=", bridge), {"accept": null}]),
    ));
    cmds.push(rule(
        "forward",
        "forward-back",
        bridge,
        json!([meta_match("oifname", "==", bridge),
               {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
               {"accept": null}]),
    ));
    json!({ "nftables": cmds })
}

fn guard_element(tap: &str, ip: Ipv4Addr) -> Value {
    json!({"element": {"family": "bridge", "table": TABLE, "name": GUARD_SET,
        "elem": [{"concat": [tap, ip.to_string()]}]}})
}

/// Base chains of table `bridge banger`: (name, type, hook, priority).
const GUARD_CHAINS: [(&str, &str, &str, i32); 2] = [
    // Before anything else sees the frame on the bridge.
    ("prerouting", "filter", "prerouting", -200),
    ("forward", "filter", "forward", 0),
];

/// Rule comments name the settings they were made for, so a changed subnet
/// or `vm_to_vm` is seen as a table to repair.
fn guard_comment(what: &str, guard: &Guard) -> String {
    format!(
        "banger:{RULES_VERSION}:{what}:{}:{}",
        guard.bridge, guard.subnet
    )
}

/// The guard's rules per chain, as (chain, what, expr).
fn guard_rules(guard: &Guard) -> Vec<(&'static str, &'static str, Value)> {
    let from_tap = meta_match("iifname", "==", &format!("{}*", guard.tap_prefix));
    let not_leased = |field: &str, protocol: &str| {
        json!({"match": {"op": "!=", "right": format!("@{GUARD_SET}"),
            "left": {"concat": [{"meta": {"key": "iifname"}},
                                {"payload": {"protocol": protocol, "field": field}}]}}})
    };
    // Bridge-family hooks see the port a frame came in on, which the inet
    // hooks never do (there the input is the bridge itself): so this is
    // where a source address is bound to its tap, and the inet table's
    // masquerade on `ip saddr @nat_sources` can only ever match a packet
    // that entered on the tap leased that address.
    let mut rules = vec![
        (
            "prerouting",
            "spoofed-ip",
            json!([from_tap.clone(), not_leased("saddr", "ip"), {"drop": null}]),
        ),
        (
            "prerouting",
            "spoofed-arp",
            json!([from_tap.clone(), not_leased("saddr ip", "arp"), {"drop": null}]),
        ),
        (
            // IPv6, VLAN tags, anything else: VMs get IPv4 only.
            "prerouting",
            "other-protocols",
            json!([from_tap.clone(),
                   {"match": {"op": "!=", "left": {"meta": {"key": "protocol"}},
                              "right": {"set": ["ip", "arp"]}}},
                   {"drop": null}]),
        ),
    ];
    if !guard.vm_to_vm {
        rules.push((
            // Routed back out through the gateway (a VM that points its
            // neighbour entry at the gateway's MAC).
            "prerouting",
            "isolate-routed",
            json!([from_tap.clone(),
                   {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                              "right": {"prefix": {"addr": guard.subnet.network().to_string(),
                                                   "len": guard.subnet.prefix_len()}}}},
                   {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                              "right": guard.gateway.to_string()}},
                   {"drop": null}]),
        ));
        rules.push((
            // Bridged port to port (ARP included).
            "forward",
            "isolate-bridged",
            json!([from_tap,
                   meta_match("oifname", "==", &format!("{}*", guard.tap_prefix)),
                   {"drop": null}]),
        ));
    }
    rules
}

/// Table `bridge banger` as one batch: create what is missing, replace the
/// chains' rules, keep the set (and its elements).
pub fn guard_batch(guard: &Guard) -> Value {
    let mut cmds = vec![
        json!({"add": {"table": {"family": "bridge", "name": TABLE}}}),
        json!({"add": {"set": {"family": "bridge", "table": TABLE, "name": GUARD_SET,
            "type": ["ifname", "ipv4_addr"]}}}),
    ];
    for (name, kind, hook, prio) in GUARD_CHAINS {
        let chain = json!({"family": "bridge", "table": TABLE, "name": name});
        cmds.push(json!({"add": {"chain": chain}}));
        cmds.push(json!({"flush": {"chain": chain}}));
        cmds.push(json!({"delete": {"chain": chain}}));
        cmds.push(json!({"add": {"chain": {
            "family": "bridge", "table": TABLE, "name": name,
            "type": kind, "hook": hook, "prio": prio, "policy": "accept"
        }}}));
    }
    for (chain, what, expr) in guard_rules(guard) {
        cmds.push(json!({"add": {"rule": {
            "family": "bridge", "table": TABLE, "chain": chain,
            "comment": guard_comment(what, guard), "expr": expr
        }}}));
    }
    json!({ "nftables": cmds })
}

/// Whether a listing of `bridge banger` has the set, both base chains and
/// exactly the rules `guard` implies, recognised by their comments.
pub fn guard_matches(listing: Option<&Value>, guard: &Guard) -> bool {
    let Some(listing) = listing else {
        return false;
    };
    let objects = listing["nftables"].as_array().cloned().unwrap_or_default();
    let has_set = objects.iter().any(|o| {
        o["set"]["name"] == GUARD_SET && o["set"]["type"] == json!(["ifname", "ipv4_addr"])
    });
    let chains_ok = GUARD_CHAINS.iter().all(|(name, kind, hook, prio)| {
        objects.iter().any(|o| {
            let c = &o["chain"];
            c["name"] == *name && c["type"] == *kind && c["hook"] == *hook && c["prio"] == *prio
        })
    });
    let wanted = guard_rules(guard);
    let rules_ok = GUARD_CHAINS.iter().all(|(chain, ..)| {
        let present: Vec<String> = objects
            .iter()
            .filter(|o| o["rule"]["chain"] == *chain)
            .map(|o| o["rule"]["comment"].as_str().unwrap_or("").to_owned())
            .collect();
        let want: Vec<String> = wanted
            .iter()
            .filter(|(c, ..)| c == chain)
            .map(|(_, what, _)| guard_comment(what, guard))
            .collect();
        present == want
    });
    has_set && chains_ok && rules_ok
}

/// (tap, address) pairs in the `leases` set of a `bridge banger` listing.
pub fn guard_elements(listing: &Value) -> BTreeSet<(String, Ipv4Addr)> {
    let objects = listing["nftables"].as_array().cloned().unwrap_or_default();
    objects
        .iter()
        .filter(|o| o["set"]["name"] == GUARD_SET)
        .flat_map(|o| o["set"]["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| {
            let pair = e["concat"].as_array()?;
            let tap = pair.first()?.as_str()?.to_owned();
            let ip = pair.get(1)?.as_str()?.parse().ok()?;
            Some((tap, ip))
        })
        .collect()
}

/// Whether a listing of our table (`nft -j list table inet banger`) has
/// the set, both base chains as we make them, and exactly our rules for
/// `bridge`, recognised by their comments.
pub fn table_matches(listing: Option<&Value>, bridge: &str) -> bool {
    let Some(listing) = listing else {
        return false;
    };
    let objects = listing["nftables"].as_array().cloned().unwrap_or_default();
    let has_set = objects
        .iter()
        .any(|o| o["set"]["name"] == NAT_SET && o["set"]["type"] == "ipv4_addr");
    let chains_ok = CHAINS.iter().all(|(name, kind, hook, prio)| {
        objects.iter().any(|o| {
            let c = &o["chain"];
            c["name"] == *name && c["type"] == *kind && c["hook"] == *hook && c["prio"] == *prio
        })
    });
    let rules_in = |chain: &str| -> Vec<String> {
        objects
            .iter()
            .filter(|o| o["rule"]["chain"] == chain)
            .map(|o| o["rule"]["comment"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    has_set
        && chains_ok
        && rules_in("postrouting") == vec![comment("masquerade", bridge)]
        && rules_in("forward")
            == vec![
                comment("forward-out", bridge),
                comment("forward-back", bridge),
            ]
}

/// Addresses in the `nat_sources` set of a table listing.
pub fn set_elements(listing: &Value) -> BTreeSet<Ipv4Addr> {
    let objects = listing["nftables"].as_array().cloned().unwrap_or_default();
    objects
        .iter()
        .filter(|o| o["set"]["name"] == NAT_SET)
        .flat_map(|o| o["set"]["elem"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| {
            e.as_str()
                .map(str::to_owned)
                .or_else(|| e["elem"]["val"].as_str().map(str::to_owned))
        })
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Forward-hook chains with policy drop outside our table, from
/// `nft -j list chains`.
pub fn forward_drops(listing: &Value) -> Vec<String> {
    let objects = listing["nftables"].as_array().cloned().unwrap_or_default();
    objects
        .iter()
        .map(|o| &o["chain"])
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop")
        .filter(|c| !(c["family"] == "inet" && c["table"] == TABLE))
        .map(|c| {
            format!(
                "{} {} {}",
                c["family"].as_str().unwrap_or("?"),
                c["table"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// `nft -j list table inet banger`, or `None` when the table is absent.
async fn list_table() -> Result<Option<Value>, Error> {
    list_family_table("inet").await
}

/// `nft -j list table bridge banger`, or `None` when the table is absent.
async fn list_guard() -> Result<Option<Value>, Error> {
    list_family_table("bridge").await
}

/// `nft -j list table FAMILY banger`, or `None` when the table is absent.
async fn list_family_table(family: &'static str) -> Result<Option<Value>, Error> {
    let out = tokio::task::spawn_blocking(move || {
        nftables::helper::get_current_ruleset_raw(
            nftables::helper::DEFAULT_NFT,
            ["list", "table", family, TABLE],
        )
    })
    .await
    .map_err(|e| Error::Nft(format!("listing table {family} {TABLE}: {e}")))?;
    match out {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Nft(format!("unreadable `nft -j` output: {e}"))),
        Err(nftables::helper::NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::Nft(nft_message(e))),
    }
}

/// Applies one batch atomically, validated against the crate's schema.
async fn apply(batch: Value) -> Result<(), Error> {
    let doc: nftables::schema::Nftables<'static> = serde_json::from_value(batch).map_err(|e| {
        Error::Nft(format!(
            "internal: batch does not match the nftables schema: {e}"
        ))
    })?;
    tokio::task::spawn_blocking(move || nftables::helper::apply_ruleset(&doc))
        .await
        .map_err(|e| Error::Nft(format!("applying a batch: {e}")))?
        .map_err(|e| Error::Nft(nft_message(e)))
}

fn nft_message(e: nftables::helper::NftablesError) -> String {
    match e {
        nftables::helper::NftablesError::NftFailed { hint, stderr, .. }
            if stderr.trim().is_empty() =>
        {
            // The crate lets `nft` write its reason to our stderr (the log).
            format!("`nft` failed while {hint} (its message is in the banger-netd log)")
        }
        nftables::helper::NftablesError::NftFailed { hint, stderr, .. } => {
            format!("`nft` failed while {hint}: {}", stderr.trim())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_match_the_nftables_schema() {
        let guard = |vm_to_vm| Guard {
            bridge: "banger0".into(),
            tap_prefix: "bg-".into(),
            subnet: "172.30.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(172, 30, 0, 1),
            vm_to_vm,
        };
        for batch in [
            table_batch("banger0"),
            json!({"nftables": [{"add": element(Ipv4Addr::new(172, 30, 0, 2))}]}),
            guard_batch(&guard(false)),
            guard_batch(&guard(true)),
            json!({"nftables": [{"add": guard_element("bg-a", Ipv4Addr::new(172, 30, 0, 2))}]}),
        ] {
            serde_json::from_value::<nftables::schema::Nftables>(batch).unwrap();
        }
    }

    #[test]
    fn finds_foreign_forward_drops() {
        let listing = json!({"nftables": [
            {"metainfo": {}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "policy": "drop", "prio": 0, "type": "filter"}},
            {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "policy": "drop", "prio": 0, "type": "filter"}},
            {"chain": {"family": "inet", "table": "banger", "name": "forward", "hook": "forward", "policy": "drop", "prio": 0, "type": "filter"}},
            {"chain": {"family": "inet", "table": "fw", "name": "fwd", "hook": "forward", "policy": "accept", "prio": 0, "type": "filter"}},
            {"chain": {"family": "ip", "table": "filter", "name": "DOCKER"}},
        ]});
        assert_eq!(
            forward_drops(&listing),
            vec!["ip filter FORWARD".to_owned()]
        );
    }

    #[test]
    fn recognises_our_table() {
        let listing = json!({"nftables": [
            {"metainfo": {}},
            {"table": {"family": "inet", "name": "banger", "handle": 1}},
            {"set": {"family": "inet", "name": "nat_sources", "table": "banger", "type": "ipv4_addr", "handle": 2,
                     "elem": ["172.30.0.2", "172.30.0.9"]}},
            {"chain": {"family": "inet", "table": "banger", "name": "postrouting", "handle": 3,
                       "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "banger", "name": "forward", "handle": 4,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "banger", "chain": "postrouting", "handle": 5,
                      "comment": "banger:v1:masquerade:banger0", "expr": []}},
            {"rule": {"family": "inet", "table": "banger", "chain": "forward", "handle": 6,
                      "comment": "banger:v1:forward-out:banger0", "expr": []}},
            {"rule": {"family": "inet", "table": "banger", "chain": "forward", "handle": 7,
                      "comment": "banger:v1:forward-back:banger0", "expr": []}},
        ]});
        assert!(table_matches(Some(&listing), "banger0"));
        assert!(!table_matches(Some(&listing), "br1"), "bridge renamed");
        assert!(!table_matches(None, "banger0"));
        assert_eq!(
            set_elements(&listing),
            [Ipv4Addr::new(172, 30, 0, 2), Ipv4Addr::new(172, 30, 0, 9)]
                .into_iter()
                .collect()
        );
        let mut extra = listing.clone();
        extra["nftables"]
            .as_array_mut()
            .unwrap()
            .push(json!({"rule": {
            "family": "inet", "table": "banger", "chain": "forward", "handle": 8, "expr": []}}));
        assert!(
            !table_matches(Some(&extra), "banger0"),
            "foreign rule in our chain"
        );
    }
}
