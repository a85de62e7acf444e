//! The controller's HTTP endpoints: `/metrics` (OpenMetrics text, from `prometheus-client`), `/healthz` (the lease loop,
//! and on the leader the controller loop, are still going round) and `/readyz` (ARM credentials
//! work now, the API server and the lease namespace answer, and a leader has its cache). The
//! facts come from [`Probes`], kept by the loops themselves.

use crate::azure::metrics::ArmMetrics;
use crate::controller::Probes;
use crate::controller::metrics::ControllerMetrics;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Health {
    pub controller: Arc<ControllerMetrics>,
    pub arm: Option<Arc<ArmMetrics>>,
    pub probes: Probes,
    /// A loop that has not gone round for this long is stuck (liveness fails).
    pub stall_after: Duration,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.probes.ready()
    }
    pub fn alive(&self) -> bool {
        self.probes.alive(self.stall_after)
    }
}

/// The OpenMetrics text of the controller's and the ARM client's families, one exposition.
async fn metrics(State(h): State<Health>) -> impl axum::response::IntoResponse {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut out = String::new();
    let _ = encode_registry(&mut out, h.controller.registry());
    if let Some(arm) = &h.arm {
        let _ = encode_registry(&mut out, arm.registry());
    }
    let _ = encode_eof(&mut out);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

async fn healthz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stalled\n")
    }
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The metrics and probe server cannot listen where it was told to.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Serves until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, health: Health) -> Result<SocketAddr, ListenError> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ListenError { addr, source })?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}
