//! ARM request semantics over the [`Store`]: routing, validation, ETags, long-running
//! operations, paging. Synchronous: called with the store locked.

use super::rules;
use super::state::{Operation, Store, is_type, lower, new_etag, stamp};
use super::{API_VERSION, OtherWrite, Reply};
use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

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
    let end = (ctx.skip + ctx.page_size).min(items.len());
    let value: Vec<Value> = items
        .get(ctx.skip..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut body = json!({"value": value});
    if end < items.len() {
        body["nextLink"] = json!(format!(
            "{}{path}?api-version={API_VERSION}&$skiptoken={end}",
            ctx.base
        ));
    }
    Reply::json(StatusCode::OK, body)
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

fn valid_prefix(p: &str) -> bool {
    if let Some((addr, len)) = p.split_once('/') {
        let v4 =
            addr.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
        let v6 =
            addr.parse::<std::net::Ipv6Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128);
        v4 || v6
    } else {
        // A service tag such as `AzureCloud` or `Storage.WestEurope`.
        super::service_tags::is_service_tag(p)
    }
}

/// Azure Policy's verdict on a route about to be written at `route_id`: ARM's real
/// `RequestDisallowedByPolicy` body, naming the assignment and definition, when a Deny
/// assignment covers the route's scope and next hop.
fn policy_denial(store: &Store, route_id: &str, props: &Value) -> Option<Reply> {
    let hop = props["nextHopType"].as_str().unwrap_or_default();
    let id = lower(route_id);
    let a = store.policy_assignments.iter().find(|a| {
        let scope = lower(a.scope.trim_end_matches('/'));
        (id == scope || id.starts_with(&format!("{scope}/")))
            && a.denied_next_hop_types
                .iter()
                .any(|h| h.eq_ignore_ascii_case(hop))
    })?;
    let assignment_id = format!(
        "{}/providers/Microsoft.Authorization/policyAssignments/{}",
        a.scope.trim_end_matches('/'),
        a.name
    );
    let definition_id = format!(
        "/providers/Microsoft.Authorization/policyDefinitions/{}",
        a.definition_name
    );
    let body = json!({"error": {
        "code": "RequestDisallowedByPolicy",
        "target": route_id.rsplit('/').next().unwrap_or_default(),
        "message": format!(
            "Resource '{}' was disallowed by policy. Policy identifiers: '[{{\"policyAssignment\":{{\"name\":\"{}\",\"id\":\"{}\"}},\"policyDefinition\":{{\"name\":\"{}\",\"id\":\"{}\"}}}}]'.",
            route_id.rsplit('/').next().unwrap_or_default(), a.display_name, assignment_id, a.definition_display_name, definition_id
        ),
        "additionalInfo": [{"type": "PolicyViolation", "info": {
            "evaluationDetails": {"evaluatedExpressions": [{"result": "True", "expressionKind": "Field", "expression": "Microsoft.Network/routeTables/routes/nextHopType", "path": "properties.nextHopType", "expressionValue": hop, "targetValue": a.denied_next_hop_types, "operator": "In"}]},
            "policyDefinitionId": definition_id,
            "policyDefinitionName": a.definition_name,
            "policyDefinitionDisplayName": a.definition_display_name,
            "policyDefinitionEffect": "Deny",
            "policyAssignmentId": assignment_id,
            "policyAssignmentName": a.name,
            "policyAssignmentDisplayName": a.display_name,
            "policyAssignmentScope": a.scope,
            "policyAssignmentParameters": {},
            "policyExemptionIds": []
        }}]
    }});
    Some(Reply::json(StatusCode::FORBIDDEN, body))
}

