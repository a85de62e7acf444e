//! The planner: desired state + observed Azure → the minimal ordered list of ARM writes, and a
//! verdict for every selected subnet. Pure: no I/O, no clock, deterministic output order.
//!
//! This is where the safety rules live (see `docs/architecture.md`): foreign routes and subnet
//! properties are never touched (a write can only add/repair/delete *owned* routes, create a
//! tagged table, or set a subnet's `routeTable` where it had none); in-sync estates plan zero
//! writes; conflicts are reported, not fought; special subnets are skipped; no route broader than
//! a `/32` is ever planned. The executor only carries plans out.

pub mod contest;
pub mod egress;
#[cfg(any(test, feature = "testing"))]
pub mod simulate;

use crate::api::{
    ConflictPolicy, DeletionPolicy, DesiredState, MANAGED_BY_VALUE, Mode, TAG_MANAGED_BY,
    TAG_POLICY,
};
use crate::ids::{RouteTableId, SubnetId};
use crate::model::{
    Inventory, NextHopType, Route, RouteTable, Subnet, VirtualNetwork, special_subnet_name,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

pub use crate::model::MAX_ROUTES_PER_TABLE;

/// What reconcile would do: writes in execution order, grouped by the route table they belong
/// to (each table's writes run in order, tables in parallel), and a verdict per selected subnet.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub writes: Vec<PlannedWrite>,
    /// One entry per table written: which writes are its, which must succeed for the rest to
    /// be attempted, and which subnets its writes concern. The executor runs these lanes.
    #[serde(skip)]
    pub tables: Vec<TablePlan>,
    pub verdicts: Vec<SubnetVerdict>,
    /// Tables a policy releases because no selected subnet uses them any more (its writes are
    /// in `writes`, except under `mode: Audit`, which only reports them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<Release>,
}

/// What a policy lets go of: a route table in its subscriptions that holds its owned routes (or
/// that it created) while none of the subnets using it is selected by any policy any more —
/// the subnets left the selection (a narrowed selector, an excluded name, a removed tag).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub policy: String,
    pub table: RouteTableId,
    /// The subnets using the table (none selected now).
    pub subnets: Vec<SubnetId>,
    /// The table was created by this policy: it is dissociated and deleted, not just emptied.
    pub created: bool,
}

/// One ARM write and the policy it is made for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedWrite {
    pub policy: String,
    #[serde(flatten)]
    pub write: Write,
}

