//! The executor, shared by `plan`, `apply`, `demo` and the controller: observe (inventory by
//! listing, only the subscriptions the policies need) → plan → apply the writes with bounded
//! concurrency per subscription, one route table's writes in plan order and one write per VNet at a time →
//! re-read → a summary per policy that becomes status.
//!
//! Crash-safe by construction: it keeps no state of its own. Every pass plans from what Azure
//! holds now, so re-running after an interruption converges without duplicates.

pub mod identities;
pub mod problem;
pub mod verify;

use crate::api::{DesiredState, MAX_PROBLEMS, Mode, Problem, Summary};
use crate::azure::{ArmError, ErrorClass, NetworkApi};
use crate::dns::Resolver;
use crate::ids::SubnetId;
use crate::model::Inventory;
use crate::plan::{Plan, PlannedWrite, SubnetVerdict, Verdict, Warning, Write, egress, plan};
use futures::StreamExt;
pub use problem::Reason;
use problem::rank_of;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio::sync::Mutex;

/// ARM's code for a write an Azure Policy assignment denied.
pub const POLICY_DENIED_CODE: &str = "RequestDisallowedByPolicy";

/// What a pass should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Observe and plan only (reads).
    PlanOnly,
    /// Observe, plan, write, re-read.
    Apply,
}

/// How a pass runs.
#[derive(Clone)]
pub struct Options {
    pub mode: RunMode,
    /// Route tables written in parallel per subscription (writes within one table are always
    /// sequential; subscriptions run side by side, each paced by its own ARM budget).
    pub concurrency: usize,
    /// Write only this policy's share of the plan (the controller reconciles one object at a
    /// time, but plans with every policy so overlaps are decided the same way).
    pub only_policy: Option<String>,
    /// Resolves the KMS names of policies with `spec.kms.resolveDns` (the system resolver in
    /// the controller and CLI; a fixed one in tests). `None`: those policies report that DNS
    /// was not consulted.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Pass counter: rotates which subnet and NIC effective-route verification samples.
    pub round: u64,
    /// Where the pass gets Azure's state: `None` lists it through the port (the CLI: one
    /// listing per subscription per run); the controller passes its shared inventory, so a pass
    /// lists nothing itself and re-reads only the subscriptions it wrote to.
    pub inventory: Option<Arc<dyn InventorySource>>,
    /// The writes a user approved (`apply` without `--yes`): when the plan made now differs,
    /// nothing is written and the report says so (`Report::approval_stale`).
    pub approved: Option<Arc<Vec<PlannedWrite>>>,
    /// Set (by Ctrl-C) to stop issuing writes; in-flight ones finish.
    pub interrupt: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// A source of observed Azure state for a pass.
///
/// A cached view may be stale; that is safe because every write is guarded by ARM itself
/// (subnet PUT with `If-Match`, table creation with `If-None-Match: *`, `RouteConflict`): a
/// write the view made wrong fails, and the pass re-reads and re-plans instead of overwriting.
#[async_trait::async_trait]
pub trait InventorySource: Send + Sync {
    /// The inventory of these subscriptions to plan on.
    async fn current(&self, subscriptions: &BTreeSet<String>) -> Result<Inventory, ArmError>;
    /// Reads `fresh` again from ARM (a pass wrote there, or found its view stale), then returns
    /// the inventory of `all`. `writer` names the policy whose pass wrote, so the change its own
    /// writes make does not queue it again.
    async fn reread(
        &self,
        fresh: &BTreeSet<String>,
        all: &BTreeSet<String>,
        writer: Option<&str>,
    ) -> Result<Inventory, ArmError>;
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("mode", &self.mode)
            .field("concurrency", &self.concurrency)
            .field("only_policy", &self.only_policy)
            .field("resolver", &self.resolver.is_some())
            .field("round", &self.round)
            .field("inventory", &self.inventory.is_some())
            .field("approved", &self.approved.as_ref().map(|a| a.len()))
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: RunMode::Apply,
            concurrency: 32,
            only_policy: None,
            resolver: None,
            round: 0,
            inventory: None,
            approved: None,
            interrupt: None,
        }
    }
}

/// Progress events for a progress bar or log lines.
#[derive(Debug, Clone)]
pub enum Progress {
    Observed {
        subscriptions: usize,
        subnets: usize,
        route_tables: usize,
    },
    Planned {
        writes: usize,
    },
    Wrote {
        done: usize,
        total: usize,
        write: Box<Write>,
        error: Option<Box<ArmError>>,
    },
}

