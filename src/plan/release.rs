//! Release: what a policy lets go of when a table it wrote to serves no selected subnet any
//! more.

use super::{Index, Lanes, PlannedWrite, Release, Write, created_by, select_subnets};
use crate::api::Mode;
use crate::api::{DeletionPolicy, DesiredState};
use crate::ids::{IdKey, RouteTableId, SubnetId};
use crate::model::{Route, RouteTable, special_subnet_name};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Every subnet some policy selects now (special and contested ones included): nothing they
/// use is released.
pub(super) fn selected_anywhere<'a>(
    policies: &[&DesiredState],
    idx: &Index<'a>,
) -> BTreeSet<IdKey<'a>> {
    policies
        .iter()
        .flat_map(|p| select_subnets(p, idx).found)
        .map(|(_, s)| s.id.key())
        .collect()
}

/// The subnets using each table that `wanted` (those naming it, and ARM's
/// `properties.subnets`), and an empty entry for a wanted table nothing uses.
pub(super) fn table_users<'a>(
    idx: &Index<'a>,
    wanted: impl Fn(&RouteTableId) -> bool,
) -> Users<'a> {
    let mut users: Users<'a> = idx
        .tables
        .values()
        .filter(|t| wanted(&t.id))
        .map(|t| {
            let of_table = t.subnets.iter().map(|s| (s.key(), s)).collect();
            (t.id.key(), of_table)
        })
        .collect();
    for (_, s) in idx.subnets.values() {
        if let Some(of_table) = s.route_table.as_ref().and_then(|t| users.get_mut(&t.key())) {
            of_table.insert(s.id.key(), &s.id);
        }
    }
    users
}

/// Route table key → the subnets using it, by key.
pub(super) type Users<'a> = HashMap<IdKey<'a>, BTreeMap<IdKey<'a>, &'a SubnetId>>;

/// The tables `policy` releases and the writes that do it. Honours `deletionPolicy: Orphan`
/// (nothing is released); the caller drops the writes under `mode: Audit`. Never a table that
/// a selected subnet uses or that this plan writes to, never outside the policy's
/// subscriptions, never a foreign route: only routes in the policy's name space, and a table
/// it created only when nothing but its own routes are left in it.
pub(super) fn releases(
    policy: &DesiredState,
    idx: &Index<'_>,
    selected: &BTreeSet<IdKey<'_>>,
    users: &Users<'_>,
) -> Vec<(Release, Vec<Write>)> {
    if policy.deletion_policy == DeletionPolicy::Orphan {
        return Vec::new();
    }
    let subscriptions = policy.subscriptions();
    let none = BTreeMap::new();
    // The tables this plan does not write to are the ones with an entry in `users`.
    let mut tables: Vec<&RouteTable> = idx
        .route_tables()
        .filter(|t| subscriptions.contains(&t.id.subscription().to_ascii_lowercase()))
        .filter(|t| users.contains_key(&t.id.key()))
        .collect();
    tables.sort_by(|a, b| a.id.key().cmp(&b.id.key()));
    let mut out = Vec::new();
    for table in tables {
        let using = users.get(&table.id.key()).unwrap_or(&none);
        // Still selected somewhere, or a platform subnet's table (never touched at all).
        if using.keys().any(|s| selected.contains(s))
            || using
                .values()
                .any(|s| special_subnet_name(s.name()).is_some())
        {
            continue;
        }
        let created = created_by(table, &policy.name);
        let owned: Vec<&Route> = table
            .routes
            .iter()
            .filter(|r| policy.owns_route_name(&r.name))
            .collect();
        // A table of someone else's that no subnet uses was never in the selection: leave it.
        if !created && (owned.is_empty() || using.is_empty()) {
            continue;
        }
        let mut writes = Vec::new();
        if created && owned.len() == table.routes.len() {
            for s in using.values() {
                writes.push(Write::DissociateSubnet {
                    subnet: (*s).clone(),
                    table: table.id.clone(),
                });
            }
            writes.push(Write::DeleteRouteTable {
                table: table.id.clone(),
            });
        } else {
            for r in owned {
                writes.push(Write::DeleteRoute {
                    table: table.id.clone(),
                    name: r.name.to_string(),
                    address_prefix: r.address_prefix.to_string(),
                });
            }
        }
        if writes.is_empty() {
            continue;
        }
        out.push((
            Release {
                policy: policy.name.to_string(),
                table: table.id.clone(),
                subnets: using.values().map(|s| (*s).clone()).collect(),
                created,
            },
            writes,
        ));
    }
    out
}

/// Every policy's releases, oldest first, and their writes (enforcing policies only) in lanes
/// of their own. What an older policy's release already does is not done twice: two policies
/// whose route-name prefixes overlap must not both delete one route, nor touch a table being
/// deleted.
pub(super) fn release_all(
    ordered: &[&DesiredState],
    idx: &Index,
    selected: &BTreeSet<IdKey<'_>>,
    users: &Users,
    writes: &mut Vec<PlannedWrite>,
    lanes: &mut Lanes,
) -> Vec<Release> {
    let mut released: Vec<Release> = Vec::new();
    // What earlier (older) policies' releases already do: two policies whose route-name
    // prefixes overlap must not both delete one route, nor touch a table being deleted.
    let mut deleted_tables: BTreeSet<String> = BTreeSet::new();
    let mut deleted_routes: BTreeSet<(String, String)> = BTreeSet::new();
    for &policy in ordered {
        for (release, release_writes) in releases(policy, idx, selected, users) {
            let table = release.table.key().to_string();
            if deleted_tables.contains(&table) {
                continue;
            }
            let release_writes: Vec<Write> = release_writes
                .into_iter()
                .filter(|w| match w {
                    Write::DeleteRoute { name, .. } => {
                        deleted_routes.insert((table.clone(), name.to_ascii_lowercase()))
                    }
                    Write::DeleteRouteTable { .. } => {
                        deleted_tables.insert(table.clone());
                        true
                    }
                    _ => true,
                })
                .collect();
            if release_writes.is_empty() {
                continue;
            }
            if policy.mode == Mode::Enforce {
                let before = writes.len();
                writes.extend(release_writes.into_iter().map(|write| PlannedWrite {
                    policy: policy.name.clone(),
                    write,
                }));
                lanes.add(
                    writes,
                    before..writes.len(),
                    &release.table,
                    release.subnets.iter().cloned(),
                );
            }
            released.push(release);
        }
    }
    released
}
