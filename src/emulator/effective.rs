//! The emulator's own model of how Azure combines a NIC's routes into its effective route
//! table — written apart from the product's reading of that table (`crate::effective`), so the
//! stand-in for Azure is an independent check of the verifier rather than the same code twice.
//!
//! Azure's rules (learn.microsoft.com, "Virtual network traffic routing", "How Azure selects a
//! route"):
//! - system (`Default`) routes: each VNet address prefix → `VnetLocal`; `0.0.0.0/0` →
//!   `Internet`; `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `100.64.0.0/10` → `None`;
//! - routes learned over BGP from a virtual network gateway (source `VirtualNetworkGateway`),
//!   unless the subnet's route table sets `disableBgpRoutePropagation`;
//! - user-defined routes of the subnet's route table (source `User`);
//! - for the same prefix a user route beats a BGP route, which beats a system route; the
//!   routes so replaced show as `Invalid`. (Which route a packet takes — the longest prefix
//!   among the active ones — is the reader's business, not the table's.)

use serde_json::{Value, json};
use std::net::Ipv4Addr;

/// A route as it goes in: prefix, next hop type as ARM spells it, next hop IP, and the user
/// route's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInput {
    pub name: Option<String>,
    pub prefix: String,
    pub next_hop_type: String,
    pub next_hop_ip: Option<String>,
}

/// `a.b.c.d/n` → (network, length), the network masked; `None` for anything else.
pub fn network(prefix: &str) -> Option<(u32, u8)> {
    let (addr, len) = prefix.split_once('/')?;
    let addr: Ipv4Addr = addr.trim().parse().ok()?;
    let len: u8 = len.trim().parse().ok().filter(|l| *l <= 32)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Some((u32::from(addr) & mask, len))
}

/// Azure's preference among sources for one prefix.
fn preference(source: &str) -> u8 {
    match source {
        "User" => 3,
        "VirtualNetworkGateway" => 2,
        "Default" => 1,
        _ => 0,
    }
}

