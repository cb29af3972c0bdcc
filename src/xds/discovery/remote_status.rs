//! What this control plane sees of each remote cluster, in two places: its entry of the
//! RemoteCluster's `status.controlPlanes` (server-side apply, field manager
//! `weft-control-plane-<revision>`, written only when it changed and at most every
//! [`MIN_INTERVAL`]) and the `weft_remote_cluster_*` metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tracing::{debug, warn};

use super::sources::RemoteStores;
use crate::api::{ControlPlaneView, RemoteCluster};
use crate::xds::metrics::{ClusterLabels, RemoteMetrics, XdsMetrics};

/// The least time between two writes of one cluster's entry: endpoint counts may change
/// often, the status need not follow each change.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);

/// How long one status write may take before it is given up (and retried later).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The kinds a remote cluster's watches cover.
pub const KINDS: usize = 3;

/// Where one watch of a generation stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The kinds that have completed a list.
    pub listed: BTreeSet<&'static str>,
    /// The kinds whose last event was an error, with its kind (never its text: no secret).
    pub failing: BTreeMap<&'static str, String>,
}

impl Health {
    /// Whether every watch has listed and none is failing.
    pub fn synced(&self) -> bool {
        self.listed.len() == KINDS && self.failing.is_empty()
    }
}

/// One remote cluster as the manager sees it now.
pub struct Seen<'a> {
    /// Its name in the mesh.
    pub cluster: &'a str,
    /// The RemoteCluster it comes from: name and uid.
    pub source: &'a (String, String),
    /// The stores served.
    pub stores: &'a RemoteStores,
    /// Their watches' state.
    pub health: Health,
    /// Its API server.
    pub server: &'a str,
}

/// Mesh services and ready endpoints of a remote cluster, in namespaces `selectors` match.
pub fn counts(stores: &RemoteStores, selectors: &[LabelSelector]) -> (i64, i64) {
    let services: BTreeSet<(String, String)> = stores
        .services
        .state()
        .iter()
        .map(|s| (s.namespace().unwrap_or_default(), s.name_any()))
        .filter(|(ns, _)| stores.in_mesh(selectors, ns))
        .collect();
    let endpoints: usize = stores
        .slices
        .state()
        .iter()
        .filter(|sl| {
            sl.labels()
                .get("kubernetes.io/service-name")
                .is_some_and(|svc| services.contains(&(sl.namespace().unwrap_or_default(), svc.clone())))
        })
        .map(|sl| {
            sl.endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
                .map(|e| e.addresses.len())
                .sum::<usize>()
        })
        .sum();
    (services.len() as i64, endpoints as i64)
}

/// An API server address without user information (`https://user:pass@host`), should a
/// kubeconfig carry any.
pub fn safe_server(server: &str) -> String {
    let Some((scheme, rest)) = server.split_once("://") else {
        return server.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => server.to_string(),
    }
}

/// This control plane's entry for a cluster (without `lastChangeTime`): synced once every
/// watch has listed and none is failing; otherwise a message saying why, and that the last
/// endpoints seen are still served.
/// Endpoints of a network without an east-west gateway are named too: clients on other
/// networks do not get them.
pub fn view(
    revision: &str,
    health: &Health,
    server: &str,
    (services, endpoints): (i64, i64),
    without_gateway: Option<(&str, usize)>,
) -> ControlPlaneView {
    let synced = health.synced();
    let server = safe_server(server);
    let unreachable =
        without_gateway.map(|(network, n)| crate::xds::translate::eds::without_gateway_message(network, n));
    let message = match health.failing.values().next() {
        Some(kind) if kind.starts_with("HTTP ") => Some(format!(
            "{server} answers {kind}; serving the {endpoints} endpoints last seen"
        )),
        Some(kind) => Some(format!(
            "cannot reach {server}: {kind}; serving the {endpoints} endpoints last seen"
        )),
        None if !synced => Some(format!("listing Services, EndpointSlices and Namespaces of {server}")),
        None => unreachable,
    };
    ControlPlaneView {
        revision: revision.to_string(),
        synced,
        services,
        endpoints,
        message,
        last_change_time: None,
    }
}

/// Why a status write failed.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The API server refused it or could not be reached.
    #[error(transparent)]
    Api(kube::Error),
    /// No answer in time.
    #[error("no answer within {}s", WRITE_TIMEOUT.as_secs())]
    Timeout,
}

/// What was last written for one RemoteCluster.
struct Written {
    /// The RemoteCluster's name.
    name: String,
    /// The entry (without time); `None` when no write succeeded yet.
    view: Option<ControlPlaneView>,
    /// When it was last tried.
    at: Instant,
}

