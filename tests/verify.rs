//! Issue 9: proving activation will work. The emulator computes effective routes the way Azure
//! does; the executor samples one NIC per managed route table, checks every KMS address, and
//! resolves the KMS names through an injected resolver. Real client, emulator over HTTP.

#[path = "support/arm.rs"]
mod harness;

use kmsroute::api::DesiredState;
use kmsroute::azure::NetworkApi;
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::policy::BucketShape;
use kmsroute::dns::StaticResolver;
use kmsroute::effective::{EffectiveRoute, winning_route};
use kmsroute::emulator::{Config, EmulatorHandle, Seed};
use kmsroute::executor::{self, PassDeps, PassParams, Report, RunMode};
use kmsroute::model::NextHopType;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::sync::Arc;

const S1: &str = "11111111-1111-1111-1111-111111111111";
const S2: &str = "22222222-2222-2222-2222-222222222222";
const KMS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(20, 118, 99, 224),
    Ipv4Addr::new(40, 83, 235, 53),
    Ipv4Addr::new(23, 102, 135, 246),
];

fn estate() -> Seed {
    serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap()
}

/// A NIC of a VM in `sub/rg/vnet/subnet`.
fn nic(sub: &str, rg: &str, vnet: &str, subnet: &str, name: &str) -> Value {
    let p = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network");
    json!({"id": format!("{p}/networkInterfaces/{name}"), "location": "westeurope", "properties": {
        "virtualMachine": {"id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}-vm")},
        "ipConfigurations": [{"name": "ipconfig1", "properties": {"subnet": {"id": format!("{p}/virtualNetworks/{vnet}/subnets/{subnet}")}}}]}})
}

fn nic_id(sub: &str, rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/networkInterfaces/{name}"
    )
}

/// The demo estate with a VM NIC in every workload subnet of both spokes.
fn estate_with_nics() -> Seed {
    let mut seed = estate();
    for (subnet, name) in [("web", "web-01"), ("api", "api-01"), ("data", "data-01")] {
        seed.resources
            .push(nic(S1, "rg-spoke1", "vnet-spoke1", subnet, name));
    }
    for (subnet, name) in [("legacy", "legacy-01"), ("private", "private-01")] {
        seed.resources
            .push(nic(S2, "rg-spoke2", "vnet-spoke2", subnet, name));
    }
    seed
}

fn policy(extra: &str) -> DesiredState {
    harness::example_policy(extra)
}

async fn setup(seed: Seed, settings: ClientSettings) -> (EmulatorHandle, AzureNetworkApi) {
    harness::emulator_and_client(Config::default(), seed, settings).await
}

async fn run(
    api: &AzureNetworkApi,
    p: &DesiredState,
    params: PassParams,
    deps: PassDeps,
) -> Report {
    executor::pass(api, std::slice::from_ref(p), &params, &deps, &|_| {})
        .await
        .unwrap()
}

fn winner(routes: &[EffectiveRoute], ip: Ipv4Addr) -> (String, NextHopType) {
    let r = winning_route(routes, ip).expect("a route");
    (r.source.clone(), r.next_hop_type.clone())
}

#[tokio::test]
async fn forced_tunnel_before_internet_after_for_every_kms_address() {
    let (_em, api) = setup(estate_with_nics(), ClientSettings::default()).await;
    let nics = [
        nic_id(S1, "rg-spoke1", "vm-app-01-nic"),
        nic_id(S1, "rg-spoke1", "web-01"),
        nic_id(S1, "rg-spoke1", "data-01"),
    ];
    for n in &nics {
        let routes = api.effective_routes(n).await.unwrap();
        for ip in KMS {
            // web sits on rt-spoke1-shared, whose own 0.0.0.0/0 goes to the firewall; app and
            // data have no table, so the BGP-learned default sends them on-premises.
            let expected = if n.ends_with("/web-01") {
                ("User".to_string(), NextHopType::VirtualAppliance)
            } else {
                (
                    "VirtualNetworkGateway".to_string(),
                    NextHopType::VirtualNetworkGateway,
                )
            };
            assert_eq!(winner(&routes, ip), expected, "before: {n} and {ip}");
        }
        // The system default route is still listed, replaced by the BGP one.
        let system = routes
            .iter()
            .find(|r| r.source == "Default" && r.address_prefix == ["0.0.0.0/0"])
            .unwrap();
        assert_eq!(system.state, "Invalid");
    }
    run(
        &api,
        &policy(""),
        PassParams::default(),
        PassDeps::default(),
    )
    .await;
    for n in &nics {
        let routes = api.effective_routes(n).await.unwrap();
        for ip in KMS {
            assert_eq!(
                winner(&routes, ip),
                ("User".into(), NextHopType::Internet),
                "after: {n} sends {ip} to the Internet"
            );
        }
        // Everything else still goes where it went: only /32s were added.
        assert_ne!(
            winner(&routes, Ipv4Addr::new(8, 8, 8, 8)).1,
            NextHopType::Internet
        );
    }
}

