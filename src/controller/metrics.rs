//! Controller metrics in the Prometheus text format: reconciles by result, reconcile duration,
//! errors by class, drift repairs and how long they took, the shared inventory's refreshes and
//! age, leader state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds of the drift-repair histogram, in seconds.
const REPAIR_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Debug, Default)]
struct Histogram {
    /// Counts per bucket of [`REPAIR_BUCKETS`] (not cumulative), then +Inf.
    counts: [u64; REPAIR_BUCKETS.len() + 1],
    sum: f64,
}

#[derive(Debug, Default)]
pub struct ControllerMetrics {
    reconciles: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    duration_sum: Mutex<f64>,
    duration_count: AtomicU64,
    repairs: AtomicU64,
    leader: AtomicBool,
    /// Last successful inventory read per subscription.
    inventory_reads: Mutex<HashMap<String, Instant>>,
    /// Refreshes by outcome (`changed`, `unchanged`, `error`).
    refreshes: Mutex<BTreeMap<&'static str, u64>>,
    /// Subnets a refresh found changed.
    changes: AtomicU64,
    /// Passes queued because the inventory changed, by policy.
    triggered: Mutex<BTreeMap<String, u64>>,
    repair_latency: Mutex<Histogram>,
    /// The last pass's readiness and counts of each policy.
    policies: Mutex<BTreeMap<String, (bool, crate::api::Summary)>>,
}

/// Error classes always rendered (at 0 until they happen), so alerts and panels can use them.
const ERROR_CLASSES: [&str; 8] = [
    "needs_user_action",
    "throttled",
    "retryable",
    "conflict",
    "not_found",
    "kube",
    "finalizer",
    "internal",
];

