//! The controller end to end: the fake Kubernetes API server and the ARM emulator, both
//! in-process, kube's real `Client` over HTTP, the real ARM client.

mod support;

use kmsroute::api::KmsRoutePolicy;
use kmsroute::azure::NetworkApi;
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::policy::RetrySettings;
use kmsroute::controller::metrics::ControllerMetrics;
use kmsroute::controller::{self, Probes, Settings};
use kmsroute::emulator::{self, Config, EmulatorHandle, OtherWrite, Seed};
use kmsroute::plan::contest::ContestSettings;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::fake_kube::FakeKube;
use tokio::sync::watch;

const S1: &str = "11111111-1111-1111-1111-111111111111";
const NS: &str = "kmsroute";

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), kmsroute::controller::RunError>>,
    probes: Probes,
    metrics: Arc<ControllerMetrics>,
    arm: Arc<AzureNetworkApi>,
}

fn arm_client(em: &EmulatorHandle, token: &str) -> Arc<AzureNetworkApi> {
    let retry = RetrySettings {
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_attempts: 3,
        ..RetrySettings::default()
    };
    Arc::new(support::arm::client_with_token(
        em,
        token,
        ClientSettings {
            retry,
            ..ClientSettings::default()
        },
    ))
}

fn start_controller(kube: &FakeKube, em: &EmulatorHandle, identity: &str) -> Running {
    start_controller_with_token(kube, em, identity, "t")
}

fn start_controller_with_token(
    kube: &FakeKube,
    em: &EmulatorHandle,
    identity: &str,
    token: &str,
) -> Running {
    start_controller_with(kube, em, identity, token, |_| {})
}

/// A controller with test settings changed by `tweak`.
fn start_controller_with(
    kube: &FakeKube,
    em: &EmulatorHandle,
    identity: &str,
    token: &str,
    tweak: impl FnOnce(&mut Settings),
) -> Running {
    // `RUST_LOG=kmsroute=debug cargo test --test controller -- --nocapture` shows the controller's logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let arm = arm_client(em, token);
    let mut settings = support::settings::controller(identity);
    tweak(&mut settings);
    let metrics = Arc::new(ControllerMetrics::default());
    let (stop, stop_rx) = watch::channel(false);
    let api: Arc<dyn NetworkApi> = arm.clone();
    let probes = Probes::default();
    // The credential check of `kmsroute run` is its own loop; here the static token works.
    probes
        .credentials_ok
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let task = tokio::spawn(controller::run(
        kube.client(),
        api,
        settings,
        metrics.clone(),
        probes.clone(),
        stop_rx,
    ));
    Running {
        stop,
        task,
        probes,
        metrics,
        arm,
    }
}

async fn estate_emulator() -> EmulatorHandle {
    support::arm::emulator(Config::default(), support::arm::demo_estate()).await
}

fn policy(name: &str, extra: Value) -> KmsRoutePolicy {
    let mut spec =
        json!({"selector": {"subscriptions": [S1], "virtualNetworkTags": {"kms": "enabled"}}});
    json_patch::merge(&mut spec, &extra);
    serde_json::from_value(json!({"apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy", "metadata": {"name": name}, "spec": spec})).unwrap()
}

impl Running {
    /// Stops cleanly (releasing the lease) and waits for the controller to end.
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Contested tables after `threshold` reverts within 10 minutes (the other settings default).
fn contest(threshold: usize) -> ContestSettings {
    ContestSettings {
        threshold,
        window_secs: 600,
        ..Default::default()
    }
}

/// A controller (as `kmsroute-sa` on ARM) that reports contested tables as `settings` says.
fn start_contested(
    kube: &FakeKube,
    em: &EmulatorHandle,
    identity: &str,
    settings: ContestSettings,
) -> Running {
    start_controller_with(kube, em, identity, "kmsroute-sa", |s| s.contest = settings)
}

/// Waits for a policy's Ready condition to be True, returning the object.
async fn wait_ready(kube: &FakeKube, name: &str) -> Value {
    wait_for(
        &format!("{name} Ready=True"),
        Duration::from_secs(20),
        || {
            kube.policy(name)
                .filter(|o| condition(o, "Ready").is_some_and(|c| c.0 == "True"))
        },
    )
    .await
}

use support::wait::wait_for;

fn condition(obj: &Value, type_: &str) -> Option<(String, String, String)> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").into(),
                c["reason"].as_str().unwrap_or("").into(),
                c["message"].as_str().unwrap_or("").into(),
            )
        })
}

