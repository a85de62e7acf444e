//! Change detection and pacing of the shared inventory.

use super::*;
use crate::ids::{RouteTableId, VnetId};
use crate::model::{NextHopType, Route, VirtualNetwork};
use std::sync::Arc;

const SUB: &str = "00000000-0000-0000-0000-00000000000a";

fn subnet(name: &str, table: Option<&str>) -> Subnet {
    Subnet {
        id: SubnetId::parse(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/{name}"
        ))
        .unwrap(),
        route_table: table.map(|t| RouteTableId::new(SUB, "rg", t)),
        nat_gateway: false,
        default_outbound_access: None,
    }
}

fn table(name: &str, routes: &[&str], users: &[&str]) -> RouteTable {
    RouteTable {
        id: RouteTableId::new(SUB, "rg", name),
        location: "westeurope".into(),
        tags: Tags::default(),
        disable_bgp_route_propagation: false,
        routes: routes
            .iter()
            .map(|r| Route {
                name: (*r).into(),
                address_prefix: "20.118.99.224/32".into(),
                next_hop_type: NextHopType::Internet,
                next_hop_ip_address: None,
            })
            .collect(),
        subnets: users.iter().map(|u| subnet(u, None).id).collect(),
    }
}

fn estate(subnets: Vec<Subnet>, tables: Vec<RouteTable>) -> Inventory {
    Inventory {
        subscriptions: BTreeSet::from([SUB.to_string()]),
        virtual_networks: vec![VirtualNetwork {
            id: VnetId::parse(&format!(
                "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v"
            ))
            .unwrap(),
            location: "westeurope".into(),
            tags: [("kms", "enabled")].into_iter().collect(),
            subnets,
        }],
        route_tables: tables,
        list_pages: 2,
        ..Inventory::default()
    }
}

fn names(changes: &[(SubnetId, Tags)]) -> BTreeSet<String> {
    changes
        .iter()
        .map(|(id, _)| id.name().to_string())
        .collect()
}

#[test]
fn an_identical_read_is_no_change_even_when_it_cost_more_pages() {
    let old = estate(
        vec![subnet("a", Some("rt"))],
        vec![table("rt", &["kms-1"], &["a"])],
    );
    let mut new = old.clone();
    new.list_pages = 3;
    assert!(changed_subnets(&old, &new).is_empty());
}

#[test]
fn a_deleted_route_names_the_subnets_using_its_table() {
    let old = estate(
        vec![
            subnet("a", Some("rt")),
            subnet("b", Some("rt")),
            subnet("c", None),
        ],
        vec![table("rt", &["kms-1", "kms-2"], &["a", "b"])],
    );
    let mut new = old.clone();
    new.route_tables[0].routes.pop();
    assert_eq!(
        names(&changed_subnets(&old, &new)),
        BTreeSet::from(["a".into(), "b".into()])
    );
}

#[test]
fn a_dissociated_subnet_is_a_change_of_it_and_of_its_old_table() {
    let old = estate(
        vec![subnet("a", Some("rt")), subnet("b", Some("rt"))],
        vec![table("rt", &["kms-1"], &["a", "b"])],
    );
    let new = estate(
        vec![subnet("a", None), subnet("b", Some("rt"))],
        vec![table("rt", &["kms-1"], &["b"])],
    );
    assert_eq!(
        names(&changed_subnets(&old, &new)),
        BTreeSet::from(["a".into(), "b".into()])
    );
}

#[test]
fn new_and_removed_subnets_are_changes() {
    let old = estate(vec![subnet("a", None)], vec![]);
    let new = estate(vec![subnet("b", None)], vec![]);
    assert_eq!(
        names(&changed_subnets(&old, &new)),
        BTreeSet::from(["a".into(), "b".into()])
    );
}

#[test]
fn a_vnet_tag_change_reports_old_and_new_tags() {
    let old = estate(vec![subnet("a", None)], vec![]);
    let mut new = old.clone();
    new.virtual_networks[0].tags.clear();
    let changes = changed_subnets(&old, &new);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes.iter().any(|(_, t)| t.is_empty()));
    assert!(changes.iter().any(|(_, t)| t.get("kms").is_some()));
}

/// A port that only answers `read_budget` (pacing needs nothing else).
struct Budget(crate::azure::ReadBudget);

