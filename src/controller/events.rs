//! A policy's Events: deduplicated per reason (a steady condition is said once), except the
//! ones that are news every time (repairs, releases, a table contested anew).

use super::Context;
use crate::api::KmsRoutePolicy;
use crate::executor::cleanup::Cleaned;
use crate::executor::{PolicyReport, Reason, Report};
use crate::plan::Write;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::collections::BTreeSet;

/// Publishes an Event unless its reason last said the same.
pub async fn say(
    ctx: &Context,
    policy: &KmsRoutePolicy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    if !ctx
        .policies
        .event_is_news(&policy.name_any(), reason, &note)
    {
        return;
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
    if let Err(e) = ctx.recorder.publish(&ev, &reference).await {
        tracing::warn!(error = %e, "could not publish an Event");
    }
}

/// Publishes an Event that is news every time.
pub async fn say_again(
    ctx: &Context,
    policy: &KmsRoutePolicy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    ctx.policies.forget_event(&policy.name_any(), reason);
    say(ctx, policy, type_, reason, note).await;
}

/// The Events of a pass: repairs and releases (news every time), a selector that matches
/// nothing, and one Warning per problem reason that raises one (cleared when it is gone).
pub async fn announce(
    ctx: &Context,
    policy: &KmsRoutePolicy,
    report: &Report,
    mine: &PolicyReport,
) {
    let name = policy.name_any();
    let (releases, tables_deleted) = releases_of(report, &name);
    let repairs = report.writes_done().saturating_sub(releases);
    if repairs > 0 {
        let note = format!(
            "{repairs} write(s) to Azure restored the KMS routes ({} subnet(s) repaired)",
            mine.summary.repaired
        );
        say_again(ctx, policy, EventType::Normal, "Repaired", note).await;
    }
    if releases > 0 {
        let note = format!(
            "{} subnet(s) left the selection: {releases} write(s) removed the policy's routes from their tables and deleted {tables_deleted} table(s) it had created",
            mine.summary.released
        );
        say_again(ctx, policy, EventType::Normal, "Released", note).await;
    }
    if mine.nothing_selected() {
        let note = "the selector matches no subnet in its subscriptions".to_string();
        say(ctx, policy, EventType::Warning, "NothingSelected", note).await;
    } else {
        ctx.policies.forget_event(&name, "NothingSelected");
    }
    for reason in Reason::WARNING_EVENTS.map(|r| r.code()) {
        let notes: Vec<String> = mine
            .problems
            .iter()
            .filter(|p| p.reason == reason)
            .map(|p| format!("{}: {}", p.subnet_id, p.message))
            .collect();
        if notes.is_empty() {
            ctx.policies.forget_event(&name, reason);
        } else {
            say(ctx, policy, EventType::Warning, reason, notes.join("; ")).await;
        }
    }
}

/// The policy's successful release writes (to tables no selected subnet uses any more) apart
/// from its repairs, and how many of them deleted a table.
fn releases_of(report: &Report, name: &str) -> (usize, usize) {
    let released_tables: BTreeSet<&str> = report
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
        if matches!(w.write, Write::DeleteRouteTable { .. }) {
            tables_deleted += 1;
        }
    }
    (releases, tables_deleted)
}

/// What a cleanup did, or why it must be retried.
pub async fn cleaned(ctx: &Context, policy: &KmsRoutePolicy, cleaned: &Cleaned) {
    if !cleaned.failures.is_empty() {
        let failed: Vec<String> = cleaned.failures.iter().map(ToString::to_string).collect();
        say(
            ctx,
            policy,
            EventType::Warning,
            "CleanupFailed",
            failed.join("; "),
        )
        .await;
        return;
    }
    let note = format!(
        "removed {} owned route(s), dissociated {} subnet(s) and deleted {} route table(s) the policy created",
        cleaned.routes_removed, cleaned.subnets_dissociated, cleaned.tables_deleted
    );
    say(ctx, policy, EventType::Normal, "CleanedUp", note).await;
}
