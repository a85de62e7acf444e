//! Lanes: one subscription's stalled writes never hold back another's.

use super::*;
use crate::ids::{RouteTableId, SubnetId};
use crate::model::{Inventory, NextHopType, Route};
use crate::plan::RouteChange;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicUsize;
use tokio::sync::Notify;

/// A port whose writes to subscription "a" wait until every write to subscription "b" is
/// done: with one shared pool of lanes, "a" would hold the only slot and never finish.
struct Blocking {
    b_done: AtomicUsize,
    b_total: usize,
    released: Notify,
}

#[async_trait::async_trait]
impl NetworkApi for Blocking {
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
    async fn put_route(&self, table: &RouteTableId, _: &Route) -> Result<(), ArmError> {
        if table.subscription() == "a" {
            let wait = self.released.notified();
            if self.b_done.load(Ordering::SeqCst) < self.b_total {
                wait.await;
            }
        } else if self.b_done.fetch_add(1, Ordering::SeqCst) + 1 == self.b_total {
            self.released.notify_waiters();
        }
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
    async fn egress_facts(
        &self,
        _: &BTreeSet<String>,
    ) -> Result<crate::model::EgressFacts, ArmError> {
        Ok(crate::model::EgressFacts::default())
    }
    async fn management_group_subscriptions(&self, _: &str) -> Result<BTreeSet<String>, ArmError> {
        Ok(BTreeSet::new())
    }
    async fn network_interfaces(
        &self,
        _: &BTreeSet<String>,
    ) -> Result<Vec<crate::model::NetworkInterface>, ArmError> {
        Ok(Vec::new())
    }
    async fn effective_routes(
        &self,
        nic: &str,
    ) -> Result<Vec<crate::effective::EffectiveRoute>, ArmError> {
        Err(ArmError::local(
            ErrorClass::NeedsUserAction,
            "NetworkInterfaces_GetEffectiveRouteTable",
            nic,
            None,
            "not used by this test",
        ))
    }
    fn read_budget(&self, _: &str) -> crate::azure::ReadBudget {
        crate::azure::ReadBudget {
            capacity: 250.0,
            refill_per_sec: 25.0,
            remaining: None,
        }
    }
}

fn put(sub: &str, table: &str) -> PlannedWrite {
    PlannedWrite {
        policy: "p".into(),
        write: Write::PutRoute {
            table: RouteTableId::new(sub, "rg", table),
            route: Route {
                name: "kms".into(),
                address_prefix: "20.118.99.224/32".into(),
                next_hop_type: NextHopType::Internet,
                next_hop_ip_address: None,
            },
            change: RouteChange::Create,
        },
    }
}

#[tokio::test]
async fn a_stalled_subscription_does_not_hold_back_the_others() {
    // Subscription "a" first in plan order, so a shared pool would start with its lanes.
    let writes: Vec<PlannedWrite> = (0..3)
        .map(|i| put("a", &format!("t{i}")))
        .chain((0..5).map(|i| put("b", &format!("t{i}"))))
        .collect();
    let api = Blocking {
        b_done: AtomicUsize::new(0),
        b_total: 5,
        released: Notify::new(),
    };
    // The timeout only turns a deadlock into a failure; it is not a speed assertion.
    let results = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run_lanes(&api, &Plan::from_writes(writes.clone()), 1, &|_| {}, None),
    )
    .await
    .expect("subscription b's writes ran while a's were stalled");
    assert_eq!(results.len(), 8);
    assert!(results.iter().all(|r| r.error.is_none()));
    // Results come back in plan order whatever order they finished in.
    let order: Vec<String> = results
        .iter()
        .map(|r| writes[r.index].write.table().to_string())
        .collect();
    let expected: Vec<String> = writes.iter().map(|w| w.write.table().to_string()).collect();
    assert_eq!(order, expected);
}
