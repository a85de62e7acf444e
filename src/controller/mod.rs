//! `kmsroute run`: the executor as a level-triggered Kubernetes controller over
//! `KmsRoutePolicy`. Thin wiring: a finalizer that carries out `deletionPolicy`, status written
//! through the status subresource by server-side apply (only when it changed), deduplicated
//! Events, resync with jitter, per-object exponential backoff, and a Lease so only the leader
//! reconciles. Beside the policy watch, the shared Azure inventory ([`inventory`]) refreshes
//! each subscription in use on a pace and queues a pass for exactly the policies whose subnets
//! or tables changed; passes plan on it instead of listing.
//!
//! One policy's work is [`converge`] (validate → due? → pass → status → Events → requeue) or
//! its cleanup; what the controller remembers of each policy is one [`state::PolicyState`];
//! status and Events are built in [`status`] and [`events`].

mod conditions;
pub mod contested;
mod converge;
mod error;
mod events;
mod finalizer;
pub mod inventory;
pub mod leader;
pub mod metrics;
pub mod probes;
pub mod state;
mod status;

use crate::api::{FINALIZER, KmsRoutePolicy};
use crate::azure::NetworkApi;
use crate::catalog::Cloud;
pub use error::{Error, RunError, worst_class};
use futures::StreamExt;
use inventory::{ChangeEvent, InventorySettings, SharedInventory};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use leader::{LeaderElector, LeaseSettings};
use metrics::ControllerMetrics;
pub use probes::Probes;
use state::Policies;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// The field manager that owns `status`.
pub const FIELD_MANAGER: &str = "kmsroute";

#[derive(Debug, Clone)]
pub struct Settings {
    pub cloud: Cloud,
    pub concurrency: usize,
    /// Re-check interval for errors only a human can fix.
    pub slow_retry: Duration,
    /// First backoff step after an error; doubles up to `slow_retry`.
    pub base_backoff: Duration,
    /// Upper bound on every policy's resync interval (`--max-resync`), e.g. to tighten drift
    /// detection cluster-wide without editing policies.
    pub resync_cap: Option<Duration>,
    pub lease: LeaseSettings,
    /// For policies with `spec.kms.resolveDns` (the system resolver in `kmsroute run`).
    pub resolver: Option<Arc<dyn crate::dns::Resolver>>,
    /// Pace and read share of the shared inventory's refreshes.
    pub inventory: InventorySettings,
    /// When a route table counts as contested (reverts within a window).
    pub contest: crate::plan::contest::ContestSettings,
    /// The identities a policy may name in `spec.azure.identity`, decided by whoever installs
    /// the controller (`--allowed-identity`); empty: only the controller's own. A policy naming
    /// another gets an `IdentityNotAllowed` problem and nothing is done for it.
    pub allowed_identities: std::collections::BTreeSet<crate::ids::Identity>,
}

impl Settings {
    /// Whether a policy may use `identity` (`None`, the controller's own, always).
    pub fn allows(&self, identity: Option<&crate::ids::Identity>) -> bool {
        identity.is_none_or(|i| {
            self.allowed_identities.contains(&crate::ids::Identity {
                tenant_id: i.tenant_id.to_ascii_lowercase(),
                client_id: i.client_id.to_ascii_lowercase(),
            })
        })
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub arm: Arc<dyn NetworkApi>,
    pub settings: Settings,
    pub metrics: Arc<ControllerMetrics>,
    recorder: Recorder,
    store: Store<KmsRoutePolicy>,
    /// What the controller remembers of each policy.
    policies: Policies,
    /// Passes so far: rotates the effective-route verification sample.
    passes: AtomicU64,
    /// The shared Azure inventory every pass plans on.
    pub inventory: Arc<SharedInventory>,
    /// Each policy's own writes and the reverts of them (contested route tables).
    contests: contested::Contests,
}

fn jitter(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + (rand::random::<f64>() * 2.0 - 1.0) * spread)
}

