//! Planning writes: placement, repair, conflicts, selection and overlaps.

use super::*;

#[test]
fn subnet_without_table_gets_a_created_table_with_every_kms_route_then_association() {
    let mut e = Estate::new();
    let v = e.vnet("spoke1", "westeurope");
    let s = e.subnet(&v, "app");
    let p = plan(&[desired(|_| {})], &e.0);
    let w = writes(&p);
    assert_eq!(w.len(), 2, "{w:#?}");
    let Write::CreateRouteTable {
        table,
        location,
        tags,
        routes,
        disable_bgp_route_propagation,
    } = w[0]
    else {
        panic!("first write must create the table: {w:#?}")
    };
    assert_eq!(table, &RouteTableId::new(SUB, "rg", "spoke1-app-kms"));
    assert_eq!(location, "westeurope");
    assert_eq!(
        tags.get(TAG_MANAGED_BY).map(String::as_str),
        Some("kmsroute")
    );
    assert_eq!(tags.get(TAG_POLICY).map(String::as_str), Some("p1"));
    assert!(!disable_bgp_route_propagation);
    let mut prefixes: Vec<&str> = routes.iter().map(|r| r.address_prefix.as_str()).collect();
    prefixes.sort();
    assert_eq!(
        prefixes,
        ["20.118.99.224/32", "23.102.135.246/32", "40.83.235.53/32"]
    );
    assert!(
        routes
            .iter()
            .all(|r| r.next_hop_type == NextHopType::Internet && r.name.starts_with("kms-"))
    );
    assert_eq!(
        w[1],
        &Write::AssociateSubnet {
            subnet: s.clone(),
            table: table.clone()
        }
    );
    assert_eq!(verdict_of(&p, &s), &Verdict::Drift { changes: 2 });
}

#[test]
fn created_table_honours_disable_bgp_route_propagation() {
    let mut e = Estate::new();
    let v = e.vnet("spoke1", "westeurope");
    e.subnet(&v, "app");
    let p = plan(
        &[desired(|s| {
            s.route_table.disable_bgp_route_propagation = true
        })],
        &e.0,
    );
    assert!(matches!(
        writes(&p)[0],
        Write::CreateRouteTable {
            disable_bgp_route_propagation: true,
            ..
        }
    ));
}

#[test]
fn two_subnets_sharing_a_table_get_its_writes_once() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let a = e.subnet(&v, "a");
    let b = e.subnet(&v, "b");
    let t = e.table("shared", "westeurope");
    e.associate(&a, &t);
    e.associate(&b, &t);
    let p = plan(&[desired(|_| {})], &e.0);
    assert_eq!(p.writes.len(), 3, "one PUT per KMS route, not per subnet");
    assert!(writes(&p).iter().all(|w| matches!(
        w,
        Write::PutRoute {
            change: RouteChange::Create,
            ..
        }
    )));
    assert_eq!(verdict_of(&p, &a), &Verdict::Drift { changes: 3 });
    assert_eq!(verdict_of(&p, &b), &Verdict::Drift { changes: 3 });
}

#[test]
fn subnets_rendering_the_same_table_name_share_one_created_table() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    e.subnet(&v, "a");
    e.subnet(&v, "b");
    let p = plan(
        &[desired(|s| {
            s.route_table.name_template = "{vnet}-kms".into()
        })],
        &e.0,
    );
    let creates = writes(&p)
        .iter()
        .filter(|w| matches!(w, Write::CreateRouteTable { .. }))
        .count();
    let assocs = writes(&p)
        .iter()
        .filter(|w| matches!(w, Write::AssociateSubnet { .. }))
        .count();
    assert_eq!((creates, assocs), (1, 2));
}