fn table_routes(em: &EmulatorHandle, table: &str) -> Vec<String> {
    em.dump()
        .resources
        .iter()
        .find(|r| r["name"] == table)
        .map(|t| {
            t["properties"]["routes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for `kms-20-118-99-224` to be back in the table (after the other writer deleted it).
async fn wait_route_back(em: &EmulatorHandle, table: &str, limit: Duration) {
    wait_for(&format!("the kms route back in {table}"), limit, || {
        table_routes(em, table)
            .contains(&"kms-20-118-99-224".to_string())
            .then_some(())
    })
    .await;
}

/// How often an Event reason was reported: kube's recorder folds repeats of a reason into an
/// events.k8s.io series (`series.count`) instead of new objects.
fn occurrences(kube: &FakeKube, reason: &str) -> u64 {
    kube.events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| {
            e.pointer("/series/count")
                .and_then(Value::as_u64)
                .unwrap_or(1)
        })
        .sum()
}

async fn create(kube: &FakeKube, p: &KmsRoutePolicy) {
    Api::<KmsRoutePolicy>::all(kube.client())
        .create(&PostParams::default(), p)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_policy_becomes_ready_with_the_right_counts() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    let obj = wait_ready(&kube, "spokes").await;
    assert_eq!(
        obj["status"]["observedGeneration"],
        obj["metadata"]["generation"]
    );
    assert_eq!(
        obj["status"]["summary"],
        json!({"subnetsMatched": 5, "inSync": 4, "repaired": 4, "conflicts": 0, "skipped": 1, "errors": 0})
    );
    assert_eq!(
        obj["metadata"]["finalizers"],
        json!(["kmsroute.io/cleanup"])
    );
    // Every write the controller made names its field manager: the finalizer and the status.
    let managers = obj["metadata"]["managedFields"].as_array().unwrap();
    assert!(
        managers.iter().all(|m| m["manager"] == "kmsroute"),
        "{managers:?}"
    );
    assert!(
        managers
            .iter()
            .any(|m| m["subresource"] == "" && m["operation"] == "Update")
    );
    assert!(
        managers
            .iter()
            .any(|m| m["subresource"] == "status" && m["operation"] == "Apply")
    );
    assert_eq!(condition(&obj, "Degraded").unwrap().0, "False");
    assert_eq!(obj["status"]["destinations"].as_array().unwrap().len(), 3);
    assert!(table_routes(&em, "rt-spoke1-shared").contains(&"kms-20-118-99-224".to_string()));
    assert!(c.metrics.reconciles("success") >= 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_within_one_resync_and_an_event_says_so() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    let shared = spoke1_table();
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: shared,
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    wait_route_back(&em, "rt-spoke1-shared", Duration::from_secs(10)).await;
    let repaired = wait_for("two Repaired occurrences", Duration::from_secs(10), || {
        let n = occurrences(&kube, "Repaired");
        (n >= 2).then_some(n)
    })
    .await;
    assert_eq!(
        repaired, 2,
        "one for the first convergence, one for the repair"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_gets_invalid_spec_with_field_paths_and_no_azure_writes() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    // Today's CRD refuses this spec (its CEL rules); a cluster still holds it when it was
    // written under an older, looser CRD, and the controller must say what is wrong.
    kube.store_unchecked(&policy(
        "bad",
        json!({"kms": {"additionalAddresses": ["10.1.2.3"]}, "resyncInterval": "10s"}),
    ));
    let obj = wait_for("InvalidSpec", Duration::from_secs(20), || {
        kube.policy("bad")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "InvalidSpec"))
    })
    .await;
    let (status, _, message) = condition(&obj, "Ready").unwrap();
    assert_eq!(status, "False");
    assert!(
        message.contains("spec.kms.additionalAddresses[0]")
            && message.contains("spec.resyncInterval"),
        "{message}"
    );
    // The Event is recorded after the status write: wait for it rather than race it.
    let event = wait_for("the InvalidSpec event", Duration::from_secs(20), || {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "InvalidSpec")
    })
    .await;
    // Where `kubectl describe krp bad` looks for a cluster-scoped object's Events.
    assert_eq!(event["metadata"]["namespace"], "default");
    assert_eq!(event["regarding"]["name"], "bad");
    assert_eq!(em.stats().writes, 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_degrades_and_is_not_fought_nor_repeated_in_events() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    let mut p = policy("legacy", json!({}));
    p.spec.selector.as_mut().unwrap().subscriptions =
        vec!["22222222-2222-2222-2222-222222222222".into()];
    p.spec.selector.as_mut().unwrap().subnet_names = vec!["legacy".into()];
    create(&kube, &p).await;
    let obj = wait_for("Degraded=Conflict", Duration::from_secs(20), || {
        kube.policy("legacy")
            .filter(|o| condition(o, "Degraded").is_some_and(|c| c.1 == "Conflict"))
    })
    .await;
    assert_eq!(condition(&obj, "Degraded").unwrap().0, "True");
    let reconciles = c.metrics.reconciles("success");
    wait_for("three more resyncs", Duration::from_secs(15), || {
        (c.metrics.reconciles("success") >= reconciles + 3).then_some(())
    })
    .await;
    assert!(table_routes(&em, "rt-spoke2-legacy").contains(&"legacy-kms".to_string()));
    let dump = em.dump();
    let legacy = dump
        .resources
        .iter()
        .find(|r| r["name"] == "rt-spoke2-legacy")
        .unwrap();
    let route = legacy["properties"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "legacy-kms")
        .unwrap();
    assert_eq!(
        route["properties"]["nextHopType"], "VirtualAppliance",
        "the foreign route is not fought"
    );
    assert_eq!(
        occurrences(&kube, "Conflict"),
        1,
        "a steady conflict does not spam"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_delete_policy_cleans_azure_and_an_orphan_policy_leaves_it() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    let api = Api::<KmsRoutePolicy>::all(kube.client());
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    assert!(table_routes(&em, "vnet-spoke1-app-kms").len() == 3);
    api.delete("spokes", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the policy to go", Duration::from_secs(20), || {
        kube.policy("spokes").is_none().then_some(())
    })
    .await;
    assert!(
        em.dump()
            .resources
            .iter()
            .all(|r| r["name"] != "vnet-spoke1-app-kms"),
        "the created table is deleted"
    );
    assert_eq!(
        table_routes(&em, "rt-spoke1-shared"),
        ["onprem", "to-nva-default"],
        "owned routes removed, foreign kept"
    );

    create(&kube, &policy("keep", json!({"deletionPolicy": "Orphan"}))).await;
    wait_ready(&kube, "keep").await;
    em.reset_stats();
    api.delete("keep", &DeleteParams::default()).await.unwrap();
    wait_for("the orphan policy to go", Duration::from_secs(20), || {
        kube.policy("keep").is_none().then_some(())
    })
    .await;
    assert_eq!(em.stats().writes, 0, "Orphan changes nothing in Azure");
    assert_eq!(table_routes(&em, "rt-spoke1-shared").len(), 5);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_and_a_restarted_controller_make_no_duplicate_writes() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    em.reset_stats();
    kube.drop_watches();
    let before = c.metrics.reconciles("success");
    wait_for("reconciles after the drop", Duration::from_secs(10), || {
        (c.metrics.reconciles("success") >= before + 2).then_some(())
    })
    .await;
    c.shutdown().await;
    let c2 = start_controller(&kube, &em, "b");
    wait_for(
        "the new controller to reconcile",
        Duration::from_secs(15),
        || (c2.metrics.reconciles("success") >= 2).then_some(()),
    )
    .await;
    assert_eq!(em.stats().writes, 0, "{:?}", em.stats().by_operation);
    c2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_killed_leader_hands_over() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let a = start_controller(&kube, &em, "a");
    wait_for("a to lead", Duration::from_secs(10), || {
        (kube.lease_holder(NS, "kmsroute-leader").as_deref() == Some("a")).then_some(())
    })
    .await;
    let b = start_controller(&kube, &em, "b");
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    assert!(a.metrics.is_leader() && !b.metrics.is_leader());
    assert_eq!(
        b.arm.metrics.count_status("201") + b.arm.metrics.count_status("200"),
        0,
        "the standby made no ARM calls"
    );
    // Kill the leader without a clean release: the standby takes over once the lease expires.
    a.task.abort();
    wait_for("b to lead", Duration::from_secs(15), || {
        (kube.lease_holder(NS, "kmsroute-leader").as_deref() == Some("b")).then_some(())
    })
    .await;
    let shared = spoke1_table();
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: shared,
        route: "kms-40-83-235-53".into(),
    })
    .unwrap();
    wait_for("b to repair", Duration::from_secs(15), || {
        table_routes(&em, "rt-spoke1-shared")
            .contains(&"kms-40-83-235-53".to_string())
            .then_some(())
    })
    .await;
    assert!(b.metrics.is_leader());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_auth_failures_show_as_conditions_and_metrics() {
    let kube = FakeKube::start().await;
    let seed: Seed =
        serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap();
    let em = emulator::start(
        Config {
            token: Some("only-this".into()),
            ..Config::default()
        },
        seed,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let c = start_controller_with_token(&kube, &em, "a", "wrong");
    create(&kube, &policy("spokes", json!({}))).await;
    let obj = wait_for("AzureAuthFailed", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "AzureAuthFailed"))
    })
    .await;
    assert_eq!(condition(&obj, "Degraded").unwrap().1, "AzureAuthFailed");
    // The status is written before the pass returns its error to the backoff (and metrics).
    wait_for(
        "the error counted by class",
        Duration::from_secs(10),
        || (c.metrics.errors("needs_user_action") >= 1).then_some(()),
    )
    .await;
    assert!(c.arm.metrics.count_status("401") >= 1);
    wait_for("the AzureAuthFailed event", Duration::from_secs(10), || {
        kube.events()
            .iter()
            .any(|e| e["reason"] == "AzureAuthFailed")
            .then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_throttling_shows_as_a_condition_and_in_metrics_and_a_clean_stop_releases_the_lease() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    em.add_fault(kmsroute::emulator::FaultRule {
        method: Some("GET".into()),
        status: Some(429),
        code: Some("SubscriptionRequestsThrottled".into()),
        retry_after: Some(0),
        ..Default::default()
    });
    let c = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    let obj = wait_for("Throttled", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "Throttled"))
    })
    .await;
    assert_eq!(condition(&obj, "Degraded").unwrap().1, "Throttled");
    // The status is written before the pass returns its error to the backoff (and metrics).
    wait_for(
        "the throttled error counted",
        Duration::from_secs(10),
        || (c.metrics.errors("throttled") >= 1).then_some(()),
    )
    .await;
    assert!(
        c.arm.metrics.count_status("429") >= 3,
        "the client retried before giving up"
    );
    // Throttling ends: the next backoff retry converges.
    em.clear_faults();
    wait_ready(&kube, "spokes").await;
    assert_eq!(
        kube.lease_holder(NS, "kmsroute-leader").as_deref(),
        Some("a")
    );
    c.shutdown().await;
    assert_eq!(
        kube.lease_holder(NS, "kmsroute-leader"),
        None,
        "a clean stop releases the lease"
    );
}

