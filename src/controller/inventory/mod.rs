//! The shared Azure inventory: an informer for ARM. One refresh loop per subscription that some
//! policy needs, each the same cheap listing as a CLI run (virtual networks with their subnets,
//! route tables with their routes, next pages), paced per subscription and kept to a small
//! share of its ARM read budget. Every refresh is compared with the previous one; what changed
//! goes out as a [`ChangeEvent`], which the controller maps to the policies that select it.
//!
//! Passes plan on this view and list nothing themselves ([`InventorySource`]); after writing
//! they re-read only the subscriptions they wrote to. Not here: deciding which policies a
//! change concerns (the controller, which has the policies) and anything about writes.

use crate::azure::{ArmError, Fingerprint, NetworkApi, Relisted};
use crate::executor::{InventorySource, Observed};
use crate::ids::{IdKey, SubnetId};
use crate::model::{Inventory, RouteTable, Subnet, Tags};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use super::metrics::ControllerMetrics;

/// How the inventory refreshes.
#[derive(Debug, Clone, Copy)]
pub struct InventorySettings {
    /// Pause between two refreshes of one subscription (`--inventory-refresh`, default 15 s),
    /// spread by ±10 % so subscriptions do not fire together.
    pub refresh_every: Duration,
    /// The most of a subscription's ARM read refill rate the refreshes may use
    /// (`--inventory-read-share`, default 0.05: 1.25 of ARM's 25 reads/s). A subscription
    /// whose listing takes many pages is refreshed less often rather than eat its budget.
    pub read_share: f64,
}

impl Default for InventorySettings {
    fn default() -> Self {
        InventorySettings {
            refresh_every: Duration::from_secs(15),
            read_share: 0.05,
        }
    }
}

/// What one refresh found different from the previous one.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub subscription: String,
    /// Subnets that changed, appeared or went, plus the subnets of every changed route table
    /// (before and after), each with its VNet's tags (before or after) so selectors can be
    /// matched without the inventory.
    pub subnets: Vec<(SubnetId, Tags)>,
    /// When the change was seen.
    pub detected: Instant,
    /// The policy whose own writes caused the re-read, if any (not queued again for them).
    pub writer: Option<String>,
}

/// The last read of one subscription.
#[derive(Debug, Clone)]
struct View {
    inventory: Arc<Inventory>,
    /// The pages `inventory` was parsed from, to recognize an unchanged listing by its bytes.
    fingerprint: Option<Fingerprint>,
    /// When the read that last confirmed `inventory` finished.
    at: Instant,
    /// The last refresh's error, if it failed (the older `inventory` is then kept, not used).
    error: Option<ArmError>,
}

#[derive(Default)]
struct Entry {
    /// Serializes the reads of one subscription, so the view is always the newest read.
    reading: tokio::sync::Mutex<()>,
    view: Mutex<Option<View>>,
}

/// Aborts a spawned task when dropped.
struct Loop(tokio::task::JoinHandle<()>);

impl Drop for Loop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The inventory shared by every pass of the controller.
pub struct SharedInventory {
    api: Arc<dyn NetworkApi>,
    settings: InventorySettings,
    metrics: Arc<ControllerMetrics>,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Which subscriptions each policy needs; their union has refresh loops.
    wants: Mutex<HashMap<String, BTreeSet<String>>>,
    loops: Mutex<HashMap<String, Loop>>,
    changes: mpsc::UnboundedSender<ChangeEvent>,
    me: Weak<SharedInventory>,
}

impl SharedInventory {
    /// A new, empty inventory and the stream of its changes.
    pub fn new(
        api: Arc<dyn NetworkApi>,
        settings: InventorySettings,
        metrics: Arc<ControllerMetrics>,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<ChangeEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inventory = Arc::new_cyclic(|me| SharedInventory {
            api,
            settings,
            metrics,
            entries: Mutex::new(HashMap::new()),
            wants: Mutex::new(HashMap::new()),
            loops: Mutex::new(HashMap::new()),
            changes: tx,
            me: me.clone(),
        });
        (inventory, rx)
    }

    /// Records the subscriptions `policy` needs and starts or stops refresh loops to match.
    pub fn want(&self, policy: &str, subscriptions: BTreeSet<String>) {
        if let Ok(mut w) = self.wants.lock() {
            if w.get(policy) == Some(&subscriptions) {
                return;
            }
            w.insert(policy.to_string(), subscriptions);
        }
        self.sync_loops();
    }

