//! Controller metrics on the Prometheus project's client (`prometheus-client`): reconciles by
//! result, reconcile duration, errors by class, drift repairs and how long they took, the
//! shared inventory's refreshes and age, leader state, each policy's readiness and counts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

/// Upper bounds of the drift-repair histogram, in seconds.
const REPAIR_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0,
];

/// Upper bounds of the reconcile-duration histogram, in seconds.
const PASS_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

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

/// The states of `kmsroute_policy_subnets`.
const SUBNET_STATES: [&str; 7] = [
    "matched",
    "in_sync",
    "repaired",
    "conflicts",
    "skipped",
    "errors",
    "released",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByResult {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByClass {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByOutcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByPolicy {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByPolicyState {
    policy: String,
    state: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn histogram(buckets: &'static [f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

#[derive(Debug)]
pub struct ControllerMetrics {
    registry: Registry,
    reconciles: Family<ByResult, Counter>,
    errors: Family<ByClass, Counter>,
    duration: Histogram,
    repairs: Counter,
    leader: Gauge,
    inventory_subscriptions: Gauge,
    inventory_max_age: FloatGauge,
    refreshes: Family<ByOutcome, Counter>,
    changes: Counter,
    triggered_total: Counter,
    repair_latency: Histogram,
    /// How many repairs the histogram holds (the client reads a histogram's count only in its
    /// own tests).
    repairs_timed: Counter,
    ready: Family<ByPolicy, Gauge>,
    subnets: Family<ByPolicyState, Gauge>,
    reverts: Family<ByPolicy, Counter>,
    contested: Family<ByPolicy, Gauge>,
    /// Last successful inventory read per subscription (the age gauges are set from it when
    /// the metrics are read).
    inventory_reads: Mutex<HashMap<String, Instant>>,
    /// Passes queued because the inventory changed, by policy (the metric is their total).
    triggered: Mutex<BTreeMap<String, u64>>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        let m = ControllerMetrics {
            registry: Registry::default(),
            reconciles: Family::default(),
            errors: Family::default(),
            duration: histogram(&PASS_BUCKETS),
            repairs: Counter::default(),
            leader: Gauge::default(),
            inventory_subscriptions: Gauge::default(),
            inventory_max_age: FloatGauge::default(),
            refreshes: Family::default(),
            changes: Counter::default(),
            triggered_total: Counter::default(),
            repair_latency: histogram(&REPAIR_BUCKETS),
            repairs_timed: Counter::default(),
            ready: Family::default(),
            subnets: Family::default(),
            reverts: Family::default(),
            contested: Family::default(),
            inventory_reads: Mutex::default(),
            triggered: Mutex::default(),
        };
        for class in ERROR_CLASSES {
            drop(m.errors.get_or_create(&ByClass {
                class: class.into(),
            }));
        }
        for outcome in ["changed", "unchanged", "error"] {
            drop(m.refreshes.get_or_create(&ByOutcome {
                outcome: outcome.into(),
            }));
        }
        m.register()
    }
}

impl ControllerMetrics {
    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "kmsroute_reconciles",
            "Reconciles by result",
            self.reconciles.clone(),
        );
        r.register(
            "kmsroute_reconcile_errors",
            "Reconcile errors by class",
            self.errors.clone(),
        );
        r.register(
            "kmsroute_policy_ready",
            "Whether the policy's last pass left it Ready (1) or not (0)",
            self.ready.clone(),
        );
        r.register(
            "kmsroute_policy_subnets",
            "Subnets of each policy by state after its last pass",
            self.subnets.clone(),
        );
        r.register(
            "kmsroute_reconcile_duration_seconds",
            "Time spent reconciling",
            self.duration.clone(),
        );
        r.register(
            "kmsroute_drift_repairs",
            "ARM writes that repaired drift",
            self.repairs.clone(),
        );
        r.register(
            "kmsroute_inventory_subscriptions",
            "Subscriptions the shared inventory refreshes",
            self.inventory_subscriptions.clone(),
        );
        r.register(
            "kmsroute_inventory_max_age_seconds",
            "Age of the oldest subscription's last successful read",
            self.inventory_max_age.clone(),
        );
        r.register(
            "kmsroute_inventory_refreshes",
            "Inventory refreshes by outcome",
            self.refreshes.clone(),
        );
        r.register(
            "kmsroute_inventory_changes",
            "Subnets a refresh found changed",
            self.changes.clone(),
        );
        r.register(
            "kmsroute_inventory_triggered_passes",
            "Passes queued because the inventory changed",
            self.triggered_total.clone(),
        );
        r.register(
            "kmsroute_drift_repair_seconds",
            "Seconds from a drift seen by an inventory refresh to its repair",
            self.repair_latency.clone(),
        );
        r.register(
            "kmsroute_reverts",
            "Route tables where a pass restored kmsroute's own earlier write (someone undid it)",
            self.reverts.clone(),
        );
        r.register(
            "kmsroute_contested_tables",
            "Route tables of the policy that something keeps rewriting",
            self.contested.clone(),
        );
        r.register(
            "kmsroute_leader",
            "Whether this replica holds the lease",
            self.leader.clone(),
        );
        self
    }

    pub fn reconcile_done(&self, result: &str, took: Duration) {
        self.reconciles
            .get_or_create(&ByResult {
                result: result.into(),
            })
            .inc();
        self.duration.observe(took.as_secs_f64());
    }
    pub fn error(&self, class: &str) {
        self.errors
            .get_or_create(&ByClass {
                class: class.into(),
            })
            .inc();
    }
    pub fn repairs(&self, writes: u64) {
        self.repairs.inc_by(writes);
    }
    /// One inventory refresh of `subscription`: `Some(n)` read with n subnets changed, `None` failed.
    pub fn inventory_refreshed(&self, subscription: &str, changed: Option<u64>) {
        let outcome = match changed {
            None => "error",
            Some(0) => "unchanged",
            Some(n) => {
                self.changes.inc_by(n);
                "changed"
            }
        };
        if changed.is_some()
            && let Ok(mut r) = self.inventory_reads.lock()
        {
            r.insert(subscription.to_string(), Instant::now());
        }
        self.refreshes
            .get_or_create(&ByOutcome {
                outcome: outcome.into(),
            })
            .inc();
    }
    /// The subscription is no longer watched.
    pub fn inventory_forget(&self, subscription: &str) {
        if let Ok(mut r) = self.inventory_reads.lock() {
            r.remove(subscription);
        }
    }
    /// A policy's readiness and counts after a pass.
    pub fn set_policy(&self, policy: &str, ready: bool, summary: &crate::api::Summary) {
        self.ready
            .get_or_create(&ByPolicy {
                policy: policy.into(),
            })
            .set(i64::from(ready));
        let counts = [
            summary.subnets_matched,
            summary.in_sync,
            summary.repaired,
            summary.conflicts,
            summary.skipped,
            summary.errors,
            summary.released,
        ];
        for (state, n) in SUBNET_STATES.into_iter().zip(counts) {
            self.subnets
                .get_or_create(&ByPolicyState {
                    policy: policy.into(),
                    state: state.into(),
                })
                .set(n);
        }
    }
    /// A pass's reverts and the policy's contested tables after it.
    pub fn contests(&self, policy: &str, reverts: usize, contested: usize) {
        let key = ByPolicy {
            policy: policy.into(),
        };
        self.reverts.get_or_create(&key).inc_by(reverts as u64);
        self.contested.get_or_create(&key).set(contested as i64);
    }
    /// Reverts counted for `policy` so far.
    pub fn reverts_of(&self, policy: &str) -> u64 {
        self.reverts
            .get(&ByPolicy {
                policy: policy.into(),
            })
            .map(|c| c.get())
            .unwrap_or(0)
    }
    /// The policy's contested tables now.
    pub fn contested_of(&self, policy: &str) -> i64 {
        self.contested
            .get(&ByPolicy {
                policy: policy.into(),
            })
            .map(|g| g.get())
            .unwrap_or(0)
    }
    /// The policy is gone: its series go with it.
    pub fn forget_policy(&self, policy: &str) {
        self.ready.remove(&ByPolicy {
            policy: policy.into(),
        });
        self.reverts.remove(&ByPolicy {
            policy: policy.into(),
        });
        self.contested.remove(&ByPolicy {
            policy: policy.into(),
        });
        for state in SUBNET_STATES {
            self.subnets.remove(&ByPolicyState {
                policy: policy.into(),
                state: state.into(),
            });
        }
    }

    /// A pass of `policy` queued by a detected change.
    pub fn triggered(&self, policy: &str) {
        self.triggered_total.inc();
        if let Ok(mut t) = self.triggered.lock() {
            *t.entry(policy.to_string()).or_insert(0) += 1;
        }
    }
    /// Passes queued by detected changes: of one policy, or of all with `None`.
    pub fn triggered_passes(&self, policy: Option<&str>) -> u64 {
        match policy {
            None => self.triggered_total.get(),
            Some(p) => self
                .triggered
                .lock()
                .map(|t| t.get(p).copied().unwrap_or(0))
                .unwrap_or(0),
        }
    }
    /// A detected drift was repaired `took` after it was seen.
    pub fn drift_repaired(&self, took: Duration) {
        self.repair_latency.observe(took.as_secs_f64());
        self.repairs_timed.inc();
    }
    pub fn drift_repairs_timed(&self) -> u64 {
        self.repairs_timed.get()
    }
    pub fn refreshes(&self, outcome: &str) -> u64 {
        self.refreshes
            .get(&ByOutcome {
                outcome: outcome.into(),
            })
            .map_or(0, |c| c.get())
    }
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }
    pub fn reconciles(&self, result: &str) -> u64 {
        self.reconciles
            .get(&ByResult {
                result: result.into(),
            })
            .map_or(0, |c| c.get())
    }
    pub fn errors(&self, class: &str) -> u64 {
        self.errors
            .get(&ByClass {
                class: class.into(),
            })
            .map_or(0, |c| c.get())
    }

    /// Sets what is measured when the metrics are read (the inventory's age), and returns the
    /// families.
    pub fn registry(&self) -> &Registry {
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
        self.inventory_subscriptions
            .set(i64::try_from(watched).unwrap_or(i64::MAX));
        self.inventory_max_age.set(oldest);
        &self.registry
    }

    /// The Prometheus text of these metrics alone.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, self.registry());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let m = ControllerMetrics::default();
        m.set_policy("a\"b\\c\nd", true, &crate::api::Summary::default());
        let text = m.render();
        assert!(
            text.contains(r#"kmsroute_policy_ready{policy="a\"b\\c\nd"} 1"#),
            "{text}"
        );
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

    #[test]
    fn counters_histograms_and_gauges_read_back() {
        let m = ControllerMetrics::default();
        m.reconcile_done("ok", Duration::from_millis(300));
        m.error("throttled");
        m.drift_repaired(Duration::from_secs(12));
        m.triggered("p");
        m.inventory_refreshed("s", Some(3));
        m.set_leader(true);
        assert_eq!(
            (
                m.reconciles("ok"),
                m.errors("throttled"),
                m.drift_repairs_timed()
            ),
            (1, 1, 1)
        );
        assert_eq!(
            (m.triggered_passes(Some("p")), m.triggered_passes(None)),
            (1, 1)
        );
        assert!(m.is_leader());
        let text = m.render();
        for line in [
            "kmsroute_reconciles_total{result=\"ok\"} 1",
            "kmsroute_drift_repair_seconds_bucket{le=\"15.0\"} 1",
            "kmsroute_drift_repair_seconds_count 1",
            "kmsroute_inventory_changes_total 3",
            "kmsroute_inventory_subscriptions 1",
            "kmsroute_leader 1",
            "kmsroute_reconcile_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
