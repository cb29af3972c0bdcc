//! The benchmark's xDS clients: many ADS streams over a few connections, state of the world
//! or delta. A response is decoded only as far as the benchmark needs (its type, version,
//! nonce and how many resources it carries), so the clients, which share the machine's two
//! cores with the control plane, spend as little of them as a client can.

use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind as ValueKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use crate::population::cluster_name;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// The node proxies' route configurations (`weft::xds::translate::node_proxy`).
const NODE_PROXY_OUTBOUND: &str = "node-proxy|outbound";
const NODE_PROXY_INBOUND: &str = "node-proxy|inbound";
/// The revision every client names.
pub const REVISION: &str = "bench";
/// Load assignments every stream subscribes to (services 0..SHARED); the changes are made
/// to these, so each reaches every stream.
pub const SHARED: usize = 10;
/// Load assignments (and, named, clusters) each stream subscribes to.
pub const PER_STREAM: usize = 20;

/// The ADS variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Sotw,
    Delta,
}

/// What each stream subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Every cluster (CDS wildcard) and 20 load assignments: an Envoy sidecar's shape.
    Wildcard,
    /// 20 clusters and their 20 load assignments by name: a proxyless gRPC client's shape.
    Named,
    /// A node proxy (`ROLE=node-proxy`), as Envoy subscribes: LDS and CDS wildcard, its two
    /// route configurations, and every cluster's load assignment by name.
    NodeProxy,
}

/// What a stream saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Clusters(usize),
    Assignments(usize),
    /// Listeners or route configurations.
    Other,
    /// The stream ended (the server closed it or it failed).
    Ended,
}

/// A stream's report: which stream, what, when.
pub type Report = (usize, Seen, Instant);

/// A response, decoded as far as the benchmark needs: the same field numbers serve both
/// `DiscoveryResponse` (version_info) and `DeltaDiscoveryResponse` (system_version_info).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LightResponse {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<Skipped>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// A resource, skipped over.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Skipped {}

/// The clusters stream `id` subscribes to: the shared ones and ten of its own.
pub fn subscribed(id: usize, services: usize) -> Vec<String> {
    (0..SHARED)
        .chain((0..PER_STREAM - SHARED).map(|k| SHARED + (id * 10 + k) % (services - SHARED)))
        .map(cluster_name)
        .collect()
}

fn node(id: usize, shape: Shape) -> Node {
    let string = |s: &str| Value {
        kind: Some(ValueKind::StringValue(s.into())),
    };
    let mut fields: std::collections::HashMap<String, Value> = [("REVISION".to_string(), string(REVISION))].into();
    if shape == Shape::NodeProxy {
        fields.insert("ROLE".to_string(), string("node-proxy"));
    }
    Node {
        id: format!("bench-{id}"),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

/// Opens one ADS stream on `channel` sending what `rx` yields.
async fn open<Req: prost::Message + Default + Send + 'static>(
    channel: Channel,
    path: &'static str,
    rx: mpsc::Receiver<Req>,
) -> Option<tonic::Streaming<LightResponse>> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(256 << 20);
    grpc.ready().await.ok()?;
    let codec = tonic_prost::ProstCodec::<Req, LightResponse>::default();
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(path),
            codec,
        )
        .await
        .ok()?;
    Some(response.into_inner())
}

fn seen(r: &LightResponse) -> Seen {
    match r.type_url.as_str() {
        CDS => Seen::Clusters(r.resources.len()),
        EDS => Seen::Assignments(r.resources.len()),
        _ => Seen::Other,
    }
}

/// Runs stream `id` until it ends, acknowledging every response and reporting it.
pub async fn run_stream(
    channel: Channel,
    id: usize,
    services: usize,
    protocol: Protocol,
    shape: Shape,
    reports: mpsc::UnboundedSender<Report>,
) {
    let names = match shape {
        Shape::NodeProxy => (0..services).map(cluster_name).collect(),
        _ => subscribed(id, services),
    };
    let clusters = if shape == Shape::Named { names.clone() } else { vec![] };
    match protocol {
        Protocol::Sotw => sotw(channel, id, shape, clusters, names, &reports).await,
        Protocol::Delta => delta(channel, id, shape, clusters, names, &reports).await,
    }
    let _ = reports.send((id, Seen::Ended, Instant::now()));
}

async fn sotw(
    channel: Channel,
    id: usize,
    shape: Shape,
    clusters: Vec<String>,
    names: Vec<String>,
    reports: &mpsc::UnboundedSender<Report>,
) {
    let (tx, rx) = mpsc::channel(8);
    let request = |type_url: &str, names: &[String]| DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.to_vec(),
        ..Default::default()
    };
    let first = DiscoveryRequest {
        node: Some(node(id, shape)),
        ..request(CDS, &clusters)
    };
    let (Ok(()), Ok(())) = (tx.send(first).await, tx.send(request(EDS, &names)).await) else {
        return;
    };
    // A node proxy also holds its listeners and their two route configurations.
    let routes = [NODE_PROXY_OUTBOUND.to_string(), NODE_PROXY_INBOUND.to_string()];
    if shape == Shape::NodeProxy {
        let (Ok(()), Ok(())) = (tx.send(request(LDS, &[])).await, tx.send(request(RDS, &routes)).await) else {
            return;
        };
    }
    let Some(mut responses) = open(channel, SOTW_PATH, rx).await else {
        return;
    };
    while let Ok(Some(r)) = responses.message().await {
        let _ = reports.send((id, seen(&r), Instant::now()));
        let subscribed: &[String] = match r.type_url.as_str() {
            EDS => &names,
            RDS => &routes,
            LDS => &[],
            _ => &clusters,
        };
        let ack = DiscoveryRequest {
            version_info: r.version,
            response_nonce: r.nonce,
            ..request(&r.type_url, subscribed)
        };
        if tx.send(ack).await.is_err() {
            return;
        }
    }
}

async fn delta(
    channel: Channel,
    id: usize,
    shape: Shape,
    clusters: Vec<String>,
    names: Vec<String>,
    reports: &mpsc::UnboundedSender<Report>,
) {
    let (tx, rx) = mpsc::channel(8);
    let first = DeltaDiscoveryRequest {
        node: Some(node(id, shape)),
        type_url: CDS.into(),
        resource_names_subscribe: clusters,
        ..Default::default()
    };
    let assignments = DeltaDiscoveryRequest {
        type_url: EDS.into(),
        resource_names_subscribe: names,
        ..Default::default()
    };
    let (Ok(()), Ok(())) = (tx.send(first).await, tx.send(assignments).await) else {
        return;
    };
    if shape == Shape::NodeProxy {
        let listeners = DeltaDiscoveryRequest {
            type_url: LDS.into(),
            ..Default::default()
        };
        let routes = DeltaDiscoveryRequest {
            type_url: RDS.into(),
            resource_names_subscribe: vec![NODE_PROXY_OUTBOUND.to_string(), NODE_PROXY_INBOUND.to_string()],
            ..Default::default()
        };
        let (Ok(()), Ok(())) = (tx.send(listeners).await, tx.send(routes).await) else {
            return;
        };
    }
    let Some(mut responses) = open(channel, DELTA_PATH, rx).await else {
        return;
    };
    while let Ok(Some(r)) = responses.message().await {
        let _ = reports.send((id, seen(&r), Instant::now()));
        let ack = DeltaDiscoveryRequest {
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
    }
}
