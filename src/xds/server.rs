//! The ADS server: state of the world and delta, for listeners, routes, clusters and load
//! assignments. Each stream keeps, per type, what it subscribed to and what it was last
//! sent; a new snapshot is sent only where that stream's view changed. Nonces are per
//! stream; a NACK is logged and counted, and the NACKed content is not sent again.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::metrics::XdsMetrics;
use super::snapshot::{Cache, Snapshot, TYPES, set_version, short, wildcard_type};

/// Decides whether a client may be served: `Err` carries the reason it is refused.
pub type Admission = Arc<dyn Fn(&ClientInfo) -> Result<(), String> + Send + Sync>;

/// What a client says about itself in its node metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfo {
    /// The node id.
    pub id: String,
    /// `REVISION`: a revision or tag name.
    pub revision: Option<String>,
    /// `NAMESPACE`.
    pub namespace: Option<String>,
    /// `ROLE`: `proxyless`, `node-proxy` or `gateway`.
    pub role: Option<String>,
}

impl ClientInfo {
    /// Reads the node's id and metadata.
    pub fn from_node(node: &Node) -> ClientInfo {
        let field = |key: &str| {
            node.metadata.as_ref()?.fields.get(key).and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
        };
        ClientInfo {
            id: node.id.clone(),
            revision: field("REVISION"),
            namespace: field("NAMESPACE"),
            role: field("ROLE"),
        }
    }
}

/// The ADS service.
#[derive(Clone)]
pub struct AdsServer {
    cache: Cache,
    admission: Admission,
    metrics: XdsMetrics,
}

impl AdsServer {
    /// A server answering from `cache`, for clients `admission` accepts.
    pub fn new(cache: Cache, admission: Admission, metrics: XdsMetrics) -> AdsServer {
        AdsServer {
            cache,
            admission,
            metrics,
        }
    }

    /// Checks common to every request: the first one must name an admitted client, and
    /// requests for types this server does not serve are skipped (`Ok(false)`).
    fn served(&self, client: &mut Option<ClientInfo>, node: Option<&Node>, type_url: &str) -> Result<bool, Status> {
        if client.is_none() {
            *client = Some(self.admit(node)?);
        }
        if !TYPES.contains(&type_url) {
            let id = client.as_ref().map(|c| c.id.as_str()).unwrap_or_default();
            debug!(client = id, type_url, "ignoring a request for an unserved type");
            return Ok(false);
        }
        Ok(true)
    }

    /// Logs and counts a NACK; the stream then keeps what it sent, so nothing is resent.
    fn log_nack(&self, client: &Option<ClientInfo>, type_url: &str, nonce: &str, error: Option<&RpcStatus>) {
        if let Some(err) = error {
            self.metrics.nack(short(type_url));
            let id = client.as_ref().map(|c| c.id.as_str()).unwrap_or_default();
            warn!(client = id, type_url = short(type_url), nonce, error = %err.message, "client rejected a response (NACK); it keeps its last good configuration");
        }
    }

    fn admit(&self, node: Option<&Node>) -> Result<ClientInfo, Status> {
        let node = node.ok_or_else(|| Status::invalid_argument("the first request of a stream must carry the node"))?;
        let info = ClientInfo::from_node(node);
        (self.admission)(&info).map_err(Status::permission_denied)?;
        Ok(info)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Per type, what a state-of-the-world stream asked for and was sent.
#[derive(Default)]
struct SotwType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Version of the content last sent (none before the first response).
    sent: Option<String>,
    /// Nonce of the last response.
    nonce: String,
}

impl SotwType {
    /// The resources this subscription sees, and their combined version.
    fn view<'a>(&self, snap: &'a Snapshot, type_url: &str) -> (Vec<&'a super::snapshot::Encoded>, String) {
        let Some(all) = snap.of(type_url) else {
            return (Vec::new(), String::new());
        };
        if self.wildcard {
            let version = set_version(all.iter().map(|(n, e)| (n, Some(&e.version))));
            (all.values().collect(), format!("*{version}"))
        } else {
            let version = set_version(self.names.iter().map(|n| (n, all.get(n).map(|e| &e.version))));
            (self.names.iter().filter_map(|n| all.get(n)).collect(), version)
        }
    }
}