    /// The policy needs nothing any more (deleted, or its spec became invalid).
    pub fn unwatch(&self, policy: &str) {
        let removed = self
            .wants
            .lock()
            .map(|mut w| w.remove(policy).is_some())
            .unwrap_or(false);
        if removed {
            self.sync_loops();
        }
    }

    /// The subscriptions `policy` needed at its last pass.
    pub fn wanted_by(&self, policy: &str) -> Option<BTreeSet<String>> {
        self.wants.lock().ok().and_then(|w| w.get(policy).cloned())
    }

    /// The subscriptions that have a refresh loop now.
    pub fn watched(&self) -> BTreeSet<String> {
        self.loops
            .lock()
            .map(|l| l.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn sync_loops(&self) {
        let needed: BTreeSet<String> = self
            .wants
            .lock()
            .map(|w| {
                w.values()
                    .flatten()
                    .map(|s| s.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let Ok(mut loops) = self.loops.lock() else {
            return;
        };
        let gone: Vec<String> = loops
            .keys()
            .filter(|s| !needed.contains(*s))
            .cloned()
            .collect();
        for sub in gone {
            loops.remove(&sub);
            if let Ok(mut e) = self.entries.lock() {
                e.remove(&sub);
            }
            self.metrics.inventory_forget(&sub);
        }
        for sub in needed {
            if loops.contains_key(&sub) {
                continue;
            }
            let me = self.me.clone();
            let key = sub.clone();
            loops.insert(key, Loop(tokio::spawn(refresh_loop(me, sub))));
        }
    }

    fn entry(&self, subscription: &str) -> Arc<Entry> {
        match self.entries.lock() {
            Ok(mut e) => e.entry(subscription.to_string()).or_default().clone(),
            Err(_) => Arc::new(Entry::default()),
        }
    }

    /// Lists one subscription now, stores the result, and sends what changed (if anything).
    /// A listing whose pages are byte for byte the last one's is not parsed: the stored view
    /// stands. Returns the list pages it cost.
    pub async fn refresh(&self, subscription: &str, writer: Option<&str>) -> Result<u64, ArmError> {
        let sub = subscription.to_ascii_lowercase();
        let entry = self.entry(&sub);
        let _reading = entry.reading.lock().await;
        let (previous, older) = entry
            .view
            .lock()
            .ok()
            .and_then(|v| {
                v.as_ref()
                    .filter(|v| v.error.is_none())
                    .map(|v| (v.fingerprint.clone(), Some(v.inventory.clone())))
            })
            .unwrap_or_default();
        let outcome = match self.api.relist(&sub, previous.as_ref()).await {
            Ok(Relisted::Changed {
                mut inventory,
                fingerprint,
            }) => {
                // The IDs that did not change keep their allocations (plans hold them).
                if let Some(older) = &older {
                    inventory.share_with(older);
                }
                Ok(Relisted::Changed {
                    inventory,
                    fingerprint,
                })
            }
            Ok(listed) => Ok(listed),
            // A subscription ARM refuses is observed as refused (a problem of the policies
            // selecting it), not as a failed read.
            Err(e) if e.refuses_scope() => Ok(Relisted::Changed {
                inventory: refused(&sub, &e),
                fingerprint: Fingerprint::default(),
            }),
            Err(e) => Err(e),
        };
        drop(older);
        let mut view = entry.view.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(Relisted::Unchanged { pages }) => {
                if let Some(v) = view.as_mut() {
                    v.at = Instant::now();
                }
                drop(view);
                self.metrics.inventory_refreshed(&sub, Some(0));
                Ok(pages)
            }
            Ok(Relisted::Changed {
                inventory,
                fingerprint,
            }) => {
                let pages = inventory.list_pages;
                let new = Arc::new(inventory);
                let changed = match view.as_ref() {
                    Some(old) => changed_subnets(&old.inventory, &new),
                    // The first read is no change: the policies' own first passes cover it.
                    None => Vec::new(),
                };
                *view = Some(View {
                    inventory: new,
                    fingerprint: (!fingerprint.pages.is_empty()).then_some(fingerprint),
                    at: Instant::now(),
                    error: None,
                });
                drop(view);
                self.metrics
                    .inventory_refreshed(&sub, Some(changed.len() as u64));
                if !changed.is_empty() {
                    tracing::debug!(subscription = %sub, subnets = changed.len(), "inventory changed");
                    let _ = self.changes.send(ChangeEvent {
                        subscription: sub,
                        subnets: changed,
                        detected: Instant::now(),
                        writer: writer.map(str::to_string),
                    });
                }
                Ok(pages)
            }
            Err(e) => {
                match view.as_mut() {
                    Some(v) => v.error = Some(e.clone()),
                    None => {
                        *view = Some(View {
                            inventory: Arc::new(Inventory::default()),
                            fingerprint: None,
                            at: Instant::now(),
                            error: Some(e.clone()),
                        })
                    }
                }
                drop(view);
                self.metrics.inventory_refreshed(&sub, None);
                Err(e)
            }
        }
    }

    /// The pause before the next refresh of `subscription`, after one that cost `pages` reads.
    fn next_delay(&self, subscription: &str, pages: u64) -> Duration {
        let budget = self.api.read_budget(subscription);
        let spread = 1.0 + (rand::random::<f64>() * 2.0 - 1.0) * 0.1;
        let paced = self.settings.refresh_every.mul_f64(spread);
        // Never more than `read_share` of the refill rate, averaged over the refresh period.
        let rate = (budget.refill_per_sec * self.settings.read_share).max(1e-3);
        let by_budget = Duration::from_secs_f64(pages as f64 / rate);
        // ARM's own count of what is left (other clients share it): back off while it is low.
        let slowdown = match budget.remaining {
            Some(r) if r < budget.capacity * 0.2 => 4.0,
            Some(r) if r < budget.capacity * 0.5 => 2.0,
            _ => 1.0,
        };
        paced.max(by_budget).mul_f64(slowdown)
    }

    /// The stored view of one subscription, reading it first if there is none yet, or if the
    /// last read failed (a pass needs Azure's state, and no refresh loop may run for it yet:
    /// the policy's subscriptions are watched once a pass has covered them).
    async fn view(&self, subscription: &str) -> Result<Arc<Inventory>, ArmError> {
        let sub = subscription.to_ascii_lowercase();
        let stored = self.entry(&sub).view.lock().ok().and_then(|v| v.clone());
        let view = match stored {
            Some(v) if v.error.is_none() => v,
            _ => {
                self.refresh(&sub, None).await?;
                self.entry(&sub)
                    .view
                    .lock()
                    .ok()
                    .and_then(|v| v.clone())
                    .ok_or_else(|| {
                        ArmError::local(
                            crate::azure::ErrorClass::Retryable,
                            "inventory",
                            format!("/subscriptions/{sub}"),
                            None,
                            "the subscription was released while it was read",
                        )
                    })?
            }
        };
        // A failed last refresh means we do not know Azure's state: say so, as a listing would.
        match view.error {
            Some(e) => Err(e),
            None => Ok(view.inventory),
        }
    }

    /// Seconds since the oldest successful read among these subscriptions (for tests).
    pub fn age(&self, subscription: &str) -> Option<Duration> {
        self.entry(&subscription.to_ascii_lowercase())
            .view
            .lock()
            .ok()
            .and_then(|v| v.as_ref().map(|v| v.at.elapsed()))
    }
}

async fn refresh_loop(inventory: Weak<SharedInventory>, subscription: String) {
    // A random first offset in the second half of the period spreads the subscriptions out
    // (the first pass that needed the subscription has just read it).
    let first = inventory
        .upgrade()
        .map(|i| i.settings.refresh_every)
        .unwrap_or_default()
        .mul_f64(0.5 + rand::random::<f64>() * 0.5);
    tokio::time::sleep(first).await;
    loop {
        let Some(inv) = inventory.upgrade() else {
            return;
        };
        let delay = match inv.refresh(&subscription, None).await {
            Ok(pages) => inv.next_delay(&subscription, pages),
            Err(e) => {
                tracing::warn!(subscription = %subscription, error = %e, "inventory refresh failed");
                // Throttled or failing: wait at least a period, more if ARM said so.
                inv.next_delay(&subscription, 2)
            }
        };
        drop(inv);
        tokio::time::sleep(delay).await;
    }
}

#[async_trait::async_trait]
impl InventorySource for SharedInventory {
    async fn current(&self, subscriptions: &BTreeSet<String>) -> Result<Observed, ArmError> {
        let mut views = Vec::with_capacity(subscriptions.len());
        for sub in subscriptions {
            views.push(self.view(sub).await?);
        }
        Ok(Observed { parts: views })
    }

    async fn reread(
        &self,
        subscriptions: &BTreeSet<String>,
        writer: Option<&str>,
    ) -> Result<Observed, ArmError> {
        for sub in subscriptions {
            self.refresh(sub, writer).await?;
        }
        self.current(subscriptions).await
    }
}

/// The observation of a subscription ARM refuses to list (as the port's listing reports it).
fn refused(sub: &str, e: &ArmError) -> Inventory {
    tracing::warn!(subscription = %sub, error = %e, "subscription cannot be listed");
    let mut inv = Inventory::default();
    inv.unreadable.insert(
        sub.to_string(),
        crate::model::SubscriptionError {
            status: e.status,
            code: e.code.clone(),
            message: e.message.clone(),
        },
    );
    inv
}

/// A subnet as far as a plan is concerned (the model holds no ETag: it moves with every write
/// to the VNet, and a write to one subnet is no change of its siblings).
fn same_subnet(a: &Subnet, b: &Subnet) -> bool {
    a.route_table == b.route_table
        && a.nat_gateway == b.nat_gateway
        && a.default_outbound_access == b.default_outbound_access
}

fn same_table(a: &RouteTable, b: &RouteTable) -> bool {
    a.routes == b.routes
        && a.subnets == b.subnets
        && a.tags == b.tags
        && a.location == b.location
        && a.disable_bgp_route_propagation == b.disable_bgp_route_propagation
}

type Seen<'a> = HashMap<IdKey<'a>, (&'a Subnet, &'a Tags, &'a str)>;

/// Subnets by key, with their VNet's tags and location.
fn index(inv: &Inventory) -> Seen<'_> {
    inv.virtual_networks
        .iter()
        .flat_map(|v| {
            v.subnets
                .iter()
                .map(move |s| (s.id.key(), (s, &v.tags, v.location.as_str())))
        })
        .collect()
}

/// Every subnet whose planning inputs differ between two reads of one subscription: changed,
/// added or removed subnets (or their VNet's tags or location), and the subnets of changed,
/// added or removed route tables.
pub fn changed_subnets(old: &Inventory, new: &Inventory) -> Vec<(SubnetId, Tags)> {
    let (before, after) = (index(old), index(new));
    let mut out: BTreeMap<String, (SubnetId, Tags)> = BTreeMap::new();
    let mut note = |id: &SubnetId, tags: &Tags| {
        // Old and new tags both matter (a tag removed deselects); keep each once.
        let key = format!("{}\u{0}{:?}", id.key(), tags);
        out.entry(key).or_insert_with(|| (id.clone(), tags.clone()));
    };
    for (key, (s, tags, location)) in &after {
        match before.get(key) {
            Some((o, otags, olocation))
                if same_subnet(o, s) && otags == tags && olocation == location => {}
            Some((o, otags, _)) => {
                note(&o.id, otags);
                note(&s.id, tags);
            }
            None => note(&s.id, tags),
        }
    }
    for (key, (o, otags, _)) in &before {
        if !after.contains_key(key) {
            note(&o.id, otags);
        }
    }
    let tables = |inv: &Inventory| -> HashMap<String, RouteTable> {
        inv.route_tables
            .iter()
            .map(|t| (t.id.key().to_string(), t.clone()))
            .collect()
    };
    let (tb, ta) = (tables(old), tables(new));
    let users = |t: &RouteTable, seen: &Seen<'_>, inv: &Inventory| -> Vec<(SubnetId, Tags)> {
        // ARM's `properties.subnets`, and every subnet that names the table (either side).
        let mut ids: Vec<SubnetId> = t.subnets.clone();
        ids.extend(
            inv.virtual_networks
                .iter()
                .flat_map(|v| v.subnets.iter())
                .filter(|s| s.route_table.as_ref() == Some(&t.id))
                .map(|s| s.id.clone()),
        );
        ids.into_iter()
            .map(|id| {
                let tags = seen
                    .get(&id.key())
                    .map(|(_, tags, _)| (*tags).clone())
                    .unwrap_or_default();
                (id, tags)
            })
            .collect()
    };
    for (key, t) in &ta {
        let changed = tb.get(key).is_none_or(|o| !same_table(o, t));
        if changed {
            for (id, tags) in users(t, &after, new) {
                note(&id, &tags);
            }
            if let Some(o) = tb.get(key) {
                for (id, tags) in users(o, &before, old) {
                    note(&id, &tags);
                }
            }
        }
    }
    for (key, o) in &tb {
        if !ta.contains_key(key) {
            for (id, tags) in users(o, &before, old) {
                note(&id, &tags);
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests;
