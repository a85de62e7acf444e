//! What kmsroute observes in Azure, independent of any SDK: virtual networks with their subnets,
//! route tables with their routes and associated subnets. The planner reads these; the ARM
//! client builds them from list calls. Only the facts that decide a plan are here — the full
//! subnet body (NSG, service endpoints, …) stays with the client, which round-trips it untouched.

use crate::ids::{IdKey, RouteTableId, SubnetId, VnetId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::sync::Arc;

/// A short string an inventory holds many equal copies of (route names and prefixes, next-hop
/// addresses, regions): a clone is a reference count, and [`Inventory::share_ids`] makes equal
/// values of one listing share one allocation (16 bytes a field; a `String` was 24 and a heap
/// block of its own, 230,000 routes' worth at 100,000 subnets).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Arc<str>);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// True when both are the one shared allocation (what [`Inventory::share_ids`] makes).
    pub fn same_allocation(&self, other: &Text) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text(Arc::from(s))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Arc::from(s))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Self {
        Text(Arc::from(s.as_str()))
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0.to_string()
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        &*self.0 == other.as_str()
    }
}

impl PartialEq<Text> for String {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == &*other.0
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Text::from)
    }
}

/// A resource's tags (ARM allows 50): a list sorted by name, not a map — a B-tree's first node
/// is 544 bytes whatever it holds, 11 MB for the VNets and tables of 100,000 subnets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tags(Vec<(Text, Text)>);

impl Tags {
    pub fn get(&self, name: &str) -> Option<&Text> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }
    /// Sets a tag, returning the value it replaces.
    pub fn insert(&mut self, name: impl Into<Text>, value: impl Into<Text>) -> Option<Text> {
        let (name, value): (Text, Text) = (name.into(), value.into());
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = (&Text, &Text)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn clear(&mut self) {
        self.0.clear();
    }
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }
    fn share(&mut self, texts: &mut Interner) {
        for (k, v) in &mut self.0 {
            texts.share(k);
            texts.share(v);
        }
    }
}

impl<K: Into<Text>, V: Into<Text>> FromIterator<(K, V)> for Tags {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut tags = Tags::default();
        for (k, v) in iter {
            tags.insert(k, v);
        }
        tags.0.shrink_to_fit();
        tags
    }
}

impl From<BTreeMap<String, String>> for Tags {
    fn from(m: BTreeMap<String, String>) -> Self {
        m.into_iter().collect()
    }
}

impl From<&Tags> for BTreeMap<String, String> {
    fn from(t: &Tags) -> Self {
        t.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Tags::from)
    }
}

/// One allocation per distinct value: a set of the texts seen so far.
#[derive(Default)]
pub struct Interner(std::collections::HashSet<Text>);

impl Interner {
    /// The shared copy of `t` (the first one seen).
    pub fn share(&mut self, t: &mut Text) {
        match self.0.get(t.as_str()) {
            Some(seen) => *t = seen.clone(),
            None => {
                self.0.insert(t.clone());
            }
        }
    }
}

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
    pub location: Text,
    #[serde(default)]
    pub tags: Tags,
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
    pub location: Text,
    #[serde(default)]
    pub tags: Tags,
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
    pub name: Text,
    /// As ARM holds it: a CIDR, or a service tag such as `AzureCloud`.
    #[serde(alias = "address_prefix")]
    pub address_prefix: Text,
    #[serde(alias = "next_hop_type")]
    pub next_hop_type: NextHopType,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "next_hop_ip_address"
    )]
    pub next_hop_ip_address: Option<Text>,
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

