//! What both benchmarks share: the generated estate, the emulator as a separate process, its
//! counters, and a process's CPU time.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const KMS: [&str; 3] = ["20.118.99.224", "40.83.235.53", "23.102.135.246"];
pub const WRITE_BUCKET: f64 = 200.0;
pub const WRITE_REFILL: f64 = 10.0;
pub const READ_BUCKET: f64 = 250.0;
pub const READ_REFILL: f64 = 25.0;
/// The Network RP's write window per subscription: 1,000 per 5 minutes.
pub const PROVIDER_WRITES: f64 = 1_000.0;
pub const PROVIDER_WINDOW_SECS: f64 = 300.0;

pub fn sub(i: usize) -> String {
    format!("00000000-0000-0000-0000-{:012}", i + 1)
}

/// How an estate departs from the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// A drifted 10%: tables missing a KMS route, subnets missing their table.
    TenPercent,
    /// A landing zone nobody routed yet: every subnet has its table, no table has a KMS route
    /// (3 route writes per table, 15 per VNet).
    Unrouted,
}

/// An estate of `subnets` subnets over `subs` subscriptions: VNets of 10 subnets (one
/// GatewaySubnet, pairs sharing a table, tables with foreign routes), in sync except for
/// `drift`. Returns the seed and the number of drifted subnets.
pub fn estate(subnets: usize, subs: usize) -> (Value, usize) {
    estate_with(subnets, subs, Drift::TenPercent)
}

pub fn estate_with(subnets: usize, subs: usize, kind: Drift) -> (Value, usize) {
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
            let drift = kind == Drift::TenPercent && n % 10 == 5; // 10% of subnets
            let table_name = format!("vnet{v}-t{}", i / 2);
            let mut props = json!({"addressPrefix": format!("10.{}.{}.0/24", v % 250, i)});
            if i > 0 {
                if drift || kind == Drift::Unrouted {
                    drifted += 1;
                }
                if !drift {
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
            for ip in KMS.iter().filter(|_| kind != Drift::Unrouted) {
                routes.push(json!({"name": format!("kms-{}", ip.replace('.', "-")), "properties": {"addressPrefix": format!("{ip}/32"), "nextHopType": "Internet"}}));
            }
            // A drifted table: one KMS route deleted by hand.
            if kind == Drift::TenPercent && (v * 5 + t) % 10 == 3 {
                routes.pop();
            }
            resources.push(json!({"id": format!("{rg}/routeTables/vnet{v}-t{t}"), "location": "westeurope", "properties": {"routes": routes}}));
        }
    }
    (json!({"resources": resources}), drifted)
}

pub struct Emulator {
    pub child: Child,
    pub url: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long each long-running operation stays `InProgress` in the emulator. ARM's `Retry-After`
/// is whole seconds, so 1 s is the shortest duration a client that honours it can observe.
pub const LRO_MS: u64 = 1000;

pub fn start_emulator(seed_file: &std::path::Path, page_size: usize) -> Emulator {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmsroute"))
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--throttle",
            "arm",
            "--page-size",
            &page_size.to_string(),
            "--lro-ms",
            &LRO_MS.to_string(),
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

pub async fn stats(url: &str) -> Value {
    reqwest::get(format!("{url}/_emulator/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn reset(url: &str) {
    reqwest::Client::new()
        .post(format!("{url}/_emulator/stats/reset"))
        .send()
        .await
        .unwrap();
}

/// User + system CPU of a process, from /proc/PID/stat (clock ticks of 10 ms).
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}
