//! A local ARM emulator for the Microsoft.Network subset kmsroute uses: virtual networks and
//! subnets, route tables and routes, plus NSGs, NAT gateways and NICs as referenceable
//! resources. A test and demo fixture held to Azure's documented behaviour
//! (`docs/arm-protocol.md`) and to the official examples in `tests/fixtures/arm/`; the product
//! never depends on it outside `kmsroute emulator` and `kmsroute demo`.
//!
//! Honoured: bearer auth (401); `api-version`; PUT create → 201 / update → 200 with
//! `Azure-AsyncOperation`; DELETE → 202 with `Location` or 204; ETags shared by parents and
//! children and changed by every write; `If-Match` / `If-None-Match: *` → 412; a subnet PUT
//! replaces the whole subnet; tables in use cannot be deleted; 400 routes per table; name and
//! prefix validation; one write per VNet at a time (429 `RetryableError`); `nextLink` paging;
//! per-subscription token buckets with `x-ms-ratelimit-remaining-*`; injected faults; an
//! "other writer" editing resources behind the client's back. Error codes the docs do not name
//! are marked *inferred* where they are produced.

mod activity;
mod arm;
mod effective;
pub mod entra;
mod rules;
mod service_tags;
pub mod state;
mod token;

pub use state::{
    Config, FaultRule, ManagementGroup, PolicyAssignment, ProviderWindow, Seed, Stats, Throttle,
};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use state::{Store, lower};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The api-version the emulator speaks (azure_mgmt_network 0.21, tag package-2024-03).
pub const API_VERSION: &str = "2024-03-01";

struct App {
    store: Mutex<Store>,
    config: Config,
    entra: Mutex<entra::EntraState>,
    activity: Mutex<activity::ActivityLog>,
    /// TCP connections accepted (a client that reuses its connections opens few).
    connections: std::sync::atomic::AtomicU64,
    /// Requests being answered now, and the most there ever were at once.
    answering: std::sync::atomic::AtomicU64,
    peak_answering: std::sync::atomic::AtomicU64,
}

/// Counts a request as being answered until dropped.
struct Answering<'a>(&'a App);