#[async_trait::async_trait]
impl NetworkApi for Budget {
    async fn activity_log(
        &self,
        _: &str,
        _: i64,
    ) -> Result<Vec<crate::azure::ActivityEvent>, ArmError> {
        Ok(Vec::new())
    }
    fn route_identities(&self, _: &crate::azure::IdentityRoutes) -> Result<(), ArmError> {
        Ok(())
    }
    async fn inventory(&self, _: &BTreeSet<String>) -> Result<Inventory, ArmError> {
        Ok(Inventory::default())
    }
    async fn relist(
        &self,
        _: &str,
        _: Option<&crate::azure::Fingerprint>,
    ) -> Result<crate::azure::Relisted, ArmError> {
        Ok(crate::azure::Relisted::Unchanged { pages: 0 })
    }
    async fn create_route_table(
        &self,
        _: &RouteTableId,
        _: &str,
        _: &BTreeMap<String, String>,
        _: bool,
        _: &[Route],
    ) -> Result<(), ArmError> {
        Ok(())
    }
    async fn put_route(&self, _: &RouteTableId, _: &Route) -> Result<(), ArmError> {
        Ok(())
    }
    async fn delete_route(&self, _: &RouteTableId, _: &str) -> Result<(), ArmError> {
        Ok(())
    }
    async fn set_subnet_route_table(
        &self,
        _: &SubnetId,
        _: Option<&RouteTableId>,
        _: Option<&RouteTableId>,
    ) -> Result<(), ArmError> {
        Ok(())
    }
    async fn delete_route_table(&self, _: &RouteTableId) -> Result<(), ArmError> {
        Ok(())
    }
    fn read_budget(&self, _: &str) -> crate::azure::ReadBudget {
        self.0
    }
    async fn network_interfaces(
        &self,
        _: &BTreeSet<String>,
    ) -> Result<Vec<crate::model::NetworkInterface>, ArmError> {
        Ok(Vec::new())
    }
    async fn egress_facts(
        &self,
        _: &BTreeSet<String>,
    ) -> Result<crate::model::EgressFacts, ArmError> {
        Ok(Default::default())
    }
    async fn management_group_subscriptions(&self, _: &str) -> Result<BTreeSet<String>, ArmError> {
        Ok(BTreeSet::new())
    }
    async fn effective_routes(
        &self,
        _: &str,
    ) -> Result<Vec<crate::effective::EffectiveRoute>, ArmError> {
        Ok(Vec::new())
    }
}

fn paced(remaining: Option<f64>, pages: u64) -> Duration {
    let api = Arc::new(Budget(crate::azure::ReadBudget {
        capacity: 250.0,
        refill_per_sec: 25.0,
        remaining,
    }));
    let (inv, _rx) = SharedInventory::new(
        api,
        InventorySettings::default(),
        Arc::new(ControllerMetrics::default()),
    );
    inv.next_delay(SUB, pages)
}

#[test]
fn refreshes_come_every_15_s_with_jitter_when_the_budget_is_healthy() {
    for _ in 0..50 {
        let d = paced(Some(240.0), 2).as_secs_f64();
        assert!((13.5..=16.5).contains(&d), "{d}");
    }
}

#[test]
fn a_listing_of_many_pages_is_refreshed_less_often_to_stay_in_its_share() {
    // 100 pages at 5 % of 25 reads/s (1.25/s): at least 80 s apart.
    let d = paced(None, 100).as_secs_f64();
    assert!(d >= 80.0, "{d}");
}

#[test]
fn refreshes_slow_down_while_arm_reports_the_budget_low() {
    let half = paced(Some(100.0), 2).as_secs_f64();
    assert!(
        (27.0..=33.0).contains(&half),
        "under half the bucket: 2x, {half}"
    );
    let low = paced(Some(10.0), 2).as_secs_f64();
    assert!((54.0..=66.0).contains(&low), "under a fifth: 4x, {low}");
}

#[test]
fn an_unused_table_changing_concerns_no_subnet() {
    let old = estate(vec![subnet("a", None)], vec![table("spare", &["x"], &[])]);
    let mut new = old.clone();
    new.route_tables[0].routes.clear();
    assert!(changed_subnets(&old, &new).is_empty());
}
