//! The real [`NetworkApi`]: `azure_mgmt_network` 0.21 (api-version 2024-03-01) for listing and
//! route writes, through a pipeline carrying [`ArmPolicy`].
//!
//! Raw `azure_core` requests (same pipeline, same policy) are used only where the generated
//! client cannot express what safety needs:
//! - subnet GET/PUT: the generated `Subnet` model drops properties it does not know, and the
//!   spec declares no `If-Match`; we round-trip the subnet as raw JSON with `If-Match`;
//! - route table creation: it needs `If-None-Match: *`, or a table that appeared since the
//!   listing would have its routes wiped by our PUT;
//! - long-running-operation polling: the generated poller sleeps a fixed 30 s without
//!   `Retry-After` and discards the operation's error.

use super::credential::{ArmCredential, Credentials, IdentityFactory};
use super::metrics::ArmMetrics;
use super::policy::{ArmPolicy, BucketShape, RateLimiter, RateLimits, RetrySettings};
use super::{ArmError, ErrorClass, NetworkApi, SetupError};
use crate::ids::{RouteTableId, SubnetId};
use crate::model::{self, Inventory};
use azure_core::auth::TokenCredential;
use azure_core::{ClientOptions, Method, Pipeline, RetryOptions, Url};
use azure_mgmt_network::models;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

mod convert;
mod listing;
mod transport;

use convert::in_subscription;
pub use convert::{convert_table, convert_vnet};
use transport::arm_err;
pub use transport::{
    LISTING_LOOP, LISTING_TIMED_OUT, LISTING_TOO_LONG, http_error, policy_violation,
};

const API_VERSION: &str = "2024-03-01";
/// Microsoft.Management's api-version for the descendants of a management group.
pub const MANAGEMENT_API_VERSION: &str = "2020-05-01";

/// A request body as the bytes sent: built right away, so no JSON tree of a write is held while
/// it waits for a connection and ARM's answer (a few KB of B-tree nodes per write in flight).
fn json_body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Knobs of the client.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub retry: RetrySettings,
    pub rate_limits: RateLimits,
    /// Longest wait for one long-running operation (default 10 minutes).
    pub lro_timeout: Option<Duration>,
    /// Most ARM requests in flight at once, all subscriptions together (default 128). Writes
    /// of many subscriptions run side by side; without a cap a large estate opened one socket
    /// per lane (1,600 at 50 subscriptions), enough to overflow a listen queue or a pod's
    /// file-descriptor limit.
    pub max_in_flight: Option<usize>,
    /// Budget of effective-route reads (long-running POSTs), separate from ARM's buckets:
    /// default 20 at once, refilled one per 15 s. A read beyond it is not sent.
    pub verification_limit: Option<BucketShape>,
    /// Bounds every listing is held to (pages, a repeated `nextLink`, wall-clock time).
    pub listing: ListLimits,
    /// Subscriptions listed at once (default 16). A subscription's pages are held until all
    /// are read (to tell an unchanged listing from its bytes) and then parsed; 500 refresh
    /// loops listing at once held 500 listings and grew 128 connections' read buffers to a
    /// page each. 16 at once read 500 subscriptions' two pages in about a second on loopback,
    /// far above the pace the refresh loops ask for (two pages per subscription per 15 s).
    pub max_listings: Option<usize>,
}

/// Idle connections the ARM client keeps per host for the next request.
const IDLE_CONNECTIONS: usize = 16;

/// The HTTP client of the ARM pipeline: reqwest (rustls, the bundled and the system's roots)
/// with a pool of idle connections. azure_core 0.21's own client keeps none (a workaround for a
/// hyper 0.14 hang), so every request paid a TCP (and, on ARM, a TLS) handshake and grew a
/// fresh read buffer: a third of an idle controller's CPU at 100,000 subnets was loopback TCP.
fn pooled_http() -> Result<Arc<dyn azure_core::HttpClient>, SetupError> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IDLE_CONNECTIONS)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| SetupError::Refused(format!("the HTTP client cannot be built: {e}")))?;
    Ok(Arc::new(client))
}

