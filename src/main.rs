//! The `kmsroute` command line: thin wiring over the library's layers.

use clap::{Parser, Subcommand, ValueEnum};
use kmsroute::api::{self, validate_policy};
use kmsroute::catalog::Cloud;
use std::io::Read;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kmsroute",
    version,
    about = "Declarative, self-healing KMS activation routes for force-tunneled Azure subnets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the KmsRoutePolicy CustomResourceDefinition as YAML.
    Crd,
    /// Print the built-in catalog of KMS endpoints.
    Endpoints {
        /// Only this cloud (AzurePublic, AzureUSGovernment, AzureChina, AzureGermany).
        #[arg(long, value_parser = Cloud::parse)]
        cloud: Option<Cloud>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Serve the local ARM emulator (Microsoft.Network subset) on loopback, for tests and demos.
    Emulator {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Estate to start with: `{"resources": [ARM resource JSON…], "learnedRoutes": […]}`.
        #[arg(long)]
        seed: Option<String>,
        /// Items per list page before a nextLink.
        #[arg(long, default_value_t = 100)]
        page_size: usize,
        #[arg(long, value_enum, default_value = "off")]
        throttle: ThrottleMode,
        /// Accept only this bearer token (any non-empty one when absent).
        #[arg(long)]
        token: Option<String>,
        /// How long long-running operations stay InProgress, in milliseconds.
        #[arg(long, default_value_t = 0)]
        lro_ms: u64,
    },
    /// Check policies in a file (multi-document YAML; `-` for stdin). Exit 0 valid, 2 invalid.
    Validate {
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// The cloud a policy without spec.kms.cloud routes (the controller's cloud).
        #[arg(long, env = "KMSROUTE_CLOUD", default_value = "AzurePublic", value_parser = Cloud::parse)]
        cloud: Cloud,
    },
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum ThrottleMode {
    Off,
    /// ARM's documented per-subscription buckets.
    Arm,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Emulator {
            listen,
            seed,
            page_size,
            throttle,
            token,
            lro_ms,
        } => {
            use kmsroute::emulator::{self, Config, Seed, Throttle};
            let seed: Seed = match seed {
                Some(f) => {
                    serde_json::from_str(&read_input(&f)?).map_err(|e| format!("{f}: {e}"))?
                }
                None => Seed::default(),
            };
            let config = Config {
                page_size,
                throttle: (throttle == ThrottleMode::Arm).then_some(Throttle::ARM),
                token,
                lro_duration: std::time::Duration::from_millis(lro_ms),
            };
            let handle = emulator::start(config, seed, listen).await?;
            println!("listening on {}", handle.url());
            tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd => {
            print!("{}", api::crd_yaml().map_err(|e| e.to_string())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoints { cloud, output } => {
            let clouds: Vec<Cloud> = cloud.map_or_else(|| Cloud::ALL.to_vec(), |c| vec![c]);
            let eps: Vec<_> = clouds.iter().map(|c| c.endpoints()).collect();
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&eps).map_err(|e| e.to_string())?
                ),
                Output::Table => {
                    println!("{:<18} {:<16} {:<5} HOSTS", "CLOUD", "ADDRESS", "PORT");
                    for e in eps {
                        for a in e.kms_addresses {
                            println!(
                                "{:<18} {:<16} {:<5} {}{}",
                                e.cloud.name(),
                                a.to_string(),
                                e.kms_port,
                                e.kms_hosts.join(","),
                                if e.retired.is_some() {
                                    "  (retired)"
                                } else {
                                    ""
                                }
                            );
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { file, cloud } => {
            let text = read_input(&file)?;
            let docs = api::parse_policies(&text)?;
            if docs.is_empty() {
                return Err(format!("{file}: no policies found"));
            }
            let mut invalid = 0;
            for doc in docs {
                let label = doc
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("document {}", doc.index));
                let result = doc.policy.and_then(|p| validate_policy(&p, cloud));
                match result {
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
                ExitCode::from(2)
            })
        }
    }
}

fn read_input(file: &str) -> Result<String, String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading stdin: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))
    }
}