/// The outcome of one write: which write, by its index in the writes it was run from
/// ([`Report::write`] for a pass), and how it ended. It holds no copy of the write (150,000
/// copies were a fifth of a first convergence's peak at 100,000 subnets).
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub index: usize,
    /// `None`: done. `Some`: failed, or skipped because a write it depended on failed.
    pub error: Option<Box<ArmError>>,
}

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
    pub verification: Option<verify::VerificationReport>,
    /// KMS name resolution, when the policy asks for it.
    pub dns: Option<verify::DnsReport>,
    /// Selected subscriptions ARM refused to list (each also a problem naming the ARM code).
    pub unreadable_subscriptions: Vec<String>,
    /// Problems found before `problems` was cut to the first [`MAX_PROBLEMS`].
    pub problems_total: usize,
    /// Problems the summary counted but did not keep (beyond the first [`MAX_PROBLEMS`] in
    /// report order): a pass over 90,000 drifted subnets builds 50 problems, not 90,000.
    #[serde(skip)]
    pub problems_dropped: usize,
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
    /// Writes planned again after ARM refused a stale cached view (their results index past
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
        write_at(&self.plan.writes, &self.replanned, result.index)
    }
    /// Every write run, with its error if it failed, in the order they were planned.
    pub fn outcomes(&self) -> impl Iterator<Item = (&PlannedWrite, Option<&ArmError>)> {
        self.results
            .iter()
            .map(|r| (self.write(r), r.error.as_deref()))
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

/// Reads the inventory of every subscription the policies need.
pub async fn observe(
    api: &dyn NetworkApi,
    policies: &[DesiredState],
) -> Result<Inventory, ArmError> {
    let subscriptions: BTreeSet<String> = policies
        .iter()
        .flat_map(DesiredState::subscriptions)
        .collect();
    api.inventory(&subscriptions).await
}

/// The subscriptions a pass reads: the one policy's when it writes only its own share (other
/// policies matter only where they select the same subnets, which lie in these subscriptions),
/// else every policy's.
fn pass_subscriptions(policies: &[DesiredState], options: &Options) -> BTreeSet<String> {
    policies
        .iter()
        .filter(|p| options.only_policy.as_ref().is_none_or(|n| &p.name == n))
        .flat_map(DesiredState::subscriptions)
        .collect()
}

/// True for a write error that means the pass planned on a view Azure no longer matches.
fn stale_view(e: &ArmError) -> bool {
    matches!(e.class, ErrorClass::Conflict | ErrorClass::NotFound)
        || e.code.as_deref() == Some("RouteConflict")
}

/// Management groups that could not be read, by policy: (group, why).
pub type GroupErrors = BTreeMap<String, Vec<(String, ArmError)>>;

/// Resolves every policy's `selector.managementGroups` into subscriptions (one descendants read
/// per group, shared by the policies naming it) and adds them to `selector.subscriptions`; the
/// groups are then cleared, so a resolved policy is not resolved again. A group ARM refuses
/// (403, 404) is reported for the policies naming it, whose other subscriptions still count;
/// any other failure (no connection, throttling, 5xx) fails the resolution, as it fails a
/// subscription's listing.
pub async fn resolve_management_groups(
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
                        .entry(p.name.clone())
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

/// Adds the management groups a policy could not read to its report (problems, and the
/// unreadable list that degrades it and makes `plan`/`apply` exit 3).
pub fn report_group_errors(p: &mut PolicyReport, errors: &[(String, ArmError)]) {
    for (group, e) in errors {
        p.problems.push(Problem {
            subnet_id: format!("/providers/Microsoft.Management/managementGroups/{group}"),
            reason: Reason::SubscriptionUnreadable.code().into(),
            message: format!(
                "management group {group} cannot be read ({}{}): its subscriptions are not covered; check the name and the identity's Microsoft.Management/managementGroups/descendants/read there",
                e.code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default(),
                e.message
            ),
        });
        p.unreadable_subscriptions
            .push(format!("management group {group}"));
        p.problems_total += 1;
    }
}

/// True when some policy still names management groups to resolve.
fn has_groups(policies: &[DesiredState]) -> bool {
    policies.iter().any(|p| {
        p.selector
            .as_ref()
            .is_some_and(|s| !s.management_groups.is_empty())
    })
}

/// One reconcile pass over a set of policies.
pub async fn reconcile(
    api: &dyn NetworkApi,
    policies: &[DesiredState],
    options: &Options,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, ArmError> {
    // KMS names first: with routeResolvedAddresses the answers become destinations.
    // Management groups first: they decide which subscriptions the policies cover. Each scope
    // is reached as its policy's `spec.azure.identity` (the resolution routes the groups and
    // their subscriptions itself).
    // Two policies naming one subscription (directly or through a group) with different
    // identities: the younger is told (`identity_conflicts`).
    let (grouped, group_errors, identity_conflicts) = if has_groups(policies) {
        let (resolved, errors) = resolve_management_groups(api, policies).await?;
        let conflicts = identities::routes(&resolved).1;
        (Cow::Owned(resolved), errors, conflicts)
    } else {
        let conflicts = identities::route(api, policies)?;
        (Cow::Borrowed(policies), BTreeMap::new(), conflicts)
    };
    let policies: &[DesiredState] = &grouped;
    // Only the policy this pass writes for resolves names (another policy's DNS is its own
    // pass's business); the others keep their listed addresses for overlap decisions.
    let mine = |p: &DesiredState| options.only_policy.as_ref().is_none_or(|n| &p.name == n);
    let (resolved, dns) = if policies.iter().any(|p| p.resolve_dns && mine(p)) {
        match &options.resolver {
            Some(r) => {
                let (resolved, reports) = verify::resolve_some(r.as_ref(), policies, &mine).await;
                (Cow::Owned(resolved), reports)
            }
            None => (
                Cow::Borrowed(policies),
                policies
                    .iter()
                    .filter(|p| p.resolve_dns && mine(p))
                    .map(|p| {
                        let report = verify::DnsReport {
                            errors: vec!["no resolver configured for this run".into()],
                            ..Default::default()
                        };
                        (p.name.clone(), report)
                    })
                    .collect(),
            ),
        }
    } else {
        // No DNS in play: the policies as given, not a copy per pass.
        (Cow::Borrowed(policies), BTreeMap::new())
    };
    let mut report = reconcile_resolved(api, &resolved, options, progress).await?;
    if options.mode == RunMode::Apply {
        // Verification never fails the pass: the routes are written either way.
        // Likewise only this pass's policy spends effective-route reads.
        let verified: Cow<[DesiredState]> = if options.only_policy.is_some() {
            Cow::Owned(resolved.iter().filter(|p| mine(p)).cloned().collect())
        } else {
            Cow::Borrowed(&resolved[..])
        };
        let checks =
            match verify::verify(api, &verified, report.final_verdicts(), options.round).await {
                Ok(c) => c,
                Err(e) => verified
                    .iter()
                    .filter(|p| p.verify_effective_routes)
                    .map(|p| {
                        let problem = Problem {
                            subnet_id: String::new(),
                            reason: Reason::VerificationFailed.code().into(),
                            message: e.to_string(),
                        };
                        let report = verify::VerificationReport {
                            failed: 1,
                            ..Default::default()
                        };
                        (p.name.clone(), (report, vec![problem]))
                    })
                    .collect(),
            };
        for p in &mut report.policies {
            if let Some((v, problems)) = checks.get(&p.name) {
                p.summary.verified = v.verified as i64;
                p.summary.not_verified = v.not_verified as i64;
                p.problems.extend(problems.iter().cloned());
                p.verification = Some(v.clone());
            }
        }
    }
    refine_egress(api, &mut report, options).await;
    for p in &mut report.policies {
        if let Some(errors) = group_errors.get(&p.name) {
            report_group_errors(p, errors);
        }
    }
    for c in &identity_conflicts {
        if let Some(p) = report.policies.iter_mut().find(|p| p.name == c.loser) {
            p.problems.push(c.problem());
        }
    }
    for p in &mut report.policies {
        if let Some(d) = dns.get(&p.name) {
            p.problems.extend(verify::dns_problems(d));
            p.dns = Some(d.clone());
        }
        p.problems
            .sort_by(|a, b| (rank_of(a), &a.subnet_id).cmp(&(rank_of(b), &b.subnet_id)));
        p.problems_total = p.problems.len() + p.problems_dropped;
        p.problems.truncate(MAX_PROBLEMS);
    }
    Ok(report)
}

/// Judges egress per NIC where the planner warned a private subnet (no NAT gateway, default
/// outbound access off): lists the NICs, public IPs and load balancers of those subnets'
/// subscriptions once, and keeps `NoInternetEgress` only where some running NIC has no way out,
/// saying how many. A listing that fails leaves the subnet-level warning as it was.
async fn refine_egress(api: &dyn NetworkApi, report: &mut Report, options: &Options) {
    let mine = |p: &str| options.only_policy.as_deref().is_none_or(|n| n == p);
    let candidates: BTreeMap<String, SubnetId> = report
        .final_verdicts()
        .iter()
        .filter(|v| mine(&v.policy) && v.warnings.contains(&Warning::NoInternetEgress))
        .map(|v| (v.subnet.key().to_string(), v.subnet.clone()))
        .collect();
    if candidates.is_empty() {
        return;
    }
    let subscriptions: BTreeSet<String> = candidates
        .values()
        .map(|s| s.subscription().to_ascii_lowercase())
        .collect();
    let listed = async {
        let nics = api.network_interfaces(&subscriptions).await?;
        let facts = api.egress_facts(&subscriptions).await?;
        Ok::<_, ArmError>((nics, facts))
    };
    let (nics, facts) = match listed.await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "could not judge egress per NIC; keeping the subnet-level warning");
            return;
        }
    };
    let counts: HashMap<String, egress::EgressCount> = candidates
        .into_iter()
        .map(|(key, id)| {
            // A candidate is, by the planner's rule, private: no NAT gateway, no default access.
            let subnet = crate::model::Subnet {
                id,
                route_table: None,
                nat_gateway: false,
                default_outbound_access: Some(false),
            };
            (key, egress::count(&subnet, &nics, &facts))
        })
        .collect();
    for p in &mut report.policies {
        let before = p.problems.len();
        p.problems.retain_mut(|pr| {
            if !Reason::NoInternetEgress.is(pr) {
                return true;
            }
            match counts.get(&pr.subnet_id.to_ascii_lowercase()) {
                Some(c) if c.without == 0 => false,
                Some(c) => {
                    pr.message = format!(
                        "{} of {} running NIC(s) have no outbound path for next hop Internet (no NAT gateway, default outbound access off, no public IP, no Standard load balancer outbound rule)",
                        c.without, c.total
                    );
                    true
                }
                None => true,
            }
        });
        p.egress_warnings = p.egress_warnings.saturating_sub(before - p.problems.len());
    }
}