/// The only writes kmsroute ever makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Write {
    /// PUT a new route table (with `If-None-Match: *`), its routes inline.
    CreateRouteTable {
        table: RouteTableId,
        location: String,
        tags: BTreeMap<String, String>,
        disable_bgp_route_propagation: bool,
        routes: Vec<Route>,
    },
    /// PUT `routeTables/{t}/routes/{name}`.
    PutRoute {
        table: RouteTableId,
        route: Route,
        change: RouteChange,
    },
    /// DELETE an owned route.
    DeleteRoute {
        table: RouteTableId,
        name: String,
        address_prefix: String,
    },
    /// GET the subnet, set `routeTable`, PUT the whole body back (`If-Match`).
    AssociateSubnet {
        subnet: SubnetId,
        table: RouteTableId,
    },
    /// The same, clearing `routeTable` (cleanup of a table the policy created).
    DissociateSubnet {
        subnet: SubnetId,
        table: RouteTableId,
    },
    /// DELETE a table the policy created and nothing uses any more.
    DeleteRouteTable { table: RouteTableId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RouteChange {
    /// The route was missing.
    Create,
    /// An owned route had the wrong prefix or next hop.
    Repair,
    /// A foreign route sent a KMS address elsewhere and the policy says `Replace`.
    Replace,
}

impl Write {
    /// The route table the write belongs to (for grouping and serialization).
    pub fn table(&self) -> &RouteTableId {
        match self {
            Write::CreateRouteTable { table, .. }
            | Write::PutRoute { table, .. }
            | Write::DeleteRoute { table, .. }
            | Write::AssociateSubnet { table, .. }
            | Write::DissociateSubnet { table, .. }
            | Write::DeleteRouteTable { table } => table,
        }
    }

    /// The subnet a write changes, for the writes that change a subnet.
    pub fn subnet(&self) -> Option<&SubnetId> {
        match self {
            Write::AssociateSubnet { subnet, .. } | Write::DissociateSubnet { subnet, .. } => {
                Some(subnet)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Write::CreateRouteTable {
                table,
                routes,
                location,
                ..
            } => write!(
                f,
                "create route table {} in {location} with {} route(s)",
                table.name(),
                routes.len()
            ),
            Write::PutRoute {
                table,
                route,
                change,
            } => write!(
                f,
                "{} route {} {} -> {} in {}",
                match change {
                    RouteChange::Create => "add",
                    RouteChange::Repair => "repair",
                    RouteChange::Replace => "replace",
                },
                route.name,
                route.address_prefix,
                route.next_hop_type,
                table.name()
            ),
            Write::DeleteRoute {
                table,
                name,
                address_prefix,
            } => {
                write!(
                    f,
                    "delete route {name} ({address_prefix}) from {}",
                    table.name()
                )
            }
            Write::AssociateSubnet { subnet, table } => write!(
                f,
                "associate {}/{} with {}",
                subnet.vnet_name(),
                subnet.name(),
                table.name()
            ),
            Write::DissociateSubnet { subnet, table } => write!(
                f,
                "dissociate {}/{} from {}",
                subnet.vnet_name(),
                subnet.name(),
                table.name()
            ),
            Write::DeleteRouteTable { table } => write!(f, "delete route table {}", table.name()),
        }
    }
}

/// The outcome for one selected subnet.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetVerdict {
    pub policy: String,
    pub subnet: SubnetId,
    pub route_table: Option<RouteTableId>,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all_fields = "camelCase")]
pub enum Verdict {
    InSync,
    /// Drift found; `changes` writes fix it (or would, in `Audit`).
    WillRepair {
        changes: usize,
    },
    /// A foreign route sends a KMS address elsewhere; reported, not fought.
    Conflict {
        address: Ipv4Addr,
        route: String,
        next_hop_type: NextHopType,
    },
    Skipped {
        reason: SkipReason,
    },
    Error {
        reason: ErrorReason,
        message: String,
    },
}

impl Verdict {
    /// Machine-readable reason, as used in status problems and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::InSync => "InSync",
            Verdict::WillRepair { .. } => "Drift",
            Verdict::Conflict { .. } => "Conflict",
            Verdict::Skipped { reason } => reason.code(),
            Verdict::Error { reason, .. } => reason.code(),
        }
    }

    /// A sentence a human can act on.
    pub fn message(&self) -> String {
        match self {
            Verdict::InSync => "all KMS routes present".into(),
            Verdict::WillRepair { changes } => format!("{changes} write(s) needed"),
            Verdict::Conflict {
                address,
                route,
                next_hop_type,
            } => format!(
                "route {route} sends {address}/32 to {next_hop_type}, not Internet; set conflictPolicy: Replace to overwrite it, or fix it by hand"
            ),
            Verdict::Skipped { reason } => reason.to_string(),
            Verdict::Error { message, .. } => message.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all_fields = "camelCase")]
pub enum SkipReason {
    /// A platform subnet (GatewaySubnet, AzureFirewallSubnet, …) that must not get UDRs.
    SpecialSubnet { name: String },
    /// No route table and `createIfMissing: false`.
    NoRouteTable,
    /// An older policy selects the same subnet and owns it.
    OwnedByOtherPolicy { policy: String },
}

