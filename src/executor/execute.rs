//! Phase 4 of a pass: carrying a plan out. Each route table's writes run in plan order in a
//! lane; lanes run in parallel up to the pass's concurrency per subscription (ARM's write budget
//! is per subscription), one subnet write per VNet at a time. A write ARM refuses because the
//! view was stale (412, `SubnetRouteTableChanged`, 404, `RouteConflict`) makes the pass read
//! the written subscriptions again and plan once more.

use super::{Pass, RunMode};
use crate::api::DesiredState;
use crate::azure::{ArmError, ErrorClass, NetworkApi};
use crate::plan::{Plan, PlannedWrite, TablePlan, Write, plan_parts};
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Mutex;

/// Progress events for a progress bar or log lines.
#[derive(Debug, Clone)]
pub enum Progress {
    Observed {
        subscriptions: usize,
        subnets: usize,
        route_tables: usize,
    },
    Planned {
        writes: usize,
    },
    Wrote {
        done: usize,
        total: usize,
        write: Box<Write>,
        error: Option<Box<ArmError>>,
    },
}

/// The outcome of one write: which write, by its index in the writes it was run from
/// ([`Written::write`] for a pass), and how it ended. It holds no copy of the write (150,000
/// copies were a fifth of a first convergence's peak at 100,000 subnets).
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub index: usize,
    /// `None`: done. `Some`: failed, or skipped because a write it depended on failed.
    pub error: Option<Box<ArmError>>,
}

/// What the execution of a pass's plan did.
#[derive(Debug, Clone)]
pub struct Written {
    /// The plan made from the first observation.
    pub plan: Plan,
    /// Writes planned again after ARM refused a stale view (their results index past
    /// `plan.writes`).
    pub replanned: Vec<PlannedWrite>,
    pub results: Vec<WriteResult>,
    /// The subscriptions the writes went to, lowercased (ARM's IDs are case-insensitive).
    pub subscriptions: BTreeSet<String>,
    /// True when the pass wrote (in write mode, with writes to make and its approval current).
    pub wrote: bool,
    /// The plan made now is not the one approved: nothing was written.
    pub approval_stale: bool,
}

impl Written {
    /// Every write run, with its error if it failed, in the order they were planned.
    pub fn outcomes(&self) -> impl Iterator<Item = (&PlannedWrite, Option<&ArmError>)> {
        outcomes(&self.plan, &self.replanned, &self.results)
    }
}

/// The write a result is for: the plan's writes, then the re-planned ones.
pub(super) fn write_at<'a>(
    plan: &'a Plan,
    replanned: &'a [PlannedWrite],
    result: &WriteResult,
) -> &'a PlannedWrite {
    match plan.writes.get(result.index) {
        Some(w) => w,
        // Results are only made from these two lists, so the index is in one of them.
        None => &replanned[result.index - plan.writes.len()],
    }
}

/// Every write run, with its error if it failed, in the order they were planned.
pub(super) fn outcomes<'a>(
    plan: &'a Plan,
    replanned: &'a [PlannedWrite],
    results: &'a [WriteResult],
) -> impl Iterator<Item = (&'a PlannedWrite, Option<&'a ArmError>)> {
    results
        .iter()
        .map(move |r| (write_at(plan, replanned, r), r.error.as_deref()))
}

/// Carries out the pass's share of the plan, unless the pass only plans, there is nothing to
/// write, or the user approved another plan.
pub async fn execute(
    p: &Pass<'_>,
    policies: &[DesiredState],
    first: Plan,
) -> Result<Written, ArmError> {
    let approval_stale = p
        .params
        .approved
        .as_ref()
        .is_some_and(|a| a.as_slice() != first.writes.as_slice());
    let mut written = Written {
        subscriptions: subscriptions_written(&first.writes).collect(),
        plan: first,
        replanned: Vec::new(),
        results: Vec::new(),
        wrote: false,
        approval_stale,
    };
    if p.params.mode == RunMode::PlanOnly || written.plan.writes.is_empty() || approval_stale {
        written.subscriptions.clear();
        return Ok(written);
    }
    written.wrote = true;
    let concurrency = p.params.concurrency.max(1);
    written.results = run_lanes(p.api, &written.plan, concurrency, p.progress, p.interrupt).await;
    if written
        .results
        .iter()
        .any(|r| r.error.as_deref().is_some_and(stale_view))
    {
        replan(p, policies, &mut written, concurrency).await?;
    }
    Ok(written)
}