/// Per type, what a delta stream is subscribed to and holds.
#[derive(Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name → version.
    held: BTreeMap<String, String>,
    /// Subscribed names already reported as absent.
    told_missing: BTreeSet<String>,
    subscribed: bool,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let server = self.clone();
        tokio::spawn(async move {
            let _connected = server.metrics.stream_opened("sotw");
            if let Err(status) = server.serve_sotw(&mut incoming, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let server = self.clone();
        tokio::spawn(async move {
            let _connected = server.metrics.stream_opened("delta");
            if let Err(status) = server.serve_delta(&mut incoming, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type SotwTx = mpsc::Sender<Result<DiscoveryResponse, Status>>;
type DeltaTx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

impl AdsServer {
    async fn serve_sotw(&self, incoming: &mut Streaming<DiscoveryRequest>, tx: &SotwTx) -> Result<(), Status> {
        let mut snapshots = self.cache.subscribe();
        let mut types: BTreeMap<String, SotwType> = BTreeMap::new();
        let mut client: Option<ClientInfo> = None;
        let mut nonce: u64 = 0;
        loop {
            tokio::select! {
                message = incoming.message() => {
                    let Some(req) = message? else { return Ok(()) };
                    if !self.served(&mut client, req.node.as_ref(), &req.type_url)? {
                        continue;
                    }
                    let state = types.entry(req.type_url.clone()).or_default();
                    if !req.response_nonce.is_empty() && req.response_nonce != state.nonce {
                        // An answer to an older response: the newer one is still on its way.
                        continue;
                    }
                    self.log_nack(&client, &req.type_url, &req.response_nonce, req.error_detail.as_ref());
                    let names: BTreeSet<String> = req.resource_names.iter().filter(|n| *n != "*").cloned().collect();
                    state.wildcard = wildcard_type(&req.type_url) && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*"));
                    state.names = names;
                    let snap = snapshots.borrow_and_update().clone();
                    self.push_sotw(&req.type_url, &snap, &mut types, &mut nonce, tx).await?;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { return Ok(()) }
                    let snap = snapshots.borrow_and_update().clone();
                    for t in TYPES {
                        if types.contains_key(t) {
                            self.push_sotw(t, &snap, &mut types, &mut nonce, tx).await?;
                        }
                    }
                }
            }
        }
    }

    /// Sends one type's view if it differs from what the stream was last sent.
    async fn push_sotw(
        &self,
        type_url: &str,
        snap: &Snapshot,
        types: &mut BTreeMap<String, SotwType>,
        nonce: &mut u64,
        tx: &SotwTx,
    ) -> Result<(), Status> {
        // Nothing is answered before the sources have synced (the first snapshot is 1).
        let Some(state) = types.get_mut(type_url).filter(|_| snap.version > 0) else {
            return Ok(());
        };
        let (resources, version) = state.view(snap, type_url);
        if state.sent.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        *nonce += 1;
        state.nonce = nonce.to_string();
        state.sent = Some(version.clone());
        let response = DiscoveryResponse {
            version_info: version,
            resources: resources.into_iter().map(|e| e.any.clone()).collect(),
            type_url: type_url.to_string(),
            nonce: state.nonce.clone(),
            ..Default::default()
        };
        tx.send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        self.metrics.pushed(short(type_url), snap.changed_at);
        Ok(())
    }

    async fn serve_delta(&self, incoming: &mut Streaming<DeltaDiscoveryRequest>, tx: &DeltaTx) -> Result<(), Status> {
        let mut snapshots = self.cache.subscribe();
        let mut types: BTreeMap<String, DeltaType> = BTreeMap::new();
        let mut client: Option<ClientInfo> = None;
        let mut nonce: u64 = 0;
        loop {
            tokio::select! {
                message = incoming.message() => {
                    let Some(req) = message? else { return Ok(()) };
                    if !self.served(&mut client, req.node.as_ref(), &req.type_url)? {
                        continue;
                    }
                    self.log_nack(&client, &req.type_url, &req.response_nonce, req.error_detail.as_ref());
                    let state = types.entry(req.type_url.clone()).or_default();
                    if !state.subscribed {
                        state.subscribed = true;
                        // Wildcard when the first request names nothing (or `*`).
                        state.wildcard = wildcard_type(&req.type_url) && req.resource_names_subscribe.is_empty();
                        state.held = req.initial_resource_versions.clone().into_iter().collect();
                    }
                    for name in &req.resource_names_subscribe {
                        if name == "*" { state.wildcard = true } else { state.names.insert(name.clone()); }
                    }
                    for name in &req.resource_names_unsubscribe {
                        if name == "*" { state.wildcard = false } else { state.names.remove(name); }
                        state.held.remove(name);
                        state.told_missing.remove(name);
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    self.push_delta(&req.type_url, &snap, &mut types, &mut nonce, tx).await?;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { return Ok(()) }
                    let snap = snapshots.borrow_and_update().clone();
                    for t in TYPES {
                        if types.contains_key(t) {
                            self.push_delta(t, &snap, &mut types, &mut nonce, tx).await?;
                        }
                    }
                }
            }
        }
    }

    /// Sends what changed for one type since the client last heard: new or changed
    /// resources, and the names of those that no longer exist.
    async fn push_delta(
        &self,
        type_url: &str,
        snap: &Snapshot,
        types: &mut BTreeMap<String, DeltaType>,
        nonce: &mut u64,
        tx: &DeltaTx,
    ) -> Result<(), Status> {
        let Some(state) = types.get_mut(type_url).filter(|_| snap.version > 0) else {
            return Ok(());
        };
        let empty = BTreeMap::new();
        let all = snap.of(type_url).unwrap_or(&empty);
        let in_scope = |name: &String| state.wildcard || state.names.contains(name);
        let mut resources = Vec::new();
        for (name, e) in all.iter().filter(|(n, _)| in_scope(n)) {
            if state.held.get(name) != Some(&e.version) {
                resources.push(Resource {
                    name: name.clone(),
                    version: e.version.clone(),
                    resource: Some(e.any.clone()),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> = state.held.keys().filter(|n| !all.contains_key(*n)).cloned().collect();
        // A subscribed name that does not exist is reported removed once, so the client
        // does not wait for it.
        let unknown: Vec<String> = state
            .names
            .iter()
            .filter(|n| !all.contains_key(*n) && !state.held.contains_key(*n) && !state.told_missing.contains(*n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && unknown.is_empty() {
            return Ok(());
        }
        for r in &resources {
            state.held.insert(r.name.clone(), r.version.clone());
            state.told_missing.remove(&r.name);
        }
        for n in &removed {
            state.held.remove(n);
        }
        state.told_missing.extend(unknown.iter().cloned());
        let mut removed_resources = removed;
        removed_resources.extend(unknown);
        *nonce += 1;
        let response = DeltaDiscoveryResponse {
            system_version_info: snap.version.to_string(),
            resources,
            type_url: type_url.to_string(),
            removed_resources,
            nonce: nonce.to_string(),
            ..Default::default()
        };
        tx.send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        self.metrics.pushed(short(type_url), snap.changed_at);
        Ok(())
    }
}