/// [`reconcile`] once the destinations are final.
async fn reconcile_resolved(
    api: &dyn NetworkApi,
    policies: &[DesiredState],
    options: &Options,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, ArmError> {
    let subscriptions = pass_subscriptions(policies, options);
    let mut inventory = observe_pass(api, options, &subscriptions, progress).await?;
    let mut first = plan(policies, &inventory);
    if let Some(name) = &options.only_policy {
        first.retain_policy(name);
    }
    progress(Progress::Planned {
        writes: first.writes.len(),
    });
    let unreadable = std::mem::take(&mut inventory.unreadable);
    let approval_stale = options
        .approved
        .as_ref()
        .is_some_and(|a| a.as_slice() != first.writes.as_slice());
    if options.mode == RunMode::PlanOnly || first.writes.is_empty() || approval_stale {
        let policies = summarize(policies, &first, &[], &first.verdicts, false, &unreadable);
        return Ok(Report::unwritten(first, policies, approval_stale));
    }
    // The plan carries everything the writes need: free the observation before the writes and
    // the re-read, so a pass never holds two inventories (peak memory at 10,000 subnets).
    drop(inventory);
    let concurrency = options.concurrency.max(1);
    let interrupt = options.interrupt.as_deref();
    let mut results = apply(api, &first, concurrency, progress, interrupt).await;
    let mut written: BTreeSet<String> = subscriptions_written(&first.writes).collect();
    let mut replanned = Vec::new();
    if let Some(source) = &options.inventory
        && results
            .iter()
            .any(|r| r.error.as_deref().is_some_and(stale_view))
    {
        // The cached view was stale where ARM refused: read those subscriptions afresh and
        // plan again (once; a view that is still wrong waits for the next pass).
        let second = replan(source.as_ref(), policies, options, &written, &subscriptions).await?;
        tracing::info!(
            refused = results.iter().filter(|r| r.error.is_some()).count(),
            replanned = second.writes.len(),
            "the cached inventory was stale: re-read and re-planned"
        );
        results.retain(|r| r.error.is_none());
        written.extend(subscriptions_written(&second.writes));
        let offset = first.writes.len();
        results.extend(
            apply(api, &second, concurrency, progress, interrupt)
                .await
                .into_iter()
                .map(|r| WriteResult {
                    index: offset + r.index,
                    ..r
                }),
        );
        replanned = second.writes;
    }
    // Re-read what was written: the verdicts users see describe Azure after the pass.
    let final_verdicts = match &options.inventory {
        Some(source) => {
            let after = source
                .reread(&written, &subscriptions, options.only_policy.as_deref())
                .await?;
            plan(policies, &after).verdicts
        }
        None => verdicts_after(api, policies, &first.verdicts, &written).await?,
    };
    let outcomes: Vec<(&PlannedWrite, Option<&ArmError>)> = results
        .iter()
        .map(|r| {
            let w = write_at(&first.writes, &replanned, r.index);
            (w, r.error.as_deref())
        })
        .collect();
    let policies = summarize(
        policies,
        &first,
        &outcomes,
        &final_verdicts,
        true,
        &unreadable,
    );
    drop(outcomes);
    Ok(Report {
        plan: first,
        replanned,
        results,
        final_verdicts: Some(final_verdicts),
        policies,
        approval_stale: false,
    })
}

/// The pass's view of `subscriptions`: the shared inventory's, or a listing of its own.
async fn observe_pass(
    api: &dyn NetworkApi,
    options: &Options,
    subscriptions: &BTreeSet<String>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Inventory, ArmError> {
    let inventory = match &options.inventory {
        Some(source) => source.current(subscriptions).await?,
        None => api.inventory(subscriptions).await?,
    };
    progress(Progress::Observed {
        subscriptions: inventory.subscriptions.len(),
        subnets: inventory
            .virtual_networks
            .iter()
            .map(|v| v.subnets.len())
            .sum(),
        route_tables: inventory.route_tables.len(),
    });
    Ok(inventory)
}

/// The plan of a fresh read of the `written` subscriptions from the shared inventory.
async fn replan(
    source: &dyn InventorySource,
    policies: &[DesiredState],
    options: &Options,
    written: &BTreeSet<String>,
    subscriptions: &BTreeSet<String>,
) -> Result<Plan, ArmError> {
    let fresh = source
        .reread(written, subscriptions, options.only_policy.as_deref())
        .await?;
    let mut second = plan(policies, &fresh);
    drop(fresh);
    if let Some(name) = &options.only_policy {
        second.retain_policy(name);
    }
    Ok(second)
}

/// The subscriptions `writes` change, lowercased (ARM's IDs are case-insensitive).
fn subscriptions_written(writes: &[PlannedWrite]) -> impl Iterator<Item = String> + '_ {
    writes
        .iter()
        .map(|w| w.write.table().subscription().to_ascii_lowercase())
}

/// The verdicts after the writes: the `written` subscriptions read afresh, listed and judged
/// one at a time (see [`crate::plan::verdicts_in`]: the pass never holds a second whole
/// inventory beside its plan and results); elsewhere nothing was written, and the first plan's
/// verdicts stand (a subnet's verdict depends on its own subscription alone), so those are not
/// listed a second time.
async fn verdicts_after(
    api: &dyn NetworkApi,
    policies: &[DesiredState],
    before: &[SubnetVerdict],
    written: &BTreeSet<String>,
) -> Result<Vec<SubnetVerdict>, ArmError> {
    let mut verdicts = crate::plan::verdicts_outside(before, written);
    for sub in written {
        let one = api.inventory(&BTreeSet::from([sub.clone()])).await?;
        verdicts.extend(crate::plan::verdicts_in(policies, &one, sub));
    }
    crate::plan::sort_verdicts(&mut verdicts);
    verdicts.shrink_to_fit();
    Ok(verdicts)
}

/// Write `index` of a pass: the plan's writes, then the re-planned ones.
fn write_at<'a>(
    writes: &'a [PlannedWrite],
    replanned: &'a [PlannedWrite],
    index: usize,
) -> &'a PlannedWrite {
    match writes.get(index) {
        Some(w) => w,
        // Results are only made from these two lists, so the index is in one of them.
        None => &replanned[index - writes.len()],
    }
}