/// Validates a route body; returns the normalised properties or the ARM error.
fn check_route(name: &str, props: &Value) -> Result<Value, Reply> {
    let bad = |code: &str, msg: String| Err(Reply::error(StatusCode::BAD_REQUEST, code, msg));
    if let Some(e) = rules::name_problem(name) {
        return bad(
            "InvalidResourceName",
            format!("Resource name {name} is invalid: {e}"),
        );
    }
    let prefix = props
        .get("addressPrefix")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !valid_prefix(prefix) {
        // inferred code
        return bad(
            "InvalidAddressPrefix",
            format!("Route {name} has an invalid addressPrefix '{prefix}'."),
        );
    }
    let hop = props
        .get("nextHopType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if ![
        "VirtualNetworkGateway",
        "VnetLocal",
        "Internet",
        "VirtualAppliance",
        "None",
    ]
    .contains(&hop)
    {
        return bad(
            "InvalidRequestFormat",
            format!("Route {name}: nextHopType '{hop}' is not valid."),
        );
    }
    let ip = props
        .get("nextHopIpAddress")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    match (hop, ip) {
        // inferred codes
        ("VirtualAppliance", None) => {
            return bad(
                "NextHopIpAddressRequired",
                format!("Route {name} with next hop VirtualAppliance needs nextHopIpAddress."),
            );
        }
        ("VirtualAppliance", Some(_)) | (_, None) => {}
        (_, Some(_)) => {
            return bad(
                "NextHopIpAddressNotAllowed",
                format!(
                    "Route {name}: nextHopIpAddress is only allowed with next hop VirtualAppliance."
                ),
            );
        }
    }
    let mut out = json!({"addressPrefix": prefix, "nextHopType": hop});
    if let Some(ip) = ip {
        out["nextHopIpAddress"] = json!(ip);
    }
    for passthrough in ["hasBgpOverride"] {
        if let Some(v) = props.get(passthrough) {
            out[passthrough] = v.clone();
        }
    }
    Ok(out)
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

pub(crate) fn dispatch(
    store: &mut Store,
    ctx: &Ctx,
    method: &Method,
    segs: &[String],
    body: &[u8],
) -> Reply {
    let path = format!("/{}", segs.join("/"));
    if !kw(segs, 0, "subscriptions") || segs.len() < 2 {
        return Reply::error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!("No route for {path}"),
        );
    }
    let sub = segs[1].clone();
    // /subscriptions/{s}/providers/Microsoft.Network/locations/{l}/operations|operationResults/{id}
    if kw(segs, 2, "providers") && kw(segs, 4, "locations") && segs.len() == 8 {
        return operation_status(store, ctx, &path, &segs[6], &segs[7]);
    }
    // /subscriptions/{s}/providers/Microsoft.Network/{type}  (list all)
    if kw(segs, 2, "providers")
        && kw(segs, 3, "Microsoft.Network")
        && segs.len() == 5
        && *method == Method::GET
    {
        let prefix = format!("/subscriptions/{}/", lower(&sub));
        return list_top(store, ctx, &path, &prefix, &segs[4]);
    }
    if !(kw(segs, 2, "resourceGroups")
        && kw(segs, 4, "providers")
        && kw(segs, 5, "Microsoft.Network"))
        || segs.len() < 7
    {
        return Reply::error(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            format!("No route for {path}"),
        );
    }
    let rg = segs[3].clone();
    if segs.len() == 7 {
        if *method != Method::GET {
            return Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {path}"),
            );
        }
        let prefix = format!(
            "/subscriptions/{}/resourcegroups/{}/",
            lower(&sub),
            lower(&rg)
        );
        return list_top(store, ctx, &path, &prefix, &segs[6]);
    }
    let top_id = format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/{}/{}",
        segs[6], segs[7]
    );
    let key = lower(&top_id);
    let kind = lower(&segs[6]);
    match (kind.as_str(), segs.len(), method.as_str()) {
        ("routetables", 8, "GET")
        | ("virtualnetworks", 8, "GET")
        | ("networksecuritygroups", 8, "GET")
        | ("natgateways", 8, "GET")
        | ("networkinterfaces", 8, "GET")
        | ("publicipaddresses", 8, "GET")
        | ("loadbalancers", 8, "GET") => match store.resources().get(&key) {
            Some(r) => {
                let r = store.render(r);
                let etag = r["etag"].as_str().unwrap_or_default().to_string();
                Reply::json(StatusCode::OK, r).header("etag", etag)
            }
            None => not_found(&segs[6], &segs[7], &rg),
        },
        ("routetables", 8, "PUT") => put_route_table(store, ctx, &sub, &top_id, &segs[7], body),
        ("networkinterfaces", 9, "POST") if kw(segs, 8, "effectiveRouteTable") => {
            effective_route_table(store, ctx, &sub, &key, &segs[7], &rg)
        }
        ("routetables", 8, "PATCH") => {
            let Some(r) = store.resource_mut(&key) else {
                return not_found("routeTables", &segs[7], &rg);
            };
            let b = match body_json(body) {
                Ok(b) => b,
                Err(e) => return e,
            };
            r["tags"] = b.get("tags").cloned().unwrap_or(json!({}));
            store.bump(&key);
            Reply::json(StatusCode::OK, store.render(&store.resources()[&key]))
        }
        ("routetables", 8, "DELETE") => {
            let Some(r) = store.resources().get(&key) else {
                return Reply::empty(StatusCode::NO_CONTENT);
            };
            let location = r["location"].as_str().unwrap_or_default().to_string();
            if !store.subnets_using(&top_id).is_empty() {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "InUseRouteTableCannotBeDeleted",
                    format!("Route table {top_id} is in use and cannot be deleted."),
                );
            }
            if ctx.lro_failure.is_none() {
                store.remove_resource(&key);
            }
            lro(
                store,
                ctx,
                &sub,
                &location,
                None,
                true,
                Reply::empty(StatusCode::ACCEPTED),
            )
        }
        ("routetables", 9, "GET") if kw(segs, 8, "routes") => {
            let Some(r) = store.resources().get(&key) else {
                return not_found("routeTables", &segs[7], &rg);
            };
            page(
                ctx,
                &path,
                r["properties"]["routes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            )
        }
        ("routetables", 10, _) if kw(segs, 8, "routes") => {
            route_op(store, ctx, method, &sub, &rg, &key, &top_id, &segs[9], body)
        }
        ("virtualnetworks", 9, "GET") if kw(segs, 8, "subnets") => {
            let Some(v) = store.resources().get(&key) else {
                return not_found("virtualNetworks", &segs[7], &rg);
            };
            page(
                ctx,
                &path,
                v["properties"]["subnets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            )
        }
        ("virtualnetworks", 10, "GET") if kw(segs, 8, "subnets") => {
            let Some(v) = store.resources().get(&key) else {
                return not_found("virtualNetworks", &segs[7], &rg);
            };
            match find_child(v, "subnets", &segs[9]) {
                Some(i) => {
                    let s = v["properties"]["subnets"][i].clone();
                    let etag = s["etag"].as_str().unwrap_or_default().to_string();
                    Reply::json(StatusCode::OK, s).header("etag", etag)
                }
                None => child_not_found("subnets", &segs[9]),
            }
        }
        ("virtualnetworks", 10, "PUT") if kw(segs, 8, "subnets") => {
            put_subnet(store, ctx, &sub, &rg, &key, &top_id, &segs[9], body)
        }
        _ => Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} {path} is not supported by the emulator"),
        ),
    }
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
    let end = (ctx.skip + ctx.page_size).min(matching.len());
    let value: Vec<Value> = matching
        .get(ctx.skip..end)
        .unwrap_or_default()
        .iter()
        .map(|r| store.render(r))
        .collect();
    let mut body = json!({"value": value});
    if end < matching.len() {
        body["nextLink"] = json!(format!(
            "{}{path}?api-version={API_VERSION}&$skiptoken={end}",
            ctx.base
        ));
    }
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

fn operation_status(store: &Store, ctx: &Ctx, path: &str, kind: &str, id: &str) -> Reply {
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

fn put_route_table(
    store: &mut Store,
    ctx: &Ctx,
    sub: &str,
    id: &str,
    name: &str,
    body: &[u8],
) -> Reply {
    let key = lower(id);
    let b = match body_json(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    if let Some(e) = rules::name_problem(name) {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "InvalidResourceName",
            format!("Resource name {name} is invalid: {e}"),
        );
    }
    let existing = store.resources().get(&key);
    let current = existing
        .and_then(|r| r["etag"].as_str())
        .map(str::to_string);
    if let Some(r) = check_preconditions(ctx, current.as_deref(), id) {
        return r;
    }
    let location = match (existing, b.get("location").and_then(Value::as_str)) {
        (Some(r), Some(l))
            if !r["location"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case(l) =>
        {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "InvalidResourceLocation",
                format!(
                    "The resource '{name}' already exists in location '{}'; it cannot be moved to '{l}'.",
                    r["location"].as_str().unwrap_or_default()
                ),
            );
        }
        (_, Some(l)) => l.to_string(),
        (Some(r), None) => r["location"].as_str().unwrap_or_default().to_string(),
        (None, None) => {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "LocationRequired",
                "The location property is required for this definition.",
            );
        }
    };
    let props = b.get("properties").cloned().unwrap_or(json!({}));
    let mut routes = Vec::new();
    for r in props
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let rname = r["name"].as_str().unwrap_or_default().to_string();
        let rp = match check_route(&rname, r.get("properties").unwrap_or(&json!({}))) {
            Ok(p) => p,
            Err(e) => return e,
        };
        if let Some(denied) = policy_denial(store, &format!("{id}/routes/{rname}"), &rp) {
            return denied;
        }
        if let Some(conflict) = route_conflict(&routes, &rname, &rp) {
            return conflict;
        }
        if routes.iter().any(|x: &Value| {
            x["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(&rname))
        }) {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "DuplicateResourceName",
                format!("Route table {name} has two routes named {rname}."),
            );
        }
        routes.push(json!({"name": rname, "id": format!("{id}/routes/{rname}"), "type": "Microsoft.Network/routeTables/routes", "properties": rp}));
    }
    if routes.len() > rules::MAX_ROUTES {
        // inferred code
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "RouteTableRoutesLimitExceeded",
            format!(
                "Route table {name} would have {} routes; the limit is 400.",
                routes.len()
            ),
        );
    }
    let created = existing.is_none();
    let resource = json!({
        "id": id, "name": name, "type": "Microsoft.Network/routeTables", "location": location,
        "tags": b.get("tags").cloned().unwrap_or(json!({})),
        "properties": {
            "disableBgpRoutePropagation": props.get("disableBgpRoutePropagation").cloned().unwrap_or(json!(false)),
            "routes": routes,
        }
    });
    let mut shown = resource.clone();
    if ctx.lro_failure.is_none() {
        store.insert_resource(key.clone(), resource);
        store.bump(&key);
        shown = store.render(&store.resources()[&key]);
    }
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
        &location,
        None,
        false,
        Reply::json(status, shown),
    )
}

