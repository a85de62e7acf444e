//! ARM request semantics over the [`Store`]: a router on ARM's URL templates, and what every
//! resource kind shares (ETags and preconditions, long-running operations, paging, listing).
//! Each kind's operations are in a file of their own: `route_tables`, `subnets`,
//! `interfaces`. Synchronous: called with the store locked.

mod interfaces;
mod route_tables;
mod subnets;

pub(crate) use subnets::other_write;

use super::rules;
use super::state::{Operation, Store, is_type, lower, new_etag, stamp};
use super::{API_VERSION, OtherWrite, OtherWriteError, Reply};
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A request matched to one of ARM's URL templates.
pub(super) struct Request<'a> {
    pub method: &'a Method,
    /// The path as sent.
    pub path: String,
    pub body: &'a [u8],
    segs: &'a [String],
    /// The template's `{placeholder}`s and the values sent for them.
    values: Vec<(&'static str, &'a str)>,
}

impl Request<'_> {
    /// The value sent for a `{placeholder}` of the template ("" if it has none of that name).
    pub fn value(&self, name: &str) -> &str {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v)
    }
    pub fn sub(&self) -> &str {
        self.value("subscriptionId")
    }
    pub fn rg(&self) -> &str {
        self.value("resourceGroupName")
    }
    /// The top-level resource's ID, as sent (`…/providers/Microsoft.Network/{type}/{name}`).
    pub fn top_id(&self) -> String {
        self.segs
            .get(..8)
            .map(|s| format!("/{}", s.join("/")))
            .unwrap_or_default()
    }
    /// The top-level resource's store key.
    pub fn key(&self) -> String {
        lower(&self.top_id())
    }
    /// The top-level resource's name.
    pub fn name(&self) -> &str {
        self.segs.get(7).map_or("", String::as_str)
    }
    /// The child's name (`routes/{name}`, `subnets/{name}`).
    pub fn child(&self) -> &str {
        self.segs.get(9).map_or("", String::as_str)
    }
}

type Handler = fn(&mut Store, &Ctx, &Request) -> Reply;

/// `/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Network`
/// followed by the rest of a template.
macro_rules! network {
    ($rest:literal) => {
        concat!(
            "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Network",
            $rest
        )
    };
}

/// The URL templates served, as the REST specification spells them, tried in order; `*` is
/// any method.
const ROUTES: &[(&str, &str, Handler)] = &[
    (
        "*",
        "/subscriptions/{subscriptionId}/providers/Microsoft.Network/locations/{location}/{operationKind}/{operationId}",
        operation_status,
    ),
    (
        "GET",
        "/subscriptions/{subscriptionId}/providers/Microsoft.Network/{resourceType}",
        list_in_subscription,
    ),
    ("GET", network!("/{resourceType}"), list_in_group),
    (
        "GET",
        network!("/routeTables/{routeTableName}/routes"),
        route_tables::list_routes,
    ),
    (
        "*",
        network!("/routeTables/{routeTableName}/routes/{routeName}"),
        route_tables::route,
    ),
    (
        "PUT",
        network!("/routeTables/{routeTableName}"),
        route_tables::put,
    ),
    (
        "PATCH",
        network!("/routeTables/{routeTableName}"),
        route_tables::patch_tags,
    ),
    (
        "DELETE",
        network!("/routeTables/{routeTableName}"),
        route_tables::delete,
    ),
    (
        "GET",
        network!("/virtualNetworks/{virtualNetworkName}/subnets"),
        subnets::list,
    ),
    (
        "GET",
        network!("/virtualNetworks/{virtualNetworkName}/subnets/{subnetName}"),
        subnets::get,
    ),
    (
        "PUT",
        network!("/virtualNetworks/{virtualNetworkName}/subnets/{subnetName}"),
        subnets::put,
    ),
    (
        "POST",
        network!("/networkInterfaces/{networkInterfaceName}/effectiveRouteTable"),
        interfaces::effective_routes,
    ),
    (
        "GET",
        network!("/{resourceType}/{resourceName}"),
        get_resource,
    ),
];

/// The template's placeholders and their values when `segs` fit it (literals compare
/// case-insensitively, as ARM's do).
fn fit<'a>(template: &'static str, segs: &'a [String]) -> Option<Vec<(&'static str, &'a str)>> {
    let parts: Vec<&'static str> = template.trim_start_matches('/').split('/').collect();
    if parts.len() != segs.len() {
        return None;
    }
    let mut values = Vec::new();
    for (part, seg) in parts.iter().zip(segs) {
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if !seg.is_empty() => values.push((name, seg.as_str())),
            Some(_) => return None,
            None if part.eq_ignore_ascii_case(seg) => {}
            None => return None,
        }
    }
    Some(values)
}

