//! Placement and repair: which table each owned subnet goes on, and the writes that bring a
//! table to what its subnets want.

use super::{
    ErrorReason, Group, Index, MAX_ROUTES_PER_TABLE, Member, PlannedWrite, RouteChange, SkipReason,
    SubnetVerdict, Verdict, Write, egress_warnings, is_kmsroute_table, verdict,
};
use crate::api::{
    ConflictPolicy, DesiredState, MANAGED_BY_VALUE, Mode, TAG_MANAGED_BY, TAG_POLICY,
};
use crate::ids::RouteTableId;
use crate::model::{NextHopType, Route, RouteTable, Subnet, VirtualNetwork, special_subnet_name};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

/// A subnet owned by a policy, on the route table it uses or is to use.
pub(super) struct Placed<'a> {
    pub(super) table: RouteTableId,
    pub(super) existing: Option<&'a RouteTable>,
    /// The VNet's region, which a table to be created must share (`None`: the subnet has its
    /// table already).
    pub(super) region: Option<&'a str>,
    /// Claim order, which the members of a table keep (the oldest policy names a route).
    pub(super) order: usize,
    pub(super) member: Member<'a>,
}

/// Where an owned subnet goes: on a table (its verdict comes from the table's group), or
/// nowhere, with its verdict.
pub(super) fn place<'a>(
    policy: &'a DesiredState,
    vnet: &'a VirtualNetwork,
    subnet: &'a Subnet,
    idx: &Index<'a>,
    subscriptions_of: &BTreeMap<&str, BTreeSet<String>>,
) -> Result<Placed<'a>, Box<SubnetVerdict>> {
    let skip = |reason| {
        Box::new(verdict(
            policy,
            &subnet.id,
            subnet.route_table.clone(),
            Verdict::Skipped { reason },
        ))
    };
    let error = |reason, message: String, table: Option<RouteTableId>| {
        let mut v = verdict(
            policy,
            &subnet.id,
            table,
            Verdict::Error { reason, message },
        );
        v.warnings = egress_warnings(subnet);
        Box::new(v)
    };
    if let Some(name) = special_subnet_name(subnet.id.name()) {
        return Err(skip(SkipReason::SpecialSubnet { name: name.into() }));
    }
    let placed = |table: RouteTableId, existing, region| {
        Ok(Placed {
            table,
            existing,
            region,
            order: 0,
            member: Member {
                policy,
                subnet,
                associate: region.is_some(),
            },
        })
    };
    match &subnet.route_table {
        Some(table_id) if out_of_scope(table_id, subnet, subscriptions_of.get(&*policy.name)) => {
            Err(error(
                ErrorReason::RouteTableOutOfScope,
                format!(
                    "route table {table_id} is in another subscription than the subnet or outside the policy's subscriptions; kmsroute does not write there"
                ),
                Some(table_id.clone()),
            ))
        }
        Some(table_id) => match idx.tables.get(&table_id.key()) {
            Some(&table) => placed(table.id.clone(), Some(table), None),
            None => Err(error(
                ErrorReason::RouteTableNotObserved,
                format!("route table {table_id} is associated but was not found in the listing"),
                Some(table_id.clone()),
            )),
        },
        None if !policy.create_if_missing => Err(skip(SkipReason::NoRouteTable)),
        None => {
            let name = match policy.render_table_name(
                vnet.id.name(),
                subnet.id.name(),
                &vnet.location,
            ) {
                Ok(n) => n,
                Err(e) => {
                    return Err(error(
                        ErrorReason::InvalidRouteTableName,
                        format!(
                            "routeTable.nameTemplate renders an invalid name for this subnet: {e}"
                        ),
                        None,
                    ));
                }
            };
            let id = RouteTableId::new(vnet.id.subscription(), vnet.id.resource_group(), &name);
            let existing = idx.tables.get(&id.key()).copied();
            if let Some(t) = existing
                && !is_kmsroute_table(t)
            {
                return Err(error(
                    ErrorReason::RouteTableNameTaken,
                    format!(
                        "a route table named {name} exists and was not created by kmsroute; change routeTable.nameTemplate or associate a table by hand"
                    ),
                    Some(id),
                ));
            }
            placed(id, existing, Some(vnet.location.as_str()))
        }
    }
}

