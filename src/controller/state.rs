//! What the controller remembers of each policy between passes, one [`PolicyState`] per
//! policy behind one lock that is never held across an `await`: its checked spec, the
//! failures its backoff counts, when its last good pass ran, whether a change of its subnets
//! is waiting for a pass, whether errors only a human can fix hold it back, and the last
//! message of each Event reason (so a steady condition does not spam).

use crate::api::{DesiredState, FieldError, KmsRoutePolicy, validate_policy};
use crate::catalog::Cloud;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A spec checked by (uid, generation): the desired state, or why it is invalid.
pub type Checked = Result<DesiredState, Vec<FieldError>>;

/// One policy's memory.
#[derive(Debug, Default)]
pub struct PolicyState {
    /// The spec checked at (uid, generation); a generation is a spec.
    checked: Option<((Option<String>, i64), Checked)>,
    /// Failed reconciles in a row (the backoff's step).
    failures: u32,
    /// Generation and time of the last fully successful pass. Our own status writes come back
    /// as watch events; they must not cost another pass of ARM reads.
    last_pass: Option<(Option<i64>, Instant)>,
    /// When the inventory first saw a change of the policy's subnets that no pass has looked
    /// at yet (the start of the drift-repair latency).
    dirty: Option<Instant>,
    /// The generation whose last pass failed on errors only a human can fix (401/403, a policy
    /// denial), and the end of the slow timer: the status that pass wrote comes back as a watch
    /// event; it must not buy another round of refused writes.
    held_back: Option<(Option<i64>, Instant)>,
    /// The last message the API server accepted per Event reason.
    events_sent: HashMap<String, String>,
    /// What is kmsroute's in the policy's tables, the reverts of it, and who did them
    /// (`contested.rs`); created at the first pass.
    contest: Option<super::contested::PolicyContests>,
}

/// Every policy's state, by name.
#[derive(Debug, Default)]
pub struct Policies {
    states: Mutex<HashMap<String, PolicyState>>,
    /// Specs checked so far (for tests and the debug log: a generation is checked once).
    checks: std::sync::atomic::AtomicU64,
}

impl Policies {
    /// Runs `f` on one policy's state (created empty when new).
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut PolicyState) -> T) -> T {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        f(states.entry(name.to_string()).or_default())
    }

    /// The policy's spec checked against the CRD and `validate`, once per (uid, generation);
    /// an object without a generation is checked every time.
    pub fn check(&self, policy: &KmsRoutePolicy, cloud: Cloud) -> Checked {
        let key = policy
            .meta()
            .generation
            .map(|g| (policy.meta().uid.clone(), g));
        let name = policy.name_any();
        if let Some(key) = &key
            && let Some(found) = self.with(&name, |s| {
                s.checked
                    .as_ref()
                    .filter(|(k, _)| k == key)
                    .map(|(_, c)| c.clone())
            })
        {
            return found;
        }
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let checked = validate_policy(policy, cloud).map(|v| v.desired);
        if let Some(key) = key {
            self.with(&name, |s| s.checked = Some((key, checked.clone())));
        }
        checked
    }

    /// How many specs were checked (not served from the cache).
    pub fn checks(&self) -> u64 {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a failed reconcile and returns how many failed in a row.
    pub fn failed(&self, name: &str) -> u32 {
        self.with(name, |s| {
            s.failures = s.failures.saturating_add(1);
            s.failures
        })
    }

    /// A reconcile succeeded: the backoff starts over.
    pub fn succeeded(&self, name: &str) {
        self.with(name, |s| s.failures = 0);
    }

    /// A change of the policy's subnets waits for a pass (the first sighting counts).
    pub fn mark_dirty(&self, name: &str, seen: Instant) {
        self.with(name, |s| {
            s.dirty.get_or_insert(seen);
        });
    }

    /// The waiting change, if any, now that a pass looks.
    pub fn take_dirty(&self, name: &str) -> Option<Instant> {
        self.with(name, |s| s.dirty.take())
    }

    /// A fully successful pass of this generation: the resync schedule starts now, and no
    /// hold is left.
    pub fn passed(&self, name: &str, generation: Option<i64>) {
        self.with(name, |s| {
            s.last_pass = Some((generation, Instant::now()));
            s.held_back = None;
        });
    }

    /// The pass had failed writes: the next reconcile runs one whatever the schedule.
    pub fn pass_incomplete(&self, name: &str) {
        self.with(name, |s| s.last_pass = None);
    }

    /// Holds this generation's passes back until `until` (errors only a human can fix).
    pub fn hold_back(&self, name: &str, generation: Option<i64>, until: Instant) {
        self.with(name, |s| s.held_back = Some((generation, until)));
    }

    /// How long to wait before a pass is due, when none is: the user-action timer runs, or
    /// nothing the user controls changed since the last good pass (a status-only update) and
    /// the resync interval has not nearly elapsed.
    pub fn not_yet(
        &self,
        name: &str,
        generation: Option<i64>,
        resync: Duration,
    ) -> Option<Duration> {
        let now = Instant::now();
        self.with(name, |s| {
            if let Some((g, until)) = s.held_back
                && g == generation
                && until > now
            {
                return Some(until - now);
            }
            match s.last_pass {
                Some((g, at)) if g == generation && at.elapsed() < resync.mul_f64(0.9) => {
                    Some(resync.saturating_sub(at.elapsed()))
                }
                _ => None,
            }
        })
    }

    /// True when `note` is news for this Event reason (not the last one the API server
    /// accepted for it).
    pub fn event_is_news(&self, name: &str, reason: &str, note: &str) -> bool {
        self.with(name, |s| {
            s.events_sent.get(reason).map(String::as_str) != Some(note)
        })
    }

    /// The API server accepted this Event: the same note is not news any more. Only then: a
    /// refused or lost Event is sent again by the next pass.
    pub fn event_sent(&self, name: &str, reason: &str, note: &str) {
        self.with(name, |s| {
            s.events_sent.insert(reason.to_string(), note.to_string());
        });
    }

    /// Runs `f` on the policy's contest state (made by `make` the first time), under the lock:
    /// `f` must not wait on anything.
    pub fn contest<T>(
        &self,
        name: &str,
        make: impl FnOnce() -> super::contested::PolicyContests,
        f: impl FnOnce(&mut super::contested::PolicyContests) -> T,
    ) -> T {
        self.with(name, |s| f(s.contest.get_or_insert_with(make)))
    }

    /// Forgets the last message of an Event reason: the next one is sent whatever it says.
    pub fn forget_event(&self, name: &str, reason: &str) {
        self.with(name, |s| {
            s.events_sent.remove(reason);
        });
    }

    /// Forgets the policy (it was deleted).
    pub fn forget(&self, name: &str) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.remove(name);
    }
}

