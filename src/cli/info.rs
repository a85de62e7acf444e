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
