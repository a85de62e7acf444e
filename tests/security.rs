//! Issue 8, security: what an attacker or a lying ARM could make kmsroute do. The secrets test
//! (tokens in logs, Events, status) runs the `kmsroute run` process in `tests/controller.rs`
//! (`no_secret_reaches_logs_events_or_status`); the static-token refusal is in `tests/cli.rs`.

use kmsroute::api::{KmsRoutePolicySpec, validate};
use kmsroute::azure::client::{convert_table, convert_vnet};
use kmsroute::catalog::Cloud;
use kmsroute::ids::{RouteTableId, SubnetId, VnetId};
use kmsroute::model::{Inventory, NextHopType, Route, RouteTable, Subnet, VirtualNetwork};
use kmsroute::plan::{ErrorReason, Verdict, Write, plan};
use serde_json::json;
use std::process::Command;

const A: &str = "00000000-0000-0000-0000-00000000000a";
const B: &str = "00000000-0000-0000-0000-00000000000b";

fn policy(conflict: &str) -> kmsroute::api::DesiredState {
    let spec: KmsRoutePolicySpec = serde_json::from_value(json!({
        "selector": {"subscriptions": [A]},
        "conflictPolicy": conflict,
    }))
    .unwrap();
    validate("p", None, &spec, Cloud::AzurePublic)
        .unwrap()
        .desired
}

fn table(sub: &str, name: &str, routes: Vec<Route>) -> RouteTable {
    RouteTable {
        id: RouteTableId::new(sub, "rg", name),
        location: "westeurope".into(),
        tags: Default::default(),
        disable_bgp_route_propagation: false,
        routes,
        subnets: vec![],
    }
}

fn vnet(sub: &str, subnet_table: Option<RouteTableId>) -> VirtualNetwork {
    VirtualNetwork {
        id: VnetId::new(sub, "rg", "v"),
        location: "westeurope".into(),
        tags: Default::default(),
        subnets: vec![Subnet {
            id: SubnetId::new(sub, "rg", "v", "app"),
            route_table: subnet_table,
            nat_gateway: false,
            default_outbound_access: None,
        }],
    }
}

#[test]
fn tls_verification_is_never_switched_off_anywhere() {
    let forbidden = [
        "danger_accept_invalid",
        "accept_invalid_certs",
        "accept_invalid_hostnames",
        "NoCertificateVerification",
        "dangerous()",
        "insecure-skip-tls-verify",
        "InsecureSkipVerify",
    ];
    let mut scanned = 0;
    let mut stack = vec![
        std::path::PathBuf::from("src"),
        "charts".into(),
        "deploy".into(),
    ];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        scanned += 1;
        for f in forbidden {
            assert!(!text.contains(f), "{} contains {f}", p.display());
        }
    }
    assert!(scanned > 20, "scanned only {scanned} files");
}

