//! `kmsroute apply`: plan, confirm, write, re-read, report.

use super::args::{ArmArgs, EXIT_CHANGES_PENDING, EXIT_INTERRUPTED, EXIT_INVALID_INPUT, Output};
use super::error::CliError;
use super::support::{
    confirm, connect, exit_for, load_policies, pass_deps, pass_params, show_progress,
};
use kmsroute::executor::{PassDeps, PassParams, Progress, Report, RunMode, pass};
use kmsroute::output::{plan_table, problems_text, status_table};
use kmsroute::plan::PlannedWrite;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Text for people: on stdout, or on stderr when stdout carries JSON.
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if $json { eprint!($($arg)*) } else { print!($($arg)*) }
    };
}

pub(crate) async fn apply(
    file: &str,
    yes: bool,
    output: Output,
    arm: &ArmArgs,
) -> Result<ExitCode, CliError> {
    let json = matches!(output, Output::Json);
    let Some(policies) = load_policies(file, arm.cloud)? else {
        return Ok(ExitCode::from(EXIT_INVALID_INPUT));
    };
    let api = connect(arm)?;
    let interrupt = stop_on_ctrl_c();
    let mut approved: Option<Arc<Vec<PlannedWrite>>> = None;
    if !yes {
        let params = pass_params(arm, RunMode::PlanOnly);
        let preview = pass(&api, &policies, &params, &pass_deps(), &|_| {}).await?;
        say!(json, "{}", plan_table(&preview.plan));
        if preview.plan.writes.is_empty() {
            if json {
                print_json(&preview, false)?;
            } else {
                print!("{}", status_table(&preview));
                print!("{}", problems_text(&preview));
            }
            return Ok(exit_for(&preview, false));
        }
        if !confirm(preview.plan.writes.len())? {
            say!(json, "Nothing written.\n");
            return Ok(ExitCode::from(EXIT_CHANGES_PENDING));
        }
        approved = Some(Arc::new(preview.plan.writes));
    }
    let tty = std::io::stderr().is_terminal();
    let report = loop {
        let progress = move |p: Progress| show_progress(p, tty, json);
        let params = PassParams {
            approved: approved.clone(),
            ..pass_params(arm, RunMode::Write)
        };
        let deps = PassDeps {
            interrupt: Some(interrupt.clone()),
            ..pass_deps()
        };
        let report = pass(&api, &policies, &params, &deps, &progress).await?;
        if !report.approval_stale {
            break report;
        }
        // Azure changed between the preview and now: show what differs, ask again.
        say!(
            json,
            "{}",
            changed_plan(approved.as_deref().map(Vec::as_slice), &report)
        );
        if report.plan.writes.is_empty() {
            say!(json, "Nothing left to write.\n");
            break report;
        }
        if !confirm(report.plan.writes.len())? {
            say!(json, "Nothing written.\n");
            return Ok(ExitCode::from(EXIT_CHANGES_PENDING));
        }
        approved = Some(Arc::new(report.plan.writes.clone()));
    };
    if tty {
        eprintln!();
    }
    let interrupted = interrupt.load(Ordering::SeqCst);
    if json {
        print_json(&report, interrupted)?;
    } else {
        println!(
            "{} write(s) done, {} failed.",
            report.writes_done(),
            report.writes_failed()
        );
        print!("{}", status_table(&report));
        print!("{}", problems_text(&report));
    }
    if interrupted {
        say!(
            json,
            "interrupted after {} of {} writes; run again to continue\n",
            report.writes_done(),
            report.plan.writes.len()
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    Ok(exit_for(&report, false))
}

/// `apply -o json`: the writes made (each with its error, if it failed) and every policy's
/// counts and problems after the pass.
fn print_json(report: &Report, interrupted: bool) -> Result<(), CliError> {
    #[derive(serde::Serialize)]
    struct Outcome<'a> {
        #[serde(flatten)]
        write: &'a PlannedWrite,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Applied<'a> {
        writes_planned: usize,
        writes_done: usize,
        writes_failed: usize,
        interrupted: bool,
        writes: Vec<Outcome<'a>>,
        policies: &'a [kmsroute::executor::PolicyReport],
    }
    let doc = Applied {
        writes_planned: report.plan.writes.len(),
        writes_done: report.writes_done(),
        writes_failed: report.writes_failed(),
        interrupted,
        writes: report
            .outcomes()
            .map(|(write, e)| Outcome {
                write,
                error: e.map(ToString::to_string),
            })
            .collect(),
        policies: &report.policies,
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// Ctrl-C stops issuing writes; those in flight finish. A second one aborts.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
            eprintln!(
                "\ninterrupted: finishing the writes in flight, starting no more (Ctrl-C again to abort)"
            );
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        }
    });
    interrupt
}

/// The writes that left and joined the plan since the one approved.
fn changed_plan(approved: Option<&[PlannedWrite]>, report: &Report) -> String {
    let before: Vec<String> = approved
        .map(|w| w.iter().map(|w| w.write.to_string()).collect())
        .unwrap_or_default();
    let now: Vec<String> = report
        .plan
        .writes
        .iter()
        .map(|w| w.write.to_string())
        .collect();
    let mut out = "Azure changed since the plan you approved; nothing was written. The plan now:\n"
        .to_string();
    for w in before.iter().filter(|w| !now.contains(w)) {
        out.push_str(&format!("  - {w}\n"));
    }
    for w in now.iter().filter(|w| !before.contains(w)) {
        out.push_str(&format!("  + {w}\n"));
    }
    out
}
