//! Kubernetes ServiceAccount tokens as proof of identity: each is checked once with the
//! TokenReview API (audience [`AUDIENCE`]) and the answer kept, by the token's SHA-256,
//! until the token expires (bounded in count and time). Tokens are never logged or kept.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use ring::digest::{SHA256, digest};

use super::spiffe::WorkloadId;

/// The audience a token must be issued for (`kubectl create token SA --audience weft-ca`).
pub const AUDIENCE: &str = "weft-ca";
/// The longest an answer is kept, whatever the token's own expiry.
const MAX_CACHED: Duration = Duration::from_secs(10 * 60);
/// Answers kept at most.
const MAX_ENTRIES: usize = 20_000;

/// Why a token does not prove an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Expired, unknown, for another audience, or not a ServiceAccount's.
    #[error("{0}")]
    Unauthenticated(String),
    /// The API server could not be asked.
    #[error("the token could not be checked now: {0}")]
    Unavailable(String),
}

/// Checks a token and says whose it is.
pub trait TokenCheck: Send + Sync + 'static {
    /// The identity `token` proves in `trust_domain`.
    fn check<'a>(
        &'a self,
        token: &'a str,
        trust_domain: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<WorkloadId, AuthError>> + Send + 'a>>;
}

/// One cached answer.
struct Cached {
    namespace: String,
    service_account: String,
    until: Instant,
}

/// TokenReview against one API server, with a cache of positive answers.
pub struct TokenReviewer {
    client: Client,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl TokenReviewer {
    /// A reviewer asking `client`'s API server.
    pub fn new(client: Client) -> Arc<TokenReviewer> {
        Arc::new(TokenReviewer {
            client,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<(String, String)> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(key)
            .filter(|c| c.until > now)
            .map(|c| (c.namespace.clone(), c.service_account.clone()))
    }

    fn remember(&self, key: [u8; 32], namespace: &str, service_account: &str, until: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
                until,
            },
        );
    }

    async fn review(&self, token: &str) -> Result<(String, String), AuthError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_string());
            return Err(AuthError::Unauthenticated(format!("the token was refused: {why}")));
        }
        if !status.audiences.iter().flatten().any(|a| a == AUDIENCE) {
            return Err(AuthError::Unauthenticated(format!(
                "the token is not for audience {AUDIENCE}"
            )));
        }
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_of(&user)
            .ok_or_else(|| AuthError::Unauthenticated("the token is not a ServiceAccount's".to_string()))
    }
}

/// The token of an `authorization` header value `Bearer <token>`.
pub fn bearer(value: &str) -> Option<String> {
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// `(namespace, name)` of a ServiceAccount user name `system:serviceaccount:<ns>:<name>`.
pub fn service_account_of(user: &str) -> Option<(String, String)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then(|| (ns.to_string(), name.to_string()))
}

/// The `exp` claim of a JWT, read without verifying it (it only bounds how long an answer
/// the API server gave is kept).
pub fn expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

impl TokenCheck for TokenReviewer {
    fn check<'a>(
        &'a self,
        token: &'a str,
        trust_domain: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<WorkloadId, AuthError>> + Send + 'a>> {
        Box::pin(async move {
            let key: [u8; 32] = digest(&SHA256, token.as_bytes()).as_ref().try_into().unwrap_or([0; 32]);
            let now = Instant::now();
            if let Some((ns, sa)) = self.cached(&key, now) {
                return Ok(WorkloadId::new(trust_domain, &ns, &sa));
            }
            let left = expiry(token)
                .and_then(|e| e.duration_since(SystemTime::now()).ok())
                .unwrap_or_default();
            let (ns, sa) = self.review(token).await?;
            if !left.is_zero() {
                self.remember(key, &ns, &sa, now + left.min(MAX_CACHED));
            }
            Ok(WorkloadId::new(trust_domain, &ns, &sa))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_users_are_read_and_others_refused() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:cart"),
            Some(("shop".into(), "cart".into()))
        );
        assert_eq!(service_account_of("system:node:n1"), None);
        assert_eq!(service_account_of("system:serviceaccount:shop:"), None);
        assert_eq!(service_account_of("alice"), None);
    }

    #[test]
    fn a_token_expiry_is_read_from_its_claims() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":2000000000}"#);
        let token = format!("e30.{payload}.sig");
        assert_eq!(
            expiry(&token),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(expiry("not-a-jwt"), None);
    }
}
