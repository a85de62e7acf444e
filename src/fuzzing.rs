//! Fuzz harnesses, shared by the `cargo fuzz` targets in `fuzz/` (libFuzzer, nightly) and the
//! bounded smoke run in `tests/fuzz_smoke.rs` (stable, part of `cargo test`). Each takes
//! arbitrary bytes, must never panic, and asserts the invariants that matter for safety.
#![doc(hidden)]

use crate::api::{DesiredState, KmsRoutePolicySpec, parse_policies, validate, validate_policy};
use crate::catalog::Cloud;
use crate::effective::{EffectiveRoute, check, winning_route};
use crate::ids::{RouteTableId, SubnetId, VnetId};
use crate::model::{Inventory, NextHopType, Route, RouteTable, Subnet, VirtualNetwork};
use crate::plan::{Write, plan, simulate};
use std::collections::BTreeMap;

/// Policy YAML → `parse_policies` → `validate_policy`. A policy that validates routes only
/// public IPv4 `/32`s, under its own route-name prefix, in a known cloud.
/// Returns how many policies validated (how deep the input got).
pub fn policy_yaml(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let Ok(docs) = parse_policies(&text) else {
        return 0;
    };
    let mut valid = 0;
    for doc in docs {
        let Ok(policy) = doc.policy else { continue };
        if let Ok(v) = validate_policy(&policy, Cloud::AzurePublic) {
            check_desired(&v.desired);
            valid += 1;
        }
    }
    valid
}

fn check_desired(d: &DesiredState) {
    assert!(
        !d.destinations.is_empty(),
        "a valid policy routes something"
    );
    for dest in &d.destinations {
        assert!(
            crate::api::check_host_address(&dest.address.to_string()).is_ok(),
            "validated destination {} is not a public host address",
            dest.address
        );
        assert!(d.owns_route_name(&dest.route_name), "{}", dest.route_name);
    }
    assert!(
        !d.subscriptions().is_empty() || !d.subnets.is_empty(),
        "a valid policy has a scope"
    );
}

/// ARM response bodies → the client's parsers: VNet and route-table list pages through the
/// generated models and our conversion (entries outside the listed subscription dropped,
/// subnets outside their VNet dropped), effective routes, error bodies.
/// Returns how many entries the parsers accepted.
pub fn arm_body(data: &[u8]) -> usize {
    use azure_mgmt_network::models;
    const SUB: &str = "00000000-0000-0000-0000-00000000000a";
    let mut accepted = 0;
    if let Ok(page) = serde_json::from_slice::<models::VirtualNetworkListResult>(data) {
        for v in page.value {
            accepted += 1;
            if let Some(v) = crate::azure::client::convert_vnet(v, SUB) {
                assert!(v.id.subscription().eq_ignore_ascii_case(SUB));
                assert!(v.subnets.iter().all(|s| s.id.vnet() == v.id));
            }
        }
    }
    if let Ok(page) = serde_json::from_slice::<models::RouteTableListResult>(data) {
        for t in page.value {
            accepted += 1;
            if let Some(t) = crate::azure::client::convert_table(t, SUB) {
                assert!(t.id.subscription().eq_ignore_ascii_case(SUB));
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(routes) = serde_json::from_value::<Vec<EffectiveRoute>>(
            v.get("value").cloned().unwrap_or(serde_json::Value::Null),
        )
    {
        accepted += routes.len();
        let kms = Cloud::AzurePublic.endpoints().kms_addresses;
        for ip in kms {
            let _ = winning_route(&routes, *ip);
        }
        let failures = check(&routes, kms);
        assert!(failures.len() <= kms.len());
    }
    for status in [400, 404, 409, 412, 429, 500] {
        let e = crate::azure::client::http_error("Fuzz", "/fuzz", status, data);
        assert_eq!(e.status, Some(status));
    }
    accepted
}

/// Reads bytes as small choices; runs out into zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n.max(1)
    }
    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }
}

const SUBS: [&str; 2] = [
    "00000000-0000-0000-0000-00000000000a",
    "00000000-0000-0000-0000-00000000000b",
];

