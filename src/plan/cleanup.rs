//! Cleanup: what deleting a policy (`deletionPolicy: Delete`) does in Azure.

use super::{
    Index, Lanes, Plan, PlannedWrite, Verdict, Write, by_seniority, claim, created_by,
    select_subnets, selected_anywhere, table_users, verdict,
};
use crate::api::{DeletionPolicy, DesiredState, Mode};
use crate::ids::IdKey;
use crate::model::{Inventory, Route, RouteTable, Subnet, special_subnet_name};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

/// What cleaning one table up takes: dissociating and deleting it, when the policy created it
/// and nothing but its footprint and its own routes are left there; otherwise deleting its
/// owned routes, except those to addresses another policy's subnets on it still need (`keep`).
pub(super) fn cleanup_table(
    policy: &DesiredState,
    table: &RouteTable,
    keep: &BTreeSet<Ipv4Addr>,
    footprint: &BTreeMap<IdKey<'_>, &Subnet>,
) -> Vec<Write> {
    let removable: Vec<&Route> = table
        .routes
        .iter()
        .filter(|r| {
            policy.owns_route_name(&r.name) && !r.host_address().is_some_and(|a| keep.contains(&a))
        })
        .collect();
    let only_ours = table
        .subnets
        .iter()
        .all(|s| footprint.contains_key(&s.key()));
    if created_by(table, &policy.name) && only_ours && removable.len() == table.routes.len() {
        let mut writes: Vec<Write> = table
            .subnets
            .iter()
            .map(|s| Write::DissociateSubnet {
                subnet: s.clone(),
                table: table.id.clone(),
            })
            .collect();
        writes.push(Write::DeleteRouteTable {
            table: table.id.clone(),
        });
        writes
    } else {
        removable
            .into_iter()
            .map(|r| Write::DeleteRoute {
                table: table.id.clone(),
                name: r.name.to_string(),
                address_prefix: r.address_prefix.to_string(),
            })
            .collect()
    }
}

/// Plans what deleting `policy` does in Azure (`deletionPolicy: Delete`): remove its owned
/// routes, and dissociate and delete the tables it created once nothing else uses them.
/// Subnets that `others` also select are left to them, as are routes they still need.
/// `Orphan` and `Audit` policies plan no writes.
pub fn plan_cleanup(policy: &DesiredState, others: &[DesiredState], inventory: &Inventory) -> Plan {
    plan_cleanup_parts(policy, others, [inventory])
}

/// [`plan_cleanup`] over an estate in parts, looked at where they are.
pub fn plan_cleanup_parts<'a>(
    policy: &DesiredState,
    others: &[DesiredState],
    parts: impl IntoIterator<Item = &'a Inventory>,
) -> Plan {
    if policy.deletion_policy == DeletionPolicy::Orphan || policy.mode == Mode::Audit {
        return Plan::default();
    }
    let idx = Index::new(parts);
    let Cleanup {
        kept,
        footprint,
        tables,
    } = cleanup_scope(policy, others, &idx);

    let mut writes = Vec::new();
    let mut lanes = Lanes::new();
    let mut changes_by_table: HashMap<IdKey<'_>, usize> = HashMap::new();
    let empty = BTreeSet::new();
    for table in tables.values() {
        let keep = kept.get(&table.id.key()).unwrap_or(&empty);
        let table_writes = cleanup_table(policy, table, keep, &footprint);
        changes_by_table.insert(table.id.key(), table_writes.len());
        let concerned = footprint
            .values()
            .filter(|s| s.route_table.as_ref() == Some(&table.id))
            .map(|s| s.id.clone());
        let before = writes.len();
        writes.extend(table_writes.into_iter().map(|write| PlannedWrite {
            policy: policy.name.clone(),
            write,
        }));
        lanes.add(&writes, before..writes.len(), &table.id, concerned);
    }

    let verdicts = footprint
        .values()
        .map(|s| {
            let changes = s
                .route_table
                .as_ref()
                .and_then(|t| changes_by_table.get(&t.key()))
                .copied()
                .unwrap_or(0);
            verdict(
                policy,
                &s.id,
                s.route_table.clone(),
                if changes > 0 {
                    Verdict::Drift { changes }
                } else {
                    Verdict::InSync
                },
            )
        })
        .collect();
    Plan {
        writes,
        tables: lanes.tables,
        verdicts,
        released: Vec::new(),
    }
}