impl Context {
    /// Maps a change of the inventory to the policies that select what changed, marks them
    /// dirty and returns them to be queued.
    fn affected(&self, change: &ChangeEvent) -> Vec<ObjectRef<KmsRoutePolicy>> {
        let mut out = Vec::new();
        for p in self.store.state() {
            let name = p.name_any();
            if p.meta().deletion_timestamp.is_some() || change.writer.as_deref() == Some(&name) {
                continue;
            }
            let Ok(mut desired) = self.policies.check(&p, self.settings.cloud) else {
                continue;
            };
            // Subscriptions that came from management groups are known from the last pass.
            if let (Some(sel), Some(wanted)) =
                (desired.selector.as_mut(), self.inventory.wanted_by(&name))
            {
                sel.subscriptions.extend(wanted);
            }
            if !desired.subscriptions().contains(&change.subscription)
                || !change
                    .subnets
                    .iter()
                    .any(|(id, tags)| desired.selects(id, tags))
            {
                continue;
            }
            self.policies.mark_dirty(&name, change.detected);
            out.push(ObjectRef::from_obj(p.as_ref()));
        }
        out
    }
}

/// Reconciles one policy: through its finalizer, [`converge::converge`] or
/// [`converge::clean_up`].
pub async fn reconcile(policy: Arc<KmsRoutePolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let api: Api<KmsRoutePolicy> = Api::all(ctx.client.clone());
    let name = policy.name_any();
    let result = finalizer::finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            finalizer::Event::Apply(p) => converge::converge(&p, &ctx).await,
            finalizer::Event::Cleanup(p) => converge::clean_up(&p, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => {
            Error::Finalizer(e)
        }
        finalizer::Error::UnnamedObject => Error::NoReport("an object without a name".into()),
    });
    ctx.metrics.reconcile_done(
        if result.is_ok() { "success" } else { "error" },
        started.elapsed(),
    );
    if result.is_ok() {
        ctx.policies.succeeded(&name);
    }
    result
}

/// Backoff per object: exponential with jitter, reset on success; user-action errors wait on
/// the slow timer (and are never abandoned).
pub fn error_policy(policy: Arc<KmsRoutePolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(policy = %policy.name_any(), error = %error, "reconcile failed");
    ctx.metrics.error(error.metric_label());
    if error.needs_user_action() {
        return Action::requeue(jitter(ctx.settings.slow_retry, 0.1));
    }
    let failures = ctx.policies.failed(&policy.name_any());
    let step = state::backoff(failures, ctx.settings.base_backoff, ctx.settings.slow_retry);
    Action::requeue(jitter(step, 0.2))
}

/// Aborts a spawned task when dropped, so dropping `run` (a killed process) stops everything.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the controller while this replica leads; stops at once when leadership is lost, and
/// returns when `stop` turns true (after releasing the lease). An error means this replica must
/// not run at all (another one holds the lease under the same identity).
pub async fn run(
    client: kube::Client,
    arm: Arc<dyn NetworkApi>,
    settings: Settings,
    metrics: Arc<ControllerMetrics>,
    probes: Probes,
    stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let (lead_tx, mut lead_rx) = watch::channel(false);
    let elector = LeaderElector::new(client.clone(), settings.lease.clone());
    let mut elector_task = AbortOnDrop(tokio::spawn(elector.run(
        lead_tx,
        stop.clone(),
        probes.clone(),
    )));
    let mut stop_rx = stop.clone();
    let elector_outcome =
        |r: Result<Result<(), leader::LeaseError>, tokio::task::JoinError>| Ok(r??);
    loop {
        // Wait to lead (or to stop).
        while !*lead_rx.borrow() {
            metrics.set_leader(false);
            probes.leading.store(false, Ordering::SeqCst);
            tokio::select! {
                r = lead_rx.changed() => if r.is_err() { return elector_outcome((&mut elector_task.0).await); },
                _ = stop_rx.changed() => {}
            }
            if *stop_rx.borrow() {
                return elector_outcome((&mut elector_task.0).await);
            }
        }
        metrics.set_leader(true);
        probes.leading.store(true, Ordering::SeqCst);
        let mut task = AbortOnDrop(tokio::spawn(run_controller(
            client.clone(),
            arm.clone(),
            settings.clone(),
            metrics.clone(),
            probes.clone(),
        )));
        // Lead until the lease is lost or we are told to stop; then abort in-flight work.
        loop {
            tokio::select! {
                r = lead_rx.changed() => if r.is_err() || !*lead_rx.borrow() { tracing::debug!(closed = r.is_err(), "lease watch ended leadership"); break; },
                _ = stop_rx.changed() => if *stop_rx.borrow() { break; },
                _ = &mut task.0 => { tracing::error!("the controller stopped on its own; restarting it"); break; },
            }
        }
        task.0.abort();
        let _ = (&mut task.0).await;
        metrics.set_leader(false);
        probes.leading.store(false, Ordering::SeqCst);
        // The cache belonged to that term: a new term lists again before it is ready.
        probes.watch_synced.store(false, Ordering::SeqCst);
        if *stop_rx.borrow() {
            return elector_outcome((&mut elector_task.0).await);
        }
        tracing::warn!("leadership lost: reconciling stopped");
    }
}

