//! What the health endpoints report, kept by the loops that know: the lease loop (did the last
//! attempt reach the API server and the lease namespace, and is it still turning), the leader's
//! controller (has its policy list synced, is it still turning), and the credential check.
//! `/readyz` and `/healthz` read these; nothing here does I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The last time a loop went round.
#[derive(Debug, Default)]
pub struct Heartbeat(Mutex<Option<Instant>>);

impl Heartbeat {
    pub fn beat(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Some(Instant::now());
        }
    }
    /// Time since the last beat; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        self.0.lock().ok().and_then(|t| t.map(|t| t.elapsed()))
    }
}

/// Shared by the controller's loops and the health endpoints.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    /// A token for ARM could be had at the last check.
    pub credentials_ok: Arc<AtomicBool>,
    /// The last lease attempt reached the API server (whether or not it won the lease).
    pub lease_ok: Arc<AtomicBool>,
    /// The leader's policy list has synced; reset when leadership is lost.
    pub watch_synced: Arc<AtomicBool>,
    /// This replica holds the lease.
    pub leading: Arc<AtomicBool>,
    pub lease_loop: Arc<Heartbeat>,
    pub controller_loop: Arc<Heartbeat>,
}

impl Probes {
    /// Ready: Azure credentials work, the API server and the lease namespace can be reached,
    /// and a leader has its cache.
    pub fn ready(&self) -> bool {
        self.credentials_ok.load(Ordering::SeqCst)
            && self.lease_ok.load(Ordering::SeqCst)
            && (!self.leading.load(Ordering::SeqCst) || self.watch_synced.load(Ordering::SeqCst))
    }

    /// Alive: the lease loop (every replica) and the leader's controller loop went round within
    /// `stall`. A loop that has not started yet counts as alive (start-up).
    pub fn alive(&self, stall: Duration) -> bool {
        let fresh = |h: &Heartbeat| h.age().is_none_or(|a| a < stall);
        fresh(&self.lease_loop)
            && (!self.leading.load(Ordering::SeqCst) || fresh(&self.controller_loop))
    }
}

/// Checks the credential now and then: every `every` while it works, sooner while it fails, so
/// readiness follows Entra ID both ways (one failure at boot no longer leaves the pod unready).
pub async fn watch_credentials<F, Fut, E>(check: F, ok: Arc<AtomicBool>, every: Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut retry = Duration::from_secs(1).min(every);
    loop {
        match check().await {
            Ok(()) => {
                if !ok.swap(true, Ordering::SeqCst) {
                    tracing::info!("ARM credentials work");
                }
                retry = Duration::from_secs(1).min(every);
                tokio::time::sleep(every).await;
            }
            Err(e) => {
                if ok.swap(false, Ordering::SeqCst) {
                    tracing::error!(error = %e, "ARM credentials stopped working; /readyz is false");
                } else {
                    tracing::warn!(error = %e, "ARM credentials do not work yet; /readyz is false");
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(every);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test(start_paused = true)]
    async fn readiness_follows_the_credential_down_and_back_up() {
        let ok = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        // Fails twice (an Entra ID outage at boot), works, fails once more, then works.
        let check = move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 || n == 3 {
                    Err(format!("token request {n} failed"))
                } else {
                    Ok(())
                }
            }
        };
        let task = tokio::spawn(watch_credentials(
            check,
            ok.clone(),
            Duration::from_secs(10),
        ));
        let mut seen = Vec::new();
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = ok.load(Ordering::SeqCst);
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        }
        task.abort();
        assert_eq!(seen, vec![false, true, false, true], "{seen:?}");
    }

    #[test]
    fn a_standby_is_ready_without_a_cache_but_not_without_the_lease_namespace() {
        let p = Probes::default();
        p.credentials_ok.store(true, Ordering::SeqCst);
        assert!(!p.ready(), "no lease attempt has reached the API server");
        p.lease_ok.store(true, Ordering::SeqCst);
        assert!(p.ready(), "a standby needs no cache");
        p.leading.store(true, Ordering::SeqCst);
        assert!(!p.ready(), "a leader needs its cache");
        p.watch_synced.store(true, Ordering::SeqCst);
        assert!(p.ready());
    }

    #[test]
    fn a_stalled_loop_fails_liveness() {
        let p = Probes::default();
        assert!(p.alive(Duration::from_secs(1)), "nothing started yet");
        p.lease_loop.beat();
        assert!(p.alive(Duration::from_secs(1)));
        assert!(
            !p.alive(Duration::ZERO),
            "the lease loop is older than the limit"
        );
        p.leading.store(true, Ordering::SeqCst);
        p.controller_loop.beat();
        std::thread::sleep(Duration::from_millis(5));
        p.lease_loop.beat();
        assert!(
            !p.alive(Duration::from_millis(3)),
            "the leader's controller loop stalled"
        );
    }
}
