//! What a plan is made of: the writes, the lanes they run in, and a verdict per subnet.

use super::Lanes;
use crate::ids::{RouteTableId, SubnetId};
use crate::model::{NextHopType, Route};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

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
    /// Shared by every write of the policy in a plan (150,000 copies of a name otherwise).
    pub policy: crate::model::Text,
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
    /// The policy's name, shared with the policy (a copy per subnet otherwise).
    pub policy: crate::model::Text,
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
    Drift {
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
    /// A sentence a human can act on.
    pub fn message(&self) -> String {
        match self {
            Verdict::InSync => "all KMS routes present".into(),
            Verdict::Drift { changes } => format!("{changes} write(s) needed"),
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
    Overlap { policy: String },
}

impl SkipReason {
    pub fn code(&self) -> &'static str {
        match self {
            SkipReason::SpecialSubnet { .. } => "SpecialSubnet",
            SkipReason::NoRouteTable => "NoRouteTable",
            SkipReason::Overlap { .. } => "Overlap",
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
            SkipReason::Overlap { policy } => {
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
pub(super) fn is_prerequisite(w: &Write) -> bool {
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
        let subnets: HashMap<RouteTableId, Vec<SubnetId>> = std::mem::take(&mut self.tables)
            .into_iter()
            .map(|t| (t.table, t.subnets))
            .collect();
        self.writes.retain(|w| w.policy == policy);
        self.group_tables(|t| subnets.get(t).cloned().unwrap_or_default());
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