#[test]
fn plain_http_is_refused_off_loopback_before_any_connection() {
    let out = Command::new(env!("CARGO_BIN_EXE_kmsroute"))
        .args([
            "plan",
            "-f",
            "examples/kmsroutepolicy.yaml",
            "--arm-endpoint",
            "http://192.0.2.10",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("must use https"), "{err}");
}

#[test]
fn a_listing_cannot_smuggle_in_resources_of_another_subscription() {
    use azure_mgmt_network::models;
    let page: models::VirtualNetworkListResult = serde_json::from_value(json!({"value": [
        {"id": format!("/subscriptions/{B}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/evil"), "location": "westeurope",
         "properties": {"subnets": []}},
        {"id": format!("/SUBSCRIPTIONS/{}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v", A.to_uppercase()), "location": "westeurope",
         "properties": {"subnets": [
            {"id": format!("/subscriptions/{A}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/ok"), "properties": {"addressPrefix": "10.0.0.0/24"}},
            {"id": format!("/subscriptions/{B}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/other-sub"), "properties": {"addressPrefix": "10.0.1.0/24"}},
            {"id": format!("/subscriptions/{A}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/w/subnets/other-vnet"), "properties": {"addressPrefix": "10.0.2.0/24"}}
         ]}}
    ]}))
    .unwrap();
    let kept: Vec<VirtualNetwork> = page
        .value
        .into_iter()
        .filter_map(|v| convert_vnet(v, A))
        .collect();
    assert_eq!(kept.len(), 1, "the VNet of subscription b is dropped");
    let names: Vec<&str> = kept[0].subnets.iter().map(|s| s.id.name()).collect();
    assert_eq!(names, ["ok"], "subnets not under their VNet are dropped");
    // IDs that differ only in case are the same resource.
    assert_eq!(kept[0].id, VnetId::new(A, "RG", "V"));
    let tables: models::RouteTableListResult = serde_json::from_value(json!({"value": [
        {"id": format!("/subscriptions/{B}/resourceGroups/rg/providers/Microsoft.Network/routeTables/evil"), "location": "westeurope", "properties": {"routes": []}}
    ]}))
    .unwrap();
    assert!(
        tables
            .value
            .into_iter()
            .all(|t| convert_table(t, A).is_none())
    );
}

#[test]
fn a_table_of_another_subscription_is_never_written_even_if_arm_says_the_subnet_uses_it() {
    let foreign = table(B, "rt", vec![]);
    let inv = Inventory {
        subscriptions: [A.to_string(), B.to_string()].into(),
        virtual_networks: vec![vnet(A, Some(foreign.id.clone()))],
        route_tables: vec![foreign],
        ..Inventory::default()
    };
    let p = plan(&[policy("Report")], &inv);
    assert!(p.writes.is_empty(), "{:?}", p.writes);
    assert!(matches!(
        p.verdicts[0].verdict,
        Verdict::Error {
            reason: ErrorReason::RouteTableOutOfScope,
            ..
        }
    ));
}

#[test]
fn ids_that_differ_only_in_case_name_one_table_and_one_subnet() {
    let t = table(A, "rt", vec![]);
    let upper = RouteTableId::parse(&t.id.as_str().to_uppercase()).unwrap();
    let inv = Inventory {
        subscriptions: [A.to_string()].into(),
        virtual_networks: vec![vnet(A, Some(upper))],
        route_tables: vec![t.clone()],
        ..Inventory::default()
    };
    let p = plan(&[policy("Report")], &inv);
    // Routes go into the one existing table; no second table is created, nothing re-associated.
    assert_eq!(p.writes.len(), 3, "{:?}", p.writes);
    for w in &p.writes {
        match &w.write {
            Write::PutRoute { table, .. } => assert_eq!(table, &t.id),
            other => panic!("unexpected {other}"),
        }
    }
}

#[test]
fn no_route_broader_than_a_host_route_is_ever_written_to_internet() {
    // An owned-looking route with a broad prefix, and a foreign /32 to an NVA (Replace).
    let t = table(
        A,
        "rt",
        vec![
            Route {
                name: "kms-20-118-99-224".into(),
                address_prefix: "0.0.0.0/0".into(),
                next_hop_type: NextHopType::Internet,
                next_hop_ip_address: None,
            },
            Route {
                name: "legacy".into(),
                address_prefix: "40.83.235.53/32".into(),
                next_hop_type: NextHopType::VirtualAppliance,
                next_hop_ip_address: Some("10.0.0.4".into()),
            },
        ],
    );
    let inv = Inventory {
        subscriptions: [A.to_string()].into(),
        virtual_networks: vec![vnet(A, Some(t.id.clone()))],
        route_tables: vec![t],
        ..Inventory::default()
    };
    let p = plan(&[policy("Replace")], &inv);
    assert!(!p.writes.is_empty());
    for w in &p.writes {
        if let Write::PutRoute { route, .. } = &w.write {
            assert!(route.address_prefix.ends_with("/32"), "{}", w.write);
            assert_eq!(route.next_hop_type, NextHopType::Internet);
        }
    }
    // And the broad prefix is fixed, not kept: the owned route is rewritten as a /32.
    assert!(p.writes.iter().any(|w| matches!(&w.write,
        Write::PutRoute { route, .. } if route.name == "kms-20-118-99-224" && route.address_prefix == "20.118.99.224/32")));
    // Input can never ask for a broad prefix in the first place.
    for bad in [
        "0.0.0.0/0",
        "20.118.99.0/24",
        "20.118.99.224/31",
        "10.0.0.4",
        "::/0",
    ] {
        let spec: KmsRoutePolicySpec = serde_json::from_value(json!({
            "selector": {"subscriptions": [A]},
            "kms": {"additionalAddresses": [bad]},
        }))
        .unwrap();
        assert!(
            validate("p", None, &spec, Cloud::AzurePublic).is_err(),
            "{bad} was accepted"
        );
    }
}
