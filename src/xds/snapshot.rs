//! Snapshots: an immutable, encoded set of every resource, with a version per resource (a
//! hash of its bytes) so streams can tell exactly what changed. Listeners depend on who
//! asks (mesh clients or one gateway's pods: a [`View`]); every other type is shared.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::Resource;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tokio::sync::watch;

use super::translate::Resources;
use crate::render::{fnv1a, fnv1a_bytes};

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

/// One encoded resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// The resource, packed.
    pub any: Any,
    /// Its version: a hash of its encoding.
    pub version: String,
}

fn encode<M: Message + Name>(m: &M) -> Encoded {
    let bytes = m.encode_to_vec();
    let version = fnv1a_bytes(&bytes);
    Encoded {
        any: Any {
            type_url: M::type_url(),
            value: bytes,
        },
        version,
    }
}

/// Every resource of one type, plus the encodings that wildcard subscribers share.
#[derive(Clone, Debug, Default)]
pub struct TypeSet {
    /// Resources by name.
    pub items: BTreeMap<String, Encoded>,
    /// The version of the whole set, as a wildcard subscriber sees it.
    pub wildcard_version: String,
    /// Every resource encoded as `DiscoveryResponse.resources` fields. Protobuf messages
    /// concatenate, so every wildcard stream sends these same bytes after its own few
    /// header fields: memory stays one copy however many streams there are.
    pub all_sotw: Bytes,
    /// Every resource encoded as `DeltaDiscoveryResponse.resources` fields (same idea).
    pub all_delta: Bytes,
}

impl TypeSet {
    /// A set of `items`, with its wildcard version and shared encodings.
    pub fn new(items: BTreeMap<String, Encoded>) -> TypeSet {
        let wildcard_version = format!("*{}", set_version(items.iter().map(|(n, e)| (n, Some(&e.version)))));
        let mut all_sotw = Vec::new();
        let mut all_delta = Vec::new();
        for (name, e) in &items {
            sotw_field(&e.any, &mut all_sotw);
            delta_field(name, e, &mut all_delta);
        }
        TypeSet {
            items,
            wildcard_version,
            all_sotw: all_sotw.into(),
            all_delta: all_delta.into(),
        }
    }
}

/// Appends one resource as a `DiscoveryResponse.resources` field.
pub fn sotw_field(any: &Any, out: &mut Vec<u8>) {
    prost::encoding::message::encode(DISCOVERY_RESOURCES_FIELD, any, out);
}

/// Appends one resource as a `DeltaDiscoveryResponse.resources` field.
pub fn delta_field(name: &str, e: &Encoded, out: &mut Vec<u8>) {
    let resource = Resource {
        name: name.to_string(),
        version: e.version.clone(),
        resource: Some(e.any.clone()),
        ..Default::default()
    };
    prost::encoding::message::encode(DISCOVERY_RESOURCES_FIELD, &resource, out);
}

/// The field number of `resources` in both `DiscoveryResponse` and `DeltaDiscoveryResponse`.
const DISCOVERY_RESOURCES_FIELD: u32 = 2;

/// Whose resources a client sees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// A mesh client (proxyless or node proxy): the mesh listeners.
    #[default]
    Mesh,
    /// A pod of the gateway with this `model::gateway_key`: only that gateway's listeners.
    Gateway(String),
}

/// Every resource at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Increases with every snapshot.
    pub version: u64,
    /// When the change that produced it was first seen (for push latency).
    pub changed_at: Instant,
    /// Resources by type URL, as mesh clients see them.
    pub resources: BTreeMap<&'static str, TypeSet>,
    /// Each gateway's listeners, by gateway key: what its pods see instead of
    /// `resources[LISTENER]`. Empty (no allocation) without gateways.
    pub gateway_listeners: BTreeMap<String, TypeSet>,
}

impl Snapshot {
    /// An empty snapshot, version 0.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: 0,
            changed_at: Instant::now(),
            resources: TYPES.iter().map(|t| (*t, TypeSet::default())).collect(),
            gateway_listeners: BTreeMap::new(),
        }
    }

    /// Encodes translated resources.
    pub fn new(version: u64, changed_at: Instant, r: &Resources) -> Snapshot {
        fn set<M: Message + Name>(items: &BTreeMap<String, M>) -> TypeSet {
            TypeSet::new(items.iter().map(|(n, m)| (n.clone(), encode(m))).collect())
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
        Snapshot {
            version,
            changed_at,
            resources,
            gateway_listeners,
        }
    }

    /// Whether both hold the same resources (by name and content hash), for every view.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        fn same_sets<K: Ord>(a: &BTreeMap<K, TypeSet>, b: &BTreeMap<K, TypeSet>) -> bool {
            a.len() == b.len()
                && a.iter().zip(b).all(|((ak, a), (bk, b))| {
                    ak == bk
                        && a.items.len() == b.items.len()
                        && a.items
                            .iter()
                            .zip(&b.items)
                            .all(|((an, a), (bn, b))| an == bn && a.version == b.version)
                })
        }
        same_sets(&self.resources, &other.resources) && same_sets(&self.gateway_listeners, &other.gateway_listeners)
    }

    /// The resources of one type as `view` sees them. A gateway that is not (or no longer)
    /// translated has no listeners: `None`, like a type that is not served.
    pub fn of(&self, type_url: &str, view: &View) -> Option<&TypeSet> {
        match view {
            View::Gateway(key) if type_url == LISTENER => self.gateway_listeners.get(key),
            _ => self.resources.get(type_url),
        }
    }

    /// How many resources of each type there are, counting every gateway's listeners.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        self.resources.iter().map(|(t, set)| {
            let gateways: usize = if *t == LISTENER {
                self.gateway_listeners.values().map(|s| s.items.len()).sum()
            } else {
                0
            };
            (*t, set.items.len() + gateways)
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

/// A version for a set of (name, version) pairs, so a response's version names its content.
pub fn set_version<'a>(items: impl Iterator<Item = (&'a String, Option<&'a String>)>) -> String {
    let mut text = String::new();
    for (name, version) in items {
        text.push_str(name);
        text.push('=');
        text.push_str(version.map(String::as_str).unwrap_or("-"));
        text.push(';');
    }
    fnv1a(&text)
}
