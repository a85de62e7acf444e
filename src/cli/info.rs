//! The subcommands that only print what kmsroute knows: `crd`, `endpoints`, `demo`.

use super::args::Output;
use super::error::CliError;
use kmsroute::catalog::Cloud;
use std::process::ExitCode;

pub(crate) fn crd() -> Result<ExitCode, CliError> {
    print!(
        "{}",
        kmsroute::api::crd_yaml().map_err(|e| CliError::Output(e.to_string()))?
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn endpoints(cloud: Option<Cloud>, output: Output) -> Result<ExitCode, CliError> {
    let clouds: Vec<Cloud> = cloud.map_or_else(|| Cloud::ALL.to_vec(), |c| vec![c]);
    let eps: Vec<_> = clouds.iter().map(|c| c.endpoints()).collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&eps)?),
        Output::Table => {
            println!("{:<18} {:<16} {:<5} HOSTS", "CLOUD", "ADDRESS", "PORT");
            for e in eps {
                let retired = if e.retired.is_some() {
                    "  (retired)"
                } else {
                    ""
                };
                for a in e.kms_addresses {
                    println!(
                        "{:<18} {:<16} {:<5} {}{retired}",
                        e.cloud.name(),
                        a.to_string(),
                        e.kms_port,
                        e.kms_hosts.join(","),
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn demo() -> Result<ExitCode, CliError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    kmsroute::demo::run(&mut out).await?;
    Ok(ExitCode::SUCCESS)
}

/// `kmsroute completions SHELL`: the completion script on stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> Result<ExitCode, CliError> {
    use clap::CommandFactory;
    let mut cmd = super::args::Cli::command();
    clap_complete::generate(shell, &mut cmd, "kmsroute", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `kmsroute probe URL`: 0 when the URL answers 200, else 1 with why.
pub(crate) async fn probe(url: &str, timeout: std::time::Duration) -> Result<ExitCode, CliError> {
    let parsed = url::Url::parse(url).map_err(|e| CliError::Input(format!("{url}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(CliError::Input(format!("{url}: not an http(s) URL")));
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| CliError::Output(e.to_string()))?;
    match client.get(parsed).send().await {
        Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
            println!("{url}: 200 OK");
            Ok(ExitCode::SUCCESS)
        }
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            eprintln!("{url}: {status}: {}", body.trim());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