impl<'a> Answering<'a> {
    fn start(app: &'a App) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = app.answering.fetch_add(1, SeqCst) + 1;
        app.peak_answering.fetch_max(now, SeqCst);
        Answering(app)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0
            .answering
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The emulator's listener, counting the connections it accepts.
struct Counting {
    inner: tokio::net::TcpListener,
    app: Arc<App>,
}

impl axum::serve::Listener for Counting {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let accepted = axum::serve::Listener::accept(&mut self.inner).await;
        self.app
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        accepted
    }
    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl App {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock must not wedge every later request.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn activity(&self) -> MutexGuard<'_, activity::ActivityLog> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn entra(&self) -> MutexGuard<'_, entra::EntraState> {
        self.entra.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running emulator. Dropping it stops the server.
pub struct EmulatorHandle {
    pub addr: SocketAddr,
    app: Arc<App>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Why an edit behind the client's back was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtherWriteError {
    #[error("no {kind} {id}")]
    NotFound { kind: &'static str, id: String },
    #[error("{0} is not a subnet ID")]
    NotASubnet(String),
    #[error("{0}")]
    Malformed(&'static str),
    /// ARM's own rules refuse it (the error body ARM would send).
    #[error("{0}")]
    Refused(String),
}

impl OtherWriteError {
    fn not_found(kind: &'static str, id: &str) -> OtherWriteError {
        OtherWriteError::NotFound {
            kind,
            id: id.to_string(),
        }
    }
    /// ARM's refusal, as the body of its error reply.
    fn refused(reply: Reply) -> OtherWriteError {
        OtherWriteError::Refused(reply.body.map(|b| b.to_string()).unwrap_or_default())
    }
}

/// A colleague with the portal: edits made behind the controller's back (not counted as requests).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum OtherWrite {
    DeleteRoute {
        route_table: String,
        route: String,
    },
    PutRoute {
        route_table: String,
        route: Value,
    },
    SetSubnetRouteTable {
        subnet: String,
        route_table: Option<String>,
    },
    /// Shallow-merges `properties` into the subnet's properties (e.g. a new NSG).
    PatchSubnet {
        subnet: String,
        properties: Value,
    },
    DeleteRouteTable {
        route_table: String,
    },
}

/// Why the emulator did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the emulator only listens on loopback, not {0}")]
    NotLoopback(SocketAddr),
    /// The seed is not an estate the emulator can hold.
    #[error("{0}")]
    Seed(state::SeedError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// The address cannot be listened on (in use, not permitted).
    pub fn is_listen(&self) -> bool {
        matches!(self, StartError::Listen { .. })
    }
}

/// Starts the emulator on `addr` (use port 0 for a free port) with a seeded estate.
pub async fn start(
    config: Config,
    seed: Seed,
    addr: SocketAddr,
) -> Result<EmulatorHandle, StartError> {
    if !addr.ip().is_loopback() {
        return Err(StartError::NotLoopback(addr));
    }
    let store = Store::from_seed(seed).map_err(StartError::Seed)?;
    let listen = |source| StartError::Listen { addr, source };
    let activity = activity::ActivityLog {
        delay: config.activity_log_delay,
        ..Default::default()
    };
    let app = Arc::new(App {
        store: Mutex::new(store),
        config,
        entra: Mutex::default(),
        activity: Mutex::new(activity),
        connections: std::sync::atomic::AtomicU64::new(0),
        answering: std::sync::atomic::AtomicU64::new(0),
        peak_answering: std::sync::atomic::AtomicU64::new(0),
    });
    // A deep accept queue (tokio's bind uses 1,024): a burst of new connections beyond it is
    // dropped by the kernel and the clients' SYNs are retried after 1 s, which made the
    // emulator, not the client, set the pace of large benchmarks.
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(listen)?;
    socket.set_reuseaddr(true).map_err(listen)?;
    socket.bind(addr).map_err(listen)?;
    let listener = socket.listen(4096).map_err(listen)?;
    let addr = listener.local_addr().map_err(listen)?;
    let router = Router::new().fallback(handle).with_state(app.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let listener = Counting {
        inner: listener,
        app: app.clone(),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(EmulatorHandle {
        addr,
        app,
        shutdown: Some(tx),
    })
}

impl EmulatorHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The full state in the seed format.
    pub fn dump(&self) -> Seed {
        self.app.lock().dump()
    }
    pub fn stats(&self) -> Stats {
        self.app.lock().stats.clone()
    }
    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.app
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    /// The most requests the emulator was answering at once (all but its `/_emulator/` control
    /// calls), since it started or since [`EmulatorHandle::reset_stats`].
    pub fn peak_concurrent_requests(&self) -> u64 {
        self.app
            .peak_answering
            .load(std::sync::atomic::Ordering::SeqCst)
    }
    pub fn reset_stats(&self) {
        self.app
            .peak_answering
            .store(0, std::sync::atomic::Ordering::SeqCst);
        self.app.lock().stats = Stats::default();
    }
    pub fn add_fault(&self, rule: FaultRule) {
        self.app.lock().faults.push((rule, 0));
    }
    pub fn clear_faults(&self) {
        self.app.lock().faults.clear();
    }
    /// What the emulator's Entra ID saw.
    pub fn entra_stats(&self) -> entra::EntraStats {
        self.app.entra().stats.clone()
    }
    /// Every access token issued so far expires now.
    pub fn expire_access_tokens(&self) {
        self.app.entra().expire_all();
    }
    /// An Entra ID outage: token requests answered with `status` (e.g. 503) until `None`.
    pub fn set_entra_outage(&self, status: Option<u16>) {
        self.app.entra().outage = status;
    }
    pub fn other_writer(&self, w: OtherWrite) -> Result<(), OtherWriteError> {
        arm::other_write(&mut self.app.lock(), w)
    }
}

/// An answer before it becomes HTTP.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Value>,
}

impl Reply {
    pub fn json(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }
    pub fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: None,
        }
    }
    pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Reply {
        Reply::json(
            status,
            json!({"error": {"code": code, "message": message.into()}}),
        )
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

fn into_response(reply: Reply) -> Response<Body> {
    let mut resp = Response::new(match &reply.body {
        Some(v) => Body::from(v.to_string()),
        None => Body::empty(),
    });
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    if reply.body.is_some() {
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    for (k, v) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.append(k, v);
        }
    }
    h.insert(
        "x-ms-request-id",
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .unwrap_or(HeaderValue::from_static("0")),
    );
    resp
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name || k.replace("%24", "$") == name).then(|| v.to_string())
    })
}

/// The largest request body the emulator reads (ARM's limit, 4 MiB).
pub const MAX_REQUEST_BODY: usize = 4 << 20;

async fn handle(State(app): State<Arc<App>>, req: Request<Body>) -> Response<Body> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    // ARM refuses request bodies over 4 MiB (its documented limit for a request's content;
    // the code is inferred): the emulator reads no more than that.
    let body = match to_bytes(req.into_body(), MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(e) => {
            // axum's error for a body over the limit (http-body-util's `LengthLimitError`).
            let too_large = format!("{e} {:?}", std::error::Error::source(&e))
                .contains("length limit exceeded");
            return into_response(if too_large {
                Reply::error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestContentTooLarge",
                    format!(
                        "The request content size exceeds the maximum size of {} bytes.",
                        MAX_REQUEST_BODY
                    ),
                )
            } else {
                Reply::error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContent",
                    e.to_string(),
                )
            });
        }
    };
    let path = uri.path().trim_end_matches('/').to_string();
    let query = uri.query().unwrap_or_default().to_string();
    if let Some(rest) = path.strip_prefix("/_emulator/") {
        return into_response(control(&app, &method, rest, &body));
    }
    let _answering = Answering::start(&app);
    if let (Some(config), Some(tenant)) = (&app.config.entra, entra::token_path(&path))
        && method == Method::POST
    {
        return into_response(app.entra().token(config, tenant, &body));
    }
    into_response(arm_request(&app, &method, &path, &query, &headers, &body).await)
}

