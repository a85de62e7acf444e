//! Phase 7 of a pass: every finding assembled into one report per policy, the shape its status
//! takes. Pure: the verdicts, the write results, and the problems of every earlier phase
//! (unreadable subscriptions and management groups, identity conflicts, DNS, verification,
//! egress per NIC) are offered to one bounded collector, which ranks them and keeps the first
//! [`MAX_PROBLEMS`]. Nothing is added after the cut.

use super::execute::{WriteResult, Written};
use super::judge::Judged;
use super::problem::rank_of;
use super::scope::{DnsReport, Scope, dns_problems, group_problem};
use super::verify::{VerificationReport, Verified};
use super::{POLICY_DENIED_CODE, Reason};
use crate::api::{DesiredState, MAX_PROBLEMS, Mode, Problem, Summary};
use crate::azure::ArmError;
use crate::ids::{IdKey, SubnetId};
use crate::model::SubscriptionError;
use crate::plan::{Plan, PlannedWrite, Release, SubnetVerdict, Verdict, Warning, egress};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One policy's outcome, in the shape its status takes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub name: String,
    pub mode: Mode,
    pub summary: Summary,
    pub problems: Vec<Problem>,
    pub destinations: Vec<String>,
    pub writes_planned: usize,
    pub writes_done: usize,
    pub writes_failed: usize,
    /// Subnets warned `NoInternetEgress` (next hop Internet without an egress path).
    pub egress_warnings: usize,
    /// Effective-route verification, when the policy asks for it and the pass wrote.
    pub verification: Option<VerificationReport>,
    /// KMS name resolution, when the policy asks for it.
    pub dns: Option<DnsReport>,
    /// Selected subscriptions ARM refused to list (each also a problem naming the ARM code).
    pub unreadable_subscriptions: Vec<String>,
    /// Problems found before `problems` was cut to the first [`MAX_PROBLEMS`].
    pub problems_total: usize,
    /// The subscriptions the policy covers in this pass (its management groups expanded).
    #[serde(skip)]
    pub subscriptions: BTreeSet<String>,
}

impl PolicyReport {
    /// Adds problems found after the pass (the controller's contested tables), keeping the
    /// report order and the cap of [`MAX_PROBLEMS`] the status holds.
    pub fn add_problems(&mut self, problems: Vec<Problem>) {
        if problems.is_empty() {
            return;
        }
        self.problems_total += problems.len();
        self.problems.extend(problems);
        self.problems
            .sort_by(|a, b| (rank_of(a), &a.subnet_id).cmp(&(rank_of(b), &b.subnet_id)));
        self.problems.truncate(MAX_PROBLEMS);
    }

    /// True when every selected subnet is in sync or deliberately skipped, every selected
    /// subscription could be read, and the policy selects something at all (the Ready rule
    /// of the status, the CLI's table and the controller's metrics).
    pub fn ready(&self) -> bool {
        self.summary.errors == 0
            && self.summary.conflicts == 0
            && self.summary.in_sync + self.summary.skipped == self.summary.subnets_matched
            && self.unreadable_subscriptions.is_empty()
            && !self.nothing_selected()
    }

    /// The policy selects no subnet anywhere it could look: most likely a selector typo.
    pub fn nothing_selected(&self) -> bool {
        self.summary.subnets_matched == 0 && self.unreadable_subscriptions.is_empty()
    }
}

/// Everything a pass did and found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The plan made from the first observation.
    pub plan: Plan,
    /// Writes planned again after ARM refused a stale view (their results index past
    /// `plan.writes`).
    pub replanned: Vec<PlannedWrite>,
    pub results: Vec<WriteResult>,
    /// Verdicts after the writes; `None` when nothing was written (the plan's own verdicts,
    /// not a copy of them).
    final_verdicts: Option<Vec<SubnetVerdict>>,
    pub policies: Vec<PolicyReport>,
    /// The plan made now is not the one approved: nothing was written.
    pub approval_stale: bool,
}