/// IDs that differ from the canonical ones only in case, as ARM may return them.
fn cased(s: &str, upper: bool) -> String {
    if upper {
        s.to_ascii_uppercase()
    } else {
        s.to_string()
    }
}

fn route_from(b: &mut Bytes) -> Route {
    let names = [
        "fw",
        "kms-20-118-99-224",
        "kms-40-83-235-53",
        "KMS-23-102-135-246",
        "legacy-kms",
        "onprem",
        "kms-9-9-9-9",
    ];
    let prefixes = [
        "0.0.0.0/0",
        "20.118.99.224/32",
        "40.83.235.53/32",
        "23.102.135.246/32",
        "20.118.99.0/24",
        "10.0.0.0/8",
        "9.9.9.9/32",
        "nonsense",
    ];
    let hops = [
        NextHopType::Internet,
        NextHopType::VirtualAppliance,
        NextHopType::VirtualNetworkGateway,
        NextHopType::None,
        NextHopType::Other("HyperNetGateway".into()),
    ];
    let next_hop_type = hops[b.below(hops.len())].clone();
    Route {
        name: names[b.below(names.len())].into(),
        address_prefix: prefixes[b.below(prefixes.len())].into(),
        next_hop_ip_address: (next_hop_type == NextHopType::VirtualAppliance)
            .then(|| "10.0.0.4".into()),
        next_hop_type,
    }
}

/// An arbitrary observed estate: VNets, subnets (special names, no egress),
/// tables with any routes and tags, associations in and across subscriptions, IDs in odd case.
fn inventory_from(b: &mut Bytes) -> Inventory {
    let mut inv = Inventory::default();
    let tables = b.below(4);
    for t in 0..tables {
        let sub = SUBS[b.below(2)];
        let mut routes: Vec<Route> = Vec::new();
        for _ in 0..b.below(5) {
            let r = route_from(b);
            // ARM keys routes by name: a table never lists one name twice.
            if !routes.iter().any(|x| x.name.eq_ignore_ascii_case(&r.name)) {
                routes.push(r);
            }
        }
        let mut tags = crate::model::Tags::default();
        if b.flag() {
            tags.insert("managed-by", "kmsroute");
            tags.insert("kmsroute.io-policy", "fuzz");
        }
        inv.route_tables.push(RouteTable {
            id: RouteTableId::new(&cased(sub, b.flag()), "rg", &format!("rt{t}")),
            location: ["westeurope", "northeurope"][b.below(2)].into(),
            tags,
            disable_bgp_route_propagation: b.flag(),
            routes,
            subnets: Vec::new(),
        });
    }
    let names = ["app", "web", "GatewaySubnet", "AzureFirewallSubnet", "data"];
    for v in 0..1 + b.below(3) {
        let sub = SUBS[b.below(2)];
        let vnet = VnetId::new(&cased(sub, b.flag()), "rg", &format!("vnet{v}"));
        let mut subnets = Vec::new();
        for i in 0..1 + b.below(4) {
            let name = names[(i + b.below(2)) % names.len()];
            if subnets.iter().any(|s: &Subnet| s.id.name() == name) {
                continue;
            }
            let route_table = (tables > 0 && b.flag()).then(|| {
                let t = &inv.route_tables[b.below(tables)];
                // Sometimes the reference differs in case from the table's own ID.
                let raw = cased(t.id.as_str(), b.flag());
                RouteTableId::parse(&raw).unwrap_or_else(|_| t.id.clone())
            });
            subnets.push(Subnet {
                id: SubnetId::new(vnet.subscription(), "rg", vnet.name(), name),
                route_table,
                nat_gateway: b.flag(),
                default_outbound_access: b.flag().then_some(false),
            });
        }
        let mut tags = crate::model::Tags::default();
        if !b.byte().is_multiple_of(4) {
            tags.insert("kms", "enabled");
        }
        inv.virtual_networks.push(VirtualNetwork {
            id: vnet,
            location: ["westeurope", "northeurope"][b.below(2)].into(),
            tags,
            subnets,
        });
    }
    // Tables list their subnets, as ARM does.
    let users: Vec<(RouteTableId, SubnetId)> = inv
        .virtual_networks
        .iter()
        .flat_map(|v| v.subnets.iter())
        .filter_map(|s| s.route_table.clone().map(|t| (t, s.id.clone())))
        .collect();
    for (t, s) in users {
        if let Some(table) = inv.route_tables.iter_mut().find(|x| x.id == t) {
            table.subnets.push(s);
        }
    }
    // The listing covered subscription a only, unless the bytes say b too: anything of b
    // then is an entry the inventory should not have trusted.
    inv.subscriptions.insert(SUBS[0].into());
    if b.flag() {
        inv.subscriptions.insert(SUBS[1].into());
    }
    inv
}