#[tokio::test]
async fn verification_passes_on_repaired_tables_and_names_the_foreign_route_on_a_conflict() {
    let (_em, api) = setup(estate_with_nics(), ClientSettings::default()).await;
    let p = policy("  verification:\n    effectiveRoutes: true\n");
    let report = run(&api, &p, PassParams::default(), PassDeps::default()).await;
    let mine = &report.policies[0];
    let v = mine.verification.as_ref().expect("verification ran");
    // Managed tables, each with a NIC: rt-spoke1-shared (web, api), the created tables of app,
    // data and private, and rt-spoke2-legacy (conflict).
    assert_eq!(v.checked, 5, "{v:?}");
    assert_eq!((v.verified, v.not_verified, v.failed), (4, 1, 0), "{v:?}");
    assert_eq!(mine.summary.verified, 4);
    assert_eq!(mine.summary.not_verified, 1);
    let problem = mine
        .problems
        .iter()
        .find(|p| p.reason == "NotVerified")
        .expect("a NotVerified problem");
    assert!(
        problem.subnet_id.ends_with("/subnets/legacy"),
        "{problem:?}"
    );
    assert!(
        problem.message.contains("23.102.135.246")
            && problem.message.contains("legacy-kms")
            && problem.message.contains("VirtualAppliance"),
        "the winning foreign route is named: {}",
        problem.message
    );
    // The egress warning stays alongside.
    assert_eq!(mine.egress_warnings, 1);
    assert!(
        mine.problems
            .iter()
            .any(|p| p.reason == "NoInternetEgress" && p.subnet_id.ends_with("/subnets/private"))
    );
}

#[tokio::test]
async fn a_route_table_that_disables_bgp_propagation_drops_the_learned_routes() {
    let mut seed = estate_with_nics();
    for r in &mut seed.resources {
        if r["id"]
            .as_str()
            .unwrap()
            .ends_with("/routeTables/rt-spoke1-shared")
        {
            r["properties"]["disableBgpRoutePropagation"] = json!(true);
        }
    }
    let (_em, api) = setup(seed, ClientSettings::default()).await;
    let web = api
        .effective_routes(&nic_id(S1, "rg-spoke1", "web-01"))
        .await
        .unwrap();
    assert!(
        web.iter().all(|r| r.source != "VirtualNetworkGateway"),
        "no BGP route on a table with propagation disabled"
    );
    // The table's own 0.0.0.0/0 to the firewall still wins.
    assert_eq!(
        winner(&web, KMS[0]),
        ("User".into(), NextHopType::VirtualAppliance)
    );
    // Same VNet, no table: the learned route still applies.
    let app = api
        .effective_routes(&nic_id(S1, "rg-spoke1", "vm-app-01-nic"))
        .await
        .unwrap();
    assert_eq!(winner(&app, KMS[0]).1, NextHopType::VirtualNetworkGateway);
}

