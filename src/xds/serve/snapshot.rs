//! Snapshots: an immutable, encoded set of every resource, with a version per resource (a
//! hash of its bytes) so streams can tell exactly what changed. Listeners depend on who
//! asks (proxyless clients, node proxies, or one gateway's pods: a [`View`]), and so do load assignments in a
//! multi-network mesh (split-horizon EDS: by the client's network); every other type is
//! shared. A single-network mesh holds one EDS set, shared by every client.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::Resource;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tokio::sync::watch;

use crate::xds::translate::Resources;
use crate::xds::translate::encoded::{Encoded, encode};
use crate::xds::translate::incremental::{Changed, EncodedMesh};

/// Type URL of listeners.
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of route configurations.
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of clusters.
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of load assignments.
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Every served type, in the order updates go out: clusters before their endpoints, and
/// listeners before their routes (make before break).
pub const TYPES: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// Short names for metrics and logs.
pub fn short(type_url: &str) -> &'static str {
    match type_url {
        LISTENER => "lds",
        ROUTE => "rds",
        CLUSTER => "cds",
        ENDPOINT => "eds",
        _ => "unknown",
    }
}

/// Whether a type allows wildcard subscriptions (all resources without naming them).
pub fn wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// Every resource of one type, plus the encodings that wildcard subscribers share.
#[derive(Clone, Debug, Default)]
pub struct TypeSet {
    /// Resources by name.
    pub items: BTreeMap<String, Encoded>,
    /// The version of the whole set, as a wildcard subscriber sees it.
    pub wildcard_version: String,
    /// Every resource encoded as `DiscoveryResponse.resources` fields, made when a stream
    /// first needs it (load assignments, which streams name, never are).
    all_sotw: OnceLock<Bytes>,
    /// Every resource encoded as `DeltaDiscoveryResponse.resources` fields (same idea).
    all_delta: OnceLock<Bytes>,
}

impl TypeSet {
    /// A set of `items`, with its wildcard version.
    pub fn new(items: BTreeMap<String, Encoded>) -> TypeSet {
        let wildcard_version = format!("*{}", set_version(items.iter().map(|(n, e)| (n, Some(&e.version)))));
        TypeSet {
            items,
            wildcard_version,
            all_sotw: OnceLock::new(),
            all_delta: OnceLock::new(),
        }
    }

    /// Every resource as `DiscoveryResponse.resources` fields. Protobuf messages
    /// concatenate, so every wildcard stream sends these same bytes after its own few
    /// header fields: memory stays one copy however many streams there are.
    pub fn all_sotw(&self) -> Bytes {
        self.all_sotw
            .get_or_init(|| {
                let mut out = Vec::new();
                for e in self.items.values() {
                    sotw_field(&e.any, &mut out);
                }
                out.into()
            })
            .clone()
    }

    /// Every resource as `DeltaDiscoveryResponse.resources` fields (same idea).
    pub fn all_delta(&self) -> Bytes {
        self.all_delta
            .get_or_init(|| {
                let mut out = Vec::new();
                for (name, e) in &self.items {
                    delta_field(name, e, &mut out);
                }
                out.into()
            })
            .clone()
    }

    /// Whether both hold the same resources (by name and content hash).
    pub fn same_items(&self, other: &TypeSet) -> bool {
        self.items.len() == other.items.len()
            && self
                .items
                .iter()
                .zip(&other.items)
                .all(|((an, a), (bn, b))| an == bn && a.version == b.version)
    }
}

/// Appends one resource as a `DiscoveryResponse.resources` field.
pub fn sotw_field(any: &Any, out: &mut Vec<u8>) {
    prost::encoding::message::encode(DISCOVERY_RESOURCES_FIELD, any, out);
}

/// The length of one resource as a `DiscoveryResponse.resources` field.
pub fn sotw_field_len(any: &Any) -> usize {
    prost::encoding::message::encoded_len(DISCOVERY_RESOURCES_FIELD, any)
}

