//! The ADS server: state of the world and delta, for listeners, routes, clusters and load
//! assignments. Each stream keeps, per type, a [`Subscription`]: what it subscribed to and
//! what it was last sent; a new snapshot is sent only where that stream's view changed.
//! Nonces are per stream; a NACK is logged and counted, and the NACKed content is not sent
//! again. Listeners depend on the client: a gateway's pods see only that gateway's
//! listeners, every other client only the mesh's; in a multi-network mesh, load
//! assignments depend on the client's network (see `snapshot::View`). One stream loop serves both variants;
//! a `Variant` says how each reads its requests and encodes its responses.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tonic::{Status, Streaming};
use tracing::{debug, warn};

use super::claims::{self, Authenticator, Claims};
use super::conn::Peer;
use super::grpc::{Caller, SendError, Sender, StreamHandler};
use super::snapshot::{Cache, Snapshot, TYPES, TypeSet, View, delta_field, short, sotw_field, sotw_field_len};
use super::subscription::{Freshness, SotwOwed, SotwResources, Subscription};
use crate::identity::spiffe::WorkloadId;
use crate::identity::tokens::AuthError;
use crate::xds::metrics::{Refusal, XdsMetrics};
use crate::xds::model;

pub use super::claims::{GATEWAY_ROLE, NODE_PROXY_ROLE};

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
    /// `CLUSTER`: the mesh cluster the client runs in (the control plane's own when unset).
    pub cluster: Option<String>,
    /// `NETWORK`: the network the client is on (the control plane's own when unset).
    pub network: Option<String>,
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
            cluster: field("CLUSTER"),
            network: field("NETWORK"),
        }
    }

    /// Which resources the client sees: by role (a gateway pod names its gateway; one that
    /// does not is refused at admission, so `None` means "not a gateway's view") and by
    /// network (its `NETWORK`; the control plane's own when unset or empty).
    pub fn view(&self) -> Option<View> {
        let network = self.network.clone().filter(|n| !n.is_empty());
        match self.role.as_deref() {
            Some(GATEWAY_ROLE) => {
                let (name, namespace) = (self.gateway.as_deref()?, self.namespace.as_deref()?);
                Some(View {
                    gateway: Some(model::gateway_key(name, namespace)),
                    node_proxy: false,
                    network,
                })
            }
            role => Some(View {
                gateway: None,
                node_proxy: role == Some(NODE_PROXY_ROLE),
                network,
            }),
        }
    }
}

/// At most `max` bytes of `s` (cut at a character boundary, marked with `…`): what a
/// client sent is quoted in statuses, which travel in HTTP/2 trailers.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let end = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}…", &s[..end])
}

/// An admitted client and what it sees.
struct Client {
    info: ClientInfo,
    view: View,
    /// Its place among its identity's streams.
    _slot: Slot,
}

/// Limits on what one stream or client may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Resource names one stream may subscribe to, over all its types (and so also in one
    /// request).
    pub max_names: usize,
    /// Streams one client identity (node id) may have open at once.
    pub max_streams_per_client: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_names: 20_000,
            max_streams_per_client: 16,
        }
    }
}

/// Open streams by client identity.
#[derive(Clone, Default)]
struct Identities(Arc<Mutex<HashMap<String, usize>>>);

impl Identities {
    /// Takes one of `id`'s `max` places, if one is free.
    fn claim(&self, id: &str, max: usize) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let open = map.entry(id.to_string()).or_default();
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(Slot {
            identities: self.clone(),
            id: id.to_string(),
        })
    }
}