async fn arm_request(
    app: &App,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    if let Some(refused) = authenticate(app, path, headers) {
        return refused;
    }
    if let Some(rest) = path
        .to_ascii_lowercase()
        .strip_prefix("/providers/microsoft.management/managementgroups/")
    {
        return management_group_request(app, method, path, rest, query, headers).await;
    }
    if let Some(sub) = activity_log_path(path) {
        return activity_request(app, method, path, &sub, query, headers).await;
    }
    if let Some(refused) = check_api_version(query) {
        return refused;
    }
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let op = arm::operation_name(method, &segs);
    let is_read = *method == Method::GET;
    let subscription = segs.get(1).map(|s| lower(s)).unwrap_or_default();

    // ARM's front door checks the subscription before anything else.
    if segs
        .first()
        .is_some_and(|s| s.eq_ignore_ascii_case("subscriptions"))
    {
        let mut store = app.lock();
        if let Some(reply) = subscription_refused(&store, method, &segs, path, &subscription) {
            record(&mut store, &subscription, &op, is_read, reply.status, false);
            return reply;
        }
    }

    let fault = fault_for(app, method, path).await;

    let mut store = app.lock();
    let throttle_headers = match app.config.throttle {
        Some(t) => match throttle(&mut store, t, &subscription, &op, is_read) {
            Ok(headers) => headers,
            Err(reply) => return reply,
        },
        None => remaining_unenforced(&mut store, &subscription, is_read),
    };

    if let Some(reply) = fault.as_ref().and_then(injected) {
        record(&mut store, &subscription, &op, is_read, reply.status, false);
        return reply;
    }

    let ctx = request_ctx(app, headers, query, fault);
    let mut reply = arm::dispatch(&mut store, &ctx, method, &segs, body);
    let mutated = !is_read && reply.status.is_success() && !op.starts_with("Operation");
    if !is_read && !op.starts_with("Operation") {
        log_write(
            app,
            &subscription,
            path,
            method,
            &segs,
            reply.status,
            headers,
        );
    }
    record(
        &mut store,
        &subscription,
        &op,
        is_read,
        reply.status,
        mutated,
    );
    reply.headers.extend(throttle_headers);
    reply
}