/// Appends one resource as a `DeltaDiscoveryResponse.resources` field.
pub fn delta_field(name: &str, e: &Encoded, out: &mut Vec<u8>) {
    let resource = Resource {
        name: name.to_string(),
        version: e.version.clone(),
        resource: Some(Any::clone(&e.any)),
        ..Default::default()
    };
    prost::encoding::message::encode(DISCOVERY_RESOURCES_FIELD, &resource, out);
}

/// The field number of `resources` in both `DiscoveryResponse` and `DeltaDiscoveryResponse`.
const DISCOVERY_RESOURCES_FIELD: u32 = 2;

/// Whose resources a client sees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// A gateway pod's `model::gateway_key`: only that gateway's listeners. `None`: a mesh
    /// client (proxyless or node proxy).
    pub gateway: Option<String>,
    /// A node proxy: the node proxies' socket listeners instead of the mesh's
    /// `api_listener`s (every other type as a proxyless client sees it).
    pub node_proxy: bool,
    /// The client's network (node metadata `NETWORK`); `None`: the control plane's own.
    pub network: Option<String>,
}

impl View {
    /// A mesh client on the control plane's own network.
    pub const MESH: View = View {
        gateway: None,
        node_proxy: false,
        network: None,
    };

    /// A node proxy on the control plane's own network.
    pub const NODE_PROXY: View = View {
        gateway: None,
        node_proxy: true,
        network: None,
    };

    /// A pod of the gateway with this key, on the control plane's own network.
    pub fn gateway(key: impl Into<String>) -> View {
        View {
            gateway: Some(key.into()),
            node_proxy: false,
            network: None,
        }
    }

    /// The same view from network `network`.
    pub fn on(self, network: impl Into<String>) -> View {
        View {
            network: Some(network.into()),
            ..self
        }
    }
}

/// Every resource at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Increases with every snapshot.
    pub version: u64,
    /// When the change that produced it was first seen (for push latency).
    pub changed_at: Instant,
    /// Resources by type URL, as mesh clients see them; a set that did not change is
    /// shared with the snapshot before.
    pub resources: BTreeMap<&'static str, Arc<TypeSet>>,
    /// Each gateway's listeners, by gateway key: what its pods see instead of
    /// `resources[LISTENER]`. Empty (no allocation) without gateways.
    pub gateway_listeners: BTreeMap<String, Arc<TypeSet>>,
    /// The node proxies' listeners: what they see instead of `resources[LISTENER]`.
    pub node_proxy_listeners: Arc<TypeSet>,
    /// The networks beside this one: empty (no allocation) in a single-network mesh.
    pub networks: Networks,
}

/// Split-horizon EDS of a multi-network mesh: what clients on other networks than the
/// control plane's, and east-west gateways, see instead of `resources[ENDPOINT]`.
#[derive(Clone, Debug, Default)]
pub struct Networks {
    /// The control plane's own network: its clients see `resources[ENDPOINT]`.
    pub own: String,
    /// EDS for clients on each other network (`eds::OTHER_NETWORKS`: any network no
    /// endpoint or gateway is on).
    pub endpoints: BTreeMap<String, Arc<TypeSet>>,
    /// EDS for east-west gateways on each network, where it differs from a client's there.
    pub local: BTreeMap<String, Arc<TypeSet>>,
    /// The keys of the east-west gateways.
    pub eastwest: BTreeSet<String>,
}

impl Networks {
    fn same_content(&self, other: &Networks) -> bool {
        self.own == other.own
            && self.eastwest == other.eastwest
            && same_sets(&self.endpoints, &other.endpoints)
            && same_sets(&self.local, &other.local)
    }
}

/// Whether two maps of sets hold the same resources (by name and content hash).
fn same_sets<K: Ord, S: AsRef<TypeSet>>(a: &BTreeMap<K, S>, b: &BTreeMap<K, S>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ak, a), (bk, b))| ak == bk && a.as_ref().same_items(b.as_ref()))
}

impl AsRef<TypeSet> for TypeSet {
    fn as_ref(&self) -> &TypeSet {
        self
    }
}

