//! The command line's shape: subcommands, flags and their parsers, exit codes.

use clap::{Parser, Subcommand, ValueEnum};
use kmsroute::azure::credential::AuthMode;
use kmsroute::catalog::Cloud;
use kmsroute::ids::Invalid;

/// Exit codes of `plan` and `apply` (documented in the README).
pub(crate) const EXIT_CHANGES_PENDING: u8 = 1;
pub(crate) const EXIT_INVALID_INPUT: u8 = 2;
pub(crate) const EXIT_PROBLEMS: u8 = 3;
pub(crate) const EXIT_AZURE_FAILED: u8 = 4;
/// Ctrl-C during `apply` (128 + SIGINT, as shells report it).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// Where and how to reach ARM.
#[derive(clap::Args)]
pub(crate) struct ArmArgs {
    /// ARM endpoint (default: the cloud's, e.g. https://management.azure.com). A loopback URL
    /// (the emulator) needs no credentials.
    #[arg(long, env = "KMSROUTE_ARM_ENDPOINT")]
    pub(crate) arm_endpoint: Option<String>,
    /// How to authenticate to ARM (each value is described below).
    #[arg(long, value_enum, default_value = "auto", env = "KMSROUTE_AUTH")]
    pub(crate) auth: AuthMode,
    /// The cloud a policy without spec.kms.cloud routes, and the default ARM endpoint.
    #[arg(long, env = "KMSROUTE_CLOUD", default_value = "AzurePublic", value_parser = Cloud::parse)]
    pub(crate) cloud: Cloud,
    /// Route tables written in parallel per subscription (ARM's per-subscription budget, not
    /// this number, paces the writes; in the controller also the policies reconciled at once).
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
}

/// `0.1.0 (commit 1a2b3c4d5e6f, built 2026-12-06)`: the version, the commit and the day it was
/// made (`build.rs`).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KMSROUTE_GIT_COMMIT"),
    ", built ",
    env!("KMSROUTE_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "kmsroute",
    version = VERSION,
    about = "Declarative, self-healing KMS activation routes for force-tunneled Azure subnets"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log lines on stderr as text or JSON, in every subcommand (levels from RUST_LOG; default
    /// info for `run`, warn for the others).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "KMSROUTE_LOG_FORMAT",
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    Emulator(EmulatorArgs),
    /// Show what reconcile would change for the policies in FILE. Reads only.
    /// Exit 0 nothing to do, 1 changes pending, 2 invalid input, 3 conflicts/errors, 4 Azure failed.
    Plan {
        /// Policies to read: YAML documents (or JSON) in a file, `-` for stdin. A `kind: List`
        /// (what `kubectl get krp -o yaml` prints) is read item by item. At most 16 MiB.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: PlanOutput,
        /// Counts per policy and the first 10 problems, instead of every subnet and write.
        #[arg(long)]
        summary: bool,
        #[command(flatten)]
        arm: ArmArgs,
    },
    /// Reconcile the policies in FILE once, without a cluster. Exit 0 converged, 1 not approved,
    /// 2 invalid input (or no terminal to confirm on without --yes), 3 conflicts/errors remain,
    /// 4 Azure failed, 130 interrupted (Ctrl-C: in-flight writes finish, no new ones start).
    Apply {
        /// Policies to read: YAML documents (or JSON) in a file, `-` for stdin. A `kind: List`
        /// (what `kubectl get krp -o yaml` prints) is read item by item. At most 16 MiB.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// `table` for people; `json` for scripts: what was written and what failed, with every
        /// policy's counts and problems (the preview and the confirmation go to stderr).
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        arm: ArmArgs,
    },
    /// The zero-setup tour on the embedded ARM emulator.
    Demo,
    /// The Kubernetes controller (kubeconfig or in-cluster): leader election, metrics, health.
    Run(RunArgs),
    /// Check policies in a file (multi-document YAML; `-` for stdin). Exit 0 valid, 2 invalid.
    Validate {
        /// Policies to read: YAML documents (or JSON) in a file, `-` for stdin. A `kind: List`
        /// (what `kubectl get krp -o yaml` prints) is read item by item. At most 16 MiB.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: String,
        /// `table` for people; `json` for scripts: one entry per policy with its errors and
        /// warnings.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
        /// The cloud a policy without spec.kms.cloud routes (the controller's cloud).
        #[arg(long, env = "KMSROUTE_CLOUD", default_value = "AzurePublic", value_parser = Cloud::parse)]
        cloud: Cloud,
    },
    /// Print a shell completion script: `kmsroute completions bash > /etc/bash_completion.d/kmsroute`
    /// (zsh: into a directory on $fpath as `_kmsroute`; fish: ~/.config/fish/completions/kmsroute.fish;
    /// PowerShell: `kmsroute completions powershell | Out-String | Invoke-Expression`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// GET a URL and exit 0 when it answers 200 (the chart's `helm test` checks the
    /// controller's /readyz with it; no other image needed). Exit 1 otherwise, saying why.
    Probe {
        /// The URL, e.g. http://kmsroute-metrics.kmsroute.svc:8080/readyz.
        url: String,
        /// How long to wait for the answer, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
        timeout: std::time::Duration,
    },
}

// `kmsroute emulator` (its help is the variant's doc comment).
#[derive(clap::Args)]
pub(crate) struct EmulatorArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: std::net::SocketAddr,
    /// Estate to start with: `{"resources": [ARM resource JSON…], "learnedRoutes": […]}`.
    #[arg(long)]
    pub(crate) seed: Option<String>,
    /// Items per list page before a nextLink.
    #[arg(long, default_value_t = 100)]
    pub(crate) page_size: usize,
    #[arg(long, value_enum, default_value = "off")]
    pub(crate) throttle: ThrottleMode,
    /// Accept only this bearer token (any non-empty one when absent).
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// How long long-running operations stay InProgress, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) lro_ms: u64,
    /// Play Entra ID too, from this JSON file (tenants, apps with secrets and federated
    /// credentials, accessTokenSeconds): ARM then accepts only the tokens it issued.
    #[arg(long)]
    pub(crate) entra: Option<String>,
    /// How long a write takes to appear in the Activity Log, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) activity_log_delay_ms: u64,
    /// Play a misbehaving ARM: the links it hands out (nextLink, Azure-AsyncOperation,
    /// Location) point at this origin instead of its own (kmsroute must refuse to follow them).
    #[arg(long, value_name = "URL")]
    pub(crate) misdirect_links_to: Option<String>,
}