/// Writes each remote cluster's entry and metrics.
pub struct Reporter {
    api: Api<RemoteCluster>,
    revision: String,
    selectors: Vec<LabelSelector>,
    metrics: RemoteMetrics,
    /// Every xDS metric: which networks have endpoints without a gateway.
    xds: XdsMetrics,
    /// By RemoteCluster uid.
    written: BTreeMap<String, Written>,
}

impl Reporter {
    /// A reporter for the RemoteClusters of `namespace`, as `revision`'s control plane.
    pub fn new(
        client: &Client,
        namespace: &str,
        revision: &str,
        selectors: &[LabelSelector],
        metrics: &XdsMetrics,
    ) -> Reporter {
        Reporter {
            api: Api::namespaced(client.clone(), namespace),
            revision: revision.to_string(),
            selectors: selectors.to_vec(),
            metrics: metrics.remote.clone(),
            xds: metrics.clone(),
            written: BTreeMap::new(),
        }
    }

    /// Updates the metrics of every cluster, and writes the entries that changed.
    pub async fn report(&mut self, clusters: Vec<Seen<'_>>) {
        let mut live = BTreeSet::new();
        let names: Vec<String> = clusters.iter().map(|c| c.cluster.to_string()).collect();
        for c in clusters {
            let (services, endpoints) = counts(c.stores, &self.selectors);
            let network = &c.stores.origin.network;
            let without = self
                .xds
                .endpoints_without_gateway(network)
                .map(|n| (network.as_str(), n));
            let view = view(&self.revision, &c.health, c.server, (services, endpoints), without);
            self.metrics.set(c.cluster, view.synced, services, endpoints);
            let (name, uid) = c.source;
            live.insert(uid.clone());
            let last = self.written.get(uid);
            if last.is_some_and(|w| w.view.as_ref() == Some(&view) || w.at.elapsed() < MIN_INTERVAL) {
                continue;
            }
            let previous = last.and_then(|w| w.view.clone());
            let ok = self.write(name, &view).await;
            self.written.insert(
                uid.clone(),
                Written {
                    name: name.clone(),
                    view: if ok { Some(view) } else { previous },
                    at: Instant::now(),
                },
            );
        }
        let (kept, gone): (BTreeMap<_, _>, BTreeMap<_, _>) = std::mem::take(&mut self.written)
            .into_iter()
            .partition(|(uid, _)| live.contains(uid));
        self.written = kept;
        for w in gone.into_values().filter(|w| w.view.is_some()) {
            self.withdraw(&w.name).await;
        }
        self.metrics.retain(names.iter());
    }

    /// Removes this revision's entry from a RemoteCluster it no longer uses (another mesh,
    /// a missing Secret): its view would only go stale. A RemoteCluster already deleted
    /// needs nothing.
    async fn withdraw(&self, name: &str) {
        match self.apply(name, serde_json::json!([])).await {
            Ok(()) => debug!(remote_cluster = %name, "status entry removed"),
            Err(WriteError::Api(kube::Error::Api(s))) if s.code == 404 => {}
            Err(e) => warn!(remote_cluster = %name, error = %e, "cannot remove this control plane's status entry"),
        }
    }

    /// Applies this revision's entry; `false` (logged) when that failed.
    async fn write(&self, name: &str, view: &ControlPlaneView) -> bool {
        let mut entry = view.clone();
        entry.last_change_time = Some(Time(Timestamp::now()));
        let entries = serde_json::json!([entry]);
        match self.apply(name, entries).await {
            Ok(()) => {
                debug!(remote_cluster = %name, synced = view.synced, "status entry written");
                true
            }
            Err(e) => {
                warn!(remote_cluster = %name, error = %e, "cannot write this control plane's status entry; retrying");
                false
            }
        }
    }

    /// Applies `status.controlPlanes: entries` as this revision's field manager.
    async fn apply(&self, name: &str, entries: serde_json::Value) -> Result<(), WriteError> {
        let patch = serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1",
            "kind": "RemoteCluster",
            "metadata": {"name": name},
            "status": {"controlPlanes": entries},
        });
        let manager = format!("weft-control-plane-{}", self.revision);
        let params = PatchParams::apply(&manager);
        let patch = Patch::Apply(&patch);
        let write = self.api.patch_status(name, &params, &patch);
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(WriteError::Api(e)),
            Err(_) => Err(WriteError::Timeout),
        }
    }
}

impl RemoteMetrics {
    /// Sets one cluster's gauges.
    fn set(&self, cluster: &str, synced: bool, services: i64, endpoints: i64) {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.synced.get_or_create(&l).set(i64::from(synced));
        self.services.get_or_create(&l).set(services);
        self.endpoints.get_or_create(&l).set(endpoints);
    }