impl ControllerMetrics {
    pub fn reconcile_done(&self, result: &str, took: Duration) {
        if let Ok(mut r) = self.reconciles.lock() {
            *r.entry(result.to_string()).or_insert(0) += 1;
        }
        if let Ok(mut s) = self.duration_sum.lock() {
            *s += took.as_secs_f64();
        }
        self.duration_count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn error(&self, class: &str) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(class.to_string()).or_insert(0) += 1;
        }
    }
    pub fn repairs(&self, writes: u64) {
        self.repairs.fetch_add(writes, Ordering::Relaxed);
    }
    /// One inventory refresh of `subscription`: `Some(n)` read with n subnets changed, `None` failed.
    pub fn inventory_refreshed(&self, subscription: &str, changed: Option<u64>) {
        let outcome = match changed {
            None => "error",
            Some(0) => "unchanged",
            Some(n) => {
                self.changes.fetch_add(n, Ordering::Relaxed);
                "changed"
            }
        };
        if changed.is_some()
            && let Ok(mut r) = self.inventory_reads.lock()
        {
            r.insert(subscription.to_string(), Instant::now());
        }
        if let Ok(mut r) = self.refreshes.lock() {
            *r.entry(outcome).or_insert(0) += 1;
        }
    }
    /// The subscription is no longer watched.
    pub fn inventory_forget(&self, subscription: &str) {
        if let Ok(mut r) = self.inventory_reads.lock() {
            r.remove(subscription);
        }
    }
    /// A policy's readiness and counts after a pass.
    pub fn set_policy(&self, policy: &str, ready: bool, summary: &crate::api::Summary) {
        if let Ok(mut p) = self.policies.lock() {
            p.insert(policy.to_string(), (ready, summary.clone()));
        }
    }
    /// The policy is gone: its series go with it.
    pub fn forget_policy(&self, policy: &str) {
        if let Ok(mut p) = self.policies.lock() {
            p.remove(policy);
        }
    }

    /// A pass of `policy` queued by a detected change.
    pub fn triggered(&self, policy: &str) {
        if let Ok(mut t) = self.triggered.lock() {
            *t.entry(policy.to_string()).or_insert(0) += 1;
        }
    }
    /// Passes queued by detected changes: of one policy, or of all with `None`.
    pub fn triggered_passes(&self, policy: Option<&str>) -> u64 {
        self.triggered
            .lock()
            .map(|t| match policy {
                Some(p) => t.get(p).copied().unwrap_or(0),
                None => t.values().sum(),
            })
            .unwrap_or(0)
    }
    /// A detected drift was repaired `took` after it was seen.
    pub fn drift_repaired(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Ok(mut h) = self.repair_latency.lock() {
            let i = REPAIR_BUCKETS
                .iter()
                .position(|b| secs <= *b)
                .unwrap_or(REPAIR_BUCKETS.len());
            h.counts[i] += 1;
            h.sum += secs;
        }
    }
    pub fn drift_repairs_timed(&self) -> u64 {
        self.repair_latency
            .lock()
            .map(|h| h.counts.iter().sum())
            .unwrap_or(0)
    }
    pub fn refreshes(&self, outcome: &str) -> u64 {
        self.refreshes
            .lock()
            .map(|r| r.get(outcome).copied().unwrap_or(0))
            .unwrap_or(0)
    }
    pub fn set_leader(&self, leading: bool) {
        self.leader.store(leading, Ordering::Relaxed);
    }
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
    pub fn reconciles(&self, result: &str) -> u64 {
        self.reconciles
            .lock()
            .map(|r| r.get(result).copied().unwrap_or(0))
            .unwrap_or(0)
    }
    pub fn errors(&self, class: &str) -> u64 {
        self.errors
            .lock()
            .map(|r| r.get(class).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP kmsroute_reconciles_total Reconciles by result.\n# TYPE kmsroute_reconciles_total counter\n",
        );
        if let Ok(r) = self.reconciles.lock() {
            for (k, v) in r.iter() {
                out.push_str(&format!(
                    "kmsroute_reconciles_total{{result=\"{k}\"}} {v}\n"
                ));
            }
        }
        out.push_str("# HELP kmsroute_reconcile_errors_total Reconcile errors by class.\n# TYPE kmsroute_reconcile_errors_total counter\n");
        if let Ok(r) = self.errors.lock() {
            let mut classes: Vec<&str> = ERROR_CLASSES.to_vec();
            classes.extend(
                r.keys()
                    .map(String::as_str)
                    .filter(|k| !ERROR_CLASSES.contains(k)),
            );
            for k in classes {
                out.push_str(&format!(
                    "kmsroute_reconcile_errors_total{{class=\"{k}\"}} {}\n",
                    r.get(k).copied().unwrap_or(0)
                ));
            }
        }
        self.render_policies(&mut out);
        let sum = self.duration_sum.lock().map(|s| *s).unwrap_or(0.0);
        out.push_str(&format!(
            "# HELP kmsroute_reconcile_duration_seconds Time spent reconciling.\n# TYPE kmsroute_reconcile_duration_seconds summary\nkmsroute_reconcile_duration_seconds_sum {sum}\nkmsroute_reconcile_duration_seconds_count {}\n",
            self.duration_count.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP kmsroute_drift_repairs_total ARM writes that repaired drift.\n# TYPE kmsroute_drift_repairs_total counter\nkmsroute_drift_repairs_total {}\n",
            self.repairs.load(Ordering::Relaxed)
        ));
        self.render_inventory(&mut out);
        out.push_str(&format!(
            "# HELP kmsroute_leader Whether this replica holds the lease.\n# TYPE kmsroute_leader gauge\nkmsroute_leader {}\n",
            u8::from(self.is_leader())
        ));
        out
    }

    fn render_policies(&self, out: &mut String) {
        out.push_str("# HELP kmsroute_policy_ready Whether the policy's last pass left it Ready (1) or not (0).\n# TYPE kmsroute_policy_ready gauge\n");
        let Ok(p) = self.policies.lock() else {
            return;
        };
        for (name, (ready, _)) in p.iter() {
            out.push_str(&format!(
                "kmsroute_policy_ready{{policy=\"{}\"}} {}\n",
                escape(name),
                u8::from(*ready)
            ));
        }
        out.push_str("# HELP kmsroute_policy_subnets Subnets of each policy by state after its last pass.\n# TYPE kmsroute_policy_subnets gauge\n");
        for (name, (_, s)) in p.iter() {
            for (state, n) in [
                ("matched", s.subnets_matched),
                ("in_sync", s.in_sync),
                ("repaired", s.repaired),
                ("conflicts", s.conflicts),
                ("skipped", s.skipped),
                ("errors", s.errors),
                ("released", s.released),
            ] {
                out.push_str(&format!(
                    "kmsroute_policy_subnets{{policy=\"{}\",state=\"{state}\"}} {n}\n",
                    escape(name)
                ));
            }
        }
    }

    fn render_inventory(&self, out: &mut String) {
        let (watched, oldest) = self
            .inventory_reads
            .lock()
            .map(|r| {
                (
                    r.len(),
                    r.values()
                        .map(|t| t.elapsed().as_secs_f64())
                        .fold(0.0, f64::max),
                )
            })
            .unwrap_or((0, 0.0));
        out.push_str(&format!(
            "# HELP kmsroute_inventory_subscriptions Subscriptions the shared inventory refreshes.\n# TYPE kmsroute_inventory_subscriptions gauge\nkmsroute_inventory_subscriptions {watched}\n\
# HELP kmsroute_inventory_max_age_seconds Age of the oldest subscription's last successful read.\n# TYPE kmsroute_inventory_max_age_seconds gauge\nkmsroute_inventory_max_age_seconds {oldest:.3}\n"
        ));
        out.push_str("# HELP kmsroute_inventory_refreshes_total Inventory refreshes by outcome.\n# TYPE kmsroute_inventory_refreshes_total counter\n");
        for outcome in ["changed", "unchanged", "error"] {
            out.push_str(&format!(
                "kmsroute_inventory_refreshes_total{{outcome=\"{outcome}\"}} {}\n",
                self.refreshes(outcome)
            ));
        }
        out.push_str(&format!(
            "# HELP kmsroute_inventory_changes_total Subnets a refresh found changed.\n# TYPE kmsroute_inventory_changes_total counter\nkmsroute_inventory_changes_total {}\n\
# HELP kmsroute_inventory_triggered_passes_total Passes queued because the inventory changed.\n# TYPE kmsroute_inventory_triggered_passes_total counter\nkmsroute_inventory_triggered_passes_total {}\n",
            self.changes.load(Ordering::Relaxed),
            self.triggered_passes(None)
        ));
        out.push_str("# HELP kmsroute_drift_repair_seconds Seconds from a drift seen by an inventory refresh to its repair.\n# TYPE kmsroute_drift_repair_seconds histogram\n");
        let (counts, sum) = self
            .repair_latency
            .lock()
            .map(|h| (h.counts, h.sum))
            .unwrap_or_default();
        let mut cumulative = 0;
        for (i, bound) in REPAIR_BUCKETS.iter().enumerate() {
            cumulative += counts[i];
            out.push_str(&format!(
                "kmsroute_drift_repair_seconds_bucket{{le=\"{bound}\"}} {cumulative}\n"
            ));
        }
        cumulative += counts[REPAIR_BUCKETS.len()];
        out.push_str(&format!(
            "kmsroute_drift_repair_seconds_bucket{{le=\"+Inf\"}} {cumulative}\nkmsroute_drift_repair_seconds_sum {sum:.3}\nkmsroute_drift_repair_seconds_count {cumulative}\n"
        ));
    }
}

/// A label value in the Prometheus text format: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn every_error_class_and_each_policy_is_rendered() {
        let m = ControllerMetrics::default();
        let summary = crate::api::Summary {
            subnets_matched: 5,
            in_sync: 4,
            ..Default::default()
        };
        m.set_policy("spokes", false, &summary);
        let text = m.render();
        assert!(text.contains("kmsroute_reconcile_errors_total{class=\"needs_user_action\"} 0"));
        assert!(text.contains("kmsroute_policy_ready{policy=\"spokes\"} 0"));
        assert!(text.contains("kmsroute_policy_subnets{policy=\"spokes\",state=\"in_sync\"} 4"));
        m.forget_policy("spokes");
        assert!(!m.render().contains("policy=\"spokes\""));
    }
}