/// A management-group request (the descendants API), faults included.
async fn management_group_request(
    app: &App,
    method: &Method,
    path: &str,
    rest: &str,
    query: &str,
    headers: &HeaderMap,
) -> Reply {
    // Injected faults reach the management-group API too: its reads fail like any other.
    let fault = fault_for(app, method, path).await;
    if let Some(reply) = fault.as_ref().and_then(injected) {
        let mut store = app.lock();
        store.stats.reads += 1;
        *store
            .stats
            .by_operation
            .entry(format!(
                "ManagementGroups_GetDescendants {}",
                reply.status.as_u16()
            ))
            .or_insert(0) += 1;
        return reply;
    }
    management_groups(app, method, path, rest, query, headers)
}

/// An Activity Log request, faults included, recorded as a read of its subscription.
async fn activity_request(
    app: &App,
    method: &Method,
    path: &str,
    sub: &str,
    query: &str,
    headers: &HeaderMap,
) -> Reply {
    // Injected faults reach the Activity Log too (a 403: no eventtypes/values/read).
    let reply = match fault_for(app, method, path)
        .await
        .as_ref()
        .and_then(injected)
    {
        Some(fault) => fault,
        None => app.activity().list(
            sub,
            query,
            &base_url(app, headers),
            app.config.page_size.max(1),
        ),
    };
    let mut store = app.lock();
    record(
        &mut store,
        sub,
        "ActivityLogs_List",
        true,
        reply.status,
        false,
    );
    reply
}

/// A write as the Activity Log records it: who (the token's caller), what, with which IDs.
fn log_write(
    app: &App,
    subscription: &str,
    path: &str,
    method: &Method,
    segs: &[String],
    status: StatusCode,
    headers: &HeaderMap,
) {
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let token = header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_default();
    app.activity().record(activity::Written {
        subscription,
        path,
        method,
        segs,
        status,
        token,
        correlation: header("x-ms-correlation-request-id"),
        client_request: header("x-ms-client-request-id"),
    });
}

/// The subscription of an `ActivityLogs_List` path.
fn activity_log_path(path: &str) -> Option<String> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        [s, sub, p, ns, e, m, v]
            if s.eq_ignore_ascii_case("subscriptions")
                && p.eq_ignore_ascii_case("providers")
                && ns.eq_ignore_ascii_case("microsoft.insights")
                && e.eq_ignore_ascii_case("eventtypes")
                && m.eq_ignore_ascii_case("management")
                && v.eq_ignore_ascii_case("values") =>
        {
            Some(lower(sub))
        }
        _ => None,
    }
}

/// The subscription a request path addresses ("" for none).
fn request_subscription(path: &str) -> String {
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    match (segs.next(), segs.next()) {
        (Some(s), Some(id)) if s.eq_ignore_ascii_case("subscriptions") => lower(id),
        _ => String::new(),
    }
}

/// What the ARM handlers need of a request: its base URL, paging, preconditions and faults.
fn request_ctx(app: &App, headers: &HeaderMap, query: &str, fault: Option<FaultRule>) -> arm::Ctx {
    arm::Ctx {
        base: base_url(app, headers),
        page_size: app.config.page_size.max(1),
        lro: app.config.lro_duration,
        lro_failure: fault.and_then(|f| f.lro_status),
        if_match: headers
            .get("if-match")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        if_none_match: headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        skip: query_param(query, "$skiptoken")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    }
}

