//! Applies planned writes to an in-memory [`Inventory`] the way ARM would: the model the
//! property tests check plans against ("applying a plan yields a state whose plan is empty"),
//! and what `plan` can show as the predicted result. Pure.

use super::Write;
use crate::ids::RouteTableId;
use crate::model::{Inventory, RouteTable};

/// Applies writes in order. An error means the write would fail on ARM (missing resource,
/// table in use), which a correct plan never causes.
pub fn apply<'a>(
    inventory: &Inventory,
    writes: impl IntoIterator<Item = &'a Write>,
) -> Result<Inventory, String> {
    let mut inv = inventory.clone();
    for w in writes {
        apply_one(&mut inv, w)?;
    }
    Ok(inv)
}

fn table_mut<'a>(inv: &'a mut Inventory, id: &RouteTableId) -> Result<&'a mut RouteTable, String> {
    inv.route_tables
        .iter_mut()
        .find(|t| &t.id == id)
        .ok_or_else(|| format!("route table {id} does not exist"))
}

fn apply_one(inv: &mut Inventory, write: &Write) -> Result<(), String> {
    match write {
        Write::CreateRouteTable {
            table,
            location,
            tags,
            disable_bgp_route_propagation,
            routes,
        } => {
            if inv.route_table(table).is_some() {
                return Err(format!("route table {table} already exists"));
            }
            inv.route_tables.push(RouteTable {
                id: table.clone(),
                location: location.into(),
                tags: tags.clone().into(),
                disable_bgp_route_propagation: *disable_bgp_route_propagation,
                routes: routes.clone(),
                subnets: Vec::new(),
            });
        }
        Write::PutRoute { table, route, .. } => {
            let t = table_mut(inv, table)?;
            match t
                .routes
                .iter_mut()
                .find(|r| r.name.eq_ignore_ascii_case(&route.name))
            {
                Some(r) => *r = route.clone(),
                None => t.routes.push(route.clone()),
            }
        }
        Write::DeleteRoute { table, name, .. } => {
            let t = table_mut(inv, table)?;
            t.routes.retain(|r| !r.name.eq_ignore_ascii_case(name));
        }
        Write::AssociateSubnet { subnet, table } | Write::DissociateSubnet { subnet, table } => {
            let associate = matches!(write, Write::AssociateSubnet { .. });
            table_mut(inv, table)?;
            let s = inv
                .virtual_networks
                .iter_mut()
                .flat_map(|v| v.subnets.iter_mut())
                .find(|s| &s.id == subnet)
                .ok_or_else(|| format!("subnet {subnet} does not exist"))?;
            let old = s.route_table.take();
            if associate {
                s.route_table = Some(table.clone());
            }
            for t in &mut inv.route_tables {
                if Some(&t.id) == old.as_ref() {
                    t.subnets.retain(|x| x != subnet);
                }
                if associate && &t.id == table {
                    t.subnets.push(subnet.clone());
                }
            }
        }
        Write::DeleteRouteTable { table } => {
            let t = table_mut(inv, table)?;
            if !t.subnets.is_empty() {
                return Err(format!("InUseRouteTableCannotBeDeleted: {table}"));
            }
            inv.route_tables.retain(|t| &t.id != table);
        }
    }
    Ok(())
}
