//! The controller end to end: the fake Kubernetes API server and the ARM emulator, both
//! in-process, kube's real `Client` over HTTP, the real ARM client.

mod support;

use kmsroute::api::KmsRoutePolicy;
use kmsroute::azure::NetworkApi;
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::credential::StaticToken;
use kmsroute::azure::policy::RetrySettings;
use kmsroute::catalog::Cloud;
use kmsroute::controller::leader::LeaseSettings;
use kmsroute::controller::metrics::ControllerMetrics;
use kmsroute::controller::{self, Settings};
use kmsroute::emulator::{self, Config, EmulatorHandle, OtherWrite, Seed};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use support::fake_kube::FakeKube;
use tokio::sync::watch;

const S1: &str = "11111111-1111-1111-1111-111111111111";
const NS: &str = "kmsroute";

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
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
    Arc::new(
        AzureNetworkApi::new(
            url::Url::parse(&em.url()).unwrap(),
            Arc::new(StaticToken::new(token)),
            ClientSettings {
                retry,
                ..ClientSettings::default()
            },
        )
        .unwrap(),
    )
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
    // `RUST_LOG=kmsroute=debug cargo test --test controller -- --nocapture` shows the controller's logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let arm = arm_client(em, token);
    let settings = Settings {
        cloud: Cloud::AzurePublic,
        concurrency: 4,
        events_namespace: NS.into(),
        slow_retry: Duration::from_secs(2),
        base_backoff: Duration::from_millis(200),
        resync_cap: Some(Duration::from_secs(1)),
        resolver: None,
        lease: LeaseSettings {
            namespace: NS.into(),
            name: "kmsroute-leader".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(2),
            renew_every: Duration::from_millis(300),
        },
    };
    let metrics = Arc::new(ControllerMetrics::default());
    let (stop, stop_rx) = watch::channel(false);
    let api: Arc<dyn NetworkApi> = arm.clone();
    let task = tokio::spawn(controller::run(
        kube.client(),
        api,
        settings,
        metrics.clone(),
        Arc::new(AtomicBool::new(false)),
        stop_rx,
    ));
    Running {
        stop,
        task,
        metrics,
        arm,
    }
}

async fn estate_emulator() -> EmulatorHandle {
    let seed: Seed =
        serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap();
    emulator::start(Config::default(), seed, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
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

/// Polls until `f` holds (never a fixed sleep): panics with `what` after `limit`.
async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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
    let shared = format!(
        "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/routeTables/rt-spoke1-shared"
    );
    em.other_writer(OtherWrite::DeleteRoute {
        route_table: shared,
        route: "kms-20-118-99-224".into(),
    })
    .unwrap();
    wait_for(
        "the deleted route to come back",
        Duration::from_secs(10),
        || {
            table_routes(&em, "rt-spoke1-shared")
                .contains(&"kms-20-118-99-224".to_string())
                .then_some(())
        },
    )
    .await;
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
    create(
        &kube,
        &policy(
            "bad",
            json!({"kms": {"additionalAddresses": ["10.1.2.3"]}, "resyncInterval": "10s"}),
        ),
    )
    .await;
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
    assert!(kube.events().iter().any(|e| e["reason"] == "InvalidSpec"));
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
    let shared = format!(
        "/subscriptions/{S1}/resourceGroups/rg-spoke1/providers/Microsoft.Network/routeTables/rt-spoke1-shared"
    );
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
    assert!(c.metrics.errors("needs_user_action") >= 1);
    assert!(c.arm.metrics.count_status("401") >= 1);
    assert!(
        kube.events()
            .iter()
            .any(|e| e["reason"] == "AzureAuthFailed")
    );
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
    assert!(c.metrics.errors("throttled") >= 1);
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
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake\n",
        kube.addr
    )).unwrap();
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
    // The demo estate carries one VM NIC, in vnet-spoke1/app; spoke2/private has no egress.
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
        obj["status"]["summary"]["verified"], 1,
        "one table has a NIC"
    );
    let egress = condition(&obj, "EgressReady").unwrap();
    assert_eq!(
        (egress.0.as_str(), egress.1.as_str()),
        ("False", "NoInternetEgress")
    );
    assert!(egress.2.contains("1 subnet(s)"), "{egress:?}");
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
    wait_for(
        "the repair after the API server is back",
        Duration::from_secs(20),
        || {
            table_routes(&em, "rt-spoke1-shared")
                .contains(&"kms-20-118-99-224".to_string())
                .then_some(())
        },
    )
    .await;
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
    kube.steal_lease(NS, "kmsroute-leader", "thief", 3);
    wait_for("a to lose the lease", Duration::from_secs(10), || {
        (!c.metrics.is_leader()).then_some(())
    })
    .await;
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
            ("RUST_LOG", "trace,azure_core=trace,azure_identity=trace"),
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
