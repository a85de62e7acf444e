//! The controller's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (ARM credentials work, and the leader's watch has synced).

use crate::azure::metrics::ArmMetrics;
use crate::controller::metrics::ControllerMetrics;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone)]
pub struct Health {
    pub controller: Arc<ControllerMetrics>,
    pub arm: Option<Arc<ArmMetrics>>,
    /// Set once a token could be obtained for ARM.
    pub credentials_ok: Arc<AtomicBool>,
    /// Set once the leader's watch cache has synced.
    pub watch_synced: Arc<AtomicBool>,
}

impl Health {
    pub fn ready(&self) -> bool {
        // A standby replica is ready as soon as it can reach Azure; the leader also needs its cache.
        self.credentials_ok.load(Ordering::SeqCst)
            && (!self.controller.is_leader() || self.watch_synced.load(Ordering::SeqCst))
    }
}

async fn metrics(State(h): State<Health>) -> String {
    let mut out = h.controller.render();
    if let Some(arm) = &h.arm {
        out.push_str(&arm.render());
    }
    out
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, health: Health) -> Result<SocketAddr, String> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}
