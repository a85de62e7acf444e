//! Phase 5 of a pass: judging Azure after the writes. The subscriptions written to are read
//! again one at a time and judged (a subnet's verdict depends on its own subscription alone,
//! see [`crate::plan::verdicts_in`]), so the pass never holds a second whole inventory beside
//! its plan; elsewhere the first plan's verdicts stand. Egress is judged per NIC where the
//! planner warned a private subnet.

use super::Pass;
use super::execute::Written;
use crate::api::DesiredState;
use crate::azure::ArmError;
use crate::ids::SubnetId;
use crate::plan::{SubnetVerdict, Warning, egress};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a pass found after writing.
#[derive(Debug, Clone, Default)]
pub struct Judged {
    /// Verdicts after the writes; `None` when nothing was written (the plan's own verdicts
    /// stand, not a copy of them).
    pub verdicts: Option<Vec<SubnetVerdict>>,
    /// NICs with and without a way out, by lower-cased subnet ID, where the planner warned
    /// `NoInternetEgress`; a subnet missing here keeps the subnet-level warning.
    pub egress: HashMap<String, egress::EgressCount>,
}

impl Judged {
    /// The verdicts after the pass (the plan's when nothing was written).
    pub fn verdicts<'a>(&'a self, written: &'a Written) -> &'a [SubnetVerdict] {
        self.verdicts.as_deref().unwrap_or(&written.plan.verdicts)
    }
}

/// Judges the estate after the pass's writes, and egress per NIC.
pub async fn judge(
    p: &Pass<'_>,
    policies: &[DesiredState],
    written: &Written,
) -> Result<Judged, ArmError> {
    let mut judged = Judged::default();
    if written.wrote {
        judged.verdicts = Some(verdicts_after(p, policies, written).await?);
    }
    judged.egress = egress_per_nic(p, judged.verdicts(written)).await;
    Ok(judged)
}

/// The verdicts after the writes: each written subscription read afresh and judged alone.
async fn verdicts_after(
    p: &Pass<'_>,
    policies: &[DesiredState],
    written: &Written,
) -> Result<Vec<SubnetVerdict>, ArmError> {
    let writer = p.params.only_policy.as_deref();
    // As many verdicts as before (each subnet keeps one), sized once: grown by doubling, the
    // twenty first passes of a first install held up to twice their verdicts each.
    let mut verdicts = Vec::with_capacity(written.plan.verdicts.len());
    verdicts.extend(crate::plan::verdicts_outside(
        &written.plan.verdicts,
        &written.subscriptions,
    ));
    for sub in &written.subscriptions {
        let one = p
            .source
            .reread(&BTreeSet::from([sub.clone()]), writer)
            .await?;
        verdicts.extend(crate::plan::verdicts_in_parts(policies, one.parts(), sub));
    }
    crate::plan::sort_verdicts(&mut verdicts);
    verdicts.shrink_to_fit();
    Ok(verdicts)
}

/// Counts, per subnet the planner warned private (no NAT gateway, default outbound access off),
/// the running NICs with and without a way out: the NICs, public IPs and load balancers of those
/// subnets' subscriptions are listed once. A listing that fails leaves the subnet-level
/// warnings as they are.
async fn egress_per_nic(
    p: &Pass<'_>,
    verdicts: &[SubnetVerdict],
) -> HashMap<String, egress::EgressCount> {
    let candidates: BTreeMap<String, SubnetId> = verdicts
        .iter()
        .filter(|v| p.params.is_mine(&v.policy) && v.warnings.contains(&Warning::NoInternetEgress))
        .map(|v| (v.subnet.key().to_string(), v.subnet.clone()))
        .collect();
    if candidates.is_empty() {
        return HashMap::new();
    }
    let subscriptions: BTreeSet<String> = candidates
        .values()
        .map(|s| s.subscription().to_ascii_lowercase())
        .collect();
    let listed = async {
        let nics = p.api.network_interfaces(&subscriptions).await?;
        let facts = p.api.egress_facts(&subscriptions).await?;
        Ok::<_, ArmError>((nics, facts))
    };
    let (nics, facts) = match listed.await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "could not judge egress per NIC; keeping the subnet-level warning");
            return HashMap::new();
        }
    };
    candidates
        .into_iter()
        .map(|(key, id)| {
            // A candidate is, by the planner's rule, private: no NAT gateway, no default access.
            let subnet = crate::model::Subnet {
                id,
                route_table: None,
                nat_gateway: false,
                default_outbound_access: Some(false),
            };
            (key, egress::count(&subnet, &nics, &facts))
        })
        .collect()
}