// `kmsroute run` (its help is the variant's doc comment).
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) arm: ArmArgs,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "KMSROUTE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub(crate) metrics_addr: std::net::SocketAddr,
    /// Namespace of the leader-election Lease (Events of the cluster-scoped policies go to `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kmsroute")]
    pub(crate) leader_election_namespace: String,
    #[arg(long, default_value = "kmsroute-leader")]
    pub(crate) lease_name: String,
    /// This replica's identity in the Lease (default: the pod or host name and a random
    /// suffix, unique per process). A second process given an identity that holds the
    /// lease refuses to run.
    #[arg(long)]
    pub(crate) identity: Option<String>,
    /// Cap on every policy's resyncInterval (e.g. `2m`).
    #[arg(long, value_parser = parse_duration_arg)]
    pub(crate) max_resync: Option<std::time::Duration>,
    /// Pause between two inventory refreshes of one subscription (drift is seen within it).
    #[arg(long, env = "KMSROUTE_INVENTORY_REFRESH", default_value = "15s", value_parser = parse_duration_arg)]
    pub(crate) inventory_refresh: std::time::Duration,
    /// Most of a subscription's ARM read rate the inventory refreshes may use (0 < share <= 1).
    #[arg(long, env = "KMSROUTE_INVENTORY_READ_SHARE", default_value_t = 0.05, value_parser = parse_share)]
    pub(crate) inventory_read_share: f64,
    /// Reverts of kmsroute's own writes to one route table, within --contested-window, that
    /// make the table contested (reported, attributed from the Activity Log).
    #[arg(long, env = "KMSROUTE_CONTESTED_REVERTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) contested_reverts: u32,
    /// The window of --contested-reverts; a table stops being contested after a window without
    /// a revert.
    #[arg(long, env = "KMSROUTE_CONTESTED_WINDOW", default_value = "6h", value_parser = parse_duration_arg)]
    pub(crate) contested_window: std::time::Duration,
    /// An identity policies may name in spec.azure.identity, as TENANT_ID/CLIENT_ID (repeat
    /// it, or comma-separate in the environment variable). None given: policies may use only
    /// the controller's own identity; a policy naming another gets an IdentityNotAllowed
    /// problem and nothing is done for it.
    #[arg(long = "allowed-identity", value_name = "TENANT_ID/CLIENT_ID", env = "KMSROUTE_ALLOWED_IDENTITIES", value_delimiter = ',', value_parser = parse_identity)]
    pub(crate) allowed_identities: Vec<kmsroute::ids::Identity>,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum ThrottleMode {
    Off,
    /// ARM's documented per-subscription buckets.
    Arm,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum PlanOutput {
    Table,
    Json,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

pub(crate) fn parse_duration_arg(s: &str) -> Result<std::time::Duration, Invalid> {
    kmsroute::api::parse_duration(s)
}

/// `TENANT_ID/CLIENT_ID`, two GUIDs, lower-cased.
pub(crate) fn parse_identity(s: &str) -> Result<kmsroute::ids::Identity, Invalid> {
    let bad = || {
        Invalid(format!(
            "{s:?} is not TENANT_ID/CLIENT_ID (two GUIDs, e.g. 72f988bf-86f1-41af-91ab-2d7cd011db47/0b6c3a2e-6f4e-4f71-9d55-3f0c6f1f8a11)"
        ))
    };
    let (tenant, client) = s.trim().split_once('/').ok_or_else(bad)?;
    if !kmsroute::ids::is_guid(tenant) || !kmsroute::ids::is_guid(client) {
        return Err(bad());
    }
    Ok(kmsroute::ids::Identity {
        tenant_id: tenant.to_ascii_lowercase(),
        client_id: client.to_ascii_lowercase(),
    })
}

pub(crate) fn parse_share(s: &str) -> Result<f64, Invalid> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(Invalid(format!(
            "{s:?} is not a share between 0 (exclusive) and 1"
        ))),
    }
}
