//! The status conditions a pass leads to: pure functions of a pass's report (or its error) and
//! the conditions already on the object, unit-tested here. A condition's transition time moves
//! only when its status flips.

use crate::api::Mode;
use crate::executor::{PolicyReport, Reason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub(super) fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    old: &[Condition],
) -> Condition {
    let status = if status { "True" } else { "False" };
    condition_with(type_, status, reason, message, generation, old)
}

/// A condition whose status may also be `Unknown`.
fn condition_with(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    old: &[Condition],
) -> Condition {
    let status = status.to_string();
    // The transition time moves only when the status flips.
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::now()));
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Ready / Progressing / Degraded (and EgressReady, Verified, KmsAddressesRouted) from a pass.
pub(super) fn conditions_for(
    report: &PolicyReport,
    writes_done: usize,
    generation: Option<i64>,
    old: &[Condition],
) -> Vec<Condition> {
    let s = &report.summary;
    let drift = report.mode == Mode::Audit && s.in_sync + s.skipped < s.subnets_matched;
    let (degraded, reason, message) = degraded(report);
    let is_ready = report.ready();
    let ready_reason = if is_ready {
        if writes_done > 0 {
            "Repaired"
        } else {
            "InSync"
        }
    } else if drift {
        "Drift"
    } else if report.nothing_selected() {
        "NothingSelected"
    } else {
        reason
    };
    let ready_message = if report.nothing_selected() {
        "the selector matches no subnet in its subscriptions: check subscriptions, resourceGroups, virtualNetworkTags and subnetNames".to_string()
    } else {
        format!(
            "{} of {} subnet(s) in sync, {} skipped, {} conflict(s), {} error(s)",
            s.in_sync, s.subnets_matched, s.skipped, s.conflicts, s.errors
        )
    };
    let mut out = vec![
        condition(
            "Ready",
            is_ready,
            ready_reason,
            ready_message,
            generation,
            old,
        ),
        condition(
            "Progressing",
            writes_done > 0,
            if writes_done > 0 { "Repaired" } else { "Idle" },
            if writes_done > 0 {
                format!("{writes_done} write(s) made in the last pass")
            } else {
                String::new()
            },
            generation,
            old,
        ),
        condition("Degraded", degraded, reason, message, generation, old),
    ];
    // Warnings: the route alone will not make activation work.
    out.push(if report.egress_warnings > 0 {
        condition(
            "EgressReady",
            false,
            "NoInternetEgress",
            format!(
                "{} private subnet(s) have running NICs with no outbound path (no NAT gateway, public IP or load balancer outbound rule): next hop Internet leads nowhere for them; see status.problems",
                report.egress_warnings
            ),
            generation,
            old,
        )
    } else {
        condition("EgressReady", true, "AsExpected", String::new(), generation, old)
    });
    if let Some(v) = &report.verification {
        let (status, reason, message) = verified(v);
        out.push(condition_with(
            "Verified", status, reason, message, generation, old,
        ));
    }
    if let Some(d) = &report.dns {
        let (status, reason, message) = kms_addresses_routed(d);
        out.push(condition_with(
            "KmsAddressesRouted",
            status,
            reason,
            message,
            generation,
            old,
        ));
    }
    out
}

/// Degraded, its reason and message: the worst of failed writes (denied by Azure Policy
/// first), unreadable subscriptions, conflicts and subnet errors.
fn degraded(report: &PolicyReport) -> (bool, &'static str, String) {
    let s = &report.summary;
    let failed = report.writes_failed > 0;
    let denied = report
        .problems
        .iter()
        .filter(|p| Reason::PolicyDenied.is(p))
        .count();
    if failed && denied > 0 {
        (
            true,
            "PolicyDenied",
            format!(
                "Azure Policy denied writes for {denied} subnet(s); see status.problems for the assignment, and ask for an exemption"
            ),
        )
    } else if failed {
        (
            true,
            "PartiallyFailed",
            format!(
                "{} write(s) failed; see status.problems",
                report.writes_failed
            ),
        )
    } else if !report.unreadable_subscriptions.is_empty() {
        (
            true,
            "SubscriptionUnreadable",
            format!(
                "{} selected subscription(s) cannot be listed ({}); see status.problems",
                report.unreadable_subscriptions.len(),
                report.unreadable_subscriptions.join(", ")
            ),
        )
    } else if s.conflicts > 0 {
        (
            true,
            "Conflict",
            format!(
                "{} subnet(s) have a foreign route sending a KMS address elsewhere",
                s.conflicts
            ),
        )
    } else if s.errors > 0 {
        (
            true,
            "SubnetErrors",
            format!(
                "{} subnet(s) could not be handled; see status.problems",
                s.errors
            ),
        )
    } else {
        (false, "AsExpected", String::new())
    }
}