#[test]
fn a_shared_template_across_regions_is_a_location_mismatch_not_a_cross_region_association() {
    let mut e = Estate::new();
    let we = e.vnet("we", "westeurope");
    let ne = e.vnet("ne", "northeurope");
    let a = e.subnet(&we, "app");
    let b = e.subnet(&ne, "app");
    let p = plan(
        &[desired(|s| {
            s.route_table.name_template = "kms-{subnet}".into()
        })],
        &e.0,
    );
    let errors: Vec<&SubnetId> = [&a, &b]
        .into_iter()
        .filter(|s| {
            matches!(
                verdict_of(&p, s),
                Verdict::Error {
                    reason: ErrorReason::LocationMismatch,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(errors.len(), 1, "{:#?}", p.verdicts);
    assert!(writes(&p).iter().all(|w| match w {
        Write::AssociateSubnet { subnet, .. } => !errors.contains(&subnet),
        _ => true,
    }));
}

#[test]
fn foreign_route_with_same_prefix_and_next_hop_internet_satisfies_the_need() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("rt", "westeurope");
    e.associate(&s, &t);
    e.route(&t, "corp-kms-1", "20.118.99.224/32", NextHopType::Internet);
    e.route(
        &t,
        "kms-40-83-235-53",
        "40.83.235.53/32",
        NextHopType::Internet,
    );
    e.route(
        &t,
        "kms-23-102-135-246",
        "23.102.135.246/32",
        NextHopType::Internet,
    );
    let p = plan(&[desired(|_| {})], &e.0);
    assert!(p.is_empty(), "{:#?}", p.writes);
    assert_eq!(verdict_of(&p, &s), &Verdict::InSync);
}

#[test]
fn foreign_route_sending_a_kms_address_elsewhere_is_a_conflict_and_untouched() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("rt", "westeurope");
    e.associate(&s, &t);
    e.route(
        &t,
        "to-nva",
        "20.118.99.224/32",
        NextHopType::VirtualAppliance,
    );
    let p = plan(&[desired(|_| {})], &e.0);
    assert_eq!(
        verdict_of(&p, &s),
        &Verdict::Conflict {
            address: "20.118.99.224".parse().unwrap(),
            route: "to-nva".into(),
            next_hop_type: NextHopType::VirtualAppliance
        }
    );
    // The other two addresses are still routed; the conflicting one is neither overwritten nor duplicated.
    assert_eq!(p.writes.len(), 2);
    assert!(writes(&p).iter().all(|w| match w {
        Write::PutRoute { route, .. } =>
            route.name != "to-nva" && route.address_prefix != "20.118.99.224/32",
        _ => false,
    }));
}

#[test]
fn conflict_policy_replace_overwrites_the_foreign_route_in_place() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("rt", "westeurope");
    e.associate(&s, &t);
    e.kms_routes(&t);
    e.table_mut(&t)
        .routes
        .retain(|r| r.address_prefix != "20.118.99.224/32");
    e.route(
        &t,
        "to-nva",
        "20.118.99.224/32",
        NextHopType::VirtualAppliance,
    );
    let p = plan(
        &[desired(|s| s.conflict_policy = ConflictPolicy::Replace)],
        &e.0,
    );
    assert_eq!(writes(&p).len(), 1);
    let Write::PutRoute { route, change, .. } = writes(&p)[0] else {
        panic!()
    };
    assert_eq!(*change, RouteChange::Replace);
    assert_eq!(route.name, "to-nva");
    assert_eq!(route.next_hop_type, NextHopType::Internet);
    assert_eq!(route.next_hop_ip_address, None);
}

#[test]
fn owned_route_with_the_wrong_next_hop_is_repaired() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("rt", "westeurope");
    e.associate(&s, &t);
    e.kms_routes(&t);
    e.table_mut(&t).routes[0].next_hop_type = NextHopType::VirtualNetworkGateway;
    let p = plan(&[desired(|_| {})], &e.0);
    assert_eq!(writes(&p).len(), 1);
    assert!(
        matches!(writes(&p)[0], Write::PutRoute { change: RouteChange::Repair, route, .. }
        if route.name == "kms-20-118-99-224" && route.next_hop_type == NextHopType::Internet)
    );
}

