//! The one error type of every reconcile. A reconcile fails only on API errors, which are
//! retried; spec errors are not failures but `Stalled` conditions (see `conditions`).

use super::apply::ApplyError;
use super::conditions::Stall;
use crate::api::common::StallReason;

/// Reconcile failures (retried with a delay by the controller's error policy).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying or pruning an owned object failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Another API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was attempted.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing a finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// A short label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Apply(_) => "apply",
            Error::Kube { .. } => "api",
            Error::Finalizer(_) => "finalizer",
        }
    }

    /// Whether the API server refused a write because a field is not in the CRD's schema:
    /// the CRD is older than this operator (its CRDs were not applied before it).
    pub fn undeclared_field(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(e), .. } if e.message.contains("field not declared in schema"))
    }

    /// The stall when the API server refused an object as invalid (400, 422): retrying the
    /// same spec cannot succeed, so the spec is reported as the problem instead.
    pub fn rejection(&self) -> Option<Stall> {
        let Error::Apply(ApplyError {
            object,
            source: kube::Error::Api(e),
            ..
        }) = self
        else {
            return None;
        };
        matches!(e.code, 400 | 422).then(|| Stall {
            reason: StallReason::Rejected,
            message: format!(
                "the API server refused {object}, so nothing was applied; the running revision is unchanged: {}",
                e.message
            ),
        })
    }
}

/// Wraps an API error with what was attempted.
pub fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}
