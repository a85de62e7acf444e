//! `cargo bench --bench scale`: kmsroute against the ARM emulator (a separate process, ARM-shaped
//! throttling on) at 100, 1,000 and 10,000 subnets, beside the naive way a script or a
//! per-resource operator works (per subnet: GET subnet, GET its table, PUT each KMS route).
//! Prints a table and writes BENCHMARKS.md. Not a test: it reports numbers, asserts none.
//! `KMSROUTE_BENCH_SIZES=100,1000` picks the estates; `KMSROUTE_BENCH_BIN` runs another (older)
//! `kmsroute` for a before/after comparison.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::*;

#[derive(Default, Clone)]
struct Run {
    reads: u64,
    writes: u64,
    throttled: u64,
    wall: Duration,
    cpu: Duration,
    /// CPU the emulator process spent serving the run (it shares the machine's cores).
    emulator_cpu: Duration,
    peak_rss_kib: u64,
    planned: usize,
    failed: usize,
}

/// Ours: one `kmsroute apply` pass as its own process (the same executor the controller runs),
/// so CPU time and peak RSS are the controller's alone, read from the child's rusage.
async fn ours(em: &Emulator, policy_file: &std::path::Path, out_dir: &std::path::Path) -> Run {
    let url = em.url.as_str();
    reset(url).await;
    let emu_cpu0 = process_cpu(em.child.id());
    let stdout = out_dir.join("apply.out");
    let stderr = out_dir.join("apply.err");
    let t0 = Instant::now();
    // KMSROUTE_BENCH_BIN: another kmsroute (an older build) for a before/after comparison.
    let bin = std::env::var("KMSROUTE_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kmsroute").to_string());
    // Reaped below with libc::wait4, which also returns its rusage (CPU time).
    #[allow(clippy::zombie_processes)]
    let child = Command::new(bin)
        .args(["apply", "--yes", "--arm-endpoint", url, "-f"])
        .arg(policy_file)
        .env("KMSROUTE_AUTH", "static-token")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("kmsroute apply");
    let pid = child.id() as libc::pid_t;
    // Peak RSS from the child's own VmHWM, polled while it runs: the rusage ru_maxrss of a
    // spawned child also counts the parent's pages at fork/exec time (this bench process
    // holds the estate), which overstated it by the bench's own size.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|st| {
                        st.lines()
                            .find(|l| l.starts_with("VmHWM:"))
                            .and_then(|l| l.split_whitespace().nth(1))
                            .and_then(|k| k.parse::<u64>().ok())
                    });
                if let Some(h) = hwm {
                    peak = peak.max(h);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let (code, usage) = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it for this one child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(r, pid, "wait4");
        (libc::WEXITSTATUS(status), usage)
    })
    .await
    .unwrap();
    let wall = t0.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak_rss_kib = watcher.join().unwrap();
    let out = std::fs::read_to_string(&stdout).unwrap_or_default();
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        code == 0 || code == 3,
        "kmsroute apply exited {code}:\n{err}\n{out}"
    );
    let planned = err
        .lines()
        .find_map(|l| l.strip_prefix("planned ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    let failed = out
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" write(s) done, ")?;
            rest.split(' ').next()?.parse().ok()
        })
        .unwrap_or(0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let emulator_cpu = process_cpu(em.child.id()).saturating_sub(emu_cpu0);
    let s = stats(url).await;
    Run {
        reads: s["reads"].as_u64().unwrap_or(0),
        writes: s["writes"].as_u64().unwrap_or(0),
        throttled: s["throttled"].as_u64().unwrap_or(0),
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        emulator_cpu,
        peak_rss_kib,
        planned,
        failed,
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

/// The fastest the emulator's configured limits allow: per subscription, writes beyond the
/// bucket arrive at the refill rate; every operation lasts `LRO_MS`, and the longest chain of
/// operations that must follow one another (create a table with its routes, then associate
/// the subnet) cannot be shorter than `chain` operations; subscriptions run in parallel. The
/// Network RP's window (1,000 writes per 5 minutes per subscription) bounds it too.
fn lower_bound(writes_per_sub: u64, chain: u64) -> Duration {
    let arm = ((writes_per_sub as f64) - WRITE_BUCKET).max(0.0) / WRITE_REFILL;
    let provider = ((writes_per_sub as f64) - PROVIDER_WRITES).max(0.0)
        / (PROVIDER_WRITES / PROVIDER_WINDOW_SECS);
    let latency = (chain * LRO_MS) as f64 / 1000.0;
    Duration::from_secs_f64(arm.max(provider).max(latency))
}

struct Row {
    n: usize,
    subs: usize,
    kind: Drift,
    drifted: usize,
    first: Run,
    steady: Run,
    naive: Option<(Run, Run)>,
    bound: Duration,
}

fn row_lines(r: &Row) -> String {
    let mut out = String::new();
    for (phase, o, v) in [
        (
            "first convergence",
            &r.first,
            r.naive.as_ref().map(|n| &n.0),
        ),
        ("steady resync", &r.steady, r.naive.as_ref().map(|n| &n.1)),
    ] {
        let (n_reads, n_writes, n_429, n_wall, calls, wall) = match v {
            Some(v) => (
                v.reads.to_string(),
                v.writes.to_string(),
                v.throttled.to_string(),
                format!("{:.2}s", v.wall.as_secs_f64()),
                format!(
                    "{:.3}",
                    (o.reads + o.writes) as f64 / (v.reads + v.writes).max(1) as f64
                ),
                format!(
                    "{:.3}",
                    o.wall.as_secs_f64() / v.wall.as_secs_f64().max(1e-9)
                ),
            ),
            None => Default::default(),
        };
        // Cost per unit of work, to see it grow (or not) with the estate: kmsroute's CPU per
        // write (first convergence) and per subnet, the emulator's CPU per request.
        let per_write = if o.writes > 0 {
            format!("{:.3}", o.cpu.as_secs_f64() * 1000.0 / o.writes as f64)
        } else {
            "–".into()
        };
        let per_subnet = o.cpu.as_secs_f64() * 1e6 / r.n as f64;
        let per_request = o.emulator_cpu.as_secs_f64() * 1e6 / (o.reads + o.writes).max(1) as f64;
        out.push_str(&format!(
            "| {} | {} | {} | {phase} | {} | {} | {} | {:.2}s | {:.2}s | {per_write} | {per_subnet:.1} | {:.2}s | {per_request:.0} | {:.1} MiB | {n_reads} | {n_writes} | {n_429} | {n_wall} | {calls} | {wall} |\n",
            r.n,
            r.subs,
            match r.kind {
                Drift::TenPercent => r.drifted.to_string(),
                Drift::Unrouted => format!("{} (unrouted)", r.drifted),
            },
            o.reads,
            o.writes,
            o.throttled,
            o.wall.as_secs_f64(),
            o.cpu.as_secs_f64(),
            o.emulator_cpu.as_secs_f64(),
            o.peak_rss_kib as f64 / 1024.0,
        ));
    }
    out
}

/// The naive way takes hours beyond this size (it reads every subnet one by one under ARM's
/// throttling); those rows show ours alone.
const NAIVE_MAX_SUBNETS: usize = 20_000;

/// Where the generated part of BENCHMARKS.md ends and the hand-written reading begins.
const MARKER: &str = "<!-- Above: generated by cargo bench --bench scale. Below: written by hand, kept across runs. -->";

const HEADER: &str = "| subnets | subs | drifted | phase | ARM reads | ARM writes | 429s | wall | CPU | CPU ms / write | CPU µs / subnet | emulator CPU | emulator µs / request | peak RSS | naive reads | naive writes | naive 429s | naive wall | calls ours/naive | wall ours/naive |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
const BOUND_HEADER: &str = "| subnets | subs | planned writes | failed | lower bound (budget, LRO chain) | first-convergence wall | wall / bound |\n|---|---|---|---|---|---|---|\n";

fn bound_line(r: &Row) -> String {
    format!(
        "| {} | {} | {} | {} | {:.2}s | {:.2}s | {:.2}× |\n",
        r.n,
        r.subs,
        r.first.planned,
        r.first.failed,
        r.bound.as_secs_f64(),
        r.first.wall.as_secs_f64(),
        r.first.wall.as_secs_f64() / r.bound.as_secs_f64().max(1e-9)
    )
}

#[tokio::main]
async fn main() {
    // "N" (N subnets over up to 50 subscriptions) or "NxS" (N subnets in S subscriptions: a
    // dense estate whose writes exceed ARM's per-subscription write bucket), either with
    // ":unrouted" for a landing zone whose tables hold no KMS route yet.
    let sizes: Vec<(usize, usize, Drift)> = std::env::var("KMSROUTE_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000,10000,10000x5".into())
        .split(',')
        .filter_map(|e| {
            let (e, kind) = match e.trim().split_once(':') {
                Some((e, "unrouted")) => (e, Drift::Unrouted),
                Some(_) => return None,
                None => (e.trim(), Drift::TenPercent),
            };
            let (n, s) = e.split_once('x').map_or((e, None), |(n, s)| (n, Some(s)));
            let n: usize = n.parse().ok()?;
            Some((
                n,
                s.and_then(|s| s.parse().ok())
                    .unwrap_or((n / 200).clamp(1, 50)),
                kind,
            ))
        })
        .collect();
    // KMSROUTE_BENCH_SECTION=NAME: write the table into the `<!-- scale-NAME:start/end -->`
    // section of BENCHMARKS.md and leave the rest as it is (the enterprise-scale rows).
    let section = std::env::var("KMSROUTE_BENCH_SECTION").ok();
    // The naive baseline is slow (minutes at 10,000 subnets); KMSROUTE_BENCH_NAIVE=0 skips it
    // while iterating. BENCHMARKS.md is only written from a run that includes it.
    let with_naive = std::env::var("KMSROUTE_BENCH_NAIVE").map_or(true, |v| v != "0");
    let dir = std::env::temp_dir().join(format!("kmsroute-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut rows = Vec::new();
    for &(n, subs, kind) in &sizes {
        let (mut seed, drifted) = estate_with(n, subs, kind);
        let subscriptions: Vec<String> = (0..subs).map(sub).collect();
        // A policy lists at most 100 subscriptions: beyond that the estate is a landing zone
        // under a management group, selected by it (one policy, resolved by ARM's
        // descendants API).
        let selector = if subs > 100 {
            seed["managementGroups"] =
                json!([{"name": "landing-zones", "parent": null, "subscriptions": subscriptions}]);
            json!({"managementGroups": ["landing-zones"], "virtualNetworkTags": {"kms": "enabled"}})
        } else {
            json!({"subscriptions": subscriptions, "virtualNetworkTags": {"kms": "enabled"}})
        };
        let seed_file = dir.join(format!("estate-{n}x{subs}.json"));
        std::fs::write(&seed_file, seed.to_string()).unwrap();
        let policy = json!({"apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy", "metadata": {"name": "bench"},
            "spec": {"selector": selector, "routeTable": {"nameTemplate": "{vnet}-{subnet}-kms"}}});
        let policy_file = dir.join("policy.yaml");
        std::fs::write(&policy_file, policy.to_string()).unwrap();
        // KMSROUTE_BENCH_SEED_OUT=DIR: only write the estates and the policy (to profile by
        // hand: `kmsroute emulator --seed DIR/estate-….json` and `kmsroute plan -f DIR/policy.yaml`).
        if let Ok(out) = std::env::var("KMSROUTE_BENCH_SEED_OUT") {
            std::fs::create_dir_all(&out).unwrap();
            std::fs::copy(&seed_file, format!("{out}/estate-{n}x{subs}.json")).unwrap();
            std::fs::copy(&policy_file, format!("{out}/policy-{n}x{subs}.yaml")).unwrap();
            continue;
        }

        let em = start_emulator(&seed_file, 200);
        let first = ours(&em, &policy_file, &dir).await;
        let steady = ours(&em, &policy_file, &dir).await;
        drop(em);
        // Every subscription holds the same share of the estate. A subnet without a table is
        // the longest chain: create its table with its routes, then associate = 2 operations.
        let per_sub = (first.planned as u64).div_ceil(subs as u64);
        let chain = if kind == Drift::TenPercent && drifted > 0 {
            2
        } else {
            1
        };
        let row = Row {
            n,
            subs,
            kind,
            drifted,
            first,
            steady,
            naive: None,
            bound: lower_bound(per_sub, chain),
        };
        // Print each estate as soon as it is measured.
        println!(
            "{HEADER}{}\n{BOUND_HEADER}{}",
            row_lines(&row),
            bound_line(&row)
        );
        rows.push(row);
    }
    // The naive way afterwards, on a fresh copy of each drifted estate: all of ours is measured
    // first, so the long naive runs never share the machine with one of ours.
    if with_naive {
        for row in rows.iter_mut().filter(|r| r.n <= NAIVE_MAX_SUBNETS) {
            let (seed, _) = estate_with(row.n, row.subs, row.kind);
            let seed_file = dir.join(format!("estate-{}x{}.json", row.n, row.subs));
            let em = start_emulator(&seed_file, 200);
            let f = naive(&em.url, &seed, row.subs).await;
            let s = naive(&em.url, &seed, row.subs).await;
            drop(em);
            row.naive = Some((f, s));
            println!("{HEADER}{}", row_lines(row));
        }
    }
    if std::env::var("KMSROUTE_BENCH_SEED_OUT").is_ok() {
        println!("KMSROUTE_BENCH_SEED_OUT: estates written, nothing measured");
        return;
    }
    let table: String = rows.iter().map(row_lines).collect();
    let bounds: String = rows.iter().map(bound_line).collect();
    println!("all estates:\n\n{HEADER}{table}\n{BOUND_HEADER}{bounds}");
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(name) = section {
        write_section(&name, &format!("{HEADER}{table}\n{BOUND_HEADER}{bounds}"));
        return;
    }
    if !with_naive {
        println!("KMSROUTE_BENCH_NAIVE=0: BENCHMARKS.md not written");
        return;
    }
    let machine = machine();
    let doc = format!(
        "# Benchmarks\n\nReproduce: `cargo bench --bench scale` (release build, about 30 minutes; `KMSROUTE_BENCH_SIZES=100,1000` for fewer estates).\n\
Machine: {machine}. The ARM emulator runs as a separate process with ARM-shaped throttling (`--throttle arm`: \
reads {READ_BUCKET} + {READ_REFILL}/s, writes {WRITE_BUCKET} + {WRITE_REFILL}/s per subscription, and the Network RP's windows of 10,000 reads and {PROVIDER_WRITES} writes per {PROVIDER_WINDOW_SECS} s), page size 200, \
every long-running operation `InProgress` for {LRO_MS} ms, one operation per VNet at a time.\n\n\
Ours: one `kmsroute apply` process (default `--concurrency 32` per subscription; the executor the controller runs), measured from outside: ARM calls from the emulator's counters, \
CPU time from the process's rusage, peak RSS from its VmHWM. Naive: per subnet GET subnet, GET its route table, \
PUT each KMS route (creating and associating a table where missing), subscriptions in parallel, honouring `Retry-After` on 429 \
but not waiting for long-running operations (which flatters it).\n\
The estate is 10% drifted (subnets without their table, tables missing a KMS route).\n\n{HEADER}{table}\n{BOUND_HEADER}{bounds}"
    );
    // Keep the hand-written reading of the numbers (everything from the marker on).
    let analysis = std::fs::read_to_string("BENCHMARKS.md")
        .ok()
        .and_then(|old| old.find(MARKER).map(|i| old[i..].to_string()))
        .unwrap_or_else(|| format!("{MARKER}\n"));
    std::fs::write("BENCHMARKS.md", format!("{doc}\n{analysis}")).unwrap();
}

/// Replaces the `<!-- scale-NAME:start -->` … `<!-- scale-NAME:end -->` part of BENCHMARKS.md
/// (appending it when missing), keeping everything else.
fn write_section(name: &str, table: &str) {
    let (start, end) = (
        format!("<!-- scale-{name}:start -->"),
        format!("<!-- scale-{name}:end -->"),
    );
    let machine = machine();
    let sizes = std::env::var("KMSROUTE_BENCH_SIZES").unwrap_or_default();
    let body = format!(
        "{start}\n## Scale rows: `KMSROUTE_BENCH_SIZES={sizes} KMSROUTE_BENCH_SECTION={name} cargo bench --bench scale`\n\nMachine: {machine}; emulator and measurement as above (one run). \"unrouted\": every subnet has its table, no table has a KMS route yet. \
Naive runs only up to {NAIVE_MAX_SUBNETS} subnets.\n\n{table}\n{end}"
    );
    let old = std::fs::read_to_string("BENCHMARKS.md").unwrap_or_default();
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{body}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{}\n{body}\n", old.trim_end()),
    };
    std::fs::write("BENCHMARKS.md", new).unwrap();
}

/// "2 cores, x86_64".
fn machine() -> String {
    format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::env::consts::ARCH
    )
}