/// ARM's authentication: a bearer token (the emulator's own when configured).
fn authenticate(app: &App, path: &str, headers: &HeaderMap) -> Option<Reply> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(token) = auth.strip_prefix("Bearer ").filter(|t| !t.is_empty()) else {
        return Some(
            Reply::error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
            .header(
                "www-authenticate",
                "Bearer authorization_uri=\"https://login.microsoftonline.com/common\"",
            ),
        );
    };
    if let Some(config) = &app.config.entra {
        let subscription = request_subscription(path);
        return app.entra().check_arm_token(config, token, &subscription);
    }
    if app.config.token.as_deref().is_some_and(|t| t != token) {
        return Some(Reply::error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        ));
    }
    None
}

/// `?api-version=`: required, and the one the emulator speaks.
fn check_api_version(query: &str) -> Option<Reply> {
    match query_param(query, "api-version") {
        None => Some(Reply::error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )),
        Some(v) if v != API_VERSION => Some(Reply::error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{v}' is invalid. The supported versions are '{API_VERSION}'."
            ),
        )),
        Some(_) => None,
    }
}

/// A subscription that does not exist (404) or where the caller has no role (403).
fn subscription_refused(
    store: &Store,
    method: &Method,
    segs: &[String],
    path: &str,
    subscription: &str,
) -> Option<Reply> {
    match store.subscription_access(subscription) {
        state::SubscriptionAccess::Allowed => None,
        state::SubscriptionAccess::NotFound => Some(Reply::error(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            format!("The subscription '{subscription}' could not be found."),
        )),
        state::SubscriptionAccess::Unauthorized => Some(Reply::error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            format!(
                "The client 'kmsroute-emulator' with object id '00000000-0000-0000-0000-000000000000' does not have authorization to perform action '{}' over scope '{}' or the scope is invalid. If access was recently granted, please refresh your credentials.",
                arm::action_name(method, segs),
                path
            ),
        )),
    }
}

/// ARM's per-subscription token buckets and the Network RP's window: the remaining-budget
/// header of an admitted request, or the 429 that refuses it.
fn throttle(
    store: &mut Store,
    t: Throttle,
    subscription: &str,
    op: &str,
    is_read: bool,
) -> Result<Vec<(&'static str, String)>, Reply> {
    let (cap, rate) = if is_read {
        (t.read_capacity, t.read_refill)
    } else {
        (t.write_capacity, t.write_refill)
    };
    let now = Instant::now();
    let key = (subscription.to_string(), is_read);
    let header = if is_read {
        "x-ms-ratelimit-remaining-subscription-reads"
    } else {
        "x-ms-ratelimit-remaining-subscription-writes"
    };
    let kind = if is_read { "read" } else { "write" };
    let throttled = |store: &mut Store, message: String, wait: u64| {
        store.stats.throttled += 1;
        record(
            store,
            subscription,
            op,
            is_read,
            StatusCode::TOO_MANY_REQUESTS,
            false,
        );
        Reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            "SubscriptionRequestsThrottled",
            message,
        )
        .header("retry-after", wait.to_string())
    };
    let left = match state::take_token(&mut store.buckets, key.clone(), cap, rate, now) {
        Ok(left) => left,
        Err((wait, left)) => {
            let message = format!(
                "Number of {kind} requests for subscription '{subscription}' exceeded the limit. Please try again after '{wait}' seconds."
            );
            return Err(
                throttled(store, message, wait).header(header, (left.floor() as u64).to_string())
            );
        }
    };
    let headers = vec![(header, (left.floor() as u64).to_string())];
    // The Network RP's own window (inferred code: ARM's throttling code, with Retry-After).
    if let Some(w) = t.provider {
        let cap = if is_read { w.reads } else { w.writes };
        let rate = cap / w.window.as_secs_f64().max(1.0);
        if let Err((wait, _)) =
            state::take_token(&mut store.provider_buckets, key.clone(), cap, rate, now)
        {
            // The ARM token is given back: the request never reached the provider.
            if let Some(arm) = store.buckets.get_mut(&key) {
                arm.tokens += 1.0;
            }
            let message = format!(
                "Number of {kind} requests for subscription '{subscription}' exceeded the Microsoft.Network limit of {cap} per {} seconds. Please try again after '{wait}' seconds.",
                w.window.as_secs()
            );
            return Err(throttled(store, message, wait));
        }
    }
    Ok(headers)
}