impl SkipReason {
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::SpecialSubnet { .. } => "SpecialSubnet",
            SkipReason::NoRouteTable => "NoRouteTable",
            SkipReason::OwnedByOtherPolicy { .. } => "Overlap",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::SpecialSubnet { name } => {
                write!(
                    f,
                    "{name} is reserved for an Azure service and must not carry these routes"
                )
            }
            SkipReason::NoRouteTable => {
                f.write_str("subnet has no route table and routeTable.createIfMissing is false")
            }
            SkipReason::OwnedByOtherPolicy { policy } => {
                write!(
                    f,
                    "also selected by older policy {policy:?}, which manages it"
                )
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ErrorReason {
    SubnetNotFound,
    SubscriptionNotObserved,
    RouteTableNotObserved,
    /// The subnet's table is in a subscription the policy does not cover (ARM allows only
    /// tables of the subnet's own subscription; a listing that says otherwise is not trusted).
    RouteTableOutOfScope,
    InvalidRouteTableName,
    RouteTableNameTaken,
    LocationMismatch,
    RouteLimitExceeded,
}

impl ErrorReason {
    /// Every planner error (the reasons `status.problems` can hold for them).
    pub const ALL: [ErrorReason; 8] = [
        ErrorReason::SubnetNotFound,
        ErrorReason::SubscriptionNotObserved,
        ErrorReason::RouteTableNotObserved,
        ErrorReason::RouteTableOutOfScope,
        ErrorReason::InvalidRouteTableName,
        ErrorReason::RouteTableNameTaken,
        ErrorReason::LocationMismatch,
        ErrorReason::RouteLimitExceeded,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ErrorReason::SubnetNotFound => "SubnetNotFound",
            ErrorReason::SubscriptionNotObserved => "SubscriptionNotObserved",
            ErrorReason::RouteTableNotObserved => "RouteTableNotObserved",
            ErrorReason::RouteTableOutOfScope => "RouteTableOutOfScope",
            ErrorReason::InvalidRouteTableName => "InvalidRouteTableName",
            ErrorReason::RouteTableNameTaken => "RouteTableNameTaken",
            ErrorReason::LocationMismatch => "LocationMismatch",
            ErrorReason::RouteLimitExceeded => "RouteLimitExceeded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "warning")]
pub enum Warning {
    /// `defaultOutboundAccess: false` and no NAT gateway: next hop Internet leads nowhere, so
    /// the route alone will not make activation work.
    NoInternetEgress,
}

impl Warning {
    pub fn code(&self) -> &'static str {
        match self {
            Warning::NoInternetEgress => "NoInternetEgress",
        }
    }
    pub fn message(&self) -> &'static str {
        match self {
            Warning::NoInternetEgress => {
                "subnet has defaultOutboundAccess=false and no NAT gateway: next hop Internet has no egress path, add a NAT gateway or public IP"
            }
        }
    }
}

/// One route table's share of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct TablePlan {
    pub table: RouteTableId,
    /// Indices into [`Plan::writes`], in the order they run.
    pub writes: Vec<usize>,
    /// Of those, the writes the rest depend on: when one fails, the table's later writes are
    /// not attempted (a table that was not created cannot take an association; a table whose
    /// subnet is still associated cannot be deleted).
    pub prerequisites: Vec<usize>,
    /// The subnets the table's writes concern (those planned on it, or released from it): a
    /// failure of a table write is theirs.
    pub subnets: Vec<SubnetId>,
}

/// A write the rest of its table's writes depend on.
fn is_prerequisite(w: &Write) -> bool {
    matches!(
        w,
        Write::CreateRouteTable { .. } | Write::DissociateSubnet { .. }
    )
}

impl Plan {
    /// True when the plan writes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// A plan of hand-made writes (tests, benchmarks): grouped by table in the order the
    /// tables first appear, prerequisites by the planner's rule, no subnets or verdicts.
    pub fn from_writes(writes: Vec<PlannedWrite>) -> Plan {
        let mut plan = Plan {
            writes,
            ..Plan::default()
        };
        plan.group_tables(|_| Vec::new());
        plan
    }