/// The view was stale where ARM refused: read the written subscriptions afresh and plan again
/// (once; a view that is still wrong waits for the next pass).
async fn replan(
    p: &Pass<'_>,
    policies: &[DesiredState],
    written: &mut Written,
    concurrency: usize,
) -> Result<(), ArmError> {
    let fresh = p
        .source
        .reread(&written.subscriptions, p.params.only_policy.as_deref())
        .await?;
    let mut second = plan_parts(policies, fresh.parts());
    drop(fresh);
    if let Some(name) = &p.params.only_policy {
        second.retain_policy(name);
    }
    tracing::info!(
        refused = written.results.iter().filter(|r| r.error.is_some()).count(),
        replanned = second.writes.len(),
        "the view was stale: re-read and re-planned"
    );
    written.results.retain(|r| r.error.is_none());
    written
        .subscriptions
        .extend(subscriptions_written(&second.writes));
    let offset = written.plan.writes.len();
    let results = run_lanes(p.api, &second, concurrency, p.progress, p.interrupt).await;
    written
        .results
        .extend(results.into_iter().map(|r| WriteResult {
            index: offset + r.index,
            ..r
        }));
    written.replanned = second.writes;
    Ok(())
}

/// True for a write error that means the pass planned on a view Azure no longer matches.
fn stale_view(e: &ArmError) -> bool {
    matches!(e.class, ErrorClass::Conflict | ErrorClass::NotFound)
        || e.code.as_deref() == Some("RouteConflict")
}

/// The subscriptions `writes` change, lowercased (ARM's IDs are case-insensitive).
fn subscriptions_written(writes: &[PlannedWrite]) -> impl Iterator<Item = String> + '_ {
    writes
        .iter()
        .map(|w| w.write.table().subscription().to_ascii_lowercase())
}

/// Carries out one planned write through the port (the executor's, not the port's: the port
/// knows ARM's operations, not the plan).
pub async fn execute_write(api: &dyn NetworkApi, write: &Write) -> Result<(), ArmError> {
    match write {
        Write::CreateRouteTable {
            table,
            location,
            tags,
            disable_bgp_route_propagation,
            routes,
        } => {
            api.create_route_table(
                table,
                location,
                tags,
                *disable_bgp_route_propagation,
                routes,
            )
            .await
        }
        Write::PutRoute { table, route, .. } => api.put_route(table, route).await,
        Write::DeleteRoute { table, name, .. } => api.delete_route(table, name).await,
        Write::AssociateSubnet { subnet, table } => {
            api.set_subnet_route_table(subnet, None, Some(table)).await
        }
        Write::DissociateSubnet { subnet, table } => {
            api.set_subnet_route_table(subnet, Some(table), None).await
        }
        Write::DeleteRouteTable { table } => api.delete_route_table(table).await,
    }
}

/// Most writes under way at once across all subscriptions (see [`run_lanes`]).
pub const MAX_ACTIVE_WRITES: usize = 4096;

/// What every lane of one plan's run shares.
struct Lanes<'a> {
    api: &'a dyn NetworkApi,
    plan: &'a Plan,
    done: AtomicUsize,
    /// One subnet write per VNet at a time (ARM serializes them and answers 429/409 otherwise).
    vnet_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Writes under way at once, all subscriptions together. Every subscription has its own
    /// lanes, but 500 subscriptions × 32 lanes kept 16,000 writes under way, each holding its
    /// request and poller while it queued for one of the client's 128 connections: 125 MB of
    /// a 520 MB peak at 100,000 subnets. 32 per connection still keeps every connection busy
    /// through 1-30 s long-running operations.
    active: tokio::sync::Semaphore,
    progress: &'a (dyn Fn(Progress) + Sync),
    interrupt: Option<&'a AtomicBool>,
}

