//! `routeTables` and their `routes`: create or replace a table (routes inline), tags, delete,
//! one route's PUT/GET/DELETE, and the checks ARM makes of a route (name, prefix, next hop,
//! duplicates, the 400-route limit, Azure Policy denials).

use super::*;

pub(super) fn put(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    put_route_table(store, ctx, r.sub(), &r.top_id(), r.name(), r.body)
}

/// `PATCH`: the tags only (what `RouteTables_UpdateTags` changes).
pub(super) fn patch_tags(store: &mut Store, _: &Ctx, r: &Request) -> Reply {
    let key = r.key();
    let Some(table) = store.resource_mut(&key) else {
        return not_found("routeTables", r.name(), r.rg());
    };
    let b = match body_json(r.body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    table["tags"] = b.get("tags").cloned().unwrap_or(json!({}));
    store.bump(&key);
    Reply::json(StatusCode::OK, store.render(&store.resources()[&key]))
}

/// `DELETE`: refused while a subnet uses the table; a long-running operation otherwise (a
/// table already gone is 204).
pub(super) fn delete(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    let (key, top_id) = (r.key(), r.top_id());
    let Some(table) = store.resources().get(&key) else {
        return Reply::empty(StatusCode::NO_CONTENT);
    };
    let location = table["location"].as_str().unwrap_or_default().to_string();
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
        r.sub(),
        &location,
        None,
        true,
        Reply::empty(StatusCode::ACCEPTED),
    )
}

/// `GET …/routes`: the table's routes, paged.
pub(super) fn list_routes(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    list_children(store, ctx, r, "routeTables", "routes")
}

/// `PUT`, `GET` or `DELETE` of one route.
pub(super) fn route(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    route_op(
        store,
        ctx,
        r.method,
        r.sub(),
        r.rg(),
        &r.key(),
        &r.top_id(),
        r.child(),
        r.body,
    )
}

pub(super) fn put_route_table(
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
    let location = match table_location(existing, &b, name) {
        Ok(l) => l,
        Err(e) => return e,
    };
    let props = b.get("properties").cloned().unwrap_or(json!({}));
    let routes = match table_routes(store, id, name, &props) {
        Ok(r) => r,
        Err(e) => return e,
    };
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
    accepted_put(store, ctx, sub, &location, None, created, shown)
}

/// The location a table PUT leaves: the body's, which must match an existing table's (ARM does
/// not move resources), or the existing one's; a new table must name one.
fn table_location(existing: Option<&Value>, body: &Value, name: &str) -> Result<String, Reply> {
    match (existing, body.get("location").and_then(Value::as_str)) {
        (Some(r), Some(l))
            if !r["location"]
                .as_str()
                .unwrap_or_default()
                .eq_ignore_ascii_case(l) =>
        {
            Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "InvalidResourceLocation",
                format!(
                    "The resource '{name}' already exists in location '{}'; it cannot be moved to '{l}'.",
                    r["location"].as_str().unwrap_or_default()
                ),
            ))
        }
        (_, Some(l)) => Ok(l.to_string()),
        (Some(r), None) => Ok(r["location"].as_str().unwrap_or_default().to_string()),
        (None, None) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "LocationRequired",
            "The location property is required for this definition.",
        )),
    }
}

/// The routes of a table PUT's body as stored, each checked as a route PUT would be (ARM's
/// own rules, policy denials, duplicate names and the per-table limit).
fn table_routes(store: &Store, id: &str, name: &str, props: &Value) -> Result<Vec<Value>, Reply> {
    let mut routes = Vec::new();
    for r in props
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let rname = r["name"].as_str().unwrap_or_default().to_string();
        let rp = check_route(&rname, r.get("properties").unwrap_or(&json!({})))?;
        if let Some(denied) = policy_denial(store, &format!("{id}/routes/{rname}"), &rp) {
            return Err(denied);
        }
        if let Some(conflict) = route_conflict(&routes, &rname, &rp) {
            return Err(conflict);
        }
        if routes.iter().any(|x: &Value| {
            x["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(&rname))
        }) {
            return Err(Reply::error(
                StatusCode::BAD_REQUEST,
                "DuplicateResourceName",
                format!("Route table {name} has two routes named {rname}."),
            ));
        }
        routes.push(json!({"name": rname, "id": format!("{id}/routes/{rname}"), "type": "Microsoft.Network/routeTables/routes", "properties": rp}));
    }
    if routes.len() > rules::MAX_ROUTES {
        // inferred code
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "RouteTableRoutesLimitExceeded",
            format!(
                "Route table {name} would have {} routes; the limit is 400.",
                routes.len()
            ),
        ));
    }
    Ok(routes)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn route_op(
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
    let index = find_child(table, "routes", name);
    let at = RouteAt {
        table: key,
        table_name,
        location: table["location"].as_str().unwrap_or_default().to_string(),
        index,
        etag: index
            .and_then(|_| table["etag"].as_str())
            .map(str::to_string),
        id: format!("{table_id}/routes/{name}"),
        name,
    };
    match method.as_str() {
        "GET" => match index {
            Some(i) => {
                let r = table["properties"]["routes"][i].clone();
                let etag = r["etag"].as_str().unwrap_or_default().to_string();
                Reply::json(StatusCode::OK, r).header("etag", etag)
            }
            None => child_not_found("routes", name),
        },
        "PUT" => put_route(store, ctx, sub, &at, body),
        "DELETE" => delete_route(store, ctx, sub, &at),
        _ => Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} on a route"),
        ),
    }
}