impl Report {
    /// What a pass found and did not write (plan only, in sync, or an approval gone stale).
    pub fn unwritten(plan: Plan, policies: Vec<PolicyReport>, approval_stale: bool) -> Report {
        Report {
            plan,
            replanned: Vec::new(),
            results: Vec::new(),
            final_verdicts: None,
            policies,
            approval_stale,
        }
    }
    /// Verdicts after the writes (the plan's own verdicts when nothing was written).
    pub fn final_verdicts(&self) -> &[SubnetVerdict] {
        self.final_verdicts
            .as_deref()
            .unwrap_or(&self.plan.verdicts)
    }
    /// The write a result is for.
    pub fn write(&self, result: &WriteResult) -> &PlannedWrite {
        super::execute::write_at(&self.plan, &self.replanned, result)
    }
    /// Every write run, with its error if it failed, in the order they were planned.
    pub fn outcomes(&self) -> impl Iterator<Item = (&PlannedWrite, Option<&ArmError>)> {
        super::execute::outcomes(&self.plan, &self.replanned, &self.results)
    }
    pub fn writes_done(&self) -> usize {
        self.results.iter().filter(|r| r.error.is_none()).count()
    }
    pub fn writes_failed(&self) -> usize {
        self.results.iter().filter(|r| r.error.is_some()).count()
    }
    /// True when some subnet has a conflict or an error (plan/apply exit code 3).
    pub fn has_problems(&self) -> bool {
        self.policies.iter().any(|p| {
            p.summary.conflicts > 0
                || p.summary.errors > 0
                || !p.unreadable_subscriptions.is_empty()
        })
    }
}

/// The report of a pass: every policy's share of what each phase found.
pub fn assemble(
    scope: &Scope<'_>,
    written: Written,
    judged: Judged,
    verified: Verified,
    unreadable: BTreeMap<String, SubscriptionError>,
) -> Report {
    let outcomes: Vec<(&PlannedWrite, Option<&ArmError>)> = written.outcomes().collect();
    let found = Findings {
        first: &written.plan,
        failed_by_subnet: failures_by_subnet(&written.plan, &outcomes),
        outcomes: &outcomes,
        verdicts: judged.verdicts(&written),
        applied: written.wrote,
        unreadable: &unreadable,
        scope,
        verified: &verified,
        egress: &judged.egress,
    };
    let policies = scope.policies.iter().map(|d| found.policy(d)).collect();
    drop(found);
    drop(outcomes);
    Report {
        plan: written.plan,
        replanned: written.replanned,
        results: written.results,
        final_verdicts: judged.verdicts,
        policies,
        approval_stale: written.approval_stale,
    }
}

/// What the phases found, for judging each policy.
struct Findings<'a> {
    first: &'a Plan,
    outcomes: &'a [(&'a PlannedWrite, Option<&'a ArmError>)],
    failed_by_subnet: BTreeMap<SubnetId, &'a ArmError>,
    verdicts: &'a [SubnetVerdict],
    /// True when the pass wrote: a subnet the first plan found drifted is then repaired.
    applied: bool,
    unreadable: &'a BTreeMap<String, SubscriptionError>,
    scope: &'a Scope<'a>,
    verified: &'a Verified,
    egress: &'a HashMap<String, egress::EgressCount>,
}