/// ARM's remaining-budget header without throttling: ARM sends it on every answer, so the
/// emulator counts down ARM's documented buckets ([`Throttle::ARM`]) and reports what is left
/// (0 at worst), refusing nothing.
fn remaining_unenforced(
    store: &mut Store,
    subscription: &str,
    is_read: bool,
) -> Vec<(&'static str, String)> {
    let t = Throttle::ARM;
    let (cap, rate, header) = if is_read {
        (
            t.read_capacity,
            t.read_refill,
            "x-ms-ratelimit-remaining-subscription-reads",
        )
    } else {
        (
            t.write_capacity,
            t.write_refill,
            "x-ms-ratelimit-remaining-subscription-writes",
        )
    };
    let key = (subscription.to_string(), is_read);
    let left = state::take_token(&mut store.buckets, key, cap, rate, Instant::now())
        .unwrap_or_else(|(_, left)| left);
    vec![(header, (left.floor() as u64).to_string())]
}

/// The fault rule this request meets, if any: decided under the lock (an other-writer edit it
/// carries is made then), its latency or hang slept outside it.
async fn fault_for(app: &App, method: &Method, path: &str) -> Option<FaultRule> {
    let fault = {
        let mut store = app.lock();
        let fault = pick_fault(&mut store, method, path);
        if let Some(f) = &fault {
            store.stats.faults += 1;
            if let Some(w) = f.other_write.clone()
                && let Err(e) = arm::other_write(&mut store, w)
            {
                tracing::warn!(error = %e, "an injected other-writer edit failed");
            }
        }
        fault
    };
    if let Some(f) = &fault {
        if let Some(ms) = f.latency_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if f.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    fault
}

/// The reply an injected fault gives instead of the real one, if it gives one.
fn injected(f: &FaultRule) -> Option<Reply> {
    let status = f.status?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = f
        .code
        .clone()
        .unwrap_or_else(|| "InternalServerError".into());
    let mut reply = Reply::error(status, &code, format!("Injected fault {code}."));
    if code == "RetryableError" {
        reply.body = Some(
            json!({"error": {"code": code, "message": "Retryable error.", "details": [{"code": "RetryableErrorDueToAnotherOperation", "message": "Another operation is in progress."}]}}),
        );
    }
    if let Some(s) = f.retry_after {
        reply = reply.header("retry-after", s.to_string());
    }
    Some(reply)
}

fn record(
    store: &mut Store,
    subscription: &str,
    op: &str,
    is_read: bool,
    status: StatusCode,
    mutated: bool,
) {
    *store
        .stats
        .by_operation
        .entry(format!("{op} {}", status.as_u16()))
        .or_insert(0) += 1;
    if is_read {
        store.stats.reads += 1;
        *store
            .stats
            .reads_by_subscription
            .entry(subscription.to_string())
            .or_insert(0) += 1;
    } else {
        store.stats.writes += 1;
    }
    if mutated {
        store.stats.mutations += 1;
    }
}

fn pick_fault(store: &mut Store, method: &Method, path: &str) -> Option<FaultRule> {
    let lpath = lower(path);
    for (rule, hits) in &mut store.faults {
        let method_ok = rule
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
        let path_ok = rule
            .path_contains
            .as_deref()
            .is_none_or(|p| lpath.contains(&lower(p)));
        if !(method_ok && path_ok) {
            continue;
        }
        // `hits` counts matching requests; the fault covers the window [after, after + count).
        let seen = *hits;
        *hits += 1;
        let after = rule.after.unwrap_or(0);
        let active = seen >= after && rule.count.is_none_or(|c| seen - after < c);
        if active && rand::random::<f64>() < rule.probability.unwrap_or(1.0) {
            return Some(rule.clone());
        }
    }
    None
}

/// Microsoft.Management's descendants API: `GET …/managementGroups/{name}/descendants`, paged
/// like ARM (`nextLink` with a `$skiptoken`), api-version 2020-05-01.
/// The emulator's own URL as the client addressed it, for the links it returns.
fn base_url(app: &App, headers: &HeaderMap) -> String {
    if let Some(base) = &app.config.link_base {
        return base.trim_end_matches('/').to_string();
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn management_groups(
    app: &App,
    method: &Method,
    path: &str,
    rest: &str,
    query: &str,
    headers: &HeaderMap,
) -> Reply {
    const VERSION: &str = "2020-05-01";
    if query_param(query, "api-version").as_deref() != Some(VERSION) {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!("The api-version is invalid. The supported versions are '{VERSION}'."),
        );
    }
    let Some(group) = rest
        .strip_suffix("/descendants")
        .filter(|g| !g.contains('/'))
    else {
        return Reply::error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!("No route for {path}"),
        );
    };
    if *method != Method::GET {
        return Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path}"),
        );
    }
    let mut store = app.lock();
    let Some(all) = store.descendants(group) else {
        // inferred code
        let reply = Reply::error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "The management group '{group}' could not be found, or the caller has no access to it."
            ),
        );
        store.stats.reads += 1;
        return reply;
    };
    store.stats.reads += 1;
    *store
        .stats
        .by_operation
        .entry("ManagementGroups_GetDescendants 200".into())
        .or_insert(0) += 1;
    let skip: usize = query_param(query, "$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let base = base_url(app, headers);
    let link = format!("{base}{path}?api-version={VERSION}");
    let body = arm::page_body(&all, skip, app.config.page_size, &link, Value::clone);
    Reply::json(StatusCode::OK, body)
}