    /// Only the writes of one policy (a pass writes its own share); the tables follow.
    pub fn retain_policy(&mut self, policy: &str) {
        let subnets: HashMap<String, Vec<SubnetId>> = std::mem::take(&mut self.tables)
            .into_iter()
            .map(|t| (t.table.key().to_string(), t.subnets))
            .collect();
        self.writes.retain(|w| w.policy == policy);
        self.group_tables(|t| subnets.get(t.key()).cloned().unwrap_or_default());
    }

    /// Rebuilds [`Plan::tables`] from the writes: one lane per table, in the order the tables
    /// first appear, each table's writes in plan order.
    fn group_tables(&mut self, subnets_of: impl Fn(&RouteTableId) -> Vec<SubnetId>) {
        let mut lanes = Lanes::new();
        for (i, w) in self.writes.iter().enumerate() {
            lanes.add(&self.writes, i..i + 1, w.write.table(), []);
        }
        self.tables = lanes.tables;
        for t in &mut self.tables {
            t.subnets = subnets_of(&t.table);
        }
    }
}

/// Puts one table's writes in that table's lane (a new one, or the one an earlier policy's
/// writes to the table opened: one table's writes never run side by side).
struct Lanes {
    tables: Vec<TablePlan>,
    at: HashMap<RouteTableId, usize>,
}

impl Lanes {
    fn new() -> Lanes {
        Lanes {
            tables: Vec::new(),
            at: HashMap::new(),
        }
    }

    /// Puts `writes[range]`, all of them writes to `table`, in the table's lane, and the
    /// `subnets` they concern beside them (consumed only when there is a write).
    fn add(
        &mut self,
        writes: &[PlannedWrite],
        range: std::ops::Range<usize>,
        table: &RouteTableId,
        subnets: impl IntoIterator<Item = SubnetId>,
    ) {
        let Some(added) = writes.get(range.clone()).filter(|w| !w.is_empty()) else {
            return;
        };
        let (lane, opened) = match self.at.get(table) {
            Some(&lane) => (lane, false),
            None => {
                self.at.insert(table.clone(), self.tables.len());
                self.tables.push(TablePlan {
                    table: table.clone(),
                    writes: Vec::new(),
                    prerequisites: Vec::new(),
                    subnets: Vec::new(),
                });
                (self.tables.len() - 1, true)
            }
        };
        let lane = &mut self.tables[lane];
        for (i, w) in range.zip(added) {
            lane.writes.push(i);
            if is_prerequisite(&w.write) {
                lane.prerequisites.push(i);
            }
        }
        if opened {
            // One caller's subnets are distinct already; only a second one's need checking.
            lane.subnets.extend(subnets);
        } else {
            for s in subnets {
                if !lane.subnets.contains(&s) {
                    lane.subnets.push(s);
                }
            }
        }
    }
}

/// Lookups over an inventory by case-insensitive ID key.
struct Index<'a> {
    subnets: HashMap<&'a str, (&'a VirtualNetwork, &'a Subnet)>,
    tables: HashMap<&'a str, &'a RouteTable>,
    inventory: &'a Inventory,
}

impl<'a> Index<'a> {
    fn new(inventory: &'a Inventory) -> Self {
        let subnets = inventory
            .virtual_networks
            .iter()
            .flat_map(|v| v.subnets.iter().map(move |s| (s.id.key(), (v, s))))
            .collect();
        let tables = inventory
            .route_tables
            .iter()
            .map(|t| (t.id.key(), t))
            .collect();
        Index {
            subnets,
            tables,
            inventory,
        }
    }
}

/// The subnets one policy selects: those found (deduplicated, in ID order) and the named
/// ones that could not be looked at, with why.
struct Resolved<'a> {
    found: Vec<(&'a VirtualNetwork, &'a Subnet)>,
    missing: Vec<(SubnetId, ErrorReason, String)>,
}

