//! `kmsroute emulator`: the ARM emulator on loopback, until Ctrl-C.

use super::args::{EmulatorArgs, ThrottleMode};
use super::error::CliError;
use super::support::read_input;
use kmsroute::emulator::{self, Config, Seed, Throttle};
use std::process::ExitCode;

pub(crate) async fn emulator(a: EmulatorArgs) -> Result<ExitCode, CliError> {
    let seed: Seed = match &a.seed {
        Some(f) => serde_json::from_str(&read_input(f)?)
            .map_err(|e| CliError::Input(format!("{f}: {e}")))?,
        None => Seed::default(),
    };
    let config = Config {
        page_size: a.page_size,
        throttle: (a.throttle == ThrottleMode::Arm).then_some(Throttle::ARM),
        token: a.token,
        lro_duration: std::time::Duration::from_millis(a.lro_ms),
    };
    let handle = emulator::start(config, seed, a.listen).await?;
    println!("listening on {}", handle.url());
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}