/// A `kmsroute run` process against the fake API server and an emulator, killed on drop.
struct RunProc {
    child: Option<std::process::Child>,
    base: String,
    log: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Drop for RunProc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `kmsroute run` with these extra environment variables and waits for /readyz.
async fn spawn_run(kube: &FakeKube, arm_url: &str, name: &str, env: &[(&str, &str)]) -> RunProc {
    let dir = std::env::temp_dir().join(format!("kmsroute-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = kube.write_kubeconfig(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.join("run.log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kmsroute"));
    cmd.args([
        "run",
        "--arm-endpoint",
        arm_url,
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--leader-election-namespace",
        NS,
        "--identity",
        "proc",
        "--max-resync",
        "1s",
    ])
    .env("KUBECONFIG", &kubeconfig)
    .env("RUST_LOG", "info")
    .stdout(std::fs::File::create(dir.join("run.out")).unwrap())
    .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = RunProc {
        child: Some(cmd.spawn().unwrap()),
        base: format!("http://127.0.0.1:{port}"),
        log,
        dir,
    };
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{}/readyz", run.base)).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ready,
        "/readyz never became ready; the process said:\n{}",
        std::fs::read_to_string(&run.log).unwrap_or_default()
    );
    run
}

/// `kmsroute run` as a process: kubeconfig, health endpoints, a reconcile, SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_command_serves_health_reconciles_and_stops_on_sigterm() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let mut run = spawn_run(&kube, &em.url(), "run", &[]).await;
    let pid = run.child.as_ref().unwrap().id();
    let http = reqwest::Client::new();
    let base = run.base.clone();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "kmsroute_reconciles_total{result=\"success\"}",
        "kmsroute_leader 1",
        "kmsroute_arm_requests_total{operation=\"PUT routes\",status=\"201\"}",
        "kmsroute_drift_repairs_total 7",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut proc = run.child.take().unwrap();
    let status = tokio::task::spawn_blocking(move || proc.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        kube.lease_holder(NS, "kmsroute-leader"),
        None,
        "SIGTERM releases the lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_and_egress_show_as_conditions() {
    let kube = FakeKube::start().await;
    // The demo estate carries VM NICs in vnet-spoke1/app and vnet-spoke2/private; one of the
    // two private-subnet NICs has a public IP, the other no way out.
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    let mut p = policy(
        "verified",
        json!({"verification": {"effectiveRoutes": true}}),
    );
    p.spec.selector.as_mut().unwrap().subscriptions =
        vec![S1.into(), "22222222-2222-2222-2222-222222222222".into()];
    create(&kube, &p).await;
    let obj = wait_for("Verified condition", Duration::from_secs(20), || {
        kube.policy("verified")
            .filter(|o| condition(o, "Verified").is_some())
    })
    .await;
    let verified = condition(&obj, "Verified").unwrap();
    assert_eq!(
        (verified.0.as_str(), verified.1.as_str()),
        ("True", "EffectiveRoutesVerified"),
        "{verified:?}"
    );
    assert_eq!(
        obj["status"]["summary"]["verified"], 2,
        "two tables have a running NIC"
    );
    let problem = obj["status"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["reason"] == "NoInternetEgress")
        .cloned()
        .unwrap();
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .starts_with("1 of 2 running NIC(s)"),
        "{problem}"
    );
    let egress = condition(&obj, "EgressReady").unwrap();
    assert_eq!(
        (egress.0.as_str(), egress.1.as_str()),
        ("False", "NoInternetEgress")
    );
    assert!(egress.2.contains("1 private subnet(s)"), "{egress:?}");
    // The read is counted on the metrics endpoint's counters.
    assert!(c.arm.metrics.verification_count("ok") >= 1);
    c.shutdown().await;
}

/// The writes a fresh pass of `policy("spokes")` plans on the demo estate.
const SPOKES_WRITES: u64 = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_conflicts_are_retried_without_repeating_azure_writes() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    kube.fail_status_writes_with_conflict(3);
    let c = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    let obj = wait_ready(&kube, "spokes").await;
    assert_eq!(obj["status"]["summary"]["inSync"], 4);
    assert_eq!(
        em.stats().mutations,
        SPOKES_WRITES,
        "a 409 on status costs a retry of the status write, not of the Azure writes"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_api_server_stalls_status_not_the_controller() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    let first = wait_ready(&kube, "spokes").await;
    let synced = first["status"]["lastSyncTime"].clone();
    kube.set_unavailable(true);
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: format!("/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/routeTables/rt-spoke1-shared"),
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    // The API server is down: reconciles fail on Kubernetes (status, lease), and no
    // replica may act as leader once its lease cannot be renewed.
    wait_for(
        "kube errors while the API server is down",
        Duration::from_secs(15),
        || (!c.metrics.is_leader() || c.metrics.errors("kube") > 0).then_some(()),
    )
    .await;
    kube.set_unavailable(false);
    wait_route_back(&em, "rt-spoke1-shared", Duration::from_secs(20)).await;
    wait_for("a fresh status", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| o["status"]["lastSyncTime"] != synced)
    })
    .await;
    assert!(!c.task.is_finished(), "the controller kept running");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_mid_reconcile_stops_the_writes() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    // Slow writes, so the lease is lost while a pass is still writing.
    em.add_fault(emulator::FaultRule {
        method: Some("PUT".into()),
        latency_ms: Some(400),
        ..emulator::FaultRule::default()
    });
    let c = start_controller(&kube, &em, "a");
    wait_for("a to lead", Duration::from_secs(10), || {
        c.metrics.is_leader().then_some(())
    })
    .await;
    create(&kube, &policy("spokes", json!({}))).await;
    wait_for("the first write", Duration::from_secs(10), || {
        (em.stats().writes >= 1).then_some(())
    })
    .await;
    assert!(c.probes.watch_synced.load(Ordering::SeqCst));
    kube.steal_lease(NS, "kmsroute-leader", "thief", 3);
    wait_for("a to lose the lease", Duration::from_secs(10), || {
        (!c.metrics.is_leader()).then_some(())
    })
    .await;
    // The cache belonged to the lost term; a standby that can reach the API server is ready.
    assert!(!c.probes.watch_synced.load(Ordering::SeqCst));
    assert!(c.probes.ready());
    let at_loss = em.stats().writes;
    assert!(
        at_loss < SPOKES_WRITES,
        "the pass was still writing: {at_loss}"
    );
    wait_for(
        "a to lead again once the thief's lease expires",
        Duration::from_secs(15),
        || c.metrics.is_leader().then_some(()),
    )
    .await;
    let while_lost = em.stats().writes - at_loss;
    // Requests already on the wire may land; nothing new starts without the lease. Each
    // write takes 400 ms here, so a write started after the regain cannot have landed yet.
    assert!(
        while_lost <= 8,
        "{while_lost} writes landed while another replica held the lease"
    );
    wait_ready(&kube, "spokes").await;
    assert_eq!(
        em.stats().mutations,
        SPOKES_WRITES,
        "the aborted pass and the next one add up to the plan: no duplicates"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_events_or_status() {
    const STATIC: &str = "s3cret-static-token-7f3a";
    const CLIENT_SECRET: &str = "s3cret-client-secret-91c2";
    const FEDERATED: &str = "eyJhbGciOi.s3cret-federated-5d8e";
    let kube = FakeKube::start().await;
    // The emulator accepts only the static token, so every ARM call carries it.
    let seed: Seed =
        serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap();
    let em = emulator::start(
        Config {
            token: Some(STATIC.into()),
            ..Config::default()
        },
        seed,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    // Rejected tokens too: ARM calls answer 401, so errors, Events and status conditions
    // are written about authentication.
    em.add_fault(emulator::FaultRule {
        status: Some(401),
        code: Some("InvalidAuthenticationToken".into()),
        ..emulator::FaultRule::default()
    });
    let dir = std::env::temp_dir().join(format!("kmsroute-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("federated-token");
    std::fs::write(&token_file, FEDERATED).unwrap();
    let run = spawn_run(
        &kube,
        &em.url(),
        "secrets",
        &[
            ("RUST_LOG", "trace,azure_core::policies::transport=trace,azure_identity=trace,[reconciling object]=trace"),
            ("KMSROUTE_AUTH", "static-token"),
            ("KMSROUTE_STATIC_TOKEN", STATIC),
            ("AZURE_CLIENT_SECRET", CLIENT_SECRET),
            ("AZURE_CLIENT_ID", "00000000-0000-0000-0000-0000000000c1"),
            ("AZURE_TENANT_ID", "00000000-0000-0000-0000-0000000000e1"),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
    )
    .await;
    create(&kube, &policy("spokes", json!({}))).await;
    wait_for("an AzureAuthFailed event", Duration::from_secs(20), || {
        kube.events()
            .iter()
            .any(|e| e["reason"] == "AzureAuthFailed")
            .then_some(())
    })
    .await;
    let obj = wait_for("status AzureAuthFailed", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "AzureAuthFailed"))
    })
    .await;
    let mut haystack = std::fs::read_to_string(&run.log).unwrap();
    haystack.push_str(&std::fs::read_to_string(run.dir.join("run.out")).unwrap_or_default());
    let log_lines = haystack.lines().count();
    for e in kube.events() {
        haystack.push_str(&e.to_string());
    }
    haystack.push_str(&obj.to_string());
    assert!(
        log_lines > 100,
        "trace logging was on: {log_lines} lines is too few to prove anything"
    );
    for secret in [STATIC, CLIENT_SECRET, FEDERATED] {
        let lines: Vec<&str> = haystack.lines().collect();
        let leak: Vec<String> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(secret))
            .take(1)
            .map(|(i, _)| lines[i.saturating_sub(12)..=i].join("\n"))
            .collect();
        assert!(
            leak.is_empty(),
            "{secret} leaked into logs, Events or status: {leak:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Workload identity on the emulator's Entra ID with trace logging everywhere: neither the
/// projected service-account token (the client assertion) nor any access token reaches the
/// logs, Events or status. Every JWT here starts with the same header, so that prefix is what
/// is searched for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_of_workload_identity_reaches_logs_events_or_status() {
    let kube = FakeKube::start().await;
    let em = support::arm::emulator(
        Config {
            entra: Some(support::arm::workload_entra(3)),
            ..Config::default()
        },
        support::arm::demo_estate(),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("kmsroute-wi-secrets-{}", std::process::id()));
    let (assertion, token_file) = support::arm::projected_token(&dir);
    let authority = em.url();
    let run = spawn_run(
        &kube,
        &em.url(),
        "wi-secrets",
        &[
            ("RUST_LOG", "trace"),
            ("KMSROUTE_AUTH", "workload-identity"),
            ("AZURE_AUTHORITY_HOST", authority.as_str()),
            ("AZURE_CLIENT_ID", support::arm::WI_CLIENT),
            ("AZURE_TENANT_ID", support::arm::WI_TENANT),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.as_str()),
        ],
    )
    .await;
    create(&kube, &policy("spokes", json!({}))).await;
    let obj = wait_ready(&kube, "spokes").await;
    // A refresh while tracing: the next inventory refresh (15 s) needs a new 3-s token.
    wait_for("a second access token", Duration::from_secs(40), || {
        (em.entra_stats().tokens_issued >= 2).then_some(())
    })
    .await;
    let mut haystack = std::fs::read_to_string(&run.log).unwrap();
    haystack.push_str(&std::fs::read_to_string(run.dir.join("run.out")).unwrap_or_default());
    assert!(haystack.lines().count() > 100, "trace logging was on");
    for e in kube.events() {
        haystack.push_str(&e.to_string());
    }
    haystack.push_str(&obj.to_string());
    let jwt_header = assertion.split('.').next().unwrap().to_string();
    for secret in [assertion.as_str(), jwt_header.as_str()] {
        let leak = haystack.lines().find(|l| l.contains(secret));
        assert!(leak.is_none(), "a token leaked: {leak:?}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

const S2: &str = "22222222-2222-2222-2222-222222222222";

fn spoke1_table() -> String {
    format!(
        "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/routeTables/rt-spoke1-shared"
    )
}

/// No resync can elapse in these tests: every repair comes from the shared inventory.
fn no_resync(s: &mut Settings) {
    s.resync_cap = None;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_deletion_is_repaired_from_the_inventory_without_any_resync() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller_with(&kube, &em, "a", "t", no_resync);
    // resyncInterval 1h: only the inventory's change detection can bring the route back.
    create(&kube, &policy("spokes", json!({"resyncInterval": "1h"}))).await;
    wait_ready(&kube, "spokes").await;
    let writes = em.stats().mutations;
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: spoke1_table(),
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    wait_route_back(&em, "rt-spoke1-shared", Duration::from_secs(15)).await;
    wait_for("the repair to be timed", Duration::from_secs(5), || {
        (c.metrics.drift_repairs_timed() == 1).then_some(())
    })
    .await;
    // Exactly one write put it back, and nothing else was written.
    assert_eq!(em.stats().mutations, writes + 1);
    assert!(c.metrics.triggered_passes(Some("spokes")) >= 1);
    let text = c.metrics.render();
    assert!(
        text.contains("kmsroute_drift_repair_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("kmsroute_inventory_subscriptions 1"),
        "{text}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_estate_costs_no_pass_and_only_paced_listings() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller_with(&kube, &em, "a", "t", no_resync);
    create(&kube, &policy("spokes", json!({"resyncInterval": "1h"}))).await;
    wait_ready(&kube, "spokes").await;
    // The controller's own status writes come back as watch events and may run a pass or two
    // after Ready shows (seen on a loaded machine): settle until two refreshes go by without
    // one, then measure.
    let mut passes = c.metrics.reconciles("success");
    loop {
        let seen = c.metrics.refreshes("unchanged");
        wait_for("two more refreshes", Duration::from_secs(15), || {
            (c.metrics.refreshes("unchanged") >= seen + 2).then_some(())
        })
        .await;
        let now = c.metrics.reconciles("success");
        if now == passes {
            break;
        }
        passes = now;
    }
    em.reset_stats();
    let triggered = c.metrics.triggered_passes(None);
    // Several refresh periods (300 ms each) with nothing changing.
    let seen = c.metrics.refreshes("unchanged");
    wait_for("a few unchanged refreshes", Duration::from_secs(15), || {
        (c.metrics.refreshes("unchanged") >= seen + 4).then_some(())
    })
    .await;
    let stats = em.stats();
    assert_eq!(stats.writes, 0);
    // Every read was a listing page (2 per refresh here), none an extra GET.
    let lists: u64 = stats
        .by_operation
        .iter()
        .filter(|(op, _)| op.contains("ListAll"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(stats.reads, lists, "{stats:?}");
    assert_eq!(c.metrics.triggered_passes(None), triggered);
    assert_eq!(c.metrics.reconciles("success"), passes, "no pass ran");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_queue_only_the_policies_that_select_them() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller_with(&kube, &em, "a", "t", no_resync);
    let quiet = json!({"resyncInterval": "1h"});
    // Disjoint: app+data in S1; the whole of S2. Overlapping: web, api (S1) and private (S2).
    let mut s1 = policy("s1-app-data", quiet.clone());
    s1.spec.selector.as_mut().unwrap().subnet_names = vec!["app".into(), "data".into()];
    let mut s2 = policy("s2-all", quiet.clone());
    s2.spec.selector.as_mut().unwrap().subscriptions = vec![S2.into()];
    s2.spec.selector.as_mut().unwrap().subnet_names = vec!["private".into()];
    let mut both = policy("both", quiet);
    both.spec.selector.as_mut().unwrap().subscriptions = vec![S1.into(), S2.into()];
    both.spec.selector.as_mut().unwrap().subnet_names =
        vec!["web".into(), "api".into(), "private".into()];
    for p in [&s2, &s1, &both] {
        create(&kube, p).await;
    }
    for name in ["s1-app-data", "s2-all", "both"] {
        wait_for(
            &format!("{name} to finish a pass"),
            Duration::from_secs(20),
            || {
                kube.policy(name)
                    .filter(|o| o["status"]["summary"].is_object())
            },
        )
        .await;
    }
    wait_for("both subscriptions watched", Duration::from_secs(5), || {
        c.metrics
            .render()
            .contains("kmsroute_inventory_subscriptions 2")
            .then_some(())
    })
    .await;
    // Let the convergence settle: passes re-reading what they wrote may queue each other once
    // (a real change of their subnets); then both subscriptions refresh with nothing new.
    let quiet = c.metrics.refreshes("unchanged");
    wait_for("two unchanged refreshes", Duration::from_secs(10), || {
        (c.metrics.refreshes("unchanged") >= quiet + 2).then_some(())
    })
    .await;
    let before = |p: &str| c.metrics.triggered_passes(Some(p));
    let (s1_before, s2_before) = (before("s1-app-data"), before("s2-all"));
    // A table only `both` uses (web, api) loses a route.
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: spoke1_table(),
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    wait_route_back(&em, "rt-spoke1-shared", Duration::from_secs(15)).await;
    assert!(c.metrics.triggered_passes(Some("both")) >= 1);
    // The private subnet's created table (S2) loses a route: s2-all owns that subnet (older).
    let private_table = format!(
        "/subscriptions/{S2}/resourceGroups/rg-spoke2/providers/Microsoft.Network/routeTables/vnet-spoke2-private-kms"
    );
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: private_table,
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    wait_route_back(&em, "vnet-spoke2-private-kms", Duration::from_secs(15)).await;
    assert!(c.metrics.triggered_passes(Some("s2-all")) > s2_before);
    // Neither change touched app or data: that policy was never queued.
    assert_eq!(c.metrics.triggered_passes(Some("s1-app-data")), s1_before);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_for_one_policy_reads_none_of_another_policys_subscriptions() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    // Refreshes an hour apart (the first one at least half an hour out): every read in the
    // window below is a pass's own.
    let c = start_controller_with(&kube, &em, "a", "t", |s| {
        no_resync(s);
        s.inventory.refresh_every = Duration::from_secs(3600);
    });
    let mut s1 = policy("s1", json!({"resyncInterval": "1h"}));
    s1.spec.selector.as_mut().unwrap().subnet_names = vec!["app".into()];
    let mut s2 = policy("s2", json!({"resyncInterval": "1h"}));
    s2.spec.selector.as_mut().unwrap().subscriptions = vec![S2.into()];
    create(&kube, &s1).await;
    create(&kube, &s2).await;
    wait_ready(&kube, "s1").await;
    wait_for("s2 to finish a pass", Duration::from_secs(20), || {
        kube.policy("s2")
            .filter(|o| o["status"]["summary"].is_object())
    })
    .await;
    em.reset_stats();
    // s1's spec changes (a new generation, so a pass), and the pass must write: data joins.
    let api = Api::<KmsRoutePolicy>::all(kube.client());
    api.patch(
        "s1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"selector": {"subnetNames": ["app", "data"]}}})),
    )
    .await
    .unwrap();
    wait_for(
        "s1's new generation to be reconciled",
        Duration::from_secs(20),
        || {
            kube.policy("s1").filter(|o| {
                o["status"]["observedGeneration"] == o["metadata"]["generation"]
                    && o["status"]["summary"]["subnetsMatched"] == 2
                    && condition(o, "Ready").is_some_and(|c| c.0 == "True")
            })
        },
    )
    .await;
    let stats = em.stats();
    assert!(stats.mutations > 0, "the pass wrote: {stats:?}");
    let s1_reads = stats.reads_by_subscription.get(S1).copied().unwrap_or(0);
    assert!(s1_reads > 0, "the pass re-read what it wrote: {stats:?}");
    assert_eq!(
        stats.reads_by_subscription.get(S2).copied().unwrap_or(0),
        0,
        "no read of s2's subscription: {stats:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_subscription_degrades_the_policy_by_name_while_the_rest_converges() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    const TYPO: &str = "33333333-3333-3333-3333-333333333333";
    let mut p = policy("typo", json!({}));
    p.spec.selector.as_mut().unwrap().subscriptions = vec![S1.into(), TYPO.into()];
    create(&kube, &p).await;
    let obj = wait_for(
        "Degraded=SubscriptionUnreadable",
        Duration::from_secs(20),
        || {
            kube.policy("typo").filter(|o| {
                condition(o, "Degraded").is_some_and(|c| c.1 == "SubscriptionUnreadable")
            })
        },
    )
    .await;
    let (status, _, message) = condition(&obj, "Degraded").unwrap();
    assert_eq!(status, "True");
    assert!(message.contains(TYPO), "{message}");
    assert_eq!(condition(&obj, "Ready").unwrap().0, "False");
    // S1's subnets converged all the same.
    assert_eq!(obj["status"]["summary"]["inSync"], 4, "{}", obj["status"]);
    let problem = obj["status"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["reason"] == "SubscriptionUnreadable")
        .cloned()
        .unwrap();
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("SubscriptionNotFound")
    );
    wait_for(
        "a SubscriptionUnreadable Event",
        Duration::from_secs(10),
        || (occurrences(&kube, "SubscriptionUnreadable") >= 1).then_some(()),
    )
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_selecting_nothing_is_not_silently_ready() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    let mut p = policy("empty", json!({}));
    p.spec.selector.as_mut().unwrap().subnet_names = vec!["no-such-subnet".into()];
    create(&kube, &p).await;
    let obj = wait_for("Ready=NothingSelected", Duration::from_secs(20), || {
        kube.policy("empty")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "NothingSelected"))
    })
    .await;
    assert_eq!(condition(&obj, "Ready").unwrap().0, "False");
    assert_eq!(condition(&obj, "Degraded").unwrap().0, "False");
    wait_for("a NothingSelected Event", Duration::from_secs(10), || {
        kube.events()
            .iter()
            .any(|e| e["reason"] == "NothingSelected" && e["type"] == "Warning")
            .then_some(())
    })
    .await;
    assert_eq!(em.stats().writes, 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_write_backs_off_on_the_user_action_timer_with_its_class() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    // Associating a table needs routeTables/join/action: without it every subnet PUT is 403.
    em.add_fault(kmsroute::emulator::FaultRule {
        method: Some("PUT".into()),
        path_contains: Some("/subnets/".into()),
        status: Some(403),
        code: Some("LinkedAuthorizationFailed".into()),
        ..Default::default()
    });
    let c = start_controller_with(&kube, &em, "a", "t", |s| {
        // A slow timer the test can tell from the fast backoff (200 ms doubling).
        s.slow_retry = Duration::from_secs(30);
        s.resync_cap = None;
    });
    create(&kube, &policy("spokes", json!({"resyncInterval": "1h"}))).await;
    wait_for("a failed pass", Duration::from_secs(20), || {
        (c.metrics.errors("needs_user_action") >= 1).then_some(())
    })
    .await;
    let obj = wait_for("PartiallyFailed", Duration::from_secs(10), || {
        kube.policy("spokes")
            .filter(|o| condition(o, "Degraded").is_some_and(|c| c.1 == "PartiallyFailed"))
    })
    .await;
    assert!(
        obj["status"]["problems"]
            .to_string()
            .contains("LinkedAuthorizationFailed")
    );
    let passes = c.metrics.reconciles("error");
    // The fast backoff (200 ms doubling) would retry several times while the inventory refreshes
    // ten times (300 ms each); on the 30 s user-action timer there is no retry at all.
    let refreshes = c.metrics.refreshes("unchanged") + c.metrics.refreshes("changed");
    wait_for("ten more refreshes", Duration::from_secs(20), || {
        (c.metrics.refreshes("unchanged") + c.metrics.refreshes("changed") >= refreshes + 10)
            .then_some(())
    })
    .await;
    assert_eq!(c.metrics.reconciles("error"), passes, "no tight retry loop");
    assert_eq!(c.metrics.errors("cleanup"), 0);
    assert!(c.metrics.render().contains("class=\"needs_user_action\""));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_lease_namespace_keeps_the_replica_unready_and_never_leading() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    kube.remove_namespace(NS);
    let c = start_controller(&kube, &em, "a");
    wait_for("a failed lease attempt", Duration::from_secs(10), || {
        c.probes.lease_loop.age().map(|_| ())
    })
    .await;
    // Several attempts, none of which may make it ready or leading.
    for _ in 0..3 {
        let since = Instant::now();
        wait_for("another lease attempt", Duration::from_secs(10), || {
            c.probes
                .lease_loop
                .age()
                .filter(|a| *a < since.elapsed())
                .map(|_| ())
        })
        .await;
        assert!(!c.probes.lease_ok.load(Ordering::SeqCst));
        assert!(!c.probes.ready());
        assert!(!c.metrics.is_leader());
    }
    assert!(
        c.probes.alive(Duration::from_secs(30)),
        "its lease loop still turns"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_with_the_leaders_identity_refuses_to_run() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let first = start_controller(&kube, &em, "same");
    wait_for("the first to lead", Duration::from_secs(10), || {
        first.metrics.is_leader().then_some(())
    })
    .await;
    let second = start_controller(&kube, &em, "same");
    let outcome = tokio::time::timeout(Duration::from_secs(10), second.task)
        .await
        .expect("the second replica stops by itself")
        .unwrap();
    let error = outcome.unwrap_err();
    assert!(
        matches!(
            error,
            kmsroute::controller::RunError::Lease(
                kmsroute::controller::leader::LeaseError::IdentityInUse(..)
            )
        ),
        "{error}"
    );
    assert!(error.to_string().contains("identity"), "{error}");
    assert!(!second.metrics.is_leader());
    assert!(first.metrics.is_leader(), "the first one keeps leading");
    assert_eq!(
        kube.lease_holder(NS, "kmsroute-leader").as_deref(),
        Some("same")
    );
    first.shutdown().await;
}

/// Every kms-* route and every table the policy created, across the estate.
fn owned_leftovers(em: &EmulatorHandle) -> Vec<String> {
    let mut out = Vec::new();
    for r in em.dump().resources {
        if r["type"] != "Microsoft.Network/routeTables" {
            continue;
        }
        let name = r["name"].as_str().unwrap_or_default().to_string();
        if r["tags"]["kmsroute.io-policy"].is_string() {
            out.push(format!("table {name}"));
        }
        for route in r["properties"]["routes"].as_array().into_iter().flatten() {
            let n = route["name"].as_str().unwrap_or_default();
            if n.starts_with("kms-") {
                out.push(format!("route {name}/{n}"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_releases_what_left_the_selection_widening_brings_it_back_and_deletion_leaves_nothing()
 {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    assert!(table_routes(&em, "vnet-spoke1-app-kms").len() == 3);
    let api = Api::<KmsRoutePolicy>::all(kube.client());
    let set_exclude = |names: Value| {
        let api = api.clone();
        async move {
            api.patch(
                "spokes",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(
                    json!({"spec": {"selector": {"excludeSubnetNames": names}}}),
                ),
            )
            .await
            .unwrap();
        }
    };
    // app (a created table) and web + api (the shared, foreign table) leave the selection.
    set_exclude(json!(["app", "web", "api"])).await;
    let obj = wait_for("3 subnets released", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| o["status"]["summary"]["released"] == 3)
    })
    .await;
    assert_eq!(
        obj["status"]["summary"]["subnetsMatched"], 2,
        "data and the GatewaySubnet"
    );
    assert!(
        table_routes(&em, "vnet-spoke1-app-kms").is_empty(),
        "the created table is gone"
    );
    assert_eq!(
        table_routes(&em, "rt-spoke1-shared"),
        vec!["onprem".to_string(), "to-nva-default".to_string()],
        "owned routes removed, foreign ones kept"
    );
    wait_for("a Released Event", Duration::from_secs(10), || {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "Released")
    })
    .await;
    // Widening back: the routes return and app gets its table again.
    set_exclude(json!([])).await;
    wait_for("the routes back", Duration::from_secs(20), || {
        (table_routes(&em, "vnet-spoke1-app-kms").len() == 3
            && table_routes(&em, "rt-spoke1-shared").len() == 5)
            .then_some(())
    })
    .await;
    wait_ready(&kube, "spokes").await;
    // Narrow again, then delete: nothing the policy owned is left anywhere.
    set_exclude(json!(["web", "api"])).await;
    wait_for("web and api released", Duration::from_secs(20), || {
        (table_routes(&em, "rt-spoke1-shared").len() == 2).then_some(())
    })
    .await;
    api.delete("spokes", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the policy to be gone", Duration::from_secs(20), || {
        kube.policy("spokes").is_none().then_some(())
    })
    .await;
    assert_eq!(owned_leftovers(&em), Vec::<String>::new());
    let cleaned = wait_for("the CleanedUp event", Duration::from_secs(20), || {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "CleanedUp")
    })
    .await;
    let note = cleaned["note"].as_str().unwrap();
    assert!(note.contains("deleted 2 route table(s)"), "{note}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_denial_shows_as_policy_denied_with_the_assignment_and_waits_on_the_slow_timer() {
    let kube = FakeKube::start().await;
    let mut seed: Seed =
        serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap();
    seed.policy_assignments = vec![emulator::PolicyAssignment {
        name: "deny-udr-internet".into(),
        display_name: "Deny UDR with next hop Internet".into(),
        scope: format!("/subscriptions/{S1}/resourceGroups/rg-spoke1"),
        definition_name: "Deny-UDR-With-Specific-NextHop".into(),
        definition_display_name: "Deny UDRs with a specific next hop".into(),
        denied_next_hop_types: vec!["Internet".into()],
    }];
    let em = emulator::start(Config::default(), seed, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let c = start_controller_with(&kube, &em, "a", "t", |s| {
        s.slow_retry = Duration::from_secs(30);
        s.resync_cap = None;
    });
    create(&kube, &policy("spokes", json!({"resyncInterval": "1h"}))).await;
    let obj = wait_for("Degraded=PolicyDenied", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| condition(o, "Degraded").is_some_and(|c| c.1 == "PolicyDenied"))
    })
    .await;
    assert_eq!(condition(&obj, "Ready").unwrap().0, "False");
    let event = wait_for("a PolicyDenied Event", Duration::from_secs(10), || {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "PolicyDenied")
    })
    .await;
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("Deny UDR with next hop Internet"), "{note}");
    assert_eq!(event["type"], "Warning");
    wait_for(
        "the failure counted as needing a human",
        Duration::from_secs(10),
        || (c.metrics.errors("needs_user_action") >= 1).then_some(()),
    )
    .await;
    let attempts = em
        .stats()
        .by_operation
        .iter()
        .filter(|(k, _)| k.ends_with(" 403"))
        .map(|(_, n)| *n)
        .sum::<u64>();
    // Ten inventory refreshes later (300 ms each), no pass has tried again.
    let refreshes = c.metrics.refreshes("unchanged") + c.metrics.refreshes("changed");
    wait_for("ten more refreshes", Duration::from_secs(20), || {
        (c.metrics.refreshes("unchanged") + c.metrics.refreshes("changed") >= refreshes + 10)
            .then_some(())
    })
    .await;
    let later = em
        .stats()
        .by_operation
        .iter()
        .filter(|(k, _)| k.ends_with(" 403"))
        .map(|(_, n)| *n)
        .sum::<u64>();
    assert_eq!(later, attempts, "a denial is not retried in a loop");
    c.shutdown().await;
}

/// `alice@contoso.example` deletes one of our KMS routes from `table` (an ARM path), as the
/// portal would: through ARM, under her own name in the Activity Log.
async fn alice_deletes_a_kms_route(em: &EmulatorHandle, table: &str) {
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}{table}/routes/kms-20-118-99-224?api-version=2024-03-01",
            em.url()
        ))
        .bearer_auth("alice@contoso.example")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}

/// The demo estate with subscription S1 under the management group `corp`.
fn corp_estate() -> emulator::Seed {
    let mut seed = support::arm::demo_estate();
    seed.management_groups = vec![emulator::ManagementGroup {
        name: "corp".into(),
        parent: None,
        subscriptions: vec![S1.into()],
    }];
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_management_group_read_fails_the_pass_and_it_converges_once_arm_answers() {
    let kube = FakeKube::start().await;
    let em = support::arm::emulator(Config::default(), corp_estate()).await;
    // ARM failing (not refusing) the group's read: the pass cannot know what the policy
    // selects, so it fails as a failed listing does, rather than planning from nothing.
    em.add_fault(emulator::FaultRule {
        method: Some("GET".into()),
        path_contains: Some("/descendants".into()),
        status: Some(503),
        code: Some("ServiceUnavailable".into()),
        ..Default::default()
    });
    let c = start_controller(&kube, &em, "a");
    let group = json!({"selector": {"subscriptions": null, "managementGroups": ["corp"]}});
    create(&kube, &policy("corp", group)).await;
    let obj = wait_for(
        "Ready=False AzureUnavailable",
        Duration::from_secs(20),
        || {
            kube.policy("corp")
                .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "AzureUnavailable"))
        },
    )
    .await;
    let (status, reason, message) = condition(&obj, "Degraded").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "AzureUnavailable")
    );
    assert!(
        message.contains("ManagementGroups_GetDescendants"),
        "{message}"
    );
    assert_eq!(
        em.stats().writes,
        0,
        "nothing is written from a partial selection"
    );
    // ARM answers again: the backoff's next pass reads the group and converges.
    em.clear_faults();
    let obj = wait_ready(&kube, "corp").await;
    assert_eq!(
        obj["status"]["summary"]["subnetsMatched"], 5,
        "{}",
        obj["status"]
    );
    assert!(em.stats().writes > 0);
    c.shutdown().await;
}

/// A pipeline PUTs a selected table whole (a template declaring its routes) every few moments,
/// then a colleague deletes a route: every revert is repaired at the planner's minimum, the
/// third makes the table contested, and the user is told once, with who did it and how.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_someone_keeps_rewriting_is_reported_as_contested_with_who_did_it() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_contested(&kube, &em, "a", contest(3));
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    let shared = spoke1_table();
    let url = format!("{}{shared}?api-version=2024-03-01", em.url());
    let http = reqwest::Client::new();
    for round in 0..3 {
        // The pipeline's template: the table as it declares it, without the KMS routes.
        let mut table = em
            .dump()
            .resources
            .into_iter()
            .find(|r| r["name"] == "rt-spoke1-shared")
            .unwrap();
        let routes: Vec<Value> = table["properties"]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["name"].as_str().unwrap().starts_with("kms-"))
            .cloned()
            .collect();
        table["properties"] = json!({"routes": routes});
        let writes_before = em.stats().writes;
        let resp = http
            .put(&url)
            .bearer_auth("pipeline-sp@contoso.example")
            .header("x-ms-correlation-request-id", format!("deploy-{round}"))
            .json(&table)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
        wait_route_back(&em, "rt-spoke1-shared", Duration::from_secs(15)).await;
        // Repaired at the planner's minimum: one PUT per removed KMS route, no more.
        wait_for("the repair's writes", Duration::from_secs(10), || {
            (em.stats().writes >= writes_before + 1 + 3).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(em.stats().writes, writes_before + 1 + 3, "round {round}");
    }
    let event = wait_for("the Contested event", Duration::from_secs(20), || {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "Contested")
    })
    .await;
    let note = event["note"].as_str().unwrap_or_default().to_string();
    for part in [
        "route table rt-spoke1-shared",
        "3 times since",
        "pipeline-sp@contoso.example rewriting the whole table (Microsoft.Network/routeTables/write",
        "deploy-2",
        "add the KMS routes to that definition",
    ] {
        assert!(note.contains(part), "{part:?} not in {note}");
    }
    assert_eq!(event["type"], "Warning");
    // A colleague deletes a route: repaired, counted, and no second Event within the window.
    alice_deletes_a_kms_route(&em, &shared).await;
    wait_route_back(&em, "rt-spoke1-shared", Duration::from_secs(15)).await;
    let obj = wait_for("4 reverts counted", Duration::from_secs(15), || {
        (c.metrics.reverts_of("spokes") >= 4)
            .then(|| kube.policy("spokes"))
            .flatten()
            .filter(|o| {
                o.pointer("/status/problems")
                    .and_then(Value::as_array)
                    .is_some_and(|ps| {
                        ps.iter().any(|p| {
                            p["reason"] == "Contested"
                                && p["message"].as_str().is_some_and(|m| m.contains("4 times"))
                        })
                    })
            })
    })
    .await;
    let problems = obj["status"]["problems"].as_array().unwrap();
    let contested: Vec<&Value> = problems
        .iter()
        .filter(|p| p["reason"] == "Contested")
        .collect();
    // One per subnet of the table (two subnets share it in the demo estate).
    assert_eq!(contested.len(), 2, "{problems:?}");
    assert!(
        contested[0]["message"]
            .as_str()
            .unwrap()
            .contains("alice@contoso.example deleting a route"),
        "{contested:?}"
    );
    assert_eq!(c.metrics.contested_of("spokes"), 1);
    assert_eq!(
        occurrences(&kube, "Contested"),
        1,
        "once per table per window"
    );
    let metrics = c.metrics.render();
    assert!(
        metrics.contains("kmsroute_contested_tables{policy=\"spokes\"} 1"),
        "{metrics}"
    );
    c.shutdown().await;
}

/// Without `Microsoft.Insights/eventtypes/values/read`, a contested table is still reported
/// and repaired; the message says the log cannot be read and which action is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contested_table_is_reported_without_the_activity_log_too() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    em.add_fault(kmsroute::emulator::FaultRule {
        path_contains: Some("microsoft.insights".into()),
        status: Some(403),
        code: Some("AuthorizationFailed".into()),
        ..Default::default()
    });
    let c = start_contested(&kube, &em, "a", contest(1));
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    let shared = spoke1_table();
    alice_deletes_a_kms_route(&em, &shared).await;
    wait_route_back(&em, "rt-spoke1-shared", Duration::from_secs(15)).await;
    let obj = wait_for("the Contested problem", Duration::from_secs(15), || {
        kube.policy("spokes").filter(|o| {
            o.pointer("/status/problems")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["reason"] == "Contested"))
        })
    })
    .await;
    let message = obj["status"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["reason"] == "Contested")
        .and_then(|p| p["message"].as_str())
        .unwrap()
        .to_string();
    assert!(
        message.contains("cannot be read")
            && message.contains("Microsoft.Insights/eventtypes/values/read"),
        "{message}"
    );
    assert_eq!(
        condition(&obj, "Ready").unwrap().0,
        "True",
        "the rest works"
    );
    c.shutdown().await;
}

