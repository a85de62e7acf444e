//! What can stop a subcommand, by the layer it comes from, and the exit code each gets (the
//! README's table). Every failure used to leave with exit code 2, a kube-client or a
//! port-bind failure included.

use super::args::{EXIT_AZURE_FAILED, EXIT_INVALID_INPUT};
use kmsroute::azure::ArmError;
use std::process::ExitCode;

/// The Kubernetes API server cannot be reached or refuses the controller.
pub(crate) const EXIT_KUBERNETES: u8 = 5;
/// A listening address cannot be bound (metrics server, emulator).
pub(crate) const EXIT_CANNOT_LISTEN: u8 = 6;
/// Anything else that stopped the command (writing output, a signal handler, the controller
/// ending with an error).
pub(crate) const EXIT_FAILED: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A file, a policy, a flag value, or writing without confirmation: nothing was called.
    #[error("{0}")]
    Input(String),
    /// Azure cannot be set up (endpoint, credential) or read.
    #[error(transparent)]
    AzureSetup(#[from] kmsroute::azure::SetupError),
    #[error(transparent)]
    Arm(#[from] ArmError),
    #[error("Kubernetes: {0}")]
    Kubernetes(#[from] kube::Error),
    #[error(transparent)]
    Listen(#[from] kmsroute::server::ListenError),
    #[error(transparent)]
    Emulator(#[from] kmsroute::emulator::StartError),
    #[error(transparent)]
    Controller(#[from] kmsroute::controller::RunError),
    #[error(transparent)]
    Demo(#[from] kmsroute::demo::DemoError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("writing the output: {0}")]
    Output(String),
}

impl CliError {
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Input(_) => EXIT_INVALID_INPUT,
            CliError::AzureSetup(e) if e.is_input() => EXIT_INVALID_INPUT,
            CliError::AzureSetup(_) | CliError::Arm(_) => EXIT_AZURE_FAILED,
            CliError::Kubernetes(_) => EXIT_KUBERNETES,
            CliError::Listen(_) => EXIT_CANNOT_LISTEN,
            CliError::Emulator(e) if e.is_listen() => EXIT_CANNOT_LISTEN,
            CliError::Emulator(_) => EXIT_INVALID_INPUT,
            CliError::Controller(_) | CliError::Demo(_) | CliError::Io(_) | CliError::Output(_) => {
                EXIT_FAILED
            }
        })
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        CliError::Output(e.to_string())
    }
}