#[test]
fn owned_route_edited_to_another_prefix_is_put_back() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("rt", "westeurope");
    e.associate(&s, &t);
    e.kms_routes(&t);
    e.table_mut(&t).routes[0].address_prefix = "10.0.0.0/8".into();
    let p = plan(&[desired(|_| {})], &e.0);
    assert_eq!(writes(&p).len(), 1, "{:#?}", p.writes);
    assert!(
        matches!(writes(&p)[0], Write::PutRoute { change: RouteChange::Repair, route, .. }
        if route.name == "kms-20-118-99-224" && route.address_prefix == "20.118.99.224/32")
    );
}

#[test]
fn a_missing_owned_route_is_recreated() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("rt", "westeurope");
    e.associate(&s, &t);
    e.kms_routes(&t);
    e.table_mut(&t).routes.remove(1);
    let p = plan(&[desired(|_| {})], &e.0);
    assert_eq!(writes(&p).len(), 1);
    assert!(
        matches!(writes(&p)[0], Write::PutRoute { change: RouteChange::Create, route, .. }
        if route.address_prefix == "40.83.235.53/32")
    );
}

#[test]
fn owned_routes_for_addresses_no_longer_desired_are_deleted_and_foreign_ones_kept() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("rt", "westeurope");
    e.associate(&s, &t);
    e.kms_routes(&t);
    e.route(&t, "kms-52-1-2-3", "52.1.2.3/32", NextHopType::Internet);
    e.route(
        &t,
        "default-to-fw",
        "0.0.0.0/0",
        NextHopType::VirtualAppliance,
    );
    e.route(
        &t,
        "onprem",
        "10.0.0.0/8",
        NextHopType::VirtualNetworkGateway,
    );
    let p = plan(&[desired(|_| {})], &e.0);
    assert_eq!(
        writes(&p),
        [&Write::DeleteRoute {
            table: t.clone(),
            name: "kms-52-1-2-3".into(),
            address_prefix: "52.1.2.3/32".into()
        }]
    );
}

#[test]
fn additional_addresses_are_routed_as_host_routes() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("rt", "westeurope");
    e.associate(&s, &t);
    e.kms_routes(&t);
    let p = plan(
        &[desired(|s| {
            s.kms.additional_addresses = vec!["52.1.2.3".into()]
        })],
        &e.0,
    );
    assert!(matches!(writes(&p)[..], [Write::PutRoute { route, .. }]
        if route.name == "kms-52-1-2-3" && route.address_prefix == "52.1.2.3/32"));
}

#[test]
fn create_if_missing_false_skips_a_subnet_without_a_table() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let p = plan(
        &[desired(|s| s.route_table.create_if_missing = false)],
        &e.0,
    );
    assert!(p.is_empty());
    assert_eq!(
        verdict_of(&p, &s),
        &Verdict::Skipped {
            reason: SkipReason::NoRouteTable
        }
    );
}

#[test]
fn special_subnets_are_skipped_with_their_name() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let names = crate::model::SPECIAL_SUBNETS;
    let ids: Vec<SubnetId> = names
        .iter()
        .map(|n| e.subnet(&v, &n.to_lowercase()))
        .collect();
    let p = plan(&[desired(|_| {})], &e.0);
    assert!(p.is_empty(), "{:#?}", p.writes);
    for (id, name) in ids.iter().zip(names) {
        assert_eq!(
            verdict_of(&p, id),
            &Verdict::Skipped {
                reason: SkipReason::SpecialSubnet { name: name.into() }
            }
        );
    }
}

#[test]
fn the_400_route_limit_is_an_error_with_no_writes() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("full", "westeurope");
    e.associate(&s, &t);
    for i in 0..399 {
        e.route(
            &t,
            &format!("r{i}"),
            &format!("10.{}.{}.0/24", i / 256, i % 256),
            NextHopType::VirtualAppliance,
        );
    }
    let p = plan(&[desired(|_| {})], &e.0);
    assert!(p.is_empty());
    assert!(matches!(
        verdict_of(&p, &s),
        Verdict::Error {
            reason: ErrorReason::RouteLimitExceeded,
            ..
        }
    ));
}