fn resolve<'a>(policy: &DesiredState, idx: &Index<'a>) -> Resolved<'a> {
    // A sorted Vec, not a map: 16 bytes a subnet (a B-tree of 100,000 took 5 MB more).
    let mut found: Vec<(&'a VirtualNetwork, &'a Subnet)> = Vec::new();
    let mut missing = Vec::new();
    for id in &policy.subnets {
        if !idx.inventory.observes_subscription(id.subscription()) {
            missing.push((
                id.clone(),
                ErrorReason::SubscriptionNotObserved,
                format!("subscription {} was not listed", id.subscription()),
            ));
        } else if let Some(&(v, s)) = idx.subnets.get(id.key()) {
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
        for v in &idx.inventory.virtual_networks {
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
    found.sort_unstable_by(|a, b| a.1.id.key().cmp(b.1.id.key()));
    found.dedup_by(|a, b| a.1.id.key() == b.1.id.key());
    Resolved { found, missing }
}

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
    let mut verdicts = plan(policies, one).verdicts;
    verdicts.retain(|v| v.subnet.subscription().eq_ignore_ascii_case(subscription));
    verdicts
}

/// The verdicts of `before` outside the `relisted` subscriptions (lower-case): with
/// [`verdicts_in`] for each relisted subscription, the verdicts of the estate after writes made
/// only there.
pub fn verdicts_outside(
    before: &[SubnetVerdict],
    relisted: &BTreeSet<String>,
) -> Vec<SubnetVerdict> {
    before
        .iter()
        .filter(|v| !relisted.contains(&v.subnet.subscription().to_ascii_lowercase()))
        .cloned()
        .collect()
}

/// Verdicts in the order [`plan`] gives them.
pub fn sort_verdicts(verdicts: &mut [SubnetVerdict]) {
    // (policy, subnet) is unique, so an unstable sort is as deterministic, and it needs no
    // buffer of half the verdicts beside them.
    verdicts.sort_unstable_by(|a, b| (&a.policy, &a.subnet).cmp(&(&b.policy, &b.subnet)));
}

/// Policies in claim order: oldest first, then by name.
fn by_seniority(policies: &[DesiredState]) -> Vec<&DesiredState> {
    let mut ordered: Vec<&DesiredState> = policies.iter().collect();
    ordered.sort_by(|a, b| a.seniority().cmp(&b.seniority()));
    ordered
}

/// A subnet owned by a policy, ready for grouping by route table.
struct Member<'a> {
    policy: &'a DesiredState,
    subnet: &'a Subnet,
    /// The subnet has no table yet; associating it is part of the plan.
    associate: bool,
}

/// Subnets sharing one route table (existing, or to be created).
struct Group<'a> {
    id: RouteTableId,
    existing: Option<&'a RouteTable>,
    location: &'a str,
    members: Vec<Member<'a>>,
}

