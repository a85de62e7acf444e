//! The real ARM client (`azure_mgmt_network` + our pipeline policy) against the emulator over
//! HTTP: listing with paging, writes, the subnet-PUT trap avoided, 412/429/timeouts/auth.

#[path = "support/arm.rs"]
mod harness;

use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::credential::StaticToken;
use kmsroute::azure::policy::RetrySettings;
use kmsroute::azure::{ErrorClass, NetworkApi};
use kmsroute::emulator::{self, Config, EmulatorHandle, FaultRule, OtherWrite, Seed};
use kmsroute::ids::{RouteTableId, SubnetId};
use kmsroute::model::{NextHopType, Route};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SUB: &str = "00000000-0000-0000-0000-000000000001";
const SUB2: &str = "00000000-0000-0000-0000-000000000002";

fn rg(sub: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Network")
}

async fn emulator(config: Config, resources: Vec<Value>) -> EmulatorHandle {
    let seed = Seed {
        resources,
        ..Seed::default()
    };
    harness::emulator(config, seed).await
}

fn client(em: &EmulatorHandle, retry: RetrySettings) -> AzureNetworkApi {
    harness::client(
        em,
        ClientSettings {
            retry,
            ..ClientSettings::default()
        },
    )
}

fn quick_retry() -> RetrySettings {
    RetrySettings {
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        timeout: Duration::from_secs(10),
        ..RetrySettings::default()
    }
}