/// Routes a request: the first template its path fits and its method allows. A path the
/// emulator knows under another method is 405; a path under the Network provider it does not
/// serve is 405 too (an operation the emulator does not have); anything else is 404.
pub(crate) fn dispatch(
    store: &mut Store,
    ctx: &Ctx,
    method: &Method,
    segs: &[String],
    body: &[u8],
) -> Reply {
    let path = format!("/{}", segs.join("/"));
    let mut known_path = false;
    for (allowed, template, handler) in ROUTES {
        let Some(values) = fit(template, segs) else {
            continue;
        };
        if *allowed != "*" && !method.as_str().eq_ignore_ascii_case(allowed) {
            known_path = true;
            continue;
        }
        let request = Request {
            method,
            path,
            body,
            segs,
            values,
        };
        return handler(store, ctx, &request);
    }
    let under_provider = segs.len() >= 8
        && kw(segs, 0, "subscriptions")
        && kw(segs, 2, "resourceGroups")
        && kw(segs, 4, "providers")
        && kw(segs, 5, "Microsoft.Network");
    if known_path || under_provider {
        Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path} is not supported by the emulator"),
        )
    } else {
        Reply::error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!("No route for {path}"),
        )
    }
}

/// `GET …/providers/Microsoft.Network/{type}` of a subscription.
fn list_in_subscription(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    let prefix = format!("/subscriptions/{}/", lower(r.sub()));
    list_top(store, ctx, &r.path, &prefix, r.value("resourceType"))
}

/// `GET …/resourceGroups/{rg}/providers/Microsoft.Network/{type}`.
fn list_in_group(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    let prefix = format!(
        "/subscriptions/{}/resourcegroups/{}/",
        lower(r.sub()),
        lower(r.rg())
    );
    list_top(store, ctx, &r.path, &prefix, r.value("resourceType"))
}

/// `GET …/{kind}/{name}/{child}`: a resource's children (routes, subnets), paged.
fn list_children(store: &Store, ctx: &Ctx, r: &Request, kind: &str, child: &str) -> Reply {
    let Some(parent) = store.resources().get(&r.key()) else {
        return not_found(kind, r.name(), r.rg());
    };
    let children = parent["properties"][child]
        .as_array()
        .cloned()
        .unwrap_or_default();
    page(ctx, &r.path, children)
}

/// The top-level kinds a GET reads.
const READABLE: [&str; 7] = [
    "routetables",
    "virtualnetworks",
    "networksecuritygroups",
    "natgateways",
    "networkinterfaces",
    "publicipaddresses",
    "loadbalancers",
];

/// `GET …/{type}/{name}` of a kind the emulator holds, with its ETag.
fn get_resource(store: &mut Store, _: &Ctx, r: &Request) -> Reply {
    let kind = r.value("resourceType");
    if !READABLE.contains(&lower(kind).as_str()) {
        return Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} {} is not supported by the emulator", r.method, r.path),
        );
    }
    match store.resources().get(&r.key()) {
        Some(found) => {
            let found = store.render(found);
            let etag = found["etag"].as_str().unwrap_or_default().to_string();
            Reply::json(StatusCode::OK, found).header("etag", etag)
        }
        None => not_found(kind, r.name(), r.rg()),
    }
}

pub(crate) struct Ctx {
    pub base: String,
    pub page_size: usize,
    pub lro: Duration,
    pub lro_failure: Option<String>,
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub skip: usize,
}

fn kw(segs: &[String], i: usize, word: &str) -> bool {
    segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(word))
}

/// The ARM operation ID of a request, as the REST spec names it (for statistics).
/// The RBAC action a request needs, as ARM names it in `AuthorizationFailed`
/// (`Microsoft.Network/virtualNetworks/read`, `…/routeTables/routes/write`).
pub(crate) fn action_name(method: &Method, segs: &[String]) -> String {
    let types: Vec<&str> = if segs.len() == 5 && kw(segs, 2, "providers") {
        segs.get(4).map(String::as_str).into_iter().collect()
    } else {
        [6, 8]
            .iter()
            .filter_map(|&i| segs.get(i).map(String::as_str))
            .collect()
    };
    let verb = match method.as_str() {
        "GET" => "read",
        "DELETE" => "delete",
        "POST" => "action",
        _ => "write",
    };
    format!("Microsoft.Network/{}/{verb}", types.join("/"))
}

