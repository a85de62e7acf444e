//! Invariants shared by the fault campaign and the model test: what kmsroute must never
//! change, read off an emulator dump.

use kmsroute::emulator::Seed;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Everything kmsroute does not own, keyed, as the emulator holds it now.
pub fn foreign(dump: &Seed) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for r in &dump.resources {
        let id = r["id"].as_str().unwrap_or_default().to_ascii_lowercase();
        let ours = r["tags"]["managed-by"] == "kmsroute";
        if id.contains("/virtualnetworks/") {
            for s in r["properties"]["subnets"].as_array().into_iter().flatten() {
                let sid = s["id"].as_str().unwrap_or_default().to_ascii_lowercase();
                let mut props = s["properties"].clone();
                // Read-only state ARM fills in itself (also inside service endpoints).
                strip_etags(&mut props);
                let table = props
                    .as_object_mut()
                    .and_then(|p| p.remove("routeTable"))
                    .and_then(|t| t["id"].as_str().map(str::to_ascii_lowercase));
                out.insert(format!("subnet {sid}"), props);
                // An association that exists is never replaced (kmsroute only fills empty ones).
                if let Some(t) = table {
                    out.insert(format!("association {sid}"), json!(t));
                }
            }
        } else if id.contains("/routetables/") {
            for route in r["properties"]["routes"].as_array().into_iter().flatten() {
                let name = route["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                if name.starts_with("kms-") {
                    continue;
                }
                let mut p = route["properties"].clone();
                if let Some(o) = p.as_object_mut() {
                    o.remove("provisioningState");
                }
                out.insert(format!("route {id}/{name}"), p);
            }
            if !ours {
                out.insert(
                    format!("table {id}"),
                    json!({"tags": r["tags"], "bgp": r["properties"]["disableBgpRoutePropagation"]}),
                );
            }
        } else {
            let mut whole = r.clone();
            strip_etags(&mut whole);
            out.insert(format!("resource {id}"), whole);
        }
    }
    out
}

fn strip_etags(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("etag");
            o.remove("provisioningState");
            o.values_mut().for_each(strip_etags);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_etags),
        _ => {}
    }
}

/// Keys of `expected` that are gone or differ in `now`, plus foreign items that appeared from
/// nowhere (associations may appear: kmsroute fills empty ones).
pub fn diff(expected: &BTreeMap<String, Value>, now: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = expected
        .iter()
        .filter(|(k, v)| now.get(*k) != Some(v))
        .map(|(k, _)| format!("changed or lost: {k}"))
        .collect();
    out.extend(
        now.keys()
            .filter(|k| !expected.contains_key(*k) && !k.starts_with("association "))
            .map(|k| format!("appeared: {k}")),
    );
    out
}

/// Route tables holding two routes for one prefix (a duplicate kmsroute would have made).
pub fn duplicate_prefixes(dump: &Seed) -> Vec<String> {
    let mut out = Vec::new();
    for r in &dump.resources {
        let mut seen = BTreeSet::new();
        for route in r["properties"]["routes"].as_array().into_iter().flatten() {
            let p = route["properties"]["addressPrefix"]
                .as_str()
                .unwrap_or_default();
            if p.ends_with("/32") && !seen.insert(p.to_string()) {
                out.push(format!("{} {p}", r["id"]));
            }
        }
    }
    out
}

/// Owned routes (`kms-*`) that are anything but a `/32` to `Internet` for one of `allowed`.
pub fn bad_owned_routes(dump: &Seed, allowed: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for r in &dump.resources {
        for route in r["properties"]["routes"].as_array().into_iter().flatten() {
            let name = route["name"].as_str().unwrap_or_default();
            if !name.to_ascii_lowercase().starts_with("kms-") {
                continue;
            }
            let p = &route["properties"];
            let prefix = p["addressPrefix"].as_str().unwrap_or_default();
            if p["nextHopType"] != "Internet" || !allowed.contains(prefix) {
                out.push(format!("{} {name} {prefix} {}", r["id"], p["nextHopType"]));
            }
        }
    }
    out
}
