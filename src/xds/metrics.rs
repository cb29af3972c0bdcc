//! The control plane's metrics: connected streams, pushes and their latency, NACKs,
//! resources by type, refused or closed clients by reason, and endpoints on networks
//! without an east-west gateway.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::identity::metrics::IdentityMetrics;
use crate::watch_health::WatchHealth;

/// `type` label: `sotw`/`delta` for streams, `lds`/`rds`/`cds`/`eds` for resources.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// The stream or resource type.
    pub r#type: String,
}

/// `cluster` label: a remote cluster's name in the mesh.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The cluster's name.
    pub cluster: String,
}

/// What the control plane sees of each remote cluster.
#[derive(Clone, Default)]
pub struct RemoteMetrics {
    /// `weft_remote_cluster_synced`: 1 while its watches have listed and none is failing.
    pub synced: Family<ClusterLabels, Gauge>,
    /// `weft_remote_cluster_services`: its mesh services.
    pub services: Family<ClusterLabels, Gauge>,
    /// `weft_remote_cluster_endpoints`: its ready endpoints.
    pub endpoints: Family<ClusterLabels, Gauge>,
    /// The clusters that have gauges, so those of a removed cluster can be dropped.
    pub known: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl RemoteMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "weft_remote_cluster_synced",
            "1 while the watches on a remote cluster have listed and none is failing (its last endpoints are served either way)",
            self.synced.clone(),
        );
        r.register(
            "weft_remote_cluster_services",
            "Mesh services seen in a remote cluster",
            self.services.clone(),
        );
        r.register(
            "weft_remote_cluster_endpoints",
            "Ready endpoints seen in a remote cluster",
            self.endpoints.clone(),
        );
    }
}

/// `reason` label of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// `network` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabels {
    network: String,
}

/// Why a connection or stream was refused or closed by the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The first request carried no node.
    NoNode,
    /// The node names neither `REVISION` nor `NAMESPACE`.
    NoIdentity,
    /// Admission refused the client (another revision, or one that does not exist).
    NotAdmitted,
    /// A gateway client did not name its gateway.
    BadGateway,
    /// A request for a type this control plane does not serve.
    UnknownType,
    /// A request or stream over the subscribed-names limit.
    TooManyNames,
    /// The client identity already has its maximum of streams.
    TooManyStreams,
    /// A request larger than the maximum request size.
    RequestTooLarge,
    /// A request that does not decode.
    MalformedRequest,
    /// A client that did not read its responses in time.
    SlowReader,
    /// A connection that did not speak HTTP/2 (an HTTP/1 request, or garbage).
    NotHttp2,
    /// A connection that had no stream for the idle timeout.
    Idle,
    /// On the TLS port: no workload certificate and no valid token.
    Unauthenticated,
    /// On the TLS port: the node metadata claims what the client's identity does not allow.
    ClaimMismatch,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoNode => "no_node",
            Refusal::NoIdentity => "no_identity",
            Refusal::NotAdmitted => "not_admitted",
            Refusal::BadGateway => "bad_gateway",
            Refusal::UnknownType => "unknown_type",
            Refusal::TooManyNames => "too_many_names",
            Refusal::TooManyStreams => "too_many_streams",
            Refusal::RequestTooLarge => "request_too_large",
            Refusal::MalformedRequest => "malformed_request",
            Refusal::SlowReader => "slow_reader",
            Refusal::NotHttp2 => "not_http2",
            Refusal::Idle => "idle",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::ClaimMismatch => "claim_mismatch",
        }
    }
}

fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every xDS metric.
#[derive(Clone)]
pub struct XdsMetrics {
    registry: Arc<Registry>,
    streams: Family<TypeLabels, Gauge>,
    pushes: Family<TypeLabels, Counter>,
    push_latency: Family<TypeLabels, Histogram, fn() -> Histogram>,
    nacks: Family<TypeLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    /// Resources in the current snapshot, by type.
    pub resources: Family<TypeLabels, Gauge>,
    /// Time to build one snapshot from the sources (model, translation, encoding).
    translate: Histogram,
    /// Whether each Kubernetes watch flows (`weft_watch_up`), which `/ready` also reads.
    pub watches: WatchHealth,
    /// Each remote cluster's state (not read by `/ready`: a remote down is no local fault).
    pub remote: RemoteMetrics,
    /// The certificate service's (`/ready` waits for an issuer when it runs).
    pub identity: IdentityMetrics,
    without_gateway: Family<NetworkLabels, Gauge>,
    /// The same counts, for RemoteCluster status messages.
    without_gateway_counts: Arc<std::sync::RwLock<std::collections::BTreeMap<String, usize>>>,
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn labels(t: &str) -> TypeLabels {
    TypeLabels { r#type: t.to_string() }
}

impl XdsMetrics {
    /// Registers every metric.
    pub fn new() -> XdsMetrics {
        let mut r = Registry::default();
        let streams = Family::<TypeLabels, Gauge>::default();
        r.register(
            "weft_xds_streams",
            "Connected ADS streams, by protocol variant",
            streams.clone(),
        );
        let pushes = Family::<TypeLabels, Counter>::default();
        r.register("weft_xds_pushes", "Responses sent, by resource type", pushes.clone());
        let push_latency = Family::<TypeLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_buckets as fn() -> Histogram,
        );
        r.register(
            "weft_xds_push_latency_seconds",
            "Time from a change being seen to a response carrying it being sent",
            push_latency.clone(),
        );
        let nacks = Family::<TypeLabels, Counter>::default();
        r.register(
            "weft_xds_nacks",
            "Responses clients rejected, by resource type",
            nacks.clone(),
        );
        let resources = Family::<TypeLabels, Gauge>::default();
        r.register(
            "weft_xds_resources",
            "Resources in the current snapshot, by type",
            resources.clone(),
        );
        let translate = latency_buckets();
        r.register(
            "weft_xds_translate_seconds",
            "Time to build one snapshot from the sources: model, translation and encoding",
            translate.clone(),
        );
        let watches = WatchHealth::default();
        watches.register(&mut r);
        let refusals = Family::<ReasonLabels, Counter>::default();
        r.register(
            "weft_xds_refusals",
            "Connections and streams refused or closed by the control plane, by reason",
            refusals.clone(),
        );
        let remote = RemoteMetrics::default();
        remote.register(&mut r);
        let identity = IdentityMetrics::default();
        identity.register(&mut r);
        let without_gateway = Family::<NetworkLabels, Gauge>::default();
        r.register(
            "weft_endpoints_without_gateway",
            "Ready endpoints on a network without an east-west gateway (unreachable from other networks), by network",
            without_gateway.clone(),
        );
        XdsMetrics {
            remote,
            identity,
            without_gateway,
            without_gateway_counts: Arc::default(),
            refusals,
            registry: Arc::new(r),
            streams,
            pushes,
            push_latency,
            nacks,
            resources,
            translate,
            watches,
        }
    }

    /// Records how long building one snapshot took.
    pub fn translated(&self, took: std::time::Duration) {
        self.translate.observe(took.as_secs_f64());
    }

    /// Counts an open stream until the guard drops.
    pub fn stream_opened(&self, variant: &str) -> StreamGuard {
        self.streams.get_or_create(&labels(variant)).inc();
        StreamGuard {
            metrics: self.clone(),
            variant: variant.to_string(),
        }
    }

    /// Counts a response and its latency.
    pub fn pushed(&self, type_short: &str, changed_at: Instant) {
        self.pushes.get_or_create(&labels(type_short)).inc();
        self.push_latency
            .get_or_create(&labels(type_short))
            .observe(changed_at.elapsed().as_secs_f64());
    }

    /// Counts a NACK.
    pub fn nack(&self, type_short: &str) {
        self.nacks.get_or_create(&labels(type_short)).inc();
    }

    /// Counts a refused or closed connection or stream.
    pub fn refused(&self, reason: Refusal) {
        self.refusals
            .get_or_create(&ReasonLabels { reason: reason.label() })
            .inc();
    }

    /// How many were refused for `reason` so far.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refusals
            .get_or_create(&ReasonLabels { reason: reason.label() })
            .get()
    }

    /// Sets `weft_endpoints_without_gateway` to `counts` (networks no longer counted go).
    pub fn set_endpoints_without_gateway(&self, counts: &std::collections::BTreeMap<String, usize>) {
        *self
            .without_gateway_counts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = counts.clone();
        self.without_gateway.clear();
        for (network, n) in counts {
            let labels = NetworkLabels {
                network: network.clone(),
            };
            self.without_gateway
                .get_or_create(&labels)
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Ready endpoints on `network` that clients on other networks cannot reach (no east-west
    /// gateway), as last translated; `None` when there are none.
    pub fn endpoints_without_gateway(&self, network: &str) -> Option<usize> {
        self.without_gateway_counts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(network)
            .copied()
            .filter(|n| *n > 0)
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Decrements the stream gauge when the stream ends.
pub struct StreamGuard {
    metrics: XdsMetrics,
    variant: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.streams.get_or_create(&labels(&self.variant)).dec();
    }
}