/// A route a request names, and what its table says of it.
struct RouteAt<'a> {
    /// The table's key in the store.
    table: &'a str,
    table_name: String,
    location: String,
    /// The route's position among the table's routes, if it exists.
    index: Option<usize>,
    /// The route's ETag (its table's), if it exists.
    etag: Option<String>,
    id: String,
    name: &'a str,
}

fn put_route(store: &mut Store, ctx: &Ctx, sub: &str, at: &RouteAt, body: &[u8]) -> Reply {
    if let Some(r) = check_preconditions(ctx, at.etag.as_deref(), &at.id) {
        return r;
    }
    let b = match body_json(body) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let props = match check_route(at.name, b.get("properties").unwrap_or(&json!({}))) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Some(denied) = policy_denial(store, &at.id, &props) {
        return denied;
    }
    let routes = store
        .resources()
        .get(at.table)
        .and_then(|t| t["properties"]["routes"].as_array())
        .map_or(&[][..], Vec::as_slice);
    if let Some(conflict) = route_conflict(routes, at.name, &props) {
        return conflict;
    }
    let count = routes.len();
    if at.index.is_none() && count >= rules::MAX_ROUTES {
        // inferred code
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "RouteTableRoutesLimitExceeded",
            format!(
                "Route table {} already has {count} routes; the limit is 400.",
                at.table_name
            ),
        );
    }
    let route = json!({"name": at.name, "id": at.id, "type": "Microsoft.Network/routeTables/routes", "properties": props});
    let mut shown = route.clone();
    if ctx.lro_failure.is_none() {
        match upsert_child(store, at.table, "routes", route) {
            Ok(etag) => shown["etag"] = json!(etag),
            Err(e) => return e,
        }
    }
    accepted_put(
        store,
        ctx,
        sub,
        &at.location,
        None,
        at.index.is_none(),
        shown,
    )
}

fn delete_route(store: &mut Store, ctx: &Ctx, sub: &str, at: &RouteAt) -> Reply {
    let Some(i) = at.index else {
        return Reply::empty(StatusCode::NO_CONTENT);
    };
    if let Some(r) = check_preconditions(ctx, at.etag.as_deref(), &at.id) {
        return r;
    }
    if ctx.lro_failure.is_none() {
        if let Some(routes) = store
            .resource_mut(at.table)
            .and_then(|t| t["properties"]["routes"].as_array_mut())
        {
            routes.remove(i);
        }
        store.bump(at.table);
    }
    lro(
        store,
        ctx,
        sub,
        &at.location,
        None,
        true,
        Reply::empty(StatusCode::ACCEPTED),
    )
}

/// Validates a route body; returns the normalised properties or the ARM error.
pub(super) fn check_route(name: &str, props: &Value) -> Result<Value, Reply> {
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

pub(super) fn valid_prefix(p: &str) -> bool {
    if let Some((addr, len)) = p.split_once('/') {
        let v4 =
            addr.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32);
        let v6 =
            addr.parse::<std::net::Ipv6Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 128);
        v4 || v6
    } else {
        // A service tag such as `AzureCloud` or `Storage.WestEurope`.
        crate::emulator::service_tags::is_service_tag(p)
    }
}

/// Azure Policy's verdict on a route about to be written at `route_id`: ARM's real
/// `RequestDisallowedByPolicy` body, naming the assignment and definition, when a Deny
/// assignment covers the route's scope and next hop.
pub(super) fn policy_denial(store: &Store, route_id: &str, props: &Value) -> Option<Reply> {
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

/// ARM's `RouteConflict`: two routes of one table may not have the same address prefix
/// ("Route: a conflicts with Route: b. Routes cannot have the same AddressPrefix.", as
/// reported in kubernetes-sigs/cloud-provider-azure#657). A route replacing itself by name is
/// no conflict.
pub(super) fn route_conflict(routes: &[Value], name: &str, props: &Value) -> Option<Reply> {
    let prefix = props["addressPrefix"].as_str()?;
    let key = crate::emulator::effective::network(prefix);
    let other = routes.iter().find(|r| {
        let other_name = r["name"].as_str().unwrap_or_default();
        let other_prefix = r["properties"]["addressPrefix"]
            .as_str()
            .unwrap_or_default();
        !other_name.eq_ignore_ascii_case(name)
            && match (key, crate::emulator::effective::network(other_prefix)) {
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
