//! The `kmsroute` command line: thin wiring over the library's layers.

use clap::{Parser, Subcommand, ValueEnum};
use kmsroute::api::{self, DesiredState};
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::credential::{AuthMode, credential};
use kmsroute::catalog::Cloud;
use kmsroute::output::{plan_table, problems_text, status_table};
use kmsroute::reconcile::{Options, Progress, Report, RunMode, reconcile};
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

/// Exit codes of `plan` and `apply` (documented in the README).
const EXIT_CHANGES_PENDING: u8 = 1;
const EXIT_INVALID_INPUT: u8 = 2;
const EXIT_PROBLEMS: u8 = 3;
const EXIT_AZURE_FAILED: u8 = 4;
/// Ctrl-C during `apply` (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// Where and how to reach ARM.
#[derive(clap::Args)]
struct ArmArgs {
    /// ARM endpoint (default: the cloud's, e.g. https://management.azure.com). A loopback URL
    /// (the emulator) needs no credentials.
    #[arg(long, env = "KMSROUTE_ARM_ENDPOINT")]
    arm_endpoint: Option<String>,
    #[arg(long, value_enum, default_value = "auto", env = "KMSROUTE_AUTH")]
    auth: AuthMode,
    /// The cloud a policy without spec.kms.cloud routes, and the default ARM endpoint.
    #[arg(long, env = "KMSROUTE_CLOUD", default_value = "AzurePublic", value_parser = Cloud::parse)]
    cloud: Cloud,
    /// Route tables written in parallel per subscription (ARM's per-subscription budget, not
    /// this number, paces the writes; in the controller also the policies reconciled at once).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[derive(Parser)]
#[command(
    name = "kmsroute",
    version,
    about = "Declarative, self-healing KMS activation routes for force-tunneled Azure subnets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr as text or JSON, in every subcommand (levels from RUST_LOG; default
    /// info for `run`, warn for the others).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "KMSROUTE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Print the KmsRoutePolicy CustomResourceDefinition as YAML.
    Crd,
    /// Print the built-in catalog of KMS endpoints.
    Endpoints {
        /// Only this cloud (AzurePublic, AzureUSGovernment, AzureChina, AzureGermany).
        #[arg(long, value_parser = Cloud::parse)]
        cloud: Option<Cloud>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Serve the local ARM emulator (Microsoft.Network subset) on loopback, for tests and demos.
    Emulator {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Estate to start with: `{"resources": [ARM resource JSON…], "learnedRoutes": […]}`.
        #[arg(long)]
        seed: Option<String>,
        /// Items per list page before a nextLink.
        #[arg(long, default_value_t = 100)]
        page_size: usize,
        #[arg(long, value_enum, default_value = "off")]
        throttle: ThrottleMode,
        /// Accept only this bearer token (any non-empty one when absent).
        #[arg(long)]
        token: Option<String>,
        /// How long long-running operations stay InProgress, in milliseconds.
        #[arg(long, default_value_t = 0)]
        lro_ms: u64,
    },
    /// Show what reconcile would change for the policies in FILE. Reads only.
    /// Exit 0 nothing to do, 1 changes pending, 2 invalid input, 3 conflicts/errors, 4 Azure failed.
    Plan {
        #[arg(short = 'f', long = "filename")]
        file: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: PlanOutput,
        /// Counts per policy and the first 10 problems, instead of every subnet and write.
        #[arg(long)]
        summary: bool,
        #[command(flatten)]
        arm: ArmArgs,
    },
    /// Reconcile the policies in FILE once, without a cluster. Exit 0 converged, 1 not approved,
    /// 2 invalid input (or no terminal to confirm on without --yes), 3 conflicts/errors remain,
    /// 4 Azure failed, 130 interrupted (Ctrl-C: in-flight writes finish, no new ones start).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        arm: ArmArgs,
    },
    /// The zero-setup tour on the embedded ARM emulator.
    Demo,
    /// The Kubernetes controller (kubeconfig or in-cluster): leader election, metrics, health.
    Run {
        #[command(flatten)]
        arm: ArmArgs,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "KMSROUTE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
        metrics_addr: std::net::SocketAddr,
        /// Namespace of the leader-election Lease (Events of the cluster-scoped policies go to `default`).
        #[arg(long, env = "POD_NAMESPACE", default_value = "kmsroute")]
        leader_election_namespace: String,
        #[arg(long, default_value = "kmsroute-leader")]
        lease_name: String,
        /// This replica's identity in the Lease (default: the pod or host name and a random
        /// suffix, unique per process). A second process given an identity that holds the
        /// lease refuses to run.
        #[arg(long)]
        identity: Option<String>,
        /// Cap on every policy's resyncInterval (e.g. `2m`).
        #[arg(long, value_parser = parse_duration_arg)]
        max_resync: Option<std::time::Duration>,
        /// Pause between two inventory refreshes of one subscription (drift is seen within it).
        #[arg(long, env = "KMSROUTE_INVENTORY_REFRESH", default_value = "15s", value_parser = parse_duration_arg)]
        inventory_refresh: std::time::Duration,
        /// Most of a subscription's ARM read rate the inventory refreshes may use (0 < share <= 1).
        #[arg(long, env = "KMSROUTE_INVENTORY_READ_SHARE", default_value_t = 0.05, value_parser = parse_share)]
        inventory_read_share: f64,
    },
    /// Check policies in a file (multi-document YAML; `-` for stdin). Exit 0 valid, 2 invalid.
    Validate {
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// The cloud a policy without spec.kms.cloud routes (the controller's cloud).
        #[arg(long, env = "KMSROUTE_CLOUD", default_value = "AzurePublic", value_parser = Cloud::parse)]
        cloud: Cloud,
    },
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ThrottleMode {
    Off,
    /// ARM's documented per-subscription buckets.
    Arm,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum PlanOutput {
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async_main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates its own heap arena (up to 8 per core), and a pass
/// that builds its inventory on one worker and frees it on another leaves freed memory in
/// several: 7% of `apply`'s peak RSS at 10,000 subnets. Two arenas, set before any thread runs.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn async_main() -> ExitCode {
    let cli = Cli::parse();
    // `run` logs at info; every other subcommand logs warnings (retries, unreachable
    // endpoints) to stderr; RUST_LOG and --log-format work for all of them.
    let level = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.log_format, level);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
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

fn init_logging(format: LogFormat, default_level: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Whatever RUST_LOG says: azure_core logs every request with its headers at debug (the
    // bearer token included), so the Azure SDK crates never log below info.
    for target in ["azure_core", "azure_identity", "azure_mgmt_network"] {
        if let Ok(d) = format!("{target}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    // Colour only on a terminal, and never with NO_COLOR (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Asks to go ahead with `writes` writes; refuses (an error) when stdin is not a terminal.
fn confirm(writes: usize) -> Result<bool, String> {
    if !std::io::stdin().is_terminal() {
        return Err(
            "refusing to write without confirmation: stdin is not a terminal; pass --yes".into(),
        );
    }
    print!("Apply {writes} write(s) to Azure? [y/N] ");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    kmsroute::api::parse_duration(s)
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 (exclusive) and 1")),
    }
}

async fn run_controller(
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

/// Reads and validates every policy in a file; prints problems and returns `None` if any is invalid.
fn load_policies(file: &str, cloud: Cloud) -> Result<Option<Vec<DesiredState>>, String> {
    let docs = api::parse_policies(&read_input(file)?)?;
    if docs.is_empty() {
        return Err(format!("{file}: no policies found"));
    }
    let mut policies = Vec::new();
    let mut invalid = false;
    for doc in docs {
        let label = doc
            .name
            .clone()
            .unwrap_or_else(|| format!("document {}", doc.index));
        match doc.check(cloud) {
            Ok(v) => {
                for w in v.warnings {
                    eprintln!("warning: {label}: {w}");
                }
                policies.push(v.desired);
            }
            Err(errors) => {
                invalid = true;
                eprintln!("{label}: invalid");
                for e in errors {
                    eprintln!("  {e}");
                }
            }
        }
    }
    Ok((!invalid).then_some(policies))
}

fn connect(arm: &ArmArgs) -> Result<AzureNetworkApi, String> {
    let endpoint = arm
        .arm_endpoint
        .clone()
        .unwrap_or_else(|| arm.cloud.endpoints().arm_endpoint.to_string());
    let url = url::Url::parse(&endpoint).map_err(|e| format!("--arm-endpoint {endpoint}: {e}"))?;
    let cred = credential(arm.auth, &url, arm.cloud)?;
    AzureNetworkApi::new(url, cred, ClientSettings::default())
}

fn exit_for(report: &Report, plan_only: bool) -> ExitCode {
    if report.has_problems() {
        ExitCode::from(EXIT_PROBLEMS)
    } else if plan_only && !report.plan.writes.is_empty() {
        ExitCode::from(EXIT_CHANGES_PENDING)
    } else {
        ExitCode::SUCCESS
    }
}

fn show_progress(p: Progress, tty: bool) {
    match p {
        Progress::Observed {
            subscriptions,
            subnets,
            route_tables,
        } => {
            eprintln!(
                "observed {subscriptions} subscription(s): {subnets} subnet(s), {route_tables} route table(s)"
            );
        }
        Progress::Planned { writes } => eprintln!("planned {writes} write(s)"),
        Progress::Wrote {
            done, total, error, ..
        } if tty => {
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(width);
            eprint!(
                "\r[{}{}] {done}/{total} writes{}",
                "#".repeat(filled),
                ".".repeat(width - filled),
                if error.is_some() {
                    " (some failed)"
                } else {
                    ""
                }
            );
            let _ = std::io::stderr().flush();
        }
        Progress::Wrote {
            done,
            total,
            write,
            error,
        } => match error {
            None => println!("[{done}/{total}] {write}: ok"),
            Some(e) => println!("[{done}/{total}] {write}: FAILED: {e}"),
        },
    }
}

fn read_input(file: &str) -> Result<String, String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading stdin: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))
    }
}
