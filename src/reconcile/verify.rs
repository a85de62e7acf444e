//! After the writes: does traffic to KMS really leave through the routes? Effective-route
//! verification (one sampled NIC per managed route table) and KMS address drift (the cloud's
//! KMS names resolved and compared with the routed addresses).

use super::Reason;
use crate::api::{DesiredState, Destination, Problem, check_host_address, route_name_for};
use crate::azure::{ArmError, BUDGET_EXHAUSTED, ErrorClass, NetworkApi};
use crate::dns::Resolver;
use crate::plan::{SubnetVerdict, Verdict};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// What effective-route verification found for one policy in one pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationReport {
    /// Route tables sampled and read.
    pub checked: usize,
    pub verified: usize,
    pub not_verified: usize,
    /// Tables not read this pass: no attached NIC, the per-pass cap, or the call budget.
    pub not_checked: usize,
    /// Effective-route reads that failed (ARM error).
    pub failed: usize,
}

/// What resolving the KMS names found for one policy in one pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsReport {
    /// Public IPv4 addresses the names resolved to.
    pub resolved: Vec<Ipv4Addr>,
    /// Resolved but not among the policy's destinations (before `routeResolvedAddresses`).
    pub drift: Vec<Ipv4Addr>,
    /// Lookup failures and refused answers, one line each.
    pub errors: Vec<String>,
    /// True when the drifted addresses were added to this pass's destinations.
    pub routed: bool,
}

/// Resolves the KMS names of every policy with `resolveDns`, adds the drifted addresses to the
/// destinations of those that also route them, and reports per policy.
pub async fn resolve(
    resolver: &dyn Resolver,
    policies: &[DesiredState],
) -> (Vec<DesiredState>, BTreeMap<String, DnsReport>) {
    resolve_some(resolver, policies, &|_| true).await
}

