//! What each subcommand does, on the library's layers.

use super::args::*;
use super::support::*;
use kmsroute::api;
use kmsroute::catalog::Cloud;
use kmsroute::output::{plan_table, problems_text, status_table};
use kmsroute::reconcile::{Options, Progress, RunMode, reconcile};
use std::io::IsTerminal;
use std::process::ExitCode;

pub(crate) async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Run {
            arm,
            metrics_addr,
            leader_election_namespace,
            lease_name,
            identity,
            max_resync,
            inventory_refresh,
            inventory_read_share,
        } => {
            run_controller(
                arm,
                metrics_addr,
                leader_election_namespace,
                lease_name,
                identity,
                max_resync,
                kmsroute::controller::inventory::InventorySettings {
                    refresh_every: inventory_refresh,
                    read_share: inventory_read_share,
                },
            )
            .await
        }
        Command::Demo => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            kmsroute::demo::run(&mut out).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            file,
            output,
            summary,
            arm,
        } => {
            let Some(policies) = load_policies(&file, arm.cloud)? else {
                return Ok(ExitCode::from(EXIT_INVALID_INPUT));
            };
            let api = connect(&arm)?;
            let options = Options {
                mode: RunMode::PlanOnly,
                concurrency: arm.concurrency,
                only_policy: None,
                resolver: Some(std::sync::Arc::new(kmsroute::dns::SystemResolver)),
                ..Options::default()
            };
            let report = match reconcile(&api, &policies, &options, &|_| {}).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(EXIT_AZURE_FAILED));
                }
            };
            // Serialized straight from the report: a `serde_json::Value` copy of the plan was
            // half of `plan`'s peak heap at 10,000 subnets, built even for the table output.
            #[derive(serde::Serialize)]
            struct Doc<'a> {
                plan: &'a kmsroute::plan::Plan,
                policies: &'a [kmsroute::reconcile::PolicyReport],
            }
            let doc = Doc {
                plan: &report.plan,
                policies: &report.policies,
            };
            match output {
                PlanOutput::Table if summary => {
                    println!("{} write(s) planned.", report.plan.writes.len());
                    print!("{}", status_table(&report));
                    print!("{}", kmsroute::output::problems_text_limited(&report, 10));
                }
                PlanOutput::Table => {
                    print!("{}", plan_table(&report.plan));
                    print!("{}", problems_text(&report));
                }
                PlanOutput::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
                ),
                PlanOutput::Yaml => print!(
                    "{}",
                    serde_saphyr::to_string(&doc).map_err(|e| e.to_string())?
                ),
            }
            Ok(exit_for(&report, true))
        }
        Command::Apply { file, yes, arm } => {
            let Some(policies) = load_policies(&file, arm.cloud)? else {
                return Ok(ExitCode::from(EXIT_INVALID_INPUT));
            };
            let api = connect(&arm)?;
            // Ctrl-C stops issuing writes; those in flight finish. A second one aborts.
            let interrupt = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            {
                let interrupt = interrupt.clone();
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        interrupt.store(true, std::sync::atomic::Ordering::SeqCst);
                        eprintln!(
                            "\ninterrupted: finishing the writes in flight, starting no more (Ctrl-C again to abort)"
                        );
                        if tokio::signal::ctrl_c().await.is_ok() {
                            std::process::exit(130);
                        }
                    }
                });
            }
            let mut approved: Option<std::sync::Arc<Vec<kmsroute::plan::PlannedWrite>>> = None;
            if !yes {
                let preview = match reconcile(
                    &api,
                    &policies,
                    &Options {
                        mode: RunMode::PlanOnly,
                        concurrency: arm.concurrency,
                        only_policy: None,
                        resolver: Some(std::sync::Arc::new(kmsroute::dns::SystemResolver)),
                        ..Options::default()
                    },
                    &|_| {},
                )
                .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(ExitCode::from(EXIT_AZURE_FAILED));
                    }
                };
                print!("{}", plan_table(&preview.plan));
                if preview.plan.writes.is_empty() {
                    print!("{}", status_table(&preview));
                    print!("{}", problems_text(&preview));
                    return Ok(exit_for(&preview, false));
                }
                if !confirm(preview.plan.writes.len())? {
                    println!("Nothing written.");
                    return Ok(ExitCode::from(EXIT_CHANGES_PENDING));
                }
                approved = Some(std::sync::Arc::new(preview.plan.writes));
            }
            let tty = std::io::stderr().is_terminal();
            let report = loop {
                let progress = move |p: Progress| show_progress(p, tty);
                let report = match reconcile(
                    &api,
                    &policies,
                    &Options {
                        mode: RunMode::Apply,
                        concurrency: arm.concurrency,
                        only_policy: None,
                        resolver: Some(std::sync::Arc::new(kmsroute::dns::SystemResolver)),
                        approved: approved.clone(),
                        interrupt: Some(interrupt.clone()),
                        ..Options::default()
                    },
                    &progress,
                )
                .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(ExitCode::from(EXIT_AZURE_FAILED));
                    }
                };
                if !report.approval_stale {
                    break report;
                }
                // Azure changed between the preview and now: show what differs, ask again.
                let before: Vec<String> = approved
                    .as_deref()
                    .map(|w| w.iter().map(|w| w.write.to_string()).collect())
                    .unwrap_or_default();
                let now: Vec<String> = report
                    .plan
                    .writes
                    .iter()
                    .map(|w| w.write.to_string())
                    .collect();
                println!(
                    "Azure changed since the plan you approved; nothing was written. The plan now:"
                );
                for w in before.iter().filter(|w| !now.contains(w)) {
                    println!("  - {w}");
                }
                for w in now.iter().filter(|w| !before.contains(w)) {
                    println!("  + {w}");
                }
                if report.plan.writes.is_empty() {
                    println!("Nothing left to write.");
                    break report;
                }
                if !confirm(report.plan.writes.len())? {
                    println!("Nothing written.");
                    return Ok(ExitCode::from(EXIT_CHANGES_PENDING));
                }
                approved = Some(std::sync::Arc::new(report.plan.writes.clone()));
            };
            if tty {
                eprintln!();
            }
            println!(
                "{} write(s) done, {} failed.",
                report.writes_done(),
                report.writes_failed()
            );
            print!("{}", status_table(&report));
            print!("{}", problems_text(&report));
            if interrupt.load(std::sync::atomic::Ordering::SeqCst) {
                println!(
                    "interrupted after {} of {} writes; run again to continue",
                    report.writes_done(),
                    report.plan.writes.len()
                );
                return Ok(ExitCode::from(EXIT_INTERRUPTED));
            }
            Ok(exit_for(&report, false))
        }
        Command::Emulator {
            listen,
            seed,
            page_size,
            throttle,
            token,
            lro_ms,
        } => {
            use kmsroute::emulator::{self, Config, Seed, Throttle};
            let seed: Seed = match seed {
                Some(f) => {
                    serde_json::from_str(&read_input(&f)?).map_err(|e| format!("{f}: {e}"))?
                }
                None => Seed::default(),
            };
            let config = Config {
                page_size,
                throttle: (throttle == ThrottleMode::Arm).then_some(Throttle::ARM),
                token,
                lro_duration: std::time::Duration::from_millis(lro_ms),
            };
            let handle = emulator::start(config, seed, listen).await?;
            println!("listening on {}", handle.url());
            tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd => {
            print!("{}", api::crd_yaml().map_err(|e| e.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoints { cloud, output } => {
            let clouds: Vec<Cloud> = cloud.map_or_else(|| Cloud::ALL.to_vec(), |c| vec![c]);
            let eps: Vec<_> = clouds.iter().map(|c| c.endpoints()).collect();
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&eps).map_err(|e| e.to_string())?
                ),
                Output::Table => {
                    println!("{:<18} {:<16} {:<5} HOSTS", "CLOUD", "ADDRESS", "PORT");
                    for e in eps {
                        for a in e.kms_addresses {
                            println!(
                                "{:<18} {:<16} {:<5} {}{}",
                                e.cloud.name(),
                                a.to_string(),
                                e.kms_port,
                                e.kms_hosts.join(","),
                                if e.retired.is_some() {
                                    "  (retired)"
                                } else {
                                    ""
                                }
                            );
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file, cloud } => {
            let text = read_input(&file)?;
            let docs = api::parse_policies(&text)?;
            if docs.is_empty() {
                return Err(format!("{file}: no policies found"));
            }
            let mut invalid = 0;
            for doc in docs {
                let label = doc
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("document {}", doc.index));
                let result = doc.check(cloud);
                match result {
                    Ok(v) => {
                        println!(
                            "{label}: valid ({} destination(s), cloud {})",
                            v.desired.destinations.len(),
                            v.desired.cloud
                        );
                        for w in v.warnings {
                            println!("  warning: {w}");
                        }
                    }
                    Err(errors) => {
                        invalid += 1;
                        println!("{label}: invalid");
                        for e in errors {
                            println!("  {e}");
                        }
                    }
                }
            }
            Ok(if invalid == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

pub(crate) async fn run_controller(
    arm: ArmArgs,
    metrics_addr: std::net::SocketAddr,
    namespace: String,
    lease_name: String,
    identity: Option<String>,
    max_resync: Option<std::time::Duration>,
    inventory: kmsroute::controller::inventory::InventorySettings,
) -> Result<ExitCode, String> {
    use kmsroute::controller::{self, Settings, leader::LeaseSettings, metrics::ControllerMetrics};
    use std::sync::Arc;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("Kubernetes client: {e}"))?;
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

pub(crate) async fn shutdown_signal() {
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
