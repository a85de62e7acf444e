//! A policy's status: what a pass found, an invalid spec, or a pass that could not run, written
//! through the status subresource by server-side apply, and only when something changed (the
//! sync time alone refreshes at most hourly, so a steady resync writes nothing to etcd).

use super::conditions::{conditions_for, error_conditions};
use super::{Context, Error, FIELD_MANAGER};
use crate::api::{KmsRoutePolicy, KmsRoutePolicyStatus};
use crate::executor::PolicyReport;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

/// The status a pass's report makes (`done`: the writes the pass made).
pub fn of_pass(
    policy: &KmsRoutePolicy,
    mine: &PolicyReport,
    done: usize,
    old: &KmsRoutePolicyStatus,
) -> KmsRoutePolicyStatus {
    let generation = policy.meta().generation;
    KmsRoutePolicyStatus {
        observed_generation: generation,
        conditions: conditions_for(mine, done, generation, &old.conditions),
        summary: Some(mine.summary.clone()),
        destinations: mine.destinations.clone(),
        last_sync_time: Some(Timestamp::now().to_string()),
        problems: mine.problems.clone(),
    }
}

/// The status of a spec `validate` refuses: only the conditions, saying why.
pub fn of_invalid_spec(
    policy: &KmsRoutePolicy,
    message: String,
    old: &KmsRoutePolicyStatus,
) -> KmsRoutePolicyStatus {
    of_refused(policy, "InvalidSpec", message, old)
}

/// The status of a policy nothing is done for (`reason`: `InvalidSpec`, `IdentityNotAllowed`):
/// only the conditions, saying why.
pub fn of_refused(
    policy: &KmsRoutePolicy,
    reason: &str,
    message: String,
    old: &KmsRoutePolicyStatus,
) -> KmsRoutePolicyStatus {
    let generation = policy.meta().generation;
    KmsRoutePolicyStatus {
        observed_generation: generation,
        conditions: error_conditions(reason, message, generation, &old.conditions),
        ..KmsRoutePolicyStatus::default()
    }
}

/// The status of a pass that could not run: what the last pass found, with conditions saying
/// why this one did not (`reason`: `AzureAuthFailed`, `Throttled`, `AzureUnavailable`).
pub fn of_failed_pass(
    policy: &KmsRoutePolicy,
    reason: &str,
    message: String,
    old: &KmsRoutePolicyStatus,
) -> KmsRoutePolicyStatus {
    let generation = policy.meta().generation;
    KmsRoutePolicyStatus {
        observed_generation: generation,
        conditions: error_conditions(reason, message, generation, &old.conditions),
        summary: old.summary.clone(),
        destinations: old.destinations.clone(),
        last_sync_time: old.last_sync_time.clone(),
        problems: old.problems.clone(),
    }
}

/// Writes status through the status subresource, only when something changed.
pub async fn write(
    ctx: &Context,
    policy: &KmsRoutePolicy,
    mut status: KmsRoutePolicyStatus,
) -> Result<(), Error> {
    let old = policy.status.clone().unwrap_or_default();
    let stale_sync = old
        .last_sync_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_none_or(|t| Timestamp::now().duration_since(t).as_secs() > 3600);
    let mut comparable = status.clone();
    comparable.last_sync_time = old.last_sync_time.clone();
    if comparable == old && !stale_sync {
        return Ok(());
    }
    if status.last_sync_time.is_none() {
        status.last_sync_time = old.last_sync_time;
    }
    let api: Api<KmsRoutePolicy> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({"apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy", "status": status});
    api.patch_status(
        &policy.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