/// [`resolve`] for the policies `include` picks; the others are returned as they are.
pub async fn resolve_some(
    resolver: &dyn Resolver,
    policies: &[DesiredState],
    include: &(dyn Fn(&DesiredState) -> bool + Sync),
) -> (Vec<DesiredState>, BTreeMap<String, DnsReport>) {
    let mut cache: BTreeMap<&'static str, Result<Vec<Ipv4Addr>, crate::dns::DnsError>> =
        BTreeMap::new();
    let mut out = Vec::with_capacity(policies.len());
    let mut reports = BTreeMap::new();
    for p in policies {
        if !p.resolve_dns || !include(p) {
            out.push(p.clone());
            continue;
        }
        let mut report = DnsReport::default();
        let mut resolved: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for &host in p.cloud.endpoints().kms_hosts {
            if !cache.contains_key(host) {
                cache.insert(host, resolver.resolve(host).await);
            }
            match &cache[host] {
                Ok(addrs) if addrs.is_empty() => {
                    report.errors.push(format!("{host}: no IPv4 address"))
                }
                Ok(addrs) => {
                    for ip in addrs {
                        // A DNS answer is input like any other: never route a private,
                        // reserved or otherwise non-public address because a resolver said so.
                        match check_host_address(&ip.to_string()) {
                            Ok(ip) => {
                                resolved.insert(ip);
                            }
                            Err(why) => report.errors.push(format!("{host}: ignored {why}")),
                        }
                    }
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        let routed: BTreeSet<Ipv4Addr> = p.destinations.iter().map(|d| d.address).collect();
        report.resolved = resolved.iter().copied().collect();
        report.drift = resolved.difference(&routed).copied().collect();
        let mut p = p.clone();
        if p.route_resolved_addresses && !report.drift.is_empty() {
            for &address in &report.drift {
                p.destinations.push(Destination {
                    address,
                    route_name: route_name_for(&p.route_name_prefix, address),
                });
            }
            p.destinations.sort();
            p.destinations.dedup_by_key(|d| d.address);
            report.routed = true;
        }
        reports.insert(p.name.clone(), report);
        out.push(p);
    }
    (out, reports)
}

/// Problems for a DNS report: one `KmsAddressDrift` listing the addresses, one `DnsFailed` per
/// failure. Policy-level, so `subnetId` is empty.
pub fn dns_problems(report: &DnsReport) -> Vec<Problem> {
    let mut out = Vec::new();
    if !report.drift.is_empty() {
        let list: Vec<String> = report.drift.iter().map(Ipv4Addr::to_string).collect();
        out.push(Problem {
            subnet_id: String::new(),
            reason: Reason::KmsAddressDrift.code().into(),
            message: if report.routed {
                format!(
                    "the KMS names resolve to {} which the catalog does not list; routed because spec.kms.routeResolvedAddresses is set",
                    list.join(", ")
                )
            } else {
                format!(
                    "the KMS names resolve to {} which is not routed; add it to spec.kms.additionalAddresses or set spec.kms.routeResolvedAddresses",
                    list.join(", ")
                )
            },
        });
    }
    for e in &report.errors {
        out.push(Problem {
            subnet_id: String::new(),
            reason: Reason::DnsFailed.code().into(),
            message: e.clone(),
        });
    }
    out
}

/// Reads the effective routes of one attached NIC per managed route table (up to the policy's
/// cap, the sample rotating with `round`) and checks every KMS destination.
pub async fn verify(
    api: &dyn NetworkApi,
    policies: &[DesiredState],
    verdicts: &[SubnetVerdict],
    round: u64,
) -> Result<BTreeMap<String, (VerificationReport, Vec<Problem>)>, ArmError> {
    let verifying: Vec<&DesiredState> = policies
        .iter()
        .filter(|p| p.verify_effective_routes)
        .collect();
    let mut out = BTreeMap::new();
    if verifying.is_empty() {
        return Ok(out);
    }
    let subscriptions: BTreeSet<String> =
        verifying.iter().flat_map(|p| p.subscriptions()).collect();
    let nics = api.network_interfaces(&subscriptions).await?;
    // Attached NICs by lower-cased subnet ID, sorted for a stable rotation.
    let mut by_subnet: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for nic in nics.into_iter().filter(|n| n.attached) {
        if let Some(s) = nic.subnet {
            by_subnet
                .entry(s.key().to_string())
                .or_default()
                .push(nic.id);
        }
    }
    for list in by_subnet.values_mut() {
        list.sort();
    }
    for p in verifying {
        let addresses: Vec<Ipv4Addr> = p.destinations.iter().map(|d| d.address).collect();
        // Subnets on a table the policy manages: in sync, or in conflict (where a foreign
        // route is expected to win, and verification names it).
        let mut tables: BTreeMap<String, Vec<&SubnetVerdict>> = BTreeMap::new();
        for v in verdicts.iter().filter(|v| {
            v.policy == p.name && matches!(v.verdict, Verdict::InSync | Verdict::Conflict { .. })
        }) {
            if let Some(t) = &v.route_table {
                tables.entry(t.key().to_string()).or_default().push(v);
            }
        }
        let mut report = VerificationReport::default();
        let mut problems = Vec::new();
        let keys: Vec<&String> = tables.keys().collect();
        let n = keys.len();
        let cap = p.verify_max_per_pass.max(1);
        let start = if n == 0 {
            0
        } else {
            (round as usize).wrapping_mul(cap) % n
        };
        let mut reads = 0usize;
        for i in 0..n {
            let key = keys[(start + i) % n];
            let subnets = &tables[key];
            let candidates: Vec<(&SubnetVerdict, &Vec<String>)> = subnets
                .iter()
                .filter_map(|v| by_subnet.get(v.subnet.key()).map(|nics| (*v, nics)))
                .collect();
            if candidates.is_empty() || reads >= cap {
                report.not_checked += 1;
                continue;
            }
            let (v, nics) = candidates[(round as usize) % candidates.len()];
            let nic = &nics[(round as usize) % nics.len()];
            reads += 1;
            match api.effective_routes(nic).await {
                Ok(routes) => {
                    report.checked += 1;
                    let failures = crate::effective::check(&routes, &addresses);
                    if failures.is_empty() {
                        report.verified += 1;
                    } else {
                        report.not_verified += 1;
                        let detail: Vec<String> = failures
                            .iter()
                            .map(|f| match &f.winning {
                                Some(w) => format!("{} ({}): wins {w}", f.address, f.reason),
                                None => format!("{} ({}): no active route", f.address, f.reason),
                            })
                            .collect();
                        problems.push(Problem {
                            subnet_id: v.subnet.to_string(),
                            reason: Reason::NotVerified.code().into(),
                            message: format!(
                                "effective routes of NIC {}: {}",
                                nic.rsplit('/').next().unwrap_or(nic),
                                detail.join("; ")
                            ),
                        });
                    }
                }
                Err(e)
                    if e.class == ErrorClass::Throttled
                        && e.code.as_deref() == Some(BUDGET_EXHAUSTED) =>
                {
                    report.not_checked += 1;
                }
                Err(e) => {
                    report.failed += 1;
                    problems.push(Problem {
                        subnet_id: v.subnet.to_string(),
                        reason: Reason::VerificationFailed.code().into(),
                        message: e.to_string(),
                    });
                }
            }
        }
        out.insert(p.name.clone(), (report, problems));
    }
    Ok(out)
}
