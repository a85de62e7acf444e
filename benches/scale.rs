//! `cargo bench --bench scale`: kmsroute against the ARM emulator (a separate process, ARM-shaped
//! throttling on) at 100, 1,000 and 10,000 subnets, beside the naive way a script or a
//! per-resource operator works (per subnet: GET subnet, GET its table, PUT each KMS route).
//! Prints a table and writes BENCHMARKS.md. Not a test: it reports numbers, asserts none.
//! `KMSROUTE_BENCH_SIZES=100,1000` picks the estates.

use kmsroute::api::{KmsRoutePolicySpec, validate};
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::credential::StaticToken;
use kmsroute::catalog::Cloud;
use kmsroute::reconcile::{Options, RunMode, reconcile};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KMS: [&str; 3] = ["20.118.99.224", "40.83.235.53", "23.102.135.246"];
const WRITE_BUCKET: f64 = 200.0;
const WRITE_REFILL: f64 = 10.0;
const READ_BUCKET: f64 = 250.0;
const READ_REFILL: f64 = 25.0;

fn sub(i: usize) -> String {
    format!("00000000-0000-0000-0000-{:012}", i + 1)
}

/// An estate of `subnets` subnets over `subs` subscriptions: VNets of 10 subnets (one
/// GatewaySubnet, pairs sharing a table, tables with foreign routes, some subnets bare), in
/// sync except a drifted 10% (tables missing their KMS routes, subnets missing their table).
fn estate(subnets: usize, subs: usize) -> (Value, usize) {
    let mut resources = Vec::new();
    let vnets = subnets.div_ceil(10);
    let mut drifted = 0;
    let mut n = 0;
    for v in 0..vnets {
        let s = sub(v % subs);
        let rg = format!(
            "/subscriptions/{s}/resourceGroups/rg{}/providers/Microsoft.Network",
            v / subs
        );
        let vnet_id = format!("{rg}/virtualNetworks/vnet{v}");
        let mut sn = Vec::new();
        for i in 0..10 {
            if n == subnets {
                break;
            }
            n += 1;
            let name = if i == 0 {
                "GatewaySubnet".to_string()
            } else {
                format!("s{i}")
            };
            let drift = n % 10 == 5; // 10% of subnets
            let table_name = format!("vnet{v}-t{}", i / 2);
            let mut props = json!({"addressPrefix": format!("10.{}.{}.0/24", v % 250, i)});
            if i > 0 {
                if drift {
                    drifted += 1;
                } else {
                    props["routeTable"] = json!({"id": format!("{rg}/routeTables/{table_name}")});
                }
            }
            sn.push(json!({"id": format!("{vnet_id}/subnets/{name}"), "name": name, "properties": props}));
        }
        resources.push(json!({"id": vnet_id, "location": "westeurope", "tags": {"kms": "enabled"}, "properties": {"subnets": sn}}));
        for t in 0..5 {
            let mut routes = vec![
                json!({"name": "default-to-fw", "properties": {"addressPrefix": "0.0.0.0/0", "nextHopType": "VirtualAppliance", "nextHopIpAddress": "10.0.0.4"}}),
            ];
            for ip in KMS {
                routes.push(json!({"name": format!("kms-{}", ip.replace('.', "-")), "properties": {"addressPrefix": format!("{ip}/32"), "nextHopType": "Internet"}}));
            }
            // A drifted table: one KMS route deleted by hand.
            if (v * 5 + t) % 10 == 3 {
                routes.pop();
            }
            resources.push(json!({"id": format!("{rg}/routeTables/vnet{v}-t{t}"), "location": "westeurope", "properties": {"routes": routes}}));
        }
    }
    (json!({"resources": resources}), drifted)
}

struct Emulator {
    child: Child,
    url: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_emulator(seed_file: &std::path::Path, page_size: usize) -> Emulator {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsroute"))
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--throttle",
            "arm",
            "--page-size",
            &page_size.to_string(),
            "--seed",
        ])
        .arg(seed_file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("kmsroute emulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening on")
        .to_string();
    Emulator { child, url }
}

