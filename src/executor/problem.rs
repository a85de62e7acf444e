//! Why something is in a policy's `status.problems`: one enum for the reasons the pass, the
//! status, the Events and the ranking share. The codes are strings only at the CRD boundary
//! (`Problem.reason`): written by [`Reason::code`], read back by [`Reason::of`], so a typo is
//! a compile error rather than a dropped Event or a mis-ranked problem.

use crate::api::Problem;
use crate::plan::{ErrorReason, SkipReason, Verdict, Warning};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A selected subscription ARM refused to list.
    SubscriptionUnreadable,
    /// Azure Policy denied a write (`RequestDisallowedByPolicy`).
    PolicyDenied,
    WriteFailed,
    /// What the planner could not do for the subnet.
    Planner(ErrorReason),
    Conflict,
    NotVerified,
    NoInternetEgress,
    KmsAddressDrift,
    VerificationFailed,
    DnsFailed,
    Overlap,
    NoRouteTable,
    WouldRelease,
    Drift,
    /// Someone keeps undoing kmsroute's writes to the subnet's route table.
    Contested,
    /// `spec.azure.identity` names an identity the installer did not allow: nothing is done.
    IdentityNotAllowed,
}

const OTHERS: [Reason; 15] = [
    Reason::SubscriptionUnreadable,
    Reason::PolicyDenied,
    Reason::WriteFailed,
    Reason::Conflict,
    Reason::NotVerified,
    Reason::NoInternetEgress,
    Reason::KmsAddressDrift,
    Reason::VerificationFailed,
    Reason::DnsFailed,
    Reason::Overlap,
    Reason::NoRouteTable,
    Reason::WouldRelease,
    Reason::Drift,
    Reason::Contested,
    Reason::IdentityNotAllowed,
];

impl Reason {
    /// The problems that raise a Warning Event of the same reason (one per policy and reason,
    /// listing the subnets), and clear it when they are gone.
    pub const WARNING_EVENTS: [Reason; 6] = [
        Reason::SubscriptionUnreadable,
        Reason::PolicyDenied,
        Reason::Conflict,
        Reason::WriteFailed,
        Reason::NotVerified,
        Reason::KmsAddressDrift,
    ];

    /// Every reason there is.
    pub fn all() -> impl Iterator<Item = Reason> {
        OTHERS
            .into_iter()
            .chain(ErrorReason::ALL.into_iter().map(Reason::Planner))
    }

    /// The code in `status.problems[].reason`, Events and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Reason::SubscriptionUnreadable => "SubscriptionUnreadable",
            Reason::PolicyDenied => "PolicyDenied",
            Reason::WriteFailed => "WriteFailed",
            Reason::Planner(e) => e.code(),
            Reason::Conflict => "Conflict",
            Reason::NotVerified => "NotVerified",
            Reason::NoInternetEgress => Warning::NoInternetEgress.code(),
            Reason::KmsAddressDrift => "KmsAddressDrift",
            Reason::VerificationFailed => "VerificationFailed",
            Reason::DnsFailed => "DnsFailed",
            Reason::Overlap => "Overlap",
            Reason::NoRouteTable => "NoRouteTable",
            Reason::WouldRelease => "WouldRelease",
            Reason::Drift => "Drift",
            Reason::Contested => "Contested",
            Reason::IdentityNotAllowed => "IdentityNotAllowed",
        }
    }

    /// The reason a code names (as the status holds it); `None` for a code kmsroute never
    /// writes.
    pub fn of(code: &str) -> Option<Reason> {
        Reason::all().find(|r| r.code() == code)
    }

    /// Report order: what needs a human first (unreadable, denied, failed writes), then
    /// planner errors, conflicts, warnings, deliberate skips, drift being repaired.
    pub fn rank(self) -> u8 {
        match self {
            Reason::SubscriptionUnreadable
            | Reason::PolicyDenied
            | Reason::WriteFailed
            | Reason::IdentityNotAllowed => 0,
            Reason::Planner(_) => 1,
            Reason::Conflict | Reason::NotVerified | Reason::Contested => 2,
            Reason::NoInternetEgress
            | Reason::KmsAddressDrift
            | Reason::VerificationFailed
            | Reason::DnsFailed => 3,
            Reason::Overlap | Reason::NoRouteTable | Reason::WouldRelease => 4,
            Reason::Drift => 5,
        }
    }

    /// The problem a verdict is, if it is one (in sync and platform subnets are not).
    pub fn of_verdict(v: &Verdict) -> Option<Reason> {
        match v {
            Verdict::InSync
            | Verdict::Skipped {
                reason: SkipReason::SpecialSubnet { .. },
            } => None,
            Verdict::Drift { .. } => Some(Reason::Drift),
            Verdict::Conflict { .. } => Some(Reason::Conflict),
            Verdict::Skipped {
                reason: SkipReason::NoRouteTable,
            } => Some(Reason::NoRouteTable),
            Verdict::Skipped {
                reason: SkipReason::Overlap { .. },
            } => Some(Reason::Overlap),
            Verdict::Error { reason, .. } => Some(Reason::Planner(*reason)),
        }
    }

    pub fn of_warning(w: &Warning) -> Reason {
        match w {
            Warning::NoInternetEgress => Reason::NoInternetEgress,
        }
    }

    /// A problem of this reason.
    pub fn problem(self, subnet_id: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            subnet_id: subnet_id.into(),
            reason: self.code().into(),
            message: message.into(),
        }
    }

    /// True when `p` is a problem of this reason.
    pub fn is(self, p: &Problem) -> bool {
        p.reason == self.code()
    }
}