/// Which policy owns each selected subnet; verdicts for those that cannot be owned.
fn claim<'a>(
    ordered: &[&'a DesiredState],
    idx: &Index<'a>,
    verdicts: &mut Vec<SubnetVerdict>,
) -> Vec<(&'a DesiredState, &'a VirtualNetwork, &'a Subnet)> {
    let mut owner: HashMap<&'a str, &'a str> = HashMap::new();
    let mut owned = Vec::new();
    for &policy in ordered {
        let Resolved { found, missing } = resolve(policy, idx);
        for (v, s) in found {
            if let Some(older) = owner.get(s.id.key()) {
                verdicts.push(verdict(
                    policy,
                    &s.id,
                    s.route_table.clone(),
                    Verdict::Skipped {
                        reason: SkipReason::OwnedByOtherPolicy {
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

fn verdict(
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

fn egress_warnings(subnet: &Subnet) -> Vec<Warning> {
    if subnet.default_outbound_access == Some(false) && !subnet.nat_gateway {
        vec![Warning::NoInternetEgress]
    } else {
        Vec::new()
    }
}

fn is_kmsroute_table(table: &RouteTable) -> bool {
    table
        .tags
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(TAG_MANAGED_BY) && v == MANAGED_BY_VALUE)
}

fn created_by(table: &RouteTable, policy: &str) -> bool {
    table
        .tags
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(TAG_POLICY) && v == policy)
}

/// Plans reconcile for a set of policies against one inventory.
///
/// All policies are given so that overlaps are decided the same way every time (the older
/// policy owns a contested subnet); each write names the policy it is made for.
pub fn plan(policies: &[DesiredState], inventory: &Inventory) -> Plan {
    let idx = Index::new(inventory);
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
    let mut writes = Vec::new();
    let mut lanes = Lanes::new();
    // The tables this plan writes to (or judges), in key order.
    let mut planned: Vec<RouteTableId> = Vec::new();
    for run in placed.chunk_by(|a, b| a.table == b.table) {
        let group = group_of(run, &mut verdicts);
        let before = writes.len();
        plan_group(&group, &mut writes, &mut verdicts);
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
    let mut released: Vec<Release> = Vec::new();
    // What earlier (older) policies' releases already do: two policies whose route-name
    // prefixes overlap must not both delete one route, nor touch a table being deleted.
    let mut deleted_tables: BTreeSet<String> = BTreeSet::new();
    let mut deleted_routes: BTreeSet<(String, String)> = BTreeSet::new();
    for &policy in &ordered {
        for (release, release_writes) in releases(policy, &idx, &selected, &users) {
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
                    &writes,
                    before..writes.len(),
                    &release.table,
                    release.subnets.iter().cloned(),
                );
            }
            released.push(release);
        }
    }
    sort_verdicts(&mut verdicts);
    verdicts.shrink_to_fit();
    Plan {
        writes,
        tables: lanes.tables,
        verdicts,
        released,
    }
}

/// Every subnet some policy selects now (special and contested ones included): nothing they
/// use is released.
fn selected_anywhere<'a>(policies: &[&DesiredState], idx: &Index<'a>) -> BTreeSet<&'a str> {
    policies
        .iter()
        .flat_map(|p| resolve(p, idx).found)
        .map(|(_, s)| s.id.key())
        .collect()
}

/// The subnets using each table that `wanted` (those naming it, and ARM's
/// `properties.subnets`), and an empty entry for a wanted table nothing uses.
fn table_users<'a>(idx: &Index<'a>, wanted: impl Fn(&RouteTableId) -> bool) -> Users<'a> {
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
        if let Some(of_table) = s.route_table.as_ref().and_then(|t| users.get_mut(t.key())) {
            of_table.insert(s.id.key(), &s.id);
        }
    }
    users
}

/// Route table key → the subnets using it, by key.
type Users<'a> = HashMap<&'a str, BTreeMap<&'a str, &'a SubnetId>>;

/// The tables `policy` releases and the writes that do it. Honours `deletionPolicy: Orphan`
/// (nothing is released); the caller drops the writes under `mode: Audit`. Never a table that
/// a selected subnet uses or that this plan writes to, never outside the policy's
/// subscriptions, never a foreign route: only routes in the policy's name space, and a table
/// it created only when nothing but its own routes are left in it.
fn releases(
    policy: &DesiredState,
    idx: &Index<'_>,
    selected: &BTreeSet<&str>,
    users: &Users<'_>,
) -> Vec<(Release, Vec<Write>)> {
    if policy.deletion_policy == DeletionPolicy::Orphan {
        return Vec::new();
    }
    let subscriptions = policy.subscriptions();
    let none = BTreeMap::new();
    // The tables this plan does not write to are the ones with an entry in `users`.
    let mut tables: Vec<&RouteTable> = idx
        .inventory
        .route_tables
        .iter()
        .filter(|t| subscriptions.contains(&t.id.subscription().to_ascii_lowercase()))
        .filter(|t| users.contains_key(t.id.key()))
        .collect();
    tables.sort_by(|a, b| a.id.key().cmp(b.id.key()));
    let mut out = Vec::new();
    for table in tables {
        let using = users.get(table.id.key()).unwrap_or(&none);
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
                policy: policy.name.clone(),
                table: table.id.clone(),
                subnets: using.values().map(|s| (*s).clone()).collect(),
                created,
            },
            writes,
        ));
    }
    out
}

