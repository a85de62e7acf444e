//! A policy's deletion (`deletionPolicy: Delete`), carried out by the same lanes as a pass:
//! its subscriptions read afresh (deletion is rare, and it removes things), the cleanup planned
//! by [`crate::plan::plan_cleanup`], the writes run, and their counts returned.

use super::execute::run_lanes;
use super::observe::InventorySource;
use super::scope::expand_management_groups;
use crate::api::DesiredState;
use crate::azure::{ArmError, NetworkApi};
use crate::plan::{Write, plan_cleanup_parts};
use std::collections::BTreeSet;

/// What a cleanup did.
#[derive(Debug, Clone, Default)]
pub struct Cleaned {
    pub routes_removed: usize,
    pub subnets_dissociated: usize,
    pub tables_deleted: usize,
    /// The writes that failed (the cleanup is retried; the rest stays done).
    pub failures: Vec<ArmError>,
}

/// Cleans up what `policy` owns in its subscriptions (its management groups expanded, plus
/// `known`: the subscriptions it covered at its last pass, in case a group is gone), leaving
/// what `others` still select or need.
pub async fn clean_up(
    api: &dyn NetworkApi,
    source: &dyn InventorySource,
    policy: &DesiredState,
    others: &[DesiredState],
    known: &BTreeSet<String>,
    concurrency: usize,
) -> Result<Cleaned, ArmError> {
    // Groups ARM refuses leave `known` to say where the policy was.
    let all: Vec<DesiredState> = std::iter::once(policy).chain(others).cloned().collect();
    let (mut expanded, _refused) = expand_management_groups(api, &all).await?;
    let others = expanded.split_off(1);
    let mut policy = expanded.pop().unwrap_or_else(|| policy.clone());
    if let Some(selector) = policy.selector.as_mut() {
        selector.subscriptions.extend(known.iter().cloned());
    }
    let subscriptions = policy.subscriptions();
    let inventory = source.reread(&subscriptions, Some(&policy.name)).await?;
    let plan = plan_cleanup_parts(&policy, &others, inventory.parts());
    drop(inventory);
    let results = run_lanes(api, &plan, concurrency.max(1), &|_| {}, None).await;
    let mut cleaned = Cleaned::default();
    for r in results {
        match r.error {
            Some(e) => cleaned.failures.push(*e),
            None => match plan.writes[r.index].write {
                Write::DeleteRoute { .. } => cleaned.routes_removed += 1,
                Write::DissociateSubnet { .. } => cleaned.subnets_dissociated += 1,
                Write::DeleteRouteTable { .. } => cleaned.tables_deleted += 1,
                _ => {}
            },
        }
    }
    Ok(cleaned)
}
