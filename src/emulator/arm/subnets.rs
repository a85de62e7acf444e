//! `virtualNetworks/{v}/subnets`: the subnet PUT with its preconditions (ETag, read-only
//! properties, a table in another region or subscription), and the edits of "other writers"
//! (a colleague in the portal) the tests and the demo make.

use super::route_tables::{check_route, route_conflict};
use super::*;

/// `GET …/subnets`: the VNet's subnets, paged.
pub(super) fn list(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    list_children(store, ctx, r, "virtualNetworks", "subnets")
}

/// `GET …/subnets/{name}`, with its ETag.
pub(super) fn get(store: &mut Store, _: &Ctx, r: &Request) -> Reply {
    let Some(vnet) = store.resources().get(&r.key()) else {
        return not_found("virtualNetworks", r.name(), r.rg());
    };
    match find_child(vnet, "subnets", r.child()) {
        Some(i) => {
            let s = vnet["properties"]["subnets"][i].clone();
            let etag = s["etag"].as_str().unwrap_or_default().to_string();
            Reply::json(StatusCode::OK, s).header("etag", etag)
        }
        None => child_not_found("subnets", r.child()),
    }
}

pub(super) fn put(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    put_subnet(
        store,
        ctx,
        r.sub(),
        r.rg(),
        &r.key(),
        &r.top_id(),
        r.child(),
        r.body,
    )
}

/// Read-only subnet properties the service owns; a PUT body cannot change them.
pub(super) const SUBNET_READ_ONLY: [&str; 6] = [
    "provisioningState",
    "ipConfigurations",
    "ipConfigurationProfiles",
    "privateEndpoints",
    "resourceNavigationLinks",
    "serviceAssociationLinks",
];

#[allow(clippy::too_many_arguments)]
pub(super) fn put_subnet(
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
    if let Some(busy) = vnet_busy(store, vnet_key, &vnet_name, vnet_id) {
        return busy;
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
    if let Some(refused) = check_references(store, &props, sub, &location, &subnet_id) {
        return refused;
    }
    let old = idx.map(|i| vnet["properties"]["subnets"][i].clone());
    let mut new_props = props;
    if let Err(refused) = keep_read_only(old.as_ref(), &mut new_props) {
        return refused;
    }
    new_props.retain(|_, v| !v.is_null());
    complete_service_endpoints(&mut new_props, &location);
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
    accepted_put(
        store,
        ctx,
        sub,
        &location,
        Some(vnet_key.to_string()),
        idx.is_none(),
        shown,
    )
}

/// The 429 ARM answers while another write holds the VNet.
fn vnet_busy(store: &Store, vnet_key: &str, vnet_name: &str, vnet_id: &str) -> Option<Reply> {
    let now = Instant::now();
    let busy = *store
        .vnet_busy_until
        .get(vnet_key)
        .filter(|&&done| done > now)?;
    let wait = busy.duration_since(now).as_secs_f64().ceil().max(1.0) as u64;
    Some(
        Reply::json(StatusCode::TOO_MANY_REQUESTS, json!({"error": {"code": "RetryableError", "message": format!("A retryable error occurred. Operation on virtual network {vnet_name} is in progress."), "details": [{"code": "RetryableErrorDueToAnotherOperation", "message": format!("Operation PutSubnetOperation (in progress) is updating {vnet_id}.")}]}}))
            .header("retry-after", wait.to_string()),
    )
}

/// The service completes service endpoints with their regions and state.
fn complete_service_endpoints(props: &mut serde_json::Map<String, Value>, location: &str) {
    if let Some(eps) = props
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
}

/// The resources a subnet body references (route table, NSG, NAT gateway) exist and are in
/// the VNet's subscription and region.
fn check_references(
    store: &Store,
    props: &serde_json::Map<String, Value>,
    sub: &str,
    location: &str,
    subnet_id: &str,
) -> Option<Reply> {
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
            return Some(Reply::error(
                StatusCode::BAD_REQUEST,
                "InvalidResourceReference",
                format!(
                    "Resource {rid} referenced by resource {subnet_id} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region."
                ),
            ));
        };
        let same_sub = rid
            .split('/')
            .nth(2)
            .is_some_and(|s| s.eq_ignore_ascii_case(sub));
        let same_region = target["location"]
            .as_str()
            .is_some_and(|l| l.eq_ignore_ascii_case(location));
        if !same_sub || !same_region {
            // inferred code
            return Some(Reply::error(
                StatusCode::BAD_REQUEST,
                "InvalidResourceReference",
                format!(
                    "Resource {rid} referenced by {subnet_id} must be in the same subscription and region ({location}) as the virtual network."
                ),
            ));
        }
    }
    None
}

