//! Property tests for the planner over random estates and policy sets. Invariants:
//! one plan converges (planning again writes nothing); foreign routes and every subnet property
//! but a newly set `routeTable` are untouched; nothing broader than a `/32`, and nothing but
//! next hop `Internet`, is ever written; `Audit` writes nothing; the outcome does not depend on
//! the order policies arrive in; cleanup returns the estate to what it was. Release (a subnet
//! that left every selection): only owned routes go, and only a table its policy created is
//! dissociated and deleted, never one a selected subnet uses, never under `Orphan` or `Audit`.
//! Verdicts are per subscription: judging each subscription's listing alone gives the verdicts
//! of the whole estate (what lets a pass re-read after its writes one subscription at a time).
//! `PROPTEST_CASES=5000 cargo test --test planner_props` runs more cases.

use k8s_openapi::jiff::Timestamp;
use kmsroute::api::DesiredState;
use kmsroute::api::{KmsRoutePolicySpec, Mode, validate};
use kmsroute::catalog::Cloud;
use kmsroute::ids::{RouteTableId, SubnetId, VnetId};
use kmsroute::model::{Inventory, NextHopType, Route, RouteTable, Subnet, VirtualNetwork};
use kmsroute::plan::{
    Write, plan, plan_cleanup, plan_cleanup_parts, plan_parts, simulate, sort_verdicts,
    verdicts_in, verdicts_outside,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const SUBS: [&str; 2] = [
    "00000000-0000-0000-0000-00000000000a",
    "00000000-0000-0000-0000-00000000000b",
];
const LOCATIONS: [&str; 2] = ["westeurope", "northeurope"];
const SUBNET_NAMES: [&str; 6] = [
    "app",
    "db",
    "web",
    "GatewaySubnet",
    "AzureBastionSubnet",
    "data",
];
const ROUTE_NAMES: [&str; 8] = [
    "kms-20-118-99-224",
    "kms-40-83-235-53",
    "kms-52-1-2-3",
    "corp-kms-23-102-135-246",
    "corp-a",
    "to-nva",
    "default",
    "onprem",
];
const PREFIXES: [&str; 8] = [
    "20.118.99.224/32",
    "40.83.235.53/32",
    "23.102.135.246/32",
    "52.1.2.3/32",
    "0.0.0.0/0",
    "10.0.0.0/8",
    "20.118.99.0/24",
    "AzureCloud",
];
const HOPS: [NextHopType; 4] = [
    NextHopType::Internet,
    NextHopType::VirtualAppliance,
    NextHopType::VirtualNetworkGateway,
    NextHopType::None,
];

#[derive(Debug, Clone)]
struct VnetSeed {
    sub: usize,
    rg: usize,
    location: usize,
    prod: bool,
    subnets: Vec<(usize, Option<bool>, bool, Option<usize>)>, // name, defaultOutboundAccess, nat, table
}

#[derive(Debug, Clone)]
struct TableSeed {
    sub: usize,
    rg: usize,
    location: usize,
    routes: Vec<(usize, usize, usize)>, // name, prefix, hop
    kmsroute_made: bool,
}

#[derive(Debug, Clone)]
struct PolicySeed {
    selector_subs: Vec<usize>,
    only_prod: bool,
    exclude: Option<usize>,
    explicit: Vec<(usize, usize)>, // vnet index, subnet index
    audit: bool,
    replace: bool,
    create: bool,
    extra: bool,
    template: usize,
    corp_prefix: bool,
}

fn vnet_seed() -> impl Strategy<Value = VnetSeed> {
    (
        0..2usize,
        0..2usize,
        0..2usize,
        any::<bool>(),
        prop::collection::vec(
            (
                0..6usize,
                prop::option::of(any::<bool>()),
                any::<bool>(),
                prop::option::of(0..4usize),
            ),
            1..5,
        ),
    )
        .prop_map(|(sub, rg, location, prod, subnets)| VnetSeed {
            sub,
            rg,
            location,
            prod,
            subnets,
        })
}

fn table_seed() -> impl Strategy<Value = TableSeed> {
    (
        0..2usize,
        0..2usize,
        0..2usize,
        prop::collection::vec((0..8usize, 0..8usize, 0..4usize), 0..6),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(sub, rg, location, routes, kmsroute_made)| TableSeed {
            sub,
            rg,
            location,
            routes,
            kmsroute_made,
        })
}

fn policy_seed() -> impl Strategy<Value = PolicySeed> {
    (
        prop::collection::vec(0..2usize, 0..3),
        any::<bool>(),
        prop::option::of(0..6usize),
        prop::collection::vec((0..4usize, 0..5usize), 0..3),
        prop::bool::weighted(0.2),
        any::<bool>(),
        prop::bool::weighted(0.8),
        any::<bool>(),
        0..3usize,
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(
                selector_subs,
                only_prod,
                exclude,
                explicit,
                audit,
                replace,
                create,
                extra,
                template,
                corp_prefix,
            )| PolicySeed {
                selector_subs,
                only_prod,
                exclude,
                explicit,
                audit,
                replace,
                create,
                extra,
                template,
                corp_prefix,
            },
        )
}

fn build_inventory(vnets: &[VnetSeed], tables: &[TableSeed]) -> Inventory {
    let mut inv = Inventory::default();
    inv.subscriptions.extend(SUBS.iter().map(|s| s.to_string()));
    for (i, t) in tables.iter().enumerate() {
        let mut routes: Vec<Route> = Vec::new();
        for &(n, p, h) in &t.routes {
            if routes.iter().any(|r| r.name == ROUTE_NAMES[n]) {
                continue;
            }
            let hop = HOPS[h].clone();
            routes.push(Route {
                name: ROUTE_NAMES[n].into(),
                address_prefix: PREFIXES[p].into(),
                next_hop_ip_address: (hop == NextHopType::VirtualAppliance)
                    .then(|| "10.9.9.9".into()),
                next_hop_type: hop,
            });
        }
        let mut tags = BTreeMap::new();
        if t.kmsroute_made {
            tags.insert("managed-by".to_string(), "kmsroute".to_string());
            tags.insert("kmsroute.io-policy".to_string(), "p0".to_string());
        }
        inv.route_tables.push(RouteTable {
            id: RouteTableId::new(SUBS[t.sub], &format!("rg{}", t.rg), &format!("rt{i}")),
            location: LOCATIONS[t.location].into(),
            tags: tags.into(),
            disable_bgp_route_propagation: false,
            routes,
            subnets: vec![],
        });
    }
    for (i, v) in vnets.iter().enumerate() {
        let id = VnetId::new(SUBS[v.sub], &format!("rg{}", v.rg), &format!("vnet{i}"));
        let mut subnets: Vec<Subnet> = Vec::new();
        for &(n, doa, nat, table) in &v.subnets {
            let sid = id.subnet(SUBNET_NAMES[n]);
            if subnets.iter().any(|s| s.id == sid) {
                continue;
            }
            // Azure only lets a subnet use a table in its own subscription and region.
            let table = table.filter(|&t| {
                t < tables.len() && tables[t].sub == v.sub && tables[t].location == v.location
            });
            let route_table = table.map(|t| inv.route_tables[t].id.clone());
            if let Some(t) = table {
                inv.route_tables[t].subnets.push(sid.clone());
            }
            subnets.push(Subnet {
                id: sid,
                route_table,
                nat_gateway: nat,
                default_outbound_access: doa,
            });
        }
        let mut tags = BTreeMap::new();
        tags.insert(
            "env".to_string(),
            if v.prod { "prod" } else { "dev" }.to_string(),
        );
        inv.virtual_networks.push(VirtualNetwork {
            id,
            location: LOCATIONS[v.location].into(),
            tags: tags.into(),
            subnets,
        });
    }
    inv
}

fn build_policy(i: usize, seed: &PolicySeed, inv: &Inventory) -> DesiredState {
    let mut subs: Vec<String> = seed
        .selector_subs
        .iter()
        .map(|&s| SUBS[s].to_string())
        .collect();
    subs.sort();
    subs.dedup();
    let mut explicit: Vec<String> = seed
        .explicit
        .iter()
        .filter_map(|&(v, s)| {
            inv.virtual_networks
                .get(v)
                .and_then(|v| v.subnets.get(s))
                .map(|s| s.id.to_string())
        })
        .collect();
    explicit.sort();
    explicit.dedup();
    let template = ["{vnet}-{subnet}-kms", "{vnet}-kms", "kms-{location}"][seed.template];
    let mut spec = serde_json::json!({
        "kms": {"additionalAddresses": if seed.extra { vec!["52.1.2.3"] } else { vec![] }},
        "mode": if seed.audit { "Audit" } else { "Enforce" },
        "conflictPolicy": if seed.replace { "Replace" } else { "Report" },
        "routeTable": {
            "createIfMissing": seed.create,
            "nameTemplate": template,
        },
        "routeNamePrefix": if seed.corp_prefix { "corp-kms-" } else { "kms-" },
        "subnets": explicit,
    });
    if !subs.is_empty() || explicit.is_empty() {
        let mut sel = serde_json::json!({"subscriptions": if subs.is_empty() { vec![SUBS[0].to_string()] } else { subs }});
        if seed.only_prod {
            sel["virtualNetworkTags"] = serde_json::json!({"env": "prod"});
        }
        if let Some(x) = seed.exclude {
            sel["excludeSubnetNames"] = serde_json::json!([SUBNET_NAMES[x]]);
        }
        spec["selector"] = sel;
    }
    let spec: KmsRoutePolicySpec = serde_json::from_value(spec).unwrap();
    let created = Timestamp::from_second(1_700_000_000 + i as i64).ok();
    validate(&format!("p{i}"), created, &spec, Cloud::AzurePublic)
        .unwrap()
        .desired
}

fn estate() -> impl Strategy<Value = (Inventory, Vec<DesiredState>)> {
    (
        prop::collection::vec(vnet_seed(), 1..5),
        prop::collection::vec(table_seed(), 0..5),
        prop::collection::vec(policy_seed(), 1..3),
    )
        .prop_map(|(v, t, p)| {
            let inv = build_inventory(&v, &t);
            let policies = p
                .iter()
                .enumerate()
                .map(|(i, s)| build_policy(i, s, &inv))
                .collect();
            (inv, policies)
        })
}

fn writes(p: &kmsroute::plan::Plan) -> Vec<&Write> {
    p.writes.iter().map(|w| &w.write).collect()
}

fn owned_by_any(policies: &[DesiredState], name: &str) -> bool {
    policies.iter().any(|p| p.owns_route_name(name))
}

/// True when some policy selects this subnet now.
fn selected(policies: &[DesiredState], inv: &Inventory, id: &SubnetId) -> bool {
    let tags = inv
        .virtual_networks
        .iter()
        .find(|v| v.id == id.vnet())
        .map(|v| v.tags.clone())
        .unwrap_or_default();
    policies.iter().any(|p| p.selects(id, &tags))
}

/// The subnets using a table in an inventory.
fn users(inv: &Inventory, table: &RouteTableId) -> Vec<SubnetId> {
    inv.virtual_networks
        .iter()
        .flat_map(|v| v.subnets.iter())
        .filter(|s| s.route_table.as_ref() == Some(table))
        .map(|s| s.id.clone())
        .collect()
}

/// A table `policy` may release: one it created, or one holding its owned routes, in its
/// subscriptions, that subnets use but none selected by any policy, nor a platform subnet.
fn releasable(
    policy: &DesiredState,
    policies: &[DesiredState],
    inv: &Inventory,
    t: &RouteTable,
) -> bool {
    let using = users(inv, &t.id);
    let created = t
        .tags
        .get("kmsroute.io-policy")
        .is_some_and(|v| v == &policy.name);
    policy
        .subscriptions()
        .contains(&t.id.subscription().to_ascii_lowercase())
        && (created
            || !using.is_empty() && t.routes.iter().any(|r| policy.owns_route_name(&r.name)))
        && !using.iter().any(|s| selected(policies, inv, s))
        && !using
            .iter()
            .any(|s| kmsroute::model::special_subnet_name(s.name()).is_some())
}

/// The part of `inv` one subscription's listing would hold.
fn listing_of(inv: &Inventory, sub: &str) -> Inventory {
    let mine = |s: &str| s.eq_ignore_ascii_case(sub);
    Inventory {
        subscriptions: inv
            .subscriptions
            .iter()
            .filter(|s| mine(s))
            .cloned()
            .collect(),
        virtual_networks: inv
            .virtual_networks
            .iter()
            .filter(|v| mine(v.id.subscription()))
            .cloned()
            .collect(),
        route_tables: inv
            .route_tables
            .iter()
            .filter(|t| mine(t.id.subscription()))
            .cloned()
            .collect(),
        unreadable: inv
            .unreadable
            .iter()
            .filter(|(s, _)| mine(s))
            .map(|(s, e)| (s.clone(), e.clone()))
            .collect(),
        list_pages: 0,
    }
}

fn subnets(inv: &Inventory) -> BTreeMap<SubnetId, Subnet> {
    inv.virtual_networks
        .iter()
        .flat_map(|v| v.subnets.iter().map(|s| (s.id.clone(), s.clone())))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn verdicts_judged_one_subscription_at_a_time_are_the_whole_estates((inv, policies) in estate(), relisted in 0usize..3) {
        let whole = plan(&policies, &inv).verdicts;
        // Relisted: none, one or both subscriptions; the others keep the whole plan's verdicts.
        let relisted: BTreeSet<String> =
            SUBS.iter().take(relisted).map(|s| s.to_ascii_lowercase()).collect();
        let mut parts: Vec<_> = verdicts_outside(&whole, &relisted).collect();
        for sub in &relisted {
            parts.extend(verdicts_in(&policies, &listing_of(&inv, sub), sub));
        }
        sort_verdicts(&mut parts);
        prop_assert_eq!(&parts, &whole);
    }

    /// The shared inventory holds one listing per subscription and plans over them where they
    /// are (issue 28: no merged copy): the same plan, and the same cleanup, as the whole.
    #[test]
    fn a_plan_over_per_subscription_listings_is_the_whole_estates((inv, policies) in estate()) {
        let parts: Vec<Inventory> = SUBS.iter().map(|s| listing_of(&inv, &s.to_ascii_lowercase())).collect();
        prop_assert_eq!(plan_parts(&policies, parts.iter()), plan(&policies, &inv));
        if let Some((first, others)) = policies.split_first() {
            prop_assert_eq!(
                plan_cleanup_parts(first, others, parts.iter()),
                plan_cleanup(first, others, &inv)
            );
        }
    }

    #[test]
    fn the_tables_of_a_plan_are_its_writes_by_table_in_order((inv, policies) in estate()) {
        let p = plan(&policies, &inv);
        let mut seen = vec![0usize; p.writes.len()];
        for t in &p.tables {
            prop_assert!(!t.writes.is_empty());
            prop_assert!(t.writes.windows(2).all(|w| w[0] < w[1]), "plan order in a lane");
            for &i in &t.writes {
                seen[i] += 1;
                prop_assert_eq!(p.writes[i].write.table(), &t.table);
                let needed = matches!(p.writes[i].write, Write::CreateRouteTable { .. } | Write::DissociateSubnet { .. });
                prop_assert_eq!(t.prerequisites.contains(&i), needed);
                if let Some(subnet) = p.writes[i].write.subnet() {
                    prop_assert!(t.subnets.contains(subnet), "{subnet} concerns its table");
                }
            }
            prop_assert!(t.prerequisites.iter().all(|i| t.writes.contains(i)));
        }
        prop_assert!(seen.iter().all(|&n| n == 1), "every write in exactly one table: {seen:?}");
        let keys: BTreeSet<_> = p.tables.iter().map(|t| t.table.key()).collect();
        prop_assert_eq!(keys.len(), p.tables.len(), "one lane per table");
        // A policy's share keeps the same shape.
        for policy in &policies {
            let mut mine = p.clone();
            mine.retain_policy(&policy.name);
            let total: usize = mine.tables.iter().map(|t| t.writes.len()).sum();
            prop_assert_eq!(total, mine.writes.len());
            prop_assert!(mine.writes.iter().all(|w| w.policy == policy.name));
        }
    }

    #[test]
    fn one_plan_converges_and_a_second_plan_writes_nothing((inv, policies) in estate()) {
        let first = plan(&policies, &inv);
        let after = simulate::apply(&inv, writes(&first)).map_err(TestCaseError::fail)?;
        let second = plan(&policies, &after);
        prop_assert!(second.writes.is_empty(), "second plan wrote: {:#?}", second.writes);
    }

    #[test]
    fn foreign_routes_are_never_changed_except_replaced_next_hops((inv, policies) in estate()) {
        let first = plan(&policies, &inv);
        let after = simulate::apply(&inv, writes(&first)).map_err(TestCaseError::fail)?;
        let replace_allowed = policies.iter().any(|p| p.conflict_policy == kmsroute::api::ConflictPolicy::Replace);
        for before in &inv.route_tables {
            let Some(now) = after.route_table(&before.id) else {
                // Only a released table its policy created, with nothing foreign in it.
                prop_assert!(
                    policies.iter().any(|p| releasable(p, &policies, &inv, before)
                        && before.tags.get("kmsroute.io-policy").is_some_and(|v| v == &p.name)),
                    "table {} deleted", before.id
                );
                prop_assert!(before.routes.iter().all(|r| owned_by_any(&policies, &r.name)));
                continue;
            };
            prop_assert_eq!(&now.tags, &before.tags);
            prop_assert_eq!(now.disable_bgp_route_propagation, before.disable_bgp_route_propagation);
            for r in before.routes.iter().filter(|r| !owned_by_any(&policies, &r.name)) {
                let n = now.routes.iter().find(|x| x.name == r.name).expect("foreign route kept");
                if n != r {
                    prop_assert!(replace_allowed, "foreign route {} changed without Replace", r.name);
                    prop_assert_eq!(&n.address_prefix, &r.address_prefix);
                    prop_assert_eq!(&n.next_hop_type, &NextHopType::Internet);
                }
            }
        }
    }

    #[test]
    fn subnets_only_ever_gain_a_route_table_in_their_own_region((inv, policies) in estate()) {
        let first = plan(&policies, &inv);
        let after = simulate::apply(&inv, writes(&first)).map_err(TestCaseError::fail)?;
        let before = subnets(&inv);
        let now = subnets(&after);
        for (id, b) in &before {
            let n = &now[id];
            let mut n_without_table = n.clone();
            n_without_table.route_table = b.route_table.clone();
            prop_assert_eq!(&n_without_table, b, "a property other than routeTable changed");
            if n.route_table != b.route_table && n.route_table.is_none() {
                // Released: the subnet left every selection and its table was the policy's own.
                let t = inv.route_table(b.route_table.as_ref().unwrap()).unwrap();
                prop_assert!(!selected(&policies, &inv, id), "a selected subnet {} was dissociated", id);
                prop_assert!(
                    policies.iter().any(|p| releasable(p, &policies, &inv, t)
                        && t.tags.get("kmsroute.io-policy").is_some_and(|v| v == &p.name)),
                    "{} dissociated from a table no policy created", id
                );
            } else if n.route_table != b.route_table {
                prop_assert!(b.route_table.is_none(), "an existing association was changed on {}", id);
                prop_assert!(kmsroute::model::special_subnet_name(id.name()).is_none());
                let t = after.route_table(n.route_table.as_ref().unwrap()).unwrap();
                let vnet = inv.virtual_networks.iter().find(|v| v.id == id.vnet()).unwrap();
                prop_assert_eq!(&t.location, &vnet.location);
                prop_assert_eq!(t.id.subscription(), id.subscription());
            }
        }
    }

    #[test]
    fn only_internet_host_routes_to_desired_addresses_are_written((inv, policies) in estate()) {
        let first = plan(&policies, &inv);
        let wanted: Vec<_> = policies.iter().flat_map(|p| p.destinations.iter().map(|d| d.address)).collect();
        for w in writes(&first) {
            let routes: Vec<&Route> = match w {
                Write::PutRoute { route, .. } => vec![route],
                Write::CreateRouteTable { routes, .. } => routes.iter().collect(),
                Write::DeleteRoute { name, .. } => {
                    prop_assert!(owned_by_any(&policies, name), "deleted foreign route {}", name);
                    vec![]
                }
                Write::DeleteRouteTable { table } | Write::DissociateSubnet { table, .. } => {
                    let t = inv.route_table(table).unwrap();
                    prop_assert!(
                        policies.iter().any(|p| releasable(p, &policies, &inv, t)),
                        "reconcile deleted or dissociated {} while it is still in use or not its own", table
                    );
                    vec![]
                }
                Write::AssociateSubnet { .. } => vec![],
            };
            for r in routes {
                prop_assert!(r.address_prefix.ends_with("/32"), "broad prefix {}", r.address_prefix);
                prop_assert_eq!(&r.next_hop_type, &NextHopType::Internet);
                prop_assert!(wanted.contains(&r.host_address().unwrap()));
            }
        }
    }

    #[test]
    fn audit_policies_write_nothing_and_judge_the_same((inv, policies) in estate()) {
        let mut policies = policies;
        let enforce_verdicts = {
            let mut all = policies.clone();
            for p in &mut all { p.mode = Mode::Enforce; }
            plan(&all, &inv).verdicts
        };
        for p in &mut policies { p.mode = Mode::Audit; }
        let audit = plan(&policies, &inv);
        prop_assert!(audit.writes.is_empty());
        prop_assert_eq!(audit.verdicts, enforce_verdicts);
    }

    #[test]
    fn the_plan_does_not_depend_on_policy_order((inv, policies) in estate()) {
        let mut reversed = policies.clone();
        reversed.reverse();
        prop_assert_eq!(plan(&policies, &inv), plan(&reversed, &inv));
    }

    #[test]
    fn an_in_sync_estate_stays_in_sync_and_every_verdict_is_settled((inv, policies) in estate()) {
        let after = simulate::apply(&inv, writes(&plan(&policies, &inv))).map_err(TestCaseError::fail)?;
        let settled = plan(&policies, &after);
        for v in &settled.verdicts {
            let enforce = policies.iter().any(|p| p.name == v.policy && p.mode == Mode::Enforce);
            if enforce {
                prop_assert!(
                    !matches!(v.verdict, kmsroute::plan::Verdict::Drift { .. }),
                    "enforce subnet {} still drifting: {:?}", v.subnet, v.verdict
                );
            }
        }
    }

    #[test]
    fn release_never_touches_a_table_a_selected_subnet_uses((inv, policies) in estate()) {
        let p = plan(&policies, &inv);
        for r in &p.released {
            for s in users(&inv, &r.table) {
                prop_assert!(!selected(&policies, &inv, &s), "released {} though {} is selected", r.table, s);
            }
        }
        // Every write to a table that no plan group needs is a release of an owned route.
        for w in p.writes.iter().filter(|w| p.released.iter().any(|r| &r.table == w.write.table())) {
            if let Write::DeleteRoute { name, .. } = &w.write {
                let owner = policies.iter().find(|q| q.name == w.policy).unwrap();
                prop_assert!(owner.owns_route_name(name));
            }
        }
    }

    #[test]
    fn orphan_and_audit_policies_release_nothing((inv, policies) in estate()) {
        let mut orphan = policies.clone();
        for p in &mut orphan { p.deletion_policy = kmsroute::api::DeletionPolicy::Orphan; }
        let o = plan(&orphan, &inv);
        prop_assert!(o.released.is_empty());
        let releases_a_table = |w: &Write| matches!(w, Write::DeleteRouteTable { .. } | Write::DissociateSubnet { .. });
        prop_assert!(o.writes.iter().all(|w| !releases_a_table(&w.write)), "an Orphan policy released a table");
        let mut audit = policies.clone();
        for p in &mut audit { p.mode = Mode::Audit; }
        let a = plan(&audit, &inv);
        prop_assert!(a.writes.is_empty());
        // Audit still reports what Enforce would release.
        let mut enforce = policies.clone();
        for p in &mut enforce { p.mode = Mode::Enforce; }
        prop_assert_eq!(a.released.len(), plan(&enforce, &inv).released.len());
    }

    #[test]
    fn cleanup_of_a_lone_policy_restores_every_association_and_foreign_route((inv, policies) in estate()) {
        let mut p = policies[0].clone();
        p.mode = Mode::Enforce;
        let p = &p;
        let lone = std::slice::from_ref(p);
        let after = simulate::apply(&inv, writes(&plan(lone, &inv))).map_err(TestCaseError::fail)?;
        let cleanup = plan_cleanup(p, &[], &after);
        let back = simulate::apply(&after, writes(&cleanup)).map_err(TestCaseError::fail)?;
        let before = subnets(&inv);
        let now = subnets(&back);
        for (id, b) in &before {
            // Tables that were in place before stay associated, unless their tag says this
            // policy created them (then cleanup dissociates and deletes them).
            let created_by_p = b
                .route_table
                .as_ref()
                .and_then(|t| inv.route_table(t))
                .is_some_and(|t| t.tags.get("kmsroute.io-policy").is_some_and(|v| v == &p.name));
            if b.route_table.is_some() && !created_by_p {
                prop_assert_eq!(&now[id], b);
            }
        }
        // The tables the policy managed: those of the (non-special) subnets it selected, and
        // those it created. Everything else is not its business and must be untouched.
        let settled = plan(lone, &after);
        let managed: Vec<&RouteTableId> = settled
            .verdicts
            .iter()
            .filter(|v| !matches!(&v.verdict, kmsroute::plan::Verdict::Skipped { reason: kmsroute::plan::SkipReason::SpecialSubnet { .. } }))
            .filter_map(|v| v.route_table.as_ref())
            .collect();
        // Foreign routes are compared with the reconciled estate: a route `Replace` rewrote keeps
        // its new next hop (cleanup cannot know the old one, and must not guess).
        for t in &after.route_tables {
            let n = back.route_table(&t.id);
            let foreign: Vec<&Route> = t.routes.iter().filter(|r| !p.owns_route_name(&r.name)).collect();
            // Deletion also finds what the policy's marks say it owns outside its selection.
            let released = releasable(p, lone, &after, t);
            match n {
                Some(n) if managed.contains(&&t.id) || released || t.tags.get("kmsroute.io-policy").is_some_and(|v| v == &p.name) => {
                    let kept: Vec<&Route> = n.routes.iter().filter(|r| !p.owns_route_name(&r.name)).collect();
                    prop_assert_eq!(kept, foreign);
                    prop_assert!(n.routes.iter().all(|r| !p.owns_route_name(&r.name)), "owned route left behind in {}", t.id);
                }
                Some(n) => prop_assert_eq!(n, t, "a table outside the policy's scope changed"),
                None => {
                    // Only a table this policy's tag claims, holding nothing foreign, may go.
                    prop_assert!(foreign.is_empty());
                    prop_assert!(t.tags.get("kmsroute.io-policy").is_some_and(|v| v == &p.name));
                }
            }
        }
    }
}