impl Snapshot {
    /// An empty snapshot, version 0.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            changed_at: Instant::now(),
            resources: TYPES.iter().map(|t| (*t, Arc::default())).collect(),
            gateway_listeners: BTreeMap::new(),
            node_proxy_listeners: Arc::default(),
            networks: Networks::default(),
        }
    }

    /// Encodes translated resources.
    pub fn new(version: u64, changed_at: Instant, r: &Resources) -> Snapshot {
        fn set<M: Message + Name>(items: &BTreeMap<String, M>) -> Arc<TypeSet> {
            Arc::new(TypeSet::new(
                items.iter().map(|(n, m)| (n.clone(), encode(m))).collect(),
            ))
        }
        let resources = BTreeMap::from([
            (LISTENER, set(&r.listeners)),
            (ROUTE, set(&r.routes)),
            (CLUSTER, set(&r.clusters)),
            (ENDPOINT, set(&r.endpoints)),
        ]);
        let gateway_listeners = r
            .gateway_listeners
            .iter()
            .map(|(key, listeners)| (key.clone(), set(listeners)))
            .collect();
        let by_network = |m: &BTreeMap<String, BTreeMap<String, _>>| -> BTreeMap<String, Arc<TypeSet>> {
            m.iter().map(|(n, items)| (n.clone(), set(items))).collect()
        };
        let networks = Networks {
            own: r.own_network.clone(),
            endpoints: by_network(&r.network_endpoints),
            local: by_network(&r.local_endpoints),
            eastwest: r.eastwest_gateways.clone(),
        };
        Snapshot {
            version,
            changed_at,
            resources,
            gateway_listeners,
            node_proxy_listeners: set(&r.node_proxy_listeners),
            networks,
        }
    }

    /// A snapshot of mesh resources encoded beforehand (incremental translation, with which
    /// of its types changed since it made `previous`) and the rest of `rest`: the gateways'
    /// listeners and route configurations, and split-horizon EDS, whose client-network set
    /// replaces the mesh's load assignments. A set that holds the same resources as in
    /// `previous` is that set, shared; listeners and clusters that did not change are not
    /// even copied.
    pub fn assemble(
        version: u64,
        changed_at: Instant,
        (mesh, changed): (&EncodedMesh, Changed),
        rest: &Resources,
        previous: &Snapshot,
    ) -> Snapshot {
        fn encoded<M: Message + Name>(items: &BTreeMap<String, M>) -> BTreeMap<String, Encoded> {
            items.iter().map(|(n, m)| (n.clone(), encode(m))).collect()
        }
        let mut snap = Snapshot::new(
            version,
            changed_at,
            &Resources {
                gateway_listeners: rest.gateway_listeners.clone(),
                eastwest_gateways: rest.eastwest_gateways.clone(),
                own_network: rest.own_network.clone(),
                network_endpoints: rest.network_endpoints.clone(),
                local_endpoints: rest.local_endpoints.clone(),
                ..Default::default()
            },
        );
        let reuse = |type_url: &'static str, changed: bool, items: &dyn Fn() -> BTreeMap<String, Encoded>| {
            let before = previous.resources.get(type_url);
            if let (false, Some(before)) = (changed, before) {
                return (type_url, Arc::clone(before));
            }
            let set = TypeSet::new(items());
            let shared = before.filter(|p| p.same_items(&set));
            (type_url, shared.cloned().unwrap_or_else(|| Arc::new(set)))
        };
        // Route configurations and load assignments may hold more than the mesh's (the
        // gateways', split-horizon EDS): always compared.
        let routes = || {
            let mut all = mesh.routes.clone();
            all.extend(encoded(&rest.routes));
            all
        };
        let endpoints = || {
            if rest.split_horizon {
                encoded(&rest.endpoints)
            } else {
                mesh.endpoints.clone()
            }
        };
        snap.resources = BTreeMap::from([
            reuse(LISTENER, changed.listeners, &|| mesh.listeners.clone()),
            reuse(ROUTE, true, &routes),
            reuse(CLUSTER, changed.clusters, &|| mesh.clusters.clone()),
            reuse(ENDPOINT, true, &endpoints),
        ]);
        let node_proxy = TypeSet::new(mesh.node_proxy_listeners.clone());
        snap.node_proxy_listeners = if previous.node_proxy_listeners.same_items(&node_proxy) {
            Arc::clone(&previous.node_proxy_listeners)
        } else {
            Arc::new(node_proxy)
        };
        snap
    }

    /// Whether both hold the same resources (by name and content hash), for every view.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        same_sets(&self.resources, &other.resources)
            && same_sets(&self.gateway_listeners, &other.gateway_listeners)
            && self.node_proxy_listeners.same_items(&other.node_proxy_listeners)
            && self.networks.same_content(&other.networks)
    }

    /// The resources of one type as `view` sees them. A gateway that is not (or no longer)
    /// translated has no listeners: `None`, like a type that is not served.
    pub fn of(&self, type_url: &str, view: &View) -> Option<&Arc<TypeSet>> {
        match (type_url, &view.gateway) {
            (LISTENER, Some(key)) => self.gateway_listeners.get(key),
            (LISTENER, None) if view.node_proxy => Some(&self.node_proxy_listeners),
            (ENDPOINT, _) => self.endpoints_of(view),
            _ => self.resources.get(type_url),
        }
    }

    /// Load assignments as `view` sees them: the shared set on the control plane's own
    /// network (and in every single-network mesh), else its network's, else the set for
    /// networks nothing is on. An east-west gateway sees only its network's endpoints:
    /// `None` (nothing) on a network no endpoint is on.
    fn endpoints_of(&self, view: &View) -> Option<&Arc<TypeSet>> {
        let shared = self.resources.get(ENDPOINT);
        let n = &self.networks;
        if n.endpoints.is_empty() && n.local.is_empty() {
            return shared;
        }
        let network = view.network.as_deref().unwrap_or(&n.own);
        let eastwest = view.gateway.as_ref().is_some_and(|k| n.eastwest.contains(k));
        if eastwest {
            if let Some(local) = n.local.get(network) {
                return Some(local);
            }
            return if network == n.own {
                shared
            } else {
                n.endpoints.get(network)
            };
        }
        if network == n.own {
            return shared;
        }
        n.endpoints
            .get(network)
            .or_else(|| n.endpoints.get(crate::xds::translate::eds::OTHER_NETWORKS))
            .or(shared)
    }

    /// How many resources of each type there are, counting every gateway's listeners and
    /// every network's load assignments.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        let sum = |sets: &BTreeMap<String, Arc<TypeSet>>| -> usize { sets.values().map(|s| s.items.len()).sum() };
        self.resources.iter().map(move |(t, set)| {
            let extra = match *t {
                LISTENER => sum(&self.gateway_listeners) + self.node_proxy_listeners.items.len(),
                ENDPOINT => sum(&self.networks.endpoints) + sum(&self.networks.local),
                _ => 0,
            };
            (*t, set.items.len() + extra)
        })
    }
}

/// Where snapshots are published and streams watch for them.
#[derive(Clone)]
pub struct Cache {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// A cache holding the empty snapshot.
    pub fn new() -> Cache {
        let (tx, _) = watch::channel(Arc::new(Snapshot::empty()));
        Cache { tx: Arc::new(tx) }
    }

    /// Publishes a snapshot to every stream.
    pub fn publish(&self, snapshot: Snapshot) {
        self.tx.send_replace(Arc::new(snapshot));
    }

    /// The current snapshot, and a receiver for the next ones.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }
}

/// A version for a set of (name, version) pairs, so a response's version names its content:
/// FNV-1a over `name=version;` for each pair (`-` for a missing version), hashed as it goes
/// rather than joined first, since every stream computes one per push.
pub fn set_version<'a>(items: impl Iterator<Item = (&'a String, Option<&'a String>)>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (name, version) in items {
        feed(name.as_bytes());
        feed(b"=");
        feed(version.map_or("-", String::as_str).as_bytes());
        feed(b";");
    }
    format!("{h:016x}")
}
