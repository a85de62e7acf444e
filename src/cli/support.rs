//! Helpers the subcommands share: logging, confirmation, reading policies, connecting, the
//! options of a pass, exit codes, progress.

use super::args::*;
use super::error::CliError;
use kmsroute::api::{self, DesiredState};
use kmsroute::azure::client::{AzureNetworkApi, ClientSettings};
use kmsroute::azure::credential::credential;
use kmsroute::catalog::Cloud;
use kmsroute::executor::{PassDeps, PassParams, Progress, Report, RunMode};
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

pub(crate) fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Whatever RUST_LOG says: the Azure SDK crates never log below info (a second filter every
    // line must pass, not a directive a more specific one outranks), and every line is
    // redacted before it is written (`kmsroute::logging`).
    let cap = tracing_subscriber::filter::filter_fn(|meta| {
        kmsroute::logging::sdk_cap(meta.target(), meta.level())
    });
    // Colour only on a terminal, and never with NO_COLOR (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let writer = kmsroute::logging::Redacting(std::io::stderr);
    let layer = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(cap))
        .try_init();
}

/// Asks to go ahead with `writes` writes; refuses (an error) when stdin is not a terminal.
pub(crate) fn confirm(writes: usize) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Input(
            "refusing to write without confirmation: stdin is not a terminal; pass --yes".into(),
        ));
    }
    // On stderr, like the preview under `-o json`: stdout stays the command's output.
    eprint!("Apply {writes} write(s) to Azure? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Reads and validates every policy in a file; prints problems and returns `None` if any is invalid.
pub(crate) fn load_policies(
    file: &str,
    cloud: Cloud,
) -> Result<Option<Vec<DesiredState>>, CliError> {
    let docs =
        api::parse_policies(&read_input(file)?).map_err(|e| CliError::Input(e.to_string()))?;
    if docs.is_empty() {
        return Err(CliError::Input(format!("{file}: no policies found")));
    }
    let mut policies = Vec::new();
    let mut invalid = false;
    for doc in docs {
        let label = doc.label();
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

pub(crate) fn connect(arm: &ArmArgs) -> Result<AzureNetworkApi, CliError> {
    let endpoint = arm
        .arm_endpoint
        .clone()
        .unwrap_or_else(|| arm.cloud.endpoints().arm_endpoint.to_string());
    let url = url::Url::parse(&endpoint)
        .map_err(|e| CliError::Input(format!("--arm-endpoint {endpoint}: {e}")))?;
    let cred = credential(arm.auth, &url, arm.cloud)?;
    let factory = kmsroute::azure::credential::identity_factory(
        arm.auth,
        &url,
        arm.cloud,
        std::sync::Arc::new(kmsroute::azure::credential::ProcessEnv),
        kmsroute::azure::identity::EntraRetry::default(),
        cred.clone(),
    );
    let api = AzureNetworkApi::new(url, cred, ClientSettings::default())?;
    api.set_identity_factory(factory);
    Ok(api)
}

/// The parameters of a CLI pass: the flags' concurrency, every policy.
pub(crate) fn pass_params(arm: &ArmArgs, mode: RunMode) -> PassParams {
    PassParams {
        mode,
        concurrency: arm.concurrency,
        ..PassParams::default()
    }
}

/// The dependencies of a CLI pass: a listing through the port, the system resolver.
pub(crate) fn pass_deps() -> PassDeps {
    PassDeps {
        resolver: Some(std::sync::Arc::new(kmsroute::dns::SystemResolver)),
        ..PassDeps::default()
    }
}

pub(crate) fn exit_for(report: &Report, plan_only: bool) -> ExitCode {
    if report.has_problems() {
        ExitCode::from(EXIT_PROBLEMS)
    } else if plan_only && !report.plan.writes.is_empty() {
        ExitCode::from(EXIT_CHANGES_PENDING)
    } else {
        ExitCode::SUCCESS
    }
}

/// A pass's progress on stderr (a bar on a terminal), or, when stderr is not a terminal, one
/// line per write on stdout (on stderr too when stdout carries JSON: `quiet_stdout`).
pub(crate) fn show_progress(p: Progress, tty: bool, quiet_stdout: bool) {
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
        } => {
            let line = match error {
                None => format!("[{done}/{total}] {write}: ok"),
                Some(e) => format!("[{done}/{total}] {write}: FAILED: {e}"),
            };
            if quiet_stdout {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
}

pub(crate) fn read_input(file: &str) -> Result<String, CliError> {
    read_bounded(file, MAX_POLICY_FILE)
}

/// The most a policy file (or stdin) may hold: 16 MiB, a thousand policies of the largest size
/// the API server stores (1.5 MiB each would not fit, but no real policy comes near it).
pub(crate) const MAX_POLICY_FILE: u64 = 16 << 20;
/// The most an emulator seed or Entra file may hold (a 100,000-subnet estate is ~60 MiB).
pub(crate) const MAX_SEED_FILE: u64 = 1 << 30;

/// Reads a file, or stdin for `-`, refusing more than `limit` bytes (`/dev/zero` or a runaway
/// pipe is an input error, not an allocator failure).
pub(crate) fn read_bounded(file: &str, limit: u64) -> Result<String, CliError> {
    let source = if file == "-" { "stdin" } else { file };
    let reader: Box<dyn Read> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(file)
                .map_err(|e| CliError::Input(format!("reading {file}: {e}")))?,
        )
    };
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::Input(format!("reading {source}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(CliError::Input(format!(
            "{source}: more than {} MiB; refusing to read further (the limit of this input)",
            limit >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|e| CliError::Input(format!("{source}: not UTF-8 text: {e}")))
}
