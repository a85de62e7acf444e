//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas are safe: only the
//! holder reconciles. The holder renews every `renew_every`; a replica takes over once the
//! lease has gone unrenewed for `lease_duration`. A failed renewal reports the loss at once, so
//! writes stop immediately rather than when the lease would have expired.
//!
//! Two processes must never share an identity: one would renew the other's lease and both would
//! lead. A replica that finds the lease freshly held under its own identity, before it ever held
//! it, refuses to run.

use super::probes::Probes;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Why a lease attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "the lease {0} is held by another process with this replica's identity {1:?}; give each replica its own --identity"
    )]
    IdentityInUse(String, String),
}

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// This process has held the lease (so finding it under our identity is our own renewal).
    held: AtomicBool,
}

impl LeaderElector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            held: AtomicBool::new(false),
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquired.or(Some(MicroTime(Timestamp::now()))),
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt: true when this replica holds the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let won = self.attempt().await?;
        if won {
            self.held.store(true, Ordering::SeqCst);
        }
        Ok(won)
    }

    async fn attempt(&self) -> Result<bool, LeaseError> {
        let name = &self.settings.name;
        let Some(mut lease) = self.api.get_opt(name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.settings.identity;
        let duration =
            SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| t.0 + duration < Timestamp::now());
        if !ours && !holder.is_empty() && !expired {
            return Ok(false);
        }
        if ours && !expired && !self.held.load(Ordering::SeqCst) {
            return Err(LeaseError::IdentityInUse(
                format!("{}/{}", self.settings.namespace, name),
                holder,
            ));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(transitions, acquired));
        // The resourceVersion in `lease` makes this a compare-and-swap: two replicas racing for
        // an expired lease cannot both win.
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up (on shutdown) so another replica takes over without waiting.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(&self.settings.name).await?
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.settings.identity.as_str())
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await?;
        }
        Ok(())
    }

    /// Runs until `stop` turns true, publishing leadership on `tx` and its health on `probes`;
    /// releases the lease at the end. Returns an error when this replica must not run.
    pub async fn run(
        self,
        tx: watch::Sender<bool>,
        mut stop: watch::Receiver<bool>,
        probes: Probes,
    ) -> Result<(), LeaseError> {
        loop {
            probes.lease_loop.beat();
            // Bounded: the kube client retries a 503 with backoff for longer than a lease lasts,
            // and a replica still waiting on its renewal must not go on acting as leader while
            // another one may take the lease (found by the API-server-unavailable fault test).
            let attempt = tokio::time::timeout(
                self.settings.lease_duration / 2,
                self.try_acquire_or_renew(),
            );
            let leading = match attempt.await {
                Ok(Ok(l)) => {
                    probes.lease_ok.store(true, Ordering::SeqCst);
                    l
                }
                Ok(Err(e @ LeaseError::IdentityInUse(..))) => {
                    tracing::error!(error = %e, "refusing to run");
                    probes.lease_ok.store(false, Ordering::SeqCst);
                    let _ = tx.send(false);
                    return Err(e);
                }
                Ok(Err(e)) => {
                    // Also a lease namespace that does not exist: not ready, never leading.
                    tracing::warn!(error = %e, "lease renewal failed");
                    probes.lease_ok.store(false, Ordering::SeqCst);
                    false
                }
                Err(_) => {
                    probes.lease_ok.store(false, Ordering::SeqCst);
                    tracing::warn!(
                        timeout = ?(self.settings.lease_duration / 2),
                        "lease renewal timed out; stepping down"
                    );
                    false
                }
            };
            if *tx.borrow() != leading {
                tracing::info!(leading, identity = %self.settings.identity, "leadership changed");
                let _ = tx.send(leading);
            }
            let pause = if leading {
                self.settings.renew_every
            } else {
                self.settings.renew_every.min(Duration::from_secs(2))
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
        let _ = tx.send(false);
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the lease");
        }
        Ok(())
    }
}
