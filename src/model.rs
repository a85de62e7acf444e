//! What kmsroute observes in Azure, independent of any SDK: virtual networks with their subnets,
//! route tables with their routes and associated subnets. The planner reads these; the ARM
//! client builds them from list calls. Only the facts that decide a plan are here — the full
//! subnet body (NSG, service endpoints, …) stays with the client, which round-trips it untouched.

use crate::ids::{RouteTableId, SubnetId, VnetId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

/// The observed state of the subscriptions a set of policies needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Lower-cased subscription IDs whose listings are complete in this inventory. A subnet in a
    /// subscription not listed here is "not observed", never "absent".
    pub subscriptions: BTreeSet<String>,
    pub virtual_networks: Vec<VirtualNetwork>,
    pub route_tables: Vec<RouteTable>,
    /// Selected subscriptions ARM refused to list (`404 SubscriptionNotFound`, `403
    /// AuthorizationFailed`), by lower-cased ID: not observed, and a problem of the policies
    /// that select them, while the other subscriptions go on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unreadable: BTreeMap<String, SubscriptionError>,
    /// List pages (read requests) this observation cost; the shared inventory paces its
    /// refreshes by it. Not part of the observed state.
    #[serde(default, skip)]
    pub list_pages: u64,
}

/// Why a subscription could not be listed: ARM's status, code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionError {
    pub status: Option<u16>,
    pub code: Option<String>,
    pub message: String,
}

impl fmt::Display for SubscriptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.status, &self.code) {
            (Some(s), Some(c)) => write!(f, "HTTP {s} {c}: {}", self.message),
            (_, Some(c)) => write!(f, "{c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualNetwork {
    pub id: VnetId,
    pub location: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub subnets: Vec<Subnet>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    pub id: SubnetId,
    pub route_table: Option<RouteTableId>,
    /// A NAT gateway gives the subnet Internet egress.
    #[serde(default)]
    pub nat_gateway: bool,
    /// `defaultOutboundAccess`; `Some(false)` means a private subnet with no implicit egress.
    #[serde(default)]
    pub default_outbound_access: Option<bool>,
}

/// A network interface, as far as verification needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// The ARM ID as listed.
    pub id: String,
    /// The subnet of its first IP configuration.
    pub subnet: Option<SubnetId>,
    /// Attached to a virtual machine (effective routes exist only for a running VM's NIC).
    pub attached: bool,
    /// Lower-cased ID of an instance-level public IP on one of its IP configurations.
    #[serde(default)]
    pub public_ip: Option<String>,
    /// Lower-cased IDs of the load balancer backend pools its IP configurations belong to.
    #[serde(default)]
    pub backend_pools: Vec<String>,
}

/// What gives a NIC a way out to the Internet besides its subnet: public IP addresses that
/// exist, and backend pools of Standard load balancers that have an outbound rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressFacts {
    /// Lower-cased IDs of the public IP addresses listed.
    pub public_ips: BTreeSet<String>,
    /// Lower-cased IDs of backend pools that a Standard load balancer's outbound rule serves.
    pub outbound_pools: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteTable {
    pub id: RouteTableId,
    pub location: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub disable_bgp_route_propagation: bool,
    pub routes: Vec<Route>,
    /// Subnets associated with the table, as ARM reports them (`properties.subnets`).
    #[serde(default)]
    pub subnets: Vec<SubnetId>,
}

/// Serialized in ARM's own casing (`addressPrefix`, `nextHopType`), like every JSON/YAML
/// output of kmsroute; the snake_case names are still read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub name: String,
    /// As ARM holds it: a CIDR, or a service tag such as `AzureCloud`.
    #[serde(alias = "address_prefix")]
    pub address_prefix: String,
    #[serde(alias = "next_hop_type")]
    pub next_hop_type: NextHopType,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "next_hop_ip_address"
    )]
    pub next_hop_ip_address: Option<String>,
}

impl Route {
    /// The host address when the prefix is exactly an IPv4 `/32`.
    pub fn host_address(&self) -> Option<Ipv4Addr> {
        let (addr, len) = self.address_prefix.split_once('/')?;
        (len == "32").then(|| addr.parse().ok()).flatten()
    }
}

/// `RouteNextHopType`; ARM models it as an extensible string, so unknown values are kept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum NextHopType {
    VirtualNetworkGateway,
    VnetLocal,
    Internet,
    VirtualAppliance,
    None,
    Other(String),
}

impl From<String> for NextHopType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "VirtualNetworkGateway" => Self::VirtualNetworkGateway,
            "VnetLocal" => Self::VnetLocal,
            "Internet" => Self::Internet,
            "VirtualAppliance" => Self::VirtualAppliance,
            "None" => Self::None,
            _ => Self::Other(s),
        }
    }
}

impl From<NextHopType> for String {
    fn from(n: NextHopType) -> String {
        n.to_string()
    }
}

impl fmt::Display for NextHopType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::VirtualNetworkGateway => "VirtualNetworkGateway",
            Self::VnetLocal => "VnetLocal",
            Self::Internet => "Internet",
            Self::VirtualAppliance => "VirtualAppliance",
            Self::None => "None",
            Self::Other(s) => s,
        })
    }
}

/// Subnet names Azure reserves for platform services; kmsroute never touches them.
pub const SPECIAL_SUBNETS: [&str; 5] = [
    "GatewaySubnet",
    "AzureFirewallSubnet",
    "AzureFirewallManagementSubnet",
    "AzureBastionSubnet",
    "RouteServerSubnet",
];

/// The reserved name a subnet has, if it has one (compared case-insensitively, like ARM).
pub fn special_subnet_name(name: &str) -> Option<&'static str> {
    SPECIAL_SUBNETS
        .iter()
        .find(|s| s.eq_ignore_ascii_case(name))
        .copied()
}

impl Inventory {
    /// Makes equal IDs share one allocation: a subnet's `routeTable` the listed table's ID, a
    /// table's `subnets` the listed subnets' IDs (each was parsed from its own copy of the
    /// text). A third of the inventory's memory at 100,000 subnets; the values do not change.
    pub fn share_ids(&mut self) {
        use std::collections::HashMap;
        let tables: HashMap<&str, &RouteTableId> = self
            .route_tables
            .iter()
            .map(|t| (t.id.key(), &t.id))
            .collect();
        for v in &mut self.virtual_networks {
            for s in &mut v.subnets {
                if let Some(shared) = s.route_table.as_ref().and_then(|t| tables.get(t.key())) {
                    s.route_table = Some((*shared).clone());
                }
            }
        }
        let subnets: HashMap<&str, &SubnetId> = self
            .virtual_networks
            .iter()
            .flat_map(|v| v.subnets.iter().map(|s| (s.id.key(), &s.id)))
            .collect();
        for t in &mut self.route_tables {
            for s in &mut t.subnets {
                if let Some(shared) = subnets.get(s.key()) {
                    *s = (*shared).clone();
                }
            }
        }
    }

    pub fn subnet(&self, id: &SubnetId) -> Option<(&VirtualNetwork, &Subnet)> {
        self.virtual_networks
            .iter()
            .filter(|v| v.id == id.vnet())
            .flat_map(|v| v.subnets.iter().map(move |s| (v, s)))
            .find(|(_, s)| &s.id == id)
    }

    pub fn route_table(&self, id: &RouteTableId) -> Option<&RouteTable> {
        self.route_tables.iter().find(|t| &t.id == id)
    }

    pub fn observes_subscription(&self, subscription: &str) -> bool {
        self.subscriptions
            .contains(&subscription.to_ascii_lowercase())
    }
}
