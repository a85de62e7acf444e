//! Controller metrics in the Prometheus text format: reconciles by result, reconcile duration,
//! errors by class, drift repairs, leader state.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct ControllerMetrics {
    reconciles: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    duration_sum: Mutex<f64>,
    duration_count: AtomicU64,
    repairs: AtomicU64,
    leader: AtomicBool,
}

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
            for (k, v) in r.iter() {
                out.push_str(&format!(
                    "kmsroute_reconcile_errors_total{{class=\"{k}\"}} {v}\n"
                ));
            }
        }
        let sum = self.duration_sum.lock().map(|s| *s).unwrap_or(0.0);
        out.push_str(&format!(
            "# HELP kmsroute_reconcile_duration_seconds Time spent reconciling.\n# TYPE kmsroute_reconcile_duration_seconds summary\nkmsroute_reconcile_duration_seconds_sum {sum}\nkmsroute_reconcile_duration_seconds_count {}\n",
            self.duration_count.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP kmsroute_drift_repairs_total ARM writes that repaired drift.\n# TYPE kmsroute_drift_repairs_total counter\nkmsroute_drift_repairs_total {}\n",
            self.repairs.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP kmsroute_leader Whether this replica holds the lease.\n# TYPE kmsroute_leader gauge\nkmsroute_leader {}\n",
            u8::from(self.is_leader())
        ));
        out
    }
}