async fn run_controller(
    client: kube::Client,
    arm: Arc<dyn NetworkApi>,
    settings: Settings,
    metrics: Arc<ControllerMetrics>,
    probes: Probes,
) {
    let api: Api<KmsRoutePolicy> = Api::all(client.clone());
    // Passes queued by the inventory's change detection (kube-runtime's external triggers).
    let (trigger_tx, trigger_rx) = tokio::sync::mpsc::unbounded_channel();
    let triggers = futures::stream::unfold(trigger_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    let controller =
        Controller::new(api, watcher::Config::default().any_semantic()).reconcile_on(triggers);
    let store = controller.store();
    let (inventory, mut changes) =
        SharedInventory::new(arm.clone(), settings.inventory, metrics.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kmsroute".into(),
            instance: Some(settings.lease.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client,
        arm,
        settings: settings.clone(),
        metrics,
        recorder,
        store: store.clone(),
        policies: Policies::default(),
        passes: AtomicU64::new(0),
        inventory,
        contests: contested::Contests::new(settings.contest),
    });
    // Changes → the policies they concern → queued passes. Aborted with this function, so a
    // replica that loses the lease stops refreshing (the loops hold the inventory weakly).
    let trigger_ctx = ctx.clone();
    let _changes = AbortOnDrop(tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            for policy in trigger_ctx.affected(&change) {
                trigger_ctx.metrics.triggered(&policy.name);
                if trigger_tx.send(policy).is_err() {
                    return;
                }
            }
        }
    }));
    let _synced = AbortOnDrop(tokio::spawn(wait_listable(
        ctx.client.clone(),
        probes.clone(),
    )));
    // Liveness: this beats only while the controller's own future is being polled.
    let heartbeat = probes.controller_loop.clone();
    let beating = async move {
        loop {
            heartbeat.beat();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };
    let running = controller
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(settings.concurrency.min(u16::MAX as usize) as u16),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    tokio::select! {
        _ = running => {}
        _ = beating => {}
    }
}

/// Ready once the policies this replica watches can be listed (the watch's own first step);
/// retried until it works, so a briefly unreachable API server only delays readiness. Backed
/// off (1 s doubling to a minute) and warned once per distinct error, so a cluster without the
/// CRD yet does not get a warning a second.
async fn wait_listable(client: kube::Client, probes: Probes) {
    let api: Api<KmsRoutePolicy> = Api::all(client);
    let mut pause = Duration::from_secs(1);
    let mut last_error = String::new();
    loop {
        match api.list(&kube::api::ListParams::default().limit(1)).await {
            Ok(_) => {
                probes.watch_synced.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                let error = e.to_string();
                if error != last_error {
                    tracing::warn!(error = %e, retry_in = ?pause, "cannot list KmsRoutePolicies yet (is the CRD installed?)");
                    last_error = error;
                } else {
                    tracing::debug!(error = %e, retry_in = ?pause, "cannot list KmsRoutePolicies yet");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
}