/// A subnet owned by a policy, on the route table it uses or is to use.
struct Placed<'a> {
    table: RouteTableId,
    existing: Option<&'a RouteTable>,
    /// The VNet's region, which a table to be created must share (`None`: the subnet has its
    /// table already).
    region: Option<&'a str>,
    /// Claim order, which the members of a table keep (the oldest policy names a route).
    order: usize,
    member: Member<'a>,
}

/// Where an owned subnet goes: on a table (its verdict comes from the table's group), or
/// nowhere, with its verdict.
fn place<'a>(
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
        Some(table_id)
            if !table_id
                .subscription()
                .eq_ignore_ascii_case(subnet.id.subscription())
                || !subscriptions_of
                    .get(policy.name.as_str())
                    .is_some_and(|s| s.contains(&table_id.subscription().to_ascii_lowercase())) =>
        {
            Err(error(
                ErrorReason::RouteTableOutOfScope,
                format!(
                    "route table {table_id} is in another subscription than the subnet or outside the policy's subscriptions; kmsroute does not write there"
                ),
                Some(table_id.clone()),
            ))
        }
        Some(table_id) => match idx.tables.get(table_id.key()) {
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
            let existing = idx.tables.get(id.key()).copied();
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

/// The group of one table's placed subnets (in claim order): its region is the table's, or
/// for a table to be created the first member's VNet's; a subnet whose VNet is elsewhere gets
/// its verdict here instead.
fn group_of<'a>(run: &[Placed<'a>], verdicts: &mut Vec<SubnetVerdict>) -> Group<'a> {
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
struct Want<'a> {
    address: Ipv4Addr,
    /// The policy that names the route: the oldest member policy that wants the address.
    policy: &'a DesiredState,
    route_name: &'a str,
}