/// One stream's place among its identity's; given back when dropped.
struct Slot {
    identities: Identities,
    id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.identities.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = map.get_mut(&self.id) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// The ADS service.
#[derive(Clone)]
pub struct AdsServer {
    cache: Cache,
    admission: Admission,
    metrics: XdsMetrics,
    limits: StreamLimits,
    identities: Identities,
    /// Set on the TLS port: clients are authenticated and their claims checked.
    auth: Option<Arc<Authenticator>>,
}

impl AdsServer {
    /// The same server for the TLS port: every client is authenticated (workload
    /// certificate or ServiceAccount token) and may claim only what its identity allows.
    pub fn authenticating(&self, auth: Authenticator) -> AdsServer {
        AdsServer {
            auth: Some(Arc::new(auth)),
            ..self.clone()
        }
    }

    /// Who the caller is, on the TLS port (`None` on the plaintext port); refuses a caller
    /// that proved nothing.
    async fn authenticate(&self, caller: &Caller) -> Result<Option<WorkloadId>, Status> {
        let Some(auth) = &self.auth else { return Ok(None) };
        if let Peer::Tls(Some(id)) = &caller.peer {
            return Ok(Some(id.clone()));
        }
        let Some(token) = &caller.token else {
            return Err(self.refuse(
                Refusal::Unauthenticated,
                Status::unauthenticated(
                    "this port serves authenticated clients: present a workload certificate of this mesh (mTLS) or a ServiceAccount token (authorization: Bearer, audience weft-ca)",
                ),
            ));
        };
        auth.tokens
            .check(token, &auth.trust_domain)
            .await
            .map(Some)
            .map_err(|e| match e {
                AuthError::Unauthenticated(m) => self.refuse(Refusal::Unauthenticated, Status::unauthenticated(m)),
                AuthError::Unavailable(m) => Status::unavailable(m),
            })
    }
    /// A server answering from `cache`, for clients `admission` accepts, within `limits`.
    pub fn new(cache: Cache, admission: Admission, metrics: XdsMetrics, limits: StreamLimits) -> AdsServer {
        AdsServer {
            cache,
            admission,
            metrics,
            limits,
            identities: Identities::default(),
            auth: None,
        }
    }

    /// Counts a refusal and returns its status.
    fn refuse(&self, reason: Refusal, status: Status) -> Status {
        self.metrics.refused(reason);
        debug!(reason = reason.label(), message = status.message(), "refused");
        status
    }

    /// Checks common to every request: the first one must name an admitted client, and
    /// only the types this server serves may be asked for.
    fn served(
        &self,
        client: &mut Option<Client>,
        identity: Option<&WorkloadId>,
        node: Option<&Node>,
        type_url: &str,
    ) -> Result<(), Status> {
        if client.is_none() {
            *client = Some(self.admit(node, identity)?);
        }
        if !TYPES.contains(&type_url) {
            let served = TYPES.join(", ");
            return Err(self.refuse(
                Refusal::UnknownType,
                Status::invalid_argument(format!(
                    "type {:?} is not served; this control plane serves {served}",
                    clip(type_url, 200)
                )),
            ));
        }
        Ok(())
    }

    /// Refuses a request naming more resources than a stream may hold, and a stream
    /// holding more after it.
    fn check_names(&self, requested: usize, subscriptions: &BTreeMap<String, Subscription>) -> Result<(), Status> {
        let max = self.limits.max_names;
        let held: usize = subscriptions.values().map(|s| s.names().len()).sum();
        if requested <= max && held <= max {
            return Ok(());
        }
        let what = if requested > max {
            format!("a request named {requested} resources")
        } else {
            format!("the stream subscribed to {held} resource names")
        };
        Err(self.refuse(
            Refusal::TooManyNames,
            Status::resource_exhausted(format!(
                "{what}, over this control plane's limit of {max} per stream (--xds-max-resource-names)"
            )),
        ))
    }

    /// Turns a request that could not be read into the status that ends the stream.
    fn unreadable(&self, status: Status) -> Status {
        match status.code() {
            tonic::Code::OutOfRange => self.refuse(Refusal::RequestTooLarge, status),
            // tonic reports a message that does not decode as an internal error; it is the
            // client's.
            tonic::Code::Internal => self.refuse(
                Refusal::MalformedRequest,
                Status::invalid_argument(format!("a request does not decode: {}", status.message())),
            ),
            _ => status,
        }
    }