/// The backoff before retry `failures` (1-based): `base` doubling to `cap`.
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn policy(generation: i64, subscription: &str) -> KmsRoutePolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kmsroute.io/v1alpha1", "kind": "KmsRoutePolicy",
            "metadata": {"name": "p", "uid": "u1", "generation": generation},
            "spec": {"selector": {"subscriptions": [subscription]}}
        }))
        .expect("a policy")
    }

    /// Issue 27, defect 2: the backoff counted 1 whenever its lock was busy. Failures now
    /// count under a lock that waits, so a reconcile failing while another task holds the
    /// state still backs off further.
    #[test]
    fn failures_count_even_while_another_task_holds_the_state() {
        let policies = Arc::new(Policies::default());
        let (held_tx, held) = std::sync::mpsc::channel::<()>();
        let holder = {
            let policies = policies.clone();
            std::thread::spawn(move || {
                let _guard = policies.states.lock();
                let _ = held_tx.send(());
                // Held while the failures below are counted (the counts do not depend on it).
                std::thread::sleep(Duration::from_millis(50));
            })
        };
        held.recv().expect("the holder holds the state");
        let counting = {
            let policies = policies.clone();
            std::thread::spawn(move || (0..3).map(|_| policies.failed("p")).collect::<Vec<_>>())
        };
        let _ = holder.join();
        assert_eq!(counting.join().ok(), Some(vec![1, 2, 3]));
        let base = Duration::from_secs(1);
        let steps: Vec<Duration> = [1, 2, 3]
            .into_iter()
            .map(|n| backoff(n, base, Duration::from_secs(300)))
            .collect();
        assert_eq!(steps, [base, base * 2, base * 4]);
        policies.succeeded("p");
        assert_eq!(policies.failed("p"), 1);
    }

    /// Issue 27, defect 4: a spec is checked once per generation, errors included, so the
    /// pass, the cleanup and the change fan-out all use the one cached answer.
    #[test]
    fn a_spec_is_checked_once_per_generation_errors_included() {
        let policies = Policies::default();
        let good = policy(1, "00000000-0000-0000-0000-000000000001");
        for _ in 0..3 {
            assert!(policies.check(&good, Cloud::AzurePublic).is_ok());
        }
        assert_eq!(policies.checks(), 1);
        let bad = policy(2, "not-a-guid");
        for _ in 0..3 {
            let errors = policies
                .check(&bad, Cloud::AzurePublic)
                .expect_err("an invalid subscription");
            assert!(
                errors.iter().any(|e| e.path.contains("subscriptions")),
                "{errors:?}"
            );
        }
        assert_eq!(policies.checks(), 2);
    }

    #[test]
    fn a_status_only_update_waits_for_the_schedule_and_a_hold_for_its_timer() {
        let policies = Policies::default();
        let resync = Duration::from_secs(600);
        assert_eq!(policies.not_yet("p", Some(1), resync), None);
        policies.passed("p", Some(1));
        assert!(policies.not_yet("p", Some(1), resync).is_some());
        assert_eq!(
            policies.not_yet("p", Some(2), resync),
            None,
            "a new generation is due"
        );
        policies.pass_incomplete("p");
        assert_eq!(policies.not_yet("p", Some(1), resync), None);
        policies.hold_back("p", Some(1), Instant::now() + Duration::from_secs(60));
        assert!(policies.not_yet("p", Some(1), resync).is_some());
        assert_eq!(policies.not_yet("p", Some(2), resync), None);
    }

    #[test]
    fn an_event_is_news_once_until_forgotten() {
        let policies = Policies::default();
        assert!(policies.event_is_news("p", "Conflict", "a"));
        // Not accepted yet (refused, or the API server unreachable): still news.
        assert!(policies.event_is_news("p", "Conflict", "a"));
        policies.event_sent("p", "Conflict", "a");
        assert!(!policies.event_is_news("p", "Conflict", "a"));
        assert!(policies.event_is_news("p", "Conflict", "b"));
        policies.event_sent("p", "Conflict", "b");
        policies.forget_event("p", "Conflict");
        assert!(policies.event_is_news("p", "Conflict", "b"));
    }
}
