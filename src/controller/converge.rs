//! What the controller does for one policy: [`converge`] a policy that exists (validate → due?
//! → pass → status → Events → requeue) and [`clean_up`] one being deleted.

use super::{Context, Error, events, jitter, status, worst_class};
use crate::api::{
    DeletionPolicy, DesiredState, FieldError, KmsRoutePolicy, KmsRoutePolicyStatus, Mode, Summary,
};
use crate::azure::{ArmError, ErrorClass};
use crate::executor::{self, PassDeps, PassParams, PolicyReport, Report, RunMode};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Converges one policy that exists.
pub async fn converge(policy: &KmsRoutePolicy, ctx: &Context) -> Result<Action, Error> {
    let name = policy.name_any();
    let generation = policy.meta().generation;
    let old = policy.status.clone().unwrap_or_default();
    let desired = match ctx.policies.check(policy, ctx.settings.cloud) {
        Ok(d) => d,
        Err(errors) => return invalid_spec(policy, ctx, &errors, &old).await,
    };
    ctx.policies.forget_event(&name, "InvalidSpec");
    if let Some(identity) = &desired.identity
        && !ctx.settings.allows(Some(identity))
    {
        return identity_not_allowed(policy, ctx, identity, &old).await;
    }
    ctx.policies.forget_event(&name, "IdentityNotAllowed");
    let resync = ctx
        .settings
        .resync_cap
        .map_or(desired.resync, |cap| desired.resync.min(cap));
    let drift_seen = ctx.policies.take_dirty(&name);
    if drift_seen.is_none()
        && let Some(wait) = ctx.policies.not_yet(&name, generation, resync)
    {
        return Ok(Action::requeue(wait));
    }
    let started = time::OffsetDateTime::now_utc().unix_timestamp();
    let route_names: Vec<String> = desired
        .destinations
        .iter()
        .map(|d| d.route_name.clone())
        .collect();
    let mut report = match pass(ctx, &name, desired).await {
        Ok(r) => r,
        Err(e) => return Err(pass_failed(policy, ctx, e, &old).await),
    };
    let Some(at) = report.policies.iter().position(|p| p.name == name) else {
        return Err(Error::NoReport(name));
    };
    // The subscriptions its management groups cover now are refreshed from here on.
    ctx.inventory
        .want(&name, report.policies[at].subscriptions.clone());
    // Reverts of this policy's own writes: counted, attributed, and said (contested tables).
    let contest = ctx
        .contests
        .after_pass(
            ctx.arm.as_ref(),
            &ctx.policies,
            &name,
            &report,
            &route_names,
            started,
        )
        .await;
    ctx.metrics
        .contests(&name, contest.reverts, contest.contested);
    report.policies[at].add_problems(contest.problems);
    let mine = &report.policies[at];
    record(ctx, &report, mine, drift_seen);
    let done = report.writes_done();
    status::write(ctx, policy, status::of_pass(policy, mine, done, &old)).await?;
    events::announce(ctx, policy, &report, mine).await;
    for text in contest.announcements {
        // Once per table per window (the ledger decides): never folded into an earlier one.
        events::say_again(ctx, policy, EventType::Warning, "Contested", text).await;
    }
    requeue(ctx, policy, &report, mine, resync)
}

/// One pass writing this policy's share, planned with every other policy that could select
/// the same subnets (so overlaps are decided the same way every time).
async fn pass(ctx: &Context, name: &str, desired: DesiredState) -> Result<Report, ArmError> {
    let mut policies = others(ctx, name, &desired);
    policies.push(desired);
    let params = PassParams {
        mode: RunMode::Write,
        concurrency: ctx.settings.concurrency,
        only_policy: Some(name.to_string()),
        round: ctx.passes.fetch_add(1, Ordering::Relaxed),
        approved: None,
    };
    let deps = PassDeps {
        inventory: Some(ctx.inventory.clone()),
        resolver: ctx.settings.resolver.clone(),
        interrupt: None,
    };
    executor::pass(ctx.arm.as_ref(), &policies, &params, &deps, &|_| {}).await
}

