//! Issue 8: the fault campaign. Every scenario injects ARM faults (the emulator's fault rules)
//! or foreign edits at a chosen step of a plan, then checks two things: the estate converges
//! once the faults stop, and nothing kmsroute does not own changed — foreign routes, every
//! subnet property but `routeTable`, existing associations, NSGs, NICs and foreign tables are
//! exactly as the other writer left them. The test prints the campaign table.
//!
//! Real ARM client and executor, in-process emulator over HTTP, one lane (concurrency 1) so a
//! step of a plan is well defined.

mod support;

use async_trait::async_trait;
use kmsroute::api::{DesiredState, parse_policies, validate_policy};
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::policy::RetrySettings;
use kmsroute::azure::{ArmError, NetworkApi};
use kmsroute::catalog::Cloud;
use kmsroute::emulator::{Config, EmulatorHandle, FaultRule, OtherWrite, OtherWriteError, Seed};
use kmsroute::executor::{self, PassDeps, PassParams, RunMode};
use kmsroute::ids::{RouteTableId, SubnetId};
use kmsroute::model::{Inventory, Route};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::invariants::{diff, duplicate_prefixes, foreign};

const SPOKE1: &str = "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-spoke1/providers/Microsoft.Network";

/// The demo estate, plus an unused foreign table and a second NSG for the other writer to use.
fn estate() -> Seed {
    let mut seed: Seed =
        serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap();
    seed.resources.push(json!({"id": format!("{SPOKE1}/routeTables/rt-spare"), "location": "westeurope",
        "properties": {"routes": [{"name": "spare", "properties": {"addressPrefix": "172.16.0.0/12", "nextHopType": "VirtualNetworkGateway"}}]}}));
    seed.resources.push(json!({"id": format!("{SPOKE1}/networkSecurityGroups/nsg-data-strict"), "location": "westeurope",
        "properties": {"securityRules": []}}));
    seed
}

fn policy() -> DesiredState {
    let docs =
        parse_policies(&std::fs::read_to_string("examples/kmsroutepolicy.yaml").unwrap()).unwrap();
    validate_policy(docs[0].policy.as_ref().unwrap(), Cloud::AzurePublic)
        .unwrap()
        .desired
}

fn retry() -> RetrySettings {
    RetrySettings {
        max_attempts: 4,
        max_elapsed: Duration::from_secs(2),
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        timeout: Duration::from_millis(400),
        connect_attempts: 4,
    }
}

async fn setup(config: Config) -> (EmulatorHandle, AzureNetworkApi) {
    let settings = ClientSettings {
        retry: retry(),
        lro_timeout: Some(Duration::from_secs(5)),
        ..ClientSettings::default()
    };
    support::arm::emulator_and_client(config, estate(), settings).await
}

/// A scenario's result: one row of the table.
#[derive(Debug)]
struct Row {
    scenario: String,
    faults: u64,
    passes: usize,
    converged: bool,
    checked: usize,
    lost_or_changed: Vec<String>,
}

/// Runs one scenario on its own task: a scenario that panics becomes a failed row naming it
/// (and the message), and the campaign goes on to the others.
async fn named<F>(name: String, scenario: F) -> Row
where
    F: std::future::Future<Output = Row> + Send + 'static,
{
    match tokio::spawn(scenario).await {
        Ok(row) => row,
        Err(e) => {
            let why = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()),
                Err(e) => e.to_string(),
            };
            Row {
                scenario: name,
                faults: 0,
                passes: 0,
                converged: false,
                checked: 0,
                lost_or_changed: vec![format!("the scenario panicked: {why}")],
            }
        }
    }
}

/// Why a row fails the campaign, if it does.
fn failure(r: &Row) -> Option<String> {
    if !r.converged {
        Some(format!(
            "{}: did not converge {:?}",
            r.scenario, r.lost_or_changed
        ))
    } else if !r.lost_or_changed.is_empty() {
        Some(format!(
            "{}: lost or changed {:?}",
            r.scenario, r.lost_or_changed
        ))
    } else {
        None
    }
}