/// The writes that bring an existing table to what its members want: a route kept where one
/// already sends the address to the Internet, an owned one repaired, a foreign one replaced
/// (`conflictPolicy: Replace`) or reported as a conflict, a missing one created, owned
/// leftovers deleted; repairs first, so no create lands beside a route with its prefix. Also
/// how many routes the table will hold.
fn repair_table<'a>(
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
        let put = Write::PutRoute {
            table: table.id.clone(),
            route: internet_route(name, want.address),
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

fn plan_group(group: &Group, writes: &mut Vec<PlannedWrite>, verdicts: &mut Vec<SubnetVerdict>) {
    // Members are in claim order (oldest policy first), so the first policy to want an address
    // names its route.
    let mut wants: BTreeMap<Ipv4Addr, Want> = BTreeMap::new();
    for m in &group.members {
        for d in &m.policy.destinations {
            wants.entry(d.address).or_insert(Want {
                address: d.address,
                policy: m.policy,
                route_name: &d.route_name,
            });
        }
    }
    let writer = group
        .members
        .iter()
        .find(|m| m.policy.mode == Mode::Enforce)
        .map(|m| m.policy);
    let owned = |name: &str| group.members.iter().any(|m| m.policy.owns_route_name(name));

    let table_writes: Vec<Write>;
    let conflicts: Vec<(Ipv4Addr, &Route)>;
    let routes_after: usize;
    match group.existing {
        None => {
            let routes: Vec<Route> = wants
                .values()
                .map(|w| internet_route(w.route_name, w.address))
                .collect();
            routes_after = routes.len();
            conflicts = Vec::new();
            let creator = writer.unwrap_or(group.members[0].policy);
            table_writes = vec![Write::CreateRouteTable {
                table: group.id.clone(),
                location: group.location.to_string(),
                tags: BTreeMap::from([
                    (TAG_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
                    (TAG_POLICY.to_string(), creator.name.clone()),
                ]),
                disable_bgp_route_propagation: creator.disable_bgp_route_propagation,
                routes,
            }];
        }
        Some(table) => {
            (table_writes, conflicts, routes_after) = repair_table(table, &wants, &owned);
        }
    }

    if routes_after > MAX_ROUTES_PER_TABLE {
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
            None if changes > 0 => Verdict::WillRepair { changes },
            None => Verdict::InSync,
        };
        let mut sv = verdict(m.policy, &m.subnet.id, Some(group.id.clone()), v);
        sv.warnings = egress_warnings(m.subnet);
        verdicts.push(sv);
    }
}

fn internet_route(name: &str, address: Ipv4Addr) -> Route {
    Route {
        name: name.into(),
        address_prefix: format!("{address}/32").into(),
        next_hop_type: NextHopType::Internet,
        next_hop_ip_address: None,
    }
}

/// What cleaning one table up takes: dissociating and deleting it, when the policy created it
/// and nothing but its footprint and its own routes are left there; otherwise deleting its
/// owned routes, except those to addresses another policy's subnets on it still need (`keep`).
fn cleanup_table(
    policy: &DesiredState,
    table: &RouteTable,
    keep: &BTreeSet<Ipv4Addr>,
    footprint: &BTreeMap<&str, &Subnet>,
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
        .all(|s| footprint.contains_key(s.key()));
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
    if policy.deletion_policy == DeletionPolicy::Orphan || policy.mode == Mode::Audit {
        return Plan::default();
    }
    let idx = Index::new(inventory);
    let Cleanup {
        kept,
        footprint,
        tables,
    } = cleanup_scope(policy, others, &idx);

    let mut writes = Vec::new();
    let mut lanes = Lanes::new();
    let mut changes_by_table: HashMap<&str, usize> = HashMap::new();
    let empty = BTreeSet::new();
    for table in tables.values() {
        let keep = kept.get(table.id.key()).unwrap_or(&empty);
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
                .and_then(|t| changes_by_table.get(t.key()))
                .copied()
                .unwrap_or(0);
            verdict(
                policy,
                &s.id,
                s.route_table.clone(),
                if changes > 0 {
                    Verdict::WillRepair { changes }
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
struct Cleanup<'a> {
    kept: HashMap<&'a str, BTreeSet<Ipv4Addr>>,
    footprint: BTreeMap<&'a str, &'a Subnet>,
    tables: BTreeMap<&'a str, &'a RouteTable>,
}

fn cleanup_scope<'a>(
    policy: &DesiredState,
    others: &'a [DesiredState],
    idx: &Index<'a>,
) -> Cleanup<'a> {
    let inventory = idx.inventory;
    let others: Vec<&DesiredState> = by_seniority(others);
    let mut ignored = Vec::new();
    let others_owned = claim(&others, idx, &mut ignored);
    let others_subnets: BTreeSet<&str> = others_owned.iter().map(|(_, _, s)| s.id.key()).collect();
    // Addresses other policies need in each table their subnets use.
    let mut kept: HashMap<&str, BTreeSet<Ipv4Addr>> = HashMap::new();
    for (p, _, s) in &others_owned {
        if let Some(t) = &s.route_table {
            kept.entry(t.key())
                .or_default()
                .extend(p.destinations.iter().map(|d| d.address));
        }
    }

    let mut footprint: BTreeMap<&str, &Subnet> = BTreeMap::new();
    for (_, s) in resolve(policy, idx).found {
        // Special subnets were never managed, so their tables are not ours to clean.
        if !others_subnets.contains(s.id.key()) && special_subnet_name(s.id.name()).is_none() {
            footprint.insert(s.id.key(), s);
        }
    }
    let mut tables: BTreeMap<&str, &RouteTable> = BTreeMap::new();
    for s in footprint.values() {
        if let Some(t) = s.route_table.as_ref().and_then(|t| idx.tables.get(t.key())) {
            tables.insert(t.id.key(), t);
        }
    }
    for t in &inventory.route_tables {
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
    for t in &inventory.route_tables {
        if !subscriptions.contains(&t.id.subscription().to_ascii_lowercase()) {
            continue;
        }
        let using: Vec<&str> = users
            .get(t.id.key())
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
            if let Some((_, s)) = idx.subnets.get(key)
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
#[cfg(test)]
mod tests;