/// Every other valid policy in the cache that could select the same subnets, excluding ones
/// being deleted: those reading any of this policy's subscriptions (its own, and those its
/// management groups covered at its last pass), those selecting by management group (the pass
/// expands their groups before deciding overlaps), and all of them when this policy selects
/// by management group (its subscriptions are known only once the pass expanded them).
fn others(ctx: &Context, name: &str, desired: &DesiredState) -> Vec<DesiredState> {
    let by_group = |d: &DesiredState| {
        d.selector
            .as_ref()
            .is_some_and(|s| !s.management_groups.is_empty())
    };
    let mut covered = desired.subscriptions();
    covered.extend(ctx.inventory.wanted_by(name).unwrap_or_default());
    ctx.store
        .state()
        .iter()
        .filter(|p| p.name_any() != name && p.meta().deletion_timestamp.is_none())
        .filter_map(|p| ctx.policies.check(p, ctx.settings.cloud).ok())
        // A policy whose identity is not allowed is nobody's concern: it reaches nothing.
        .filter(|d| ctx.settings.allows(d.identity.as_ref()))
        .filter(|d| by_group(desired) || by_group(d) || !d.subscriptions().is_disjoint(&covered))
        .collect()
}

/// The pass in logs and metrics.
fn record(ctx: &Context, report: &Report, mine: &PolicyReport, drift_seen: Option<Instant>) {
    let done = report.writes_done();
    tracing::info!(policy = %mine.name, planned = report.plan.writes.len(), done, failed = report.writes_failed(), in_sync = mine.summary.in_sync, repaired = mine.summary.repaired, "pass complete");
    ctx.metrics.repairs(done as u64);
    ctx.metrics
        .set_policy(&mine.name, mine.ready(), &mine.summary);
    if let Some(seen) = drift_seen
        && mine.writes_done > 0
    {
        ctx.metrics.drift_repaired(seen.elapsed());
    }
}

/// When the policy is reconciled again: at its resync after a good pass; through the error
/// policy's backoff (or the slow timer, for errors only a human can fix) after failed writes.
fn requeue(
    ctx: &Context,
    policy: &KmsRoutePolicy,
    report: &Report,
    mine: &PolicyReport,
    resync: Duration,
) -> Result<Action, Error> {
    let name = &mine.name;
    let generation = policy.meta().generation;
    if mine.writes_failed > 0 {
        ctx.policies.pass_incomplete(name);
        let class = worst_class(
            report
                .outcomes()
                .filter(|(w, _)| &w.policy == name)
                .filter_map(|(_, e)| e.map(|e| e.class)),
        )
        .unwrap_or(ErrorClass::Retryable);
        if class == ErrorClass::NeedsUserAction {
            hold_back(ctx, name, generation);
        }
        return Err(Error::WritesFailed {
            class,
            count: mine.writes_failed,
        });
    }
    ctx.policies.passed(name, generation);
    Ok(Action::requeue(jitter(resync, 0.1)))
}

/// Holds this generation's passes back for the slow timer.
fn hold_back(ctx: &Context, name: &str, generation: Option<i64>) {
    let until = Instant::now() + ctx.settings.slow_retry;
    ctx.policies.hold_back(name, generation, until);
}

/// A policy naming an identity the installer did not allow: nothing is read or written for it;
/// the status (an `IdentityNotAllowed` problem) and a Warning Event say why and how to allow it.
async fn identity_not_allowed(
    policy: &KmsRoutePolicy,
    ctx: &Context,
    identity: &crate::ids::Identity,
    old: &KmsRoutePolicyStatus,
) -> Result<Action, Error> {
    let name = policy.name_any();
    ctx.inventory.unwatch(&name);
    let message = format!(
        "spec.azure.identity ({identity}) is not an identity this controller may use: its installer \
         allows {}; ask them to add it (Helm: azure.identity.policyIdentities; flag: \
         --allowed-identity {}/{}), or remove spec.azure.identity. Nothing is read or written for \
         this policy meanwhile",
        allowed_list(ctx),
        identity.tenant_id,
        identity.client_id
    );
    let mut status = status::of_refused(policy, "IdentityNotAllowed", message.clone(), old);
    status.problems = vec![
        crate::executor::Reason::IdentityNotAllowed.problem("spec.azure.identity", message.clone()),
    ];
    status::write(ctx, policy, status).await?;
    ctx.metrics.set_policy(&name, false, &Summary::default());
    events::say(
        ctx,
        policy,
        EventType::Warning,
        "IdentityNotAllowed",
        message,
    )
    .await;
    Ok(Action::await_change())
}