/// True for a table in another subscription than its subnet, or outside the policy's
/// subscriptions (`covered`): kmsroute never writes there.
fn out_of_scope(table: &RouteTableId, subnet: &Subnet, covered: Option<&BTreeSet<String>>) -> bool {
    !table
        .subscription()
        .eq_ignore_ascii_case(subnet.id.subscription())
        || !covered.is_some_and(|s| s.contains(&table.subscription().to_ascii_lowercase()))
}

/// The group of one table's placed subnets (in claim order): its region is the table's, or
/// for a table to be created the first member's VNet's; a subnet whose VNet is elsewhere gets
/// its verdict here instead.
pub(super) fn group_of<'a>(run: &[Placed<'a>], verdicts: &mut Vec<SubnetVerdict>) -> Group<'a> {
    let first = &run[0];
    let location = first
        .existing
        .map(|t| t.location.as_str())
        .or(first.region)
        .unwrap_or_default();
    let mut members = Vec::with_capacity(run.len());
    for p in run {
        match p.region {
            Some(region) if !location.eq_ignore_ascii_case(region) => {
                let m = &p.member;
                let mut v = verdict(
                    m.policy,
                    &m.subnet.id,
                    Some(p.table.clone()),
                    Verdict::Error {
                        reason: ErrorReason::LocationMismatch,
                        message: format!(
                            "route table {} is (or would be) in {location} but the VNet is in {region}; a subnet's table must be in its VNet's region. Add {{location}} to routeTable.nameTemplate",
                            p.table.name()
                        ),
                    },
                );
                v.warnings = egress_warnings(m.subnet);
                verdicts.push(v);
            }
            _ => members.push(Member { ..p.member }),
        }
    }
    Group {
        id: first.table.clone(),
        existing: first.existing,
        location,
        members,
    }
}

/// What one destination needs in one table.
pub(super) struct Want<'a> {
    pub(super) address: Ipv4Addr,
    /// The policy that names the route: the oldest member policy that wants the address.
    pub(super) policy: &'a DesiredState,
    pub(super) route_name: &'a str,
    /// The route itself, shared by the plan's writes (see [`Shared`]).
    pub(super) route: Route,
}

/// What the writes of one plan share rather than copy: each wanted route (a first install at
/// 100,000 subnets plans 150,000 writes, each with its route's name and prefix).
pub(super) struct Shared<'a> {
    routes: HashMap<(Ipv4Addr, &'a str), Route>,
}

impl<'a> Shared<'a> {
    pub(super) fn new(policies: &'a [DesiredState]) -> Self {
        let mut shared = Shared {
            routes: HashMap::new(),
        };
        for p in policies {
            for d in &p.destinations {
                shared
                    .routes
                    .entry((d.address, d.route_name.as_str()))
                    .or_insert_with(|| internet_route(&d.route_name, d.address));
            }
        }
        shared
    }

    /// The route for `d`: the shared one (a clone is reference counts).
    fn route(&self, d: &crate::api::Destination) -> Route {
        match self.routes.get(&(d.address, d.route_name.as_str())) {
            Some(r) => r.clone(),
            None => internet_route(&d.route_name, d.address),
        }
    }
}

