//! Phase 1 of a pass, its scope: which subscriptions the policies cover (management groups
//! expanded, one descendants read per group and pass), which identity reaches each scope, and
//! which addresses KMS names resolve to (`spec.kms.resolveDns`). Each with its errors, which the
//! report turns into problems: a group ARM refuses, two identities for one scope, a failed or
//! drifted DNS answer.

use super::identities::{self, IdentityConflict};
use super::{Pass, Reason};
use crate::api::{DesiredState, Destination, Problem, check_host_address, route_name_for};
use crate::azure::{ArmError, NetworkApi};
use crate::dns::Resolver;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Management groups that could not be read, by policy: (group, why).
pub type GroupErrors = BTreeMap<String, Vec<(String, ArmError)>>;

/// What a pass covers, and what went wrong finding it out.
#[derive(Debug)]
pub struct Scope<'a> {
    /// The policies with their management groups expanded into subscriptions (and cleared) and,
    /// where they route resolved addresses, their DNS answers among the destinations; the
    /// policies as given when neither applies (no copy per pass).
    pub policies: Cow<'a, [DesiredState]>,
    pub group_errors: GroupErrors,
    /// Scopes two policies want reached with different identities (the younger is told).
    pub identity_conflicts: Vec<IdentityConflict>,
    /// KMS name resolution, by policy (only the pass's own policies resolve).
    pub dns: BTreeMap<String, DnsReport>,
}

/// The scope of a pass over `policies`.
pub async fn scope<'a>(p: &Pass<'_>, policies: &'a [DesiredState]) -> Result<Scope<'a>, ArmError> {
    // Each scope is reached as its policy's `spec.azure.identity` (the expansion routes the
    // groups and their subscriptions itself).
    let (grouped, group_errors, identity_conflicts) = if has_groups(policies) {
        let (expanded, errors) = expand_management_groups(p.api, policies).await?;
        let conflicts = identities::routes(&expanded).1;
        (Cow::Owned(expanded), errors, conflicts)
    } else {
        let conflicts = identities::route(p.api, policies)?;
        (Cow::Borrowed(policies), BTreeMap::new(), conflicts)
    };
    // Only the policies this pass writes for resolve names (another policy's DNS is its own
    // pass's business); the others keep their listed addresses for overlap decisions.
    let mine = |d: &DesiredState| p.params.is_mine(&d.name);
    let (policies, dns) = if !grouped.iter().any(|d| d.resolve_dns && mine(d)) {
        (grouped, BTreeMap::new())
    } else if let Some(resolver) = p.resolver {
        let (resolved, reports) = resolve_some(resolver, &grouped, &mine).await;
        (Cow::Owned(resolved), reports)
    } else {
        let unresolved = grouped
            .iter()
            .filter(|d| d.resolve_dns && mine(d))
            .map(|d| {
                let report = DnsReport {
                    errors: vec!["no resolver configured for this run".into()],
                    ..Default::default()
                };
                (d.name.to_string(), report)
            })
            .collect();
        (grouped, unresolved)
    };
    Ok(Scope {
        policies,
        group_errors,
        identity_conflicts,
        dns,
    })
}

/// True when some policy still names management groups to expand.
fn has_groups(policies: &[DesiredState]) -> bool {
    policies.iter().any(|p| {
        p.selector
            .as_ref()
            .is_some_and(|s| !s.management_groups.is_empty())
    })
}

/// Expands every policy's `selector.managementGroups` into subscriptions (one descendants read
/// per group, shared by the policies naming it) and adds them to `selector.subscriptions`; the
/// groups are then cleared. A group ARM refuses (403, 404) is reported for the policies naming
/// it, whose other subscriptions still count; any other failure (no connection, throttling,
/// 5xx) fails the pass, as it fails a subscription's listing.
pub async fn expand_management_groups(
    api: &dyn NetworkApi,
    policies: &[DesiredState],
) -> Result<(Vec<DesiredState>, GroupErrors), ArmError> {
    // The groups are read as their policies' identities, and their subscriptions reached so.
    identities::route(api, policies)?;
    let mut cache: BTreeMap<String, Result<BTreeSet<String>, ArmError>> = BTreeMap::new();
    let mut errors: GroupErrors = BTreeMap::new();
    let mut out = Vec::with_capacity(policies.len());
    for p in policies {
        let mut p = p.clone();
        if let Some(sel) = p.selector.as_mut() {
            for group in std::mem::take(&mut sel.management_groups) {
                let key = group.to_ascii_lowercase();
                if !cache.contains_key(&key) {
                    let found = match api.management_group_subscriptions(&group).await {
                        Err(e) if !e.refuses_scope() => return Err(e),
                        found => found,
                    };
                    cache.insert(key.clone(), found);
                }
                match &cache[&key] {
                    Ok(subs) => sel.subscriptions.extend(subs.iter().cloned()),
                    Err(e) => errors
                        .entry(p.name.to_string())
                        .or_default()
                        .push((group.clone(), e.clone())),
                }
            }
        }
        out.push(p);
    }
    identities::route(api, &out)?;
    Ok((out, errors))
}

/// The problem of a management group that could not be read: its subscriptions are not
/// covered (the policy is degraded, and `plan`/`apply` exit 3).
pub fn group_problem(group: &str, e: &ArmError) -> Problem {
    Reason::SubscriptionUnreadable.problem(
        format!("/providers/Microsoft.Management/managementGroups/{group}"),
        format!(
            "management group {group} cannot be read ({}{}): its subscriptions are not covered; check the name and the identity's Microsoft.Management/managementGroups/descendants/read there",
            e.code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default(),
            e.message
        ),
    )
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

/// Resolves the KMS names of the policies with `resolveDns` that `include` picks, adds the
/// drifted addresses to the destinations of those that also route them, and reports per
/// policy; the other policies are returned as they are.
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
        reports.insert(p.name.to_string(), report);
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