    /// Logs and counts a NACK; the stream then keeps what it sent, so nothing is resent.
    fn log_nack(&self, client: &Option<Client>, type_url: &str, nonce: &str, error: Option<&RpcStatus>) {
        if let Some(err) = error {
            self.metrics.nack(short(type_url));
            let id = client.as_ref().map(|c| c.info.id.as_str()).unwrap_or_default();
            warn!(client = id, type_url = short(type_url), nonce, error = %err.message, "client rejected a response (NACK); it keeps its last good configuration");
        }
    }

    fn admit(&self, node: Option<&Node>, identity: Option<&WorkloadId>) -> Result<Client, Status> {
        let node = node.ok_or_else(|| {
            self.refuse(
                Refusal::NoNode,
                Status::invalid_argument("the first request of a stream must carry the node"),
            )
        })?;
        let info = ClientInfo::from_node(node);
        // Identity on this port is claimed, not proven: a client that does not say which
        // configuration it wants gets none, rather than every namespace's.
        if info.revision.is_none() && info.namespace.is_none() {
            return Err(self.refuse(
                Refusal::NoIdentity,
                Status::invalid_argument(
                    "the node metadata names neither REVISION (the revision or tag to follow) nor NAMESPACE (the client's namespace): set at least one",
                ),
            ));
        }
        let view = info.view().ok_or_else(|| {
            self.refuse(
                Refusal::BadGateway,
                Status::invalid_argument("a client with ROLE gateway must name its gateway in GATEWAY and NAMESPACE"),
            )
        })?;
        if let (Some(auth), Some(id)) = (&self.auth, identity) {
            let claims = Claims {
                namespace: info.namespace.as_deref(),
                role: info.role.as_deref(),
                gateway: info.gateway.as_deref(),
            };
            claims::check(&claims, id, auth)
                .map_err(|m| self.refuse(Refusal::ClaimMismatch, Status::permission_denied(m)))?;
        }
        (self.admission)(&info).map_err(|m| self.refuse(Refusal::NotAdmitted, Status::permission_denied(m)))?;
        let max = self.limits.max_streams_per_client;
        let slot = self.identities.claim(&info.id, max).ok_or_else(|| {
            self.refuse(
                Refusal::TooManyStreams,
                Status::resource_exhausted(format!(
                    "client {:?} already has {max} open streams, this control plane's limit per node id (--xds-max-streams-per-client)",
                    clip(&info.id, 200)
                )),
            )
        })?;
        Ok(Client {
            info,
            view,
            _slot: slot,
        })
    }

    /// The view of an admitted client (every request is admitted before it is served).
    fn view(client: &Option<Client>) -> &View {
        static MESH: View = View::MESH;
        client.as_ref().map_or(&MESH, |c| &c.view)
    }
}

/// One stream's state: who the client is, and its subscriptions by type URL.
#[derive(Default)]
struct StreamState {
    client: Option<Client>,
    /// Who the client proved to be (TLS port only).
    identity: Option<WorkloadId>,
    subscriptions: BTreeMap<String, Subscription>,
    nonces: Nonces,
}

/// A stream's nonces: one sequence across its types.
#[derive(Default)]
struct Nonces(u64);

impl Nonces {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

/// An encoded response: this stream's own fields, then the bytes it shares with others.
struct Outgoing {
    head: Vec<u8>,
    shared: Option<Bytes>,
}

/// One of the two ADS variants: what its requests say, and how what a subscription is
/// owed becomes a response.
trait Variant {
    /// Its request message.
    type Request: Send + Sync + 'static;
    /// Its label in the streams metric.
    const LABEL: &'static str;
    /// The node, which only the first request must carry.
    fn node(req: &Self::Request) -> Option<&Node>;
    /// The requested type.
    fn type_url(req: &Self::Request) -> &str;
    /// The nonce the request answers, and the error when it is a NACK.
    fn nack(req: &Self::Request) -> (&str, Option<&RpcStatus>);
    /// How many resource names the request carries.
    fn names_in(req: &Self::Request) -> usize;
    /// Applies a request to its type's subscription: `false` when it is ignored.
    fn apply(sub: &mut Subscription, req: &Self::Request) -> bool;
    /// The response `set` owes `sub`, if any, encoded and recorded as sent.
    fn respond(
        sub: &mut Subscription,
        type_url: &str,
        set: &Arc<TypeSet>,
        snapshot: u64,
        nonces: &mut Nonces,
    ) -> Option<Outgoing>;
}

/// State of the world: every response carries the whole view.
struct Sotw;

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    const LABEL: &'static str = "sotw";

