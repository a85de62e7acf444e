//! The executor: one pass over a set of policies, shared by `plan`, `apply`, `demo` and the
//! controller. A pass runs in named phases, one file each:
//!
//! 1. [`scope`]: management groups expanded into subscriptions, each scope routed to its
//!    identity, and KMS names resolved (with the errors of each);
//! 2. [`observe`]: Azure's state from an [`InventorySource`] (a listing for the CLI, the shared
//!    inventory for the controller), only the subscriptions the pass needs;
//! 3. plan (the pure [`crate::plan`]), cut to the pass's share;
//! 4. [`execute`]: the plan's lanes with bounded concurrency, and one re-plan on a view ARM
//!    refused as stale;
//! 5. [`judge`]: the written subscriptions read again and judged, egress judged per NIC;
//! 6. [`verify`]: effective routes of a sample of NICs;
//! 7. [`report`]: the pure assembly of every finding into one report per policy, ranked and
//!    cut once.
//!
//! [`cleanup`] runs a policy's deletion through the same execution. Crash-safe by
//! construction: a pass keeps no state of its own; every pass plans from what Azure holds now,
//! so re-running after an interruption converges without duplicates.

pub mod cleanup;
pub mod execute;
pub mod identities;
pub mod judge;
pub mod observe;
pub mod problem;
pub mod report;
pub mod scope;
pub mod verify;

use crate::api::DesiredState;
use crate::azure::{ArmError, NetworkApi};
use crate::dns::Resolver;
use crate::model::SubscriptionError;
use crate::plan::{Plan, PlannedWrite, plan_parts};
pub use execute::{MAX_ACTIVE_WRITES, Progress, WriteResult, execute_write, run_lanes};
pub use observe::{InventorySource, Listing, Observed};
pub use problem::Reason;
pub use report::{PolicyReport, Report};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// ARM's code for a write an Azure Policy assignment denied.
pub const POLICY_DENIED_CODE: &str = "RequestDisallowedByPolicy";

/// What a pass should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Observe and plan only (reads).
    PlanOnly,
    /// Observe, plan, write, judge what was written.
    Write,
}

/// What a pass is asked to do: plain values.
#[derive(Debug, Clone)]
pub struct PassParams {
    pub mode: RunMode,
    /// Route tables written in parallel per subscription (writes within one table are always
    /// sequential; subscriptions run side by side, each paced by its own ARM budget).
    pub concurrency: usize,
    /// Write only this policy's share of the plan (the controller reconciles one object at a
    /// time, but plans with every policy so overlaps are decided the same way).
    pub only_policy: Option<String>,
    /// Pass counter: rotates which subnet and NIC effective-route verification samples.
    pub round: u64,
    /// The writes a user approved (`apply` without `--yes`): when the plan made now differs,
    /// nothing is written and the report says so (`Report::approval_stale`).
    pub approved: Option<Arc<Vec<PlannedWrite>>>,
}

impl Default for PassParams {
    fn default() -> Self {
        PassParams {
            mode: RunMode::Write,
            concurrency: 32,
            only_policy: None,
            round: 0,
            approved: None,
        }
    }
}

impl PassParams {
    /// True for a policy whose share this pass writes (every policy's, unless `only_policy`).
    pub fn is_mine(&self, policy: &str) -> bool {
        self.only_policy.as_deref().is_none_or(|n| n == policy)
    }
}

/// What a pass works with besides the port: the services it calls.
#[derive(Clone, Default)]
pub struct PassDeps {
    /// Where the pass gets Azure's state; `None`: a [`Listing`] through the port (the CLI: one
    /// listing per subscription per run). The controller passes its shared inventory, so a pass
    /// lists nothing itself and re-reads only the subscriptions it wrote to.
    pub inventory: Option<Arc<dyn InventorySource>>,
    /// Resolves the KMS names of policies with `spec.kms.resolveDns` (the system resolver in
    /// the controller and CLI; a fixed one in tests). `None`: those policies report that DNS
    /// was not consulted.
    pub resolver: Option<Arc<dyn Resolver>>,
    /// Set (by Ctrl-C) to stop issuing writes; in-flight ones finish.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for PassDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassDeps")
            .field("inventory", &self.inventory.is_some())
            .field("resolver", &self.resolver.is_some())
            .field("interrupt", &self.interrupt.is_some())
            .finish()
    }
}

/// One pass's view of its dependencies, with the inventory source always there.
pub struct Pass<'a> {
    pub api: &'a dyn NetworkApi,
    pub source: &'a dyn InventorySource,
    pub resolver: Option<&'a dyn Resolver>,
    pub interrupt: Option<&'a AtomicBool>,
    pub progress: &'a (dyn Fn(Progress) + Sync),
    pub params: &'a PassParams,
}

/// One pass over a set of policies: its phases in order.
pub async fn pass(
    api: &dyn NetworkApi,
    policies: &[DesiredState],
    params: &PassParams,
    deps: &PassDeps,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, ArmError> {
    let listing = Listing::new(api);
    let p = Pass {
        api,
        source: deps.inventory.as_deref().unwrap_or(&listing),
        resolver: deps.resolver.as_deref(),
        interrupt: deps.interrupt.as_deref(),
        progress,
        params,
    };
    let scope = scope::scope(&p, policies).await?;
    let view = observe::observe(&p, &scope.policies).await?;
    let (first, unreadable) = share(&p, &scope.policies, view);
    let written = execute::execute(&p, &scope.policies, first).await?;
    let judged = judge::judge(&p, &scope.policies, &written).await?;
    let verified = verify::verify_pass(&p, &scope.policies, &judged, &written).await;
    Ok(report::assemble(
        &scope, written, judged, verified, unreadable,
    ))
}

/// The plan of `policies` on the view, cut to the pass's share, and the subscriptions that could
/// not be read. The view is freed here: the plan carries everything the writes need, so a pass
/// never holds two observations (peak memory at 10,000 subnets).
fn share(
    p: &Pass<'_>,
    policies: &[DesiredState],
    view: observe::Observed,
) -> (Plan, BTreeMap<String, SubscriptionError>) {
    let mut made = plan_parts(policies, view.parts());
    if let Some(name) = &p.params.only_policy {
        made.retain_policy(name);
    }
    (p.progress)(Progress::Planned {
        writes: made.writes.len(),
    });
    (made, view.unreadable())
}
