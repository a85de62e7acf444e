//! Which subcommand runs: the dispatch, each subcommand in its own file beside this one.

use super::args::{Cli, Command};
use super::error::CliError;
use std::process::ExitCode;

pub(crate) async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run(args) => super::controller::run(args).await,
        Command::Demo => super::info::demo().await,
        Command::Plan {
            file,
            output,
            summary,
            arm,
        } => super::plan::plan(&file, output, summary, &arm).await,
        Command::Apply {
            file,
            yes,
            output,
            arm,
        } => super::apply::apply(&file, yes, output, &arm).await,
        Command::Emulator(args) => super::emulator::emulator(args).await,
        Command::Crd => super::info::crd(),
        Command::Endpoints { cloud, output } => super::info::endpoints(cloud, output),
        Command::Validate {
            file,
            cloud,
            output,
        } => super::validate::validate(&file, cloud, output),
        Command::Completions { shell } => super::info::completions(shell),
        Command::Probe { url, timeout } => super::info::probe(&url, timeout).await,
    }
}
