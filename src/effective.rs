//! Effective routes as ARM reports them (`networkInterfaces/{nic}/effectiveRouteTable`) and
//! which route a packet to a KMS address takes (checked by the verifier): among the `Active`
//! entries the longest prefix wins; for the same prefix a user route beats a BGP route, which
//! beats a system route (learn.microsoft.com, "How Azure selects a route"). How Azure builds
//! the table is the emulator's own model (`emulator/effective.rs`), not this reading of it;
//! the tests here read Azure's official example.

use crate::model::NextHopType;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// One entry of `networkInterfaces/{nic}/effectiveRouteTable`, in ARM's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveRoute {
    /// The user route's name (ARM omits it for other sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Default`, `User`, `VirtualNetworkGateway` or `Unknown`.
    pub source: String,
    /// `Active` or `Invalid`.
    pub state: String,
    #[serde(default)]
    pub address_prefix: Vec<String>,
    pub next_hop_type: NextHopType,
    #[serde(default)]
    pub next_hop_ip_address: Vec<String>,
}

impl EffectiveRoute {
    pub fn is_active(&self) -> bool {
        self.state.eq_ignore_ascii_case("Active")
    }

    /// "User route kms-20-118-99-224 20.118.99.224/32 → Internet" and the like.
    pub fn describe(&self) -> String {
        let hop = match self.next_hop_ip_address.first() {
            Some(ip) => format!("{} {ip}", self.next_hop_type),
            None => self.next_hop_type.to_string(),
        };
        let name = self
            .name
            .as_deref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        format!(
            "{} route{name} {} -> {hop}",
            self.source,
            self.address_prefix.join(","),
        )
    }
}

/// `a.b.c.d/n` → (network, length); `None` for anything else (IPv6 is out of scope).
pub fn parse_prefix(p: &str) -> Option<(u32, u8)> {
    let (addr, len) = p.split_once('/')?;
    let addr: Ipv4Addr = addr.trim().parse().ok()?;
    let len: u8 = len.trim().parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = mask(len);
    Some((u32::from(addr) & mask, len))
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

/// True when `ip` falls in `prefix`.
pub fn contains(prefix: &str, ip: Ipv4Addr) -> bool {
    parse_prefix(prefix).is_some_and(|(net, len)| u32::from(ip) & mask(len) == net)
}

fn rank(source: &str) -> u8 {
    match source {
        "User" => 3,
        "VirtualNetworkGateway" => 2,
        "Default" => 1,
        _ => 0,
    }
}

/// The route a packet to `ip` takes: the active route with the longest matching prefix (ties,
/// which an ARM response should not contain, go to the more preferred source).
pub fn winning_route(routes: &[EffectiveRoute], ip: Ipv4Addr) -> Option<&EffectiveRoute> {
    routes
        .iter()
        .filter(|r| r.is_active())
        .filter_map(|r| {
            let best = r
                .address_prefix
                .iter()
                .filter(|p| contains(p, ip))
                .filter_map(|p| parse_prefix(p).map(|(_, len)| len))
                .max()?;
            Some((best, rank(&r.source), r))
        })
        .max_by_key(|(len, rank, _)| (*len, *rank))
        .map(|(_, _, r)| r)
}

/// Why a KMS address is not verified on a NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotVerified {
    pub address: Ipv4Addr,
    pub reason: String,
    /// The route that wins instead, described.
    pub winning: Option<String>,
}