    fn node(req: &DiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn type_url(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }

    fn nack(req: &DiscoveryRequest) -> (&str, Option<&RpcStatus>) {
        (&req.response_nonce, req.error_detail.as_ref())
    }

    fn names_in(req: &DiscoveryRequest) -> usize {
        req.resource_names.len()
    }

    fn apply(sub: &mut Subscription, req: &DiscoveryRequest) -> bool {
        sub.sotw_request(&req.resource_names, &req.response_nonce) == Freshness::Current
    }

    fn respond(
        sub: &mut Subscription,
        type_url: &str,
        set: &Arc<TypeSet>,
        _: u64,
        nonces: &mut Nonces,
    ) -> Option<Outgoing> {
        let owed = sub.sotw_owed(set)?;
        let nonce = nonces.next();
        sub.sotw_sent(&owed, &nonce);
        let SotwOwed { version, resources } = owed;
        let mut head = DiscoveryResponse {
            version_info: version,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        }
        .encode_to_vec();
        let shared = match resources {
            SotwResources::Shared(all) => Some(all),
            SotwResources::Named(items) => {
                head.reserve(items.iter().map(|e| sotw_field_len(&e.any)).sum());
                for e in items {
                    sotw_field(&e.any, &mut head);
                }
                None
            }
        };
        Some(Outgoing { head, shared })
    }
}

/// Delta: responses carry what changed since the client last heard.
struct Delta;

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    const LABEL: &'static str = "delta";

    fn node(req: &DeltaDiscoveryRequest) -> Option<&Node> {
        req.node.as_ref()
    }

    fn type_url(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }

    fn nack(req: &DeltaDiscoveryRequest) -> (&str, Option<&RpcStatus>) {
        (&req.response_nonce, req.error_detail.as_ref())
    }

    fn names_in(req: &DeltaDiscoveryRequest) -> usize {
        req.resource_names_subscribe.len() + req.initial_resource_versions.len()
    }

    fn apply(sub: &mut Subscription, req: &DeltaDiscoveryRequest) -> bool {
        sub.delta_request(
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
            &req.initial_resource_versions,
        );
        true
    }

    fn respond(
        sub: &mut Subscription,
        type_url: &str,
        set: &Arc<TypeSet>,
        snapshot: u64,
        nonces: &mut Nonces,
    ) -> Option<Outgoing> {
        let owed = sub.delta_owed(set)?;
        let nonce = nonces.next();
        sub.delta_sent(&owed, &nonce, set);
        let mut head = DeltaDiscoveryResponse {
            system_version_info: snapshot.to_string(),
            type_url: type_url.to_string(),
            removed_resources: owed.removed_resources(),
            nonce,
            ..Default::default()
        }
        .encode_to_vec();
        // Everything at once (a new subscriber) shares the snapshot's encoding.
        let shared = if owed.whole_set {
            Some(set.all_delta())
        } else {
            for (name, e) in &owed.changed {
                delta_field(name, e, &mut head);
            }
            None
        };
        Some(Outgoing { head, shared })
    }
}

impl StreamHandler for AdsServer {
    fn sotw<'a>(
        &'a self,
        caller: Caller,
        incoming: Streaming<DiscoveryRequest>,
        out: &'a Sender,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        self.serve::<Sotw>(caller, incoming, out)
    }

