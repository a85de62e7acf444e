//! `kmsroute run`: the executor as a level-triggered Kubernetes controller over
//! `KmsRoutePolicy`. Thin wiring: a finalizer that carries out `deletionPolicy`, status written
//! through the status subresource by server-side apply (only when it changed), deduplicated
//! Events, resync with jitter, per-object exponential backoff, and a Lease so only the leader
//! reconciles. Beside the policy watch, the shared Azure inventory ([`inventory`]) refreshes
//! each subscription in use on a pace and queues a pass for exactly the policies whose subnets
//! or tables changed; passes plan on it instead of listing.

mod conditions;
pub mod contested;
mod finalizer;
pub mod inventory;
pub mod leader;
pub mod metrics;
pub mod probes;

use crate::api::{
    DeletionPolicy, DesiredState, FINALIZER, KmsRoutePolicy, KmsRoutePolicyStatus, Mode,
    validate_policy,
};
use crate::azure::{ArmError, ErrorClass, NetworkApi};
use crate::catalog::Cloud;
use crate::plan::plan_cleanup;
use crate::reconcile::{self, InventorySource, Options, Report, RunMode};
use conditions::{conditions_for, error_conditions};
use futures::StreamExt;
use inventory::{ChangeEvent, InventorySettings, SharedInventory};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use leader::{LeaderElector, LeaseSettings};
use metrics::ControllerMetrics;
pub use probes::Probes;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Mutex, watch};

/// The field manager that owns `status`.
pub const FIELD_MANAGER: &str = "kmsroute";

/// One error type for the controller, each knowing its metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ARM: {0}")]
    Arm(#[from] ArmError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    /// Some of a pass's writes failed; `class` is the worst of their classes, so a 403 waits on
    /// the slow user-action timer and a 429 is counted as throttling.
    #[error("{count} write(s) failed ({})", class.label())]
    WritesFailed { class: ErrorClass, count: usize },
    #[error("the pass reported nothing for policy {0}")]
    NoReport(String),
}

/// Why the controller stopped (it ends cleanly when told to stop).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Lease(#[from] leader::LeaseError),
    #[error("the lease loop ended: {0}")]
    LeaseLoop(#[from] tokio::task::JoinError),
}

/// How bad an error class is for backoff: a human must act > throttled > the rest.
fn severity(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::NeedsUserAction => 3,
        ErrorClass::Throttled => 2,
        ErrorClass::Retryable => 1,
        ErrorClass::Conflict | ErrorClass::NotFound => 0,
    }
}

