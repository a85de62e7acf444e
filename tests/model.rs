//! Issue 8: the model test. Random estates and random interleavings of controller passes
//! (whole, or cut off after k writes) and foreign edits (the other writer in the portal). After
//! every pass the invariants hold: nothing foreign changed since the other writer last touched
//! it, no existing association was replaced, every owned route is a `/32` to `Internet` for a
//! KMS address, no table holds a prefix twice. Once the edits stop, one pass converges and the
//! next plans nothing.
//!
//! The same runs with passes that plan on the controller's shared inventory: foreign edits make
//! its view stale until a refresh step, so writes planned on an outdated view meet ARM's
//! preconditions; the invariants must hold all the same.
//!
//! Real executor and ARM client against the in-process emulator. `PROPTEST_CASES` sets the
//! number of cases (default 300 here).

mod support;

use kmsroute::api::{KmsRoutePolicySpec, validate};
use kmsroute::azure::client::ClientSettings;
use kmsroute::azure::policy::RetrySettings;
use kmsroute::catalog::Cloud;
use kmsroute::controller::inventory::{InventorySettings, SharedInventory};
use kmsroute::controller::metrics::ControllerMetrics;
use kmsroute::emulator::{Config, FaultRule, OtherWrite, Seed};
use kmsroute::executor::{self, InventorySource, PassDeps, PassParams, RunMode};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use support::invariants::{bad_owned_routes, diff, duplicate_prefixes, foreign};

const SUBS: [&str; 2] = [
    "00000000-0000-0000-0000-00000000000a",
    "00000000-0000-0000-0000-00000000000b",
];
const SUBNET_NAMES: [&str; 5] = ["app", "web", "db", "GatewaySubnet", "data"];

/// Routes the estate and the other writer draw from: foreign ones, a foreign one that sends a
/// KMS address to an NVA (a conflict), owned-by-name ones right and wrong.
fn route_pool(i: usize) -> Value {
    let (name, prefix, hop, ip) = [
        ("fw", "0.0.0.0/0", "VirtualAppliance", Some("10.0.0.4")),
        ("onprem", "192.168.0.0/16", "VirtualNetworkGateway", None),
        (
            "legacy-kms",
            "23.102.135.246/32",
            "VirtualAppliance",
            Some("10.0.0.5"),
        ),
        ("kms-20-118-99-224", "20.118.99.224/32", "Internet", None),
        (
            "kms-40-83-235-53",
            "40.83.235.53/32",
            "VirtualAppliance",
            Some("10.0.0.6"),
        ),
        ("partner", "52.1.2.3/32", "Internet", None),
    ][i % 6];
    let mut props = json!({"addressPrefix": prefix, "nextHopType": hop});
    if let Some(ip) = ip {
        props["nextHopIpAddress"] = json!(ip);
    }
    json!({"name": name, "properties": props})
}

fn rg(sub: &str) -> String {
    format!("/subscriptions/{sub}/resourceGroups/rg0/providers/Microsoft.Network")
}

#[derive(Debug, Clone)]
struct SubnetSeed {
    name: usize,
    table: Option<usize>,
    nsg: bool,
    no_egress: bool,
}

#[derive(Debug, Clone)]
struct VnetSeed {
    sub: usize,
    tagged: bool,
    subnets: Vec<SubnetSeed>,
}

