//! `kmsroute emulator`: the ARM emulator on loopback, until Ctrl-C.

use super::args::{EmulatorArgs, ThrottleMode};
use super::error::CliError;
use super::support::{MAX_SEED_FILE, read_bounded};
use kmsroute::emulator::entra::Entra;
use kmsroute::emulator::{self, Config, Seed, Throttle};
use std::process::ExitCode;

pub(crate) async fn emulator(a: EmulatorArgs) -> Result<ExitCode, CliError> {
    let seed: Seed = match &a.seed {
        Some(f) => serde_json::from_str(&read_bounded(f, MAX_SEED_FILE)?)
            .map_err(|e| CliError::Input(format!("{f}: {e}")))?,
        None => Seed::default(),
    };
    let entra: Option<Entra> = match &a.entra {
        Some(f) => Some(
            serde_json::from_str(&read_bounded(f, MAX_SEED_FILE)?)
                .map_err(|e| CliError::Input(format!("{f}: {e}")))?,
        ),
        None => None,
    };
    let config = Config {
        page_size: a.page_size,
        throttle: (a.throttle == ThrottleMode::Arm).then_some(Throttle::ARM),
        token: a.token,
        lro_duration: std::time::Duration::from_millis(a.lro_ms),
        entra,
        activity_log_delay: std::time::Duration::from_millis(a.activity_log_delay_ms),
        link_base: a.misdirect_links_to,
    };
    let playing_entra = config.entra.is_some();
    let handle = emulator::start(config, seed, a.listen).await?;
    println!("listening on {}", handle.url());
    if playing_entra {
        println!(
            "Entra ID: AZURE_AUTHORITY_HOST={}/ (token endpoint /{{tenant}}/oauth2/v2.0/token)",
            handle.url()
        );
    }
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}