impl Findings<'_> {
    /// One policy's report: counts, and problems ranked and cut once.
    fn policy(&self, d: &DesiredState) -> PolicyReport {
        let mut tally = Tally {
            summary: Summary::default(),
            problems: TopProblems::default(),
            egress_warnings: 0,
            egress: self.egress,
        };
        let mut unreadable_subscriptions = Vec::new();
        for sub in d.subscriptions() {
            if let Some(e) = self.unreadable.get(&sub) {
                tally.problems.push(Reason::SubscriptionUnreadable.problem(
                    format!("/subscriptions/{sub}"),
                    format!(
                        "subscription {sub} cannot be listed ({e}); check the ID in the selector and the identity's role there"
                    ),
                ));
                unreadable_subscriptions.push(sub);
            }
        }
        self.judge_verdicts(d, &mut tally);
        for r in self.first.released.iter().filter(|r| r.policy == d.name) {
            tally.released(r, d.mode);
        }
        let verification = self.verified.get(d.name.as_str()).map(|(v, problems)| {
            tally.summary.verified = v.verified as i64;
            tally.summary.not_verified = v.not_verified as i64;
            problems
                .iter()
                .cloned()
                .for_each(|p| tally.problems.push(p));
            v.clone()
        });
        for (group, e) in self
            .scope
            .group_errors
            .get(d.name.as_str())
            .into_iter()
            .flatten()
        {
            tally.problems.push(group_problem(group, e));
            unreadable_subscriptions.push(format!("management group {group}"));
        }
        for c in self
            .scope
            .identity_conflicts
            .iter()
            .filter(|c| c.loser == d.name)
        {
            tally.problems.push(c.problem());
        }
        let dns = self.scope.dns.get(d.name.as_str()).cloned();
        dns_problems_of(dns.as_ref())
            .into_iter()
            .for_each(|p| tally.problems.push(p));
        let mine = |w: &PlannedWrite| w.policy == d.name;
        PolicyReport {
            name: d.name.to_string(),
            mode: d.mode,
            summary: tally.summary,
            problems_total: tally.problems.offered,
            problems: tally.problems.kept,
            destinations: d.destinations.iter().map(|x| x.prefix()).collect(),
            writes_planned: self.first.writes.iter().filter(|w| mine(w)).count(),
            writes_done: (self.outcomes.iter())
                .filter(|(w, e)| mine(w) && e.is_none())
                .count(),
            writes_failed: (self.outcomes.iter())
                .filter(|(w, e)| mine(w) && e.is_some())
                .count(),
            egress_warnings: tally.egress_warnings,
            verification,
            dns,
            unreadable_subscriptions,
            subscriptions: d.subscriptions(),
        }
    }

    /// Counts and offers every verdict of the policy after the pass.
    fn judge_verdicts(&self, d: &DesiredState, tally: &mut Tally) {
        let before: HashMap<IdKey<'_>, &Verdict> = (self.first.verdicts.iter())
            .filter(|v| v.policy == d.name)
            .map(|v| (v.subnet.key(), &v.verdict))
            .collect();
        for v in self.verdicts.iter().filter(|v| v.policy == d.name) {
            tally.summary.subnets_matched += 1;
            let repaired =
                self.applied && matches!(before.get(&v.subnet.key()), Some(Verdict::Drift { .. }));
            let failed = self.failed_by_subnet.get(&v.subnet).copied();
            tally.judge(v, failed, repaired);
        }
    }
}

fn dns_problems_of(dns: Option<&DnsReport>) -> Vec<Problem> {
    dns.map(dns_problems).unwrap_or_default()
}

/// Failed writes, by the subnets they concern: a subnet write names its subnet; a table
/// write concerns the subnets the first plan says its table's writes concern.
fn failures_by_subnet<'a>(
    first: &Plan,
    results: &[(&PlannedWrite, Option<&'a ArmError>)],
) -> BTreeMap<SubnetId, &'a ArmError> {
    let on_table: HashMap<IdKey<'_>, &[SubnetId]> = first
        .tables
        .iter()
        .map(|t| (t.table.key(), t.subnets.as_slice()))
        .collect();
    let mut failed: BTreeMap<SubnetId, &ArmError> = BTreeMap::new();
    for &(w, e) in results {
        let Some(e) = e else { continue };
        match w.write.subnet() {
            Some(s) => {
                failed.entry(s.clone()).or_insert(e);
            }
            None => {
                for s in on_table
                    .get(&w.write.table().key())
                    .copied()
                    .unwrap_or_default()
                {
                    failed.entry(s.clone()).or_insert(e);
                }
            }
        }
    }
    failed
}

/// The first [`MAX_PROBLEMS`] problems in report order (rank, then subnet), and how many were
/// offered; a problem that would not be kept is never built.
#[derive(Default)]
struct TopProblems {
    kept: Vec<Problem>,
    offered: usize,
}