#[derive(Debug, Clone)]
struct TableSeed {
    sub: usize,
    routes: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Edit {
    DeleteRoute {
        table: usize,
        route: usize,
    },
    PutRoute {
        table: usize,
        route: usize,
    },
    Associate {
        vnet: usize,
        subnet: usize,
        table: Option<usize>,
    },
    PatchNsg {
        vnet: usize,
        subnet: usize,
    },
    DeleteTable {
        table: usize,
    },
    DeleteCreatedTable {
        vnet: usize,
        subnet: usize,
    },
}

#[derive(Debug, Clone)]
enum Step {
    Pass,
    /// A pass whose writes fail from the k-th on (a crash or an outage mid-plan).
    CutPass(u64),
    Foreign(Edit),
    /// The shared inventory refreshes both subscriptions (no-op for listing passes).
    Refresh,
}

fn estate_strategy() -> impl Strategy<Value = (Vec<VnetSeed>, Vec<TableSeed>)> {
    let tables = prop::collection::vec(
        (0..2usize, prop::collection::vec(0..6usize, 0..4))
            .prop_map(|(sub, routes)| TableSeed { sub, routes }),
        0..4,
    );
    let subnet = (
        0..5usize,
        prop::option::of(0..4usize),
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(name, table, nsg, no_egress)| SubnetSeed {
            name,
            table,
            nsg,
            no_egress,
        });
    let vnets = prop::collection::vec(
        (
            0..2usize,
            prop::bool::weighted(0.8),
            prop::collection::vec(subnet, 1..5),
        )
            .prop_map(|(sub, tagged, subnets)| VnetSeed {
                sub,
                tagged,
                subnets,
            }),
        1..4,
    );
    (vnets, tables)
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let edit = prop_oneof![
        (0..4usize, 0..6usize).prop_map(|(table, route)| Edit::DeleteRoute { table, route }),
        (0..4usize, 0..6usize).prop_map(|(table, route)| Edit::PutRoute { table, route }),
        (0..4usize, 0..5usize, prop::option::of(0..4usize)).prop_map(|(vnet, subnet, table)| {
            Edit::Associate {
                vnet,
                subnet,
                table,
            }
        }),
        (0..4usize, 0..5usize).prop_map(|(vnet, subnet)| Edit::PatchNsg { vnet, subnet }),
        (0..4usize).prop_map(|table| Edit::DeleteTable { table }),
        (0..4usize, 0..5usize).prop_map(|(vnet, subnet)| Edit::DeleteCreatedTable { vnet, subnet }),
    ];
    prop_oneof![
        3 => Just(Step::Pass),
        2 => (0..6u64).prop_map(Step::CutPass),
        4 => edit.prop_map(Step::Foreign),
        1 => Just(Step::Refresh),
    ]
}

/// The seed, and the subnet IDs by (vnet, position) for the other writer to aim at.
fn build(vnets: &[VnetSeed], tables: &[TableSeed]) -> (Seed, Vec<Vec<String>>, Vec<String>) {
    let mut resources = Vec::new();
    let table_ids: Vec<String> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}/routeTables/rt{i}", rg(SUBS[t.sub])))
        .collect();
    for (i, t) in tables.iter().enumerate() {
        let mut names = BTreeSet::new();
        let routes: Vec<Value> = t
            .routes
            .iter()
            .map(|&r| route_pool(r))
            .filter(|r| names.insert(r["name"].as_str().unwrap_or_default().to_string()))
            .collect();
        resources.push(
            json!({"id": table_ids[i], "location": "westeurope", "properties": {"routes": routes}}),
        );
    }
    for s in SUBS {
        resources.push(json!({"id": format!("{}/networkSecurityGroups/nsg", rg(s)), "location": "westeurope", "properties": {"securityRules": []}}));
        resources.push(json!({"id": format!("{}/networkSecurityGroups/nsg2", rg(s)), "location": "westeurope", "properties": {"securityRules": []}}));
    }
    let mut subnet_ids = Vec::new();
    for (v, vn) in vnets.iter().enumerate() {
        let sub = SUBS[vn.sub];
        let vnet_id = format!("{}/virtualNetworks/vnet{v}", rg(sub));
        let mut seen = BTreeSet::new();
        let mut subnets = Vec::new();
        let mut ids = Vec::new();
        for (i, s) in vn.subnets.iter().enumerate() {
            let name = SUBNET_NAMES[s.name];
            if !seen.insert(name) {
                continue;
            }
            let mut props = json!({"addressPrefix": format!("10.{v}.{i}.0/24")});
            if let Some(t) = s.table
                && let Some(table) = tables.get(t)
                && table.sub == vn.sub
            {
                props["routeTable"] = json!({"id": table_ids[t]});
            }
            if s.nsg {
                props["networkSecurityGroup"] =
                    json!({"id": format!("{}/networkSecurityGroups/nsg", rg(sub))});
                props["serviceEndpoints"] =
                    json!([{"service": "Microsoft.Storage", "locations": ["westeurope"]}]);
            }
            if s.no_egress {
                props["defaultOutboundAccess"] = json!(false);
            }
            let id = format!("{vnet_id}/subnets/{name}");
            ids.push(id.clone());
            subnets.push(json!({"id": id, "name": name, "properties": props}));
        }
        let tags = if vn.tagged {
            json!({"kms": "enabled"})
        } else {
            json!({})
        };
        resources.push(json!({"id": vnet_id, "location": "westeurope", "tags": tags,
            "properties": {"addressSpace": {"addressPrefixes": [format!("10.{v}.0.0/16")]}, "subnets": subnets}}));
        subnet_ids.push(ids);
    }
    (
        Seed {
            resources,
            learned_routes: vec![],
            ..Seed::default()
        },
        subnet_ids,
        table_ids,
    )
}