/// The rank of a problem as the status holds it (a code kmsroute does not write ranks with
/// the planner's errors).
pub fn rank_of(p: &Problem) -> u8 {
    Reason::of(&p.reason).map_or(1, Reason::rank)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_code_is_distinct_and_reads_back() {
        let codes: BTreeSet<&str> = Reason::all().map(Reason::code).collect();
        assert_eq!(codes.len(), Reason::all().count());
        for r in Reason::all() {
            assert_eq!(Reason::of(r.code()), Some(r), "{r:?}");
        }
        assert_eq!(Reason::of("Nonsense"), None);
    }

    #[test]
    fn verdicts_map_to_the_codes_they_report() {
        // The verdict's own code (used by metrics and `plan -o json`) is the problem's code.
        let verdicts = [
            Verdict::Drift { changes: 1 },
            Verdict::Skipped {
                reason: SkipReason::NoRouteTable,
            },
            Verdict::Skipped {
                reason: SkipReason::Overlap {
                    policy: "older".into(),
                },
            },
            Verdict::Error {
                reason: ErrorReason::LocationMismatch,
                message: String::new(),
            },
        ];
        for v in &verdicts {
            assert_eq!(
                Reason::of_verdict(v).map(Reason::code),
                Some(named(v).as_str())
            );
        }
        assert_eq!(Reason::of_verdict(&Verdict::InSync), None);
    }

    /// The name `plan -o json` shows for a verdict: its variant, or its reason's variant.
    fn named(v: &Verdict) -> String {
        let json = serde_json::to_value(v).unwrap_or_default();
        match &json["reason"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(_) => json["reason"]["reason"].as_str().unwrap_or("").into(),
            _ => json["verdict"].as_str().unwrap_or("").into(),
        }
    }

    #[test]
    fn what_needs_a_human_ranks_first_and_drift_last() {
        let first = Reason::all().min_by_key(|r| r.rank());
        assert_eq!(first.map(Reason::rank), Some(0));
        assert!(Reason::all().all(|r| r.rank() <= Reason::Drift.rank()));
        assert!(Reason::PolicyDenied.rank() < Reason::Planner(ErrorReason::SubnetNotFound).rank());
        assert!(Reason::Planner(ErrorReason::SubnetNotFound).rank() < Reason::Conflict.rank());
        let unknown = Problem {
            subnet_id: String::new(),
            reason: "FromANewerVersion".into(),
            message: String::new(),
        };
        assert_eq!(rank_of(&unknown), 1);
    }
}