#[test]
fn a_subnet_without_internet_egress_is_warned_about() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let private = e.subnet(&v, "private");
    let natted = e.subnet(&v, "natted");
    e.subnet_mut(&private).default_outbound_access = Some(false);
    e.subnet_mut(&natted).default_outbound_access = Some(false);
    e.subnet_mut(&natted).nat_gateway = true;
    let p = plan(&[desired(|_| {})], &e.0);
    let warnings = |s: &SubnetId| {
        p.verdicts
            .iter()
            .find(|v| &v.subnet == s)
            .unwrap()
            .warnings
            .clone()
    };
    assert_eq!(warnings(&private), [Warning::NoInternetEgress]);
    assert!(warnings(&natted).is_empty());
}

#[test]
fn audit_mode_gives_the_same_verdicts_and_no_writes() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let a = e.subnet(&v, "a");
    let b = e.subnet(&v, "b");
    let t = e.table("rt", "westeurope");
    e.associate(&b, &t);
    e.route(
        &t,
        "to-nva",
        "20.118.99.224/32",
        NextHopType::VirtualAppliance,
    );
    let enforce = plan(&[desired(|_| {})], &e.0);
    let audit = plan(&[desired(|s| s.mode = Mode::Audit)], &e.0);
    assert!(!enforce.is_empty());
    assert!(audit.is_empty(), "{:#?}", audit.writes);
    assert_eq!(enforce.verdicts, audit.verdicts);
    assert!(matches!(verdict_of(&audit, &a), Verdict::Drift { .. }));
}

#[test]
fn an_in_sync_estate_plans_zero_writes() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    e.subnet(&v, "a");
    e.subnet(&v, "b");
    let policies = [desired(|_| {})];
    let after = converge(&policies, &e.0);
    let p = plan(&policies, &after);
    assert!(p.is_empty(), "{:#?}", p.writes);
    assert!(p.verdicts.iter().all(|v| v.verdict == Verdict::InSync));
}

#[test]
fn a_table_created_before_a_crash_is_reused_not_created_twice() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let policies = [desired(|_| {})];
    let first = plan(&policies, &e.0);
    // Crash after the table PUT, before the association.
    let partial = simulate::apply(&e.0, writes(&first).into_iter().take(1)).unwrap();
    let second = plan(&policies, &partial);
    assert_eq!(
        writes(&second),
        [&Write::AssociateSubnet {
            subnet: s,
            table: RouteTableId::new(SUB, "rg", "hub-app-kms")
        }]
    );
}

#[test]
fn a_foreign_table_with_the_rendered_name_is_not_adopted() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    e.table("hub-app-kms", "westeurope");
    let p = plan(&[desired(|_| {})], &e.0);
    assert!(p.is_empty());
    assert!(matches!(
        verdict_of(&p, &s),
        Verdict::Error {
            reason: ErrorReason::RouteTableNameTaken,
            ..
        }
    ));
}

#[test]
fn a_template_rendering_too_long_a_name_is_an_error_for_that_subnet() {
    let mut e = Estate::new();
    let v = e.vnet(&"v".repeat(76), "westeurope");
    let s = e.subnet(&v, "app");
    let p = plan(&[desired(|_| {})], &e.0);
    assert!(p.is_empty());
    assert!(matches!(
        verdict_of(&p, &s),
        Verdict::Error {
            reason: ErrorReason::InvalidRouteTableName,
            ..
        }
    ));
}

#[test]
fn the_older_policy_owns_an_overlapping_subnet_and_the_other_reports_the_overlap() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let older = desired_at("zeta", 0, |_| {});
    let newer = desired_at("alpha", 60, |sp| {
        sp.kms.additional_addresses = vec!["52.1.2.3".into()]
    });
    let p = plan(&[newer.clone(), older.clone()], &e.0);
    assert!(p.writes.iter().all(|w| w.policy == "zeta"));
    let v_new = p.verdicts.iter().find(|v| v.policy == "alpha").unwrap();
    assert_eq!(
        v_new.verdict,
        Verdict::Skipped {
            reason: SkipReason::Overlap {
                policy: "zeta".into()
            }
        }
    );
    // Stable: the same answer whatever order the policies arrive in.
    assert_eq!(plan(&[older, newer], &e.0), p);
    let _ = s;
}