/// Checks that every address leaves through a user route with next hop `Internet`.
pub fn check(routes: &[EffectiveRoute], addresses: &[Ipv4Addr]) -> Vec<NotVerified> {
    addresses
        .iter()
        .filter_map(|&address| match winning_route(routes, address) {
            None => Some(NotVerified {
                address,
                reason: "NoRoute".into(),
                winning: None,
            }),
            Some(r) if r.next_hop_type == NextHopType::Internet && r.source == "User" => None,
            Some(r) => Some(NotVerified {
                address,
                reason: if r.next_hop_type == NextHopType::Internet {
                    "NotUserRoute".into()
                } else {
                    "WrongNextHop".into()
                },
                winning: Some(r.describe()),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KMS: Ipv4Addr = Ipv4Addr::new(20, 118, 99, 224);

    /// `NetworkInterfaceEffectiveRouteTableList.json`: Azure's own example response (a NIC in
    /// 172.20.2.0/24 with only the system routes).
    fn official() -> Vec<EffectiveRoute> {
        let example: serde_json::Value = serde_json::from_str(include_str!(
            "../tests/fixtures/arm/2024-03-01/examples/NetworkInterfaceEffectiveRouteTableList.json"
        ))
        .unwrap();
        serde_json::from_value(example["responses"]["200"]["body"]["value"].clone()).unwrap()
    }

    fn entry(source: &str, state: &str, prefix: &str, hop: NextHopType) -> EffectiveRoute {
        EffectiveRoute {
            name: None,
            source: source.into(),
            state: state.into(),
            address_prefix: vec![prefix.into()],
            next_hop_type: hop,
            next_hop_ip_address: vec![],
        }
    }

    #[test]
    fn the_official_example_sends_kms_out_through_the_system_route_only() {
        let routes = official();
        assert_eq!(routes.len(), 6);
        let w = winning_route(&routes, KMS).unwrap();
        assert_eq!(
            (
                w.source.as_str(),
                &w.next_hop_type,
                w.address_prefix.as_slice()
            ),
            (
                "Default",
                &NextHopType::Internet,
                ["0.0.0.0/0".to_string()].as_slice()
            )
        );
        // Reaches the Internet, but not through a route kmsroute owns: not verified.
        let failures = check(&routes, &[KMS]);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].reason, "NotUserRoute");
        assert_eq!(
            failures[0].winning.as_deref(),
            Some("Default route 0.0.0.0/0 -> Internet")
        );
        // Longest prefix: the VNet's own range and the private ranges win where they match.
        let local = winning_route(&routes, Ipv4Addr::new(172, 20, 2, 9)).unwrap();
        assert_eq!(local.next_hop_type, NextHopType::VnetLocal);
        let private = winning_route(&routes, Ipv4Addr::new(10, 9, 9, 9)).unwrap();
        assert_eq!(private.next_hop_type, NextHopType::None);
    }

    #[test]
    fn a_user_host_route_to_the_internet_is_verified() {
        let mut routes = official();
        let mut user = entry("User", "Active", "20.118.99.224/32", NextHopType::Internet);
        user.name = Some("kms-20-118-99-224".into());
        routes.push(user);
        assert!(check(&routes, &[KMS]).is_empty());
        assert_eq!(
            winning_route(&routes, KMS).unwrap().name.as_deref(),
            Some("kms-20-118-99-224")
        );
    }

    #[test]
    fn forced_tunnelling_over_bgp_is_a_wrong_next_hop() {
        let mut routes = official();
        routes[1].state = "Invalid".into();
        routes.push(entry(
            "VirtualNetworkGateway",
            "Active",
            "0.0.0.0/0",
            NextHopType::VirtualNetworkGateway,
        ));
        let failures = check(&routes, &[KMS]);
        assert_eq!(failures[0].reason, "WrongNextHop");
        assert_eq!(
            winning_route(&routes, KMS).unwrap().next_hop_type,
            NextHopType::VirtualNetworkGateway
        );
    }

    #[test]
    fn invalid_entries_never_win_and_a_user_route_beats_bgp_for_one_prefix() {
        let mut routes = official();
        routes.push(entry(
            "VirtualNetworkGateway",
            "Active",
            "20.118.99.224/32",
            NextHopType::VirtualNetworkGateway,
        ));
        routes.push(entry(
            "User",
            "Active",
            "20.118.99.224/32",
            NextHopType::Internet,
        ));
        assert_eq!(winning_route(&routes, KMS).unwrap().source, "User");
        // The same user route marked Invalid (replaced) does not count.
        let last = routes.len() - 1;
        routes[last].state = "Invalid".into();
        assert_eq!(check(&routes, &[KMS])[0].reason, "WrongNextHop");
    }

    #[test]
    fn a_more_specific_foreign_route_wins_over_a_broader_user_route() {
        let mut routes = official();
        routes.push(entry(
            "User",
            "Active",
            "20.118.99.0/24",
            NextHopType::Internet,
        ));
        let mut nva = entry(
            "User",
            "Active",
            "20.118.99.224/32",
            NextHopType::VirtualAppliance,
        );
        nva.name = Some("to-nva".into());
        nva.next_hop_ip_address = vec!["10.0.0.4".into()];
        routes.push(nva);
        let failures = check(&routes, &[KMS]);
        assert_eq!(failures.len(), 1);
        let winning = failures[0].winning.as_deref().unwrap();
        assert!(
            winning.contains("to-nva") && winning.contains("VirtualAppliance 10.0.0.4"),
            "{winning}"
        );
    }

    #[test]
    fn no_route_at_all_is_no_route() {
        assert_eq!(check(&[], &[KMS])[0].reason, "NoRoute");
    }

    #[test]
    fn prefixes_parse_and_match() {
        assert!(contains("20.118.99.224/32", KMS));
        assert!(!contains("20.118.99.225/32", KMS));
        assert!(contains("0.0.0.0/0", KMS));
        assert!(contains("20.0.0.0/8", KMS));
        assert_eq!(parse_prefix("1.2.3.4/33"), None);
        assert_eq!(parse_prefix("nonsense"), None);
    }
}
