//! The ADS server: state of the world and delta, for listeners, routes, clusters and load
//! assignments. Each stream keeps, per type, what it subscribed to and what it was last
//! sent; a new snapshot is sent only where that stream's view changed. Nonces are per
//! stream; a NACK is logged and counted, and the NACKed content is not sent again.
//! Listeners depend on the client: a gateway's pods see only that gateway's listeners,
//! every other client only the mesh's.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tonic::{Status, Streaming};
use tracing::{debug, warn};

use super::grpc::{Sender, StreamHandler};
use super::metrics::XdsMetrics;
use super::model;
use super::snapshot::{
    Cache, Encoded, Snapshot, TYPES, TypeSet, View, delta_field, set_version, short, sotw_field, wildcard_type,
};

/// The `ROLE` of a gateway's pods.
pub const GATEWAY_ROLE: &str = "gateway";

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
    /// `GATEWAY`: the MeshGateway (in `NAMESPACE`) a gateway pod belongs to.
    pub gateway: Option<String>,
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
            gateway: field("GATEWAY"),
        }
    }

    /// Which resources the client sees. A gateway pod names its gateway; one that does
    /// not is refused at admission, so `None` means "not a gateway's view".
    pub fn view(&self) -> Option<View> {
        if self.role.as_deref() != Some(GATEWAY_ROLE) {
            return Some(View::Mesh);
        }
        let (name, namespace) = (self.gateway.as_deref()?, self.namespace.as_deref()?);
        Some(View::Gateway(model::gateway_key(name, namespace)))
    }
}

/// An admitted client and what it sees.
struct Client {
    info: ClientInfo,
    view: View,
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
    fn served(&self, client: &mut Option<Client>, node: Option<&Node>, type_url: &str) -> Result<bool, Status> {
        if client.is_none() {
            *client = Some(self.admit(node)?);
        }
        if !TYPES.contains(&type_url) {
            let id = client.as_ref().map(|c| c.info.id.as_str()).unwrap_or_default();
            debug!(client = id, type_url, "ignoring a request for an unserved type");
            return Ok(false);
        }
        Ok(true)
    }

    /// Logs and counts a NACK; the stream then keeps what it sent, so nothing is resent.
    fn log_nack(&self, client: &Option<Client>, type_url: &str, nonce: &str, error: Option<&RpcStatus>) {
        if let Some(err) = error {
            self.metrics.nack(short(type_url));
            let id = client.as_ref().map(|c| c.info.id.as_str()).unwrap_or_default();
            warn!(client = id, type_url = short(type_url), nonce, error = %err.message, "client rejected a response (NACK); it keeps its last good configuration");
        }
    }

    fn admit(&self, node: Option<&Node>) -> Result<Client, Status> {
        let node = node.ok_or_else(|| Status::invalid_argument("the first request of a stream must carry the node"))?;
        let info = ClientInfo::from_node(node);
        let view = info.view().ok_or_else(|| {
            Status::invalid_argument("a client with ROLE gateway must name its gateway in GATEWAY and NAMESPACE")
        })?;
        (self.admission)(&info).map_err(Status::permission_denied)?;
        Ok(Client { info, view })
    }

    /// The view of an admitted client (every request is admitted before it is served).
    fn view(client: &Option<Client>) -> &View {
        static MESH: View = View::Mesh;
        client.as_ref().map_or(&MESH, |c| &c.view)
    }
}

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

impl StreamHandler for AdsServer {
    fn sotw<'a>(
        &'a self,
        incoming: Streaming<DiscoveryRequest>,
        out: &'a Sender,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        self.serve_sotw(incoming, out)
    }

    fn delta<'a>(
        &'a self,
        incoming: Streaming<DeltaDiscoveryRequest>,
        out: &'a Sender,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        self.serve_delta(incoming, out)
    }
}

impl AdsServer {
    /// Serves one state-of-the-world stream until the client ends it.
    async fn serve_sotw(&self, mut incoming: Streaming<DiscoveryRequest>, out: &Sender) -> Result<(), Status> {
        let _connected = self.metrics.stream_opened("sotw");
        self.sotw(&mut incoming, out).await
    }

    /// Serves one delta stream, like [`AdsServer::serve_sotw`].
    async fn serve_delta(&self, mut incoming: Streaming<DeltaDiscoveryRequest>, out: &Sender) -> Result<(), Status> {
        let _connected = self.metrics.stream_opened("delta");
        self.delta(&mut incoming, out).await
    }

