//! What discovery knows, in the shape translation needs: services with their ready
//! endpoints, and HTTP routes attached to services (GAMMA). Built from Kubernetes objects by
//! the sources; pure data, so translation can be tested without a cluster.

use std::collections::BTreeMap;

/// The cluster domain of every mesh host name.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// A mesh service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its ports.
    pub ports: Vec<ServicePort>,
    /// Every endpoint of its EndpointSlices (ready or not: translation decides).
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// `name.namespace.svc.cluster.local`.
    pub fn host(&self) -> String {
        host(&self.name, &self.namespace)
    }
}

/// The fully qualified host name of a service.
pub fn host(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.{CLUSTER_DOMAIN}")
}

/// The cluster (and load-assignment) name of a service port, as Istio names it.
pub fn cluster_name(name: &str, namespace: &str, port: u16) -> String {
    format!("outbound|{port}||{}", host(name, namespace))
}

/// The listener (and route-configuration) name of a service port: what a proxyless gRPC
/// client puts in its target, `xds:///<host>:<port>`.
pub fn listener_name(name: &str, namespace: &str, port: u16) -> String {
    format!("{}:{port}", host(name, namespace))
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name (empty for a single unnamed port); EndpointSlice ports carry the same.
    pub name: String,
    /// The service port.
    pub port: u16,
    /// The application protocol (`appProtocol`, or guessed from a `grpc-`/`http2-` name).
    pub http2: bool,
}

/// One endpoint (a pod address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Its IP address.
    pub address: String,
    /// Target port numbers by service port name.
    pub ports: BTreeMap<String, u16>,
    /// Its zone, for locality-aware load balancing.
    pub zone: Option<String>,
    /// Ready to serve.
    pub ready: bool,
    /// Being shut down.
    pub terminating: bool,
}

/// An HTTPRoute attached to mesh services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The services it attaches to.
    pub parents: Vec<ParentRef>,
    /// Its rules, in order.
    pub rules: Vec<RouteRule>,
}

/// A parent service of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// The service's name.
    pub name: String,
    /// The service's namespace.
    pub namespace: String,
    /// Only this port (all ports when `None`).
    pub port: Option<u16>,
}

/// One rule: requests matching any of `matches` go to `backends`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// Alternative matches (none: every request).
    pub matches: Vec<RouteMatch>,
    /// Weighted backends.
    pub backends: Vec<Backend>,
}

/// A request match: all given conditions must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    /// The path condition.
    pub path: Option<PathMatch>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
}

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A path prefix.
    Prefix(String),
    /// An RE2 regular expression.
    Regex(String),
}

/// A header condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// The header's name.
    pub name: String,
    /// The value, or an RE2 regular expression when `regex`.
    pub value: String,
    /// Whether `value` is a regular expression.
    pub regex: bool,
}

/// A weighted backend service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The service's name.
    pub name: String,
    /// The service's namespace.
    pub namespace: String,
    /// The service port.
    pub port: u16,
    /// Its relative weight.
    pub weight: u32,
}

/// Mesh-config settings that reach every HttpConnectionManager.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Telemetry {
    /// File access logging: path and optional format.
    pub access_log: Option<(String, Option<String>)>,
    /// Zipkin tracing: collector `host:port` and sampling percentage.
    pub zipkin: Option<(String, f64)>,
}
