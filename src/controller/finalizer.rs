//! The finalizer protocol of `kube::runtime::finalizer`, with our field manager on its patches.
//!
//! kube's helper patches with `PatchParams::default()`, so a real API server records the
//! finalizer under the manager `unknown`; an operator reading `managedFields` could not tell
//! who owns it. Same steps and the same guards (a JSON-patch `test` before every change, so a
//! concurrent edit fails the patch instead of clobbering someone else's finalizer).

use super::FIELD_MANAGER;
use crate::api::KmsRoutePolicy;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;

/// What the reconciler is asked to do.
pub enum Event {
    /// Make Azure match the policy (the finalizer is in place).
    Apply(Arc<KmsRoutePolicy>),
    /// The policy is being deleted: carry out `deletionPolicy`; the finalizer goes on success.
    Cleanup(Arc<KmsRoutePolicy>),
}

/// Why the finalizer step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: std::error::Error + 'static> {
    #[error("apply failed: {0}")]
    ApplyFailed(#[source] E),
    #[error("cleanup failed: {0}")]
    CleanupFailed(#[source] E),
    #[error("adding the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    #[error("removing the finalizer: {0}")]
    RemoveFinalizer(#[source] kube::Error),
    #[error("the object has no name")]
    UnnamedObject,
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

fn json_patch(ops: Value) -> Result<Patch<()>, serde_json::Error> {
    Ok(Patch::Json(serde_json::from_value(ops)?))
}

/// Adds the finalizer before the first apply, runs `reconcile`, and removes the finalizer once
/// cleanup succeeded.
pub async fn finalizer<E, F, Fut>(
    api: &Api<KmsRoutePolicy>,
    name: &str,
    obj: Arc<KmsRoutePolicy>,
    reconcile: F,
) -> Result<Action, Error<E>>
where
    E: std::error::Error + 'static,
    F: FnOnce(Event) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
{
    let object = obj.meta().name.clone().ok_or(Error::UnnamedObject)?;
    let index = obj.finalizers().iter().position(|f| f == name);
    let deleting = obj.meta().deletion_timestamp.is_some();
    match (index, deleting) {
        (Some(_), false) => reconcile(Event::Apply(obj))
            .await
            .map_err(Error::ApplyFailed),
        (Some(i), true) => {
            let action = reconcile(Event::Cleanup(obj))
                .await
                .map_err(Error::CleanupFailed)?;
            let path = format!("/metadata/finalizers/{i}");
            let patch = json_patch(json!([
                {"op": "test", "path": path, "value": name},
                {"op": "remove", "path": path},
            ]))
            .map_err(|e| Error::RemoveFinalizer(kube::Error::SerdeError(e)))?;
            api.patch(&object, &params(), &patch)
                .await
                .map_err(Error::RemoveFinalizer)?;
            Ok(action)
        }
        (None, false) => {
            let ops = if obj.finalizers().is_empty() {
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [name]},
                ])
            } else {
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": obj.finalizers()},
                    {"op": "add", "path": "/metadata/finalizers/-", "value": name},
                ])
            };
            let patch =
                json_patch(ops).map_err(|e| Error::AddFinalizer(kube::Error::SerdeError(e)))?;
            api.patch(&object, &params(), &patch)
                .await
                .map_err(Error::AddFinalizer)?;
            // The patch itself triggers the next reconcile.
            Ok(Action::await_change())
        }
        (None, true) => Ok(Action::await_change()),
    }
}