fn control(app: &App, method: &Method, rest: &str, body: &[u8]) -> Reply {
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).map_err(|e| e.to_string());
    match (method.as_str(), rest) {
        ("GET", "resources") => Reply::json(StatusCode::OK, json!(app.lock().dump())),
        ("GET", "stats") => Reply::json(StatusCode::OK, json!(app.lock().stats)),
        // One top-level resource as a GET returns it, without counting as an ARM read (for
        // benchmarks watching a repair without spending the subscription's budget).
        ("GET", r) if r.starts_with("resource/") => {
            let key = lower(&format!("/{}", &r["resource/".len()..]));
            let store = app.lock();
            match store.resources().get(&key) {
                Some(res) => Reply::json(StatusCode::OK, store.render(res)),
                None => Reply::error(StatusCode::NOT_FOUND, "ResourceNotFound", key),
            }
        }
        ("POST", "stats/reset") => {
            app.lock().stats = Stats::default();
            Reply::empty(StatusCode::NO_CONTENT)
        }
        ("DELETE", "faults") => {
            app.lock().faults.clear();
            Reply::empty(StatusCode::NO_CONTENT)
        }
        ("POST", "faults") => {
            let rules: Result<Vec<FaultRule>, String> = parse(body).and_then(|v| {
                if v.is_array() {
                    serde_json::from_value(v).map_err(|e| e.to_string())
                } else {
                    serde_json::from_value(v)
                        .map(|r| vec![r])
                        .map_err(|e| e.to_string())
                }
            });
            match rules {
                Ok(rules) => {
                    app.lock().faults.extend(rules.into_iter().map(|r| (r, 0)));
                    Reply::empty(StatusCode::NO_CONTENT)
                }
                Err(e) => Reply::error(StatusCode::BAD_REQUEST, "InvalidFault", e),
            }
        }
        ("POST", "other-writer") => {
            let w = parse(body)
                .and_then(|v| serde_json::from_value::<OtherWrite>(v).map_err(|e| e.to_string()));
            let done =
                w.and_then(|w| arm::other_write(&mut app.lock(), w).map_err(|e| e.to_string()));
            match done {
                Ok(()) => Reply::empty(StatusCode::NO_CONTENT),
                Err(e) => Reply::error(StatusCode::BAD_REQUEST, "OtherWriterFailed", e),
            }
        }
        _ => Reply::error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no control endpoint {method} /_emulator/{rest}"),
        ),
    }
}