    async fn sotw(&self, incoming: &mut Streaming<DiscoveryRequest>, out: &Sender) -> Result<(), Status> {
        let mut snapshots = self.cache.subscribe();
        let mut types: BTreeMap<String, SotwType> = BTreeMap::new();
        let mut client: Option<Client> = None;
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
                    self.push_sotw(&req.type_url, &snap, Self::view(&client), &mut types, &mut nonce, out).await?;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { return Ok(()) }
                    let snap = snapshots.borrow_and_update().clone();
                    for t in TYPES {
                        if types.contains_key(t) {
                            self.push_sotw(t, &snap, Self::view(&client), &mut types, &mut nonce, out).await?;
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
        view: &View,
        types: &mut BTreeMap<String, SotwType>,
        nonce: &mut u64,
        out: &Sender,
    ) -> Result<(), Status> {
        // Nothing is answered before the sources have synced (the first snapshot is 1).
        let Some(state) = types.get_mut(type_url).filter(|_| snap.version > 0) else {
            return Ok(());
        };
        let empty = TypeSet::default();
        let set = snap.of(type_url, view).unwrap_or(&empty);
        let version = if state.wildcard {
            set.wildcard_version.clone()
        } else {
            set_version(state.names.iter().map(|n| (n, set.items.get(n).map(|e| &e.version))))
        };
        if state.sent.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        *nonce += 1;
        state.nonce = nonce.to_string();
        state.sent = Some(version.clone());
        let mut head = DiscoveryResponse {
            version_info: version,
            type_url: type_url.to_string(),
            nonce: state.nonce.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        let shared = if state.wildcard {
            Some(set.all_sotw.clone())
        } else {
            for e in state.names.iter().filter_map(|n| set.items.get(n)) {
                sotw_field(&e.any, &mut head);
            }
            None
        };
        out.message(head, shared)
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        self.metrics.pushed(short(type_url), snap.changed_at);
        Ok(())
    }

    async fn delta(&self, incoming: &mut Streaming<DeltaDiscoveryRequest>, out: &Sender) -> Result<(), Status> {
        let mut snapshots = self.cache.subscribe();
        let mut types: BTreeMap<String, DeltaType> = BTreeMap::new();
        let mut client: Option<Client> = None;
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
                    self.push_delta(&req.type_url, &snap, Self::view(&client), &mut types, &mut nonce, out).await?;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { return Ok(()) }
                    let snap = snapshots.borrow_and_update().clone();
                    for t in TYPES {
                        if types.contains_key(t) {
                            self.push_delta(t, &snap, Self::view(&client), &mut types, &mut nonce, out).await?;
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
        view: &View,
        types: &mut BTreeMap<String, DeltaType>,
        nonce: &mut u64,
        out: &Sender,
    ) -> Result<(), Status> {
        let Some(state) = types.get_mut(type_url).filter(|_| snap.version > 0) else {
            return Ok(());
        };
        let empty = TypeSet::default();
        let set = snap.of(type_url, view).unwrap_or(&empty);
        let all = &set.items;
        let in_scope = |name: &String| state.wildcard || state.names.contains(name);
        let changed: Vec<(&String, &Encoded)> = all
            .iter()
            .filter(|(n, e)| in_scope(n) && state.held.get(*n) != Some(&e.version))
            .collect();
        let removed: Vec<String> = state.held.keys().filter(|n| !all.contains_key(*n)).cloned().collect();
        // A subscribed name that does not exist is reported removed once, so the client
        // does not wait for it.
        let unknown: Vec<String> = state
            .names
            .iter()
            .filter(|n| !all.contains_key(*n) && !state.held.contains_key(*n) && !state.told_missing.contains(*n))
            .cloned()
            .collect();
        if changed.is_empty() && removed.is_empty() && unknown.is_empty() {
            return Ok(());
        }
        for (name, e) in &changed {
            state.held.insert((*name).clone(), e.version.clone());
            state.told_missing.remove(*name);
        }
        for n in &removed {
            state.held.remove(n);
        }
        state.told_missing.extend(unknown.iter().cloned());
        let mut removed_resources = removed;
        removed_resources.extend(unknown);
        *nonce += 1;
        let mut head = DeltaDiscoveryResponse {
            system_version_info: snap.version.to_string(),
            type_url: type_url.to_string(),
            removed_resources,
            nonce: nonce.to_string(),
            ..Default::default()
        }
        .encode_to_vec();
        // Everything at once (a new subscriber) shares the snapshot's encoding.
        let shared = if changed.len() == all.len() {
            Some(set.all_delta.clone())
        } else {
            for (name, e) in &changed {
                delta_field(name, e, &mut head);
            }
            None
        };
        out.message(head, shared)
            .await
            .map_err(|_| Status::cancelled("stream closed"))?;
        self.metrics.pushed(short(type_url), snap.changed_at);
        Ok(())
    }
}
