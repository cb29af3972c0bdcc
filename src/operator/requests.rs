//! Every request the operator's API client sends, counted by verb, resource and response
//! code (`weft_api_requests_total`): reads and watches as well as writes, and each attempt
//! of a retried request, so a 429 from the API server's flow control is counted even when
//! the retry that follows succeeds.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::buffer::BufferLayer;
use tower::retry::RetryLayer;
use tower::{Layer, Service};

/// `verb`, `resource` and `code` labels of an API request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// kube's name of the call (`get`, `list`, `watch`, `patch`, `patch_subresource`,
    /// `create`, `delete`…), with `_dry_run` appended for server-side dry runs.
    pub verb: String,
    /// The resource (plural, e.g. `deployments`), with `/status` for the status subresource.
    pub resource: String,
    /// The HTTP status code, or `error` when no response came.
    pub code: String,
}

/// The request counter (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct ApiRequests {
    family: Family<RequestLabels, Counter>,
}

impl ApiRequests {
    /// Registers `weft_api_requests_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weft_api_requests",
            "Requests the operator sent to the API server (every attempt, reads included), by verb, resource and response code",
            self.family.clone(),
        );
    }

    fn count(&self, labels: RequestLabels) {
        self.family.get_or_create(&labels).inc();
    }
}

/// The resource a request path names: `/api/v1/namespaces/ns/configmaps/x` → `configmaps`,
/// `/apis/apps/v1/namespaces/ns/deployments/x/status` → `deployments/status`.
pub fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return "other".to_string(),
    };
    let rest = match rest {
        ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
        other => other,
    };
    match rest {
        [resource, _name, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => resource.to_string(),
        [] => "other".to_string(),
    }
}

fn labels_of(req: &Request<Body>) -> RequestLabels {
    let name = req
        .extensions()
        .get::<&'static str>()
        .map_or_else(|| req.method().as_str().to_ascii_lowercase(), |n| n.to_string());
    let dry_run = req.uri().query().is_some_and(|q| q.contains("dryRun=All"));
    RequestLabels {
        verb: if dry_run { format!("{name}_dry_run") } else { name },
        resource: resource_of(req.uri().path()),
        code: String::new(),
    }
}

/// Counts each request that passes through it.
#[derive(Clone)]
pub struct CountLayer(ApiRequests);

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            requests: self.0.clone(),
        }
    }
}

/// A service whose requests are counted.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    requests: ApiRequests,
}

impl<S, B> Service<Request<Body>> for Counted<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let mut labels = labels_of(&req);
        let requests = self.requests.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let result = response.await;
            labels.code = match &result {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            requests.count(labels);
            result
        })
    }
}

/// The operator's API client: kube's usual stack, with every attempt counted in `requests`
/// beneath the retry of 429, 503 and 504 answers (kube's own policy, moved above the count).
pub fn client(mut config: Config, requests: &ApiRequests) -> Result<Client, kube::Error> {
    config.default_retry = false;
    let client = ClientBuilder::try_from(config)?
        .with_layer(&CountLayer(requests.clone()))
        // The retry needs a service it can clone.
        .with_layer(&BufferLayer::new(1024))
        .with_layer(&RetryLayer::new(RetryPolicy::server_retry()))
        .build();
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_is_read_from_the_path() {
        assert_eq!(resource_of("/api/v1/namespaces/ns/configmaps/x"), "configmaps");
        assert_eq!(resource_of("/api/v1/namespaces/ns/configmaps"), "configmaps");
        assert_eq!(resource_of("/api/v1/namespaces/ns"), "namespaces");
        assert_eq!(resource_of("/api/v1/namespaces"), "namespaces");
        assert_eq!(
            resource_of("/apis/apps/v1/namespaces/ns/deployments/x/status"),
            "deployments/status"
        );
        assert_eq!(
            resource_of("/apis/weft.dev/v1alpha1/meshinstalls/m/status"),
            "meshinstalls/status"
        );
        assert_eq!(resource_of("/apis/weft.dev/v1alpha1/meshgateways"), "meshgateways");
        assert_eq!(resource_of("/version"), "other");
    }

    #[test]
    fn requests_are_counted_by_code() {
        let r = ApiRequests::default();
        for code in ["200", "429", "429"] {
            r.count(RequestLabels {
                verb: "get".into(),
                resource: "pods".into(),
                code: code.into(),
            });
        }
        let mut registry = Registry::default();
        r.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"weft_api_requests_total{verb="get",resource="pods",code="429"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weft_api_requests_total{verb="get",resource="pods",code="200"} 1"#),
            "{text}"
        );
    }
}