/// One lane (concurrency 1), so "write number n of the plan" is well defined.
fn one_lane() -> PassParams {
    PassParams {
        mode: RunMode::Write,
        concurrency: 1,
        ..PassParams::default()
    }
}

/// Passes until one plans nothing and fails nothing (at most `max`).
async fn converge(api: &dyn NetworkApi, p: &DesiredState, max: usize) -> (usize, bool) {
    let options = one_lane();
    for n in 1..=max {
        if let Ok(r) = executor::pass(
            api,
            std::slice::from_ref(p),
            &options,
            &PassDeps::default(),
            &|_| {},
        )
        .await
            && r.plan.writes.is_empty()
            && r.writes_failed() == 0
        {
            return (n, true);
        }
    }
    (max, false)
}

/// Runs `faulty` passes with the faults in place, clears them, converges, and checks.
async fn fault_scenario(name: &str, rules: Vec<FaultRule>, faulty_passes: usize) -> Row {
    fault_scenario_with(name, Config::default(), rules, faulty_passes).await
}

async fn fault_scenario_with(
    name: &str,
    config: Config,
    rules: Vec<FaultRule>,
    faulty_passes: usize,
) -> Row {
    let (em, api) = setup(config).await;
    let p = policy();
    let expected = foreign(&em.dump());
    for r in rules {
        em.add_fault(r);
    }
    for _ in 0..faulty_passes {
        // Errors are expected here; a pass must come back, never hang or panic.
        let _ = executor::pass(
            &api,
            std::slice::from_ref(&p),
            &one_lane(),
            &PassDeps::default(),
            &|_| {},
        )
        .await;
    }
    let faults = em.stats().faults;
    em.clear_faults();
    let (passes, converged) = converge(&api, &p, 5).await;
    finish(
        name,
        &em,
        &expected,
        faults,
        passes + faulty_passes,
        converged,
    )
}

fn finish(
    name: &str,
    em: &EmulatorHandle,
    expected: &BTreeMap<String, Value>,
    faults: u64,
    passes: usize,
    converged: bool,
) -> Row {
    let dump = em.dump();
    let now = foreign(&dump);
    let mut lost = diff(expected, &now);
    lost.extend(
        duplicate_prefixes(&dump)
            .into_iter()
            .map(|d| format!("duplicate: {d}")),
    );
    Row {
        scenario: name.into(),
        faults,
        passes,
        converged,
        checked: expected.len(),
        lost_or_changed: lost,
    }
}

fn rule(method: &str, path: &str, status: u16, code: &str) -> FaultRule {
    FaultRule {
        method: Some(method.into()),
        path_contains: Some(path.into()),
        status: Some(status),
        code: Some(code.into()),
        ..FaultRule::default()
    }
}

/// The port with a hand on each write: `before(n)` runs just before write number `n` (0-based)
/// goes out, and only `allow` writes may start; the next one never does, and `stopped` fires
/// once the allowed ones have finished (the process "killed" between two writes).
struct Gate<'a> {
    inner: &'a AzureNetworkApi,
    before: Box<dyn Fn(usize) + Send + Sync + 'a>,
    allow: usize,
    started: AtomicUsize,
    finished: AtomicUsize,
    stopped: tokio::sync::Notify,
}

impl<'a> Gate<'a> {
    fn new(
        inner: &'a AzureNetworkApi,
        allow: usize,
        before: impl Fn(usize) + Send + Sync + 'a,
    ) -> Self {
        Gate {
            inner,
            before: Box::new(before),
            allow,
            started: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            stopped: tokio::sync::Notify::new(),
        }
    }

    async fn run<T>(&self, write: impl std::future::Future<Output = T>) -> T {
        let n = self.started.fetch_add(1, Ordering::SeqCst);
        if n >= self.allow {
            if self.allow == 0 {
                self.stopped.notify_one();
            }
            std::future::pending::<()>().await;
        }
        (self.before)(n);
        let out = write.await;
        if self.finished.fetch_add(1, Ordering::SeqCst) + 1 == self.allow {
            self.stopped.notify_one();
        }
        out
    }
}