/// How far one listing (one subscription's VNets or route tables, NICs, public IPs, load
/// balancers, a management group's descendants, a resource's Activity Log) may go before it is
/// refused with a named error: ARM's `nextLink` is followed as given, so a front end that keeps
/// handing out links would otherwise be followed forever while the subscription's lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimits {
    /// Pages per listing (default 5,000: at 100 items a page, 500,000 VNets, route tables or
    /// NICs in one subscription; Azure's own limits stop far below).
    pub max_pages: usize,
    /// Wall-clock time per listing, retries and throttling waits included (default 10 min).
    pub max_time: Duration,
}

impl Default for ListLimits {
    fn default() -> Self {
        ListLimits {
            max_pages: 5_000,
            max_time: Duration::from_secs(600),
        }
    }
}

pub struct AzureNetworkApi {
    client: azure_mgmt_network::Client,
    pipeline: Pipeline,
    credentials: Arc<Credentials>,
    endpoint: Url,
    scopes: Vec<String>,
    lro_timeout: Duration,
    listing: ListLimits,
    pub metrics: Arc<ArmMetrics>,
    verification: RateLimiter,
    /// The same limiter the pipeline's policy uses (for [`NetworkApi::read_budget`]).
    limiter: Arc<RateLimiter>,
    /// Error bodies the policy kept for raw requests (see `ArmPolicy::error_bodies`).
    error_bodies: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>,
    /// Writes being sent at once (built, waiting for a connection or for ARM's answer), all
    /// subscriptions together: as many as the requests in flight, so none waits built.
    /// Every subscription's lanes got their tokens at once from a full bucket, so a first
    /// install at 100,000 subnets had 16,000 writes built and queued for 128 connections:
    /// their requests, headers and pipeline state were a quarter of the heap's peak.
    sending: Arc<tokio::sync::Semaphore>,
    /// Subscriptions being listed at once (see [`ClientSettings::max_listings`]).
    listings: tokio::sync::Semaphore,
}

tokio::task_local! {
    /// The send slot of the write this task is carrying out (see [`AzureNetworkApi::paced`]).
    static SEND_SLOT: std::cell::RefCell<Option<tokio::sync::OwnedSemaphorePermit>>;
}

/// Gives back the send slot of the write in this task, if any: ARM answered its request, and
/// following a long-running operation holds nothing worth a slot.
pub(super) fn release_send_slot() {
    let _ = SEND_SLOT.try_with(|s| s.borrow_mut().take());
}

impl AzureNetworkApi {
    /// Runs one write: takes its token from the subscription's write budget first, then builds
    /// and sends the request (the pipeline's policy does not take a second one). Waiting for a
    /// token before anything is built keeps a queue of writes small: at 500 subscriptions,
    /// 16,000 writes waited with their requests built, 125 MB of a 508 MB peak.
    ///
    /// Then the write waits for one of the client's send slots (see [`AzureNetworkApi::sending`]),
    /// held until ARM answered the write's request; its long-running operation is followed
    /// without one (`wait_result` gives it back).
    ///
    /// The write's future is made only then, and boxed: a waiting write holds a closure of
    /// references, not the whole state of a request, its pipeline and its poller (laid out in
    /// the caller's future, 3.4 KB a write: 54 MB for the 16,000 lanes of a first install at
    /// 100,000 subnets, nearly all of them waiting).
    async fn paced<T, F>(&self, subscription: &str, write: impl FnOnce() -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        self.limiter.acquire(subscription, false).await;
        // Never closed; a closed semaphore would only mean "no cap".
        let slot = self.sending.clone().acquire_owned().await.ok();
        let write = Box::pin(write());
        SEND_SLOT
            .scope(
                std::cell::RefCell::new(slot),
                crate::azure::policy::PREPAID_WRITE.scope(std::cell::Cell::new(true), write),
            )
            .await
    }