    /// Drops the gauges of clusters no longer watched.
    fn retain<'a>(&self, clusters: impl Iterator<Item = &'a String>) {
        let keep: BTreeSet<&String> = clusters.collect();
        let mut known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for gone in known.iter().filter(|c| !keep.contains(c)) {
            let l = ClusterLabels { cluster: gone.clone() };
            self.synced.remove(&l);
            self.services.remove(&l);
            self.endpoints.remove(&l);
        }
        *known = keep.into_iter().cloned().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(listed: &[&'static str], failing: &[(&'static str, &str)]) -> Health {
        Health {
            listed: listed.iter().copied().collect(),
            failing: failing.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    const ALL: [&str; 3] = ["Service", "EndpointSlice", "Namespace"];

    #[test]
    fn a_listed_cluster_is_synced_without_a_message() {
        let v = view("rev-a", &health(&ALL, &[]), "https://127.0.0.1:6443", (3, 7), None);
        assert_eq!(
            v,
            ControlPlaneView {
                revision: "rev-a".into(),
                synced: true,
                services: 3,
                endpoints: 7,
                message: None,
                last_change_time: None,
            }
        );
    }

    #[test]
    fn an_unreachable_cluster_says_what_is_still_served() {
        let v = view(
            "rev-a",
            &health(&ALL, &[("Service", "Connection refused (os error 111)")]),
            "https://127.0.0.1:6443",
            (1, 4),
            None,
        );
        assert!(!v.synced);
        assert_eq!(
            v.message.as_deref(),
            Some(
                "cannot reach https://127.0.0.1:6443: Connection refused (os error 111); serving the 4 endpoints last seen"
            )
        );
        let v = view(
            "rev-a",
            &health(&ALL, &[("EndpointSlice", "HTTP 401 Unauthorized")]),
            "https://b:6443",
            (1, 4),
            Some(("net-b", 4)),
        );
        assert_eq!(
            v.message.as_deref(),
            Some("https://b:6443 answers HTTP 401 Unauthorized; serving the 4 endpoints last seen")
        );
    }

    #[test]
    fn a_synced_cluster_on_a_network_without_gateway_says_why_its_endpoints_are_left_out() {
        let v = view(
            "rev-a",
            &health(&ALL, &[]),
            "https://b:6443",
            (1, 4),
            Some(("net-b", 4)),
        );
        assert!(v.synced);
        let message = v.message.unwrap_or_default();
        assert!(
            message.starts_with("4 endpoints on network net-b cannot be reached from other networks"),
            "{message}"
        );
    }

    #[test]
    fn a_cluster_still_listing_is_not_synced() {
        let v = view("rev-a", &health(&["Service"], &[]), "https://b:6443", (0, 0), None);
        assert!(!v.synced);
        assert_eq!(
            v.message.as_deref(),
            Some("listing Services, EndpointSlices and Namespaces of https://b:6443")
        );
    }

    #[test]
    fn counts_are_of_mesh_services_and_their_ready_endpoints() {
        use crate::xds::discovery::sources::tests::{k8s_namespace, k8s_service, k8s_slice, remote};
        let mut not_ready = k8s_slice("shop", "greeter", &["10.1.0.3"]);
        not_ready.metadata.name = Some("greeter-not-ready".into());
        not_ready.endpoints[0].conditions = Some(Default::default());
        not_ready.endpoints[0].conditions.as_mut().unwrap().ready = Some(false);
        let b = remote(
            "b",
            "",
            vec![
                k8s_service("shop", "greeter", "grpc", 50051),
                k8s_service("default", "kubernetes", "https", 443),
            ],
            vec![
                k8s_slice("shop", "greeter", &["10.1.0.1", "10.1.0.2"]),
                not_ready,
                k8s_slice("default", "kubernetes", &["10.1.9.9"]),
            ],
            vec![k8s_namespace("shop", &[("mesh", "on")]), k8s_namespace("default", &[])],
        );
        assert_eq!(counts(&b, &[]), (2, 3));
        let selectors = vec![LabelSelector {
            match_labels: Some([("mesh".to_string(), "on".to_string())].into()),
            ..Default::default()
        }];
        assert_eq!(counts(&b, &selectors), (1, 2), "only shop is in the mesh");
    }

    #[test]
    fn user_information_in_a_server_address_is_never_shown() {
        assert_eq!(
            safe_server("https://admin:s3cret@b.example:6443/x"),
            "https://b.example:6443/x"
        );
        assert_eq!(safe_server("https://b.example:6443"), "https://b.example:6443");
        let v = view(
            "r",
            &health(&[], &[("Service", "timed out")]),
            "https://u:p@b:1",
            (0, 0),
            None,
        );
        assert!(!v.message.unwrap().contains("u:p"));
    }
}