/// The `value` of `effectiveRouteTable` for a NIC in a subnet of a VNet with these address
/// prefixes, these BGP-learned routes, and (if the subnet has one) its route table's routes
/// and `disableBgpRoutePropagation`: entries in ARM's shape (`source`, `state`,
/// `addressPrefix`, `nextHopType`, `nextHopIpAddress`, and `name` for a user route).
pub fn table(
    vnet_prefixes: &[String],
    learned: &[RouteInput],
    user: Option<(&[RouteInput], bool)>,
) -> Vec<Value> {
    let system = |prefix: &str, hop: &str| RouteInput {
        name: None,
        prefix: prefix.into(),
        next_hop_type: hop.into(),
        next_hop_ip: None,
    };
    let mut all: Vec<(&str, RouteInput)> = vnet_prefixes
        .iter()
        .map(|p| ("Default", system(p, "VnetLocal")))
        .collect();
    all.push(("Default", system("0.0.0.0/0", "Internet")));
    for p in [
        "10.0.0.0/8",
        "100.64.0.0/10",
        "172.16.0.0/12",
        "192.168.0.0/16",
    ] {
        all.push(("Default", system(p, "None")));
    }
    if !user.is_some_and(|(_, disable)| disable) {
        all.extend(learned.iter().map(|r| ("VirtualNetworkGateway", r.clone())));
    }
    if let Some((routes, _)) = user {
        all.extend(routes.iter().map(|r| ("User", r.clone())));
    }
    let networks: Vec<Option<(u32, u8)>> = all.iter().map(|(_, r)| network(&r.prefix)).collect();
    (0..all.len())
        .map(|i| {
            let (source, r) = &all[i];
            // Only the most preferred source of a prefix (the first of equals) stays Active.
            let replaced = (0..all.len()).any(|j| {
                j != i
                    && networks[j] == networks[i]
                    && (preference(all[j].0) > preference(source)
                        || (preference(all[j].0) == preference(source) && j < i))
            });
            let state = if replaced || networks[i].is_none() {
                "Invalid"
            } else {
                "Active"
            };
            let mut entry = json!({
                "source": source,
                "state": state,
                "addressPrefix": [r.prefix],
                "nextHopType": r.next_hop_type,
                "nextHopIpAddress": r.next_hop_ip.iter().collect::<Vec<_>>(),
            });
            if let Some(name) = &r.name {
                entry["name"] = json!(name);
            }
            entry
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(prefix: &str, hop: &str) -> RouteInput {
        RouteInput {
            name: None,
            prefix: prefix.into(),
            next_hop_type: hop.into(),
            next_hop_ip: None,
        }
    }

    fn states<'a>(t: &'a [Value], source: &str, prefix: &str) -> Vec<&'a str> {
        t.iter()
            .filter(|e| e["source"] == source && e["addressPrefix"][0] == prefix)
            .filter_map(|e| e["state"].as_str())
            .collect()
    }

    #[test]
    fn a_nic_with_system_routes_only_gets_azures_official_example() {
        let example: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/arm/2024-03-01/examples/NetworkInterfaceEffectiveRouteTableList.json"
        ))
        .unwrap();
        let expected = &example["responses"]["200"]["body"]["value"];
        assert_eq!(
            &json!(table(&["172.20.2.0/24".into()], &[], None)),
            expected
        );
    }

    #[test]
    fn the_system_routes_are_there_without_anything_else() {
        let t = table(&["10.1.0.0/16".into()], &[], None);
        assert_eq!(t.len(), 6);
        assert_eq!(states(&t, "Default", "0.0.0.0/0"), ["Active"]);
        assert_eq!(states(&t, "Default", "10.1.0.0/16"), ["Active"]);
        assert_eq!(t[0]["nextHopType"], "VnetLocal");
    }

    #[test]
    fn bgp_beats_system_and_user_beats_bgp_for_one_prefix() {
        let bgp = [r("0.0.0.0/0", "VirtualNetworkGateway")];
        let user = [r("0.0.0.0/0", "VirtualAppliance")];
        let t = table(&[], &bgp, None);
        assert_eq!(states(&t, "Default", "0.0.0.0/0"), ["Invalid"]);
        assert_eq!(states(&t, "VirtualNetworkGateway", "0.0.0.0/0"), ["Active"]);
        let t = table(&[], &bgp, Some((&user, false)));
        assert_eq!(
            states(&t, "VirtualNetworkGateway", "0.0.0.0/0"),
            ["Invalid"]
        );
        assert_eq!(states(&t, "User", "0.0.0.0/0"), ["Active"]);
    }

    #[test]
    fn disabling_propagation_drops_learned_routes() {
        let bgp = [r("0.0.0.0/0", "VirtualNetworkGateway")];
        let t = table(&[], &bgp, Some((&[], true)));
        assert!(t.iter().all(|e| e["source"] != "VirtualNetworkGateway"));
        assert_eq!(states(&t, "Default", "0.0.0.0/0"), ["Active"]);
    }

    #[test]
    fn a_user_route_keeps_its_name_and_next_hop_address() {
        let user = [RouteInput {
            name: Some("to-nva".into()),
            next_hop_ip: Some("10.0.0.4".into()),
            ..r("20.118.99.224/32", "VirtualAppliance")
        }];
        let t = table(&[], &[], Some((&user, false)));
        let e = t.iter().find(|e| e["source"] == "User").unwrap();
        assert_eq!(e["name"], "to-nva");
        assert_eq!(e["nextHopIpAddress"], json!(["10.0.0.4"]));
        assert!(
            t.iter()
                .filter(|e| e["source"] != "User")
                .all(|e| e.get("name").is_none())
        );
    }

    #[test]
    fn networks_are_masked_and_bad_prefixes_refused() {
        assert_eq!(network("10.1.2.3/16"), network("10.1.0.0/16"));
        assert_eq!(network("0.0.0.0/0"), Some((0, 0)));
        assert_eq!(network("1.2.3.4/33"), None);
        assert_eq!(network("AzureCloud"), None);
    }
}
