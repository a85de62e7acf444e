//! Counters and latency histograms of every ARM call, by operation and HTTP status, rendered
//! in the Prometheus text format.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct ArmMetrics {
    calls: Mutex<BTreeMap<(String, String), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Effective-route reads by outcome: `ok`, `error`, `limited` (budget spent, not sent).
    verification: Mutex<BTreeMap<String, u64>>,
    /// What ARM last said was left of each subscription's budget, by (subscription, kind).
    remaining: Mutex<BTreeMap<(String, &'static str), f64>>,
}

impl ArmMetrics {
    /// Records one HTTP attempt: `status` is the code, or `timeout` / `error`.
    pub fn record(&self, operation: &str, status: &str, elapsed: Duration) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls
                .entry((operation.to_string(), status.to_string()))
                .or_insert(0) += 1;
        }
        if let Ok(mut lat) = self.latency.lock() {
            let h = lat.entry(operation.to_string()).or_default();
            let s = elapsed.as_secs_f64();
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += s;
            h.count += 1;
        }
    }

    /// ARM's `x-ms-ratelimit-remaining-subscription-{reads,writes}` for a subscription.
    pub fn remaining(&self, subscription: &str, read: bool, remaining: f64) {
        if let Ok(mut r) = self.remaining.lock() {
            r.insert(
                (
                    subscription.to_string(),
                    if read { "reads" } else { "writes" },
                ),
                remaining,
            );
        }
    }

    /// Counts one effective-route read by outcome (`ok`, `error`, `limited`).
    pub fn verification(&self, outcome: &str) {
        if let Ok(mut v) = self.verification.lock() {
            *v.entry(outcome.to_string()).or_insert(0) += 1;
        }
    }

    /// Effective-route reads so far with this outcome.
    pub fn verification_count(&self, outcome: &str) -> u64 {
        self.verification
            .lock()
            .map(|v| v.get(outcome).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Calls so far for an operation and status.
    pub fn count(&self, operation: &str, status: &str) -> u64 {
        self.calls
            .lock()
            .map(|c| {
                c.get(&(operation.to_string(), status.to_string()))
                    .copied()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Calls so far with a status, over all operations.
    pub fn count_status(&self, status: &str) -> u64 {
        self.calls
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|((_, s), _)| s == status)
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Every operation label seen so far (e.g. `PUT routes`).
    pub fn operations(&self) -> Vec<String> {
        let mut ops: Vec<String> = self
            .calls
            .lock()
            .map(|c| c.keys().map(|(op, _)| op.clone()).collect())
            .unwrap_or_default();
        ops.dedup();
        ops
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP kmsroute_arm_requests_total ARM HTTP requests by operation and status.\n# TYPE kmsroute_arm_requests_total counter\n",
        );
        if let Ok(calls) = self.calls.lock() {
            for ((op, status), n) in calls.iter() {
                out.push_str(&format!(
                    "kmsroute_arm_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP kmsroute_effective_route_reads_total Effective-route verification reads by outcome (ok, error, limited: the verification budget was spent and the read not sent).\n# TYPE kmsroute_effective_route_reads_total counter\n");
        if let Ok(v) = self.verification.lock() {
            for outcome in ["ok", "error", "limited"] {
                out.push_str(&format!(
                    "kmsroute_effective_route_reads_total{{outcome=\"{outcome}\"}} {}\n",
                    v.get(outcome).copied().unwrap_or(0)
                ));
            }
        }
        out.push_str("# HELP kmsroute_arm_ratelimit_remaining What ARM last reported as left of a subscription's request budget (x-ms-ratelimit-remaining-subscription-*).\n# TYPE kmsroute_arm_ratelimit_remaining gauge\n");
        if let Ok(r) = self.remaining.lock() {
            for ((sub, kind), v) in r.iter() {
                out.push_str(&format!(
                    "kmsroute_arm_ratelimit_remaining{{subscription=\"{sub}\",kind=\"{kind}\"}} {v}\n"
                ));
            }
        }
        out.push_str("# HELP kmsroute_arm_request_duration_seconds ARM HTTP request latency.\n# TYPE kmsroute_arm_request_duration_seconds histogram\n");
        if let Ok(lat) = self.latency.lock() {
            for (op, h) in lat.iter() {
                for (i, b) in BUCKETS.iter().enumerate() {
                    out.push_str(&format!("kmsroute_arm_request_duration_seconds_bucket{{operation=\"{op}\",le=\"{b}\"}} {}\n", h.counts[i]));
                }
                out.push_str(&format!("kmsroute_arm_request_duration_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {}\n", h.count));
                out.push_str(&format!(
                    "kmsroute_arm_request_duration_seconds_sum{{operation=\"{op}\"}} {}\n",
                    h.sum
                ));
                out.push_str(&format!(
                    "kmsroute_arm_request_duration_seconds_count{{operation=\"{op}\"}} {}\n",
                    h.count
                ));
            }
        }
        out
    }
}
