//! `kmsroute plan`: what a pass would write, read-only.

use super::args::{ArmArgs, EXIT_INVALID_INPUT, PlanOutput};
use super::error::CliError;
use super::support::{connect, exit_for, load_policies, pass_deps, pass_params};
use kmsroute::executor::{RunMode, pass};
use kmsroute::output::{plan_table, problems_text, problems_text_limited, status_table};
use std::process::ExitCode;

pub(crate) async fn plan(
    file: &str,
    output: PlanOutput,
    summary: bool,
    arm: &ArmArgs,
) -> Result<ExitCode, CliError> {
    let Some(policies) = load_policies(file, arm.cloud)? else {
        return Ok(ExitCode::from(EXIT_INVALID_INPUT));
    };
    let api = connect(arm)?;
    let params = pass_params(arm, RunMode::PlanOnly);
    let report = pass(&api, &policies, &params, &pass_deps(), &|_| {}).await?;
    // Serialized straight from the report: a `serde_json::Value` copy of the plan was half of
    // `plan`'s peak heap at 10,000 subnets, built even for the table output.
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        plan: &'a kmsroute::plan::Plan,
        policies: &'a [kmsroute::executor::PolicyReport],
    }
    let doc = Doc {
        plan: &report.plan,
        policies: &report.policies,
    };
    match output {
        PlanOutput::Table if summary => {
            println!("{} write(s) planned.", report.plan.writes.len());
            print!("{}", status_table(&report));
            print!("{}", problems_text_limited(&report, 10));
        }
        PlanOutput::Table => {
            print!("{}", plan_table(&report.plan));
            print!("{}", problems_text(&report));
        }
        PlanOutput::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        PlanOutput::Yaml => print!(
            "{}",
            serde_saphyr::to_string(&doc).map_err(|e| CliError::Output(e.to_string()))?
        ),
    }
    Ok(exit_for(&report, true))
}