#[allow(clippy::too_many_arguments)]
fn route_op(
    store: &mut Store,
    ctx: &Ctx,
    method: &Method,
    sub: &str,
    rg: &str,
    key: &str,
    table_id: &str,
    name: &str,
    body: &[u8],
) -> Reply {
    let table_name = table_id.rsplit('/').next().unwrap_or_default().to_string();
    let Some(table) = store.resources().get(key) else {
        return not_found("routeTables", &table_name, rg);
    };
    let location = table["location"].as_str().unwrap_or_default().to_string();
    let idx = find_child(table, "routes", name);
    let route_etag = idx.and_then(|_| table["etag"].as_str()).map(str::to_string);
    let route_id = format!("{table_id}/routes/{name}");
    match method.as_str() {
        "GET" => match idx {
            Some(i) => {
                let r = table["properties"]["routes"][i].clone();
                let etag = r["etag"].as_str().unwrap_or_default().to_string();
                Reply::json(StatusCode::OK, r).header("etag", etag)
            }
            None => child_not_found("routes", name),
        },
        "PUT" => {
            if let Some(r) = check_preconditions(ctx, route_etag.as_deref(), &route_id) {
                return r;
            }
            let b = match body_json(body) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let props = match check_route(name, b.get("properties").unwrap_or(&json!({}))) {
                Ok(p) => p,
                Err(e) => return e,
            };
            if let Some(denied) = policy_denial(store, &route_id, &props) {
                return denied;
            }
            if let Some(conflict) = route_conflict(
                table["properties"]["routes"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice),
                name,
                &props,
            ) {
                return conflict;
            }
            let count = table["properties"]["routes"].as_array().map_or(0, Vec::len);
            if idx.is_none() && count >= rules::MAX_ROUTES {
                // inferred code
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "RouteTableRoutesLimitExceeded",
                    format!(
                        "Route table {table_name} already has {count} routes; the limit is 400."
                    ),
                );
            }
            let route = json!({"name": name, "id": route_id, "type": "Microsoft.Network/routeTables/routes", "properties": props});
            let mut shown = route.clone();
            if ctx.lro_failure.is_none() {
                match upsert_child(store, key, "routes", route) {
                    Ok(etag) => shown["etag"] = json!(etag),
                    Err(e) => return e,
                }
            }
            shown["properties"]["provisioningState"] = json!("Updating");
            let status = if idx.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            lro(
                store,
                ctx,
                sub,
                &location,
                None,
                false,
                Reply::json(status, shown),
            )
        }
        "DELETE" => {
            let Some(i) = idx else {
                return Reply::empty(StatusCode::NO_CONTENT);
            };
            if let Some(r) = check_preconditions(ctx, route_etag.as_deref(), &route_id) {
                return r;
            }
            if ctx.lro_failure.is_none() {
                if let Some(routes) = store
                    .resource_mut(key)
                    .and_then(|t| t["properties"]["routes"].as_array_mut())
                {
                    routes.remove(i);
                }
                store.bump(key);
            }
            lro(
                store,
                ctx,
                sub,
                &location,
                None,
                true,
                Reply::empty(StatusCode::ACCEPTED),
            )
        }
        _ => Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} on a route"),
        ),
    }
}

