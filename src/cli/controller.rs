//! `kmsroute run`: the controller, its metrics and probe server, and graceful shutdown.

use super::args::RunArgs;
use super::error::CliError;
use super::support::connect;
use kmsroute::controller::inventory::InventorySettings;
use kmsroute::controller::{self, Settings, leader::LeaseSettings, metrics::ControllerMetrics};
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) async fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    let RunArgs {
        arm,
        metrics_addr,
        leader_election_namespace: namespace,
        lease_name,
        identity,
        max_resync,
        inventory_refresh,
        inventory_read_share,
        contested_reverts,
        contested_window,
        allowed_identities,
    } = args;
    let inventory = InventorySettings {
        refresh_every: inventory_refresh,
        read_share: inventory_read_share,
    };
    let client = kube::Client::try_default().await?;
    let api = Arc::new(connect(&arm)?);
    // Unique per process unless given: two processes under one identity would both lead.
    let identity = identity.unwrap_or_else(|| {
        let host = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "kmsroute".into());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}_{}", &suffix[..8])
    });
    let metrics = Arc::new(ControllerMetrics::default());
    let probes = kmsroute::controller::Probes::default();
    let lease_duration = std::time::Duration::from_secs(15);
    let health = kmsroute::server::Health {
        controller: metrics.clone(),
        arm: Some(api.metrics.clone()),
        probes: probes.clone(),
        // Three lease periods without the lease loop (or the leader's loop) going round.
        stall_after: lease_duration * 3,
    };
    let bound = kmsroute::server::serve(metrics_addr, health.clone()).await?;
    tracing::info!(%bound, identity = %identity, "serving /metrics, /healthz, /readyz");
    // Readiness follows the credential both ways: re-checked every minute, sooner while failing.
    let checker = api.clone();
    tokio::spawn(kmsroute::controller::probes::watch_credentials(
        move || {
            let api = checker.clone();
            async move { api.check_credentials().await }
        },
        probes.credentials_ok.clone(),
        std::time::Duration::from_secs(60),
    ));
    let settings = Settings {
        cloud: arm.cloud,
        concurrency: arm.concurrency,
        slow_retry: std::time::Duration::from_secs(300),
        base_backoff: std::time::Duration::from_secs(5),
        resync_cap: max_resync,
        resolver: Some(std::sync::Arc::new(kmsroute::dns::SystemResolver)),
        inventory,
        contest: kmsroute::plan::contest::ContestSettings {
            threshold: contested_reverts as usize,
            window_secs: contested_window.as_secs().max(1) as i64,
            ..Default::default()
        },
        allowed_identities: allowed_identities.into_iter().collect(),
        lease: LeaseSettings {
            namespace,
            name: lease_name,
            identity,
            lease_duration,
            renew_every: std::time::Duration::from_secs(5),
        },
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight work and releasing the lease");
        let _ = stop_tx.send(true);
    });
    controller::run(client, api, settings, metrics, probes, stop_rx).await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
