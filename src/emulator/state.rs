//! The emulator's store and ARM semantics, independent of HTTP: resources as the ARM JSON a GET
//! returns, ETags, long-running operations, token buckets, faults and request statistics.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How the emulator behaves; every knob a test or benchmark turns.
#[derive(Debug, Clone)]
pub struct Config {
    /// Items per list page before a `nextLink`.
    pub page_size: usize,
    /// `None`: no throttling. `Some`: per-subscription token buckets.
    pub throttle: Option<Throttle>,
    /// When set, only `Authorization: Bearer <token>` is accepted.
    pub token: Option<String>,
    /// How long a PUT/DELETE stays `InProgress` (and holds its VNet) before `Succeeded`.
    pub lro_duration: Duration,
    /// Play Entra ID too (its token endpoint on the same address), and accept on ARM only the
    /// access tokens it issued.
    pub entra: Option<super::entra::Entra>,
    /// How long a write takes to appear in the Activity Log (Azure: seconds to minutes).
    pub activity_log_delay: Duration,
    /// Plays a misbehaving ARM: the links it hands out (`nextLink`, `Azure-AsyncOperation`,
    /// `Location`) point at this origin (`http://127.0.0.2:PORT`) instead of its own, as a
    /// compromised or confused front end could. The client must never follow them with its
    /// token.
    pub link_base: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            page_size: 100,
            throttle: None,
            token: None,
            lro_duration: Duration::ZERO,
            entra: None,
            activity_log_delay: Duration::ZERO,
            link_base: None,
        }
    }
}

/// ARM's documented bucket shape (reads 250 + 25/s, writes 200 + 10/s per subscription).
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    pub read_capacity: f64,
    pub read_refill: f64,
    pub write_capacity: f64,
    pub write_refill: f64,
    /// The Network resource provider's own limits on top of ARM's buckets.
    pub provider: Option<ProviderWindow>,
}

/// The Network RP's per-subscription budget of reads and writes/deletes per window (Azure:
/// 10,000 and 1,000 per 5 minutes), refilled evenly over the window.
#[derive(Debug, Clone, Copy)]
pub struct ProviderWindow {
    pub reads: f64,
    pub writes: f64,
    pub window: Duration,
}

impl Throttle {
    pub const ARM: Throttle = Throttle {
        read_capacity: 250.0,
        read_refill: 25.0,
        write_capacity: 200.0,
        write_refill: 10.0,
        provider: Some(ProviderWindow {
            reads: 10_000.0,
            writes: 1_000.0,
            window: Duration::from_secs(300),
        }),
    };
}

#[derive(Debug)]
pub(crate) struct Bucket {
    pub tokens: f64,
    pub last: Instant,
}

/// Takes a token from the `key` bucket (full at `cap`, refilled at `rate` per second): `Ok` with
/// the tokens left, or `Err((seconds to wait, tokens left))` when it is empty.
pub(crate) fn take_token(
    buckets: &mut HashMap<(String, bool), Bucket>,
    key: (String, bool),
    cap: f64,
    rate: f64,
    now: Instant,
) -> Result<f64, (u64, f64)> {
    let b = buckets.entry(key).or_insert(Bucket {
        tokens: cap,
        last: now,
    });
    b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(cap);
    b.last = now;
    if b.tokens < 1.0 {
        let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64;
        return Err((wait, b.tokens.max(0.0)));
    }
    b.tokens -= 1.0;
    Ok(b.tokens)
}

/// A fault to inject into matching requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultRule {
    /// HTTP method to match (any when empty).
    pub method: Option<String>,
    /// Case-insensitive substring of the path to match (any when empty).
    pub path_contains: Option<String>,
    /// Status to answer with (no error when absent: latency or hang only).
    pub status: Option<u16>,
    /// ARM error code for the body.
    pub code: Option<String>,
    /// `Retry-After` seconds to send with the error.
    pub retry_after: Option<u64>,
    /// Chance per matching request, 0..=1 (1 when absent).
    pub probability: Option<f64>,
    /// How many matching requests to affect (unlimited when absent).
    pub count: Option<u64>,
    /// Let this many matching requests through before the fault starts (e.g. "fail after N writes").
    pub after: Option<u64>,
    /// Extra latency before answering.
    pub latency_ms: Option<u64>,
    /// Never answer (the client's timeout must fire).
    pub hang: bool,
    /// Let the request through but make its long-running operation end with this status
    /// (`Failed` or `Canceled`); the write is rolled back.
    pub lro_status: Option<String>,
    /// The other writer strikes just before this request is handled (e.g. a new NSG between
    /// the client's subnet GET and its PUT, so the PUT's `If-Match` fails).
    pub other_write: Option<super::OtherWrite>,
}