/// The worst class among failed writes.
pub fn worst_class(classes: impl IntoIterator<Item = ErrorClass>) -> Option<ErrorClass> {
    classes.into_iter().max_by_key(|c| severity(*c))
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Arm(e) => e.class.label(),
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::WritesFailed { class, .. } => class.label(),
            Error::NoReport(_) => "internal",
        }
    }
    fn needs_user_action(&self) -> bool {
        match self {
            Error::Arm(e) => e.class == ErrorClass::NeedsUserAction,
            Error::WritesFailed { class, .. } => *class == ErrorClass::NeedsUserAction,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub cloud: Cloud,
    pub concurrency: usize,
    /// Re-check interval for errors only a human can fix.
    pub slow_retry: Duration,
    /// First backoff step after an error; doubles up to `slow_retry`.
    pub base_backoff: Duration,
    /// Upper bound on every policy's resync interval (`--max-resync`), e.g. to tighten drift
    /// detection cluster-wide without editing policies.
    pub resync_cap: Option<Duration>,
    pub lease: LeaseSettings,
    /// For policies with `spec.kms.resolveDns` (the system resolver in `kmsroute run`).
    pub resolver: Option<Arc<dyn crate::dns::Resolver>>,
    /// Pace and read share of the shared inventory's refreshes.
    pub inventory: InventorySettings,
    /// When a route table counts as contested (reverts within a window).
    pub contest: crate::plan::contest::ContestSettings,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub arm: Arc<dyn NetworkApi>,
    pub settings: Settings,
    pub metrics: Arc<ControllerMetrics>,
    recorder: Recorder,
    store: Store<KmsRoutePolicy>,
    failures: Mutex<HashMap<String, u32>>,
    /// Last Event message per (policy, reason), so a steady condition does not spam.
    events_sent: Mutex<HashMap<(String, String), String>>,
    /// Generation and time of each policy's last fully successful pass. Our own status writes
    /// come back as watch events; they must not cost another pass of ARM reads.
    last_pass: Mutex<HashMap<String, (Option<i64>, std::time::Instant)>>,
    /// Passes so far: rotates the effective-route verification sample.
    passes: std::sync::atomic::AtomicU64,
    /// The shared Azure inventory every pass plans on.
    pub inventory: Arc<SharedInventory>,
    /// Policies queued by a detected change, with when it was first seen (the start of the
    /// drift-repair latency), until a pass has looked.
    dirty: Mutex<HashMap<String, std::time::Instant>>,
    /// Policies whose last pass failed on errors only a human can fix (401/403, a policy
    /// denial), with that generation and the end of the slow timer. The status that pass wrote
    /// comes back as a watch event; it must not buy another round of refused writes.
    held_back: Mutex<HashMap<String, (Option<i64>, std::time::Instant)>>,
    /// Each policy's checked spec by (uid, generation): the change fan-out and overlap checks
    /// consult every policy on every inventory change, and checking a 5,000-subnet spec against
    /// the CRD's schema costs milliseconds. A generation is a spec; without one, no caching.
    validated: std::sync::Mutex<HashMap<String, ValidatedEntry>>,
    /// Each policy's own writes and the reverts of them (contested route tables).
    contests: contested::Contests,
}

/// (uid, generation) and the policy's desired state, `None` when it is invalid.
type ValidatedEntry = ((Option<String>, i64), Option<DesiredState>);

fn jitter(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + (rand::random::<f64>() * 2.0 - 1.0) * spread)
}

