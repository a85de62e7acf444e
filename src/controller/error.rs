//! The controller's errors: a reconcile's ([`Error`], each knowing its metric label and how
//! urgent its backoff is) and the whole controller's ([`RunError`]).

use super::leader;
use crate::azure::{ArmError, ErrorClass};

/// One error type for the controller, each knowing its metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ARM: {0}")]
    Arm(#[from] ArmError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    /// Some of a pass's writes failed; `class` is the worst of their classes, so a 403 waits on
    /// the slow user-action timer and a 429 is counted as throttling.
    #[error("{count} write(s) failed ({})", class.label())]
    WritesFailed { class: ErrorClass, count: usize },
    #[error("the pass reported nothing for policy {0}")]
    NoReport(String),
}

/// Why the controller stopped (it ends cleanly when told to stop).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Lease(#[from] leader::LeaseError),
    #[error("the lease loop ended: {0}")]
    LeaseLoop(#[from] tokio::task::JoinError),
}

/// How bad an error class is for backoff: a human must act > throttled > the rest.
fn severity(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::NeedsUserAction => 3,
        ErrorClass::Throttled => 2,
        ErrorClass::Retryable => 1,
        ErrorClass::Conflict | ErrorClass::NotFound => 0,
    }
}

/// The worst class among failed writes.
pub fn worst_class(classes: impl IntoIterator<Item = ErrorClass>) -> Option<ErrorClass> {
    classes.into_iter().max_by_key(|c| severity(*c))
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Arm(e) => e.class.label(),
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::WritesFailed { class, .. } => class.label(),
            Error::NoReport(_) => "internal",
        }
    }
    pub(crate) fn needs_user_action(&self) -> bool {
        match self {
            Error::Arm(e) => e.class == ErrorClass::NeedsUserAction,
            Error::WritesFailed { class, .. } => *class == ErrorClass::NeedsUserAction,
            _ => false,
        }
    }
}