pub(crate) fn operation_name(method: &Method, segs: &[String]) -> String {
    let m = method.as_str();
    if kw(segs, 6, "operations") || kw(segs, 4, "locations") && kw(segs, 6, "operations") {
        return "Operations_Get".into();
    }
    if kw(segs, 6, "operationResults") {
        return "OperationResults_Get".into();
    }
    if kw(segs, 6, "networkInterfaces") && kw(segs, 8, "effectiveRouteTable") {
        return "NetworkInterfaces_GetEffectiveRouteTable".into();
    }
    let sub_level = segs.len() == 5 && kw(segs, 2, "providers");
    let kind = if sub_level { segs.get(4) } else { segs.get(6) }
        .map(|s| lower(s))
        .unwrap_or_default();
    let family = match kind.as_str() {
        "routetables" => "RouteTables",
        "virtualnetworks" => "VirtualNetworks",
        "networksecuritygroups" => "NetworkSecurityGroups",
        "natgateways" => "NatGateways",
        "networkinterfaces" => "NetworkInterfaces",
        "publicipaddresses" => "PublicIPAddresses",
        "loadbalancers" => "LoadBalancers",
        _ => "Unknown",
    };
    let (family, depth) = match (family, segs.len()) {
        ("RouteTables", 9 | 10) => ("Routes", segs.len() - 2),
        ("VirtualNetworks", 9 | 10) => ("Subnets", segs.len() - 2),
        (f, n) => (f, n),
    };
    let verb = match (m, sub_level, depth) {
        ("GET", true, _) => "ListAll",
        ("GET", false, 7) => "List",
        ("GET", _, _) => "Get",
        ("PUT", _, _) => "CreateOrUpdate",
        ("PATCH", _, _) => "UpdateTags",
        ("DELETE", _, _) => "Delete",
        _ => "Other",
    };
    format!("{family}_{verb}")
}

fn not_found(kind: &str, name: &str, rg: &str) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!(
            "The Resource 'Microsoft.Network/{kind}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
        ),
    )
}

fn child_not_found(kind: &str, name: &str) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("Resource /{kind}/{name} not found."),
    )
}

fn precondition_failed(given: &str, current: &str, id: &str) -> Reply {
    Reply::json(
        StatusCode::PRECONDITION_FAILED,
        json!({"error": {"code": "PreconditionFailed", "message": "Precondition failed.", "details": [{
            "code": "PreconditionFailedEtagMismatch",
            "message": format!("Etag provided in if-match header {given} does not match etag {current} of resource {id} in NRP data store.")
        }]}}),
    )
}

/// `If-Match` / `If-None-Match: *` against a resource's current etag (`None`: absent).
fn check_preconditions(ctx: &Ctx, current: Option<&str>, id: &str) -> Option<Reply> {
    if let Some(given) = &ctx.if_match
        && given != "*"
        && current != Some(given.as_str())
    {
        return Some(precondition_failed(given, current.unwrap_or("(none)"), id));
    }
    if ctx.if_match.as_deref() == Some("*") && current.is_none() {
        return Some(precondition_failed("*", "(none)", id));
    }
    if ctx.if_none_match.as_deref() == Some("*") && current.is_some() {
        return Some(Reply::error(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            format!("Resource {id} already exists and If-None-Match is '*'."),
        ));
    }
    None
}

fn page(ctx: &Ctx, path: &str, items: Vec<Value>) -> Reply {
    let link = format!("{}{path}?api-version={API_VERSION}", ctx.base);
    let body = page_body(&items, ctx.skip, ctx.page_size, &link, Value::clone);
    Reply::json(StatusCode::OK, body)
}

/// One page of a listing as ARM returns it: `value`, the `size` items from `skip`, each
/// rendered, and while more remain a `nextLink`: `link` (the listing's URL with its
/// `api-version`) with the next `$skiptoken`.
pub(super) fn page_body<T>(
    items: &[T],
    skip: usize,
    size: usize,
    link: &str,
    render: impl Fn(&T) -> Value,
) -> Value {
    let end = (skip + size).min(items.len());
    let value: Vec<Value> = items
        .get(skip..end)
        .unwrap_or_default()
        .iter()
        .map(render)
        .collect();
    let mut body = json!({"value": value});
    if end < items.len() {
        body["nextLink"] = json!(format!("{link}&$skiptoken={end}"));
    }
    body
}

/// ARM's answer to a PUT it accepted: the resource as it will be, `Updating`, with 201 for a
/// new one and 200 for an update, as a long-running operation on `vnet`'s lock if given.
fn accepted_put(
    store: &mut Store,
    ctx: &Ctx,
    sub: &str,
    location: &str,
    vnet: Option<String>,
    created: bool,
    mut shown: Value,
) -> Reply {
    shown["properties"]["provisioningState"] = json!("Updating");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    lro(
        store,
        ctx,
        sub,
        location,
        vnet,
        false,
        Reply::json(status, shown),
    )
}