/// The Verified condition from the effective-route sample.
fn verified(
    v: &crate::executor::verify::VerificationReport,
) -> (&'static str, &'static str, String) {
    if v.not_verified > 0 {
        (
            "False",
            "NotVerified",
            format!(
                "{} of {} sampled subnet(s) send a KMS address elsewhere; see status.problems",
                v.not_verified, v.checked
            ),
        )
    } else if v.verified > 0 {
        (
            "True",
            "EffectiveRoutesVerified",
            format!(
                "{} sampled subnet(s): every KMS address leaves through a user route to Internet",
                v.verified
            ),
        )
    } else if v.failed > 0 {
        (
            "Unknown",
            "VerificationFailed",
            "effective routes could not be read; see status.problems".into(),
        )
    } else {
        (
            "Unknown",
            "NotChecked",
            format!(
                "no route table sampled this pass ({} without an attached NIC or over the budget)",
                v.not_checked
            ),
        )
    }
}

/// The KmsAddressesRouted condition from what the KMS names resolved to.
fn kms_addresses_routed(
    d: &crate::executor::scope::DnsReport,
) -> (&'static str, &'static str, String) {
    if !d.drift.is_empty() {
        let list: Vec<String> = d.drift.iter().map(|a| a.to_string()).collect();
        (
            if d.routed { "True" } else { "False" },
            "KmsAddressDrift",
            format!(
                "the KMS names resolve to unlisted address(es) {}",
                list.join(", ")
            ),
        )
    } else if d.resolved.is_empty() {
        ("Unknown", "DnsFailed", d.errors.join("; "))
    } else {
        ("True", "AsExpected", String::new())
    }
}

pub(super) fn error_conditions(
    reason: &str,
    message: String,
    generation: Option<i64>,
    old: &[Condition],
) -> Vec<Condition> {
    vec![
        condition("Ready", false, reason, message.clone(), generation, old),
        condition("Progressing", false, "Idle", String::new(), generation, old),
        condition("Degraded", true, reason, message, generation, old),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Problem, Summary};

    fn report(summary: Summary) -> PolicyReport {
        PolicyReport {
            name: "p".into(),
            mode: Mode::Enforce,
            summary,
            ..PolicyReport::default()
        }
    }

    fn find<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        c.iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("no {t} in {c:?}"))
    }

    #[test]
    fn an_in_sync_pass_is_ready_not_progressing_not_degraded() {
        let r = report(Summary {
            subnets_matched: 3,
            in_sync: 3,
            ..Summary::default()
        });
        let c = conditions_for(&r, 0, Some(2), &[]);
        assert_eq!(
            (
                find(&c, "Ready").status.as_str(),
                find(&c, "Ready").reason.as_str()
            ),
            ("True", "InSync")
        );
        assert_eq!(find(&c, "Progressing").status, "False");
        assert_eq!(find(&c, "Degraded").reason, "AsExpected");
        assert_eq!(find(&c, "EgressReady").status, "True");
        assert!(c.iter().all(|c| c.observed_generation == Some(2)));
        assert!(
            c.iter().all(|c| c.type_ != "Verified"),
            "no verification asked"
        );
    }

    #[test]
    fn a_denied_write_degrades_as_policy_denied_before_other_failures() {
        let mut r = report(Summary {
            subnets_matched: 2,
            in_sync: 1,
            errors: 1,
            ..Summary::default()
        });
        r.writes_failed = 1;
        r.problems.push(Problem {
            subnet_id: "/s".into(),
            reason: Reason::PolicyDenied.code().into(),
            message: String::new(),
        });
        let c = conditions_for(&r, 1, None, &[]);
        let degraded = find(&c, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "PolicyDenied")
        );
        assert!(
            degraded.message.contains("1 subnet(s)"),
            "{}",
            degraded.message
        );
        assert_eq!(find(&c, "Ready").status, "False");
        assert_eq!(find(&c, "Progressing").reason, "Repaired");
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_flips() {
        let old = vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "InSync".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }];
        let same = condition("Ready", true, "Repaired", "m".into(), Some(2), &old);
        assert_eq!(same.last_transition_time, Time(Timestamp::UNIX_EPOCH));
        let flipped = condition("Ready", false, "Conflict", "m".into(), Some(2), &old);
        assert_ne!(flipped.last_transition_time, Time(Timestamp::UNIX_EPOCH));
        let errs = error_conditions("InvalidSpec", "bad".into(), Some(3), &old);
        assert_eq!(find(&errs, "Ready").reason, "InvalidSpec");
        assert_eq!(find(&errs, "Degraded").status, "True");
    }
}
