//! Issue 19: the Grafana dashboard and the Prometheus alerts, held to the real tools.
//! `promtool check rules` / `promtool test rules` run the alert unit tests; a real Prometheus
//! on loopback scrapes a running `kmsroute run` (emulator and fake API server in this process),
//! and every expression of the dashboard and the rules is valid and names only metrics that
//! exist. `.ci/run` installs Prometheus (Debian's package); outside CI these tests say they were
//! skipped when it is missing.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::fake_kube::FakeKube;

const RULES: &str = "charts/kmsroute/monitoring/kmsroute.rules.yaml";
const DASHBOARD: &str = "charts/kmsroute/monitoring/kmsroute-dashboard.json";

/// A tool from PATH; in CI its absence fails the test, elsewhere it is a visible skip.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install {name} (apt-get install prometheus, see .ci/run)"
        );
        eprintln!("SKIPPED: no {name} on PATH; apt-get install prometheus");
    }
    found
}

fn rules() -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(RULES).unwrap()).unwrap()
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap()
}

/// Every PromQL expression of the dashboard's panels and of the alert rules.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard()["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                format!("panel {:?}", p["title"].as_str().unwrap()),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for g in rules()["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            out.push((
                format!("alert {}", r["alert"].as_str().unwrap()),
                r["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn the_plain_files_in_deploy_are_the_charts() {
    for (chart, plain) in [
        (RULES, "deploy/monitoring/kmsroute.rules.yaml"),
        (DASHBOARD, "deploy/monitoring/kmsroute-dashboard.json"),
    ] {
        assert_eq!(
            std::fs::read_to_string(chart).unwrap(),
            std::fs::read_to_string(plain).unwrap(),
            "{plain} differs from {chart}: copy it"
        );
    }
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_in_the_readme() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let tests = std::fs::read_to_string("deploy/monitoring/kmsroute.rules.test.yaml").unwrap();
    for g in rules()["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().unwrap();
            assert!(r["annotations"]["summary"].is_string(), "{name}");
            let description = r["annotations"]["description"].as_str().unwrap();
            assert!(description.contains(&format!("\"{name}\"")), "{name}");
            assert!(
                readme.contains(&format!("#### {name}")),
                "README has no runbook for {name}"
            );
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "no promtool test for {name}"
            );
        }
    }
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let check = Command::new(&promtool)
        .args(["check", "rules", RULES])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let test = Command::new(&promtool)
        .args(["test", "rules", "kmsroute.rules.test.yaml"])
        .current_dir("deploy/monitoring")
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn query(http: &reqwest::Client, base: &str, expr: &str) -> Value {
    http.get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scraping_kmsroute_run_has_every_metric_the_dashboard_and_alerts_use() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let kube = FakeKube::start().await;
    let seed: kmsroute::emulator::Seed =
        serde_json::from_str(&std::fs::read_to_string("examples/estate.json").unwrap()).unwrap();
    let em = kmsroute::emulator::start(
        kmsroute::emulator::Config {
            throttle: Some(kmsroute::emulator::Throttle::ARM),
            ..Default::default()
        },
        seed,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("kmsroute-monitoring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = kube.write_kubeconfig(&dir);
    let metrics_port = free_port();
    let _run = Process(
        Command::new(env!("CARGO_BIN_EXE_kmsroute"))
            .args(["run", "--arm-endpoint", &em.url(), "--metrics-addr"])
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args([
                "--leader-election-namespace",
                "kmsroute",
                "--inventory-refresh",
                "1s",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("KMSROUTE_AUTH", "static-token")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let policy: kmsroute::api::KmsRoutePolicy = serde_json::from_value(json!({
        "apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy", "metadata": {"name": "spokes"},
        "spec": {"selector": {"subscriptions": ["11111111-1111-1111-1111-111111111111"], "virtualNetworkTags": {"kms": "enabled"}}}
    }))
    .unwrap();
    kube::Api::<kmsroute::api::KmsRoutePolicy>::all(kube.client())
        .create(&kube::api::PostParams::default(), &policy)
        .await
        .unwrap();
    let ready = |o: &Value| {
        o["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    };
    wait_until("the policy Ready", Duration::from_secs(30), || async {
        kube.policy("spokes").is_some_and(|o| ready(&o))
    })
    .await;

    let prom_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: kmsroute\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            std::fs::canonicalize(RULES).unwrap().display()
        ),
    )
    .unwrap();
    let _prom = Process(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{prom_port}");
    let http = reqwest::Client::new();
    // Several scrapes, so rates have two samples.
    wait_until(
        "five scrapes of kmsroute",
        Duration::from_secs(60),
        || async {
            let r = http
                .get(format!("{base}/api/v1/query"))
                .query(&[("query", "count_over_time(up{job=\"kmsroute\"}[1m]) >= 5")])
                .send()
                .await;
            match r {
                Ok(r) => r.json::<Value>().await.is_ok_and(|v| {
                    v["data"]["result"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                }),
                Err(_) => false,
            }
        },
    )
    .await;
    let up = query(&http, &base, "up{job=\"kmsroute\"}").await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    let metric = regex::Regex::new(r"\b(kmsroute_[a-z_]+|up)\b").unwrap();
    let mut names = BTreeSet::new();
    for (where_, expr) in expressions() {
        let v = query(&http, &base, &expr).await;
        assert_eq!(v["status"], "success", "{where_}: {expr}: {v}");
        for m in metric.captures_iter(&expr) {
            names.insert(m[1].to_string());
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        let v = query(&http, &base, &format!("count({{__name__=\"{name}\"}})")).await;
        assert!(
            v["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty()),
            "{name} is used by the dashboard or an alert but kmsroute run does not export it"
        );
    }
    // The rules loaded into the real Prometheus, and none fires on this healthy estate.
    let rules_api: Value = http
        .get(format!("{base}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&Value> = rules_api["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let shipped: usize = rules()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["rules"].as_array().unwrap().len())
        .sum();
    assert_eq!(shipped, 8);
    assert_eq!(loaded.len(), shipped, "{rules_api}");
    for r in loaded {
        assert_eq!(r["health"], "ok", "{r}");
        assert_ne!(r["state"], "firing", "{r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