/// The writes that bring an existing table to what its members want: a route kept where one
/// already sends the address to the Internet, an owned one repaired, a foreign one replaced
/// (`conflictPolicy: Replace`) or reported as a conflict, a missing one created, owned
/// leftovers deleted; repairs first, so no create lands beside a route with its prefix. Also
/// how many routes the table will hold.
pub(super) fn repair_table<'a>(
    table: &'a RouteTable,
    wants: &BTreeMap<Ipv4Addr, Want>,
    owned: &dyn Fn(&str) -> bool,
) -> (Vec<Write>, Vec<(Ipv4Addr, &'a Route)>, usize) {
    let mut conflicts: Vec<(Ipv4Addr, &Route)> = Vec::new();
    let mut chosen: BTreeSet<&str> = BTreeSet::new();
    let mut repairs: Vec<Write> = Vec::new();
    let mut creates: Vec<Write> = Vec::new();
    // A route carrying the expected name of one wanted address is reserved for it: it
    // may not satisfy another address, or repairing it would undo that (non-convergence).
    let reserved_for_other = |r: &Route, address: Ipv4Addr| {
        wants
            .values()
            .any(|w| w.address != address && r.name.eq_ignore_ascii_case(w.route_name))
    };
    for want in wants.values() {
        let candidates: Vec<&Route> = table
            .routes
            .iter()
            .filter(|r| {
                r.host_address() == Some(want.address) && !reserved_for_other(r, want.address)
            })
            .collect();
        let satisfied = candidates
            .iter()
            .filter(|r| r.next_hop_type == NextHopType::Internet)
            .min_by_key(|r| {
                (
                    !r.name.eq_ignore_ascii_case(want.route_name),
                    !owned(&r.name),
                )
            });
        if let Some(r) = satisfied {
            chosen.insert(&r.name);
            continue;
        }
        let owned_candidate = candidates.iter().find(|r| owned(&r.name));
        let foreign_candidate = candidates.iter().find(|r| !owned(&r.name));
        let (name, change) = if let Some(r) = owned_candidate {
            (r.name.as_str(), RouteChange::Repair)
        } else if let Some(r) = foreign_candidate {
            if want.policy.conflict_policy == ConflictPolicy::Replace {
                (r.name.as_str(), RouteChange::Replace)
            } else {
                conflicts.push((want.address, *r));
                continue;
            }
        } else if let Some(r) = table
            .routes
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(want.route_name))
        {
            // Our name, edited to another prefix: put it back.
            (r.name.as_str(), RouteChange::Repair)
        } else {
            (want.route_name, RouteChange::Create)
        };
        chosen.insert(name);
        let route = if name == want.route_name {
            want.route.clone()
        } else {
            Route {
                name: name.into(),
                ..want.route.clone()
            }
        };
        let put = Write::PutRoute {
            table: table.id.clone(),
            route,
            change,
        };
        // Repairs move routes off prefixes; they go first so that no create ever lands
        // beside another route with the same prefix.
        if change == RouteChange::Create {
            creates.push(put)
        } else {
            repairs.push(put)
        }
    }
    let deletes: Vec<Write> = table
        .routes
        .iter()
        .filter(|r| owned(&r.name) && !chosen.iter().any(|c| c.eq_ignore_ascii_case(&r.name)))
        .map(|r| Write::DeleteRoute {
            table: table.id.clone(),
            name: r.name.to_string(),
            address_prefix: r.address_prefix.to_string(),
        })
        .collect();
    let routes_after = table.routes.len() + creates.len() - deletes.len();
    let mut writes = repairs;
    writes.extend(creates);
    writes.extend(deletes);
    (writes, conflicts, routes_after)
}

/// What each destination needs in the group's table: members are in claim order (oldest
/// policy first), so the first policy to want an address names its route.
fn wants_of<'a>(group: &Group<'a>, shared: &Shared<'_>) -> BTreeMap<Ipv4Addr, Want<'a>> {
    let mut wants: BTreeMap<Ipv4Addr, Want> = BTreeMap::new();
    for m in &group.members {
        for d in &m.policy.destinations {
            wants.entry(d.address).or_insert_with(|| Want {
                address: d.address,
                policy: m.policy,
                route_name: &d.route_name,
                route: shared.route(d),
            });
        }
    }
    wants
}