/// The Activity Log lags: the problem first says "not yet attributed", and a later pass fills
/// in who did it once the write appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_is_attributed_once_the_activity_log_catches_up() {
    let kube = FakeKube::start().await;
    let em = support::arm::emulator(
        Config {
            activity_log_delay: Duration::from_secs(2),
            ..Config::default()
        },
        support::arm::demo_estate(),
    )
    .await;
    let c = start_contested(
        &kube,
        &em,
        "a",
        ContestSettings {
            relook_secs: 1,
            ..contest(1)
        },
    );
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    let shared = spoke1_table();
    alice_deletes_a_kms_route(&em, &shared).await;
    let first = wait_for("not yet attributed", Duration::from_secs(15), || {
        kube.policy("spokes")
            .and_then(|o| contested_message(&o))
            .filter(|m| m.contains("not yet attributed"))
    })
    .await;
    assert!(!first.contains("alice"), "{first}");
    let later = wait_for("attributed", Duration::from_secs(20), || {
        kube.policy("spokes")
            .and_then(|o| contested_message(&o))
            .filter(|m| m.contains("alice@contoso.example deleting a route"))
    })
    .await;
    assert!(
        later.contains("Microsoft.Network/routeTables/routes/delete"),
        "{later}"
    );
    c.shutdown().await;
}

