//! Unit tests for the planner: one rule per test, estates built with the small builders below.

use super::*;
use crate::api::{
    ConflictPolicy, DeletionPolicy, KmsRoutePolicySpec, Mode, SubnetSelector, TAG_MANAGED_BY,
    TAG_POLICY, validate,
};
use crate::catalog::Cloud;
use crate::ids::{RouteTableId, SubnetId, VnetId};
use crate::model::{Inventory, NextHopType, Route, RouteTable, Subnet, VirtualNetwork};
use k8s_openapi::jiff::Timestamp;

const SUB: &str = "00000000-0000-0000-0000-000000000001";
const KMS: [&str; 3] = ["20.118.99.224", "40.83.235.53", "23.102.135.246"];

fn spec() -> KmsRoutePolicySpec {
    serde_json::from_value(serde_json::json!({
        "selector": {"subscriptions": [SUB]}
    }))
    .unwrap()
}

fn desired_at(name: &str, secs: i64, f: impl FnOnce(&mut KmsRoutePolicySpec)) -> DesiredState {
    let mut s = spec();
    f(&mut s);
    let created = Timestamp::from_second(1_700_000_000 + secs).ok();
    validate(name, created, &s, Cloud::AzurePublic)
        .expect("valid test policy")
        .desired
}

fn desired(f: impl FnOnce(&mut KmsRoutePolicySpec)) -> DesiredState {
    desired_at("p1", 0, f)
}

#[derive(Default)]
struct Estate(Inventory);

impl Estate {
    fn new() -> Self {
        let mut inv = Inventory::default();
        inv.subscriptions.insert(SUB.into());
        Estate(inv)
    }
    fn vnet(&mut self, name: &str, location: &str) -> VnetId {
        let id = VnetId::new(SUB, "rg", name);
        self.0.virtual_networks.push(VirtualNetwork {
            id: id.clone(),
            location: location.into(),
            tags: Default::default(),
            subnets: vec![],
        });
        id
    }
    fn subnet(&mut self, vnet: &VnetId, name: &str) -> SubnetId {
        let id = vnet.subnet(name);
        self.vnet_mut(vnet).subnets.push(Subnet {
            id: id.clone(),
            route_table: None,
            nat_gateway: false,
            default_outbound_access: None,
        });
        id
    }
    fn vnet_mut(&mut self, vnet: &VnetId) -> &mut VirtualNetwork {
        self.0
            .virtual_networks
            .iter_mut()
            .find(|v| &v.id == vnet)
            .unwrap()
    }
    fn subnet_mut(&mut self, id: &SubnetId) -> &mut Subnet {
        self.0
            .virtual_networks
            .iter_mut()
            .flat_map(|v| v.subnets.iter_mut())
            .find(|s| &s.id == id)
            .unwrap()
    }
    fn table(&mut self, name: &str, location: &str) -> RouteTableId {
        let id = RouteTableId::new(SUB, "rg", name);
        self.0.route_tables.push(RouteTable {
            id: id.clone(),
            location: location.into(),
            tags: Default::default(),
            disable_bgp_route_propagation: false,
            routes: vec![],
            subnets: vec![],
        });
        id
    }
    fn table_mut(&mut self, id: &RouteTableId) -> &mut RouteTable {
        self.0
            .route_tables
            .iter_mut()
            .find(|t| &t.id == id)
            .unwrap()
    }
    fn route(&mut self, table: &RouteTableId, name: &str, prefix: &str, hop: NextHopType) {
        let next_hop_ip_address = (hop == NextHopType::VirtualAppliance).then(|| "10.0.0.4".into());
        self.table_mut(table).routes.push(Route {
            name: name.into(),
            address_prefix: prefix.into(),
            next_hop_type: hop,
            next_hop_ip_address,
        });
    }
    fn kms_routes(&mut self, table: &RouteTableId) {
        for ip in KMS {
            self.route(
                table,
                &format!("kms-{}", ip.replace('.', "-")),
                &format!("{ip}/32"),
                NextHopType::Internet,
            );
        }
    }
    fn associate(&mut self, subnet: &SubnetId, table: &RouteTableId) {
        self.subnet_mut(subnet).route_table = Some(table.clone());
        self.table_mut(table).subnets.push(subnet.clone());
    }
}

fn writes(plan: &Plan) -> Vec<&Write> {
    plan.writes.iter().map(|w| &w.write).collect()
}

fn verdict_of<'a>(plan: &'a Plan, subnet: &SubnetId) -> &'a Verdict {
    &plan
        .verdicts
        .iter()
        .find(|v| &v.subnet == subnet)
        .expect("verdict")
        .verdict
}

fn converge(policies: &[DesiredState], inv: &Inventory) -> Inventory {
    let p = plan(policies, inv);
    simulate::apply(inv, writes(&p)).unwrap()
}

mod cleanup;
mod writes;