fn other_write(edit: &Edit, subnets: &[Vec<String>], tables: &[String]) -> Option<OtherWrite> {
    let subnet = |v: usize, s: usize| subnets.get(v).and_then(|l| l.get(s)).cloned();
    let table = |t: usize| tables.get(t).cloned();
    Some(match edit {
        Edit::DeleteRoute { table: t, route } => OtherWrite::DeleteRoute {
            route_table: table(*t)?,
            route: route_pool(*route)["name"].as_str()?.to_string(),
        },
        Edit::PutRoute { table: t, route } => OtherWrite::PutRoute {
            route_table: table(*t)?,
            route: route_pool(*route),
        },
        Edit::Associate {
            vnet,
            subnet: s,
            table: t,
        } => {
            let subnet = subnet(*vnet, *s)?;
            let route_table = match t {
                Some(t) => {
                    let t = table(*t)?;
                    // ARM refuses a table of another subscription.
                    if t.split('/').nth(2) != subnet.split('/').nth(2) {
                        return None;
                    }
                    Some(t)
                }
                None => None,
            };
            OtherWrite::SetSubnetRouteTable {
                subnet,
                route_table,
            }
        }
        Edit::PatchNsg { vnet, subnet: s } => {
            let subnet = subnet(*vnet, *s)?;
            let sub = subnet.split('/').nth(2)?.to_string();
            OtherWrite::PatchSubnet {
                subnet,
                properties: json!({"networkSecurityGroup": {"id": format!("{}/networkSecurityGroups/nsg2", rg(&sub))}}),
            }
        }
        Edit::DeleteTable { table: t } => OtherWrite::DeleteRouteTable {
            route_table: table(*t)?,
        },
        Edit::DeleteCreatedTable { vnet, subnet: s } => {
            // The table kmsroute would create for this subnet ({vnet}-{subnet}-kms).
            let subnet = subnet(*vnet, *s)?;
            let (vnet_id, name) = subnet.split_once("/subnets/")?;
            let vnet_name = vnet_id.rsplit('/').next()?;
            let base = vnet_id.split("/virtualNetworks/").next()?;
            OtherWrite::DeleteRouteTable {
                route_table: format!("{base}/routeTables/{vnet_name}-{name}-kms"),
            }
        }
    })
}

fn allowed_prefixes() -> BTreeSet<String> {
    Cloud::AzurePublic
        .endpoints()
        .kms_addresses
        .iter()
        .map(|a| format!("{a}/32"))
        .collect()
}