/// The planner over arbitrary observed states: never panics; writes only in the policy's
/// subscription and only `/32` `Internet` routes to the catalog addresses under its own names;
/// never associates a subnet that has a table; applying the plan gives a state whose plan is
/// empty.
/// The estate [`planner`] builds from these bytes (to reproduce a failure).
pub fn planner_estate(data: &[u8]) -> Inventory {
    inventory_from(&mut Bytes(data))
}

/// Returns the number of planned writes.
pub fn planner(data: &[u8]) -> usize {
    let mut b = Bytes(data);
    let inv = inventory_from(&mut b);
    let replace = b.flag();
    let spec: KmsRoutePolicySpec = match serde_json::from_value(serde_json::json!({
        "selector": {"subscriptions": [SUBS[0]], "virtualNetworkTags": {"kms": "enabled"}},
        "conflictPolicy": if replace { "Replace" } else { "Report" },
    })) {
        Ok(s) => s,
        Err(_) => return 0,
    };
    let Ok(v) = validate("fuzz", None, &spec, Cloud::AzurePublic) else {
        return 0;
    };
    let policy = v.desired;
    let wanted: Vec<String> = policy.destinations.iter().map(|d| d.prefix()).collect();
    let p = plan(std::slice::from_ref(&policy), &inv);
    let subnets: BTreeMap<crate::ids::IdKey<'_>, &Subnet> = inv
        .virtual_networks
        .iter()
        .flat_map(|v| v.subnets.iter())
        .map(|s| (s.id.key(), s))
        .collect();
    let internet_host = |r: &Route| {
        r.next_hop_type == NextHopType::Internet && wanted.contains(&r.address_prefix.to_string())
    };
    for w in &p.writes {
        let table = w.write.table();
        assert!(
            table.subscription().eq_ignore_ascii_case(SUBS[0]),
            "a write outside the policy's subscription: {}",
            w.write
        );
        match &w.write {
            Write::CreateRouteTable { routes, .. } => {
                assert!(routes.iter().all(internet_host), "{}", w.write);
            }
            Write::PutRoute { route, .. } => {
                assert!(internet_host(route), "{}", w.write);
            }
            Write::AssociateSubnet { subnet, .. } => {
                let s = subnets
                    .get(&subnet.key())
                    .expect("associates an observed subnet");
                assert!(s.route_table.is_none(), "replaced an association: {subnet}");
            }
            Write::DeleteRoute { name, .. } => {
                assert!(
                    policy.owns_route_name(name),
                    "deleted a foreign route {name}"
                );
            }
            Write::DissociateSubnet { table, .. } | Write::DeleteRouteTable { table } => {
                // Only a release: a table the policy created, that no selected subnet uses.
                let release = p
                    .released
                    .iter()
                    .find(|r| &r.table == table)
                    .unwrap_or_else(|| {
                        panic!("dissociates or deletes outside a release: {}", w.write)
                    });
                assert!(
                    release.created,
                    "released a table it did not create: {}",
                    w.write
                );
                assert!(
                    p.verdicts
                        .iter()
                        .all(|v| v.route_table.as_ref() != Some(table)),
                    "released a table a selected subnet uses: {}",
                    w.write
                );
            }
        }
    }
    if let Ok(after) = simulate::apply(&inv, p.writes.iter().map(|w| &w.write)) {
        let again = plan(std::slice::from_ref(&policy), &after);
        assert!(
            again.writes.is_empty(),
            "not converged after one plan: {:?}",
            again.writes
        );
    }
    p.writes.len()
}