/// 80 subnets whose shared table sends the first KMS address to an NVA (80 conflicts), in a
/// VNet tagged for the example selector.
fn busy_estate() -> emulator::Seed {
    let mut seed = support::arm::demo_estate();
    let rg = format!("/subscriptions/{S1}/resourceGroups/rg-busy");
    let table = format!("{rg}/providers/Microsoft.Network/routeTables/rt-busy");
    let vnet = format!("{rg}/providers/Microsoft.Network/virtualNetworks/vnet-busy");
    let subnets: Vec<Value> = (0..80)
        .map(|i| {
            json!({"id": format!("{vnet}/subnets/s{i:02}"), "name": format!("s{i:02}"),
                   "properties": {"addressPrefix": format!("10.9.{i}.0/24"), "routeTable": {"id": table}}})
        })
        .collect();
    seed.resources.push(
        json!({"id": vnet, "location": "westeurope", "tags": {"kms": "enabled"},
        "properties": {"addressSpace": {"addressPrefixes": ["10.9.0.0/16"]}, "subnets": subnets}}),
    );
    seed.resources.push(json!({"id": table, "location": "westeurope", "tags": {"owner": "network-team"},
        "properties": {"disableBgpRoutePropagation": false, "routes": [{"name": "activation-via-nva",
            "properties": {"addressPrefix": "23.102.135.246/32", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.1.4"}}]}}));
    seed
}

/// Issue 27, defect 1: a management group that cannot be read and 80 conflicting subnets. The
/// group's problem used to be appended after the report was cut to 50, so the status write
/// broke the CRD's `maxItems` and the API server refused it: the policy showed no status at
/// all. Now the report is ranked and cut once, with the group's problem first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_management_group_beside_80_conflicts_still_gets_a_status_of_at_most_50_problems()
{
    let kube = FakeKube::start().await;
    let em = support::arm::emulator(Config::default(), busy_estate()).await;
    let c = start_controller(&kube, &em, "a");
    let spec = json!({"selector": {"managementGroups": ["mg-gone"]}});
    create(&kube, &policy("busy", spec)).await;
    let obj = wait_for("a status with conditions", Duration::from_secs(20), || {
        kube.policy("busy")
            .filter(|o| condition(o, "Ready").is_some())
    })
    .await;
    let problems = obj["status"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 50, "{}", obj["status"]);
    assert!(
        problems[0]["subnetId"]
            .as_str()
            .unwrap()
            .ends_with("/managementGroups/mg-gone"),
        "the unreadable group ranks first: {}",
        problems[0]
    );
    assert!(
        problems
            .iter()
            .filter(|p| p["reason"] == "Conflict")
            .count()
            >= 40,
        "{}",
        obj["status"]
    );
    let (ready, _, _) = condition(&obj, "Ready").unwrap();
    assert_eq!(ready, "False");
    assert!(
        obj["status"]["summary"]["conflicts"].as_i64().unwrap() >= 80,
        "{}",
        obj["status"]
    );
    c.shutdown().await;
}

/// Issue 27, defect 5: a pass reads each management group once. The controller used to
/// resolve its policy's groups itself on every reconcile (passes and the status-only ones
/// that run none), and the pass resolved the other policies' groups again, so with two
/// policies on one group the descendants reads outnumbered the reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_reads_each_management_group_once() {
    let kube = FakeKube::start().await;
    let em = support::arm::emulator(Config::default(), corp_estate()).await;
    let c = start_controller_with(&kube, &em, "a", "t", no_resync);
    // Two policies on one group: each pass also resolves the other policy's groups. The other
    // selects no subnet, so no change of corp's makes it run a pass of its own meanwhile.
    let group = json!({"selector": {"subscriptions": null, "managementGroups": ["corp"]}});
    let mut other = policy("corp-none", group.clone());
    other.spec.selector.as_mut().unwrap().subnet_names = vec!["no-such-subnet".into()];
    create(&kube, &other).await;
    create(&kube, &policy("corp", group)).await;
    wait_ready(&kube, "corp").await;
    wait_for("corp-none's status", Duration::from_secs(20), || {
        kube.policy("corp-none")
            .filter(|o| condition(o, "Ready").is_some())
    })
    .await;
    let descendants = || {
        em.stats()
            .by_operation
            .get("ManagementGroups_GetDescendants 200")
            .copied()
            .unwrap_or(0)
    };
    // One edit of one policy: one pass, whose status then comes back as a watch event.
    let before = descendants();
    let reconciles = c.metrics.reconciles("success");
    let generation = kube.policy("corp").unwrap()["metadata"]["generation"]
        .as_i64()
        .unwrap();
    Api::<KmsRoutePolicy>::all(kube.client())
        .patch(
            "corp",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"resyncInterval": "9m"}})),
        )
        .await
        .unwrap();
    wait_for("the edit's pass", Duration::from_secs(20), || {
        kube.policy("corp")
            .filter(|o| o["status"]["observedGeneration"].as_i64() == Some(generation + 1))
    })
    .await;
    assert_eq!(
        descendants() - before,
        1,
        "the pass read the group once, for both policies"
    );
    // The status-only reconcile that follows runs no pass and reads nothing.
    wait_for(
        "the edit's reconcile and its status event's",
        Duration::from_secs(10),
        || (c.metrics.reconciles("success") >= reconciles + 2).then_some(()),
    )
    .await;
    assert_eq!(descendants() - before, 1);
    c.shutdown().await;
}

/// The fake API server refuses what a real one refuses, in its words: a status over the CRD's
/// `maxItems` and a spec breaking a CEL rule answer `422 Invalid` with the field and cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_api_server_enforces_the_crds_schema_and_cel_rules_like_a_real_one() {
    let kube = FakeKube::start().await;
    let api = Api::<KmsRoutePolicy>::all(kube.client());
    create(&kube, &policy("p", json!({}))).await;
    let problems: Vec<Value> = (0..51)
        .map(|i| json!({"subnetId": format!("/s/{i}"), "reason": "Conflict", "message": "m"}))
        .collect();
    let patch = json!({"apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy", "status": {"problems": problems}});
    let refused = api
        .patch_status(
            "p",
            &kube::api::PatchParams::apply("t").force(),
            &kube::api::Patch::Apply(&patch),
        )
        .await
        .expect_err("51 problems break maxItems");
    let kube::Error::Api(status) = refused else {
        panic!("{refused}")
    };
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "KmsRoutePolicy.kmsroute.io \"p\" is invalid: status.problems: Too many: 51: must have at most 50 items"
    );
    let cel = policy("q", json!({"resyncInterval": "25h"}));
    let refused = api
        .create(&PostParams::default(), &cel)
        .await
        .expect_err("the CEL rule refuses 25h");
    let kube::Error::Api(status) = refused else {
        panic!("{refused}")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains(
            "spec.resyncInterval: Invalid value: \"object\": must be between 30s and 24h"
        ),
        "{}",
        status.message
    );
    assert!(kube.policy("q").is_none());
}

