//! Looking the estate up and deciding who owns what: the index over an inventory, the
//! subnets each policy selects, and the claim of each subnet by the oldest policy selecting it.

use super::{ErrorReason, SkipReason, SubnetVerdict, Verdict, Warning};
use crate::api::{DesiredState, MANAGED_BY_VALUE, TAG_MANAGED_BY, TAG_POLICY};
use crate::ids::{IdKey, RouteTableId, SubnetId};
use crate::model::{Inventory, RouteTable, Subnet, VirtualNetwork};
use std::collections::HashMap;

/// Lookups over an estate by case-insensitive ID key. The estate may come in parts (one per
/// subscription, as the controller's shared inventory holds it): they are looked at where they
/// are, never copied into one.
pub(super) struct Index<'a> {
    pub(super) subnets: HashMap<IdKey<'a>, (&'a VirtualNetwork, &'a Subnet)>,
    pub(super) tables: HashMap<IdKey<'a>, &'a RouteTable>,
    parts: Vec<&'a Inventory>,
}

impl<'a> Index<'a> {
    pub(super) fn new(parts: impl IntoIterator<Item = &'a Inventory>) -> Self {
        let parts: Vec<&'a Inventory> = parts.into_iter().collect();
        let subnets = parts
            .iter()
            .flat_map(|p| p.virtual_networks.iter())
            .flat_map(|v| v.subnets.iter().map(move |s| (s.id.key(), (v, s))))
            .collect();
        let tables = parts
            .iter()
            .flat_map(|p| p.route_tables.iter())
            .map(|t| (t.id.key(), t))
            .collect();
        Index {
            subnets,
            tables,
            parts,
        }
    }

    /// True when some part holds the subscription's complete listing.
    pub(super) fn observes_subscription(&self, subscription: &str) -> bool {
        self.parts
            .iter()
            .any(|p| p.observes_subscription(subscription))
    }

    /// Every listed VNet, part by part.
    pub(super) fn virtual_networks(&self) -> impl Iterator<Item = &'a VirtualNetwork> + '_ {
        self.parts.iter().flat_map(|p| p.virtual_networks.iter())
    }

    /// Every listed route table, part by part.
    pub(super) fn route_tables(&self) -> impl Iterator<Item = &'a RouteTable> + '_ {
        self.parts.iter().flat_map(|p| p.route_tables.iter())
    }
}

/// The subnets one policy selects: those found (deduplicated, in ID order) and the named
/// ones that could not be looked at, with why.
pub(super) struct Selected<'a> {
    pub(super) found: Vec<(&'a VirtualNetwork, &'a Subnet)>,
    pub(super) missing: Vec<(SubnetId, ErrorReason, String)>,
}

pub(super) fn select_subnets<'a>(policy: &DesiredState, idx: &Index<'a>) -> Selected<'a> {
    // A sorted Vec, not a map: 16 bytes a subnet (a B-tree of 100,000 took 5 MB more).
    let mut found: Vec<(&'a VirtualNetwork, &'a Subnet)> = Vec::new();
    let mut missing = Vec::new();
    for id in &policy.subnets {
        if !idx.observes_subscription(id.subscription()) {
            missing.push((
                id.clone(),
                ErrorReason::SubscriptionNotObserved,
                format!("subscription {} was not listed", id.subscription()),
            ));
        } else if let Some(&(v, s)) = idx.subnets.get(&id.key()) {
            found.push((v, s));
        } else {
            missing.push((
                id.clone(),
                ErrorReason::SubnetNotFound,
                format!("subnet {id} does not exist"),
            ));
        }
    }
    if let Some(sel) = &policy.selector {
        for v in idx.virtual_networks() {
            if !sel
                .subscriptions
                .contains(&v.id.subscription().to_ascii_lowercase())
            {
                continue;
            }
            for s in &v.subnets {
                if sel.matches(&s.id, &v.tags) {
                    found.push((v, s));
                }
            }
        }
    }
    found.sort_unstable_by(|a, b| a.1.id.key().cmp(&b.1.id.key()));
    found.dedup_by(|a, b| a.1.id.key() == b.1.id.key());
    Selected { found, missing }
}

/// Policies in claim order: oldest first, then by name.
pub(super) fn by_seniority(policies: &[DesiredState]) -> Vec<&DesiredState> {
    let mut ordered: Vec<&DesiredState> = policies.iter().collect();
    ordered.sort_by(|a, b| a.seniority().cmp(&b.seniority()));
    ordered
}

/// A subnet owned by a policy, ready for grouping by route table.
pub(super) struct Member<'a> {
    pub(super) policy: &'a DesiredState,
    pub(super) subnet: &'a Subnet,
    /// The subnet has no table yet; associating it is part of the plan.
    pub(super) associate: bool,
}

/// Subnets sharing one route table (existing, or to be created).
pub(super) struct Group<'a> {
    pub(super) id: RouteTableId,
    pub(super) existing: Option<&'a RouteTable>,
    pub(super) location: &'a str,
    pub(super) members: Vec<Member<'a>>,
}

/// Which policy owns each selected subnet; verdicts for those that cannot be owned.
pub(super) fn claim<'a>(
    ordered: &[&'a DesiredState],
    idx: &Index<'a>,
    verdicts: &mut Vec<SubnetVerdict>,
) -> Vec<(&'a DesiredState, &'a VirtualNetwork, &'a Subnet)> {
    let mut owner: HashMap<IdKey<'a>, &'a str> = HashMap::new();
    let mut owned = Vec::new();
    for &policy in ordered {
        let Selected { found, missing } = select_subnets(policy, idx);
        for (v, s) in found {
            if let Some(older) = owner.get(&s.id.key()) {
                verdicts.push(verdict(
                    policy,
                    &s.id,
                    s.route_table.clone(),
                    Verdict::Skipped {
                        reason: SkipReason::Overlap {
                            policy: (*older).to_string(),
                        },
                    },
                ));
            } else {
                owner.insert(s.id.key(), &policy.name);
                owned.push((policy, v, s));
            }
        }
        for (id, reason, message) in missing {
            verdicts.push(verdict(
                policy,
                &id,
                None,
                Verdict::Error { reason, message },
            ));
        }
    }
    owned
}

pub(super) fn verdict(
    policy: &DesiredState,
    subnet: &SubnetId,
    route_table: Option<RouteTableId>,
    verdict: Verdict,
) -> SubnetVerdict {
    SubnetVerdict {
        policy: policy.name.clone(),
        subnet: subnet.clone(),
        route_table,
        verdict,
        warnings: Vec::new(),
    }
}

pub(super) fn egress_warnings(subnet: &Subnet) -> Vec<Warning> {
    if subnet.default_outbound_access == Some(false) && !subnet.nat_gateway {
        vec![Warning::NoInternetEgress]
    } else {
        Vec::new()
    }
}

pub(super) fn is_kmsroute_table(table: &RouteTable) -> bool {
    table
        .tags
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(TAG_MANAGED_BY) && v == MANAGED_BY_VALUE)
}

pub(super) fn created_by(table: &RouteTable, policy: &str) -> bool {
    table
        .tags
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(TAG_POLICY) && v == policy)
}
