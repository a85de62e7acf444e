//! Phase 6 of a pass: does traffic to KMS really leave through the routes? Effective-route
//! verification reads one sampled NIC per managed route table (up to the policy's cap per
//! pass, the sample rotating with the pass counter) and checks every KMS destination. It never
//! fails the pass: the routes are written either way.

use super::judge::Judged;
use super::{Pass, Reason, RunMode};
use crate::api::{DesiredState, Problem};
use crate::azure::{ArmError, BUDGET_EXHAUSTED, ErrorClass, NetworkApi};
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

/// Verification's findings, by policy.
pub type Verified = BTreeMap<String, (VerificationReport, Vec<Problem>)>;

/// Verifies the pass's own policies that ask for it, in write mode: a failure to list the
/// NICs is one `VerificationFailed` problem for each of them.
pub async fn verify_pass(
    p: &Pass<'_>,
    policies: &[DesiredState],
    judged: &Judged,
    written: &super::execute::Written,
) -> Verified {
    if p.params.mode != RunMode::Write {
        return Verified::new();
    }
    // Only this pass's policies spend effective-route reads.
    let mine: Vec<&DesiredState> = policies
        .iter()
        .filter(|d| p.params.is_mine(&d.name))
        .collect();
    match verify(p.api, &mine, judged.verdicts(written), p.params.round).await {
        Ok(found) => found,
        Err(e) => mine
            .iter()
            .filter(|d| d.verify_effective_routes)
            .map(|d| {
                let report = VerificationReport {
                    failed: 1,
                    ..Default::default()
                };
                let problem = Reason::VerificationFailed.problem(String::new(), e.to_string());
                (d.name.to_string(), (report, vec![problem]))
            })
            .collect(),
    }
}

/// Attached NICs by lower-cased subnet ID, sorted for a stable rotation.
async fn attached_nics(
    api: &dyn NetworkApi,
    subscriptions: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<String>>, ArmError> {
    let mut by_subnet: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for nic in api
        .network_interfaces(subscriptions)
        .await?
        .into_iter()
        .filter(|n| n.attached)
    {
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
    Ok(by_subnet)
}

/// Reads the effective routes of one attached NIC per managed route table (up to the policy's
/// cap, the sample rotating with `round`) and checks every KMS destination.
pub async fn verify(
    api: &dyn NetworkApi,
    policies: &[&DesiredState],
    verdicts: &[SubnetVerdict],
    round: u64,
) -> Result<Verified, ArmError> {
    let verifying: Vec<&DesiredState> = policies
        .iter()
        .copied()
        .filter(|p| p.verify_effective_routes)
        .collect();
    let mut out = BTreeMap::new();
    if verifying.is_empty() {
        return Ok(out);
    }
    let subscriptions: BTreeSet<String> =
        verifying.iter().flat_map(|p| p.subscriptions()).collect();
    let by_subnet = attached_nics(api, &subscriptions).await?;
    for p in verifying {
        let found = verify_policy(api, p, verdicts, &by_subnet, round).await;
        out.insert(p.name.to_string(), found);
    }
    Ok(out)
}

/// The tables one policy manages (in sync, or in conflict, where a foreign route is expected
/// to win and verification names it), each with its subnets' verdicts.
fn managed_tables<'a>(
    p: &DesiredState,
    verdicts: &'a [SubnetVerdict],
) -> BTreeMap<String, Vec<&'a SubnetVerdict>> {
    let mut tables: BTreeMap<String, Vec<&SubnetVerdict>> = BTreeMap::new();
    for v in verdicts.iter().filter(|v| {
        v.policy == p.name && matches!(v.verdict, Verdict::InSync | Verdict::Conflict { .. })
    }) {
        if let Some(t) = &v.route_table {
            tables.entry(t.key().to_string()).or_default().push(v);
        }
    }
    tables
}

/// One policy's sample of tables, read and checked.
async fn verify_policy(
    api: &dyn NetworkApi,
    p: &DesiredState,
    verdicts: &[SubnetVerdict],
    by_subnet: &BTreeMap<String, Vec<String>>,
    round: u64,
) -> (VerificationReport, Vec<Problem>) {
    let addresses: Vec<Ipv4Addr> = p.destinations.iter().map(|d| d.address).collect();
    let tables = managed_tables(p, verdicts);
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
        let subnets = &tables[keys[(start + i) % n]];
        let candidates: Vec<(&SubnetVerdict, &Vec<String>)> = subnets
            .iter()
            .filter_map(|v| {
                by_subnet
                    .get(&v.subnet.key().to_string())
                    .map(|nics| (*v, nics))
            })
            .collect();
        if candidates.is_empty() || reads >= cap {
            report.not_checked += 1;
            continue;
        }
        let (v, nics) = candidates[(round as usize) % candidates.len()];
        let nic = &nics[(round as usize) % nics.len()];
        reads += 1;
        if let Some(problem) = check_nic(api, nic, v, &addresses, &mut report).await {
            problems.push(problem);
        }
    }
    (report, problems)
}

/// Reads one NIC's effective routes and checks the addresses: counted in `report`, and a
/// problem when they do not leave through the routes or the read failed.
async fn check_nic(
    api: &dyn NetworkApi,
    nic: &str,
    v: &SubnetVerdict,
    addresses: &[Ipv4Addr],
    report: &mut VerificationReport,
) -> Option<Problem> {
    match api.effective_routes(nic).await {
        Ok(routes) => {
            report.checked += 1;
            let failures = crate::effective::check(&routes, addresses);
            if failures.is_empty() {
                report.verified += 1;
                return None;
            }
            report.not_verified += 1;
            let detail: Vec<String> = failures
                .iter()
                .map(|f| match &f.winning {
                    Some(w) => format!("{} ({}): wins {w}", f.address, f.reason),
                    None => format!("{} ({}): no active route", f.address, f.reason),
                })
                .collect();
            Some(Reason::NotVerified.problem(
                v.subnet.to_string(),
                format!(
                    "effective routes of NIC {}: {}",
                    nic.rsplit('/').next().unwrap_or(nic),
                    detail.join("; ")
                ),
            ))
        }
        Err(e)
            if e.class == ErrorClass::Throttled && e.code.as_deref() == Some(BUDGET_EXHAUSTED) =>
        {
            report.not_checked += 1;
            None
        }
        Err(e) => {
            report.failed += 1;
            Some(Reason::VerificationFailed.problem(v.subnet.to_string(), e.to_string()))
        }
    }
}
