//! End to end without a cluster: the executor drives the real ARM client against the in-process
//! emulator, on the demo estate and on generated estates.

#[path = "support/arm.rs"]
mod harness;

use kmsroute::api::{DesiredState, Mode, parse_policies, validate_policy};
use kmsroute::azure::client::AzureNetworkApi;
use kmsroute::catalog::Cloud;
use kmsroute::emulator::{Config, EmulatorHandle, FaultRule, OtherWrite, Seed};
use kmsroute::executor::{self, PassDeps, PassParams, Report, RunMode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const S1: &str = "11111111-1111-1111-1111-111111111111";

fn estate() -> Seed {
    serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap()
}

fn example_policy() -> DesiredState {
    let docs =
        parse_policies(&std::fs::read_to_string("examples/kmsroutepolicy.yaml").unwrap()).unwrap();
    validate_policy(docs[0].policy.as_ref().unwrap(), Cloud::AzurePublic)
        .unwrap()
        .desired
}

async fn setup(config: Config, seed: Seed) -> (EmulatorHandle, AzureNetworkApi) {
    harness::emulator_and_client(config, seed, harness::quick()).await
}

async fn pass(api: &AzureNetworkApi, policies: &[DesiredState], mode: RunMode) -> Report {
    executor::pass(
        api,
        policies,
        &PassParams {
            mode,
            concurrency: 4,
            ..PassParams::default()
        },
        &PassDeps::default(),
        &|_| {},
    )
    .await
    .unwrap()
}

/// Every route and subnet in a dump, minus what changes on every write (etags, states).
fn routes_by_table(seed: &Seed) -> BTreeMap<String, BTreeMap<String, Value>> {
    seed.resources
        .iter()
        .filter(|r| r["type"] == "Microsoft.Network/routeTables")
        .map(|t| {
            let routes = t["properties"]["routes"].as_array().cloned().unwrap_or_default().into_iter().map(|r| {
                (r["name"].as_str().unwrap().to_string(), json!({"addressPrefix": r["properties"]["addressPrefix"], "nextHopType": r["properties"]["nextHopType"], "nextHopIpAddress": r["properties"]["nextHopIpAddress"]}))
            });
            (t["id"].as_str().unwrap().to_lowercase(), routes.collect())
        })
        .collect()
}

fn subnets(seed: &Seed) -> BTreeMap<String, Value> {
    seed.resources
        .iter()
        .filter(|r| r["type"] == "Microsoft.Network/virtualNetworks")
        .flat_map(|v| {
            v["properties"]["subnets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_lowercase(),
                s["properties"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_first_apply_converges_in_one_pass_with_exactly_the_planned_writes() {
    let (em, api) = setup(Config::default(), estate()).await;
    let policies = [example_policy()];
    let first = pass(&api, &policies, RunMode::Write).await;
    assert_eq!(first.writes_failed(), 0);
    assert_eq!(
        em.stats().mutations as usize,
        first.plan.writes.len(),
        "one ARM write per planned write"
    );
    assert_eq!(first.plan.writes.len(), 11);

    em.reset_stats();
    let second = pass(&api, &policies, RunMode::Write).await;
    assert!(second.plan.writes.is_empty());
    let plan_only = pass(&api, &policies, RunMode::PlanOnly).await;
    assert!(plan_only.plan.writes.is_empty());
    let stats = em.stats();
    assert_eq!(stats.writes, 0, "a steady-state resync is reads only");
    let calls = |op: &str| stats.by_operation.get(op).copied().unwrap_or(0);
    assert_eq!(
        calls("VirtualNetworks_ListAll 200") + calls("RouteTables_ListAll 200"),
        8,
        "2 list calls per subscription per pass: {:?}",
        stats.by_operation
    );
    // The private subnet's egress check: NICs, public IPs, load balancers of its subscription.
    for op in [
        "NetworkInterfaces_ListAll 200",
        "PublicIPAddresses_ListAll 200",
        "LoadBalancers_ListAll 200",
    ] {
        assert_eq!(calls(op), 2, "{op}: {:?}", stats.by_operation);
    }
    assert_eq!(stats.reads, 14, "nothing else: {:?}", stats.by_operation);
    let s = &second.policies[0].summary;
    assert_eq!(
        (
            s.subnets_matched,
            s.in_sync,
            s.conflicts,
            s.skipped,
            s.errors
        ),
        (7, 5, 1, 1, 0)
    );
}

#[tokio::test]
async fn foreign_routes_and_every_non_route_table_subnet_property_are_identical_after() {
    let (em, api) = setup(Config::default(), estate()).await;
    let before = em.dump();
    pass(&api, &[example_policy()], RunMode::Write).await;
    let after = em.dump();
    let (rb, ra) = (routes_by_table(&before), routes_by_table(&after));
    for (table, routes) in &rb {
        for (name, r) in routes {
            assert_eq!(
                ra[table].get(name),
                Some(r),
                "foreign route {name} in {table} changed"
            );
        }
    }
    let (sb, sa) = (subnets(&before), subnets(&after));
    for (id, props) in &sb {
        let mut now = sa[id].as_object().unwrap().clone();
        let mut was = props.as_object().unwrap().clone();
        for p in [&mut now, &mut was] {
            p.remove("provisioningState");
        }
        if was.contains_key("routeTable") {
            assert_eq!(
                now.get("routeTable"),
                was.get("routeTable"),
                "{id}: an existing association changed"
            );
        }
        now.remove("routeTable");
        was.remove("routeTable");
        assert_eq!(now, was, "{id}: a property other than routeTable changed");
    }
    let nsg = |s: &Seed| {
        s.resources
            .iter()
            .find(|r| r["type"] == "Microsoft.Network/networkSecurityGroups")
            .unwrap()["properties"]
            .clone()
    };
    assert_eq!(nsg(&before), nsg(&after));
}

#[tokio::test]
async fn after_its_writes_a_pass_reads_again_only_the_subscriptions_it_wrote_to() {
    let (em, api) = setup(Config::default(), estate()).await;
    let policies = [example_policy()];
    pass(&api, &policies, RunMode::Write).await;
    // A steady pass: what one observation of each subscription costs.
    em.reset_stats();
    let steady = pass(&api, &policies, RunMode::Write).await;
    assert!(steady.plan.writes.is_empty());
    let once = em.stats().reads_by_subscription;
    assert_eq!(once.len(), 2, "{once:?}");
    // Drift in S1 only.
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: format!(
            "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/routeTables/rt-spoke1-shared"
        ),
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    em.reset_stats();
    let repair = pass(&api, &policies, RunMode::Write).await;
    assert_eq!(repair.writes_done(), 1);
    let reads = em.stats().reads_by_subscription;
    let s1 = S1.to_ascii_lowercase();
    // S1: observed, then its listings read again for the verdicts after the write (the write's
    // own reads, if any, on top); the other subscription exactly as in a steady pass.
    let listings = 2;
    assert!(reads[&s1] >= once[&s1] + listings, "{reads:?} vs {once:?}");
    for (sub, n) in &once {
        if *sub != s1 {
            assert_eq!(reads.get(sub), Some(n), "{sub}: {reads:?} vs {once:?}");
        }
    }
    // And what the pass reports is Azure after the write: every verdict, none left to repair.
    let verdicts = repair.final_verdicts();
    assert_eq!(verdicts.len(), steady.plan.verdicts.len());
    assert!(
        verdicts
            .iter()
            .all(|v| !matches!(v.verdict, kmsroute::plan::Verdict::Drift { .. })),
        "{verdicts:?}"
    );
}

#[tokio::test]
async fn drift_by_the_other_writer_is_repaired_on_the_next_pass() {
    let (em, api) = setup(Config::default(), estate()).await;
    let policies = [example_policy()];
    pass(&api, &policies, RunMode::Write).await;
    let shared = format!(
        "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/routeTables/rt-spoke1-shared"
    );
    let app = format!(
        "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/virtualNetworks/vnet-spoke1/subnets/app"
    );
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: shared.clone(),
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    em.other_writer(OtherWrite::PutRoute { route_table: shared.clone(), route: json!({"name": "kms-40-83-235-53", "properties": {"addressPrefix": "40.83.235.53/32", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.1.4"}}) }).unwrap();
    em.other_writer(OtherWrite::SetSubnetRouteTable {
        subnet: app.clone(),
        route_table: None,
    })
    .unwrap();
    em.reset_stats();
    let repair = pass(&api, &policies, RunMode::Write).await;
    assert_eq!(repair.plan.writes.len(), 3, "{:#?}", repair.plan.writes);
    assert_eq!(em.stats().mutations, 3);
    assert_eq!(repair.policies[0].summary.repaired, 3, "web, api and app");
    assert!(
        pass(&api, &policies, RunMode::Write)
            .await
            .plan
            .writes
            .is_empty()
    );
}

#[tokio::test]
async fn audit_mode_makes_zero_writes_and_reports_the_drift() {
    let (em, api) = setup(Config::default(), estate()).await;
    let mut policy = example_policy();
    policy.mode = Mode::Audit;
    let report = pass(&api, &[policy], RunMode::Write).await;
    assert_eq!(em.stats().writes, 0);
    assert_eq!(report.writes_done(), 0);
    let p = &report.policies[0];
    assert_eq!(p.summary.in_sync, 0);
    assert_eq!(
        p.problems.iter().filter(|pr| pr.reason == "Drift").count(),
        5
    );
}

#[tokio::test]
async fn conflicts_skips_and_warnings_appear_in_the_summary_with_reasons() {
    let (_em, api) = setup(Config::default(), estate()).await;
    let report = pass(&api, &[example_policy()], RunMode::Write).await;
    let p = &report.policies[0];
    assert!(report.has_problems());
    let reasons: BTreeSet<(&str, &str)> = p
        .problems
        .iter()
        .map(|pr| (pr.reason.as_str(), pr.subnet_id.rsplit('/').next().unwrap()))
        .collect();
    assert!(reasons.contains(&("Conflict", "legacy")), "{reasons:?}");
    assert!(
        reasons.contains(&("NoInternetEgress", "private")),
        "{reasons:?}"
    );
    assert_eq!(p.summary.skipped, 1, "the spoke's GatewaySubnet");
    assert!(
        p.problems.iter().all(|pr| pr.reason != "SpecialSubnet"),
        "special subnets are expected, not problems"
    );
}

#[tokio::test]
async fn an_interrupted_apply_converges_on_rerun_without_duplicates() {
    for after in [0, 2, 5, 8] {
        let (em, api) = setup(Config::default(), estate()).await;
        let policies = [example_policy()];
        em.add_fault(FaultRule {
            method: Some("PUT".into()),
            status: Some(403),
            code: Some("AuthorizationFailed".into()),
            after: Some(after),
            ..FaultRule::default()
        });
        let broken = pass(&api, &policies, RunMode::Write).await;
        assert!(broken.writes_failed() > 0, "after {after}");
        assert!(
            broken.policies[0]
                .problems
                .iter()
                .any(|p| p.reason == "WriteFailed")
        );
        let first_mutations = em.stats().mutations;
        em.clear_faults();
        em.reset_stats();
        let rerun = pass(&api, &policies, RunMode::Write).await;
        assert_eq!(rerun.writes_failed(), 0);
        assert_eq!(
            first_mutations + em.stats().mutations,
            broken.plan.writes.len() as u64,
            "after {after}: nothing written twice"
        );
        assert!(
            pass(&api, &policies, RunMode::Write)
                .await
                .plan
                .writes
                .is_empty()
        );
        for (table, routes) in routes_by_table(&em.dump()) {
            let prefixes: Vec<&Value> = routes.values().map(|r| &r["addressPrefix"]).collect();
            let unique: BTreeSet<String> = prefixes.iter().map(|p| p.to_string()).collect();
            assert_eq!(
                unique.len(),
                prefixes.len(),
                "duplicate prefixes in {table}"
            );
        }
    }
}

/// A generated estate: `vnets` spokes per subscription, five subnets each (one special, two
/// sharing a table with foreign routes, one conflicting, one bare).
fn generated(subscriptions: usize, vnets: usize) -> Seed {
    let mut resources = Vec::new();
    for s in 0..subscriptions {
        let sub = format!("00000000-0000-0000-0000-{:012}", s + 1);
        for v in 0..vnets {
            let rg =
                format!("/subscriptions/{sub}/resourceGroups/rg{v}/providers/Microsoft.Network");
            let shared = format!("{rg}/routeTables/shared{v}");
            let conflict = format!("{rg}/routeTables/legacy{v}");
            let sn = |name: &str, extra: Value| {
                let mut props = json!({"addressPrefix": "10.0.0.0/24"});
                props
                    .as_object_mut()
                    .unwrap()
                    .extend(extra.as_object().unwrap().clone());
                json!({"id": format!("{rg}/virtualNetworks/v{v}/subnets/{name}"), "name": name, "properties": props})
            };
            resources.push(json!({"id": format!("{rg}/virtualNetworks/v{v}"), "location": "westeurope", "tags": {"kms": "enabled"}, "properties": {"subnets": [
                sn("GatewaySubnet", json!({})),
                sn("a", json!({"routeTable": {"id": shared}})),
                sn("b", json!({"routeTable": {"id": shared}})),
                sn("c", json!({"routeTable": {"id": conflict}})),
                sn("d", json!({})),
            ]}}));
            resources.push(json!({"id": shared, "location": "westeurope", "properties": {"routes": [{"name": "default", "properties": {"addressPrefix": "0.0.0.0/0", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.0.4"}}]}}));
            resources.push(json!({"id": conflict, "location": "westeurope", "properties": {"routes": [{"name": "old", "properties": {"addressPrefix": "20.118.99.224/32", "nextHopType": "VirtualNetworkGateway"}}]}}));
        }
    }
    Seed {
        resources,
        learned_routes: vec![],
        ..Seed::default()
    }
}

#[tokio::test]
async fn generated_estates_converge_with_the_planned_writes_and_resync_with_none() {
    let (em, api) = setup(
        Config {
            page_size: 7,
            ..Config::default()
        },
        generated(3, 6),
    )
    .await;
    let subs: Vec<String> = (0..3)
        .map(|s| format!("00000000-0000-0000-0000-{:012}", s + 1))
        .collect();
    let spec: kmsroute::api::KmsRoutePolicySpec = serde_json::from_value(
        json!({"selector": {"subscriptions": subs, "virtualNetworkTags": {"kms": "enabled"}}}),
    )
    .unwrap();
    let policy = kmsroute::api::validate("gen", None, &spec, Cloud::AzurePublic)
        .unwrap()
        .desired;
    let first = pass(&api, std::slice::from_ref(&policy), RunMode::Write).await;
    // Per VNet: 3 routes on the shared table, 2 on the conflicting one, create + associate for d.
    assert_eq!(first.plan.writes.len(), 3 * 6 * 7);
    assert_eq!(first.writes_failed(), 0);
    assert_eq!(em.stats().mutations as usize, first.plan.writes.len());
    let s = &first.policies[0].summary;
    assert_eq!(
        (s.subnets_matched, s.in_sync, s.conflicts, s.skipped),
        (90, 54, 18, 18)
    );
    em.reset_stats();
    let resync = pass(&api, std::slice::from_ref(&policy), RunMode::Write).await;
    assert!(resync.plan.writes.is_empty());
    assert_eq!(em.stats().writes, 0);
}

/// A pass that plans on the controller's shared inventory after someone changed Azure behind
/// it: ARM refuses the writes the stale view made wrong, the pass re-reads and re-plans, and
/// nothing of the other writer's is overwritten.
#[tokio::test]
async fn writes_planned_on_a_stale_shared_inventory_are_refused_and_replanned_not_forced() {
    use kmsroute::controller::inventory::{InventorySettings, SharedInventory};
    use kmsroute::controller::metrics::ControllerMetrics;
    use kmsroute::executor::InventorySource;
    let (em, api) = setup(Config::default(), estate()).await;
    let api = Arc::new(api);
    let (shared, _changes) = SharedInventory::new(
        api.clone(),
        InventorySettings::default(),
        Arc::new(ControllerMetrics::default()),
    );
    let policy = example_policy();
    // The view is taken now, before anything converged...
    let subs = policy.subscriptions();
    shared.current(&subs).await.unwrap();
    // ...then the other writer: a foreign route claims one KMS prefix in the shared table, and
    // `app` (which would get a created table) is associated with the shared table by hand.
    let shared_table = format!(
        "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/routeTables/rt-spoke1-shared"
    );
    em.other_writer(OtherWrite::PutRoute {
        route_table: shared_table.clone(),
        route: json!({"name": "partner-kms", "properties": {"addressPrefix": "20.118.99.224/32", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.0.9"}}),
    })
    .unwrap();
    em.other_writer(OtherWrite::SetSubnetRouteTable {
        subnet: format!(
            "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/virtualNetworks/vnet-spoke1/subnets/app"
        ),
        route_table: Some(shared_table.clone()),
    })
    .unwrap();
    let before = em.dump();
    em.reset_stats();
    let source: Arc<dyn InventorySource> = shared.clone();
    let report = executor::pass(
        api.as_ref(),
        std::slice::from_ref(&policy),
        &PassParams {
            mode: RunMode::Write,
            concurrency: 4,
            ..PassParams::default()
        },
        &PassDeps {
            inventory: Some(source),
            ..PassDeps::default()
        },
        &|_| {},
    )
    .await
    .unwrap();
    let after = em.dump();
    // The foreign route and the hand-made association stand.
    let routes = routes_by_table(&after);
    assert_eq!(
        routes[&shared_table.to_lowercase()]["partner-kms"]["nextHopType"],
        "VirtualAppliance"
    );
    assert!(!routes[&shared_table.to_lowercase()].contains_key("kms-20-118-99-224"));
    let app = &subnets(&after)[&format!(
        "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/virtualNetworks/vnet-spoke1/subnets/app"
    )
    .to_lowercase()];
    assert_eq!(
        app["routeTable"]["id"].as_str().unwrap().to_lowercase(),
        shared_table.to_lowercase()
    );
    // The re-plan saw the truth: the shared table's subnets are conflicts, not write failures.
    let mine = &report.policies[0];
    assert!(mine.summary.conflicts >= 3, "{:?}", mine.summary);
    assert!(
        mine.problems.iter().all(|p| p.reason != "WriteFailed"),
        "{:?}",
        mine.problems
    );
    // Other foreign state is untouched (only routes and routeTable associations may differ).
    assert_eq!(
        subnets(&before)
            .into_iter()
            .map(|(k, mut v)| {
                v.as_object_mut().unwrap().remove("routeTable");
                (k, v)
            })
            .collect::<BTreeMap<_, _>>(),
        subnets(&after)
            .into_iter()
            .map(|(k, mut v)| {
                v.as_object_mut().unwrap().remove("routeTable");
                (k, v)
            })
            .collect::<BTreeMap<_, _>>()
    );
    // A second pass on the (now fresh) inventory has nothing left to do.
    let source: Arc<dyn InventorySource> = shared.clone();
    let again = executor::pass(
        api.as_ref(),
        std::slice::from_ref(&policy),
        &PassParams {
            mode: RunMode::Write,
            ..PassParams::default()
        },
        &PassDeps {
            inventory: Some(source),
            ..PassDeps::default()
        },
        &|_| {},
    )
    .await
    .unwrap();
    assert!(again.plan.writes.is_empty(), "{:?}", again.plan.writes);
}

const TYPO: &str = "33333333-3333-3333-3333-333333333333";
const NO_ROLE: &str = "44444444-4444-4444-4444-444444444444";

/// The example estate, plus a subscription the identity may not read.
fn estate_with_a_forbidden_subscription() -> Seed {
    let mut seed = estate();
    seed.unauthorized_subscriptions = vec![NO_ROLE.into()];
    seed
}

#[tokio::test]
async fn a_bad_subscription_among_good_ones_is_reported_by_name_and_code_while_the_rest_converges()
{
    let (em, api) = setup(Config::default(), estate_with_a_forbidden_subscription()).await;
    let mut policy = example_policy();
    let selector = policy.selector.as_mut().unwrap();
    selector.subscriptions.insert(TYPO.into());
    selector.subscriptions.insert(NO_ROLE.into());
    let report = pass(&api, std::slice::from_ref(&policy), RunMode::Write).await;
    let mine = &report.policies[0];
    // The good subscriptions converged as they do without the bad ones.
    assert!(report.writes_done() > 0);
    assert_eq!(report.writes_failed(), 0);
    assert_eq!(mine.summary.subnets_matched, 7, "{:?}", mine.summary);
    assert_eq!(
        mine.unreadable_subscriptions,
        vec![TYPO.to_string(), NO_ROLE.to_string()]
    );
    let unreadable: Vec<&kmsroute::api::Problem> = mine
        .problems
        .iter()
        .filter(|p| p.reason == "SubscriptionUnreadable")
        .collect();
    assert_eq!(unreadable.len(), 2, "{:?}", mine.problems);
    assert!(
        unreadable
            .iter()
            .any(|p| p.subnet_id.ends_with(TYPO) && p.message.contains("SubscriptionNotFound"))
    );
    assert!(
        unreadable
            .iter()
            .any(|p| p.subnet_id.ends_with(NO_ROLE) && p.message.contains("AuthorizationFailed"))
    );
    assert!(report.has_problems(), "plan/apply exit 3");
    // A second pass writes nothing more and still reports them.
    let again = pass(&api, std::slice::from_ref(&policy), RunMode::Write).await;
    assert!(again.plan.writes.is_empty());
    assert_eq!(again.policies[0].unreadable_subscriptions.len(), 2);
    assert_eq!(em.stats().throttled, 0);
}

#[tokio::test]
async fn a_policy_that_selects_no_subnet_says_so() {
    let (_em, api) = setup(Config::default(), estate()).await;
    let mut policy = example_policy();
    policy.selector.as_mut().unwrap().vnet_tags =
        BTreeMap::from([("kms".to_string(), "enabeld".to_string())]);
    let report = pass(&api, std::slice::from_ref(&policy), RunMode::PlanOnly).await;
    let mine = &report.policies[0];
    assert_eq!(mine.summary.subnets_matched, 0);
    assert!(mine.nothing_selected());
    assert!(!mine.ready());
    assert!(kmsroute::output::problems_text(&report).contains("NothingSelected"));
}

#[tokio::test]
async fn a_policy_denied_table_is_named_attempted_once_and_the_rest_converges() {
    let mut seed = estate();
    // The landing zone denies next hop Internet in spoke2's resource group only.
    seed.policy_assignments = vec![kmsroute::emulator::PolicyAssignment {
        name: "deny-udr-internet".into(),
        display_name: "Deny UDR with next hop Internet".into(),
        scope: "/subscriptions/22222222-2222-2222-2222-222222222222/resourceGroups/rg-spoke2"
            .into(),
        definition_name: "Deny-UDR-With-Specific-NextHop".into(),
        definition_display_name: "Deny UDRs with a specific next hop".into(),
        denied_next_hop_types: vec!["Internet".into()],
    }];
    let (em, api) = setup(Config::default(), seed).await;
    let policy = example_policy();
    let report = pass(&api, std::slice::from_ref(&policy), RunMode::Write).await;
    let denied: Vec<&kmsroute::api::Problem> = report.policies[0]
        .problems
        .iter()
        .filter(|p| p.reason == "PolicyDenied")
        .collect();
    // Both spoke2 subnets: legacy's table gets its missing routes, private a created table.
    assert_eq!(denied.len(), 2, "{:?}", report.policies[0].problems);
    assert!(
        denied
            .iter()
            .any(|p| p.subnet_id.ends_with("/subnets/private"))
    );
    assert!(
        denied
            .iter()
            .any(|p| p.subnet_id.ends_with("/subnets/legacy"))
    );
    for needle in [
        "Deny UDR with next hop Internet",
        "deny-udr-internet",
        "rg-spoke2",
        "Deny-UDR-With-Specific-NextHop",
        "exemption",
    ] {
        assert!(
            denied[0].message.contains(needle),
            "{needle}: {}",
            denied[0].message
        );
    }
    assert!(report.has_problems(), "plan/apply exit 3");
    // Spoke1 converged all the same.
    let stats = em.stats();
    let denials = |s: &kmsroute::emulator::Stats| {
        s.by_operation
            .iter()
            .filter(|(op, _)| op.ends_with(" 403"))
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let spoke2_writes = report
        .plan
        .writes
        .iter()
        .filter(|w| w.write.table().subscription().starts_with("2222"))
        .count() as u64;
    // Two routes into legacy's table, private's table creation, then its association (not
    // attempted once the creation was denied).
    assert_eq!(spoke2_writes, 4, "{:?}", report.plan.writes);
    assert_eq!(
        denials(&stats),
        3,
        "each denied write attempted once, never retried: {stats:?}"
    );
    assert_eq!(report.writes_failed() as u64, spoke2_writes);
    assert_eq!(report.writes_done(), report.plan.writes.len() - 4);
    let again = pass(&api, std::slice::from_ref(&policy), RunMode::Write).await;
    let still: Vec<&str> = again
        .plan
        .writes
        .iter()
        .map(|w| w.write.table().name())
        .collect();
    assert!(still.iter().all(|t| t.contains("spoke2")), "{still:?}");
    assert_eq!(denials(&em.stats()), 6, "once per pass");
}

/// A private subnet whose VMs have every kind of way out but one.
fn private_estate() -> Seed {
    let rg = format!("/subscriptions/{S1}/resourceGroups/rg/providers/Microsoft.Network");
    let subnet = format!("{rg}/virtualNetworks/v/subnets/private");
    let lb = format!("{rg}/loadBalancers/lb-out");
    let nic = |name: &str, extra: Value| {
        let mut props = json!({"privateIPAddress": "10.9.0.4", "subnet": {"id": subnet}});
        json_merge(&mut props, extra);
        json!({"id": format!("{rg}/networkInterfaces/{name}"), "location": "westeurope",
            "properties": {"virtualMachine": {"id": format!("/subscriptions/{S1}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}")},
                "ipConfigurations": [{"name": "ipconfig1", "properties": props}]}})
    };
    Seed {
        resources: vec![
            json!({"id": format!("{rg}/virtualNetworks/v"), "location": "westeurope", "tags": {"kms": "enabled"},
                "properties": {"addressSpace": {"addressPrefixes": ["10.9.0.0/16"]}, "subnets": [
                    {"id": subnet, "name": "private", "properties": {"addressPrefix": "10.9.0.0/24", "defaultOutboundAccess": false}}]}}),
            json!({"id": format!("{rg}/publicIPAddresses/pip-1"), "location": "westeurope", "sku": {"name": "Standard"}, "properties": {"publicIPAllocationMethod": "Static"}}),
            json!({"id": lb, "location": "westeurope", "sku": {"name": "Standard"}, "properties": {
                "frontendIPConfigurations": [{"id": format!("{lb}/frontendIPConfigurations/fe"), "name": "fe", "properties": {"publicIPAddress": {"id": format!("{rg}/publicIPAddresses/pip-1")}}}],
                "backendAddressPools": [
                    {"id": format!("{lb}/backendAddressPools/out"), "name": "out"},
                    {"id": format!("{lb}/backendAddressPools/in-only"), "name": "in-only"}],
                "outboundRules": [{"id": format!("{lb}/outboundRules/all"), "name": "all", "properties": {
                    "protocol": "All", "frontendIPConfigurations": [{"id": format!("{lb}/frontendIPConfigurations/fe")}],
                    "backendAddressPool": {"id": format!("{lb}/backendAddressPools/out")}}}]}}),
            nic(
                "vm-pip",
                json!({"publicIPAddress": {"id": format!("{rg}/publicIPAddresses/pip-1")}}),
            ),
            nic(
                "vm-lb",
                json!({"loadBalancerBackendAddressPools": [{"id": format!("{lb}/backendAddressPools/out")}]}),
            ),
            nic(
                "vm-inbound-only",
                json!({"loadBalancerBackendAddressPools": [{"id": format!("{lb}/backendAddressPools/in-only")}]}),
            ),
            nic(
                "vm-dangling-ip",
                json!({"publicIPAddress": {"id": format!("{rg}/publicIPAddresses/deleted")}}),
            ),
        ],
        ..Seed::default()
    }
}

fn json_merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

#[tokio::test]
async fn egress_is_judged_per_nic_on_every_path_and_counted() {
    let (em, api) = setup(Config::default(), private_estate()).await;
    let mut policy = example_policy();
    policy.selector.as_mut().unwrap().subscriptions = BTreeSet::from([S1.to_string()]);
    let report = pass(&api, std::slice::from_ref(&policy), RunMode::Write).await;
    let mine = &report.policies[0];
    let egress: Vec<&kmsroute::api::Problem> = mine
        .problems
        .iter()
        .filter(|p| p.reason == "NoInternetEgress")
        .collect();
    assert_eq!(egress.len(), 1, "{:?}", mine.problems);
    // vm-pip (public IP) and vm-lb (outbound rule) get out; vm-inbound-only (a pool with no
    // outbound rule) and vm-dangling-ip (a deleted public IP) do not.
    assert!(
        egress[0].message.starts_with("2 of 4 running NIC(s)"),
        "{}",
        egress[0].message
    );
    assert_eq!(mine.egress_warnings, 1);
    // The listing is one call per kind in the one subscription that needed it.
    let stats = em.stats();
    for op in [
        "NetworkInterfaces_ListAll 200",
        "PublicIPAddresses_ListAll 200",
        "LoadBalancers_ListAll 200",
    ] {
        assert_eq!(stats.by_operation.get(op), Some(&1), "{op}: {stats:?}");
    }
}

#[tokio::test]
async fn a_private_subnet_whose_every_vm_has_a_way_out_gets_no_warning() {
    let mut seed = private_estate();
    // Drop the two NICs without a way out.
    seed.resources.retain(|r| {
        !r["id"].as_str().unwrap().contains("vm-inbound-only")
            && !r["id"].as_str().unwrap().contains("vm-dangling-ip")
    });
    let (_em, api) = setup(Config::default(), seed).await;
    let mut policy = example_policy();
    policy.selector.as_mut().unwrap().subscriptions = BTreeSet::from([S1.to_string()]);
    let report = pass(&api, std::slice::from_ref(&policy), RunMode::Write).await;
    let mine = &report.policies[0];
    assert!(
        mine.problems.iter().all(|p| p.reason != "NoInternetEgress"),
        "{:?}",
        mine.problems
    );
    assert_eq!(mine.egress_warnings, 0);
}

#[tokio::test]
async fn a_policy_selecting_a_management_group_covers_every_subscription_under_it() {
    use kmsroute::emulator::ManagementGroup;
    let mut seed = estate();
    seed.management_groups = vec![
        ManagementGroup {
            name: "corp".into(),
            parent: None,
            subscriptions: vec![],
        },
        ManagementGroup {
            name: "landing-zones".into(),
            parent: Some("corp".into()),
            subscriptions: vec![S1.into(), "22222222-2222-2222-2222-222222222222".into()],
        },
    ];
    let (em, api) = setup(Config::default(), seed).await;
    let by_list = example_policy();
    let mut by_group = example_policy();
    let sel = by_group.selector.as_mut().unwrap();
    sel.subscriptions.clear();
    sel.management_groups = BTreeSet::from(["corp".to_string()]);
    let plan_list = pass(&api, std::slice::from_ref(&by_list), RunMode::PlanOnly).await;
    let plan_group = pass(&api, std::slice::from_ref(&by_group), RunMode::PlanOnly).await;
    assert_eq!(plan_group.plan.writes, plan_list.plan.writes);
    assert_eq!(
        plan_group.policies[0].summary,
        plan_list.policies[0].summary
    );
    let applied = pass(&api, std::slice::from_ref(&by_group), RunMode::Write).await;
    assert_eq!(applied.writes_done(), plan_list.plan.writes.len());
    assert!(
        em.stats()
            .by_operation
            .contains_key("ManagementGroups_GetDescendants 200")
    );
    // A group that does not exist is a problem of the policy (exit 3); the rest still counts.
    let mut typo = by_group.clone();
    typo.selector
        .as_mut()
        .unwrap()
        .management_groups
        .insert("crop".into());
    let r = pass(&api, std::slice::from_ref(&typo), RunMode::PlanOnly).await;
    assert!(r.has_problems());
    assert!(
        r.policies[0]
            .problems
            .iter()
            .any(|p| p.subnet_id.ends_with("/managementGroups/crop")
                && p.reason == "SubscriptionUnreadable"),
        "{:?}",
        r.policies[0].problems
    );
    assert_eq!(r.policies[0].summary.subnets_matched, 7);
    // ARM failing (not refusing) the group's read fails the pass, as a subscription listing's
    // failure does: no plan is made from a partial selection, and nothing is written.
    em.add_fault(FaultRule {
        method: Some("GET".into()),
        path_contains: Some("/descendants".into()),
        status: Some(503),
        code: Some("ServiceUnavailable".into()),
        ..Default::default()
    });
    let writes_before = em.stats().writes;
    let failed = executor::pass(
        &api,
        std::slice::from_ref(&typo),
        &PassParams {
            mode: RunMode::Write,
            ..PassParams::default()
        },
        &PassDeps::default(),
        &|_| {},
    )
    .await
    .expect_err("a 503 on the descendants read fails the pass");
    assert_eq!(failed.status, Some(503), "{failed}");
    assert_eq!(failed.class, kmsroute::azure::ErrorClass::Retryable);
    assert_eq!(em.stats().writes, writes_before);
}

#[tokio::test]
async fn a_stale_approval_writes_nothing_and_says_so() {
    let (em, api) = setup(Config::default(), estate()).await;
    let policy = example_policy();
    let preview = pass(&api, std::slice::from_ref(&policy), RunMode::PlanOnly).await;
    // Someone repairs one of the routes by hand after the user approved the preview.
    let mut approved = preview.plan.writes.clone();
    approved.pop();
    let report = executor::pass(
        &api,
        std::slice::from_ref(&policy),
        &PassParams {
            mode: RunMode::Write,
            approved: Some(Arc::new(approved)),
            ..PassParams::default()
        },
        &PassDeps::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(report.approval_stale);
    assert_eq!(report.writes_done(), 0);
    assert_eq!(em.stats().writes, 0);
    // The approved plan, unchanged, runs.
    let report = executor::pass(
        &api,
        std::slice::from_ref(&policy),
        &PassParams {
            mode: RunMode::Write,
            approved: Some(Arc::new(preview.plan.writes.clone())),
            ..PassParams::default()
        },
        &PassDeps::default(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(!report.approval_stale);
    assert_eq!(report.writes_done(), preview.plan.writes.len());
}