fn vnet(sub: &str, name: &str, subnets: Value) -> Value {
    json!({"id": format!("{}/virtualNetworks/{name}", rg(sub)), "location": "westeurope", "tags": {"env": "prod"},
           "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]}, "subnets": subnets}})
}

fn subnet(sub: &str, vnet: &str, name: &str, props: Value) -> Value {
    json!({"id": format!("{}/virtualNetworks/{vnet}/subnets/{name}", rg(sub)), "name": name, "properties": props})
}

fn table(sub: &str, name: &str) -> Value {
    json!({"id": format!("{}/routeTables/{name}", rg(sub)), "location": "westeurope", "properties": {"routes": [
        {"name": "to-fw", "properties": {"addressPrefix": "0.0.0.0/0", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.0.4"}}
    ]}})
}

fn kms_route(ip: &str) -> Route {
    Route {
        name: format!("kms-{}", ip.replace('.', "-")).into(),
        address_prefix: format!("{ip}/32").into(),
        next_hop_type: NextHopType::Internet,
        next_hop_ip_address: None,
    }
}

fn subnet_json(em: &EmulatorHandle, id: &str) -> Value {
    let (vnet, name) = id.rsplit_once("/subnets/").unwrap();
    em.dump()
        .resources
        .into_iter()
        .find(|r| r["id"].as_str().unwrap().eq_ignore_ascii_case(vnet))
        .unwrap()["properties"]["subnets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn inventory_lists_every_subscription_following_next_links() {
    let mut resources = Vec::new();
    for sub in [SUB, SUB2] {
        for v in 0..3 {
            resources.push(vnet(
                sub,
                &format!("v{v}"),
                json!([subnet(
                    sub,
                    &format!("v{v}"),
                    "app",
                    json!({"addressPrefix": "10.0.1.0/24"})
                )]),
            ));
        }
        for t in 0..5 {
            resources.push(table(sub, &format!("rt{t}")));
        }
    }
    let em = emulator(
        Config {
            page_size: 2,
            ..Config::default()
        },
        resources,
    )
    .await;
    let api = client(&em, quick_retry());
    let subs: BTreeSet<String> = [SUB.to_string(), SUB2.to_string()].into();
    let inv = api.inventory(&subs).await.unwrap();
    assert_eq!(inv.virtual_networks.len(), 6);
    assert_eq!(inv.route_tables.len(), 10);
    assert_eq!(inv.subscriptions, subs);
    assert_eq!(
        inv.route_tables[0].routes[0].next_hop_type,
        NextHopType::VirtualAppliance
    );
    assert_eq!(
        inv.virtual_networks[0]
            .tags
            .get("env")
            .map(kmsroute::model::Text::as_str),
        Some("prod")
    );
    let stats = em.stats();
    // 3 VNets at 2 a page = 2 pages; 5 tables = 3 pages; per subscription.
    assert_eq!(
        stats.by_operation.get("VirtualNetworks_ListAll 200"),
        Some(&4)
    );
    assert_eq!(stats.by_operation.get("RouteTables_ListAll 200"), Some(&6));
    assert_eq!(stats.writes, 0);
}

#[tokio::test]
async fn create_table_put_routes_and_associate_through_the_real_client() {
    let s = subnet(SUB, "hub", "app", json!({"addressPrefix": "10.0.1.0/24"}));
    let em = emulator(Config::default(), vec![vnet(SUB, "hub", json!([s]))]).await;
    let api = client(&em, quick_retry());
    let t = RouteTableId::new(SUB, "rg", "hub-app-kms");
    let tags = BTreeMap::from([("managed-by".to_string(), "kmsroute".to_string())]);
    api.create_route_table(
        &t,
        "westeurope",
        &tags,
        false,
        &[kms_route("20.118.99.224")],
    )
    .await
    .unwrap();
    api.put_route(&t, &kms_route("40.83.235.53")).await.unwrap();
    let sid = SubnetId::new(SUB, "rg", "hub", "app");
    api.set_subnet_route_table(&sid, None, Some(&t))
        .await
        .unwrap();
    let inv = api.inventory(&[SUB.to_string()].into()).await.unwrap();
    let table = inv.route_table(&t).unwrap();
    assert_eq!(table.routes.len(), 2);
    assert_eq!(table.tags, kmsroute::model::Tags::from(tags.clone()));
    assert_eq!(table.subnets, vec![sid.clone()]);
    assert_eq!(inv.subnet(&sid).unwrap().1.route_table.as_ref(), Some(&t));
    api.delete_route(&t, "kms-40-83-235-53").await.unwrap();
    api.set_subnet_route_table(&sid, Some(&t), None)
        .await
        .unwrap();
    api.delete_route_table(&t).await.unwrap();
    let inv = api.inventory(&[SUB.to_string()].into()).await.unwrap();
    assert!(inv.route_tables.is_empty());
}

#[tokio::test]
async fn association_keeps_every_other_subnet_property_byte_for_byte() {
    let nsg = json!({"id": format!("{}/networkSecurityGroups/nsg", rg(SUB)), "location": "westeurope", "properties": {}});
    let nat = json!({"id": format!("{}/natGateways/nat", rg(SUB)), "location": "westeurope", "properties": {}});
    let props = json!({
        "addressPrefix": "10.0.1.0/24",
        "networkSecurityGroup": {"id": nsg["id"]},
        "natGateway": {"id": nat["id"]},
        "serviceEndpoints": [{"service": "Microsoft.Storage", "locations": ["westeurope", "northeurope"], "provisioningState": "Succeeded"}],
        "delegations": [{"name": "sql", "id": format!("{}/virtualNetworks/hub/subnets/app/delegations/sql", rg(SUB)),
                         "properties": {"serviceName": "Microsoft.Sql/managedInstances", "actions": ["Microsoft.Network/virtualNetworks/subnets/join/action"]}}],
        "privateEndpointNetworkPolicies": "Enabled",
        "privateLinkServiceNetworkPolicies": "Disabled",
        "defaultOutboundAccess": false,
        "someFuturePropertyTheSdkDoesNotKnow": {"keep": [1, 2, 3]}
    });
    let s = subnet(SUB, "hub", "app", props);
    let em = emulator(
        Config::default(),
        vec![vnet(SUB, "hub", json!([s])), nsg, nat, table(SUB, "rt")],
    )
    .await;
    let api = client(&em, quick_retry());
    let sid = SubnetId::new(SUB, "rg", "hub", "app");
    let before = subnet_json(&em, sid.as_str());
    let t = RouteTableId::new(SUB, "rg", "rt");
    api.set_subnet_route_table(&sid, None, Some(&t))
        .await
        .unwrap();
    let after = subnet_json(&em, sid.as_str());
    let mut a = after["properties"].as_object().unwrap().clone();
    assert_eq!(a.remove("routeTable"), Some(json!({"id": t.as_str()})));
    assert_eq!(
        Value::Object(a),
        before["properties"],
        "only routeTable may change"
    );
}

#[tokio::test]
async fn a_412_is_recovered_by_re_reading_the_subnet() {
    let s = subnet(SUB, "hub", "app", json!({"addressPrefix": "10.0.1.0/24"}));
    let em = emulator(
        Config::default(),
        vec![vnet(SUB, "hub", json!([s])), table(SUB, "rt")],
    )
    .await;
    em.add_fault(FaultRule {
        method: Some("PUT".into()),
        path_contains: Some("/subnets/app".into()),
        status: Some(412),
        code: Some("PreconditionFailed".into()),
        count: Some(1),
        ..FaultRule::default()
    });
    let api = client(&em, quick_retry());
    let sid = SubnetId::new(SUB, "rg", "hub", "app");
    let t = RouteTableId::new(SUB, "rg", "rt");
    api.set_subnet_route_table(&sid, None, Some(&t))
        .await
        .unwrap();
    let stats = em.stats();
    assert_eq!(
        stats.by_operation.get("Subnets_CreateOrUpdate 412"),
        Some(&1)
    );
    assert_eq!(
        stats.by_operation.get("Subnets_Get 200"),
        Some(&2),
        "re-read after the 412"
    );
    assert_eq!(
        subnet_json(&em, sid.as_str())["properties"]["routeTable"]["id"],
        t.as_str()
    );
}

#[tokio::test]
async fn a_table_someone_else_associated_meanwhile_is_not_overwritten() {
    let s = subnet(SUB, "hub", "app", json!({"addressPrefix": "10.0.1.0/24"}));
    let em = emulator(
        Config::default(),
        vec![
            vnet(SUB, "hub", json!([s])),
            table(SUB, "ours"),
            table(SUB, "theirs"),
        ],
    )
    .await;
    let api = client(&em, quick_retry());
    let sid = SubnetId::new(SUB, "rg", "hub", "app");
    let theirs = RouteTableId::new(SUB, "rg", "theirs");
    em.other_writer(OtherWrite::SetSubnetRouteTable {
        subnet: sid.to_string(),
        route_table: Some(theirs.to_string()),
    })
    .unwrap();
    let err = api
        .set_subnet_route_table(&sid, None, Some(&RouteTableId::new(SUB, "rg", "ours")))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Conflict);
    assert_eq!(
        subnet_json(&em, sid.as_str())["properties"]["routeTable"]["id"],
        theirs.as_str()
    );
}

#[tokio::test]
async fn creating_a_table_that_appeared_meanwhile_is_refused_not_overwritten() {
    let em = emulator(Config::default(), vec![table(SUB, "rt")]).await;
    let api = client(&em, quick_retry());
    let t = RouteTableId::new(SUB, "rg", "rt");
    let err = api
        .create_route_table(
            &t,
            "westeurope",
            &BTreeMap::new(),
            false,
            &[kms_route("20.118.99.224")],
        )
        .await
        .unwrap_err();
    assert_eq!((err.class, err.status), (ErrorClass::Conflict, Some(412)));
    let inv = api.inventory(&[SUB.to_string()].into()).await.unwrap();
    assert_eq!(
        inv.route_tables[0].routes[0].name, "to-fw",
        "the existing routes survive"
    );
}

#[tokio::test]
async fn a_429_storm_is_retried_after_retry_after_and_succeeds() {
    let em = emulator(Config::default(), vec![table(SUB, "rt")]).await;
    em.add_fault(FaultRule {
        method: Some("PUT".into()),
        status: Some(429),
        code: Some("SubscriptionRequestsThrottled".into()),
        retry_after: Some(1),
        count: Some(2),
        ..FaultRule::default()
    });
    let api = client(&em, quick_retry());
    let started = Instant::now();
    api.put_route(
        &RouteTableId::new(SUB, "rg", "rt"),
        &kms_route("20.118.99.224"),
    )
    .await
    .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited Retry-After each time: {:?}",
        started.elapsed()
    );
    assert_eq!(
        em.stats().by_operation.get("Routes_CreateOrUpdate 429"),
        Some(&2)
    );
    assert_eq!(api.metrics.count("PUT routes", "429"), 2);
    assert_eq!(api.metrics.count("PUT routes", "201"), 1);
}

#[tokio::test]
async fn another_operation_in_progress_on_the_vnet_is_retried() {
    let s = subnet(SUB, "hub", "app", json!({"addressPrefix": "10.0.1.0/24"}));
    let em = emulator(
        Config::default(),
        vec![vnet(SUB, "hub", json!([s])), table(SUB, "rt")],
    )
    .await;
    em.add_fault(FaultRule {
        method: Some("PUT".into()),
        path_contains: Some("/subnets/".into()),
        status: Some(409),
        code: Some("AnotherOperationInProgress".into()),
        count: Some(1),
        ..FaultRule::default()
    });
    let api = client(&em, quick_retry());
    api.set_subnet_route_table(
        &SubnetId::new(SUB, "rg", "hub", "app"),
        None,
        Some(&RouteTableId::new(SUB, "rg", "rt")),
    )
    .await
    .unwrap();
    assert_eq!(api.metrics.count("PUT subnets", "409"), 1);
}

#[tokio::test]
async fn a_hanging_request_times_out_and_is_retried() {
    let em = emulator(Config::default(), vec![table(SUB, "rt")]).await;
    em.add_fault(FaultRule {
        method: Some("GET".into()),
        hang: true,
        count: Some(1),
        ..FaultRule::default()
    });
    let api = client(
        &em,
        RetrySettings {
            timeout: Duration::from_millis(300),
            ..quick_retry()
        },
    );
    let inv = api.inventory(&[SUB.to_string()].into()).await.unwrap();
    assert_eq!(inv.route_tables.len(), 1);
    assert_eq!(api.metrics.count_status("timeout"), 1);
}

#[tokio::test]
async fn a_request_that_keeps_hanging_fails_instead_of_sticking() {
    let em = emulator(Config::default(), vec![table(SUB, "rt")]).await;
    em.add_fault(FaultRule {
        method: Some("GET".into()),
        hang: true,
        ..FaultRule::default()
    });
    let api = client(
        &em,
        RetrySettings {
            timeout: Duration::from_millis(100),
            max_attempts: 3,
            ..quick_retry()
        },
    );
    let err = api.inventory(&[SUB.to_string()].into()).await.unwrap_err();
    assert_eq!(err.class, ErrorClass::Retryable);
    assert_eq!(api.metrics.count_status("timeout"), 3);
}

#[tokio::test]
async fn auth_failures_need_user_action() {
    let em = emulator(
        Config {
            token: Some("the-right-one".into()),
            ..Config::default()
        },
        vec![table(SUB, "rt")],
    )
    .await;
    let api = client(&em, quick_retry());
    let err = api.inventory(&[SUB.to_string()].into()).await.unwrap_err();
    assert_eq!(
        (err.class, err.status),
        (ErrorClass::NeedsUserAction, Some(401))
    );

    let s = subnet(SUB, "hub", "app", json!({"addressPrefix": "10.0.1.0/24"}));
    let em = emulator(
        Config::default(),
        vec![vnet(SUB, "hub", json!([s])), table(SUB, "rt")],
    )
    .await;
    em.add_fault(FaultRule {
        method: Some("PUT".into()),
        status: Some(403),
        code: Some("LinkedAuthorizationFailed".into()),
        ..FaultRule::default()
    });
    let api = client(&em, quick_retry());
    let err = api
        .set_subnet_route_table(
            &SubnetId::new(SUB, "rg", "hub", "app"),
            None,
            Some(&RouteTableId::new(SUB, "rg", "rt")),
        )
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::NeedsUserAction);
    assert_eq!(err.code.as_deref(), Some("LinkedAuthorizationFailed"));
    assert!(
        err.to_string().contains("/subnets/app"),
        "errors name the resource: {err}"
    );
}

#[tokio::test]
async fn long_running_operations_are_polled_to_completion() {
    let em = emulator(
        Config {
            lro_duration: Duration::from_millis(1200),
            ..Config::default()
        },
        vec![table(SUB, "rt")],
    )
    .await;
    let api = client(&em, quick_retry());
    let t0 = std::time::Instant::now();
    api.put_route(
        &RouteTableId::new(SUB, "rg", "rt"),
        &kms_route("20.118.99.224"),
    )
    .await
    .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(1200),
        "returned before the operation finished"
    );
    let polls = em
        .stats()
        .by_operation
        .get("Operations_Get 200")
        .copied()
        .unwrap_or(0);
    // Retry-After (1 s) is honoured before the first poll, so: InProgress at 1 s, then
    // Succeeded — two polls, not a busy loop.
    assert_eq!(polls, 2, "InProgress then Succeeded");
}

#[tokio::test]
async fn a_failed_long_running_operation_surfaces_as_an_error() {
    let em = emulator(Config::default(), vec![table(SUB, "rt")]).await;
    em.add_fault(FaultRule {
        method: Some("PUT".into()),
        lro_status: Some("Failed".into()),
        count: Some(1),
        ..FaultRule::default()
    });
    let api = client(&em, quick_retry());
    let err = api
        .put_route(
            &RouteTableId::new(SUB, "rg", "rt"),
            &kms_route("20.118.99.224"),
        )
        .await
        .unwrap_err();
    assert!(err.message.contains("ended Failed"), "{err}");
    let inv = api.inventory(&[SUB.to_string()].into()).await.unwrap();
    assert_eq!(
        inv.route_tables[0].routes.len(),
        1,
        "the failed write was not applied"
    );
}

/// The whole read path on the example estate: seed → emulator → real client → planner.
#[tokio::test]
async fn the_example_estate_plans_as_its_story_says() {
    use kmsroute::api::{parse_policies, validate_policy};
    use kmsroute::catalog::Cloud;
    use kmsroute::plan::{SkipReason, Verdict, Warning, Write, plan};
    let seed: Seed =
        serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap();
    let em = emulator::start(Config::default(), seed, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = client(&em, quick_retry());
    let docs =
        parse_policies(&std::fs::read_to_string("examples/kmsroutepolicy.yaml").unwrap()).unwrap();
    let policy = validate_policy(docs[0].policy.as_ref().unwrap(), Cloud::AzurePublic)
        .unwrap()
        .desired;
    let inv = api.inventory(&policy.subscriptions()).await.unwrap();
    let p = plan(std::slice::from_ref(&policy), &inv);
    let verdict = |name: &str| {
        &p.verdicts
            .iter()
            .find(|v| v.subnet.name() == name)
            .unwrap_or_else(|| panic!("{name}"))
            .verdict
    };
    assert_eq!(
        p.verdicts.len(),
        7,
        "the hub is not tagged kms=enabled: {:#?}",
        p.verdicts
    );
    assert!(matches!(
        verdict("GatewaySubnet"),
        Verdict::Skipped {
            reason: SkipReason::SpecialSubnet { .. }
        }
    ));
    assert!(
        matches!(verdict("app"), Verdict::Drift { changes: 2 }),
        "create + associate"
    );
    assert!(matches!(verdict("web"), Verdict::Drift { changes: 3 }));
    assert!(matches!(verdict("legacy"), Verdict::Conflict { route, .. } if route == "legacy-kms"));
    let private = p
        .verdicts
        .iter()
        .find(|v| v.subnet.name() == "private")
        .unwrap();
    assert_eq!(private.warnings, [Warning::NoInternetEgress]);
    let shared_puts = p.writes.iter().filter(|w| matches!(&w.write, Write::PutRoute { table, .. } if table.name() == "rt-spoke1-shared")).count();
    assert_eq!(
        shared_puts, 3,
        "the shared table gets its three routes once"
    );
    assert_eq!(em.stats().writes, 0, "planning only reads");
}

#[tokio::test]
async fn the_client_paces_writes_by_the_network_providers_window_and_gets_no_429() {
    use kmsroute::azure::policy::{BucketShape, RateLimits};
    // Provider window: 3 writes, then one more per 0.5 s, on the emulator and in the client.
    let window = kmsroute::emulator::ProviderWindow {
        reads: 1000.0,
        writes: 3.0,
        window: Duration::from_millis(1500),
    };
    let em = emulator(
        Config {
            throttle: Some(kmsroute::emulator::Throttle {
                provider: Some(window),
                ..kmsroute::emulator::Throttle::ARM
            }),
            ..Config::default()
        },
        vec![table(SUB, "rt")],
    )
    .await;
    let api = AzureNetworkApi::new(
        url::Url::parse(&em.url()).unwrap(),
        Arc::new(StaticToken::new("t")),
        ClientSettings {
            retry: quick_retry(),
            rate_limits: RateLimits {
                provider_writes: Some(BucketShape {
                    capacity: 3.0,
                    refill_per_sec: 2.0,
                }),
                ..RateLimits::default()
            },
            ..ClientSettings::default()
        },
    )
    .unwrap();
    let t = RouteTableId::new(SUB, "rg", "rt");
    for ip in [
        "20.118.99.224",
        "40.83.235.53",
        "23.102.135.246",
        "52.1.2.3",
        "52.1.2.4",
    ] {
        api.put_route(&t, &kms_route(ip)).await.unwrap();
    }
    let stats = em.stats();
    assert_eq!(stats.throttled, 0, "{stats:?}");
    assert_eq!(stats.mutations, 5);
}

#[tokio::test]
async fn a_policy_denial_comes_back_naming_the_assignment_as_needing_a_human() {
    let seed = Seed {
        resources: vec![table(SUB, "rt")],
        policy_assignments: vec![kmsroute::emulator::PolicyAssignment {
            name: "deny-udr-internet".into(),
            display_name: "Deny UDR with next hop Internet".into(),
            scope: format!("/subscriptions/{SUB}"),
            definition_name: "Deny-UDR-With-Specific-NextHop".into(),
            definition_display_name: "Deny UDRs with a specific next hop".into(),
            denied_next_hop_types: vec!["Internet".into()],
        }],
        ..Seed::default()
    };
    let em = emulator::start(Config::default(), seed, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = client(&em, quick_retry());
    let t = RouteTableId::new(SUB, "rg", "rt");
    let e = api
        .put_route(&t, &kms_route("20.118.99.224"))
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::NeedsUserAction);
    assert_eq!(e.status, Some(403));
    assert_eq!(e.code.as_deref(), Some("RequestDisallowedByPolicy"));
    for needle in [
        "'Deny UDR with next hop Internet' (deny-udr-internet)",
        &format!("at scope /subscriptions/{SUB}"),
        "'Deny UDRs with a specific next hop' (Deny-UDR-With-Specific-NextHop, effect Deny)",
        "exemption",
    ] {
        assert!(e.message.contains(needle), "{needle}: {}", e.message);
    }
    // Attempted once: a denial is not retried.
    assert_eq!(
        em.stats().by_operation.get("Routes_CreateOrUpdate 403"),
        Some(&1)
    );
    // The same table creation, with its routes inline, is denied the same way.
    let created = api
        .create_route_table(
            &RouteTableId::new(SUB, "rg", "rt2"),
            "westeurope",
            &BTreeMap::new(),
            false,
            &[kms_route("20.118.99.224")],
        )
        .await
        .unwrap_err();
    assert!(
        created.message.contains("deny-udr-internet"),
        "{}",
        created.message
    );
}

/// With the emulator's default settings (no throttling, as in the demo), ARM's remaining
/// budget still reaches the client's metric: ARM sends the header on every answer (issue 27,
/// defect 7).
#[tokio::test]
async fn the_remaining_read_budget_is_a_metric_even_without_throttling() {
    let em = emulator(Config::default(), vec![vnet(SUB, "v", json!([]))]).await;
    let api = client(&em, quick_retry());
    api.inventory(&BTreeSet::from([SUB.to_string()]))
        .await
        .unwrap();
    let text = api.metrics.render();
    let line = text
        .lines()
        .find(|l| l.starts_with("kmsroute_arm_ratelimit_remaining{") && l.contains(SUB))
        .unwrap_or_else(|| panic!("no remaining-budget sample in:\n{text}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value > 0.0 && value < 250.0, "{line}");
}

/// A subscription listed again is recognized as unchanged from its pages' bytes (several
/// pages, nothing parsed), and any change, however small, is a new listing with it.
#[tokio::test]
async fn a_listing_whose_pages_did_not_change_is_unchanged_and_any_edit_is_seen() {
    use kmsroute::azure::Relisted;
    let resources: Vec<Value> = (0..5)
        .map(|i| table(SUB, &format!("rt-{i}")))
        .chain([vnet(SUB, "v", json!([]))])
        .collect();
    let config = Config {
        page_size: 2,
        ..Config::default()
    };
    let em = emulator(config, resources).await;
    let api = client(&em, quick_retry());
    let Relisted::Changed {
        inventory,
        fingerprint,
    } = api.relist(SUB, None).await.unwrap()
    else {
        panic!("a first listing is parsed")
    };
    assert_eq!(inventory.route_tables.len(), 5);
    // One VNet page, three route-table pages.
    assert_eq!(fingerprint.pages.len(), 4);
    assert_eq!(inventory.list_pages, 4);
    let again = api.relist(SUB, Some(&fingerprint)).await.unwrap();
    assert!(
        matches!(again, Relisted::Unchanged { pages: 4 }),
        "{again:?}"
    );
    // A colleague deletes one route: the listing is read and parsed again.
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: format!("{}/routeTables/rt-3", rg(SUB)),
        route: "to-fw".into(),
    })
    .unwrap();
    let Relisted::Changed { inventory, .. } = api.relist(SUB, Some(&fingerprint)).await.unwrap()
    else {
        panic!("an edited listing is parsed")
    };
    let rt3 = inventory
        .route_tables
        .iter()
        .find(|t| t.id.name() == "rt-3")
        .unwrap();
    assert!(rt3.routes.is_empty(), "{:?}", rt3.routes);
    // A subscription ARM refuses is an error that says so.
    let refused = api
        .relist("00000000-0000-0000-0000-00000000dead", None)
        .await
        .expect_err("an unknown subscription");
    assert!(refused.refuses_scope(), "{refused}");
}

/// Issue 34: the client keeps its connections. Forty listings one after the other open one
/// connection, not forty (azure_core's own HTTP client kept none: a TCP, and on ARM a TLS,
/// handshake per request, and a read buffer grown anew each time).
#[tokio::test]
async fn the_client_reuses_its_connections() {
    let sub = SUB;
    let em = emulator(
        Config::default(),
        vec![vnet(
            sub,
            "v",
            json!([subnet(
                sub,
                "v",
                "s",
                json!({"addressPrefix": "10.0.1.0/24"})
            )]),
        )],
    )
    .await;
    let api = client(&em, quick_retry());
    let subs = BTreeSet::from([sub.to_string()]);
    for _ in 0..20 {
        api.inventory(&subs).await.unwrap();
    }
    assert_eq!(em.stats().reads, 40, "two list calls per listing");
    assert!(
        em.connections() <= 2,
        "{} connections for 40 requests",
        em.connections()
    );
}

/// A write holds one of the client's send slots (as many as its requests in flight) only until ARM
/// answered its request: its long-running operation is followed without one. With one request
/// in flight (one slot) and operations that take a minute, twelve writes are all answered
/// long before the first operation ends; had the slots been held through the operations, the
/// second write would wait for the first to finish.
#[tokio::test]
async fn a_long_running_operation_holds_no_send_slot() {
    let tables: Vec<Value> = (0..12).map(|i| table(SUB, &format!("rt{i}"))).collect();
    let em = emulator(
        Config {
            lro_duration: Duration::from_secs(60),
            ..Config::default()
        },
        tables,
    )
    .await;
    let api = Arc::new(harness::client(
        &em,
        ClientSettings {
            retry: quick_retry(),
            max_in_flight: Some(1),
            ..ClientSettings::default()
        },
    ));
    let writes: Vec<_> = (0..12)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                api.put_route(
                    &RouteTableId::new(SUB, "rg", &format!("rt{i}")),
                    &kms_route("20.118.99.224"),
                )
                .await
            })
        })
        .collect();
    let answered = || {
        em.stats()
            .by_operation
            .get("Routes_CreateOrUpdate 201")
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered() < 12 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = answered();
    for w in &writes {
        w.abort();
    }
    assert_eq!(n, 12, "writes answered while the operations run");
}

