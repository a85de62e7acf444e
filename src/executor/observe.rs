//! Phase 2 of a pass: Azure's state as the pass sees it, from an [`InventorySource`] that is
//! always there: a [`Listing`] through the port for the CLI, the controller's shared inventory
//! for `run`. A pass writing one policy's share reads only that policy's subscriptions.

use super::{Pass, Progress};
use crate::api::DesiredState;
use crate::azure::{ArmError, NetworkApi};
use crate::model::{Inventory, SubscriptionError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Azure's state as a source holds it: one or more inventories (the shared inventory keeps one
/// per subscription), looked at where they are and never merged into a copy.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub parts: Vec<Arc<Inventory>>,
}

impl Observed {
    /// One inventory.
    pub fn one(inventory: Inventory) -> Observed {
        Observed {
            parts: vec![Arc::new(inventory)],
        }
    }
    /// The parts, for the planner.
    pub fn parts(&self) -> impl Iterator<Item = &Inventory> + '_ {
        self.parts.iter().map(|p| p.as_ref())
    }
    /// The subscriptions ARM refused to list, by lower-cased ID.
    pub fn unreadable(&self) -> BTreeMap<String, SubscriptionError> {
        self.parts()
            .flat_map(|p| p.unreadable.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// A source of observed Azure state for a pass.
///
/// A cached view may be stale; that is safe because every write is guarded by ARM itself
/// (subnet PUT with `If-Match`, table creation with `If-None-Match: *`, `RouteConflict`): a
/// write the view made wrong fails, and the pass reads those subscriptions again and re-plans
/// instead of overwriting.
#[async_trait::async_trait]
pub trait InventorySource: Send + Sync {
    /// The inventory of these subscriptions to plan on.
    async fn current(&self, subscriptions: &BTreeSet<String>) -> Result<Observed, ArmError>;
    /// Reads these subscriptions again from ARM (a pass wrote there, or found its view stale)
    /// and returns their inventory. `writer` names the policy whose pass wrote, so the change
    /// its own writes make does not queue it again.
    async fn reread(
        &self,
        subscriptions: &BTreeSet<String>,
        writer: Option<&str>,
    ) -> Result<Observed, ArmError>;
}

/// The CLI's source: every read is a listing through the port (no cache).
pub struct Listing<'a> {
    api: &'a dyn NetworkApi,
}

impl<'a> Listing<'a> {
    pub fn new(api: &'a dyn NetworkApi) -> Listing<'a> {
        Listing { api }
    }
}

#[async_trait::async_trait]
impl InventorySource for Listing<'_> {
    async fn current(&self, subscriptions: &BTreeSet<String>) -> Result<Observed, ArmError> {
        self.api.inventory(subscriptions).await.map(Observed::one)
    }

    async fn reread(
        &self,
        subscriptions: &BTreeSet<String>,
        _writer: Option<&str>,
    ) -> Result<Observed, ArmError> {
        self.api.inventory(subscriptions).await.map(Observed::one)
    }
}

/// The subscriptions a pass reads: the one policy's when it writes only its own share (other
/// policies matter only where they select the same subnets, which lie in these subscriptions),
/// else every policy's.
pub fn pass_subscriptions(p: &Pass<'_>, policies: &[DesiredState]) -> BTreeSet<String> {
    policies
        .iter()
        .filter(|d| p.params.is_mine(&d.name))
        .flat_map(DesiredState::subscriptions)
        .collect()
}

/// The pass's view of the subscriptions it needs.
pub async fn observe(p: &Pass<'_>, policies: &[DesiredState]) -> Result<Observed, ArmError> {
    let observed = p.source.current(&pass_subscriptions(p, policies)).await?;
    (p.progress)(Progress::Observed {
        subscriptions: observed.parts().map(|i| i.subscriptions.len()).sum(),
        subnets: observed
            .parts()
            .flat_map(|i| i.virtual_networks.iter())
            .map(|v| v.subnets.len())
            .sum(),
        route_tables: observed.parts().map(|i| i.route_tables.len()).sum(),
    });
    Ok(observed)
}
