//! The certificate service: `istio.v1.auth.IstioCertificateService/CreateCertificate`, as
//! Istio's agents call it. The caller sends a CSR and a ServiceAccount token
//! (`authorization: Bearer …`, audience `weft-ca`); the answer is a certificate whose only
//! identity is that ServiceAccount's SPIFFE ID, whatever the CSR asks for, followed by the
//! chain to the root. Refusals are counted by reason; tokens are never logged.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tonic::codegen::http;
use tonic::codegen::{Service, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tracing::debug;

use super::ca::{self, CaError};
use super::issuer::IssuerWatch;
use super::metrics::{IdentityMetrics, Outcome};
use super::spiffe::WorkloadId;
use super::tokens::{self, AuthError, TokenCheck};

/// The gRPC service name.
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
/// The one method's path.
pub const CREATE_PATH: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// A certificate request (Istio's `IstioCertificateRequest`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// The CSR, PEM.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds (at most the mesh's `workloadCertTTL` is given).
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Istio's impersonation metadata: not honoured (a caller gets its own identity only).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<envoy_types::pb::google::protobuf::Struct>,
}

/// The answer (Istio's `IstioCertificateResponse`): the leaf first, then the chain, the
/// root last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates, one per entry.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// Decides whether a workload identity belongs to the mesh: `Err` says why not.
pub type Membership = Arc<dyn Fn(&WorkloadId) -> Result<(), String> + Send + Sync>;

/// Requests one identity may make: a burst, then a steady rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Requests allowed at once.
    pub burst: f64,
    /// Requests per second after that.
    pub per_second: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        // A workload asks once per half-lifetime; a restart loop gets ten quickly, then one
        // a second.
        RateLimit {
            burst: 10.0,
            per_second: 1.0,
        }
    }
}

/// Token buckets by identity.
#[derive(Default)]
struct Buckets(Mutex<HashMap<WorkloadId, (f64, Instant)>>);

impl Buckets {
    fn take(&self, id: &WorkloadId, limit: RateLimit, now: Instant) -> bool {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() > 50_000 {
            // Buckets that have refilled are the same as absent ones.
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * limit.per_second < limit.burst
            });
        }
        let (tokens, at) = map.entry(id.clone()).or_insert((limit.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * limit.per_second).min(limit.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the service signs with and whom it signs for.
pub struct Signer {
    /// The current issuer.
    pub issuer: IssuerWatch,
    /// Checks the caller's token.
    pub tokens: Arc<dyn TokenCheck>,
    /// Whether an identity is one of the mesh's workloads.
    pub membership: Membership,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The longest lifetime given.
    pub ttl: Duration,
    /// Per-identity rate.
    pub rate: RateLimit,
    /// Counters.
    pub metrics: IdentityMetrics,
}

/// The service, mounted beside ADS on the TLS port.
#[derive(Clone)]
pub struct CertificateService {
    signer: Arc<Signer>,
    buckets: Arc<Buckets>,
}

impl CertificateService {
    /// A service signing with `signer`.
    pub fn new(signer: Signer) -> CertificateService {
        CertificateService {
            signer: Arc::new(signer),
            buckets: Arc::default(),
        }
    }

    /// Answers one request.
    pub async fn create(&self, req: Request<IstioCertificateRequest>) -> Result<IstioCertificateResponse, Status> {
        let started = Instant::now();
        let s = &self.signer;
        let result = self.sign(req).await;
        match &result {
            Ok(_) => {
                s.metrics.request(Outcome::Signed);
                s.metrics.signed_in(started.elapsed().as_secs_f64());
            }
            Err((outcome, status)) => {
                s.metrics.request(*outcome);
                debug!(
                    result = outcome.label(),
                    message = status.message(),
                    "certificate request refused"
                );
            }
        }
        result.map_err(|(_, status)| status)
    }

    async fn sign(&self, req: Request<IstioCertificateRequest>) -> Result<IstioCertificateResponse, (Outcome, Status)> {
        let s = &self.signer;
        let token = bearer(req.metadata()).ok_or_else(|| {
            (
                Outcome::Unauthenticated,
                Status::unauthenticated(
                    "no ServiceAccount token: send one as `authorization: Bearer <token>` (audience weft-ca)",
                ),
            )
        })?;
        let id = s.tokens.check(&token, &s.trust_domain).await.map_err(|e| match e {
            AuthError::Unauthenticated(m) => (Outcome::Unauthenticated, Status::unauthenticated(m)),
            AuthError::Unavailable(m) => (Outcome::Unavailable, Status::unavailable(m)),
        })?;
        (s.membership)(&id).map_err(|m| (Outcome::PermissionDenied, Status::permission_denied(m)))?;
        if !self.buckets.take(&id, s.rate, Instant::now()) {
            return Err((
                Outcome::RateLimited,
                Status::resource_exhausted(format!(
                    "too many certificate requests for {id}; try again in a few seconds"
                )),
            ));
        }
        let issuer = s.issuer.borrow().clone().ok_or_else(|| {
            (
                Outcome::Unavailable,
                Status::unavailable("this control plane has no issuer yet; try again shortly"),
            )
        })?;
        let csr = pem::parse(req.get_ref().csr.as_bytes())
            .ok()
            .filter(|p| p.tag() == "CERTIFICATE REQUEST" || p.tag() == "NEW CERTIFICATE REQUEST")
            .ok_or_else(|| {
                (
                    Outcome::InvalidCsr,
                    Status::invalid_argument("csr must be one PEM CERTIFICATE REQUEST block"),
                )
            })?;
        let asked = u64::try_from(req.get_ref().validity_duration).unwrap_or(0);
        let ttl = if asked == 0 {
            s.ttl
        } else {
            Duration::from_secs(asked).min(s.ttl)
        };
        let chain =
            ca::sign_workload(&issuer, csr.contents(), &id.uri(), ttl, SystemTime::now()).map_err(|e| match e {
                CaError::BadCsr(_) => (Outcome::InvalidCsr, Status::invalid_argument(e.to_string())),
                other => (Outcome::Unavailable, Status::internal(other.to_string())),
            })?;
        let cert_chain = pem::parse_many(&chain)
            .unwrap_or_default()
            .iter()
            .map(|p| pem::encode_config(p, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)))
            .collect();
        Ok(IstioCertificateResponse { cert_chain })
    }
}

/// The token of an `authorization: Bearer …` header.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    tokens::bearer(metadata.get("authorization")?.to_str().ok()?)
}

impl NamedService for CertificateService {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<B> Service<http::Request<B>> for CertificateService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CREATE_PATH {
            let status = Status::unimplemented(format!("no method {}", req.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let this = self.clone();
        Box::pin(async move {
            let unary = tower::service_fn(move |r: Request<IstioCertificateRequest>| {
                let this = this.clone();
                async move { this.create(r).await.map(Response::new) }
            });
            let codec = tonic_prost::ProstCodec::<IstioCertificateResponse, IstioCertificateRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(64 * 1024), None);
            Ok(grpc.unary(unary, req).await)
        })
    }
}

#[cfg(test)]
#[path = "csr_tests.rs"]
mod tests;