/// Subscriptions are listed at most `max_listings` at once (their pages are held until the
/// listing ends): eight refreshes at once, two listings in flight.
#[tokio::test]
async fn subscriptions_are_listed_a_few_at_a_time() {
    let subs: Vec<String> = (1..=8)
        .map(|i| format!("00000000-0000-0000-0000-00000000001{i}"))
        .collect();
    let resources = subs
        .iter()
        .map(|s| {
            vnet(
                s,
                "v",
                json!([subnet(s, "v", "s", json!({"addressPrefix": "10.0.1.0/24"}))]),
            )
        })
        .collect();
    let em = emulator(Config::default(), resources).await;
    em.add_fault(FaultRule {
        method: Some("GET".into()),
        latency_ms: Some(150),
        ..FaultRule::default()
    });
    let api = harness::client(
        &em,
        ClientSettings {
            retry: quick_retry(),
            max_listings: Some(2),
            ..ClientSettings::default()
        },
    );
    let listed = futures::future::join_all(subs.iter().map(|s| api.relist(s, None))).await;
    assert!(listed.iter().all(Result::is_ok), "{listed:?}");
    assert_eq!(em.stats().reads, 16, "two list calls per subscription");
    assert_eq!(
        em.peak_concurrent_requests(),
        2,
        "listings in flight at once"
    );
}