/// What deleting `policy` concerns: the addresses other policies still need per table, the
/// subnets whose verdicts the cleanup reports (its footprint) and the tables it cleans.
pub(super) struct Cleanup<'a> {
    pub(super) kept: HashMap<IdKey<'a>, BTreeSet<Ipv4Addr>>,
    pub(super) footprint: BTreeMap<IdKey<'a>, &'a Subnet>,
    pub(super) tables: BTreeMap<IdKey<'a>, &'a RouteTable>,
}

pub(super) fn cleanup_scope<'a>(
    policy: &DesiredState,
    others: &'a [DesiredState],
    idx: &Index<'a>,
) -> Cleanup<'a> {
    let others: Vec<&DesiredState> = by_seniority(others);
    let mut ignored = Vec::new();
    let others_owned = claim(&others, idx, &mut ignored);
    let others_subnets: BTreeSet<IdKey<'_>> =
        others_owned.iter().map(|(_, _, s)| s.id.key()).collect();
    // Addresses other policies need in each table their subnets use.
    let mut kept: HashMap<IdKey<'_>, BTreeSet<Ipv4Addr>> = HashMap::new();
    for (p, _, s) in &others_owned {
        if let Some(t) = &s.route_table {
            kept.entry(t.key())
                .or_default()
                .extend(p.destinations.iter().map(|d| d.address));
        }
    }

    let mut footprint: BTreeMap<IdKey<'_>, &Subnet> = BTreeMap::new();
    for (_, s) in select_subnets(policy, idx).found {
        // Special subnets were never managed, so their tables are not ours to clean.
        if !others_subnets.contains(&s.id.key()) && special_subnet_name(s.id.name()).is_none() {
            footprint.insert(s.id.key(), s);
        }
    }
    let mut tables: BTreeMap<IdKey<'_>, &RouteTable> = BTreeMap::new();
    for s in footprint.values() {
        if let Some(t) = s
            .route_table
            .as_ref()
            .and_then(|t| idx.tables.get(&t.key()))
        {
            tables.insert(t.id.key(), t);
        }
    }
    for t in idx.route_tables() {
        if created_by(t, &policy.name) {
            tables.insert(t.id.key(), t);
        }
    }
    // Everything else the policy's marks say it owns in its subscriptions, selected now or not
    // (a subnet excluded last week still has its routes): tables holding its owned routes, used
    // by subnets no other policy selects. Their subnets become part of the footprint.
    let others_selected = selected_anywhere(&others, idx);
    let users = table_users(idx, |_| true);
    let subscriptions = policy.subscriptions();
    for t in idx.route_tables() {
        if !subscriptions.contains(&t.id.subscription().to_ascii_lowercase()) {
            continue;
        }
        let using: Vec<IdKey<'_>> = users
            .get(&t.id.key())
            .map(|u| u.keys().copied().collect())
            .unwrap_or_default();
        let owned = t.routes.iter().any(|r| policy.owns_route_name(&r.name));
        let special = using.iter().any(|key| {
            idx.subnets
                .get(key)
                .is_some_and(|(_, s)| special_subnet_name(s.id.name()).is_some())
        });
        if using.is_empty()
            || special
            || !owned && !created_by(t, &policy.name)
            || using.iter().any(|s| others_selected.contains(s))
        {
            continue;
        }
        tables.insert(t.id.key(), t);
        for key in using {
            if let Some((_, s)) = idx.subnets.get(&key)
                && special_subnet_name(s.id.name()).is_none()
            {
                footprint.insert(s.id.key(), s);
            }
        }
    }
    Cleanup {
        kept,
        footprint,
        tables,
    }
}