impl Context {
    /// `validate_policy(p).desired`, remembered per object generation.
    fn desired(&self, p: &KmsRoutePolicy) -> Option<DesiredState> {
        let check = || {
            validate_policy(p, self.settings.cloud)
                .ok()
                .map(|v| v.desired)
        };
        let Some(generation) = p.meta().generation else {
            return check();
        };
        let key = (p.meta().uid.clone(), generation);
        let name = p.name_any();
        let mut cache = self.validated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, d)) = cache.get(&name)
            && *k == key
        {
            return d.clone();
        }
        let d = check();
        cache.insert(name, (key, d.clone()));
        d
    }

    async fn event(&self, policy: &KmsRoutePolicy, type_: EventType, reason: &str, note: String) {
        let key = (policy.name_any(), reason.to_string());
        {
            let mut sent = self.events_sent.lock().await;
            if sent.get(&key) == Some(&note) {
                return;
            }
            sent.insert(key, note.clone());
        }
        // A cluster-scoped object's reference has no namespace, so the recorder files the Event
        // in `default`: where the API server wants it and `kubectl describe krp` looks.
        let reference = policy.object_ref(&());
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, "could not publish an Event");
        }
    }

    async fn forget_event(&self, policy: &str, reason: &str) {
        self.events_sent
            .lock()
            .await
            .remove(&(policy.to_string(), reason.to_string()));
    }

    /// Every other valid policy in the cache that reads any of these subscriptions (only they
    /// can select the same subnets), excluding ones being deleted.
    fn others(
        &self,
        name: &str,
        subscriptions: &std::collections::BTreeSet<String>,
    ) -> Vec<DesiredState> {
        self.store
            .state()
            .iter()
            .filter(|p| p.name_any() != name && p.meta().deletion_timestamp.is_none())
            .filter_map(|p| self.desired(p))
            // A policy selecting by management group may cover these subscriptions too; the pass
            // resolves its groups before deciding overlaps.
            .filter(|d| {
                !d.subscriptions().is_disjoint(subscriptions)
                    || d.selector
                        .as_ref()
                        .is_some_and(|s| !s.management_groups.is_empty())
            })
            .collect()
    }

    /// Holds the policy's passes back for the slow timer (see [`Context::held_back`]).
    async fn hold_back(&self, policy: &str, generation: Option<i64>) {
        self.held_back.lock().await.insert(
            policy.to_string(),
            (
                generation,
                std::time::Instant::now() + self.settings.slow_retry,
            ),
        );
    }

    /// Maps a change of the inventory to the policies that select what changed, marks them
    /// dirty and returns them to be queued.
    async fn affected(&self, change: &ChangeEvent) -> Vec<ObjectRef<KmsRoutePolicy>> {
        let mut out = Vec::new();
        for p in self.store.state() {
            let name = p.name_any();
            if p.meta().deletion_timestamp.is_some() || change.writer.as_deref() == Some(&name) {
                continue;
            }
            let Some(mut desired) = self.desired(&p) else {
                continue;
            };
            // Subscriptions that came from management groups are known from the last pass.
            if let (Some(sel), Some(wanted)) =
                (desired.selector.as_mut(), self.inventory.wanted_by(&name))
            {
                sel.subscriptions.extend(wanted);
            }
            if !desired.subscriptions().contains(&change.subscription)
                || !change
                    .subnets
                    .iter()
                    .any(|(id, tags)| desired.selects(id, tags))
            {
                continue;
            }
            self.dirty
                .lock()
                .await
                .entry(name)
                .or_insert(change.detected);
            out.push(ObjectRef::from_obj(p.as_ref()));
        }
        out
    }
}

/// Reconciles one policy.
pub async fn reconcile(policy: Arc<KmsRoutePolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let api: Api<KmsRoutePolicy> = Api::all(ctx.client.clone());
    let name = policy.name_any();
    let result = finalizer::finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            finalizer::Event::Apply(p) => apply(&p, &ctx).await,
            finalizer::Event::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => {
            Error::Finalizer(e)
        }
        finalizer::Error::UnnamedObject => Error::NoReport("an object without a name".into()),
    });
    ctx.metrics.reconcile_done(
        if result.is_ok() { "success" } else { "error" },
        started.elapsed(),
    );
    if result.is_ok() {
        ctx.failures.lock().await.remove(&name);
    }
    result
}

/// Backoff per object: exponential with jitter, reset on success; user-action errors wait on
/// the slow timer (and are never abandoned).
pub fn error_policy(policy: Arc<KmsRoutePolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(policy = %policy.name_any(), error = %error, "reconcile failed");
    ctx.metrics.error(error.metric_label());
    if error.needs_user_action() {
        return Action::requeue(jitter(ctx.settings.slow_retry, 0.1));
    }
    let n = ctx
        .failures
        .try_lock()
        .map(|mut f| {
            let n = f.entry(policy.name_any()).or_insert(0);
            *n += 1;
            *n
        })
        .unwrap_or(1);
    let step = ctx
        .settings
        .base_backoff
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(16)));
    Action::requeue(jitter(step.min(ctx.settings.slow_retry), 0.2))
}