async fn stats(url: &str) -> Value {
    reqwest::get(format!("{url}/_emulator/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn reset(url: &str) {
    reqwest::Client::new()
        .post(format!("{url}/_emulator/stats/reset"))
        .send()
        .await
        .unwrap();
}

/// This process's CPU time (user + system) and peak RSS, from /proc.
fn cpu_and_peak_rss() -> (Duration, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap_or(0);
    (Duration::from_millis(ticks * 10), hwm)
}

#[derive(Default, Clone)]
struct Run {
    reads: u64,
    writes: u64,
    throttled: u64,
    wall: Duration,
    cpu: Duration,
    planned: usize,
    failed: usize,
}

async fn ours(url: &str, subs: usize, mode: RunMode) -> Run {
    let api = AzureNetworkApi::new(
        url::Url::parse(url).unwrap(),
        Arc::new(StaticToken::new("bench")),
        ClientSettings::default(),
    )
    .unwrap();
    let subscriptions: Vec<String> = (0..subs).map(sub).collect();
    let spec: KmsRoutePolicySpec = serde_json::from_value(json!({"selector": {"subscriptions": subscriptions, "virtualNetworkTags": {"kms": "enabled"}}, "routeTable": {"nameTemplate": "{vnet}-{subnet}-kms"}})).unwrap();
    let policy = validate("bench", None, &spec, Cloud::AzurePublic)
        .unwrap()
        .desired;
    reset(url).await;
    let (cpu0, _) = cpu_and_peak_rss();
    let t0 = Instant::now();
    let report = reconcile(
        &api,
        &[policy],
        &Options {
            mode,
            concurrency: 16,
            only_policy: None,
        },
        &|_| {},
    )
    .await
    .unwrap();
    let wall = t0.elapsed();
    let (cpu1, _) = cpu_and_peak_rss();
    let s = stats(url).await;
    Run {
        reads: s["reads"].as_u64().unwrap_or(0),
        writes: s["writes"].as_u64().unwrap_or(0),
        throttled: s["throttled"].as_u64().unwrap_or(0),
        wall,
        cpu: cpu1 - cpu0,
        planned: report.plan.writes.len(),
        failed: report.writes_failed(),
    }
}

/// The naive way: per subnet, GET it, GET its route table, PUT every KMS route (creating a
/// table and associating it where there is none) — subscriptions in parallel, like ours.
async fn naive(url: &str, seed: &Value, subs: usize) -> Run {
    let client = reqwest::Client::new();
    let subnet_ids: Vec<(String, String)> = seed["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["id"].as_str().unwrap().contains("/virtualNetworks/"))
        .flat_map(|v| {
            v["properties"]["subnets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap().to_string(),
                        s["name"].as_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .filter(|(_, name)| name != "GatewaySubnet")
        .collect();
    let mut by_sub: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, _) in subnet_ids {
        by_sub
            .entry(id.split('/').nth(2).unwrap().to_string())
            .or_default()
            .push(id);
    }
    reset(url).await;
    let t0 = Instant::now();
    let tasks: Vec<_> = by_sub
        .into_values()
        .map(|ids| {
            let client = client.clone();
            let url = url.to_string();
            tokio::spawn(async move {
                let call = |method: reqwest::Method, path: String, body: Option<Value>| {
                    let client = client.clone();
                    let url = url.clone();
                    async move {
                        // A script's retry loop: honour Retry-After on 429.
                        loop {
                            let mut req = client.request(method.clone(), format!("{url}{path}?api-version=2024-03-01")).bearer_auth("naive");
                            if let Some(b) = &body {
                                req = req.json(b);
                            }
                            let resp = req.send().await.unwrap();
                            if resp.status() == 429 {
                                let wait = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(1u64);
                                tokio::time::sleep(Duration::from_secs(wait)).await;
                                continue;
                            }
                            return resp.json::<Value>().await.unwrap_or(Value::Null);
                        }
                    }
                };
                for id in ids {
                    let subnet = call(reqwest::Method::GET, id.clone(), None).await;
                    let table = match subnet.pointer("/properties/routeTable/id").and_then(Value::as_str) {
                        Some(t) => t.to_string(),
                        None => {
                            let (vnet, name) = id.rsplit_once("/subnets/").unwrap();
                            let rg = vnet.split("/virtualNetworks/").next().unwrap();
                            let t = format!("{rg}/routeTables/{}-{name}-kms", vnet.rsplit('/').next().unwrap());
                            call(reqwest::Method::PUT, t.clone(), Some(json!({"location": "westeurope", "properties": {}}))).await;
                            let mut body = subnet.clone();
                            body["properties"]["routeTable"] = json!({"id": t});
                            call(reqwest::Method::PUT, id.clone(), Some(body)).await;
                            t
                        }
                    };
                    call(reqwest::Method::GET, table.clone(), None).await;
                    for ip in KMS {
                        let name = format!("kms-{}", ip.replace('.', "-"));
                        call(reqwest::Method::PUT, format!("{table}/routes/{name}"), Some(json!({"properties": {"addressPrefix": format!("{ip}/32"), "nextHopType": "Internet"}}))).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let wall = t0.elapsed();
    let s = stats(url).await;
    let _ = subs;
    Run {
        reads: s["reads"].as_u64().unwrap_or(0),
        writes: s["writes"].as_u64().unwrap_or(0),
        throttled: s["throttled"].as_u64().unwrap_or(0),
        wall,
        ..Run::default()
    }
}

/// The fastest the emulator's write budget allows: per subscription, writes beyond the bucket
/// arrive at the refill rate; subscriptions run in parallel.
fn write_bound(writes_per_sub: &[u64]) -> Duration {
    let worst = writes_per_sub.iter().copied().max().unwrap_or(0) as f64;
    Duration::from_secs_f64(((worst - WRITE_BUCKET).max(0.0)) / WRITE_REFILL)
}

#[tokio::main]
async fn main() {
    // "N" (N subnets over up to 50 subscriptions) or "NxS" (N subnets in S subscriptions: a
    // dense estate whose writes exceed ARM's per-subscription write bucket).
    let sizes: Vec<(usize, usize)> = std::env::var("KMSROUTE_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000,10000,10000x5".into())
        .split(',')
        .filter_map(|e| {
            let (n, s) = e
                .trim()
                .split_once('x')
                .map_or((e.trim(), None), |(n, s)| (n, Some(s)));
            let n: usize = n.parse().ok()?;
            Some((
                n,
                s.and_then(|s| s.parse().ok())
                    .unwrap_or((n / 200).clamp(1, 50)),
            ))
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("kmsroute-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rows = Vec::new();
    for &(n, subs) in &sizes {
        let (seed, drifted) = estate(n, subs);
        let seed_file = dir.join(format!("estate-{n}x{subs}.json"));
        std::fs::write(&seed_file, seed.to_string()).unwrap();

        let em = start_emulator(&seed_file, 200);
        let first = ours(&em.url, subs, RunMode::Apply).await;
        let steady = ours(&em.url, subs, RunMode::Apply).await;
        let (_, peak_kib) = cpu_and_peak_rss();
        drop(em);
        // The naive way, on a fresh copy of the same drifted estate.
        let em = start_emulator(&seed_file, 200);
        let naive_first = naive(&em.url, &seed, subs).await;
        let naive_steady = naive(&em.url, &seed, subs).await;
        drop(em);

        let per_sub = first.planned as u64 / subs as u64 + 1;
        let bound = write_bound(&vec![per_sub; subs]);
        rows.push((
            n,
            subs,
            drifted,
            first,
            steady,
            naive_first,
            naive_steady,
            peak_kib,
            bound,
        ));
    }
    let mut out = String::new();
    out.push_str("| subnets | subs | drifted | phase | ARM reads | ARM writes | 429s | wall | CPU | naive reads | naive writes | naive 429s | naive wall | calls ours/naive | wall ours/naive |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (n, subs, drifted, first, steady, nf, ns, _, _) in &rows {
        for (phase, o, v) in [
            ("first convergence", first, nf),
            ("steady resync", steady, ns),
        ] {
            let calls = (o.reads + o.writes) as f64 / (v.reads + v.writes).max(1) as f64;
            let wall = o.wall.as_secs_f64() / v.wall.as_secs_f64().max(1e-9);
            out.push_str(&format!(
                "| {n} | {subs} | {drifted} | {phase} | {} | {} | {} | {:.2}s | {:.2}s | {} | {} | {} | {:.2}s | {:.3} | {:.3} |\n",
                o.reads, o.writes, o.throttled, o.wall.as_secs_f64(), o.cpu.as_secs_f64(), v.reads, v.writes, v.throttled, v.wall.as_secs_f64(), calls, wall
            ));
        }
    }
    out.push_str("\n| subnets | planned writes | failed | write-budget lower bound | first-convergence wall | peak RSS (whole bench process) |\n|---|---|---|---|---|---|\n");
    for (n, _, _, first, _, _, _, peak, bound) in &rows {
        out.push_str(&format!(
            "| {n} | {} | {} | {:.2}s | {:.2}s | {:.1} MiB |\n",
            first.planned,
            first.failed,
            bound.as_secs_f64(),
            first.wall.as_secs_f64(),
            *peak as f64 / 1024.0
        ));
    }
    println!("{out}");
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::env::consts::ARCH
    );
    let doc = format!(
        "# Benchmarks\n\nReproduce: `cargo bench --bench scale` (release build; `KMSROUTE_BENCH_SIZES=100,1000` for fewer estates).\n\
Machine: {machine}. The ARM emulator runs as a separate process with ARM-shaped throttling (`--throttle arm`: \
reads {READ_BUCKET} + {READ_REFILL}/s, writes {WRITE_BUCKET} + {WRITE_REFILL}/s per subscription), page size 200, long-running operations complete at once.\n\n\
Ours: one `kmsroute` reconcile pass (the executor `apply` and the controller use), concurrency 16. Naive: per subnet GET subnet, GET its route table, \
PUT each KMS route (creating and associating a table where missing), subscriptions in parallel, honouring `Retry-After`.\n\
The estate is 10% drifted (subnets without their table, tables missing a KMS route).\n\n{out}"
    );
    std::fs::write("BENCHMARKS.md", doc).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
