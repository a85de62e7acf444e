//! Effective routes: how Azure combines a NIC's routes (computed by the emulator the way Azure
//! documents it) and which route a packet to a KMS address takes (checked by the verifier).
//!
//! Azure's rules (learn.microsoft.com, "Virtual network traffic routing", "How Azure selects a
//! route"):
//! - system (`Default`) routes: each VNet address prefix → `VnetLocal`; `0.0.0.0/0` →
//!   `Internet`; `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `100.64.0.0/10` → `None`;
//! - routes learned over BGP from a virtual network gateway (source `VirtualNetworkGateway`),
//!   unless the subnet's route table sets `disableBgpRoutePropagation`;
//! - user-defined routes of the subnet's route table (source `User`);
//! - the longest prefix wins; for the same prefix a user route beats a BGP route, which beats
//!   a system route. A route replaced by a more preferred one of the same prefix shows as
//!   `Invalid`.

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

/// A route as input to [`compute`]: prefix, next hop, next hop IP, and the user route's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInput {
    pub name: Option<String>,
    pub prefix: String,
    pub next_hop_type: NextHopType,
    pub next_hop_ip: Option<String>,
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

/// The effective routes of a NIC in a subnet of a VNet with these address prefixes, these
/// BGP-learned routes, and (if the subnet has one) its route table's routes and
/// `disableBgpRoutePropagation`.
pub fn compute(
    vnet_prefixes: &[String],
    learned: &[RouteInput],
    table: Option<(&[RouteInput], bool)>,
) -> Vec<EffectiveRoute> {
    let mut all: Vec<EffectiveRoute> = Vec::new();
    let mut push = |source: &str, r: &RouteInput| {
        all.push(EffectiveRoute {
            name: r.name.clone(),
            source: source.into(),
            state: "Active".into(),
            address_prefix: vec![r.prefix.clone()],
            next_hop_type: r.next_hop_type.clone(),
            next_hop_ip_address: r.next_hop_ip.iter().cloned().collect(),
        })
    };
    let system = |prefix: &str, hop: NextHopType| RouteInput {
        name: None,
        prefix: prefix.into(),
        next_hop_type: hop,
        next_hop_ip: None,
    };
    for p in vnet_prefixes {
        push("Default", &system(p, NextHopType::VnetLocal));
    }
    push("Default", &system("0.0.0.0/0", NextHopType::Internet));
    for p in [
        "10.0.0.0/8",
        "100.64.0.0/10",
        "172.16.0.0/12",
        "192.168.0.0/16",
    ] {
        push("Default", &system(p, NextHopType::None));
    }
    let propagate = !table.is_some_and(|(_, disable)| disable);
    if propagate {
        for r in learned {
            push("VirtualNetworkGateway", r);
        }
    }
    if let Some((routes, _)) = table {
        for r in routes {
            push("User", r);
        }
    }
    // Same prefix: only the most preferred source stays Active.
    let keys: Vec<Option<(u32, u8)>> = all
        .iter()
        .map(|r| r.address_prefix.first().and_then(|p| parse_prefix(p)))
        .collect();
    let ranks: Vec<u8> = all.iter().map(|r| rank(&r.source)).collect();
    for i in 0..all.len() {
        let beaten = (0..all.len()).any(|j| {
            j != i
                && keys[i].is_some()
                && keys[j] == keys[i]
                && (ranks[j] > ranks[i] || (ranks[j] == ranks[i] && j < i))
        });
        if beaten || keys[i].is_none() {
            all[i].state = "Invalid".into();
        }
    }
    all
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

    fn r(prefix: &str, hop: NextHopType) -> RouteInput {
        RouteInput {
            name: None,
            prefix: prefix.into(),
            next_hop_type: hop,
            next_hop_ip: None,
        }
    }

    const KMS: Ipv4Addr = Ipv4Addr::new(20, 118, 99, 224);

    #[test]
    fn without_anything_the_internet_default_route_wins() {
        let routes = compute(&["10.1.0.0/16".into()], &[], None);
        let w = winning_route(&routes, KMS).unwrap();
        assert_eq!(
            (w.source.as_str(), &w.next_hop_type),
            ("Default", &NextHopType::Internet)
        );
        let local = winning_route(&routes, Ipv4Addr::new(10, 1, 2, 3)).unwrap();
        assert_eq!(
            local.next_hop_type,
            NextHopType::VnetLocal,
            "longest prefix"
        );
    }

    #[test]
    fn a_bgp_default_route_forces_the_tunnel_and_invalidates_the_system_one() {
        let bgp = [r("0.0.0.0/0", NextHopType::VirtualNetworkGateway)];
        let routes = compute(&["10.1.0.0/16".into()], &bgp, None);
        let w = winning_route(&routes, KMS).unwrap();
        assert_eq!(w.next_hop_type, NextHopType::VirtualNetworkGateway);
        let system = routes
            .iter()
            .find(|e| e.source == "Default" && e.address_prefix == ["0.0.0.0/0"])
            .unwrap();
        assert_eq!(system.state, "Invalid");
        assert_eq!(check(&routes, &[KMS])[0].reason, "WrongNextHop");
    }

    #[test]
    fn a_user_route_beats_bgp_for_the_same_prefix() {
        let bgp = [r("20.118.99.224/32", NextHopType::VirtualNetworkGateway)];
        let user = [r("20.118.99.224/32", NextHopType::Internet)];
        let routes = compute(&[], &bgp, Some((&user, false)));
        let w = winning_route(&routes, KMS).unwrap();
        assert_eq!(w.source, "User");
        let bgp_entry = routes
            .iter()
            .find(|e| e.source == "VirtualNetworkGateway")
            .unwrap();
        assert_eq!(bgp_entry.state, "Invalid");
        assert!(check(&routes, &[KMS]).is_empty());
    }

    #[test]
    fn disabling_propagation_drops_bgp_routes() {
        let bgp = [r("0.0.0.0/0", NextHopType::VirtualNetworkGateway)];
        let routes = compute(&[], &bgp, Some((&[], true)));
        assert!(routes.iter().all(|e| e.source != "VirtualNetworkGateway"));
        assert_eq!(
            winning_route(&routes, KMS).unwrap().next_hop_type,
            NextHopType::Internet
        );
        // Reaches the Internet, but through the system route: not what kmsroute verifies.
        assert_eq!(check(&routes, &[KMS])[0].reason, "NotUserRoute");
    }

    #[test]
    fn a_more_specific_foreign_route_wins_over_a_broader_user_route() {
        let user = [
            r("20.118.99.0/24", NextHopType::Internet),
            RouteInput {
                name: Some("to-nva".into()),
                prefix: "20.118.99.224/32".into(),
                next_hop_type: NextHopType::VirtualAppliance,
                next_hop_ip: Some("10.0.0.4".into()),
            },
        ];
        let routes = compute(&[], &[], Some((&user, false)));
        let failures = check(&routes, &[KMS]);
        assert_eq!(failures.len(), 1);
        let winning = failures[0].winning.as_deref().unwrap();
        assert!(
            winning.contains("to-nva") && winning.contains("VirtualAppliance 10.0.0.4"),
            "{winning}"
        );
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