async fn run_case(
    vnets: Vec<VnetSeed>,
    tables: Vec<TableSeed>,
    steps: Vec<Step>,
    cached: bool,
) -> Result<(), String> {
    let (seed, subnets, table_ids) = build(&vnets, &tables);
    let em = support::arm::emulator(Config::default(), seed).await;
    let api = Arc::new(support::arm::client(
        &em,
        ClientSettings {
            retry: RetrySettings {
                max_attempts: 2,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
                ..RetrySettings::default()
            },
            ..ClientSettings::default()
        },
    ));
    // The controller's inventory, without refresh loops: the steps say when it refreshes.
    let (shared, _changes) = SharedInventory::new(
        api.clone(),
        InventorySettings::default(),
        Arc::new(ControllerMetrics::default()),
    );
    let source: Option<Arc<dyn InventorySource>> = cached.then(|| shared.clone() as _);
    let refresh = || async {
        for sub in SUBS {
            let _ = shared.refresh(sub, None).await;
        }
    };
    let spec: KmsRoutePolicySpec = serde_json::from_value(json!({
        "selector": {"subscriptions": SUBS, "virtualNetworkTags": {"kms": "enabled"}},
    }))
    .map_err(|e| e.to_string())?;
    let policy = validate("model", None, &spec, Cloud::AzurePublic)
        .map_err(|e| format!("{e:?}"))?
        .desired;
    let allowed = allowed_prefixes();
    let mut expected = foreign(&em.dump());
    // kms-* routes that are not /32s to Internet and that someone else made (e.g. in a table
    // no selected subnet uses): kmsroute must not make more of them.
    let mut bad_before: BTreeSet<String> =
        bad_owned_routes(&em.dump(), &allowed).into_iter().collect();
    let pass = || async {
        executor::pass(
            api.as_ref(),
            std::slice::from_ref(&policy),
            &PassParams {
                mode: RunMode::Write,
                concurrency: 2,
                ..PassParams::default()
            },
            &PassDeps {
                inventory: source.clone(),
                ..PassDeps::default()
            },
            &|_| {},
        )
        .await
    };
    let check = |when: &str,
                 expected: &std::collections::BTreeMap<String, Value>,
                 bad_before: &BTreeSet<String>| {
        let dump = em.dump();
        let mut bad = diff(expected, &foreign(&dump));
        bad.extend(duplicate_prefixes(&dump));
        bad.extend(
            bad_owned_routes(&dump, &allowed)
                .into_iter()
                .filter(|b| !bad_before.contains(b)),
        );
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("after {when}: {bad:?}"))
        }
    };
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Pass => {
                let _ = pass().await;
                check(&format!("step {i} (pass)"), &expected, &bad_before)?;
            }
            Step::CutPass(k) => {
                for method in ["PUT", "DELETE"] {
                    em.add_fault(FaultRule {
                        method: Some(method.into()),
                        path_contains: Some("/providers/Microsoft.Network/".into()),
                        status: Some(500),
                        code: Some("InternalServerError".into()),
                        after: Some(*k),
                        ..FaultRule::default()
                    });
                }
                let _ = pass().await;
                em.clear_faults();
                check(
                    &format!("step {i} (pass cut after {k})"),
                    &expected,
                    &bad_before,
                )?;
            }
            Step::Refresh => refresh().await,
            Step::Foreign(edit) => {
                if let Some(w) = other_write(edit, &subnets, &table_ids)
                    && em.other_writer(w).is_ok()
                {
                    expected = foreign(&em.dump());
                    bad_before = bad_owned_routes(&em.dump(), &allowed).into_iter().collect();
                }
            }
        }
    }
    // The edits stop (and the inventory catches up): one pass converges, the next plans nothing.
    refresh().await;
    pass().await.map_err(|e| e.to_string())?;
    check("the converging pass", &expected, &bad_before)?;
    let last = pass().await.map_err(|e| e.to_string())?;
    if !last.plan.writes.is_empty() {
        return Err(format!(
            "not converged: {} write(s) still planned: {:?}",
            last.plan.writes.len(),
            last.plan.writes
        ));
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn passes_and_foreign_edits_interleaved_keep_the_invariants_and_converge(
        (vnets, tables) in estate_strategy(),
        steps in prop::collection::vec(step_strategy(), 1..10),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcome = rt.block_on(run_case(vnets, tables, steps, false));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }

    #[test]
    fn passes_on_a_stale_shared_inventory_keep_the_invariants_and_converge(
        (vnets, tables) in estate_strategy(),
        steps in prop::collection::vec(step_strategy(), 1..10),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcome = rt.block_on(run_case(vnets, tables, steps, true));
        prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
    }
}