/// Issue 32, item 4: four conflicting subnets make a Conflict note of about 1.1 KB, which a real
/// API server refuses (`note` is at most 1,024 bytes; the fake one refuses it too). The Event
/// arrives within the limit, with as many subnets as fit and how many more, and the others
/// are on the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warning_with_many_problems_is_an_event_the_api_server_accepts() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    em.other_writer(OtherWrite::PutRoute {
        route_table: spoke1_table(),
        route: json!({"name": "legacy-kms", "properties": {"addressPrefix": "20.118.99.224/32",
            "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.0.4"}}),
    })
    .unwrap();
    for subnet in ["app", "data"] {
        em.other_writer(OtherWrite::SetSubnetRouteTable {
            subnet: format!(
                "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/virtualNetworks/vnet-spoke1/subnets/{subnet}"
            ),
            route_table: Some(spoke1_table()),
        })
        .unwrap();
    }
    let c = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    let event = wait_for("a Conflict Event", Duration::from_secs(20), || {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "Conflict")
    })
    .await;
    let note = event["note"].as_str().unwrap_or_default();
    assert!(note.len() <= 1024, "{} bytes: {note}", note.len());
    assert!(
        note.contains("more (kubectl get krp spokes -o yaml lists them)"),
        "{note}"
    );
    let obj = kube.policy("spokes").unwrap();
    let conflicts = obj["status"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["reason"] == "Conflict")
        .count();
    assert_eq!(conflicts, 4, "{obj}");
    c.shutdown().await;
}