/// Read-only subnet properties the service owns; a PUT body cannot change them.
const SUBNET_READ_ONLY: [&str; 6] = [
    "provisioningState",
    "ipConfigurations",
    "ipConfigurationProfiles",
    "privateEndpoints",
    "resourceNavigationLinks",
    "serviceAssociationLinks",
];

#[allow(clippy::too_many_arguments)]
fn put_subnet(
    store: &mut Store,
    ctx: &Ctx,
    sub: &str,
    rg: &str,
    vnet_key: &str,
    vnet_id: &str,
    name: &str,
    body: &[u8],
) -> Reply {
    let vnet_name = vnet_id.rsplit('/').next().unwrap_or_default().to_string();
    let Some(vnet) = store.resources().get(vnet_key) else {
        return not_found("virtualNetworks", &vnet_name, rg);
    };
    let location = vnet["location"].as_str().unwrap_or_default().to_string();
    let subnet_id = format!("{vnet_id}/subnets/{name}");
    let idx = find_child(vnet, "subnets", name);
    let current = idx.and_then(|_| vnet["etag"].as_str()).map(str::to_string);
    if let Some(r) = check_preconditions(ctx, current.as_deref(), &subnet_id) {
        return r;
    }
    // One write per VNet at a time, as the Network RP enforces.
    let now = Instant::now();
    if let Some(&busy) = store
        .vnet_busy_until
        .get(vnet_key)
        .filter(|&&done| done > now)
    {
        let wait = busy.duration_since(now).as_secs_f64().ceil().max(1.0) as u64;
        return Reply::json(StatusCode::TOO_MANY_REQUESTS, json!({"error": {"code": "RetryableError", "message": format!("A retryable error occurred. Operation on virtual network {vnet_name} is in progress."), "details": [{"code": "RetryableErrorDueToAnotherOperation", "message": format!("Operation PutSubnetOperation (in progress) is updating {vnet_id}.")}]}}))
            .header("retry-after", wait.to_string());
    }
    let b = match body_json(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let Some(props) = b.get("properties").and_then(Value::as_object).cloned() else {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestFormat",
            "Cannot parse the request: the subnet has no properties.",
        );
    };
    if props.get("addressPrefix").is_none() && props.get("addressPrefixes").is_none() {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "NoAddressPrefixOrPoolProvided",
            format!("Subnet {name} has neither an addressPrefix nor addressPrefixes."),
        );
    }
    for (field, kind) in [
        ("routeTable", "routeTables"),
        ("networkSecurityGroup", "networkSecurityGroups"),
        ("natGateway", "natGateways"),
    ] {
        let Some(r) = props.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let rid = r.get("id").and_then(Value::as_str).unwrap_or_default();
        let Some(target) = store
            .resources()
            .get(&lower(rid))
            .filter(|_| is_type(rid, kind))
        else {
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "InvalidResourceReference",
                format!(
                    "Resource {rid} referenced by resource {subnet_id} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region."
                ),
            );
        };
        let same_sub = rid
            .split('/')
            .nth(2)
            .is_some_and(|s| s.eq_ignore_ascii_case(sub));
        let same_region = target["location"]
            .as_str()
            .is_some_and(|l| l.eq_ignore_ascii_case(&location));
        if !same_sub || !same_region {
            // inferred code
            return Reply::error(
                StatusCode::BAD_REQUEST,
                "InvalidResourceReference",
                format!(
                    "Resource {rid} referenced by {subnet_id} must be in the same subscription and region ({location}) as the virtual network."
                ),
            );
        }
    }
    let old = idx.map(|i| vnet["properties"]["subnets"][i].clone());
    let mut new_props = props;
    if let Some(old) = &old {
        for ro in SUBNET_READ_ONLY {
            new_props.remove(ro);
            if let Some(v) = old["properties"].get(ro) {
                new_props.insert(ro.to_string(), v.clone());
            }
        }
        // Create-only: kept when omitted, refused when changed.
        match (
            old["properties"].get("defaultOutboundAccess"),
            new_props.get("defaultOutboundAccess"),
        ) {
            (Some(o), Some(n)) if o != n => {
                // inferred code
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    "DefaultOutboundAccessCannotBeUpdated",
                    "defaultOutboundAccess can only be set when the subnet is created.",
                );
            }
            (Some(o), None) => {
                new_props.insert("defaultOutboundAccess".into(), o.clone());
            }
            _ => {}
        }
    } else {
        for ro in SUBNET_READ_ONLY {
            new_props.remove(ro);
        }
    }
    new_props.retain(|_, v| !v.is_null());
    // The service completes service endpoints with their regions and state.
    if let Some(eps) = new_props
        .get_mut("serviceEndpoints")
        .and_then(Value::as_array_mut)
    {
        for ep in eps {
            if ep.get("locations").is_none() {
                ep["locations"] = json!([location]);
            }
            ep["provisioningState"] = json!("Succeeded");
        }
    }
    let subnet = json!({"name": name, "id": subnet_id, "type": "Microsoft.Network/virtualNetworks/subnets", "properties": Value::Object(new_props)});
    let mut shown = subnet.clone();
    if ctx.lro_failure.is_none() {
        let etag = match upsert_child(store, vnet_key, "subnets", subnet) {
            Ok(etag) => etag,
            Err(e) => return e,
        };
        // Associating a table changes the table too: its etag moves with its subnets list.
        for table in [
            old.as_ref()
                .and_then(|o| o.pointer("/properties/routeTable/id"))
                .cloned(),
            shown.pointer("/properties/routeTable/id").cloned(),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(t) = table.as_str() {
                store.bump(&lower(t));
            }
        }
        shown["etag"] = json!(etag);
    }
    shown["properties"]["provisioningState"] = json!("Updating");
    let status = if idx.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    lro(
        store,
        ctx,
        sub,
        &location,
        Some(vnet_key.to_string()),
        false,
        Reply::json(status, shown),
    )
}