    pub fn new(
        endpoint: Url,
        credential: Arc<dyn ArmCredential>,
        settings: ClientSettings,
    ) -> Result<Self, SetupError> {
        let metrics = Arc::new(ArmMetrics::default());
        let limiter = Arc::new(RateLimiter::new(settings.rate_limits));
        let error_bodies = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let scope = endpoint
            .join(azure_core::auth::DEFAULT_SCOPE_SUFFIX)
            .map_err(|e| SetupError::Refused(format!("ARM endpoint {endpoint}: {e}")))?
            .to_string();
        let credentials = Arc::new(Credentials::new(credential));
        let http = pooled_http()?;
        let max_in_flight = settings.max_in_flight.unwrap_or(128).max(1);
        let policy: Arc<dyn azure_core::Policy> = Arc::new(ArmPolicy {
            credentials: credentials.clone(),
            scopes: vec![scope.clone()],
            error_bodies: error_bodies.clone(),
            limiter: limiter.clone(),
            metrics: metrics.clone(),
            retry: settings.retry,
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
            origin: endpoint.origin(),
        });
        let options = ClientOptions::default()
            .retry(RetryOptions::none())
            .per_retry_policies(vec![policy])
            .transport(azure_core::TransportOptions::new(http));
        let client = azure_mgmt_network::Client::new(
            endpoint.clone(),
            // The policy sets every attempt's token itself (by the scope it addresses).
            Arc::new(super::credential::SetByPolicy) as Arc<dyn TokenCredential>,
            vec![scope.clone()],
            options.clone(),
        );
        let pipeline = Pipeline::new(
            Some("kmsroute"),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            Vec::new(),
        );
        Ok(AzureNetworkApi {
            client,
            pipeline,
            credentials,
            endpoint,
            scopes: vec![scope],
            lro_timeout: settings.lro_timeout.unwrap_or(Duration::from_secs(600)),
            listing: settings.listing,
            metrics,
            limiter,
            error_bodies,
            sending: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
            listings: tokio::sync::Semaphore::new(settings.max_listings.unwrap_or(16).max(1)),
            verification: RateLimiter::new(RateLimits {
                // Only the write-side bucket is used (effective-route reads are POSTs).
                reads: BucketShape {
                    capacity: 0.0,
                    refill_per_sec: 0.0,
                },
                writes: settings.verification_limit.unwrap_or(BucketShape {
                    capacity: 20.0,
                    refill_per_sec: 1.0 / 15.0,
                }),
                provider_reads: None,
                provider_writes: None,
            }),
        })
    }

    /// How a policy's `spec.azure.identity` becomes a credential (see
    /// [`credential::identity_factory`](super::credential::identity_factory)).
    pub fn set_identity_factory(&self, factory: IdentityFactory) {
        self.credentials.set_factory(factory);
    }

    /// Who kmsroute is in the Activity Log at this scope: its token's `upn`, `unique_name`,
    /// `appid` and `oid` claims, or the token itself when it is no JWT (the emulator's).
    async fn own_callers(&self, scope_path: &str) -> Vec<String> {
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        let Ok(token) = self
            .credentials
            .for_path(scope_path)
            .get_token(&scopes)
            .await
        else {
            return Vec::new();
        };
        let text = token.token.secret().to_string();
        match super::identity::jwt::claims(&text) {
            Ok(c) => ["upn", "unique_name", "appid", "oid"]
                .iter()
                .filter_map(|k| c.text(k).map(str::to_string))
                .collect(),
            Err(_) => vec![text],
        }
    }

