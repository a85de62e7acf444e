//! The report assembly, pure: every phase's findings ranked and cut once.

use super::*;
use crate::api::validate;
use crate::catalog::Cloud;
use crate::executor::identities::IdentityConflict;
use crate::executor::judge::Judged;
use crate::ids::SubnetId;
use crate::model::NextHopType;
use std::borrow::Cow;
use std::net::Ipv4Addr;

const SUB: &str = "00000000-0000-0000-0000-000000000001";

fn policy(name: &str) -> DesiredState {
    let spec = serde_json::from_value(serde_json::json!({"selector": {"subscriptions": [SUB]}}))
        .expect("a spec");
    validate(name, None, &spec, Cloud::AzurePublic)
        .expect("a valid policy")
        .desired
}

fn subnet(i: usize) -> SubnetId {
    SubnetId::new(SUB, "rg", "vnet", &format!("s{i:03}"))
}

fn verdict(policy: &str, i: usize, verdict: Verdict) -> SubnetVerdict {
    SubnetVerdict {
        policy: policy.into(),
        subnet: subnet(i),
        route_table: None,
        verdict,
        warnings: Vec::new(),
    }
}

fn conflict() -> Verdict {
    Verdict::Conflict {
        address: Ipv4Addr::new(20, 118, 99, 224),
        route: "to-nva".into(),
        next_hop_type: NextHopType::VirtualAppliance,
    }
}

fn scope<'a>(policies: &'a [DesiredState]) -> Scope<'a> {
    Scope {
        policies: Cow::Borrowed(policies),
        group_errors: BTreeMap::new(),
        identity_conflicts: Vec::new(),
        dns: BTreeMap::new(),
    }
}

fn unwritten(verdicts: Vec<SubnetVerdict>) -> Written {
    Written {
        plan: Plan {
            verdicts,
            ..Plan::default()
        },
        replanned: Vec::new(),
        results: Vec::new(),
        subscriptions: BTreeSet::new(),
        wrote: false,
        approval_stale: false,
    }
}

fn refused(code: &str) -> ArmError {
    ArmError::local(
        crate::azure::ErrorClass::NeedsUserAction,
        "ManagementGroups_GetDescendants",
        "mg-gone",
        Some(code),
        "The management group 'mg-gone' could not be found.",
    )
}

/// The bounded collector keeps exactly what sorting everything and cutting would keep,
/// counts everything offered, and builds only what it keeps.
#[test]
fn top_problems_keeps_the_first_in_report_order_and_builds_no_more() {
    let reasons = [
        Reason::Drift,
        Reason::WriteFailed,
        Reason::Conflict,
        Reason::NoRouteTable,
        Reason::Overlap,
    ];
    let all: Vec<(Reason, Problem)> = (0..400)
        .map(|i| {
            let r = reasons[i % reasons.len()];
            (r, r.problem(format!("/s/{:03}", (i * 37) % 400), ""))
        })
        .collect();
    let built = std::cell::Cell::new(0);
    let mut top = TopProblems::default();
    for (r, p) in &all {
        top.offer(*r, &p.subnet_id, || {
            built.set(built.get() + 1);
            p.clone()
        });
    }
    let mut sorted: Vec<Problem> = all.into_iter().map(|(_, p)| p).collect();
    sorted.sort_by(|a, b| (rank_of(a), &a.subnet_id).cmp(&(rank_of(b), &b.subnet_id)));
    sorted.truncate(MAX_PROBLEMS);
    assert_eq!(top.kept, sorted);
    assert_eq!(top.offered, 400);
    assert!(built.get() < 400, "built {} of 400", built.get());
}

/// Issue 27, defect 1, at its root: a management group that cannot be read beside 80
/// conflicts is one report of at most 50 problems, the group's first, and counts all 81.
#[test]
fn a_group_error_beside_80_conflicts_is_ranked_and_cut_with_them() {
    let policies = [policy("busy")];
    let mut s = scope(&policies);
    s.group_errors
        .insert("busy".into(), vec![("mg-gone".into(), refused("NotFound"))]);
    let verdicts: Vec<SubnetVerdict> = (0..80).map(|i| verdict("busy", i, conflict())).collect();
    let report = assemble(
        &s,
        unwritten(verdicts),
        Judged::default(),
        Verified::new(),
        BTreeMap::new(),
    );
    let mine = &report.policies[0];
    assert_eq!(mine.problems.len(), MAX_PROBLEMS);
    assert_eq!(mine.problems_total, 81);
    assert!(
        mine.problems[0]
            .subnet_id
            .ends_with("/managementGroups/mg-gone"),
        "{:?}",
        mine.problems[0]
    );
    assert_eq!(mine.unreadable_subscriptions, ["management group mg-gone"]);
    assert_eq!(mine.summary.conflicts, 80);
    assert!(!mine.ready());
}

