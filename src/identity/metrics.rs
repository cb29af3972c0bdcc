//! The certificate service's metrics: requests by outcome, and signing latency.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `result` label of a certificate request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// How a certificate request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A certificate was signed.
    Signed,
    /// No token, or a token that proves nothing (`UNAUTHENTICATED`).
    Unauthenticated,
    /// A ServiceAccount that belongs to none of the mesh's workloads (`PERMISSION_DENIED`).
    PermissionDenied,
    /// A CSR that does not parse or verify (`INVALID_ARGUMENT`).
    InvalidCsr,
    /// Over the identity's rate (`RESOURCE_EXHAUSTED`).
    RateLimited,
    /// No issuer loaded yet, or TokenReview unreachable (`UNAVAILABLE`).
    Unavailable,
}

impl Outcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Signed => "signed",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::PermissionDenied => "permission_denied",
            Outcome::InvalidCsr => "invalid_csr",
            Outcome::RateLimited => "rate_limited",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// Every identity metric.
#[derive(Clone)]
pub struct IdentityMetrics {
    requests: Family<ResultLabels, Counter>,
    signing: Histogram,
    /// `weft_ca_issuer_loaded`: 1 once the control plane holds an issuer to sign with.
    pub issuer_loaded: Gauge,
}

impl Default for IdentityMetrics {
    fn default() -> Self {
        IdentityMetrics {
            requests: Family::default(),
            signing: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            issuer_loaded: Gauge::default(),
        }
    }
}

impl IdentityMetrics {
    /// Registers the metrics in `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "weft_ca_requests",
            "Certificate requests, by result (signed, unauthenticated, permission_denied, invalid_csr, rate_limited, unavailable)",
            self.requests.clone(),
        );
        r.register(
            "weft_ca_sign_seconds",
            "Time to answer a certificate request that was signed, token check included",
            self.signing.clone(),
        );
        r.register(
            "weft_ca_issuer_loaded",
            "1 once the control plane holds a valid issuer to sign workload certificates with",
            self.issuer_loaded.clone(),
        );
    }

    /// Counts one request's outcome.
    pub fn request(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&ResultLabels {
                result: outcome.label(),
            })
            .inc();
    }

    /// Records how long a signed request took.
    pub fn signed_in(&self, seconds: f64) {
        self.signing.observe(seconds);
    }
}

impl crate::http::Check for IdentityMetrics {
    fn problems(&self, _now: std::time::Instant) -> Vec<String> {
        if self.issuer_loaded.get() == 1 {
            Vec::new()
        } else {
            vec!["no issuer to sign workload certificates with yet (the CA Secret is missing or invalid)".to_string()]
        }
    }
}
