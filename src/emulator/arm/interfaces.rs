//! `networkInterfaces/{nic}/effectiveRouteTable`: the long-running POST, computed from the
//! NIC's subnet, its VNet's address space, the BGP-learned routes and the subnet's table.

use super::*;

pub(super) fn effective_routes(store: &mut Store, ctx: &Ctx, r: &Request) -> Reply {
    effective_route_table(store, ctx, r.sub(), &r.key(), r.name(), r.rg())
}

/// `POST …/networkInterfaces/{nic}/effectiveRouteTable`: 202 with `Location`; the monitor URL
/// returns 202 until done, then 200 with `{"value": [EffectiveRoute…]}` computed by
/// [`crate::emulator::effective::table`] from the NIC's subnet, its VNet's address space, the seed's
/// BGP-learned routes for that VNet and the subnet's route table, as of the POST.
pub(super) fn effective_route_table(
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
    let routes = routes_of(store, &vnet_id, vnet, &subnet_name);
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

/// What Azure computes for a subnet of `vnet`: its address space, the BGP routes learned into
/// the VNet, and the user routes of the subnet's table (with its BGP propagation setting).
fn routes_of(store: &Store, vnet_id: &str, vnet: &Value, subnet_name: &str) -> Vec<Value> {
    let prefixes: Vec<String> = vnet
        .pointer("/properties/addressSpace/addressPrefixes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let subnet = find_child(vnet, "subnets", subnet_name)
        .and_then(|i| vnet.pointer(&format!("/properties/subnets/{i}")));
    let table = subnet
        .and_then(|s| s.pointer("/properties/routeTable/id"))
        .and_then(Value::as_str)
        .and_then(|t| store.resources().get(&lower(t)));
    let input = |r: &Value, name: Option<String>| crate::emulator::effective::RouteInput {
        name,
        prefix: r["addressPrefix"].as_str().unwrap_or_default().to_string(),
        next_hop_type: r["nextHopType"].as_str().unwrap_or_default().to_string(),
        next_hop_ip: r["nextHopIpAddress"].as_str().map(str::to_string),
    };
    let learned: Vec<crate::emulator::effective::RouteInput> = store
        .learned_routes
        .iter()
        .filter(|l| {
            l["virtualNetworkId"]
                .as_str()
                .is_some_and(|v| v.eq_ignore_ascii_case(vnet_id))
        })
        .map(|l| input(l, None))
        .collect();
    let user: Vec<crate::emulator::effective::RouteInput> = table
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
    crate::emulator::effective::table(
        &prefixes,
        &learned,
        table.map(|_| (user.as_slice(), disable)),
    )
}

/// `…/virtualNetworks/{v}/subnets/{s}` → (VNet ID, subnet name).
pub(super) fn split_subnet_id(id: &str) -> Option<(String, String)> {
    let lowered = id.to_ascii_lowercase();
    let at = lowered.rfind("/subnets/")?;
    let name = &id[at + "/subnets/".len()..];
    (!name.is_empty() && !name.contains('/')).then(|| (id[..at].to_string(), name.to_string()))
}