#[tokio::test]
async fn for_the_same_prefix_a_user_route_beats_bgp_which_beats_the_system_route() {
    // rt-spoke1-shared has its own 0.0.0.0/0 to the firewall; the VNet learns 0.0.0.0/0 over
    // BGP; Azure adds the system 0.0.0.0/0.
    let (_em, api) = setup(estate_with_nics(), ClientSettings::default()).await;
    let routes = api
        .effective_routes(&nic_id(S1, "rg-spoke1", "web-01"))
        .await
        .unwrap();
    let defaults: Vec<(&str, &str)> = routes
        .iter()
        .filter(|r| r.address_prefix == ["0.0.0.0/0"])
        .map(|r| (r.source.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        defaults,
        [
            ("Default", "Invalid"),
            ("VirtualNetworkGateway", "Invalid"),
            ("User", "Active")
        ]
    );
    assert_eq!(
        winner(&routes, Ipv4Addr::new(8, 8, 8, 8)),
        ("User".into(), NextHopType::VirtualAppliance)
    );
}

fn resolver(
    answers: &[(&str, Result<Vec<Ipv4Addr>, kmsroute::dns::DnsError>)],
) -> Arc<StaticResolver> {
    Arc::new(StaticResolver {
        answers: answers
            .iter()
            .map(|(h, a)| (h.to_string(), a.clone()))
            .collect(),
    })
}

#[tokio::test]
async fn dns_drift_is_reported_not_routed_and_dns_failures_are_not_fatal() {
    let (em, api) = setup(estate(), ClientSettings::default()).await;
    let new_ip = Ipv4Addr::new(20, 33, 44, 55);
    let p = policy("  # resolve the KMS names\n").clone();
    let mut p = p;
    p.resolve_dns = true;
    let deps = PassDeps {
        resolver: Some(resolver(&[
            ("azkms.core.windows.net", Ok(vec![KMS[0], new_ip])),
            ("kms.core.windows.net", Err("SERVFAIL".into())),
        ])),
        ..PassDeps::default()
    };
    let report = run(&api, &p, PassParams::default(), deps).await;
    let mine = &report.policies[0];
    let dns = mine.dns.as_ref().unwrap();
    assert_eq!(dns.drift, [new_ip]);
    assert!(!dns.routed);
    let drift = mine
        .problems
        .iter()
        .find(|p| p.reason == "KmsAddressDrift")
        .unwrap();
    assert!(drift.message.contains("20.33.44.55"), "{}", drift.message);
    assert!(
        mine.problems
            .iter()
            .any(|p| p.reason == "DnsFailed" && p.message.contains("SERVFAIL"))
    );
    // The pass still converged on the catalog addresses, and nothing routes the new one.
    assert_eq!(report.writes_failed(), 0);
    assert!(report.writes_done() > 0);
    let dump = serde_json::to_string(&em.dump()).unwrap();
    assert!(!dump.contains("20.33.44.55"));
}

#[tokio::test]
async fn resolved_addresses_are_routed_only_when_asked_and_only_if_public() {
    let (em, api) = setup(estate(), ClientSettings::default()).await;
    let new_ip = Ipv4Addr::new(20, 33, 44, 55);
    let mut p = policy("");
    p.resolve_dns = true;
    p.route_resolved_addresses = true;
    let deps = PassDeps {
        resolver: Some(resolver(&[
            (
                "azkms.core.windows.net",
                Ok(vec![KMS[0], new_ip, Ipv4Addr::new(10, 9, 9, 9)]),
            ),
            ("kms.core.windows.net", Ok(vec![KMS[0]])),
        ])),
        ..PassDeps::default()
    };
    let report = run(&api, &p, PassParams::default(), deps).await;
    let mine = &report.policies[0];
    let dns = mine.dns.as_ref().unwrap();
    assert!(dns.routed);
    assert!(dns.errors.iter().any(|e| e.contains("10.9.9.9")), "{dns:?}");
    assert!(mine.destinations.contains(&"20.33.44.55/32".to_string()));
    let dump = serde_json::to_string(&em.dump()).unwrap();
    assert!(
        dump.contains("20.33.44.55/32"),
        "the resolved address is routed"
    );
    assert!(
        !dump.contains("10.9.9.9"),
        "a private answer is never routed"
    );
}

#[tokio::test]
async fn verification_reads_are_counted_and_held_to_their_own_budget() {
    let settings = ClientSettings {
        verification_limit: Some(BucketShape {
            capacity: 2.0,
            refill_per_sec: 0.0,
        }),
        ..ClientSettings::default()
    };
    let (em, api) = setup(estate_with_nics(), settings).await;
    let p = policy("  verification:\n    effectiveRoutes: true\n");
    em.reset_stats();
    let report = run(&api, &p, PassParams::default(), PassDeps::default()).await;
    let v = report.policies[0].verification.clone().unwrap();
    assert_eq!(v.checked, 2, "{v:?}");
    assert_eq!(v.not_checked, 3, "the rest wait for a later pass: {v:?}");
    assert_eq!(api.metrics.verification_count("ok"), 2);
    assert_eq!(api.metrics.verification_count("limited"), 3);
    assert_eq!(
        em.stats()
            .by_operation
            .get("NetworkInterfaces_GetEffectiveRouteTable 202")
            .copied(),
        Some(2),
        "a limited read is never sent"
    );
    let text = api.metrics.render();
    assert!(text.contains("kmsroute_effective_route_reads_total{outcome=\"limited\"} 3"));
    // The per-pass cap works the same way: one table per pass, rotating.
    let (_em, api) = setup(estate_with_nics(), ClientSettings::default()).await;
    let capped = policy("  verification:\n    effectiveRoutes: true\n    maxNicsPerPass: 1\n");
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..5 {
        let r = run(
            &api,
            &capped,
            PassParams {
                round,
                mode: RunMode::Write,
                ..PassParams::default()
            },
            PassDeps::default(),
        )
        .await;
        let v = r.policies[0].verification.clone().unwrap();
        assert_eq!(v.checked, 1);
        seen.insert(
            r.policies[0]
                .problems
                .iter()
                .any(|p| p.reason == "NotVerified"),
        );
    }
    assert_eq!(
        seen.len(),
        2,
        "rotation reached the conflicting table and others"
    );
}