/// ARM keeps what a PUT may not change: the read-only properties of the subnet as it is, and
/// `defaultOutboundAccess` (create-only: kept when omitted, refused when changed).
fn keep_read_only(
    old: Option<&Value>,
    new_props: &mut serde_json::Map<String, Value>,
) -> Result<(), Reply> {
    if let Some(old) = old {
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
                return Err(Reply::error(
                    StatusCode::BAD_REQUEST,
                    "DefaultOutboundAccessCannotBeUpdated",
                    "defaultOutboundAccess can only be set when the subnet is created.",
                ));
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
    Ok(())
}

/// Edits behind the client's back, with ARM's own rules (a table in use cannot be deleted).
pub(crate) fn other_write(store: &mut Store, w: OtherWrite) -> Result<(), OtherWriteError> {
    match w {
        OtherWrite::DeleteRoute { route_table, route } => {
            let key = lower(&route_table);
            let t = store
                .resource_mut(&key)
                .ok_or_else(|| OtherWriteError::not_found("route table", &route_table))?;
            let routes = t["properties"]["routes"]
                .as_array_mut()
                .ok_or(OtherWriteError::Malformed("the table has no routes"))?;
            let before = routes.len();
            routes.retain(|r| {
                !r["name"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&route))
            });
            if routes.len() == before {
                return Err(OtherWriteError::not_found(
                    "route",
                    &format!("{route} in {route_table}"),
                ));
            }
            store.bump(&key);
        }
        OtherWrite::PutRoute { route_table, route } => {
            let key = lower(&route_table);
            let name = route["name"]
                .as_str()
                .ok_or(OtherWriteError::Malformed("a route needs a name"))?
                .to_string();
            let props = check_route(&name, route.get("properties").unwrap_or(&json!({})))
                .map_err(OtherWriteError::refused)?;
            // The portal is held to the same rule as the API.
            if let Some(conflict) = store
                .resources()
                .get(&key)
                .and_then(|t| t["properties"]["routes"].as_array())
                .and_then(|routes| route_conflict(routes, &name, &props))
            {
                return Err(OtherWriteError::refused(conflict));
            }
            let table_id = store
                .resources()
                .get(&key)
                .ok_or_else(|| OtherWriteError::not_found("route table", &route_table))?["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let r = json!({"name": name, "id": format!("{table_id}/routes/{name}"), "type": "Microsoft.Network/routeTables/routes", "properties": props});
            upsert_child(store, &key, "routes", r).map_err(OtherWriteError::refused)?;
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
                return Err(OtherWriteError::Refused(format!(
                    "InUseRouteTableCannotBeDeleted: {route_table}"
                )));
            }
            store
                .remove_resource(&lower(&route_table))
                .ok_or_else(|| OtherWriteError::not_found("route table", &route_table))?;
        }
    }
    Ok(())
}

pub(super) fn patch_subnet(
    store: &mut Store,
    subnet_id: &str,
    patch: &Value,
) -> Result<(), OtherWriteError> {
    let (vnet_id, name) = subnet_id
        .rsplit_once("/subnets/")
        .ok_or_else(|| OtherWriteError::NotASubnet(subnet_id.to_string()))?;
    let key = lower(vnet_id);
    let v = store
        .resource_mut(&key)
        .ok_or_else(|| OtherWriteError::not_found("virtual network", vnet_id))?;
    let i = find_child(v, "subnets", name)
        .ok_or_else(|| OtherWriteError::not_found("subnet", subnet_id))?;
    let props = v["properties"]["subnets"][i]["properties"]
        .as_object_mut()
        .ok_or(OtherWriteError::Malformed("the subnet has no properties"))?;
    let mut touched_tables: Vec<String> = props
        .get("routeTable")
        .and_then(|t| t["id"].as_str())
        .map(|s| vec![lower(s)])
        .unwrap_or_default();
    for (k, val) in patch
        .as_object()
        .ok_or(OtherWriteError::Malformed("properties must be an object"))?
    {
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