/// Request counts for tests and benchmarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// `"Operation STATUS"` → count, e.g. `"Routes_CreateOrUpdate 201"`.
    pub by_operation: BTreeMap<String, u64>,
    pub reads: u64,
    /// Reads by lower-cased subscription ID.
    #[serde(default)]
    pub reads_by_subscription: BTreeMap<String, u64>,
    pub writes: u64,
    pub throttled: u64,
    /// Writes that changed state (successful PUT/PATCH/DELETE on ARM resources).
    pub mutations: u64,
    /// Requests answered by an injected fault (error, hang, latency or a failed operation).
    #[serde(default)]
    pub faults: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Operation {
    pub done_at: Instant,
    /// `None` while it succeeds; `Some(status)` for `Failed`/`Canceled`.
    pub failure: Option<String>,
    /// The body a finished POST action returns from its `Location` (effective routes).
    pub result: Option<Value>,
}

/// The derived table→subnets index (see [`Store::subnets_using`]).
#[derive(Debug, Default)]
struct TableIndex {
    /// Lower-cased table ID → (lower-cased subnet ID → subnet ID as stored).
    by_table: HashMap<String, BTreeMap<String, String>>,
    /// Lower-cased VNet key → the (table, subnet) pairs it contributed.
    by_vnet: HashMap<String, Vec<(String, String)>>,
    /// VNets changed since they were last indexed.
    dirty: std::collections::HashSet<String>,
}

/// Everything the emulator holds.
#[derive(Debug, Default)]
pub struct Store {
    /// Top-level resources by lower-cased ID: virtualNetworks (subnets inline), routeTables
    /// (routes inline), networkSecurityGroups, natGateways, networkInterfaces,
    /// publicIPAddresses, loadBalancers (with their outbound rules).
    /// Private so every change goes through [`Store::resource_mut`] and friends, which drop the
    /// derived table→subnets index when a VNet changes.
    resources: BTreeMap<String, Value>,
    /// Which subnets use which route table, kept up to date VNet by VNet: a change to a VNet
    /// marks it, and the next lookup re-indexes that VNet alone. No request scans the estate
    /// (a full rebuild per subnet write made the write rate fall as the estate grew).
    index: std::sync::Mutex<TableIndex>,
    /// Lower-cased VNet ID → when the subnet write holding it finishes (one per VNet at a time).
    pub(crate) vnet_busy_until: HashMap<String, Instant>,
    pub learned_routes: Vec<Value>,
    pub(crate) operations: HashMap<String, Operation>,
    pub stats: Stats,
    pub faults: Vec<(FaultRule, u64)>,
    pub(crate) buckets: HashMap<(String, bool), Bucket>,
    /// The Network RP's windows, by (subscription, read).
    pub(crate) provider_buckets: HashMap<(String, bool), Bucket>,
    /// Lower-cased subscriptions that exist; `None`: every subscription does (empty seed).
    known_subscriptions: Option<std::collections::BTreeSet<String>>,
    /// Lower-cased subscriptions where the caller has no role.
    unauthorized: std::collections::BTreeSet<String>,
    /// The seed's explicit `subscriptions`, kept for the dump.
    seeded_subscriptions: Vec<String>,
    pub policy_assignments: Vec<PolicyAssignment>,
    pub management_groups: Vec<ManagementGroup>,
}