/// Issue 32, item 4: an Event counts as said only once the API server accepted it. The first
/// Conflict Event is lost to an API server error; the next pass (a spec edit) sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_api_server_did_not_accept_is_sent_again() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    em.other_writer(OtherWrite::PutRoute {
        route_table: spoke1_table(),
        route: json!({"name": "legacy-kms", "properties": {"addressPrefix": "20.118.99.224/32",
            "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.0.4"}}),
    })
    .unwrap();
    kube.fail_event_creates(100);
    let c = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    wait_for("the status with conflicts", Duration::from_secs(20), || {
        kube.policy("spokes")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "Conflict"))
    })
    .await;
    assert!(kube.events().iter().all(|e| e["reason"] != "Conflict"));
    kube.fail_event_creates(0);
    Api::<KmsRoutePolicy>::all(kube.client())
        .patch(
            "spokes",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"resyncInterval": "11m"}})),
        )
        .await
        .unwrap();
    wait_for(
        "the Conflict Event, sent again",
        Duration::from_secs(20),
        || {
            kube.events()
                .into_iter()
                .find(|e| e["reason"] == "Conflict")
        },
    )
    .await;
    c.shutdown().await;
}

/// The Contested problem's message on the policy, if there is one.
fn contested_message(o: &Value) -> Option<String> {
    o.pointer("/status/problems")
        .and_then(Value::as_array)
        .and_then(|ps| ps.iter().find(|p| p["reason"] == "Contested"))
        .and_then(|p| p["message"].as_str())
        .map(str::to_string)
}