impl TopProblems {
    fn offer(&mut self, reason: Reason, subnet_id: &str, build: impl FnOnce() -> Problem) {
        self.offered += 1;
        let at = self.position(reason.rank(), subnet_id);
        if at < MAX_PROBLEMS {
            self.kept.insert(at, build());
            self.kept.truncate(MAX_PROBLEMS);
        }
    }
    fn push(&mut self, p: Problem) {
        self.offered += 1;
        let at = self.position(rank_of(&p), &p.subnet_id);
        if at < MAX_PROBLEMS {
            self.kept.insert(at, p);
            self.kept.truncate(MAX_PROBLEMS);
        }
    }
    /// Where a problem goes in report order (after the equal ones already kept).
    fn position(&self, rank: u8, subnet_id: &str) -> usize {
        let key = (rank, subnet_id);
        self.kept
            .partition_point(|p| (rank_of(p), p.subnet_id.as_str()) <= key)
    }
}

/// One policy's counts and problems as its verdicts are judged.
struct Tally<'a> {
    summary: Summary,
    problems: TopProblems,
    egress_warnings: usize,
    /// Egress judged per NIC, by lower-cased subnet ID.
    egress: &'a HashMap<String, egress::EgressCount>,
}

impl Tally<'_> {
    /// Counts one verdict after the pass (`failed`: a write it needed failed; `repaired`: the
    /// first plan found drift there) and offers its problems and warnings.
    fn judge(&mut self, v: &SubnetVerdict, failed: Option<&ArmError>, repaired: bool) {
        let s = &mut self.summary;
        match (&v.verdict, failed) {
            (_, Some(e)) => {
                s.errors += 1;
                // A denial needs an exemption, not a retry: its own reason.
                let reason = if e.code.as_deref() == Some(POLICY_DENIED_CODE) {
                    Reason::PolicyDenied
                } else {
                    Reason::WriteFailed
                };
                self.problems.offer(reason, v.subnet.as_str(), || {
                    reason.problem(v.subnet.to_string(), e.to_string())
                });
                return;
            }
            (Verdict::InSync, None) => {
                s.in_sync += 1;
                if repaired {
                    s.repaired += 1;
                }
            }
            (Verdict::Drift { .. }, None) => {}
            (Verdict::Conflict { .. }, None) => s.conflicts += 1,
            (Verdict::Skipped { .. }, None) => s.skipped += 1,
            (Verdict::Error { .. }, None) => s.errors += 1,
        }
        if let Some(reason) = Reason::of_verdict(&v.verdict) {
            self.problems.offer(reason, v.subnet.as_str(), || {
                reason.problem(v.subnet.to_string(), v.verdict.message())
            });
        }
        for w in &v.warnings {
            self.warning(v, w);
        }
    }

    /// Offers one warning of a verdict; a subnet warned `NoInternetEgress` whose NICs were all
    /// found a way out is not warned, and one where some were not says how many.
    fn warning(&mut self, v: &SubnetVerdict, w: &Warning) {
        let mut message: String = w.message().into();
        if matches!(w, Warning::NoInternetEgress) {
            match self.egress.get(&v.subnet.key().to_string()) {
                Some(c) if c.without == 0 => return,
                Some(c) => {
                    message = format!(
                        "{} of {} running NIC(s) have no outbound path for next hop Internet (no NAT gateway, default outbound access off, no public IP, no Standard load balancer outbound rule)",
                        c.without, c.total
                    );
                }
                None => {}
            }
            self.egress_warnings += 1;
        }
        let reason = Reason::of_warning(w);
        self.problems.offer(reason, v.subnet.as_str(), || {
            reason.problem(v.subnet.to_string(), message)
        });
    }

    /// A table the policy releases: its subnets count as released; under `Audit` it is a
    /// problem saying what `Enforce` would do.
    fn released(&mut self, r: &Release, mode: Mode) {
        self.summary.released += r.subnets.len() as i64;
        if mode == Mode::Audit {
            self.problems.push(Reason::WouldRelease.problem(
                r.table.to_string(),
                format!(
                    "no selected subnet uses this table any more ({} subnet(s) left the selection); Enforce would {}",
                    r.subnets.len(),
                    if r.created {
                        "dissociate and delete it"
                    } else {
                        "remove the policy's routes from it"
                    }
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests;