#[async_trait]
impl NetworkApi for Gate<'_> {
    async fn inventory(&self, subscriptions: &BTreeSet<String>) -> Result<Inventory, ArmError> {
        self.inner.inventory(subscriptions).await
    }
    async fn relist(
        &self,
        subscription: &str,
        previous: Option<&kmsroute::azure::Fingerprint>,
    ) -> Result<kmsroute::azure::Relisted, ArmError> {
        self.inner.relist(subscription, previous).await
    }
    async fn create_route_table(
        &self,
        table: &RouteTableId,
        location: &str,
        tags: &BTreeMap<String, String>,
        disable_bgp_route_propagation: bool,
        routes: &[Route],
    ) -> Result<(), ArmError> {
        self.run(self.inner.create_route_table(
            table,
            location,
            tags,
            disable_bgp_route_propagation,
            routes,
        ))
        .await
    }
    async fn put_route(&self, table: &RouteTableId, route: &Route) -> Result<(), ArmError> {
        self.run(self.inner.put_route(table, route)).await
    }
    async fn delete_route(&self, table: &RouteTableId, name: &str) -> Result<(), ArmError> {
        self.run(self.inner.delete_route(table, name)).await
    }
    async fn set_subnet_route_table(
        &self,
        subnet: &SubnetId,
        expected: Option<&RouteTableId>,
        new: Option<&RouteTableId>,
    ) -> Result<(), ArmError> {
        self.run(self.inner.set_subnet_route_table(subnet, expected, new))
            .await
    }
    async fn delete_route_table(&self, table: &RouteTableId) -> Result<(), ArmError> {
        self.run(self.inner.delete_route_table(table)).await
    }
    async fn egress_facts(
        &self,
        subscriptions: &BTreeSet<String>,
    ) -> Result<kmsroute::model::EgressFacts, ArmError> {
        self.inner.egress_facts(subscriptions).await
    }
    async fn management_group_subscriptions(
        &self,
        group: &str,
    ) -> Result<BTreeSet<String>, ArmError> {
        self.inner.management_group_subscriptions(group).await
    }
    fn read_budget(&self, subscription: &str) -> kmsroute::azure::ReadBudget {
        self.inner.read_budget(subscription)
    }
    async fn activity_log(
        &self,
        resource_uri: &str,
        since: i64,
    ) -> Result<Vec<kmsroute::azure::ActivityEvent>, ArmError> {
        self.inner.activity_log(resource_uri, since).await
    }
    fn route_identities(&self, routes: &kmsroute::azure::IdentityRoutes) -> Result<(), ArmError> {
        self.inner.route_identities(routes)
    }
    async fn network_interfaces(
        &self,
        subscriptions: &BTreeSet<String>,
    ) -> Result<Vec<kmsroute::model::NetworkInterface>, ArmError> {
        self.inner.network_interfaces(subscriptions).await
    }
    async fn effective_routes(
        &self,
        nic: &str,
    ) -> Result<Vec<kmsroute::effective::EffectiveRoute>, ArmError> {
        self.inner.effective_routes(nic).await
    }
}

/// The kinds of foreign edit, applied at a step of the plan.
#[derive(Clone, Copy, Debug)]
enum Edit {
    /// A route of the shared table is deleted (ours or theirs) between our read and write.
    DeleteRoute,
    /// The subnet we are about to associate is associated with another table by hand.
    Reassociate,
    /// A table is deleted (the one kmsroute just created, before the association).
    DeleteTable,
    /// The subnet with the NSG gets another NSG during our subnet writes (412 path).
    ChangeNsg,
}