/// Issue 32, item 8: after a restart every KMS route is in sync, so none is a write of this
/// process; a colleague deleting one three times is still a fight: the first removal of a
/// route found in sync is a revert, and the third contests the table, naming her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_deletes_of_a_route_found_in_sync_contest_the_table() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let first = start_controller(&kube, &em, "a");
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    first.shutdown().await;
    // A new process: nothing it remembers was written by it.
    let c = start_contested(
        &kube,
        &em,
        "b",
        ContestSettings {
            margin_secs: 1,
            ..contest(3)
        },
    );
    wait_for(
        "the restarted controller's first pass",
        Duration::from_secs(20),
        || (c.metrics.reconciles("success") >= 1).then_some(()),
    )
    .await;
    for round in 1..=3u64 {
        alice_deletes_a_kms_route(&em, &spoke1_table()).await;
        wait_route_back(&em, "rt-spoke1-shared", Duration::from_secs(15)).await;
        wait_for("the revert counted", Duration::from_secs(15), || {
            (c.metrics.reverts_of("spokes") >= round).then_some(())
        })
        .await;
    }
    let event = wait_for("the Contested event", Duration::from_secs(20), || {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "Contested")
    })
    .await;
    let note = event["note"].as_str().unwrap_or_default();
    for part in [
        "rt-spoke1-shared",
        "3 times since",
        "alice@contoso.example deleting a route",
    ] {
        assert!(note.contains(part), "{part:?} not in {note}");
    }
    c.shutdown().await;
}

/// Issue 32, item 6: the Activity Log is searched from kmsroute's own last write (or sighting)
/// of what was reverted. Bob rewrote the table before kmsroute wrote its routes; Alice deletes
/// one later, and the log shows her only after a delay. Bob is never named: first "not yet
/// attributed", then Alice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_named_is_one_who_wrote_after_kmsroute() {
    let kube = FakeKube::start().await;
    let em = support::arm::emulator(
        Config {
            activity_log_delay: Duration::from_secs(2),
            ..Config::default()
        },
        support::arm::demo_estate(),
    )
    .await;
    // Bob's template rewrites the table (with its routes as they are) before kmsroute starts.
    let url = format!("{}{}?api-version=2024-03-01", em.url(), spoke1_table());
    let mut table = em
        .dump()
        .resources
        .into_iter()
        .find(|r| r["name"] == "rt-spoke1-shared")
        .unwrap();
    table["tags"] = json!({"deployed-by": "bob"});
    let resp = reqwest::Client::new()
        .put(&url)
        .bearer_auth("bob@contoso.example")
        .json(&table)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    // Bob's entry is in the log (it shows after the 2 s delay) before kmsroute writes anything.
    let reader = arm_client(&em, "reader");
    support::wait::wait_until(
        "Bob's entry in the Activity Log",
        Duration::from_secs(10),
        || {
            let reader = reader.clone();
            async move {
                let events = reader.activity_log(&spoke1_table(), 0).await.ok()?;
                events
                    .iter()
                    .any(|e| e.caller == "bob@contoso.example")
                    .then_some(())
            }
        },
    )
    .await;
    let c = start_contested(
        &kube,
        &em,
        "a",
        ContestSettings {
            relook_secs: 1,
            margin_secs: 1,
            ..contest(1)
        },
    );
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    alice_deletes_a_kms_route(&em, &spoke1_table()).await;
    let first = wait_for("a Contested problem", Duration::from_secs(15), || {
        kube.policy("spokes").and_then(|o| contested_message(&o))
    })
    .await;
    assert!(first.contains("not yet attributed"), "{first}");
    let later = wait_for("Alice named", Duration::from_secs(20), || {
        kube.policy("spokes")
            .and_then(|o| contested_message(&o))
            .filter(|m| !m.contains("not yet attributed"))
    })
    .await;
    assert!(
        later.contains("alice@contoso.example deleting a route"),
        "{later}"
    );
    assert!(!later.contains("bob"), "{later}");
    c.shutdown().await;
}

/// Issue 32, item 5: one policy's slow Activity Log read (6 s) holds no lock another policy
/// needs: a second policy created meanwhile gets its status at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_activity_log_delays_no_other_policy() {
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_contested(
        &kube,
        &em,
        "a",
        ContestSettings {
            margin_secs: 1,
            ..contest(1)
        },
    );
    create(&kube, &policy("spokes", json!({}))).await;
    wait_ready(&kube, "spokes").await;
    em.add_fault(kmsroute::emulator::FaultRule {
        path_contains: Some("microsoft.insights".into()),
        latency_ms: Some(6_000),
        count: Some(1),
        ..Default::default()
    });
    alice_deletes_a_kms_route(&em, &spoke1_table()).await;
    wait_route_back(&em, "rt-spoke1-shared", Duration::from_secs(15)).await;
    // The repair's pass is reading the log now.
    let hub = json!({"selector": {"subscriptions": [S1], "virtualNetworkTags": {"role": "hub"}}});
    let mut p = policy("hub", json!({}));
    p.spec = serde_json::from_value(hub).unwrap();
    create(&kube, &p).await;
    wait_for("the hub policy's status", Duration::from_secs(4), || {
        kube.policy("hub")
            .filter(|o| condition(o, "Ready").is_some())
    })
    .await;
    c.shutdown().await;
}

/// Issue 32, item 9: the installer decides which identities policies may use. With none
/// allowed, a policy naming an app in `spec.azure.identity` gets `IdentityNotAllowed` and
/// nothing is read or written for it; allowed (`--allowed-identity`), the same policy converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_may_use_only_an_identity_the_installer_allowed() {
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "0b6c3a2e-6f4e-4f71-9d55-3f0c6f1f8a11";
    let with_identity = || {
        let mut p = policy("partner", json!({}));
        p.spec.azure = Some(kmsroute::api::AzureSpec {
            identity: Some(kmsroute::api::IdentitySpec {
                tenant_id: TENANT.into(),
                client_id: CLIENT.into(),
            }),
        });
        p
    };
    // The emulator's static token stands for every identity: were the policy let through, it
    // would converge.
    let factory = |arm: &AzureNetworkApi, em: &EmulatorHandle| {
        let url = url::Url::parse(&em.url()).unwrap();
        arm.set_identity_factory(kmsroute::azure::credential::identity_factory(
            kmsroute::azure::credential::AuthMode::StaticToken,
            &url,
            kmsroute::catalog::Cloud::AzurePublic,
            Arc::new(Vec::<(String, String)>::new()),
            Default::default(),
            Arc::new(kmsroute::azure::credential::StaticToken::new("t")),
        ));
    };
    let kube = FakeKube::start().await;
    let em = estate_emulator().await;
    let c = start_controller(&kube, &em, "a");
    factory(&c.arm, &em);
    create(&kube, &with_identity()).await;
    let obj = wait_for("IdentityNotAllowed", Duration::from_secs(20), || {
        kube.policy("partner")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 == "IdentityNotAllowed"))
    })
    .await;
    let problems = obj["status"]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["reason"], "IdentityNotAllowed");
    let message = problems[0]["message"].as_str().unwrap();
    for part in [
        CLIENT,
        "only its own identity",
        "azure.identity.policyIdentities",
        "--allowed-identity",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    wait_for("the Warning Event", Duration::from_secs(10), || {
        kube.events()
            .into_iter()
            .find(|e| e["reason"] == "IdentityNotAllowed" && e["type"] == "Warning")
    })
    .await;
    assert_eq!(em.stats().writes, 0, "nothing written for it");
    assert_eq!(em.stats().reads, 0, "nothing read for it");
    c.shutdown().await;

    // The installer allows it: the same policy converges as that identity.
    let c = start_controller_with(&kube, &em, "b", "t", |s| {
        s.allowed_identities = [kmsroute::ids::Identity {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
        }]
        .into();
    });
    factory(&c.arm, &em);
    wait_for("converged", Duration::from_secs(20), || {
        kube.policy("partner")
            .filter(|o| condition(o, "Ready").is_some_and(|c| c.1 != "IdentityNotAllowed"))
    })
    .await;
    assert!(em.stats().writes > 0);
    c.shutdown().await;
}
