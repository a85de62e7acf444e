//! Counters and latency histograms of every ARM call, by operation and HTTP status, on the
//! Prometheus project's client (`prometheus-client`: families, label escaping, the text
//! format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    operation: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Budget {
    subscription: String,
    kind: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Debug)]
pub struct ArmMetrics {
    registry: Registry,
    calls: Family<Call, Counter>,
    latency: Family<Operation, Histogram, fn() -> Histogram>,
    /// Effective-route reads by outcome: `ok`, `error`, `limited` (budget spent, not sent).
    verification: Family<Outcome, Counter>,
    /// What ARM last said was left of each subscription's budget, by (subscription, kind).
    remaining: Family<Budget, Gauge<f64, AtomicU64>>,
    /// The operation labels seen (the client's families cannot be iterated).
    operations: Mutex<BTreeSet<String>>,
}

impl Default for ArmMetrics {
    fn default() -> Self {
        let calls = Family::<Call, Counter>::default();
        let latency = Family::<Operation, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let verification = Family::<Outcome, Counter>::default();
        let remaining = Family::<Budget, Gauge<f64, AtomicU64>>::default();
        let mut registry = Registry::default();
        registry.register(
            "kmsroute_arm_requests",
            "ARM HTTP requests by operation and status",
            calls.clone(),
        );
        registry.register(
            "kmsroute_effective_route_reads",
            "Effective-route verification reads by outcome (ok, error, limited: the verification budget was spent and the read not sent)",
            verification.clone(),
        );
        registry.register(
            "kmsroute_arm_ratelimit_remaining",
            "What ARM last reported as left of a subscription's request budget (x-ms-ratelimit-remaining-subscription-*)",
            remaining.clone(),
        );
        registry.register(
            "kmsroute_arm_request_duration_seconds",
            "ARM HTTP request latency",
            latency.clone(),
        );
        // Rendered at 0 until they happen, so panels and alerts can use them.
        for outcome in ["ok", "error", "limited"] {
            drop(verification.get_or_create(&Outcome {
                outcome: outcome.into(),
            }));
        }
        ArmMetrics {
            registry,
            calls,
            latency,
            verification,
            remaining,
            operations: Mutex::default(),
        }
    }
}

impl ArmMetrics {
    /// Records one HTTP attempt: `status` is the code, or `timeout` / `error`.
    pub fn record(&self, operation: &str, status: &str, elapsed: Duration) {
        self.calls
            .get_or_create(&Call {
                operation: operation.into(),
                status: status.into(),
            })
            .inc();
        self.latency
            .get_or_create(&Operation {
                operation: operation.into(),
            })
            .observe(elapsed.as_secs_f64());
        if let Ok(mut ops) = self.operations.lock()
            && !ops.contains(operation)
        {
            ops.insert(operation.to_string());
        }
    }

    /// ARM's `x-ms-ratelimit-remaining-subscription-{reads,writes}` for a subscription.
    pub fn remaining(&self, subscription: &str, read: bool, remaining: f64) {
        self.remaining
            .get_or_create(&Budget {
                subscription: subscription.into(),
                kind: if read { "reads" } else { "writes" }.into(),
            })
            .set(remaining);
    }

    /// Counts one effective-route read by outcome (`ok`, `error`, `limited`).
    pub fn verification(&self, outcome: &str) {
        self.verification
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Effective-route reads so far with this outcome.
    pub fn verification_count(&self, outcome: &str) -> u64 {
        self.verification
            .get(&Outcome {
                outcome: outcome.into(),
            })
            .map_or(0, |c| c.get())
    }

    /// Calls so far for an operation and status.
    pub fn count(&self, operation: &str, status: &str) -> u64 {
        self.calls
            .get(&Call {
                operation: operation.into(),
                status: status.into(),
            })
            .map_or(0, |c| c.get())
    }

    /// Calls so far with a status, over all operations.
    pub fn count_status(&self, status: &str) -> u64 {
        self.operations()
            .iter()
            .map(|op| self.count(op, status))
            .sum()
    }

    /// Every operation label seen so far (e.g. `PUT routes`).
    pub fn operations(&self) -> Vec<String> {
        self.operations
            .lock()
            .map(|o| o.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The families, for the metrics endpoint.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text of these metrics alone (what `/metrics` serves beside the others).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
