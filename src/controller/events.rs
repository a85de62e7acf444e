//! A policy's Events: deduplicated per reason (a steady condition is said once), except the
//! ones that are news every time (repairs, releases, a table contested anew).

use super::Context;
use crate::api::KmsRoutePolicy;
use crate::executor::cleanup::Cleaned;
use crate::executor::{PolicyReport, Reason, Report};
use crate::ids::IdKey;
use crate::plan::Write;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use std::collections::BTreeSet;

/// The most an Event's note may hold: the API server refuses a longer one (`NoteLengthLimit`,
/// 1,024 bytes, 422 Invalid).
pub const NOTE_LIMIT: usize = 1024;
/// The most an Event's reason and action may hold (the API server's limit, 128).
pub const REASON_LIMIT: usize = 128;

/// Problems of one reason as one note within [`NOTE_LIMIT`]: as many whole entries as fit, in
/// the order given (ranked), then how many more and where to read them.
pub fn note_of(entries: &[String], policy: &str) -> String {
    let mut note = String::new();
    for (i, entry) in entries.iter().enumerate() {
        let rest = entries.len() - i - 1;
        let tail = if rest == 0 {
            String::new()
        } else {
            more(rest, policy)
        };
        let sep = if note.is_empty() { "" } else { "; " };
        if note.len() + sep.len() + entry.len() + tail.len() <= NOTE_LIMIT {
            note.push_str(sep);
            note.push_str(entry);
            continue;
        }
        if note.is_empty() {
            // Not even the first entry fits: as much of it as leaves room for the count.
            let room = NOTE_LIMIT.saturating_sub(tail.len() + '…'.len_utf8());
            note.push_str(cut(entry, room));
            note.push('…');
            note.push_str(&tail);
        } else {
            note.push_str(&more(entries.len() - i, policy));
        }
        return fit(note);
    }
    note
}

fn more(n: usize, policy: &str) -> String {
    format!("; and {n} more (kubectl get krp {policy} -o yaml lists them)")
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A note within [`NOTE_LIMIT`]: cut, with an ellipsis, if it is longer.
pub fn fit(note: String) -> String {
    if note.len() <= NOTE_LIMIT {
        return note;
    }
    let mut out = cut(&note, NOTE_LIMIT - '…'.len_utf8()).to_string();
    out.push('…');
    out
}

/// Publishes an Event unless its reason last said the same. It counts as said only once the
/// API server accepted it, so a refused one is sent again by the next pass.
pub async fn say(
    ctx: &Context,
    policy: &KmsRoutePolicy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let note = fit(note);
    let name = policy.name_any();
    if !ctx.policies.event_is_news(&name, reason, &note) {
        return;
    }
    // A cluster-scoped object's reference has no namespace, so the recorder files the Event
    // in `default`: where the API server wants it and `kubectl describe krp` looks.
    let reference = policy.object_ref(&());
    let ev = Event {
        type_,
        reason: cut(reason, REASON_LIMIT).into(),
        note: Some(note.clone()),
        action: "Reconcile".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&ev, &reference).await {
        Ok(()) => ctx.policies.event_sent(&name, reason, &note),
        Err(e) => {
            tracing::warn!(policy = %name, reason, error = %e, "the API server refused an Event; it is sent again with the next pass")
        }
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
            say(
                ctx,
                policy,
                EventType::Warning,
                reason,
                note_of(&notes, &name),
            )
            .await;
        }
    }
}

/// The policy's successful release writes (to tables no selected subnet uses any more) apart
/// from its repairs, and how many of them deleted a table.
fn releases_of(report: &Report, name: &str) -> (usize, usize) {
    let released_tables: BTreeSet<IdKey<'_>> = report
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
        .filter(|(w, _)| released_tables.contains(&w.write.table().key()))
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
        let note = note_of(&failed, &policy.name_any());
        say(ctx, policy, EventType::Warning, "CleanupFailed", note).await;
        return;
    }
    let note = format!(
        "removed {} owned route(s), dissociated {} subnet(s) and deleted {} route table(s) the policy created",
        cleaned.routes_removed, cleaned.subnets_dissociated, cleaned.tables_deleted
    );
    say(ctx, policy, EventType::Normal, "CleanedUp", note).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize, len: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{i:02}{}", "x".repeat(len - 2)))
            .collect()
    }

    #[test]
    fn a_note_keeps_whole_entries_within_the_limit_and_says_how_many_more() {
        let few = entries(3, 100);
        assert_eq!(note_of(&few, "p"), few.join("; "));
        for (n, len) in [(5, 270), (50, 300), (2, 600), (1, 3000), (40, 20)] {
            let all = entries(n, len);
            let note = note_of(&all, "spokes");
            assert!(note.len() <= NOTE_LIMIT, "{n}x{len}: {} bytes", note.len());
            let whole = all.iter().filter(|e| note.contains(e.as_str())).count();
            // The first entry alone is cut (with an ellipsis) when even it does not fit.
            let partial = usize::from(whole == 0);
            let rest = n - whole - partial;
            if rest > 0 {
                let said = format!("and {rest} more (kubectl get krp spokes -o yaml lists them)");
                assert!(note.ends_with(&said), "{n}x{len}: {note}");
            }
            assert!(note.starts_with("00"), "{n}x{len}: the first entry leads");
        }
        // Multi-byte characters are never split.
        let wide = vec!["é".repeat(700)];
        let note = note_of(&wide, "p");
        assert!(note.len() <= NOTE_LIMIT && note.ends_with('…'));
        assert!(fit("ü".repeat(600)).len() <= NOTE_LIMIT);
    }
}