/// The seed file and state dump format: ARM resources exactly as a GET returns them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seed {
    pub resources: Vec<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned_routes: Vec<Value>,
    /// Subscriptions that exist but hold no seeded resource. Those the resources live in exist
    /// too; any other answers `404 SubscriptionNotFound`, as ARM does. A seed that names no
    /// subscription at all (no resources, no key) leaves every subscription open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<String>,
    /// Subscriptions that exist but where the caller has no role: every request answers
    /// `403 AuthorizationFailed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unauthorized_subscriptions: Vec<String>,
    /// Azure Policy assignments with effect Deny on user-defined routes (like the landing-zone
    /// definition `Deny-UDR-With-Specific-NextHop`): a route PUT, or a table PUT carrying such a
    /// route, under `scope` with a denied next hop answers `403 RequestDisallowedByPolicy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_assignments: Vec<PolicyAssignment>,
    /// The management-group hierarchy, served by the descendants API
    /// (`/providers/Microsoft.Management/managementGroups/{name}/descendants`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub management_groups: Vec<ManagementGroup>,
}

/// One management group: its parent (`None` under the tenant root) and its own subscriptions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ManagementGroup {
    pub name: String,
    pub parent: Option<String>,
    pub subscriptions: Vec<String>,
}

/// A deny assignment on routes' next hop types.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyAssignment {
    pub name: String,
    pub display_name: String,
    /// `/subscriptions/…`, `/subscriptions/…/resourceGroups/…`, or a management group ID.
    pub scope: String,
    pub definition_name: String,
    pub definition_display_name: String,
    /// Next hop types the definition denies (e.g. `["Internet"]`).
    pub denied_next_hop_types: Vec<String>,
}

/// What the emulator says about a request's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionAccess {
    Allowed,
    NotFound,
    Unauthorized,
}

pub fn new_etag() -> String {
    format!("W/\"{}\"", uuid::Uuid::new_v4())
}

pub(crate) fn lower(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// Why a seed is not an estate the emulator can hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("every seeded resource needs an \"id\"")]
    MissingId,
    #[error("unsupported resource {0}")]
    Unsupported(String),
}

impl Store {
    /// Loads a seed: fills `etag` and `provisioningState`, gives children their parent's etag,
    /// and drops derived fields (a table's `subnets`) that are computed on output.
    pub fn from_seed(seed: Seed) -> Result<Store, SeedError> {
        let mut store = Store::default();
        for mut r in seed.resources {
            let id = r
                .get("id")
                .and_then(Value::as_str)
                .ok_or(SeedError::MissingId)?
                .to_string();
            let name = id.rsplit('/').next().unwrap_or_default().to_string();
            r["name"] = json!(name);
            if r.get("type").is_none() {
                r["type"] = json!(type_of(&id).ok_or_else(|| SeedError::Unsupported(id.clone()))?);
            }
            if r.get("properties").is_none() {
                r["properties"] = json!({});
            }
            if is_type(&id, "virtualNetworks") {
                if r["properties"].get("subnets").is_none() {
                    r["properties"]["subnets"] = json!([]);
                }
            } else if let Some(p) = r["properties"].as_object_mut() {
                // A table's `subnets` is derived from the subnets' `routeTable`, never trusted.
                p.remove("subnets");
            }
            stamp(&mut r, &new_etag());
            store.insert_resource(lower(&id), r);
        }
        store.learned_routes = seed.learned_routes;
        let mut known: std::collections::BTreeSet<String> = store
            .resources
            .keys()
            .filter_map(|k| k.split('/').nth(2).map(str::to_string))
            .collect();
        known.extend(seed.subscriptions.iter().map(|s| lower(s)));
        store.unauthorized = seed
            .unauthorized_subscriptions
            .iter()
            .map(|s| lower(s))
            .collect();
        known.extend(store.unauthorized.iter().cloned());
        store.known_subscriptions = (!known.is_empty()).then_some(known);
        store.seeded_subscriptions = seed.subscriptions;
        store.policy_assignments = seed.policy_assignments;
        // A subscription placed under a management group exists.
        let in_groups: Vec<String> = seed
            .management_groups
            .iter()
            .flat_map(|g| g.subscriptions.iter().map(|s| lower(s)))
            .collect();
        if let Some(k) = store.known_subscriptions.as_mut() {
            k.extend(in_groups);
        } else if !in_groups.is_empty() {
            store.known_subscriptions = Some(in_groups.into_iter().collect());
        }
        store.management_groups = seed.management_groups;
        Ok(store)
    }