/// The foreign edit, done to the emulator. Every kind has a fallback target, so each step
/// really edits something.
fn apply_edit(em: &EmulatorHandle, edit: Edit, step: usize) -> Result<(), OtherWriteError> {
    let shared = format!("{SPOKE1}/routeTables/rt-spoke1-shared");
    match edit {
        Edit::DeleteRoute => {
            // Odd steps: one of ours if it is there yet; otherwise, and on even steps, theirs.
            let ours = step % 2 == 1
                && em
                    .other_writer(OtherWrite::DeleteRoute {
                        route_table: shared.clone(),
                        route: "kms-20-118-99-224".into(),
                    })
                    .is_ok();
            if ours {
                return Ok(());
            }
            let theirs = if step % 4 < 2 {
                "to-nva-default"
            } else {
                "onprem"
            };
            em.other_writer(OtherWrite::DeleteRoute {
                route_table: shared,
                route: theirs.into(),
            })
        }
        Edit::Reassociate => em.other_writer(OtherWrite::SetSubnetRouteTable {
            subnet: format!("{SPOKE1}/virtualNetworks/vnet-spoke1/subnets/app"),
            route_table: Some(format!("{SPOKE1}/routeTables/rt-spoke1-shared")),
        }),
        Edit::DeleteTable => {
            // A table kmsroute just created and not yet associated, else a foreign spare one.
            let spoke2 = SPOKE1
                .replace(
                    "11111111-1111-1111-1111-111111111111",
                    "22222222-2222-2222-2222-222222222222",
                )
                .replace("rg-spoke1", "rg-spoke2");
            let candidates = [
                format!("{SPOKE1}/routeTables/vnet-spoke1-app-kms"),
                format!("{SPOKE1}/routeTables/vnet-spoke1-data-kms"),
                format!("{spoke2}/routeTables/vnet-spoke2-private-kms"),
                format!("{SPOKE1}/routeTables/rt-spare"),
            ];
            candidates
                .into_iter()
                .find_map(|t| {
                    em.other_writer(OtherWrite::DeleteRouteTable { route_table: t })
                        .ok()
                })
                .ok_or_else(|| OtherWriteError::NotFound {
                    kind: "route table",
                    id: "to delete among the candidates".into(),
                })
        }
        Edit::ChangeNsg => {
            // Armed now, it strikes inside the next PUT of the data subnet: after the client's
            // GET, before its PUT, so the PUT's If-Match fails and the client must re-read.
            em.add_fault(FaultRule {
                method: Some("PUT".into()),
                path_contains: Some("/subnets/data".into()),
                count: Some(1),
                other_write: Some(OtherWrite::PatchSubnet {
                    subnet: format!("{SPOKE1}/virtualNetworks/vnet-spoke1/subnets/data"),
                    properties: json!({"networkSecurityGroup": {"id": format!("{SPOKE1}/networkSecurityGroups/nsg-data-strict")}}),
                }),
                ..FaultRule::default()
            });
            Ok(())
        }
    }
}

async fn edit_scenario(edit: Edit, at: usize) -> Row {
    let (em, api) = setup(Config::default()).await;
    let p = policy();
    let expected = Arc::new(Mutex::new(foreign(&em.dump())));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let applied = Arc::new(AtomicUsize::new(0));
    {
        let wrapped = Gate::new(&api, usize::MAX, {
            let em = &em;
            let expected = expected.clone();
            let violations = violations.clone();
            let applied = applied.clone();
            move |n| {
                if n != at {
                    return;
                }
                // Up to here, kmsroute must not have touched anything foreign.
                let before = foreign(&em.dump());
                if let Ok(exp) = expected.lock()
                    && let Ok(mut v) = violations.lock()
                {
                    v.extend(diff(&exp, &before));
                }
                if apply_edit(em, edit, at).is_ok() {
                    applied.fetch_add(1, Ordering::SeqCst);
                    // From now on, "as the other writer left it" includes the edit.
                    if let Ok(mut exp) = expected.lock() {
                        *exp = foreign(&em.dump());
                    }
                }
            }
        });
        let _ = executor::pass(
            &wrapped,
            std::slice::from_ref(&p),
            &one_lane(),
            &PassDeps::default(),
            &|_| {},
        )
        .await;
    }
    let (passes, converged) = converge(&api, &p, 5).await;
    let mut exp = expected.lock().unwrap().clone();
    let mut injected = applied.load(Ordering::SeqCst) as u64;
    if matches!(edit, Edit::ChangeNsg) {
        // The edit happened inside a request, if that request came: expect its NSG.
        injected = em.stats().faults;
        if injected > 0 {
            let key = format!(
                "subnet {}/virtualnetworks/vnet-spoke1/subnets/data",
                SPOKE1.to_ascii_lowercase()
            );
            if let Some(s) = exp.get_mut(&key) {
                s["networkSecurityGroup"]["id"] =
                    json!(format!("{SPOKE1}/networkSecurityGroups/nsg-data-strict"));
            }
        }
    }
    let mut row = finish(
        &format!("{edit:?} before write {at}"),
        &em,
        &exp,
        injected,
        passes + 1,
        converged,
    );
    row.lost_or_changed
        .extend(violations.lock().unwrap().iter().cloned());
    row
}