/// The write creating the group's table, tagged for `creator`, with every wanted route.
fn create_table(group: &Group, wants: &BTreeMap<Ipv4Addr, Want>, creator: &DesiredState) -> Write {
    Write::CreateRouteTable {
        table: group.id.clone(),
        location: group.location.to_string(),
        tags: BTreeMap::from([
            (TAG_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
            (TAG_POLICY.to_string(), creator.name.to_string()),
        ]),
        disable_bgp_route_propagation: creator.disable_bgp_route_propagation,
        routes: wants.values().map(|w| w.route.clone()).collect(),
    }
}

/// Every member's verdict when the table would exceed Azure's route limit (nothing written).
fn over_the_limit(group: &Group, routes_after: usize, verdicts: &mut Vec<SubnetVerdict>) {
    for m in &group.members {
        let mut v = verdict(
            m.policy,
            &m.subnet.id,
            Some(group.id.clone()),
            Verdict::Error {
                reason: ErrorReason::RouteLimitExceeded,
                message: format!(
                    "route table {} would hold {routes_after} routes; Azure allows {MAX_ROUTES_PER_TABLE}",
                    group.id.name()
                ),
            },
        );
        v.warnings = egress_warnings(m.subnet);
        verdicts.push(v);
    }
}

/// The writes and verdicts of one table's group: the table created or repaired by the oldest
/// enforcing member, the enforcing members associated, every member judged.
pub(super) fn plan_group(
    group: &Group,
    shared: &Shared,
    writes: &mut Vec<PlannedWrite>,
    verdicts: &mut Vec<SubnetVerdict>,
) {
    let wants = wants_of(group, shared);
    let writer = group
        .members
        .iter()
        .find(|m| m.policy.mode == Mode::Enforce)
        .map(|m| m.policy);
    let owned = |name: &str| group.members.iter().any(|m| m.policy.owns_route_name(name));
    let (table_writes, conflicts, routes_after) = match group.existing {
        None => {
            let creator = writer.unwrap_or(group.members[0].policy);
            (
                vec![create_table(group, &wants, creator)],
                Vec::new(),
                wants.len(),
            )
        }
        Some(table) => repair_table(table, &wants, &owned),
    };
    if routes_after > MAX_ROUTES_PER_TABLE {
        over_the_limit(group, routes_after, verdicts);
        return;
    }

    let table_changes = table_writes.len();
    if let Some(writer) = writer {
        // Only enforce-mode members get associated: an Audit policy's subnet is never written.
        // A new table is needed only if some enforce member will use it.
        let associations: Vec<&Member> = group
            .members
            .iter()
            .filter(|m| m.associate && m.policy.mode == Mode::Enforce)
            .collect();
        let creates_table = group.existing.is_none();
        if !creates_table || !associations.is_empty() {
            writes.extend(table_writes.into_iter().map(|write| PlannedWrite {
                policy: writer.name.clone(),
                write,
            }));
        }
        writes.extend(associations.into_iter().map(|m| PlannedWrite {
            policy: m.policy.name.clone(),
            write: Write::AssociateSubnet {
                subnet: m.subnet.id.clone(),
                table: group.id.clone(),
            },
        }));
    }

    for m in &group.members {
        let changes = table_changes + usize::from(m.associate);
        let v = match conflicts.first() {
            Some((address, route)) => Verdict::Conflict {
                address: *address,
                route: route.name.to_string(),
                next_hop_type: route.next_hop_type.clone(),
            },
            None if changes > 0 => Verdict::Drift { changes },
            None => Verdict::InSync,
        };
        let mut sv = verdict(m.policy, &m.subnet.id, Some(group.id.clone()), v);
        sv.warnings = egress_warnings(m.subnet);
        verdicts.push(sv);
    }
}

pub(super) fn internet_route(name: &str, address: Ipv4Addr) -> Route {
    Route {
        name: name.into(),
        address_prefix: format!("{address}/32").into(),
        next_hop_type: NextHopType::Internet,
        next_hop_ip_address: None,
    }
}