    /// Every descendant of a management group, depth first: child groups and subscriptions,
    /// as ARM's `descendants` API lists them. `None` when there is no such group.
    pub fn descendants(&self, group: &str) -> Option<Vec<Value>> {
        let root = self
            .management_groups
            .iter()
            .find(|g| g.name.eq_ignore_ascii_case(group))?;
        let mut out = Vec::new();
        let mut stack = vec![root.name.clone()];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(name) = stack.pop() {
            if !seen.insert(lower(&name)) {
                continue; // a cycle in a hand-written seed
            }
            let parent = format!("/providers/Microsoft.Management/managementGroups/{name}");
            if let Some(g) = self.management_groups.iter().find(|g| g.name == name) {
                for sub in &g.subscriptions {
                    out.push(json!({"id": format!("{parent}/subscriptions/{sub}"), "type": "Microsoft.Management/managementGroups/subscriptions", "name": sub,
                        "properties": {"displayName": sub, "parent": {"id": parent}}}));
                }
            }
            for child in self.management_groups.iter().filter(|c| {
                c.parent
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case(&name))
            }) {
                out.push(json!({"id": format!("/providers/Microsoft.Management/managementGroups/{}", child.name), "type": "Microsoft.Management/managementGroups", "name": child.name,
                    "properties": {"displayName": child.name, "parent": {"id": parent}}}));
                stack.push(child.name.clone());
            }
        }
        Some(out)
    }

    /// Whether a request in `subscription` (lower-cased) reaches a subscription the caller may use.
    pub fn subscription_access(&self, subscription: &str) -> SubscriptionAccess {
        if self.unauthorized.contains(subscription) {
            SubscriptionAccess::Unauthorized
        } else if self
            .known_subscriptions
            .as_ref()
            .is_some_and(|k| !k.contains(subscription))
        {
            SubscriptionAccess::NotFound
        } else {
            SubscriptionAccess::Allowed
        }
    }

    /// The state in the seed format, derived fields computed.
    pub fn dump(&self) -> Seed {
        Seed {
            resources: self.resources.values().map(|r| self.render(r)).collect(),
            learned_routes: self.learned_routes.clone(),
            subscriptions: self.seeded_subscriptions.clone(),
            unauthorized_subscriptions: self.unauthorized.iter().cloned().collect(),
            policy_assignments: self.policy_assignments.clone(),
            management_groups: self.management_groups.clone(),
        }
    }

    /// The resources, read-only.
    pub fn resources(&self) -> &BTreeMap<String, Value> {
        &self.resources
    }

    /// The resources whose lower-cased ID starts with `prefix` (a subscription's or a resource
    /// group's): a range of the ordered map, not a scan of the estate.
    pub fn resources_under<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Value)> + 'a {
        self.resources
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// One resource, for a change. A change to a VNet (its subnets' `routeTable`) forgets the
    /// derived index; tables, routes and the rest do not touch it.
    pub fn resource_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.touch(key);
        self.resources.get_mut(key)
    }

    pub fn insert_resource(&mut self, key: String, value: Value) -> Option<Value> {
        self.touch(&key);
        self.resources.insert(key, value)
    }

    pub fn remove_resource(&mut self, key: &str) -> Option<Value> {
        self.touch(key);
        self.resources.remove(key)
    }

    fn touch(&mut self, key: &str) {
        if is_type(key, "virtualNetworks") {
            let index = self.index.get_mut().unwrap_or_else(|e| e.into_inner());
            index.dirty.insert(key.to_string());
        }
    }

    /// A resource as a GET returns it (route tables gain their `subnets`).
    pub fn render(&self, r: &Value) -> Value {
        let mut out = r.clone();
        let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
        if is_type(id, "routeTables") {
            let users = self.subnets_using(id);
            if !users.is_empty() {
                out["properties"]["subnets"] =
                    json!(users.iter().map(|s| json!({"id": s})).collect::<Vec<_>>());
            }
        }
        out
    }

    /// IDs of subnets whose `routeTable` points at `table_id`, sorted by ID: derived from the
    /// subnets, never stored; only VNets changed since the last lookup are re-read.
    pub fn subnets_using(&self, table_id: &str) -> Vec<String> {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let dirty: Vec<String> = index.dirty.drain().collect();
        for vnet in dirty {
            for (table, subnet) in index.by_vnet.remove(&vnet).unwrap_or_default() {
                if let Some(users) = index.by_table.get_mut(&table) {
                    users.remove(&subnet);
                    if users.is_empty() {
                        index.by_table.remove(&table);
                    }
                }
            }
            let mut pairs = Vec::new();
            if let Some(v) = self.resources.get(&vnet) {
                subnet_tables(v, |t, id| {
                    pairs.push((lower(t), id.to_string()));
                });
            }
            let mut contributed = Vec::with_capacity(pairs.len());
            for (table, id) in pairs {
                let key = lower(&id);
                index
                    .by_table
                    .entry(table.clone())
                    .or_default()
                    .insert(key.clone(), id);
                contributed.push((table, key));
            }
            if !contributed.is_empty() {
                index.by_vnet.insert(vnet, contributed);
            }
        }
        index
            .by_table
            .get(&lower(table_id))
            .map(|u| u.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Gives a top-level resource and all its children a new etag.
    pub fn bump(&mut self, key: &str) -> Option<String> {
        let etag = new_etag();
        let r = self.resources.get_mut(key)?;
        stamp(r, &etag);
        Some(etag)
    }
}

/// Calls `f(route table ID, subnet ID)` for every subnet of `vnet` that has a route table.
fn subnet_tables(vnet: &Value, mut f: impl FnMut(&str, &str)) {
    // Plain `get`s, not `pointer`: `pointer` allocates per path segment.
    let Some(subnets) = vnet
        .get("properties")
        .and_then(|p| p.get("subnets"))
        .and_then(Value::as_array)
    else {
        return;
    };
    for s in subnets {
        if let (Some(t), Some(id)) = (
            s.get("properties")
                .and_then(|p| p.get("routeTable"))
                .and_then(|t| t.get("id"))
                .and_then(Value::as_str),
            s.get("id").and_then(Value::as_str),
        ) {
            f(t, id);
        }
    }
}

/// Sets etag and provisioningState on a resource and its inline children.
pub(crate) fn stamp(r: &mut Value, etag: &str) {
    r["etag"] = json!(etag);
    if r.get("properties").is_some_and(Value::is_object) {
        r["properties"]["provisioningState"] = json!("Succeeded");
    }
    for child in ["subnets", "routes"] {
        if let Some(items) = r
            .pointer_mut(&format!("/properties/{child}"))
            .and_then(Value::as_array_mut)
        {
            for item in items {
                item["etag"] = json!(etag);
                if item.get("properties").is_none() {
                    item["properties"] = json!({});
                }
                item["properties"]["provisioningState"] = json!("Succeeded");
            }
        }
    }
}

/// The ARM type of a top-level resource ID.
pub(crate) fn type_of(id: &str) -> Option<&'static str> {
    const TYPES: [&str; 7] = [
        "Microsoft.Network/virtualNetworks",
        "Microsoft.Network/routeTables",
        "Microsoft.Network/networkSecurityGroups",
        "Microsoft.Network/natGateways",
        "Microsoft.Network/networkInterfaces",
        "Microsoft.Network/publicIPAddresses",
        "Microsoft.Network/loadBalancers",
    ];
    let seg = id.split('/').nth(7)?;
    TYPES.into_iter().find(|t| {
        t.strip_prefix("Microsoft.Network/")
            .is_some_and(|k| k.eq_ignore_ascii_case(seg))
    })
}

/// True when `id` is a top-level resource of this kind (e.g. `"routeTables"`); no allocation,
/// it runs for every resource of a scan.
pub(crate) fn is_type(id: &str, kind: &str) -> bool {
    id.split('/')
        .nth(7)
        .is_some_and(|seg| seg.eq_ignore_ascii_case(kind))
}