/// Ends a pass for good after `k` writes (as if the process were killed there), then a fresh
/// "restarted" pass converges: no duplicates, and the two passes' writes add up to the plan.
async fn killed_scenario(k: usize) -> (Row, u64) {
    let (em, api) = setup(Config::default()).await;
    let p = policy();
    let expected = foreign(&em.dump());
    let kill = Gate::new(&api, k, |_| {});
    let options = one_lane();
    let deps = PassDeps::default();
    let planned = {
        let pass = executor::pass(&kill, std::slice::from_ref(&p), &options, &deps, &|_| {});
        tokio::select! {
            r = pass => r.map(|r| r.plan.writes.len()).unwrap_or(0),
            _ = kill.stopped.notified() => usize::MAX,
        }
        // Leaving the select drops the pass: the "process" is gone mid-plan.
    };
    let first = em.stats().mutations;
    let (passes, converged) = converge(&api, &p, 5).await;
    let row = finish(
        &format!("killed after write {k}"),
        &em,
        &expected,
        u64::from(planned == usize::MAX),
        passes + 1,
        converged,
    );
    (row, em.stats().mutations - first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_campaign() {
    let mut rows: Vec<Row> = Vec::new();
    let count = |n: u64, r: FaultRule| FaultRule {
        count: Some(n),
        ..r
    };
    let retry_after = |s: u64, r: FaultRule| FaultRule {
        retry_after: Some(s),
        ..r
    };
    let on_puts = |r: FaultRule| FaultRule {
        method: Some("PUT".into()),
        path_contains: Some("/providers".into()),
        ..r
    };
    // (scenario, faults, passes with the faults in place)
    let arm_faults: Vec<(&str, FaultRule, usize)> = vec![
        (
            "429 storm, Retry-After 1 s",
            count(
                6,
                retry_after(
                    1,
                    rule("PUT", "/providers", 429, "SubscriptionRequestsThrottled"),
                ),
            ),
            1,
        ),
        // A Retry-After longer than the per-call retry budget (ARM says "minutes"): the pass
        // reports Throttled at once instead of holding requests open; the subscription waits.
        (
            "429 with Retry-After beyond the retry budget",
            count(
                2,
                retry_after(
                    3,
                    rule("PUT", "/providers", 429, "SubscriptionRequestsThrottled"),
                ),
            ),
            1,
        ),
        (
            "500 burst on every method (50%)",
            FaultRule {
                method: None,
                probability: Some(0.5),
                ..count(20, rule("GET", "/providers", 500, "InternalServerError"))
            },
            2,
        ),
        (
            "503 on writes",
            count(8, rule("PUT", "/providers", 503, "ServiceUnavailable")),
            1,
        ),
        (
            "hanging requests (client timeout)",
            count(
                3,
                on_puts(FaultRule {
                    hang: true,
                    ..FaultRule::default()
                }),
            ),
            1,
        ),
        (
            "long-running operation ends Failed",
            count(
                4,
                on_puts(FaultRule {
                    lro_status: Some("Failed".into()),
                    ..FaultRule::default()
                }),
            ),
            1,
        ),
        (
            "long-running operation ends Canceled",
            count(
                4,
                on_puts(FaultRule {
                    lro_status: Some("Canceled".into()),
                    ..FaultRule::default()
                }),
            ),
            1,
        ),
        (
            "409 AnotherOperationInProgress on the VNet",
            count(
                4,
                rule("PUT", "/subnets/", 409, "AnotherOperationInProgress"),
            ),
            1,
        ),
        (
            "412 on every subnet write (stale etag)",
            count(3, rule("PUT", "/subnets/", 412, "PreconditionFailed")),
            1,
        ),
        (
            "ResourceNotFound for a vanished subnet",
            count(2, rule("GET", "/subnets/data", 404, "ResourceNotFound")),
            1,
        ),
        (
            "403 AuthorizationFailed on route writes",
            count(5, rule("PUT", "/routes/", 403, "AuthorizationFailed")),
            2,
        ),
        (
            "403 LinkedAuthorizationFailed (no routeTables/join/action)",
            count(
                5,
                rule("PUT", "/subnets/", 403, "LinkedAuthorizationFailed"),
            ),
            2,
        ),
    ];
    for (name, fault, passes) in arm_faults {
        rows.push(named(name.into(), fault_scenario(name, vec![fault], passes)).await);
    }
    let polled = "long-running operations in progress 300 ms, polled";
    rows.push(
        named(
            polled.into(),
            fault_scenario_with(
                polled,
                Config {
                    lro_duration: Duration::from_millis(300),
                    ..Config::default()
                },
                vec![],
                0,
            ),
        )
        .await,
    );
    // Foreign edits at every step of the first plan (11 writes on the demo estate).
    let planned = {
        let (_em, api) = setup(Config::default()).await;
        executor::pass(
            &api,
            &[policy()],
            &PassParams {
                mode: RunMode::PlanOnly,
                ..PassParams::default()
            },
            &PassDeps::default(),
            &|_| {},
        )
        .await
        .unwrap()
        .plan
        .writes
        .len()
    };
    assert_eq!(planned, 11);
    for edit in [
        Edit::DeleteRoute,
        Edit::Reassociate,
        Edit::DeleteTable,
        Edit::ChangeNsg,
    ] {
        for at in 0..planned {
            let name = format!("{edit:?} before write {at}");
            rows.push(named(name, edit_scenario(edit, at)).await);
        }
    }
    // Killed after each write, then restarted.
    for k in 0..=planned {
        let name = format!("killed after write {k}");
        let row = named(name, async move {
            let (mut row, mutations) = killed_scenario(k).await;
            if mutations as usize + k != planned {
                row.lost_or_changed.push(format!(
                    "the restart wrote {mutations} write(s), not the {} left",
                    planned - k
                ));
            }
            row
        })
        .await;
        rows.push(row);
    }

    // The table.
    let mut out = String::from(
        "\n| scenario | faults injected | passes | converged | foreign items checked | lost or changed |\n|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.faults,
            r.passes,
            if r.converged { "yes" } else { "NO" },
            r.checked,
            r.lost_or_changed.len()
        ));
    }
    let faults: u64 = rows.iter().map(|r| r.faults).sum();
    let checked: usize = rows.iter().map(|r| r.checked).sum();
    let lost: usize = rows.iter().map(|r| r.lost_or_changed.len()).sum();
    out.push_str(&format!(
        "| **{} scenarios** | {faults} | | {} converged | {checked} | {lost} |\n",
        rows.len(),
        rows.iter().filter(|r| r.converged).count()
    ));
    println!("{out}");
    // Every failing scenario by name, not just the first.
    let failures: Vec<String> = rows.iter().filter_map(failure).collect();
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert!(faults > 0 && checked > 0);
}
