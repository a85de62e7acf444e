//! The planner: desired state + observed Azure → the minimal ordered list of ARM writes, and a
//! verdict for every selected subnet. Pure: no I/O, no clock, deterministic output order.
//!
//! This is where the safety rules live (see `docs/architecture.md`): foreign routes and subnet
//! properties are never touched (a write can only add/repair/delete *owned* routes, create a
//! tagged table, or set a subnet's `routeTable` where it had none); in-sync estates plan zero
//! writes; conflicts are reported, not fought; special subnets are skipped; no route broader than
//! a `/32` is ever planned. The executor only carries plans out.

mod cleanup;
pub mod contest;
pub mod egress;
mod lanes;
mod place;
mod release;
mod select;
#[cfg(any(test, feature = "testing"))]
pub mod simulate;
mod types;

pub use cleanup::{plan_cleanup, plan_cleanup_parts};
use lanes::Lanes;
use place::*;
use release::*;
use select::*;
pub use types::*;

use crate::api::DesiredState;
use crate::ids::RouteTableId;
use crate::model::Inventory;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::model::MAX_ROUTES_PER_TABLE;

/// The verdicts [`plan`] gives the subnets of one subscription, from a listing of that
/// subscription alone. A subnet's verdict depends only on its own subscription's listing (a
/// table in another subscription is out of scope by rule, a subnet elsewhere is another
/// subscription's verdict), so a pass can judge Azure after its writes one subscription at a
/// time instead of holding a second whole inventory (100 MB at 100,000 subnets).
pub fn verdicts_in(
    policies: &[DesiredState],
    one: &Inventory,
    subscription: &str,
) -> Vec<SubnetVerdict> {
    verdicts_in_parts(policies, [one], subscription)
}

/// [`verdicts_in`] over a listing in parts.
pub fn verdicts_in_parts<'a>(
    policies: &[DesiredState],
    parts: impl IntoIterator<Item = &'a Inventory>,
    subscription: &str,
) -> Vec<SubnetVerdict> {
    let mut verdicts = plan_parts(policies, parts).verdicts;
    verdicts.retain(|v| v.subnet.subscription().eq_ignore_ascii_case(subscription));
    verdicts
}

/// The verdicts of `before` outside the `relisted` subscriptions (lower-case): with
/// [`verdicts_in`] for each relisted subscription, the verdicts of the estate after writes made
/// only there.
pub fn verdicts_outside<'a>(
    before: &'a [SubnetVerdict],
    relisted: &'a BTreeSet<String>,
) -> impl Iterator<Item = SubnetVerdict> + 'a {
    before
        .iter()
        .filter(|v| !relisted.contains(&v.subnet.subscription().to_ascii_lowercase()))
        .cloned()
}

/// Verdicts in the order [`plan`] gives them.
pub fn sort_verdicts(verdicts: &mut [SubnetVerdict]) {
    // (policy, subnet) is unique, so an unstable sort is as deterministic, and it needs no
    // buffer of half the verdicts beside them.
    verdicts.sort_unstable_by(|a, b| (&a.policy, &a.subnet).cmp(&(&b.policy, &b.subnet)));
}

/// Plans reconcile for a set of policies against one inventory.
///
/// All policies are given so that overlaps are decided the same way every time (the older
/// policy owns a contested subnet); each write names the policy it is made for.
pub fn plan(policies: &[DesiredState], inventory: &Inventory) -> Plan {
    plan_parts(policies, [inventory])
}

/// [`plan`] over an estate in parts (one inventory per subscription, say), looked at where
/// they are: the same plan as over the parts merged, without the copy.
pub fn plan_parts<'a>(
    policies: &[DesiredState],
    parts: impl IntoIterator<Item = &'a Inventory>,
) -> Plan {
    let idx = Index::new(parts);
    let ordered = by_seniority(policies);
    let mut verdicts = Vec::new();
    let owned = claim(&ordered, &idx, &mut verdicts);
    // Every owned subnet gets exactly one verdict: no doubling growth (a grown Vec of 100,000
    // verdicts held 28 MB).
    verdicts.reserve_exact(owned.len());
    // Each policy's subscriptions, once: built per subnet it was 500 set inserts per subnet of
    // a 500-subscription policy (most of a 100,000-subnet pass).
    let subscriptions_of: BTreeMap<&str, BTreeSet<String>> = policies
        .iter()
        .map(|p| (p.name.as_str(), p.subscriptions()))
        .collect();

    // Each owned subnet placed on its table, then grouped by sorting: a map of groups, each
    // with its own member list, was 15 MB at 100,000 subnets.
    let mut placed = Vec::with_capacity(owned.len());
    for (order, (policy, vnet, subnet)) in owned.into_iter().enumerate() {
        match place(policy, vnet, subnet, &idx, &subscriptions_of) {
            Ok(table) => placed.push(Placed { order, ..table }),
            Err(v) => verdicts.push(*v),
        }
    }
    placed.sort_unstable_by(|a, b| a.table.cmp(&b.table).then(a.order.cmp(&b.order)));
    let shared = Shared::new(policies);
    let mut writes = Vec::new();
    let mut lanes = Lanes::new();
    // The tables this plan writes to (or judges), in key order.
    let mut planned: Vec<RouteTableId> = Vec::new();
    for run in placed.chunk_by(|a, b| a.table == b.table) {
        let group = group_of(run, &mut verdicts);
        let before = writes.len();
        plan_group(&group, &shared, &mut writes, &mut verdicts);
        let members = group.members.iter().map(|m| m.subnet.id.clone());
        lanes.add(&writes, before..writes.len(), &group.id, members);
        planned.push(group.id);
    }
    drop(placed);
    // A grown Vec keeps up to half its capacity unused: 18 MB of 150,000 writes' 48 MB.
    writes.shrink_to_fit();
    // Only a table this plan does not write to can be released: the users of those alone
    // (a map of every table's users was most of the planner's memory at 100,000 subnets), and
    // what is selected only when there is such a table.
    let users = table_users(&idx, |t| planned.binary_search(t).is_err());
    let selected = if users.is_empty() {
        BTreeSet::new()
    } else {
        selected_anywhere(&ordered, &idx)
    };
    let released = release_all(&ordered, &idx, &selected, &users, &mut writes, &mut lanes);
    sort_verdicts(&mut verdicts);
    verdicts.shrink_to_fit();
    Plan {
        writes,
        tables: lanes.tables,
        verdicts,
        released,
    }
}

#[cfg(test)]
mod tests;