    fn delta<'a>(
        &'a self,
        caller: Caller,
        incoming: Streaming<DeltaDiscoveryRequest>,
        out: &'a Sender,
    ) -> impl Future<Output = Result<(), Status>> + Send + 'a {
        self.serve::<Delta>(caller, incoming, out)
    }
}

impl AdsServer {
    /// Serves one stream until the client ends it: each request updates its type's
    /// subscription and is answered from the current snapshot; each new snapshot is sent
    /// to every subscribed type it changes.
    async fn serve<V: Variant>(
        &self,
        caller: Caller,
        mut incoming: Streaming<V::Request>,
        out: &Sender,
    ) -> Result<(), Status> {
        let identity = self.authenticate(&caller).await?;
        let _connected = self.metrics.stream_opened(V::LABEL);
        let mut snapshots = self.cache.subscribe();
        let mut stream = StreamState {
            identity,
            ..StreamState::default()
        };
        loop {
            tokio::select! {
                message = incoming.message() => {
                    let Some(req) = message.map_err(|s| self.unreadable(s))? else { return Ok(()) };
                    let snap = snapshots.borrow_and_update().clone();
                    self.on_request::<V>(&req, &snap, &mut stream, out).await?;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { return Ok(()) }
                    let snap = snapshots.borrow_and_update().clone();
                    for t in TYPES {
                        self.push::<V>(t, &snap, &mut stream, out).await?;
                    }
                }
            }
        }
    }

    /// Applies one request to its type's subscription and answers it from `snap`.
    async fn on_request<V: Variant>(
        &self,
        req: &V::Request,
        snap: &Snapshot,
        stream: &mut StreamState,
        out: &Sender,
    ) -> Result<(), Status> {
        let type_url = V::type_url(req);
        self.served(&mut stream.client, stream.identity.as_ref(), V::node(req), type_url)?;
        self.check_names(V::names_in(req), &stream.subscriptions)?;
        let sub = stream
            .subscriptions
            .entry(type_url.to_string())
            .or_insert_with(|| Subscription::new(type_url));
        if !V::apply(sub, req) {
            // An answer to an older response: the newer one is still on its way.
            return Ok(());
        }
        self.check_names(0, &stream.subscriptions)?;
        let (nonce, error) = V::nack(req);
        self.log_nack(&stream.client, type_url, nonce, error);
        self.push::<V>(type_url, snap, stream, out).await
    }

    /// Sends one subscribed type what the snapshot owes it, if anything.
    async fn push<V: Variant>(
        &self,
        type_url: &str,
        snap: &Snapshot,
        stream: &mut StreamState,
        out: &Sender,
    ) -> Result<(), Status> {
        // Nothing is answered before the sources have synced (the first snapshot is 1).
        let Some(sub) = stream.subscriptions.get_mut(type_url).filter(|_| snap.version > 0) else {
            return Ok(());
        };
        // Checked against this snapshot already, and not changed since (an ACK).
        if sub.checked(snap.version) {
            return Ok(());
        }
        sub.mark_checked(snap.version);
        let empty = Arc::default();
        let set = snap.of(type_url, Self::view(&stream.client)).unwrap_or(&empty);
        let Some(response) = V::respond(sub, type_url, set, snap.version, &mut stream.nonces) else {
            return Ok(());
        };
        out.message(response.head, response.shared).await.map_err(|e| match e {
            SendError::Closed => Status::cancelled("stream closed"),
            SendError::Stalled { .. } => self.refuse(
                Refusal::SlowReader,
                Status::resource_exhausted(format!(
                    "{e}: closing the stream (limits: --xds-max-queued-bytes, --xds-send-timeout)"
                )),
            ),
        })?;
        self.metrics.pushed(short(type_url), snap.changed_at);
        Ok(())
    }
}