/// Azure's limit of routes in one route table (without Virtual Network Manager).
pub const MAX_ROUTES_PER_TABLE: usize = 400;

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
    /// Equal [`Text`]s (route names, prefixes, next hops, regions) likewise.
    pub fn share_ids(&mut self) {
        use std::collections::HashMap;
        let mut texts = Interner::default();
        for v in &mut self.virtual_networks {
            texts.share(&mut v.location);
            v.tags.share(&mut texts);
        }
        for t in &mut self.route_tables {
            texts.share(&mut t.location);
            t.tags.share(&mut texts);
            for r in &mut t.routes {
                texts.share(&mut r.name);
                texts.share(&mut r.address_prefix);
                if let Some(ip) = &mut r.next_hop_ip_address {
                    texts.share(ip);
                }
            }
        }
        let tables: HashMap<IdKey<'_>, &RouteTableId> = self
            .route_tables
            .iter()
            .map(|t| (t.id.key(), &t.id))
            .collect();
        for v in &mut self.virtual_networks {
            for s in &mut v.subnets {
                if let Some(shared) = s.route_table.as_ref().and_then(|t| tables.get(&t.key())) {
                    s.route_table = Some((*shared).clone());
                }
            }
        }
        let subnets: HashMap<IdKey<'_>, &SubnetId> = self
            .virtual_networks
            .iter()
            .flat_map(|v| v.subnets.iter().map(|s| (s.id.key(), &s.id)))
            .collect();
        for t in &mut self.route_tables {
            for s in &mut t.subnets {
                if let Some(shared) = subnets.get(&s.key()) {
                    *s = (*shared).clone();
                }
            }
        }
    }

    /// Makes this listing's IDs (its references to them included) share the allocations of
    /// the same IDs in `older` (the same text, casing included). A refreshed
    /// listing was parsed anew while the plans being carried out still held the last one's
    /// IDs: two copies of every subnet and table ID at the peak of a first install (50 MB at
    /// 100,000 subnets).
    pub fn share_with(&mut self, older: &Inventory) {
        use std::collections::HashMap;
        let vnets: HashMap<&str, &VnetId> = older
            .virtual_networks
            .iter()
            .map(|v| (v.id.as_str(), &v.id))
            .collect();
        let subnets: HashMap<&str, &SubnetId> = older
            .virtual_networks
            .iter()
            .flat_map(|v| v.subnets.iter().map(|s| (s.id.as_str(), &s.id)))
            .collect();
        let tables: HashMap<&str, &RouteTableId> = older
            .route_tables
            .iter()
            .map(|t| (t.id.as_str(), &t.id))
            .collect();
        for v in &mut self.virtual_networks {
            if let Some(id) = vnets.get(v.id.as_str()) {
                v.id = (*id).clone();
            }
            for s in &mut v.subnets {
                if let Some(id) = subnets.get(s.id.as_str()) {
                    s.id = (*id).clone();
                }
                if let Some(t) = &mut s.route_table
                    && let Some(id) = tables.get(t.as_str())
                {
                    *t = (*id).clone();
                }
            }
        }
        for t in &mut self.route_tables {
            if let Some(id) = tables.get(t.id.as_str()) {
                t.id = (*id).clone();
            }
            for s in &mut t.subnets {
                if let Some(id) = subnets.get(s.as_str()) {
                    *s = (*id).clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, prefix: &str) -> Route {
        Route {
            name: name.into(),
            address_prefix: prefix.into(),
            next_hop_type: NextHopType::Internet,
            next_hop_ip_address: None,
        }
    }

    fn table(name: &str, routes: Vec<Route>) -> RouteTable {
        RouteTable {
            id: RouteTableId::new("s", "rg", name),
            location: "westeurope".into(),
            tags: [("managed-by", "kmsroute")].into_iter().collect(),
            disable_bgp_route_propagation: false,
            routes,
            subnets: vec![],
        }
    }

    #[test]
    fn equal_texts_of_a_listing_end_up_in_one_allocation_and_keep_their_values() {
        let mut inv = Inventory {
            route_tables: vec![
                table("a", vec![route("kms-1", "20.118.99.224/32")]),
                table(
                    "b",
                    vec![route("kms-1", "20.118.99.224/32"), route("x", "0.0.0.0/0")],
                ),
            ],
            ..Inventory::default()
        };
        let before = inv.clone();
        inv.share_ids();
        assert_eq!(inv, before, "sharing changes no value");
        let (a, b) = (&inv.route_tables[0], &inv.route_tables[1]);
        assert!(a.routes[0].name.same_allocation(&b.routes[0].name));
        assert!(
            a.routes[0]
                .address_prefix
                .same_allocation(&b.routes[0].address_prefix)
        );
        assert!(a.location.same_allocation(&b.location));
        let (ka, _) = a.tags.iter().next().unwrap();
        let (kb, _) = b.tags.iter().next().unwrap();
        assert!(ka.same_allocation(kb));
        assert!(!b.routes[0].name.same_allocation(&b.routes[1].name));
    }

    #[test]
    fn a_relisted_inventory_keeps_the_allocations_of_its_unchanged_ids() {
        let vnet = |sub: &str, subnets: &[&str], table: &str| VirtualNetwork {
            id: VnetId::new(sub, "rg", "v"),
            location: "westeurope".into(),
            tags: Tags::default(),
            subnets: subnets
                .iter()
                .map(|n| Subnet {
                    id: SubnetId::new(sub, "rg", "v", n),
                    route_table: Some(RouteTableId::new(sub, "rg", table)),
                    nat_gateway: false,
                    default_outbound_access: None,
                })
                .collect(),
        };
        let older = Inventory {
            virtual_networks: vec![vnet("s", &["a", "b"], "t")],
            route_tables: vec![table("t", vec![])],
            ..Inventory::default()
        };
        // Listed again: subnet b gone, c new, the VNet's ID listed in another casing.
        let mut newer = Inventory {
            virtual_networks: vec![vnet("s", &["a", "c"], "t")],
            route_tables: vec![table("t", vec![])],
            ..Inventory::default()
        };
        newer.virtual_networks[0].id = VnetId::new("s", "RG", "v");
        let before = newer.clone();
        newer.share_with(&older);
        assert_eq!(newer, before, "sharing changes no value");
        let same = |a: &str, b: &str| a.as_ptr() == b.as_ptr();
        let (o, n) = (&older.virtual_networks[0], &newer.virtual_networks[0]);
        assert!(same(o.subnets[0].id.as_str(), n.subnets[0].id.as_str()));
        assert!(!same(o.subnets[1].id.as_str(), n.subnets[1].id.as_str()));
        assert_eq!(
            n.id.as_str(),
            "/subscriptions/s/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/v",
            "another casing is kept as listed"
        );
        let (ot, nt) = (&older.route_tables[0].id, &newer.route_tables[0].id);
        assert!(same(ot.as_str(), nt.as_str()));
        let association = n.subnets[1].route_table.as_ref().unwrap();
        assert!(
            same(ot.as_str(), association.as_str()),
            "references share too"
        );
    }

    #[test]
    fn tags_are_a_sorted_map() {
        let mut t: Tags = [("b", "2"), ("a", "1")].into_iter().collect();
        assert_eq!(t.insert("a", "one"), Some(Text::from("1")));
        assert_eq!(t.insert("c", "3"), None);
        assert_eq!(t.get("a").map(Text::as_str), Some("one"));
        assert_eq!(t.get("A"), None, "names compare exactly, as the map did");
        let names: Vec<&str> = t.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"a":"one","b":"2","c":"3"}"#);
        assert_eq!(serde_json::from_str::<Tags>(&json).unwrap(), t);
        assert_eq!(BTreeMap::from(&t).len(), 3);
    }
}
