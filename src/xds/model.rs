//! What discovery knows, in the shape translation needs: services with their ready
//! endpoints, the gateways this control plane serves, and HTTP routes attached to services
//! (GAMMA) or gateways. Built from Kubernetes objects by the sources; pure data, so
//! translation can be tested without a cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// Every endpoint of its EndpointSlices (ready or not: translation decides); shared, so
    /// a model kept from one translation to the next is cloned and compared cheaply.
    pub endpoints: Arc<Vec<Endpoint>>,
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

/// The listener (and route-configuration) name of a gateway port. The `gateway|` prefix
/// keeps it apart from mesh names (`host:port`) in the shared RDS set.
pub fn gateway_listener_name(name: &str, namespace: &str, port: u16) -> String {
    format!("gateway|{port}|{namespace}/{name}")
}

/// How a gateway is keyed in snapshots and named by its clients' node metadata
/// (`NAMESPACE`/`GATEWAY`).
pub fn gateway_key(name: &str, namespace: &str) -> String {
    format!("{namespace}/{name}")
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
    /// The mesh cluster it runs in (the local cluster's name, or a RemoteCluster's
    /// `clusterName`): EDS puts it in the locality's `sub_zone`.
    pub cluster: String,
    /// The network its address is on (empty: the default network).
    pub network: String,
    /// Ready to serve.
    pub ready: bool,
    /// Being shut down.
    pub terminating: bool,
}

/// Where discovered objects come from: a cluster of the mesh and the network its pods are on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The cluster's name in the mesh.
    pub cluster: String,
    /// Its network (empty: the default network).
    pub network: String,
}

/// A MeshGateway this control plane serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its ports: one listener each.
    pub ports: Vec<GatewayPort>,
    /// An east-west gateway (type `eastwest`): its listeners route by authority to mesh
    /// services, and its pods see only their own network's endpoints.
    pub eastwest: bool,
}

/// An east-west gateway as discovery sees it: where clients on other networks reach the
/// endpoints of `network`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetworkGateway {
    /// The network it leads into.
    pub network: String,
    /// The mesh cluster whose Service it is.
    pub cluster: String,
    /// Its load-balancer address (IP or host name).
    pub address: String,
    /// Its port (the Service port named `tls`, else the first).
    pub port: u16,
}

/// One port of a gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayPort {
    /// The port's name (what a parentRef's `sectionName` names).
    pub name: String,
    /// The gateway Service's port (what a parentRef's `port` names, and `Host` headers carry).
    pub port: u16,
    /// The port Envoy binds in the gateway pod.
    pub container_port: u16,
}

/// An HTTPRoute attached to mesh services and/or gateways.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The host names it serves on gateways (none: every host). Services ignore them (GAMMA).
    pub hostnames: Vec<String>,
    /// The services and gateways it attaches to.
    pub parents: Vec<ParentRef>,
    /// Its rules, in order.
    pub rules: Vec<RouteRule>,
}

impl HttpRoute {
    /// Whether the route attaches to one port of a parent.
    pub fn attaches_to(&self, kind: ParentKind, name: &str, namespace: &str, port: u16, port_name: &str) -> bool {
        self.parents.iter().any(|p| {
            p.kind == kind
                && p.name == name
                && p.namespace == namespace
                && p.port.is_none_or(|pp| pp == port)
                && p.section_name.as_deref().is_none_or(|s| s == port_name)
        })
    }
}

/// What a parentRef names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParentKind {
    /// A mesh Service (GAMMA: group `""`, kind `Service`).
    Service,
    /// A MeshGateway (group `weft.dev`, kind `MeshGateway`).
    MeshGateway,
}

/// A parent (service or gateway) of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// What it names.
    pub kind: ParentKind,
    /// The parent's name.
    pub name: String,
    /// The parent's namespace.
    pub namespace: String,
    /// Only this (Service) port (all ports when `None`).
    pub port: Option<u16>,
    /// Only the port of this name (all ports when `None`).
    pub section_name: Option<String>,
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
    /// File access logging.
    pub access_log: Option<FileLog>,
    /// Zipkin tracing.
    pub zipkin: Option<Zipkin>,
}

/// File access logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLog {
    /// The file (`/dev/stdout` by default).
    pub path: String,
    /// The log line format (Envoy's default when `None`).
    pub format: Option<String>,
}

/// Zipkin tracing.
#[derive(Clone, Debug, PartialEq)]
pub struct Zipkin {
    /// The collector's `host:port` (port 9411 when it has none).
    pub address: String,
    /// The percentage of requests sampled.
    pub sampling_percent: f64,
}

/// The mesh as discovery sees it for one revision: what translation takes besides the
/// gateways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshModel {
    /// Mesh services, sorted by namespace and name.
    pub services: Vec<Service>,
    /// HTTPRoutes attached to services or gateways, sorted by namespace and name.
    pub routes: Vec<HttpRoute>,
    /// The east-west gateways of every network, sorted.
    pub network_gateways: Vec<NetworkGateway>,
}