/// Carries out one planned write through the port (the executor's, not the port's: the port
/// knows ARM's operations, not the plan).
pub async fn execute(api: &dyn NetworkApi, write: &Write) -> Result<(), ArmError> {
    match write {
        Write::CreateRouteTable {
            table,
            location,
            tags,
            disable_bgp_route_propagation,
            routes,
        } => {
            api.create_route_table(
                table,
                location,
                tags,
                *disable_bgp_route_propagation,
                routes,
            )
            .await
        }
        Write::PutRoute { table, route, .. } => api.put_route(table, route).await,
        Write::DeleteRoute { table, name, .. } => api.delete_route(table, name).await,
        Write::AssociateSubnet { subnet, table } => {
            api.set_subnet_route_table(subnet, None, Some(table)).await
        }
        Write::DissociateSubnet { subnet, table } => {
            api.set_subnet_route_table(subnet, Some(table), None).await
        }
        Write::DeleteRouteTable { table } => api.delete_route_table(table).await,
    }
}

/// Most writes under way at once across all subscriptions (see [`apply`]).
pub const MAX_ACTIVE_WRITES: usize = 4096;

/// Carries out a plan: its tables' lanes in parallel up to `concurrency` per subscription, one
/// subnet write per VNet at a time. When a write the planner named a prerequisite fails, the
/// rest of its table's writes are skipped; any other failure is reported and the rest goes on.
pub async fn apply(
    api: &dyn NetworkApi,
    plan: &Plan,
    concurrency: usize,
    progress: &(dyn Fn(Progress) + Sync),
    interrupt: Option<&std::sync::atomic::AtomicBool>,
) -> Vec<WriteResult> {
    let writes = &plan.writes;
    let total = writes.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let vnet_locks: Mutex<HashMap<String, Arc<Mutex<()>>>> = Mutex::new(HashMap::new());
    // Writes under way at once, all subscriptions together. Every subscription has its own
    // lanes, but 500 subscriptions × 32 lanes kept 16,000 writes under way, each holding its
    // request and poller while it queued for one of the client's 128 connections: 125 MB of
    // a 520 MB peak at 100,000 subnets. 32 per connection still keeps every connection busy
    // through 1-30 s long-running operations.
    let active = tokio::sync::Semaphore::new(MAX_ACTIVE_WRITES);
    // A lane by its position in the plan: a closure taking a reference would hand its future a
    // borrow of its argument, which the controller's `Send` bound cannot see through.
    let run_lane = |lane: usize| {
        let lane = &plan.tables[lane];
        let done = &done;
        let vnet_locks = &vnet_locks;
        let active = &active;
        async move {
            let mut out = Vec::new();
            let mut blocked: Option<ArmError> = None;
            for &index in &lane.writes {
                let Some(w) = writes.get(index) else { continue };
                let stopped =
                    interrupt.is_some_and(|i| i.load(std::sync::atomic::Ordering::SeqCst));
                let error = if stopped {
                    Some(Box::new(ArmError::local(
                        ErrorClass::Retryable,
                        "interrupted",
                        w.write.table().as_str(),
                        Some("Interrupted"),
                        "not attempted: the run was interrupted",
                    )))
                } else if let Some(cause) = &blocked {
                    Some(Box::new(ArmError {
                        message: format!(
                            "not attempted: an earlier write to this route table failed ({})",
                            cause.message
                        ),
                        ..cause.clone()
                    }))
                } else {
                    let lock = match w.write.subnet() {
                        Some(subnet) => {
                            let mut locks = vnet_locks.lock().await;
                            Some(
                                locks
                                    .entry(subnet.vnet().key().to_string())
                                    .or_default()
                                    .clone(),
                            )
                        }
                        None => None,
                    };
                    let _guard = match &lock {
                        Some(l) => Some(l.lock().await),
                        None => None,
                    };
                    // Never closed; a closed semaphore would only mean "no cap".
                    let _active = active.acquire().await.ok();
                    execute(api, &w.write).await.err().map(Box::new)
                };
                if let Some(e) = &error
                    && lane.prerequisites.contains(&index)
                    && blocked.is_none()
                {
                    blocked = Some((**e).clone());
                }
                let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                progress(Progress::Wrote {
                    done: n,
                    total,
                    write: Box::new(w.write.clone()),
                    error: error.clone(),
                });
                out.push(WriteResult { index, error });
            }
            out
        }
    };
    // ARM's write budget is per subscription, so each subscription gets its own `concurrency`
    // lanes and all subscriptions run at once. One shared pool let a subscription whose bucket
    // was empty hold every slot while the others idled (measured: the dense 5-subscription
    // bench estate ran at 3.5 writes/s per subscription against the 10/s ARM allows).
    let mut by_subscription: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, lane) in plan.tables.iter().enumerate() {
        by_subscription
            .entry(lane.table.subscription().to_ascii_lowercase())
            .or_default()
            .push(i);
    }
    let per_subscription = by_subscription.into_values().map(|lanes| {
        futures::stream::iter(lanes.into_iter().map(run_lane))
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
    });
    let results: Vec<Vec<Vec<WriteResult>>> = futures::future::join_all(per_subscription).await;
    // Report in plan order, whatever order the lanes finished in.
    let mut flat: Vec<WriteResult> = Vec::with_capacity(total);
    flat.extend(results.into_iter().flatten().flatten());
    flat.sort_unstable_by_key(|r| r.index);
    flat
}

