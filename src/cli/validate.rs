//! `kmsroute validate`: every policy in a file checked as the API server would, offline.

use super::error::CliError;
use super::support::read_input;
use kmsroute::api;
use kmsroute::catalog::Cloud;
use std::process::ExitCode;

pub(crate) fn validate(file: &str, cloud: Cloud) -> Result<ExitCode, CliError> {
    let text = read_input(file)?;
    let docs = api::parse_policies(&text).map_err(|e| CliError::Input(e.to_string()))?;
    if docs.is_empty() {
        return Err(CliError::Input(format!("{file}: no policies found")));
    }
    let mut invalid = 0;
    for doc in docs {
        let label = doc.label();
        match doc.check(cloud) {
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
        ExitCode::from(super::args::EXIT_INVALID_INPUT)
    })
}