/// Registers a long-running operation and adds ARM's monitor headers to `reply`.
fn lro(
    store: &mut Store,
    ctx: &Ctx,
    sub: &str,
    location: &str,
    vnet: Option<String>,
    delete: bool,
    reply: Reply,
) -> Reply {
    let id = uuid::Uuid::new_v4().to_string();
    let done_at = Instant::now() + ctx.lro;
    if let Some(v) = &vnet {
        let until = store.vnet_busy_until.entry(v.clone()).or_insert(done_at);
        *until = (*until).max(done_at);
    }
    store.operations.insert(
        id.clone(),
        Operation {
            done_at,
            failure: ctx.lro_failure.clone(),
            result: None,
        },
    );
    let loc = if location.is_empty() {
        "westeurope"
    } else {
        location
    };
    let prefix = format!(
        "{}/subscriptions/{sub}/providers/Microsoft.Network/locations/{loc}",
        ctx.base
    );
    // The first Retry-After is a hint, not a promise (as on ARM): half the duration, so a
    // client that honours it may still see InProgress once.
    let retry = (ctx.lro.as_secs_f64() / 2.0).ceil() as u64;
    let reply = reply
        .header(
            "azure-asyncoperation",
            format!("{prefix}/operations/{id}?api-version={API_VERSION}"),
        )
        .header("retry-after", retry.to_string());
    if delete {
        reply.header(
            "location",
            format!("{prefix}/operationResults/{id}?api-version={API_VERSION}"),
        )
    } else {
        reply
    }
}

fn body_json(body: &[u8]) -> Result<Value, Reply> {
    serde_json::from_slice(body).map_err(|e| {
        Reply::error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            format!("The request content was invalid and could not be deserialized: {e}"),
        )
    })
}

/// Inserts or replaces a child (`routes` / `subnets`) of a top-level resource by name and gives
/// the parent and all its children a new etag, which it returns.
fn upsert_child(store: &mut Store, key: &str, child: &str, value: Value) -> Result<String, Reply> {
    let name = value["name"].as_str().unwrap_or_default().to_string();
    let Some(items) = store
        .resource_mut(key)
        .and_then(|r| r["properties"][child].as_array_mut())
    else {
        return Err(Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            format!("resource has no {child} array"),
        ));
    };
    match items.iter().position(|c| {
        c["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(&name))
    }) {
        Some(i) => items[i] = value,
        None => items.push(value),
    }
    Ok(store.bump(key).unwrap_or_default())
}

/// One page of a subscription or resource group listing: only the page is rendered.
fn list_top(store: &Store, ctx: &Ctx, path: &str, prefix: &str, kind: &str) -> Reply {
    let matching: Vec<&Value> = store
        .resources_under(prefix)
        .filter(|(_, r)| {
            r.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| is_type(id, kind))
        })
        .map(|(_, r)| r)
        .collect();
    let link = format!("{}{path}?api-version={API_VERSION}", ctx.base);
    let body = page_body(&matching, ctx.skip, ctx.page_size, &link, |r| {
        store.render(r)
    });
    Reply::json(StatusCode::OK, body)
}

fn find_child(parent: &Value, child: &str, name: &str) -> Option<usize> {
    parent["properties"][child]
        .as_array()?
        .iter()
        .position(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
}

/// `…/locations/{location}/operations|operationResults/{id}`: a long-running operation's
/// status, or its result.
fn operation_status(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    let (path, kind, id) = (&r.path, r.value("operationKind"), r.value("operationId"));
    let Some(op) = store.operations.get(id) else {
        return Reply::error(
            StatusCode::NOT_FOUND,
            "OperationNotFound",
            format!("Operation {id} was not found."),
        );
    };
    let remaining = op.done_at.saturating_duration_since(Instant::now());
    let retry = remaining.as_secs_f64().ceil().max(1.0) as u64;
    if kind.eq_ignore_ascii_case("operationResults") {
        return if remaining.is_zero() {
            match (&op.failure, &op.result) {
                (None, Some(result)) => Reply::json(StatusCode::OK, result.clone()),
                (None, None) => Reply::empty(StatusCode::NO_CONTENT),
                (Some(s), _) => Reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "OperationFailed",
                    format!("The operation ended {s}."),
                ),
            }
        } else {
            Reply::empty(StatusCode::ACCEPTED)
                .header(
                    "location",
                    format!("{}{path}?api-version={API_VERSION}", ctx.base),
                )
                .header("retry-after", retry.to_string())
        };
    }
    if !remaining.is_zero() {
        return Reply::json(StatusCode::OK, json!({"status": "InProgress"}))
            .header("retry-after", retry.to_string());
    }
    match &op.failure {
        None => Reply::json(StatusCode::OK, json!({"status": "Succeeded"})),
        Some(s) => Reply::json(
            StatusCode::OK,
            json!({"status": s, "error": {"code": "InternalServerError", "message": format!("The operation ended {s}; the change was not applied.")}}),
        ),
    }
}
