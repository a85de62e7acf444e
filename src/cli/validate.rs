//! `kmsroute validate`: every policy in a file checked as the API server would, offline.

use super::args::Output;
use super::error::CliError;
use super::support::read_input;
use kmsroute::api;
use kmsroute::catalog::Cloud;
use std::process::ExitCode;

/// One policy's verdict, as `-o json` prints it.
#[derive(serde::Serialize)]
struct Checked {
    /// `metadata.name`, or `document N`.
    name: String,
    valid: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<api::FieldError>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destinations: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cloud: Option<String>,
}

pub(crate) fn validate(file: &str, cloud: Cloud, output: Output) -> Result<ExitCode, CliError> {
    let text = read_input(file)?;
    let docs = api::parse_policies(&text).map_err(|e| CliError::Input(e.to_string()))?;
    if docs.is_empty() {
        return Err(CliError::Input(format!("{file}: no policies found")));
    }
    let checked: Vec<Checked> = docs
        .iter()
        .map(|doc| match doc.check(cloud) {
            Ok(v) => Checked {
                name: doc.label(),
                valid: true,
                errors: Vec::new(),
                warnings: v.warnings.iter().map(ToString::to_string).collect(),
                destinations: Some(v.desired.destinations.len()),
                cloud: Some(v.desired.cloud.to_string()),
            },
            Err(errors) => Checked {
                name: doc.label(),
                valid: false,
                errors,
                warnings: Vec::new(),
                destinations: None,
                cloud: None,
            },
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&checked)?),
        Output::Table => {
            for c in &checked {
                if c.valid {
                    println!(
                        "{}: valid ({} destination(s), cloud {})",
                        c.name,
                        c.destinations.unwrap_or_default(),
                        c.cloud.as_deref().unwrap_or_default()
                    );
                    for w in &c.warnings {
                        println!("  warning: {w}");
                    }
                } else {
                    println!("{}: invalid", c.name);
                    for e in &c.errors {
                        println!("  {e}");
                    }
                }
            }
        }
    }
    Ok(if checked.iter().all(|c| c.valid) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::args::EXIT_INVALID_INPUT)
    })
}