/// Writes status through the status subresource, only when something changed (the sync
/// time alone refreshes at most hourly, so a steady resync writes nothing to etcd).
async fn write_status(
    ctx: &Context,
    policy: &KmsRoutePolicy,
    mut status: KmsRoutePolicyStatus,
) -> Result<(), Error> {
    let old = policy.status.clone().unwrap_or_default();
    let stale_sync = old
        .last_sync_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_none_or(|t| Timestamp::now().duration_since(t).as_secs() > 3600);
    let mut comparable = status.clone();
    comparable.last_sync_time = old.last_sync_time.clone();
    if comparable == old && !stale_sync {
        return Ok(());
    }
    if status.last_sync_time.is_none() {
        status.last_sync_time = old.last_sync_time;
    }
    let api: Api<KmsRoutePolicy> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({"apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy", "status": status});
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn apply(policy: &KmsRoutePolicy, ctx: &Context) -> Result<Action, Error> {
    let name = policy.name_any();
    let generation = policy.meta().generation;
    let old = policy.status.clone().unwrap_or_default();
    let desired = match validate_policy(policy, ctx.settings.cloud) {
        Ok(v) => {
            ctx.forget_event(&name, "InvalidSpec").await;
            v.desired
        }
        Err(errors) => return invalid_spec(policy, ctx, &errors, &old).await,
    };
    let resync = ctx
        .settings
        .resync_cap
        .map_or(desired.resync, |cap| desired.resync.min(cap));
    // Management groups decide the subscriptions (re-read every pass, so a new landing-zone
    // subscription is covered at the next one).
    let (desired, group_errors) = {
        let resolved =
            reconcile::resolve_management_groups(ctx.arm.as_ref(), std::slice::from_ref(&desired))
                .await;
        let (mut resolved, mut errors) = match resolved {
            Ok(r) => r,
            Err(e) => return Err(pass_failed(policy, ctx, e, &old).await),
        };
        (
            resolved.pop().unwrap_or(desired),
            errors.remove(&name).unwrap_or_default(),
        )
    };
    let subscriptions = desired.subscriptions();
    ctx.inventory.want(&name, subscriptions.clone());
    let drift_seen = ctx.dirty.lock().await.remove(&name);
    if drift_seen.is_none()
        && let Some(wait) = not_yet(ctx, &name, generation, resync).await
    {
        return Ok(Action::requeue(wait));
    }
    let mut policies = ctx.others(&name, &subscriptions);
    policies.push(desired.clone());
    let source: Arc<dyn InventorySource> = ctx.inventory.clone();
    let options = Options {
        mode: RunMode::Apply,
        concurrency: ctx.settings.concurrency,
        only_policy: Some(name.clone()),
        resolver: ctx.settings.resolver.clone(),
        round: ctx
            .passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        inventory: Some(source),
        approved: None,
        interrupt: None,
    };
    let report: Report =
        match reconcile::reconcile(ctx.arm.as_ref(), &policies, &options, &|_| {}).await {
            Ok(r) => r,
            Err(e) => return Err(pass_failed(policy, ctx, e, &old).await),
        };
    let mut report = report;
    // Reverts of this policy's own writes: counted, attributed, and said (contested tables).
    let contest = ctx
        .contests
        .after_pass(ctx.arm.as_ref(), &name, &report)
        .await;
    ctx.metrics
        .contests(&name, contest.reverts, contest.contested);
    match report.policies.iter_mut().find(|p| p.name == name) {
        Some(mine) => {
            reconcile::report_group_errors(mine, &group_errors);
            mine.add_problems(contest.problems);
        }
        None => return Err(Error::NoReport(name)),
    }
    let Some(mine) = report.policies.iter().find(|p| p.name == name) else {
        return Err(Error::NoReport(name));
    };
    let done = report.writes_done();
    tracing::info!(policy = %name, planned = report.plan.writes.len(), done, failed = report.writes_failed(), in_sync = mine.summary.in_sync, repaired = mine.summary.repaired, "pass complete");
    ctx.metrics.repairs(done as u64);
    ctx.metrics.set_policy(&name, mine.ready(), &mine.summary);
    if let Some(seen) = drift_seen
        && mine.writes_done > 0
    {
        ctx.metrics.drift_repaired(seen.elapsed());
    }
    let status = KmsRoutePolicyStatus {
        observed_generation: generation,
        conditions: conditions_for(mine, done, generation, &old.conditions),
        summary: Some(mine.summary.clone()),
        destinations: mine.destinations.clone(),
        last_sync_time: Some(Timestamp::now().to_string()),
        problems: mine.problems.clone(),
    };
    write_status(ctx, policy, status).await?;
    announce(policy, ctx, &report, mine).await;
    for text in contest.announcements {
        // Once per table per window (the ledger decides): never folded into an earlier one.
        ctx.forget_event(&name, "Contested").await;
        ctx.event(policy, EventType::Warning, "Contested", text)
            .await;
    }
    if mine.writes_failed > 0 {
        ctx.last_pass.lock().await.remove(&name);
        let class = worst_class(
            report
                .outcomes()
                .filter(|(w, _)| w.policy == name)
                .filter_map(|(_, e)| e.map(|e| e.class)),
        )
        .unwrap_or(ErrorClass::Retryable);
        if class == ErrorClass::NeedsUserAction {
            ctx.hold_back(&name, generation).await;
        }
        return Err(Error::WritesFailed {
            class,
            count: mine.writes_failed,
        });
    }
    ctx.held_back.lock().await.remove(&name);
    ctx.last_pass
        .lock()
        .await
        .insert(name, (generation, std::time::Instant::now()));
    Ok(Action::requeue(jitter(resync, 0.1)))
}

/// A spec `validate` refuses: the status and an Event say why, and only an edit (which
/// triggers a reconcile) can fix it.
async fn invalid_spec(
    policy: &KmsRoutePolicy,
    ctx: &Context,
    errors: &[crate::api::FieldError],
    old: &KmsRoutePolicyStatus,
) -> Result<Action, Error> {
    let name = policy.name_any();
    let generation = policy.meta().generation;
    ctx.inventory.release(&name);
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let status = KmsRoutePolicyStatus {
        observed_generation: generation,
        conditions: error_conditions("InvalidSpec", message.clone(), generation, &old.conditions),
        ..KmsRoutePolicyStatus::default()
    };
    write_status(ctx, policy, status).await?;
    ctx.metrics
        .set_policy(&name, false, &crate::api::Summary::default());
    ctx.event(policy, EventType::Warning, "InvalidSpec", message)
        .await;
    Ok(Action::await_change())
}

/// How long to wait before a pass is due, when none is: the user-action timer runs, or
/// nothing the user controls changed since the last good pass (a status-only update) and the
/// inventory saw no change to this policy's subnets (the resync schedule holds).
async fn not_yet(
    ctx: &Context,
    name: &str,
    generation: Option<i64>,
    resync: Duration,
) -> Option<Duration> {
    if let Some((g, until)) = ctx.held_back.lock().await.get(name).copied()
        && g == generation
        && until > std::time::Instant::now()
    {
        return Some(until - std::time::Instant::now());
    }
    if let Some((g, at)) = ctx.last_pass.lock().await.get(name)
        && *g == generation
        && at.elapsed() < resync.mul_f64(0.9)
    {
        return Some(resync - at.elapsed());
    }
    None
}

/// A pass that could not run (Azure unreachable, throttled, refused): the status keeps what
/// the last pass found, says why in its conditions, and an Event says it too.
async fn pass_failed(
    policy: &KmsRoutePolicy,
    ctx: &Context,
    e: ArmError,
    old: &KmsRoutePolicyStatus,
) -> Error {
    let name = policy.name_any();
    let generation = policy.meta().generation;
    if e.class == ErrorClass::NeedsUserAction {
        ctx.hold_back(&name, generation).await;
    }
    let reason = match e.class {
        ErrorClass::NeedsUserAction => "AzureAuthFailed",
        ErrorClass::Throttled => "Throttled",
        _ => "AzureUnavailable",
    };
    let status = KmsRoutePolicyStatus {
        observed_generation: generation,
        conditions: error_conditions(reason, e.to_string(), generation, &old.conditions),
        summary: old.summary.clone(),
        destinations: old.destinations.clone(),
        last_sync_time: old.last_sync_time.clone(),
        problems: old.problems.clone(),
    };
    if let Err(status_error) = write_status(ctx, policy, status).await {
        return status_error;
    }
    ctx.metrics
        .set_policy(&name, false, &old.summary.clone().unwrap_or_default());
    ctx.event(policy, EventType::Warning, reason, e.to_string())
        .await;
    e.into()
}

/// The Events of a pass: repairs and releases (news every time), a selector that matches
/// nothing, and one Warning per problem reason that raises one (cleared when it is gone).
async fn announce(
    policy: &KmsRoutePolicy,
    ctx: &Context,
    report: &Report,
    mine: &crate::reconcile::PolicyReport,
) {
    let name = policy.name_any();
    let done = report.writes_done();
    // Release writes (tables no selected subnet uses any more) apart from repairs.
    let released_tables: std::collections::BTreeSet<&str> = report
        .plan
        .released
        .iter()
        .filter(|r| r.policy == name)
        .map(|r| r.table.key())
        .collect();
    let (mut releases, mut tables_deleted) = (0usize, 0usize);
    for (w, _) in report
        .outcomes()
        .filter(|(w, e)| w.policy == name && e.is_none())
        .filter(|(w, _)| released_tables.contains(w.write.table().key()))
    {
        releases += 1;
        if matches!(w.write, crate::plan::Write::DeleteRouteTable { .. }) {
            tables_deleted += 1;
        }
    }
    let repairs = done.saturating_sub(releases);
    if repairs > 0 {
        // A repair is news every time: never deduplicated.
        ctx.forget_event(&name, "Repaired").await;
        ctx.event(
            policy,
            EventType::Normal,
            "Repaired",
            format!(
                "{repairs} write(s) to Azure restored the KMS routes ({} subnet(s) repaired)",
                mine.summary.repaired
            ),
        )
        .await;
    }
    if releases > 0 {
        ctx.forget_event(&name, "Released").await;
        ctx.event(
            policy,
            EventType::Normal,
            "Released",
            format!(
                "{} subnet(s) left the selection: {releases} write(s) removed the policy's routes from their tables and deleted {tables_deleted} table(s) it had created",
                mine.summary.released
            ),
        )
        .await;
    }
    if mine.nothing_selected() {
        ctx.event(
            policy,
            EventType::Warning,
            "NothingSelected",
            "the selector matches no subnet in its subscriptions".into(),
        )
        .await;
    } else {
        ctx.forget_event(&name, "NothingSelected").await;
    }
    for reason in crate::reconcile::Reason::WARNING_EVENTS.map(|r| r.code()) {
        let notes: Vec<String> = mine
            .problems
            .iter()
            .filter(|p| p.reason == reason)
            .map(|p| format!("{}: {}", p.subnet_id, p.message))
            .collect();
        if notes.is_empty() {
            ctx.forget_event(&name, reason).await;
        } else {
            ctx.event(policy, EventType::Warning, reason, notes.join("; "))
                .await;
        }
    }
}

async fn cleanup(policy: &KmsRoutePolicy, ctx: &Context) -> Result<Action, Error> {
    let name = policy.name_any();
    let Ok(v) = validate_policy(policy, ctx.settings.cloud) else {
        // Never valid, so never written: nothing in Azure is ours.
        return Ok(Action::await_change());
    };
    let desired = v.desired;
    if desired.deletion_policy == DeletionPolicy::Orphan || desired.mode == Mode::Audit {
        ctx.inventory.release(&name);
        ctx.metrics.forget_policy(&name);
        ctx.contests.forget(&name).await;
        ctx.event(
            policy,
            EventType::Normal,
            "Orphaned",
            "deletionPolicy Orphan (or Audit mode): Azure left as it is".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let subscriptions = desired.subscriptions();
    let others = ctx.others(&name, &subscriptions);
    // Deletion reads afresh: it is rare, and it removes things.
    let inventory = ctx
        .inventory
        .reread(&subscriptions, &subscriptions, Some(&name))
        .await?;
    let plan = plan_cleanup(&desired, &others, &inventory);
    drop(inventory);
    let results = reconcile::apply(
        ctx.arm.as_ref(),
        &plan,
        ctx.settings.concurrency,
        &|_| {},
        None,
    )
    .await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| e.to_string()))
        .collect();
    if !failed.is_empty() {
        ctx.event(
            policy,
            EventType::Warning,
            "CleanupFailed",
            failed.join("; "),
        )
        .await;
        let class = worst_class(
            results
                .iter()
                .filter_map(|r| r.error.as_ref().map(|e| e.class)),
        )
        .unwrap_or(ErrorClass::Retryable);
        return Err(Error::WritesFailed {
            class,
            count: failed.len(),
        });
    }
    ctx.inventory.release(&name);
    ctx.metrics.forget_policy(&name);
    ctx.contests.forget(&name).await;
    let count = |f: fn(&crate::plan::Write) -> bool| {
        results
            .iter()
            .filter(|r| r.error.is_none() && f(&plan.writes[r.index].write))
            .count()
    };
    let routes = count(|w| matches!(w, crate::plan::Write::DeleteRoute { .. }));
    let dissociated = count(|w| matches!(w, crate::plan::Write::DissociateSubnet { .. }));
    let tables = count(|w| matches!(w, crate::plan::Write::DeleteRouteTable { .. }));
    ctx.event(
        policy,
        EventType::Normal,
        "CleanedUp",
        format!(
            "removed {routes} owned route(s), dissociated {dissociated} subnet(s) and deleted {tables} route table(s) the policy created"
        ),
    )
    .await;
    Ok(Action::await_change())
}

/// Aborts a spawned task when dropped, so dropping `run` (a killed process) stops everything.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the controller while this replica leads; stops at once when leadership is lost, and
/// returns when `stop` turns true (after releasing the lease). An error means this replica must
/// not run at all (another one holds the lease under the same identity).
pub async fn run(
    client: kube::Client,
    arm: Arc<dyn NetworkApi>,
    settings: Settings,
    metrics: Arc<ControllerMetrics>,
    probes: Probes,
    stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let (lead_tx, mut lead_rx) = watch::channel(false);
    let elector = LeaderElector::new(client.clone(), settings.lease.clone());
    let mut elector_task = AbortOnDrop(tokio::spawn(elector.run(
        lead_tx,
        stop.clone(),
        probes.clone(),
    )));
    let mut stop_rx = stop.clone();
    let elector_outcome =
        |r: Result<Result<(), leader::LeaseError>, tokio::task::JoinError>| Ok(r??);
    loop {
        // Wait to lead (or to stop).
        while !*lead_rx.borrow() {
            metrics.set_leader(false);
            probes.leading.store(false, Ordering::SeqCst);
            tokio::select! {
                r = lead_rx.changed() => if r.is_err() { return elector_outcome((&mut elector_task.0).await); },
                _ = stop_rx.changed() => {}
            }
            if *stop_rx.borrow() {
                return elector_outcome((&mut elector_task.0).await);
            }
        }
        metrics.set_leader(true);
        probes.leading.store(true, Ordering::SeqCst);
        let mut task = AbortOnDrop(tokio::spawn(run_controller(
            client.clone(),
            arm.clone(),
            settings.clone(),
            metrics.clone(),
            probes.clone(),
        )));
        // Lead until the lease is lost or we are told to stop; then abort in-flight work.
        loop {
            tokio::select! {
                r = lead_rx.changed() => if r.is_err() || !*lead_rx.borrow() { tracing::debug!(closed = r.is_err(), "lease watch ended leadership"); break; },
                _ = stop_rx.changed() => if *stop_rx.borrow() { break; },
                _ = &mut task.0 => { tracing::error!("the controller stopped on its own; restarting it"); break; },
            }
        }
        task.0.abort();
        let _ = (&mut task.0).await;
        metrics.set_leader(false);
        probes.leading.store(false, Ordering::SeqCst);
        // The cache belonged to that term: a new term lists again before it is ready.
        probes.watch_synced.store(false, Ordering::SeqCst);
        if *stop_rx.borrow() {
            return elector_outcome((&mut elector_task.0).await);
        }
        tracing::warn!("leadership lost: reconciling stopped");
    }
}

async fn run_controller(
    client: kube::Client,
    arm: Arc<dyn NetworkApi>,
    settings: Settings,
    metrics: Arc<ControllerMetrics>,
    probes: Probes,
) {
    let api: Api<KmsRoutePolicy> = Api::all(client.clone());
    // Passes queued by the inventory's change detection (kube-runtime's external triggers).
    let (trigger_tx, trigger_rx) = tokio::sync::mpsc::unbounded_channel();
    let triggers = futures::stream::unfold(trigger_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    let controller =
        Controller::new(api, watcher::Config::default().any_semantic()).reconcile_on(triggers);
    let store = controller.store();
    let (inventory, mut changes) =
        SharedInventory::new(arm.clone(), settings.inventory, metrics.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kmsroute".into(),
            instance: Some(settings.lease.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client,
        arm,
        settings: settings.clone(),
        metrics,
        recorder,
        store: store.clone(),
        failures: Mutex::new(HashMap::new()),
        events_sent: Mutex::new(HashMap::new()),
        last_pass: Mutex::new(HashMap::new()),
        passes: std::sync::atomic::AtomicU64::new(0),
        inventory,
        dirty: Mutex::new(HashMap::new()),
        held_back: Mutex::new(HashMap::new()),
        validated: std::sync::Mutex::new(HashMap::new()),
        contests: contested::Contests::new(settings.contest),
    });
    // Changes → the policies they concern → queued passes. Aborted with this function, so a
    // replica that loses the lease stops refreshing (the loops hold the inventory weakly).
    let trigger_ctx = ctx.clone();
    let _changes = AbortOnDrop(tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            for policy in trigger_ctx.affected(&change).await {
                trigger_ctx.metrics.triggered(&policy.name);
                if trigger_tx.send(policy).is_err() {
                    return;
                }
            }
        }
    }));
    // Ready once the policies this replica watches can be listed (the watch's own first step);
    // retried until it works, so a briefly unreachable API server only delays readiness.
    let list_api: Api<KmsRoutePolicy> = Api::all(ctx.client.clone());
    let watch_ready = probes.watch_synced.clone();
    let _synced = AbortOnDrop(tokio::spawn(async move {
        // Backed off (1 s doubling to a minute) and warned once per distinct error, so a cluster
        // without the CRD yet does not get a warning a second.
        let mut pause = Duration::from_secs(1);
        let mut last_error = String::new();
        loop {
            match list_api
                .list(&kube::api::ListParams::default().limit(1))
                .await
            {
                Ok(_) => {
                    watch_ready.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    let error = e.to_string();
                    if error != last_error {
                        tracing::warn!(error = %e, retry_in = ?pause, "cannot list KmsRoutePolicies yet (is the CRD installed?)");
                        last_error = error;
                    } else {
                        tracing::debug!(error = %e, retry_in = ?pause, "cannot list KmsRoutePolicies yet");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
    }));
    // Liveness: this beats only while the controller's own future is being polled.
    let heartbeat = probes.controller_loop.clone();
    let beating = async move {
        loop {
            heartbeat.beat();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };
    let running = controller
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(settings.concurrency.min(u16::MAX as usize) as u16),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    tokio::select! {
        _ = running => {}
        _ = beating => {}
    }
}