/// The allowed identities in a message.
fn allowed_list(ctx: &Context) -> String {
    if ctx.settings.allowed_identities.is_empty() {
        return "only its own identity".into();
    }
    let ids: Vec<String> = ctx
        .settings
        .allowed_identities
        .iter()
        .map(|i| format!("{}/{}", i.tenant_id, i.client_id))
        .collect();
    format!("its own identity and {}", ids.join(", "))
}

/// A spec `validate` refuses: the status and an Event say why, and only an edit (which
/// triggers a reconcile) can fix it.
async fn invalid_spec(
    policy: &KmsRoutePolicy,
    ctx: &Context,
    errors: &[FieldError],
    old: &KmsRoutePolicyStatus,
) -> Result<Action, Error> {
    let name = policy.name_any();
    ctx.inventory.unwatch(&name);
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    status::write(
        ctx,
        policy,
        status::of_invalid_spec(policy, message.clone(), old),
    )
    .await?;
    ctx.metrics.set_policy(&name, false, &Summary::default());
    events::say(ctx, policy, EventType::Warning, "InvalidSpec", message).await;
    Ok(Action::await_change())
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
    if e.class == ErrorClass::NeedsUserAction {
        hold_back(ctx, &name, policy.meta().generation);
    }
    let reason = match e.class {
        ErrorClass::NeedsUserAction => "AzureAuthFailed",
        ErrorClass::Throttled => "Throttled",
        _ => "AzureUnavailable",
    };
    let status = status::of_failed_pass(policy, reason, e.to_string(), old);
    if let Err(status_error) = status::write(ctx, policy, status).await {
        return status_error;
    }
    ctx.metrics
        .set_policy(&name, false, &old.summary.clone().unwrap_or_default());
    events::say(ctx, policy, EventType::Warning, reason, e.to_string()).await;
    e.into()
}

/// Cleans up a policy being deleted, as its `deletionPolicy` says.
pub async fn clean_up(policy: &KmsRoutePolicy, ctx: &Context) -> Result<Action, Error> {
    let name = policy.name_any();
    let Ok(desired) = ctx.policies.check(policy, ctx.settings.cloud) else {
        // Never valid, so never written: nothing in Azure is ours.
        return Ok(Action::await_change());
    };
    if !ctx.settings.allows(desired.identity.as_ref()) {
        // Its identity is not allowed: nothing is written as it, cleanup included.
        let note = "spec.azure.identity is not allowed: Azure left as it is".to_string();
        events::say(ctx, policy, EventType::Normal, "Orphaned", note).await;
        forget(ctx, &name);
        return Ok(Action::await_change());
    }
    if desired.deletion_policy == DeletionPolicy::Orphan || desired.mode == Mode::Audit {
        let note = "deletionPolicy Orphan (or Audit mode): Azure left as it is".to_string();
        events::say(ctx, policy, EventType::Normal, "Orphaned", note).await;
        forget(ctx, &name);
        return Ok(Action::await_change());
    }
    let others = others(ctx, &name, &desired);
    let known = ctx.inventory.wanted_by(&name).unwrap_or_default();
    let cleaned = executor::cleanup::clean_up(
        ctx.arm.as_ref(),
        ctx.inventory.as_ref(),
        &desired,
        &others,
        &known,
        ctx.settings.concurrency,
    )
    .await?;
    events::cleaned(ctx, policy, &cleaned).await;
    if !cleaned.failures.is_empty() {
        let class =
            worst_class(cleaned.failures.iter().map(|e| e.class)).unwrap_or(ErrorClass::Retryable);
        return Err(Error::WritesFailed {
            class,
            count: cleaned.failures.len(),
        });
    }
    forget(ctx, &name);
    Ok(Action::await_change())
}

/// Forgets a policy that is gone: its subscriptions, metrics and state (its contests with it).
fn forget(ctx: &Context, name: &str) {
    ctx.inventory.unwatch(name);
    ctx.metrics.forget_policy(name);
    ctx.policies.forget(name);
}