    /// Follows one of the generated client's pagers, handing each page to `each` (which
    /// returns the page's `nextLink`), within the client's [`ListLimits`]. The pager follows
    /// `nextLink`s itself, through the same pipeline: one off the ARM endpoint is refused there.
    async fn generated_pages<P>(
        &self,
        operation: &'static str,
        resource: &str,
        mut stream: impl futures::Stream<Item = azure_core::Result<P>> + Unpin,
        mut each: impl FnMut(P) -> Option<String>,
    ) -> Result<(), ArmError> {
        let mut pages = self.pages(operation, resource);
        self.bounded(operation, resource, async {
            while let Some(page) = stream.next().await {
                let page = page.map_err(|e| arm_err(operation, resource, e))?;
                if let Some(next) = each(page) {
                    pages.follow(&next)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Checks that a token can be obtained (readiness).
    pub async fn check_credentials(&self) -> Result<(), SetupError> {
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        self.credentials
            .default_credential()
            .get_token(&scopes)
            .await
            .map(|_| ())
            .map_err(|e| SetupError::Credential(e.to_string()))
    }
}

#[async_trait::async_trait]
impl NetworkApi for AzureNetworkApi {
    fn route_identities(&self, routes: &super::IdentityRoutes) -> Result<(), ArmError> {
        self.credentials.route(routes).map_err(|e| {
            ArmError::local(
                ErrorClass::NeedsUserAction,
                "RouteIdentities",
                "spec.azure.identity",
                None,
                e.to_string(),
            )
        })
    }

    async fn network_interfaces(
        &self,
        subscriptions: &BTreeSet<String>,
    ) -> Result<Vec<model::NetworkInterface>, ArmError> {
        const OP: &str = "NetworkInterfaces_ListAll";
        let mut out = Vec::new();
        for sub in subscriptions {
            let resource = format!("/subscriptions/{sub}");
            let stream = self
                .client
                .network_interfaces_client()
                .list_all(sub.as_str())
                .into_stream();
            self.generated_pages(
                OP,
                &resource,
                stream,
                |page: models::NetworkInterfaceListResult| {
                    out.extend(
                        page.value
                            .into_iter()
                            .filter_map(|nic| convert::network_interface(nic, sub)),
                    );
                    page.next_link
                },
            )
            .await?;
        }
        Ok(out)
    }

    /// A raw GET, paged: azure_mgmt_network has no Microsoft.Management client.
    async fn management_group_subscriptions(
        &self,
        group: &str,
    ) -> Result<BTreeSet<String>, ArmError> {
        const OP: &str = "ManagementGroups_GetDescendants";
        let resource = format!("/providers/Microsoft.Management/managementGroups/{group}");
        let mut url = self.endpoint.clone();
        url.set_path(&format!("{resource}/descendants"));
        url.query_pairs_mut()
            .append_pair("api-version", MANAGEMENT_API_VERSION);
        let mut out = BTreeSet::new();
        self.raw_pages(OP, &resource, url, None, |page| {
            out.extend(convert::descendant_subscriptions(page))
        })
        .await?;
        Ok(out)
    }

    async fn activity_log(
        &self,
        resource_uri: &str,
        since: i64,
    ) -> Result<Vec<super::ActivityEvent>, ArmError> {
        const OP: &str = "ActivityLogs_List";
        let sub = super::policy::subscription_of(resource_uri);
        let rfc = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default()
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut url = self.endpoint.clone();
        url.set_path(&format!(
            "/subscriptions/{sub}/providers/microsoft.insights/eventtypes/management/values"
        ));
        url.query_pairs_mut()
            .append_pair("api-version", super::ACTIVITY_LOG_API_VERSION)
            .append_pair(
                "$filter",
                &format!(
                    "eventTimestamp ge '{}' and eventTimestamp le '{}' and resourceUri eq '{resource_uri}'",
                    rfc(since),
                    rfc(now + 60)
                ),
            )
            .append_pair(
                "$select",
                "caller,operationName,resourceId,status,eventTimestamp,correlationId",
            );
        let own = self.own_callers(&format!("/subscriptions/{sub}")).await;
        let mut out = Vec::new();
        // A table's writes over a window: a few pages at most; stop well before a runaway.
        self.raw_pages(OP, resource_uri, url, Some(20), |page| {
            out.extend(
                page["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(convert::activity_event)
                    .filter(|e| !own.iter().any(|o| o.eq_ignore_ascii_case(&e.caller))),
            )
        })
        .await?;
        out.sort_by_key(|e| e.at);
        Ok(out)
    }

    async fn egress_facts(
        &self,
        subscriptions: &BTreeSet<String>,
    ) -> Result<model::EgressFacts, ArmError> {
        let mut facts = model::EgressFacts::default();
        for sub in subscriptions {
            let resource = format!("/subscriptions/{sub}");
            let ips = self
                .client
                .public_ip_addresses_client()
                .list_all(sub.as_str())
                .into_stream();
            self.generated_pages(
                "PublicIPAddresses_ListAll",
                &resource,
                ips,
                |page: models::PublicIpAddressListResult| {
                    facts.public_ips.extend(
                        page.value
                            .into_iter()
                            .filter_map(|ip| ip.resource.id)
                            .filter(|id| in_subscription(id, sub))
                            .map(|id| id.to_ascii_lowercase()),
                    );
                    page.next_link
                },
            )
            .await?;
            let lbs = self
                .client
                .load_balancers_client()
                .list_all(sub.as_str())
                .into_stream();
            self.generated_pages(
                "LoadBalancers_ListAll",
                &resource,
                lbs,
                |page: models::LoadBalancerListResult| {
                    for lb in &page.value {
                        facts
                            .outbound_pools
                            .extend(convert::outbound_pools(lb, sub));
                    }
                    page.next_link
                },
            )
            .await?;
        }
        Ok(facts)
    }

    async fn effective_routes(
        &self,
        nic: &str,
    ) -> Result<Vec<crate::effective::EffectiveRoute>, ArmError> {
        const OP: &str = "NetworkInterfaces_GetEffectiveRouteTable";
        if !self.verification.try_acquire("", false).await {
            self.metrics.verification("limited");
            return Err(ArmError::local(
                ErrorClass::Throttled,
                OP,
                nic,
                Some(super::BUDGET_EXHAUSTED),
                "the effective-route read budget is spent for now",
            ));
        }
        let outcome = self.effective_routes_unlimited(nic).await;
        self.metrics
            .verification(if outcome.is_ok() { "ok" } else { "error" });
        outcome
    }

    fn read_budget(&self, subscription: &str) -> super::ReadBudget {
        let shape = self.limiter.read_shape();
        super::ReadBudget {
            capacity: shape.capacity,
            refill_per_sec: shape.refill_per_sec,
            remaining: self
                .limiter
                .reported_reads(&subscription.to_ascii_lowercase()),
        }
    }

    async fn inventory(&self, subscriptions: &BTreeSet<String>) -> Result<Inventory, ArmError> {
        let mut inv = Inventory::default();
        for sub in subscriptions {
            // One subscription at a time, so a refused one leaves nothing half-listed behind.
            let listed = self.relist_subscription(sub, None).await.map(|r| match r {
                super::Relisted::Changed { inventory, .. } => inventory,
                super::Relisted::Unchanged { .. } => Inventory::default(),
            });
            match listed {
                Ok(mut part) => {
                    inv.list_pages += part.list_pages;
                    inv.subscriptions.append(&mut part.subscriptions);
                    inv.virtual_networks.append(&mut part.virtual_networks);
                    inv.route_tables.append(&mut part.route_tables);
                }
                // A subscription that does not exist, or where the identity has no role, is the
                // policy's problem to report; the other subscriptions still converge.
                Err(e) if e.refuses_scope() => {
                    tracing::warn!(subscription = %sub, error = %e, "subscription cannot be listed");
                    inv.unreadable.insert(
                        sub.to_ascii_lowercase(),
                        model::SubscriptionError {
                            status: e.status,
                            code: e.code.clone(),
                            message: e.message.clone(),
                        },
                    );
                }
                Err(e) => return Err(e),
            }
        }
        // Appending grows by doubling: up to half the capacity unused (2 MB at 100,000 subnets).
        inv.virtual_networks.shrink_to_fit();
        inv.route_tables.shrink_to_fit();
        Ok(inv)
    }

    async fn relist(
        &self,
        subscription: &str,
        previous: Option<&super::Fingerprint>,
    ) -> Result<super::Relisted, ArmError> {
        self.relist_subscription(subscription, previous).await
    }

    async fn create_route_table(
        &self,
        table: &RouteTableId,
        location: &str,
        tags: &BTreeMap<String, String>,
        disable_bgp_route_propagation: bool,
        routes: &[model::Route],
    ) -> Result<(), ArmError> {
        self.paced(table.subscription(), move || async move {
        const OP: &str = "RouteTables_CreateOrUpdate";
        let body = {
            let routes: Vec<Value> = routes
                .iter()
                .map(|r| json!({"name": r.name, "properties": {"addressPrefix": r.address_prefix, "nextHopType": r.next_hop_type.to_string()}}))
                .collect();
            json_body(&json!({"location": location, "tags": tags, "properties": {"disableBgpRoutePropagation": disable_bgp_route_propagation, "routes": routes}}))
        };
        let url = self.url(table.as_str());
        let (status, headers, resp) = self
            .raw(
                Method::Put,
                url,
                Some(body),
                &[("if-none-match", "*".to_string())],
            )
            .await
            .map_err(|e| arm_err(OP, table.as_str(), e))?;
        if !(200..300).contains(&status) {
            let mut e = http_error(OP, table.as_str(), status, &resp);
            if status == 412 {
                e.message = format!(
                    "route table {table} appeared since it was listed; not overwriting it ({})",
                    e.message
                );
            }
            return Err(e);
        }
        self.wait(OP, table.as_str(), &headers).await
        })
        .await
    }

    async fn put_route(&self, table: &RouteTableId, route: &model::Route) -> Result<(), ArmError> {
        self.paced(table.subscription(), move || async move {
        // A raw PUT, not the generated client: its error keeps only code and message, and a
        // denial by Azure Policy is only actionable with `error.additionalInfo` (which
        // assignment, which definition).
        const OP: &str = "Routes_CreateOrUpdate";
        let resource = format!("{table}/routes/{}", route.name);
        let mut props = json!({"addressPrefix": route.address_prefix, "nextHopType": route.next_hop_type.to_string()});
        if let Some(ip) = &route.next_hop_ip_address {
            props["nextHopIpAddress"] = json!(ip);
        }
        let url = self.url(&resource);
        let (status, headers, body) = self
            .raw(Method::Put, url, Some(json_body(&json!({"properties": props}))), &[])
            .await
            .map_err(|e| arm_err(OP, &resource, e))?;
        if !(200..300).contains(&status) {
            return Err(http_error(OP, &resource, status, &body));
        }
        self.wait(OP, &resource, &headers).await
        })
        .await
    }

    async fn delete_route(&self, table: &RouteTableId, name: &str) -> Result<(), ArmError> {
        self.paced(table.subscription(), move || async move {
            const OP: &str = "Routes_Delete";
            let resource = format!("{table}/routes/{name}");
            let resp = self
                .client
                .routes_client()
                .delete(
                    table.resource_group(),
                    table.name(),
                    name,
                    table.subscription(),
                )
                .send()
                .await
                .map_err(|e| arm_err(OP, &resource, e))?;
            self.wait(OP, &resource, resp.as_raw_response().headers())
                .await
        })
        .await
    }

    async fn set_subnet_route_table(
        &self,
        subnet: &SubnetId,
        expected: Option<&RouteTableId>,
        new: Option<&RouteTableId>,
    ) -> Result<(), ArmError> {
        self.paced(subnet.subscription(), move || async move {
        const OP: &str = "Subnets_CreateOrUpdate";
        let resource = subnet.as_str();
        let bad_url = |m: String| ArmError::local(ErrorClass::NeedsUserAction, OP, resource, None, m);
        let url = self.url(subnet.as_str());
        // Re-read and retry on 412: someone changed the subnet between our GET and PUT.
        for _ in 0..5 {
            let (status, headers, body) = self
                .raw(Method::Get, url.clone(), None, &[])
                .await
                .map_err(|e| arm_err("Subnets_Get", resource, e))?;
            if status != 200 {
                return Err(http_error("Subnets_Get", resource, status, &body));
            }
            let mut subnet_json: Value = serde_json::from_slice(&body)
                .map_err(|e| bad_url(format!("unreadable subnet: {e}")))?;
            let etag = headers
                .get_optional_str(&azure_core::headers::ETAG)
                .map(str::to_string)
                .or_else(|| subnet_json["etag"].as_str().map(str::to_string));
            let current = subnet_json
                .pointer("/properties/routeTable/id")
                .and_then(Value::as_str)
                .and_then(|s| RouteTableId::parse(s).ok());
            if current.as_ref() == new {
                return Ok(());
            }
            if current.as_ref() != expected {
                return Err(ArmError::local(
                    ErrorClass::Conflict,
                    OP,
                    resource,
                    Some("SubnetRouteTableChanged"),
                    format!(
                        "the subnet is now associated with {}, not {}; leaving it alone",
                        current.map_or("no route table".into(), |c| c.to_string()),
                        expected.map_or("no route table".into(), |c| c.to_string())
                    ),
                ));
            }
            // Only `routeTable` changes; every other property goes back exactly as read.
            let Some(props) = subnet_json
                .get_mut("properties")
                .and_then(Value::as_object_mut)
            else {
                return Err(bad_url("subnet has no properties".into()));
            };
            match new {
                Some(t) => props.insert("routeTable".into(), json!({"id": t.as_str()})),
                None => props.remove("routeTable"),
            };
            let mut conditional = Vec::new();
            if let Some(etag) = etag {
                conditional.push(("if-match", etag));
            }
            let put = json_body(&subnet_json);
            drop(subnet_json);
            let (status, headers, body) = self
                .raw(Method::Put, url.clone(), Some(put), &conditional)
                .await
                .map_err(|e| arm_err(OP, resource, e))?;
            match status {
                200 | 201 => return self.wait(OP, resource, &headers).await,
                412 => {
                    tracing::info!(subnet = %subnet, "subnet changed between read and write; re-reading");
                    continue;
                }
                _ => return Err(http_error(OP, resource, status, &body)),
            }
        }
        Err(ArmError::http(
            OP,
            resource,
            412,
            Some("PreconditionFailed".into()),
            "the subnet kept changing between read and write (5 attempts)",
        ))
        })
        .await
    }

    async fn delete_route_table(&self, table: &RouteTableId) -> Result<(), ArmError> {
        self.paced(table.subscription(), move || async move {
            const OP: &str = "RouteTables_Delete";
            let resp = self
                .client
                .route_tables_client()
                .delete(table.resource_group(), table.name(), table.subscription())
                .send()
                .await
                .map_err(|e| arm_err(OP, table.as_str(), e))?;
            self.wait(OP, table.as_str(), resp.as_raw_response().headers())
                .await
        })
        .await
    }
}

impl AzureNetworkApi {
    async fn effective_routes_unlimited(
        &self,
        nic: &str,
    ) -> Result<Vec<crate::effective::EffectiveRoute>, ArmError> {
        const OP: &str = "NetworkInterfaces_GetEffectiveRouteTable";
        let url = self.url(&format!("{nic}/effectiveRouteTable"));
        let (status, headers, body) = self
            .raw(Method::Post, url, None, &[])
            .await
            .map_err(|e| arm_err(OP, nic, e))?;
        let result: Value = match status {
            200 => serde_json::from_slice(&body).unwrap_or(Value::Null),
            202 => self.wait_result(OP, nic, &headers).await?,
            _ => return Err(http_error(OP, nic, status, &body)),
        };
        serde_json::from_value::<Vec<crate::effective::EffectiveRoute>>(
            result.get("value").cloned().unwrap_or(Value::Null),
        )
        .map_err(|e| {
            // A 200 whose body is not a route table: worth another try, whatever the status.
            ArmError {
                class: ErrorClass::Retryable,
                ..ArmError::http(
                    OP,
                    nic,
                    status,
                    None,
                    format!("unreadable effective route table: {e}"),
                )
            }
        })
    }
}