impl Lanes<'_> {
    /// Runs one table's writes in order. When a write the planner named a prerequisite fails,
    /// the rest are skipped; any other failure is reported and the rest goes on.
    async fn run(&self, lane: &TablePlan) -> Vec<WriteResult> {
        let mut out = Vec::new();
        let mut blocked: Option<ArmError> = None;
        for &index in &lane.writes {
            let Some(w) = self.plan.writes.get(index) else {
                continue;
            };
            let error = self.one(&w.write, blocked.as_ref()).await;
            if let Some(e) = &error
                && lane.prerequisites.contains(&index)
                && blocked.is_none()
            {
                blocked = Some((**e).clone());
            }
            let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
            (self.progress)(Progress::Wrote {
                done: n,
                total: self.plan.writes.len(),
                write: Box::new(w.write.clone()),
                error: error.clone(),
            });
            out.push(WriteResult { index, error });
        }
        out
    }

    /// One write: not attempted when interrupted or blocked by a failed prerequisite.
    async fn one(&self, write: &Write, blocked: Option<&ArmError>) -> Option<Box<ArmError>> {
        if self.interrupt.is_some_and(|i| i.load(Ordering::SeqCst)) {
            return Some(Box::new(ArmError::local(
                ErrorClass::Retryable,
                "interrupted",
                write.table().as_str(),
                Some("Interrupted"),
                "not attempted: the run was interrupted",
            )));
        }
        if let Some(cause) = blocked {
            return Some(Box::new(ArmError {
                message: format!(
                    "not attempted: an earlier write to this route table failed ({})",
                    cause.message
                ),
                ..cause.clone()
            }));
        }
        let lock = match write.subnet() {
            Some(subnet) => {
                let mut locks = self.vnet_locks.lock().await;
                Some(
                    locks
                        .entry(subnet.vnet().key().to_string())
                        .or_default()
                        .clone(),
                )
            }
            None => None,
        };
        let _guard = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        // Never closed; a closed semaphore would only mean "no cap".
        let _active = self.active.acquire().await.ok();
        execute_write(self.api, write).await.err().map(Box::new)
    }
}

/// Carries out a plan: its tables' lanes in parallel up to `concurrency` per subscription, one
/// subnet write per VNet at a time. Results come back in plan order.
pub async fn run_lanes(
    api: &dyn NetworkApi,
    plan: &Plan,
    concurrency: usize,
    progress: &(dyn Fn(Progress) + Sync),
    interrupt: Option<&AtomicBool>,
) -> Vec<WriteResult> {
    let lanes = Lanes {
        api,
        plan,
        done: AtomicUsize::new(0),
        vnet_locks: Mutex::new(HashMap::new()),
        active: tokio::sync::Semaphore::new(MAX_ACTIVE_WRITES),
        progress,
        interrupt,
    };
    // A lane by its position in the plan: a closure taking a reference would hand its future a
    // borrow of its argument, which the controller's `Send` bound cannot see through.
    let lanes = &lanes;
    let run_lane = |lane: usize| async move { lanes.run(&plan.tables[lane]).await };
    // ARM's write budget is per subscription, so each subscription gets its own `concurrency`
    // lanes and all subscriptions run at once. One shared pool let a subscription whose bucket
    // was empty hold every slot while the others idled (measured: the dense 5-subscription
    // bench estate ran at 3.5 writes/s per subscription against the 10/s ARM allows).
    let mut by_subscription: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, lane) in plan.tables.iter().enumerate() {
        by_subscription
            .entry(lane.table.subscription().to_ascii_lowercase())
            .or_default()
            .push(i);
    }
    let per_subscription = by_subscription.into_values().map(|lanes| {
        futures::stream::iter(lanes.into_iter().map(run_lane))
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
    });
    let results: Vec<Vec<Vec<WriteResult>>> = futures::future::join_all(per_subscription).await;
    let mut flat: Vec<WriteResult> = Vec::with_capacity(plan.writes.len());
    flat.extend(results.into_iter().flatten().flatten());
    flat.sort_unstable_by_key(|r| r.index);
    flat
}

#[cfg(test)]
mod tests;