/// Failed writes, by the subnets they concern: a subnet write names its subnet; a table
/// write concerns the subnets the first plan says its table's writes concern.
fn failures_by_subnet<'a>(
    first: &Plan,
    results: &[(&PlannedWrite, Option<&'a ArmError>)],
) -> BTreeMap<String, &'a ArmError> {
    let on_table: HashMap<&str, &[SubnetId]> = first
        .tables
        .iter()
        .map(|t| (t.table.key(), t.subnets.as_slice()))
        .collect();
    let mut failed: BTreeMap<String, &ArmError> = BTreeMap::new();
    for &(w, e) in results {
        let Some(e) = e else { continue };
        match w.write.subnet() {
            Some(s) => {
                failed.entry(s.key().to_string()).or_insert(e);
            }
            None => {
                for s in on_table
                    .get(w.write.table().key())
                    .copied()
                    .unwrap_or_default()
                {
                    failed.entry(s.key().to_string()).or_insert(e);
                }
            }
        }
    }
    failed
}

/// One policy's counts and problems as its verdicts are judged.
struct Tally {
    summary: Summary,
    problems: TopProblems,
    egress_warnings: usize,
}

impl Tally {
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
            if matches!(w, crate::plan::Warning::NoInternetEgress) {
                self.egress_warnings += 1;
            }
            let reason = Reason::of_warning(w);
            self.problems.offer(reason, v.subnet.as_str(), || {
                reason.problem(v.subnet.to_string(), w.message())
            });
        }
    }

    /// A table the policy releases: its subnets count as released; under `Audit` it is a
    /// problem saying what `Enforce` would do.
    fn released(&mut self, r: &crate::plan::Release, mode: Mode) {
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

/// Turns verdicts and write results into per-policy summaries and capped problem lists.
fn summarize(
    policies: &[DesiredState],
    first: &Plan,
    results: &[(&PlannedWrite, Option<&ArmError>)],
    final_verdicts: &[SubnetVerdict],
    applied: bool,
    unreadable: &BTreeMap<String, crate::model::SubscriptionError>,
) -> Vec<PolicyReport> {
    let failed_by_subnet = failures_by_subnet(first, results);
    let before: HashMap<(&str, &str), &Verdict> = first
        .verdicts
        .iter()
        .map(|v| ((v.policy.as_str(), v.subnet.key()), &v.verdict))
        .collect();
    policies
        .iter()
        .map(|p| {
            let verdicts: Vec<&SubnetVerdict> = final_verdicts
                .iter()
                .filter(|v| v.policy == p.name)
                .collect();
            let s = Summary {
                subnets_matched: verdicts.len() as i64,
                ..Summary::default()
            };
            let mut problems = TopProblems::default();
            let mut unreadable_subscriptions = Vec::new();
            for sub in p.subscriptions() {
                if let Some(e) = unreadable.get(&sub) {
                    problems.push(Problem {
                        subnet_id: format!("/subscriptions/{sub}"),
                        reason: Reason::SubscriptionUnreadable.code().into(),
                        message: format!(
                            "subscription {sub} cannot be listed ({e}); check the ID in the selector and the identity's role there"
                        ),
                    });
                    unreadable_subscriptions.push(sub);
                }
            }
            let mut tally = Tally {
                summary: s,
                problems,
                egress_warnings: 0,
            };
            for v in &verdicts {
                let repaired = applied
                    && matches!(
                        before.get(&(p.name.as_str(), v.subnet.key())),
                        Some(Verdict::Drift { .. })
                    );
                tally.judge(v, failed_by_subnet.get(v.subnet.key()).copied(), repaired);
            }
            for r in first.released.iter().filter(|r| r.policy == p.name) {
                tally.released(r, p.mode);
            }
            let Tally {
                summary: s,
                problems,
                egress_warnings,
            } = tally;
            let mine = |w: &PlannedWrite| w.policy == p.name;
            PolicyReport {
                name: p.name.clone(),
                mode: p.mode,
                summary: s,
                problems_dropped: problems.offered - problems.kept.len(),
                problems: problems.kept,
                destinations: p.destinations.iter().map(|d| d.prefix()).collect(),
                writes_planned: first.writes.iter().filter(|w| mine(w)).count(),
                writes_done: results
                    .iter()
                    .filter(|(w, e)| mine(w) && e.is_none())
                    .count(),
                writes_failed: results
                    .iter()
                    .filter(|(w, e)| mine(w) && e.is_some())
                    .count(),
                egress_warnings,
                verification: None,
                dns: None,
                unreadable_subscriptions,
                problems_total: 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{RouteTableId, SubnetId};
    use crate::model::{NextHopType, Route};
    use crate::plan::RouteChange;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    /// The bounded collector keeps exactly what sorting everything and cutting would keep,
    /// counts everything offered, and builds only what it keeps.
    #[test]
    fn top_problems_keeps_the_first_in_report_order_and_builds_no_more() {
        let reasons = [
            Reason::Drift,
            Reason::WriteFailed,
            Reason::Conflict,
            Reason::NoRouteTable,
            Reason::Overlap,
        ];
        let all: Vec<(Reason, Problem)> = (0..400)
            .map(|i| {
                let r = reasons[i % reasons.len()];
                (r, r.problem(format!("/s/{:03}", (i * 37) % 400), ""))
            })
            .collect();
        let built = std::cell::Cell::new(0);
        let mut top = TopProblems::default();
        for (r, p) in &all {
            top.offer(*r, &p.subnet_id, || {
                built.set(built.get() + 1);
                p.clone()
            });
        }
        let mut sorted: Vec<Problem> = all.into_iter().map(|(_, p)| p).collect();
        sorted.sort_by(|a, b| (rank_of(a), &a.subnet_id).cmp(&(rank_of(b), &b.subnet_id)));
        sorted.truncate(MAX_PROBLEMS);
        assert_eq!(top.kept, sorted);
        assert_eq!(top.offered, 400);
        assert!(built.get() < 400, "built {} of 400", built.get());
    }

    /// A port whose writes to subscription "a" wait until every write to subscription "b" is
    /// done: with one shared pool of lanes, "a" would hold the only slot and never finish.
    struct Blocking {
        b_done: AtomicUsize,
        b_total: usize,
        released: Notify,
    }

    #[async_trait::async_trait]
    impl NetworkApi for Blocking {
        async fn activity_log(
            &self,
            _: &str,
            _: i64,
        ) -> Result<Vec<crate::azure::ActivityEvent>, ArmError> {
            Ok(Vec::new())
        }
        fn route_identities(&self, _: &crate::azure::IdentityRoutes) -> Result<(), ArmError> {
            Ok(())
        }
        async fn inventory(&self, _: &BTreeSet<String>) -> Result<Inventory, ArmError> {
            Ok(Inventory::default())
        }
        async fn create_route_table(
            &self,
            _: &RouteTableId,
            _: &str,
            _: &BTreeMap<String, String>,
            _: bool,
            _: &[Route],
        ) -> Result<(), ArmError> {
            Ok(())
        }
        async fn put_route(&self, table: &RouteTableId, _: &Route) -> Result<(), ArmError> {
            if table.subscription() == "a" {
                let wait = self.released.notified();
                if self.b_done.load(Ordering::SeqCst) < self.b_total {
                    wait.await;
                }
            } else if self.b_done.fetch_add(1, Ordering::SeqCst) + 1 == self.b_total {
                self.released.notify_waiters();
            }
            Ok(())
        }
        async fn delete_route(&self, _: &RouteTableId, _: &str) -> Result<(), ArmError> {
            Ok(())
        }
        async fn set_subnet_route_table(
            &self,
            _: &SubnetId,
            _: Option<&RouteTableId>,
            _: Option<&RouteTableId>,
        ) -> Result<(), ArmError> {
            Ok(())
        }
        async fn delete_route_table(&self, _: &RouteTableId) -> Result<(), ArmError> {
            Ok(())
        }
        async fn egress_facts(
            &self,
            _: &BTreeSet<String>,
        ) -> Result<crate::model::EgressFacts, ArmError> {
            Ok(crate::model::EgressFacts::default())
        }
        async fn management_group_subscriptions(
            &self,
            _: &str,
        ) -> Result<BTreeSet<String>, ArmError> {
            Ok(BTreeSet::new())
        }
        async fn network_interfaces(
            &self,
            _: &BTreeSet<String>,
        ) -> Result<Vec<crate::model::NetworkInterface>, ArmError> {
            Ok(Vec::new())
        }
        async fn effective_routes(
            &self,
            nic: &str,
        ) -> Result<Vec<crate::effective::EffectiveRoute>, ArmError> {
            Err(ArmError::local(
                ErrorClass::NeedsUserAction,
                "NetworkInterfaces_GetEffectiveRouteTable",
                nic,
                None,
                "not used by this test",
            ))
        }
        fn read_budget(&self, _: &str) -> crate::azure::ReadBudget {
            crate::azure::ReadBudget {
                capacity: 250.0,
                refill_per_sec: 25.0,
                remaining: None,
            }
        }
    }

    fn put(sub: &str, table: &str) -> PlannedWrite {
        PlannedWrite {
            policy: "p".into(),
            write: Write::PutRoute {
                table: RouteTableId::new(sub, "rg", table),
                route: Route {
                    name: "kms".into(),
                    address_prefix: "20.118.99.224/32".into(),
                    next_hop_type: NextHopType::Internet,
                    next_hop_ip_address: None,
                },
                change: RouteChange::Create,
            },
        }
    }

    #[tokio::test]
    async fn a_stalled_subscription_does_not_hold_back_the_others() {
        // Subscription "a" first in plan order, so a shared pool would start with its lanes.
        let writes: Vec<PlannedWrite> = (0..3)
            .map(|i| put("a", &format!("t{i}")))
            .chain((0..5).map(|i| put("b", &format!("t{i}"))))
            .collect();
        let api = Blocking {
            b_done: AtomicUsize::new(0),
            b_total: 5,
            released: Notify::new(),
        };
        // The timeout only turns a deadlock into a failure; it is not a speed assertion.
        let results = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            apply(&api, &Plan::from_writes(writes.clone()), 1, &|_| {}, None),
        )
        .await
        .expect("subscription b's writes ran while a's were stalled");
        assert_eq!(results.len(), 8);
        assert!(results.iter().all(|r| r.error.is_none()));
        // Results come back in plan order whatever order they finished in.
        let order: Vec<String> = results
            .iter()
            .map(|r| writes[r.index].write.table().to_string())
            .collect();
        let expected: Vec<String> = writes.iter().map(|w| w.write.table().to_string()).collect();
        assert_eq!(order, expected);
    }
}