/// Problems of every phase (an identity conflict, DNS, verification) take their rank among
/// the verdicts' and are counted, each policy getting only its own.
#[test]
fn every_phases_problems_are_ranked_among_the_verdicts_and_go_to_their_policy() {
    let policies = [policy("old"), policy("young")];
    let mut s = scope(&policies);
    s.identity_conflicts.push(IdentityConflict {
        scope: format!("/subscriptions/{SUB}"),
        winner: "old".into(),
        used: None,
        loser: "young".into(),
        wanted: None,
    });
    s.dns.insert(
        "young".into(),
        DnsReport {
            errors: vec!["azkms.core.windows.net: SERVFAIL".into()],
            ..DnsReport::default()
        },
    );
    let mut verified = Verified::new();
    verified.insert(
        "young".into(),
        (
            VerificationReport {
                checked: 1,
                not_verified: 1,
                ..VerificationReport::default()
            },
            vec![Reason::NotVerified.problem(subnet(2).to_string(), "wins 0.0.0.0/0")],
        ),
    );
    let verdicts = vec![
        verdict("young", 1, Verdict::Drift { changes: 1 }),
        verdict("young", 2, Verdict::InSync),
        verdict("old", 3, conflict()),
    ];
    let report = assemble(
        &s,
        unwritten(verdicts),
        Judged::default(),
        verified,
        BTreeMap::new(),
    );
    let young = &report.policies[1];
    let reasons: Vec<&str> = young.problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(reasons, ["NotVerified", "DnsFailed", "Overlap", "Drift"]);
    assert_eq!(young.problems_total, 4);
    assert_eq!((young.summary.verified, young.summary.not_verified), (0, 1));
    let old = &report.policies[0];
    assert_eq!(old.problems.len(), 1);
    assert_eq!(old.problems[0].reason, "Conflict");
}

/// A private subnet whose NICs all have a way out is not warned; one where some do not says
/// how many, and only the warned ones count.
#[test]
fn egress_judged_per_nic_replaces_the_subnet_level_warning() {
    let policies = [policy("p")];
    let s = scope(&policies);
    let mut verdicts: Vec<SubnetVerdict> =
        (0..3).map(|i| verdict("p", i, Verdict::InSync)).collect();
    for v in &mut verdicts {
        v.warnings.push(Warning::NoInternetEgress);
    }
    let judged = Judged {
        verdicts: None,
        egress: HashMap::from([
            (
                subnet(0).key().to_string(),
                egress::EgressCount {
                    without: 0,
                    total: 2,
                },
            ),
            (
                subnet(1).key().to_string(),
                egress::EgressCount {
                    without: 1,
                    total: 3,
                },
            ),
        ]),
    };
    let report = assemble(
        &s,
        unwritten(verdicts),
        judged,
        Verified::new(),
        BTreeMap::new(),
    );
    let p = &report.policies[0];
    assert_eq!(p.egress_warnings, 2);
    let warned: Vec<(&str, &str)> = p
        .problems
        .iter()
        .map(|x| (x.subnet_id.as_str(), x.message.as_str()))
        .collect();
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(
        warned[0].1.starts_with("1 of 3 running NIC(s)"),
        "{warned:?}"
    );
    assert!(warned[1].0.ends_with("/s002"), "{warned:?}");
}

/// A subnet the first plan found drifted counts as repaired only when the pass wrote.
#[test]
fn repaired_counts_only_when_the_pass_wrote() {
    let policies = [policy("p")];
    let s = scope(&policies);
    let before = vec![verdict("p", 1, Verdict::Drift { changes: 2 })];
    let mut written = unwritten(before);
    let plan_only = assemble(
        &s,
        written.clone(),
        Judged::default(),
        Verified::new(),
        BTreeMap::new(),
    );
    assert_eq!(plan_only.policies[0].summary.repaired, 0);
    written.wrote = true;
    let judged = Judged {
        verdicts: Some(vec![verdict("p", 1, Verdict::InSync)]),
        egress: HashMap::new(),
    };
    let wrote = assemble(&s, written, judged, Verified::new(), BTreeMap::new());
    let summary = &wrote.policies[0].summary;
    assert_eq!((summary.in_sync, summary.repaired), (1, 1));
    assert!(wrote.policies[0].ready());
}