/// Edits behind the client's back, with ARM's own rules (a table in use cannot be deleted).
pub(crate) fn other_write(store: &mut Store, w: OtherWrite) -> Result<(), String> {
    match w {
        OtherWrite::DeleteRoute { route_table, route } => {
            let key = lower(&route_table);
            let t = store
                .resource_mut(&key)
                .ok_or(format!("no route table {route_table}"))?;
            let routes = t["properties"]["routes"]
                .as_array_mut()
                .ok_or("table has no routes")?;
            let before = routes.len();
            routes.retain(|r| {
                !r["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&route))
            });
            if routes.len() == before {
                return Err(format!("no route {route} in {route_table}"));
            }
            store.bump(&key);
        }
        OtherWrite::PutRoute { route_table, route } => {
            let key = lower(&route_table);
            let name = route["name"]
                .as_str()
                .ok_or("route needs a name")?
                .to_string();
            let props = check_route(&name, route.get("properties").unwrap_or(&json!({})))
                .map_err(|r| r.body.map(|b| b.to_string()).unwrap_or_default())?;
            // The portal is held to the same rule as the API.
            if let Some(conflict) = store
                .resources()
                .get(&key)
                .and_then(|t| t["properties"]["routes"].as_array())
                .and_then(|routes| route_conflict(routes, &name, &props))
            {
                return Err(conflict.body.map(|b| b.to_string()).unwrap_or_default());
            }
            let table_id = store
                .resources()
                .get(&key)
                .ok_or(format!("no route table {route_table}"))?["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let r = json!({"name": name, "id": format!("{table_id}/routes/{name}"), "type": "Microsoft.Network/routeTables/routes", "properties": props});
            upsert_child(store, &key, "routes", r)
                .map_err(|r| r.body.map(|b| b.to_string()).unwrap_or_default())?;
        }
        OtherWrite::SetSubnetRouteTable {
            subnet,
            route_table,
        } => {
            let patch = match route_table {
                Some(t) => json!({"routeTable": {"id": t}}),
                None => json!({"routeTable": null}),
            };
            patch_subnet(store, &subnet, &patch)?;
        }
        OtherWrite::PatchSubnet { subnet, properties } => {
            patch_subnet(store, &subnet, &properties)?
        }
        OtherWrite::DeleteRouteTable { route_table } => {
            if !store.subnets_using(&route_table).is_empty() {
                return Err(format!("InUseRouteTableCannotBeDeleted: {route_table}"));
            }
            store
                .remove_resource(&lower(&route_table))
                .ok_or(format!("no route table {route_table}"))?;
        }
    }
    Ok(())
}

fn patch_subnet(store: &mut Store, subnet_id: &str, patch: &Value) -> Result<(), String> {
    let (vnet_id, name) = subnet_id
        .rsplit_once("/subnets/")
        .ok_or(format!("{subnet_id} is not a subnet ID"))?;
    let key = lower(vnet_id);
    let v = store
        .resource_mut(&key)
        .ok_or(format!("no virtual network {vnet_id}"))?;
    let i = find_child(v, "subnets", name).ok_or(format!("no subnet {subnet_id}"))?;
    let props = v["properties"]["subnets"][i]["properties"]
        .as_object_mut()
        .ok_or("subnet has no properties")?;
    let mut touched_tables: Vec<String> = props
        .get("routeTable")
        .and_then(|t| t["id"].as_str())
        .map(|s| vec![lower(s)])
        .unwrap_or_default();
    for (k, val) in patch.as_object().ok_or("properties must be an object")? {
        if val.is_null() {
            props.remove(k);
        } else {
            props.insert(k.clone(), val.clone());
        }
    }
    if let Some(t) = props.get("routeTable").and_then(|t| t["id"].as_str()) {
        touched_tables.push(lower(t));
    }
    let etag = new_etag();
    if let Some(v) = store.resource_mut(&key) {
        stamp(v, &etag);
    }
    for t in touched_tables {
        store.bump(&t);
    }
    Ok(())
}

/// `POST …/networkInterfaces/{nic}/effectiveRouteTable`: 202 with `Location`; the monitor URL
/// returns 202 until done, then 200 with `{"value": [EffectiveRoute…]}` computed by
/// [`super::effective::table`] from the NIC's subnet, its VNet's address space, the seed's
/// BGP-learned routes for that VNet and the subnet's route table, as of the POST.
fn effective_route_table(
    store: &mut Store,
    ctx: &Ctx,
    sub: &str,
    key: &str,
    nic_name: &str,
    rg: &str,
) -> Reply {
    let Some(nic) = store.resources().get(key) else {
        return not_found("networkInterfaces", nic_name, rg);
    };
    let location = nic["location"].as_str().unwrap_or("westeurope").to_string();
    if nic
        .pointer("/properties/virtualMachine/id")
        .and_then(Value::as_str)
        .is_none()
    {
        // Azure computes effective routes only for a NIC of a running VM. The error code is
        // not in the 2024-03-01 fixtures; the envelope is ARM's.
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "NetworkInterfaceNotAttachedToRunningVm",
            format!("Network interface {nic_name} is not attached to a running virtual machine."),
        );
    }
    let Some(subnet_id) = nic
        .pointer("/properties/ipConfigurations/0/properties/subnet/id")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestFormat",
            format!("Network interface {nic_name} has no IP configuration in a subnet."),
        );
    };
    let Some((vnet_id, subnet_name)) = split_subnet_id(&subnet_id) else {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestFormat",
            format!("Bad subnet reference {subnet_id}."),
        );
    };
    let Some(vnet) = store.resources().get(&lower(&vnet_id)) else {
        return not_found("virtualNetworks", &vnet_id, rg);
    };
    let prefixes: Vec<String> = vnet
        .pointer("/properties/addressSpace/addressPrefixes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let subnet = find_child(vnet, "subnets", &subnet_name)
        .and_then(|i| vnet.pointer(&format!("/properties/subnets/{i}")));
    let table = subnet
        .and_then(|s| s.pointer("/properties/routeTable/id"))
        .and_then(Value::as_str)
        .and_then(|t| store.resources().get(&lower(t)));
    let input = |r: &Value, name: Option<String>| super::effective::RouteInput {
        name,
        prefix: r["addressPrefix"].as_str().unwrap_or_default().to_string(),
        next_hop_type: r["nextHopType"].as_str().unwrap_or_default().to_string(),
        next_hop_ip: r["nextHopIpAddress"].as_str().map(str::to_string),
    };
    let learned: Vec<super::effective::RouteInput> = store
        .learned_routes
        .iter()
        .filter(|l| {
            l["virtualNetworkId"]
                .as_str()
                .is_some_and(|v| v.eq_ignore_ascii_case(&vnet_id))
        })
        .map(|l| input(l, None))
        .collect();
    let user: Vec<super::effective::RouteInput> = table
        .and_then(|t| t.pointer("/properties/routes"))
        .and_then(Value::as_array)
        .map(|routes| {
            routes
                .iter()
                .map(|r| input(&r["properties"], r["name"].as_str().map(str::to_string)))
                .collect()
        })
        .unwrap_or_default();
    let disable = table
        .and_then(|t| t.pointer("/properties/disableBgpRoutePropagation"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let routes = super::effective::table(
        &prefixes,
        &learned,
        table.map(|_| (user.as_slice(), disable)),
    );
    let id = uuid::Uuid::new_v4().to_string();
    let done_at = Instant::now() + ctx.lro;
    store.operations.insert(
        id.clone(),
        Operation {
            done_at,
            failure: None,
            result: Some(json!({ "value": routes })),
        },
    );
    Reply::empty(StatusCode::ACCEPTED)
        .header(
            "location",
            format!(
                "{}/subscriptions/{sub}/providers/Microsoft.Network/locations/{location}/operationResults/{id}?api-version={API_VERSION}",
                ctx.base
            ),
        )
        .header(
            "retry-after",
            ((ctx.lro.as_secs_f64() / 2.0).ceil() as u64).to_string(),
        )
}

/// `…/virtualNetworks/{v}/subnets/{s}` → (VNet ID, subnet name).
fn split_subnet_id(id: &str) -> Option<(String, String)> {
    let lowered = id.to_ascii_lowercase();
    let at = lowered.rfind("/subnets/")?;
    let name = &id[at + "/subnets/".len()..];
    (!name.is_empty() && !name.contains('/')).then(|| (id[..at].to_string(), name.to_string()))
}

/// ARM's `RouteConflict`: two routes of one table may not have the same address prefix
/// ("Route: a conflicts with Route: b. Routes cannot have the same AddressPrefix.", as
/// reported in kubernetes-sigs/cloud-provider-azure#657). A route replacing itself by name is
/// no conflict.
fn route_conflict(routes: &[Value], name: &str, props: &Value) -> Option<Reply> {
    let prefix = props["addressPrefix"].as_str()?;
    let key = super::effective::network(prefix);
    let other = routes.iter().find(|r| {
        let other_name = r["name"].as_str().unwrap_or_default();
        let other_prefix = r["properties"]["addressPrefix"]
            .as_str()
            .unwrap_or_default();
        !other_name.eq_ignore_ascii_case(name)
            && match (key, super::effective::network(other_prefix)) {
                (Some(a), Some(b)) => a == b,
                _ => other_prefix.eq_ignore_ascii_case(prefix),
            }
    })?;
    Some(Reply::error(
        StatusCode::BAD_REQUEST,
        "RouteConflict",
        format!(
            "Route: {name} conflicts with Route: {}. Routes cannot have the same AddressPrefix.",
            other["name"].as_str().unwrap_or_default()
        ),
    ))
}