#[test]
fn an_explicit_subnet_that_does_not_exist_is_an_error() {
    let mut e = Estate::new();
    e.vnet("hub", "westeurope");
    let missing = VnetId::new(SUB, "rg", "hub").subnet("ghost");
    let other_sub = SubnetId::new("00000000-0000-0000-0000-000000000009", "rg", "v", "s");
    let p = plan(
        &[desired(|s| {
            s.selector = None;
            s.subnets = vec![missing.to_string(), other_sub.to_string()];
        })],
        &e.0,
    );
    assert!(p.is_empty());
    assert!(matches!(
        verdict_of(&p, &missing),
        Verdict::Error {
            reason: ErrorReason::SubnetNotFound,
            ..
        }
    ));
    assert!(matches!(
        verdict_of(&p, &other_sub),
        Verdict::Error {
            reason: ErrorReason::SubscriptionNotObserved,
            ..
        }
    ));
}

#[test]
fn explicit_ids_match_whatever_their_casing() {
    let mut e = Estate::new();
    let v = e.vnet("Hub", "westeurope");
    let s = e.subnet(&v, "App");
    let shouted = s
        .to_string()
        .to_uppercase()
        .replace("SUBSCRIPTIONS", "subscriptions");
    let p = plan(
        &[desired(|sp| {
            sp.selector = None;
            sp.subnets = vec![shouted];
        })],
        &e.0,
    );
    assert!(matches!(verdict_of(&p, &s), Verdict::Drift { .. }));
}

#[test]
fn the_selector_filters_by_resource_group_vnet_tags_and_subnet_names() {
    let mut e = Estate::new();
    let prod = e.vnet("prod", "westeurope");
    e.vnet_mut(&prod).tags.insert("Env", "prod");
    let dev = e.vnet("dev", "westeurope");
    e.vnet_mut(&dev).tags.insert("env", "dev");
    let app = e.subnet(&prod, "app");
    let db = e.subnet(&prod, "db");
    let devapp = e.subnet(&dev, "app");
    let p = plan(
        &[desired(|s| {
            s.selector = Some(SubnetSelector {
                subscriptions: vec![SUB.into()],
                resource_groups: vec!["RG".into()],
                virtual_network_tags: [("env".to_string(), "prod".to_string())].into(),
                subnet_names: vec![],
                exclude_subnet_names: vec!["DB".into()],
                management_groups: vec![],
            })
        })],
        &e.0,
    );
    let selected: Vec<&SubnetId> = p.verdicts.iter().map(|v| &v.subnet).collect();
    assert_eq!(selected, [&app]);
    let _ = (db, devapp);
}

#[test]
fn a_table_id_cased_differently_from_the_listing_still_groups() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    let t = e.table("RT", "westeurope");
    e.associate(&s, &t);
    e.kms_routes(&t);
    e.subnet_mut(&s).route_table = Some(RouteTableId::new(SUB, "RG", "rt"));
    let p = plan(&[desired(|_| {})], &e.0);
    assert!(p.is_empty());
    assert_eq!(verdict_of(&p, &s), &Verdict::InSync);
}

#[test]
fn an_associated_table_missing_from_the_listing_is_an_error_not_a_new_table() {
    let mut e = Estate::new();
    let v = e.vnet("hub", "westeurope");
    let s = e.subnet(&v, "app");
    e.subnet_mut(&s).route_table = Some(RouteTableId::new(SUB, "rg", "gone"));
    let p = plan(&[desired(|_| {})], &e.0);
    assert!(p.is_empty());
    assert!(matches!(
        verdict_of(&p, &s),
        Verdict::Error {
            reason: ErrorReason::RouteTableNotObserved,
            ..
        }
    ));
}
