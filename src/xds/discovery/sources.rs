//! Sources: watches on Services, EndpointSlices, Namespaces, HTTPRoutes, MeshInstalls and
//! MeshGateways, kept in reflector stores; `model()` and `gateways()` build discovery's
//! model from them. Every change pings `changed` so the control plane can debounce and
//! retranslate.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{Notify, watch};

use super::objects::{gateway_model, route_model, service_model};
use super::selectors::{Selected, selector_matches};
use crate::api::labels;
use crate::api::{MeshGateway, MeshInstall};
use crate::watch_health::{Flow, WatchBackoff, WatchHealth};
use crate::xds::model::{Gateway, HttpRoute, MeshModel, Origin, Service};

/// The live objects discovery reads.
#[derive(Clone)]
pub struct Sources {
    services: Store<K8sService>,
    slices: Store<EndpointSlice>,
    namespaces: Store<Namespace>,
    routes: Store<DynamicObject>,
    meshes: Store<MeshInstall>,
    /// Untyped, so one object that does not decode is skipped rather than failing the watch.
    gateways: Store<DynamicObject>,
    /// Pinged on every change.
    pub changed: Arc<Notify>,
    /// True once every watch has listed.
    pub synced: watch::Receiver<bool>,
    /// The remote clusters of the mesh (none unless [`Sources::with_remotes`]).
    remotes: Remotes,
    /// Service models as last built.
    built: Arc<Mutex<Built>>,
}

/// Service models as last built, by cluster/network/namespace/name, with the objects they came
/// from. A reflector replaces an object's `Arc` when the object changes, so the same `Arc`s
/// give the same model: an unchanged Service is not built again on every change.
type Built = HashMap<String, BuiltService>;

/// One service's model and what it was built from.
struct BuiltService {
    service: Arc<K8sService>,
    slices: Vec<Arc<EndpointSlice>>,
    model: Service,
}

/// One remote cluster's live objects, and where they come from.
pub struct RemoteStores {
    /// Its name in the mesh and its network.
    pub origin: Origin,
    /// Its Services.
    pub services: Store<K8sService>,
    /// Its EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// Its Namespaces (discovery selectors are evaluated on their labels).
    pub namespaces: Store<Namespace>,
}

impl RemoteStores {
    /// Whether namespace `ns` of this cluster is in the mesh (all when `selectors` is empty).
    pub fn in_mesh(&self, selectors: &[LabelSelector], ns: &str) -> bool {
        if selectors.is_empty() {
            return true;
        }
        let labels = self
            .namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        selectors.iter().any(|s| selector_matches(s, &labels))
    }
}

/// The remote clusters served now, sorted by cluster name: written by the manager, read by
/// every translation and by admission.
#[derive(Clone, Default)]
pub struct Remotes(Arc<RwLock<Arc<Vec<Arc<RemoteStores>>>>>);

impl Remotes {
    /// The clusters served now (cheap: one reference count).
    pub fn current(&self) -> Arc<Vec<Arc<RemoteStores>>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The cluster named `cluster`, if it is served.
    pub fn cluster(&self, cluster: &str) -> Option<Arc<RemoteStores>> {
        self.current().iter().find(|r| r.origin.cluster == cluster).cloned()
    }

    /// Replaces the served clusters; `true` when that changed anything.
    pub(in crate::xds) fn publish(&self, next: Vec<Arc<RemoteStores>>) -> bool {
        let mut slot = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let same = slot.len() == next.len() && slot.iter().zip(&next).all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            *slot = Arc::new(next);
        }
        !same
    }
}

/// The HTTPRoute kind (Gateway API v1).
pub fn httproute_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Keeps `writer` current until the process ends. A failed watch leaves the store as it
/// was (the last good objects keep being served) and is retried; `flow` tells readiness.
async fn run<K>(api: Api<K>, writer: reflector::store::Writer<K>, changed: Arc<Notify>, flow: Flow)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    watcher(api, watcher::Config::default())
        .backoff(WatchBackoff::default())
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|event| {
            flow.saw(&event);
            if let Err(e) = event {
                tracing::warn!(error = %e, "watch error; serving the last good objects, retrying");
            }
            changed.notify_one();
            futures::future::ready(())
        })
        .await
}

/// Like `run`, for kinds whose CRD may not be installed (MeshInstall, HTTPRoute): when the
/// API server does not know the kind, the store is marked synced and empty instead of
/// waiting forever.
pub(in crate::xds) async fn run_optional<K>(
    api: Api<K>,
    mut writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    flow: Flow,
    what: &'static str,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::info!("{what} are not served by this cluster (CRD not installed); ignoring them");
            writer.apply_watcher_event(&watcher::Event::Init);
            writer.apply_watcher_event(&watcher::Event::InitDone);
            flow.flowing();
            changed.notify_one();
            std::future::pending::<()>().await;
        }
        _ => run(api, writer, changed, flow).await,
    }
}

impl Sources {
    /// Starts every watch, each tracked in `health`. Runs until the process ends.
    pub fn start(client: &Client, health: &WatchHealth) -> Sources {
        let changed = Arc::new(Notify::new());
        let (services, w_services) = reflector::store();
        tokio::spawn(run(
            Api::<K8sService>::all(client.clone()),
            w_services,
            changed.clone(),
            health.track("Service"),
        ));
        let (slices, w_slices) = reflector::store();
        tokio::spawn(run(
            Api::<EndpointSlice>::all(client.clone()),
            w_slices,
            changed.clone(),
            health.track("EndpointSlice"),
        ));
        let (namespaces, w_namespaces) = reflector::store();
        tokio::spawn(run(
            Api::<Namespace>::all(client.clone()),
            w_namespaces,
            changed.clone(),
            health.track("Namespace"),
        ));
        let (meshes, w_meshes) = reflector::store();
        tokio::spawn(run_optional(
            Api::<MeshInstall>::all(client.clone()),
            w_meshes,
            changed.clone(),
            health.track("MeshInstall"),
            "MeshInstalls",
        ));
        let ar = httproute_resource();
        let w_routes = reflector::store::Writer::new(ar.clone());
        let routes = w_routes.as_reader();
        tokio::spawn(run(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            w_routes,
            changed.clone(),
            health.track("HTTPRoute"),
        ));

        let ar = ApiResource::erase::<MeshGateway>(&());
        let w_gateways = reflector::store::Writer::new(ar.clone());
        let gateways = w_gateways.as_reader();
        tokio::spawn(run_optional(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            w_gateways,
            changed.clone(),
            health.track("MeshGateway"),
            "MeshGateways",
        ));

        let mut sources = Sources {
            services,
            slices,
            namespaces,
            routes,
            meshes,
            gateways,
            changed,
            synced: watch::channel(false).1,
            remotes: Remotes::default(),
            built: Arc::default(),
        };
        sources.synced = sources.synced_when_listed();
        sources
    }

    /// Sources holding these objects (and no routes, meshes or gateways), for tests.
    #[cfg(test)]
    pub(in crate::xds) fn from_objects(
        services: Vec<K8sService>,
        slices: Vec<EndpointSlice>,
        namespaces: Vec<Namespace>,
    ) -> Sources {
        let routes = reflector::store::Writer::<DynamicObject>::new(httproute_resource()).as_reader();
        let gateways =
            reflector::store::Writer::<DynamicObject>::new(ApiResource::erase::<MeshGateway>(&())).as_reader();
        Sources {
            services: tests::store_of(services),
            slices: tests::store_of(slices),
            namespaces: tests::store_of(namespaces),
            routes,
            meshes: tests::store_of(vec![]),
            gateways,
            changed: Arc::new(Notify::new()),
            synced: watch::channel(true).1,
            remotes: Remotes::default(),
            built: Arc::default(),
        }
    }

    /// These sources with the remote clusters `remotes` merged into every model.
    pub fn with_remotes(mut self, remotes: Remotes) -> Sources {
        self.remotes = remotes;
        self
    }

    /// The `weft.dev/rev` label of namespace `namespace` of remote cluster `cluster`, if
    /// that cluster is served and the namespace has one.
    pub fn remote_namespace_label(&self, cluster: &str, namespace: &str) -> Option<String> {
        let remote = self.remotes.cluster(cluster)?;
        let ns = remote.namespaces.get(&ObjectRef::new(namespace))?;
        ns.labels().get(labels::REVISION).cloned()
    }

    /// Turns true once every store has its first list.
    fn synced_when_listed(&self) -> watch::Receiver<bool> {
        let (tx, synced) = watch::channel(false);
        let (a, b, c, d, e, f) = (
            self.services.clone(),
            self.slices.clone(),
            self.namespaces.clone(),
            self.meshes.clone(),
            self.routes.clone(),
            self.gateways.clone(),
        );
        tokio::spawn(async move {
            // One waiter per store: a store wakes only one of several concurrent waiters.
            let ok = a.wait_until_ready().await.is_ok()
                && b.wait_until_ready().await.is_ok()
                && c.wait_until_ready().await.is_ok()
                && d.wait_until_ready().await.is_ok()
                && e.wait_until_ready().await.is_ok()
                && f.wait_until_ready().await.is_ok();
            if ok {
                let _ = tx.send(true);
            }
        });
        synced
    }

    /// The gateways of mesh `mesh` (every gateway when `None`), sorted by namespace and name.
    pub fn gateways(&self, mesh: Option<&str>) -> Vec<Gateway> {
        let mut gateways: Vec<Gateway> = self
            .gateways
            .state()
            .iter()
            .filter_map(|g| gateway_model(g, mesh))
            .collect();
        gateways.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        gateways
    }

    /// The `weft.dev/rev` label of a namespace, if it has one.
    pub fn namespace_label(&self, namespace: &str) -> Option<String> {
        let ns = self.namespaces.get(&ObjectRef::new(namespace))?;
        ns.labels().get(labels::REVISION).cloned()
    }

    /// Which revision a `weft.dev/rev` value names: a tag first (from every MeshInstall's
    /// status), then a revision of that name.
    pub fn resolve(&self, value: &str) -> Option<String> {
        for mi in self.meshes.state() {
            let status = mi.status.clone().unwrap_or_default();
            if let Some(t) = status.tags.iter().find(|t| t.name == value) {
                return Some(t.revision.clone());
            }
        }
        Some(value.to_string())
    }

    /// Every revision the MeshInstalls report, and every tag with the revision it names.
    pub fn known_revisions(&self) -> (Vec<String>, Vec<(String, String)>) {
        let (mut revisions, mut tags) = (Vec::new(), Vec::new());
        for mi in self.meshes.state() {
            let Some(status) = mi.status.as_ref() else { continue };
            revisions.extend(status.revisions.iter().map(|r| r.name.clone()));
            tags.extend(status.tags.iter().map(|t| (t.name.clone(), t.revision.clone())));
        }
        revisions.sort();
        revisions.dedup();
        tags.sort();
        (revisions, tags)
    }

    /// The `weft.dev/rev` values that name mesh `mesh` (every mesh when `None`): its
    /// revisions and its tags.
    pub fn mesh_labels(&self, mesh: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        for mi in self.meshes.state() {
            if mesh.is_some_and(|m| mi.metadata.name.as_deref() != Some(m)) {
                continue;
            }
            let Some(status) = mi.status.as_ref() else { continue };
            out.extend(status.revisions.iter().map(|r| r.name.clone()));
            out.extend(status.tags.iter().map(|t| t.name.clone()));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Builds the model for `revision`, limited to namespaces matching `selectors` (all
    /// when empty); endpoints are marked as coming from `origin`.
    pub fn model(&self, revision: &str, selectors: &[LabelSelector], origin: &Origin) -> MeshModel {
        let selected = Selected::of(&self.namespaces, selectors);
        let in_mesh = |ns: &str| selected.contains(ns);
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        let mut memo = Memo {
            old: std::mem::take(&mut *built),
            new: HashMap::new(),
        };
        let mut services = cluster_services(&self.services, &self.slices, &in_mesh, origin, &mut memo);
        let remotes = self.remotes.current();
        if !remotes.is_empty() {
            services = merge_remotes(services, &remotes, selectors, &mut memo);
        }
        *built = memo.new;
        drop(built);
        services.retain(|s| !s.ports.is_empty());
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut routes: Vec<HttpRoute> = self
            .routes
            .state()
            .iter()
            .filter(|r| in_mesh(&r.namespace().unwrap_or_default()))
            // Config labelled for a revision is used only by that revision.
            .filter(|r| {
                r.labels()
                    .get(labels::REVISION)
                    .is_none_or(|v| self.resolve(v).as_deref() == Some(revision))
            })
            .filter_map(|r| route_model(r))
            .collect();
        routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        // East-west gateways' Services, in every cluster: whatever their namespace
        // (discovery selectors pick the mesh's workloads, not its gateways).
        let mut network_gateways =
            super::network::network_gateways(self.services.state().iter().map(|s| &**s), &origin.cluster);
        for remote in remotes.iter() {
            network_gateways.extend(super::network::network_gateways(
                remote.services.state().iter().map(|s| &**s),
                &remote.origin.cluster,
            ));
        }
        network_gateways.sort();
        network_gateways.dedup();
        MeshModel {
            services,
            routes,
            network_gateways,
        }
    }
}

/// The services of one cluster in namespaces `in_mesh` accepts, with the endpoints of
/// their EndpointSlices marked as coming from `origin`.
fn cluster_services(
    services: &Store<K8sService>,
    slices: &Store<EndpointSlice>,
    in_mesh: &dyn Fn(&str) -> bool,
    origin: &Origin,
    memo: &mut Memo,
) -> Vec<Service> {
    let slices = slices.state();
    // Grouped by (namespace, service) borrowed from the objects: no copy of either per slice.
    let mut by_service: HashMap<(&str, &str), Vec<Arc<EndpointSlice>>> = HashMap::with_capacity(slices.len());
    for slice in &slices {
        let Some(svc) = slice.labels().get("kubernetes.io/service-name") else {
            continue;
        };
        let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
        by_service
            .entry((ns, svc.as_str()))
            .or_default()
            .push(Arc::clone(slice));
    }
    services
        .state()
        .iter()
        .filter(|s| in_mesh(s.metadata.namespace.as_deref().unwrap_or_default()))
        .map(|s| {
            let ns = s.metadata.namespace.as_deref().unwrap_or_default();
            let name = s.metadata.name.as_deref().unwrap_or_default();
            let slices = by_service.remove(&(ns, name)).unwrap_or_default();
            let key = format!("{}/{}/{ns}/{name}", origin.cluster, origin.network);
            memo.model(key, s, slices, origin)
        })
        .collect()
}

/// The models built by the last translation, and those of this one.
struct Memo {
    old: Built,
    new: Built,
}

impl Memo {
    /// The model of `service` with `slices`: the one built before when both are the very
    /// objects it was built from.
    fn model(
        &mut self,
        key: String,
        service: &Arc<K8sService>,
        slices: Vec<Arc<EndpointSlice>>,
        origin: &Origin,
    ) -> Service {
        let same = |b: &BuiltService| {
            Arc::ptr_eq(&b.service, service)
                && b.slices.len() == slices.len()
                && b.slices.iter().zip(&slices).all(|(a, b)| Arc::ptr_eq(a, b))
        };
        let built = match self.old.remove(&key) {
            Some(b) if same(&b) => b,
            _ => BuiltService {
                model: service_model(service, &slices, origin),
                service: Arc::clone(service),
                slices,
            },
        };
        let model = built.model.clone();
        self.new.insert(key, built);
        model
    }
}

/// Merges the remote clusters' services into the local ones by namespace sameness: one
/// service per (namespace, name), its ports from the local Service when there is one (else
/// from the first remote cluster's, by cluster name), the endpoints of every cluster. Each
/// remote cluster's namespaces are selected by their own labels. Sorted by namespace and name.
fn merge_remotes(
    local: Vec<Service>,
    remotes: &[Arc<RemoteStores>],
    selectors: &[LabelSelector],
    memo: &mut Memo,
) -> Vec<Service> {
    let mut merged: BTreeMap<(String, String), Service> = local
        .into_iter()
        .map(|s| ((s.namespace.clone(), s.name.clone()), s))
        .collect();
    for remote in remotes {
        let selected = Selected::of(&remote.namespaces, selectors);
        let in_mesh = |ns: &str| selected.contains(ns);
        for s in cluster_services(&remote.services, &remote.slices, &in_mesh, &remote.origin, memo) {
            match merged.entry((s.namespace.clone(), s.name.clone())) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    Arc::make_mut(&mut e.get_mut().endpoints).extend(s.endpoints.iter().cloned())
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(s);
                }
            }
        }
    }
    merged.into_values().collect()
}

#[cfg(test)]
pub(in crate::xds) mod tests {
    use super::*;
    use crate::xds::discovery::selectors::check_selector;
    use crate::xds::model::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use kube::Resource;

    /// A store holding `objects`, as after a list.
    pub fn store_of<K>(objects: Vec<K>) -> Store<K>
    where
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        store
    }

    /// A Service `ns/name` with one TCP port.
    pub fn k8s_service(ns: &str, name: &str, port_name: &str, port: u16) -> K8sService {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"name": port_name, "port": port}]}
        }))
        .unwrap()
    }

    /// An EndpointSlice of `ns/service` with ready `addresses` on port `grpc` 50051.
    pub fn k8s_slice(ns: &str, service: &str, addresses: &[&str]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{service}-{}", addresses.len()), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 50051}],
            "endpoints": addresses.iter().map(|a| serde_json::json!({"addresses": [a]})).collect::<Vec<_>>()
        }))
        .unwrap()
    }

    /// A Namespace with `labels`.
    pub fn k8s_namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    /// Remote cluster `cluster` on `network` holding these objects.
    pub fn remote(
        cluster: &str,
        network: &str,
        services: Vec<K8sService>,
        slices: Vec<EndpointSlice>,
        namespaces: Vec<Namespace>,
    ) -> Arc<RemoteStores> {
        Arc::new(RemoteStores {
            origin: Origin {
                cluster: cluster.into(),
                network: network.into(),
            },
            services: store_of(services),
            slices: store_of(slices),
            namespaces: store_of(namespaces),
        })
    }

    fn local_origin() -> Origin {
        Origin {
            cluster: "a".into(),
            network: "net-a".into(),
        }
    }

    /// Where an endpoint comes from: (address, cluster, network).
    type WhereFrom = (String, String, String);

    /// Where each endpoint of a service comes from.
    fn where_from(s: &Service) -> Vec<WhereFrom> {
        s.endpoints
            .iter()
            .map(|e| (e.address.clone(), e.cluster.clone(), e.network.clone()))
            .collect()
    }

    #[test]
    fn selectors_are_judged_on_known_namespaces_and_an_unknown_one_as_unlabelled() {
        let namespaces = store_of(vec![
            k8s_namespace("shop", &[("mesh", "on")]),
            k8s_namespace("depot", &[]),
            k8s_namespace("lab", &[("mesh", "off")]),
        ]);
        let on: LabelSelector = serde_json::from_value(serde_json::json!({"matchLabels": {"mesh": "on"}})).unwrap();
        let not_off: LabelSelector = serde_json::from_value(serde_json::json!(
            {"matchExpressions": [{"key": "mesh", "operator": "NotIn", "values": ["off"]}]}
        ))
        .unwrap();
        let picked = Selected::of(&namespaces, std::slice::from_ref(&on));
        let seen: Vec<bool> = ["shop", "depot", "lab", "unseen"]
            .iter()
            .map(|n| picked.contains(n))
            .collect();
        assert_eq!(seen, [true, false, false, false]);
        let picked = Selected::of(&namespaces, &[not_off]);
        let seen: Vec<bool> = ["shop", "depot", "lab", "unseen"]
            .iter()
            .map(|n| picked.contains(n))
            .collect();
        assert_eq!(
            seen,
            [true, true, false, true],
            "NotIn picks what has no labels, and an unseen namespace"
        );
        assert!(Selected::of(&namespaces, &[]).contains("anything"));
    }

    #[test]
    fn a_changed_slice_changes_its_model_and_the_models_built_before_are_kept_for_the_rest() {
        let (slices, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for (svc, address) in [("greeter", "198.51.100.1"), ("other", "198.51.100.9")] {
            writer.apply_watcher_event(&watcher::Event::InitApply(k8s_slice("shop", svc, &[address])));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let services = vec![
            k8s_service("shop", "greeter", "grpc", 50051),
            k8s_service("shop", "other", "grpc", 50051),
        ];
        let mut sources = Sources::from_objects(services, vec![], vec![]);
        sources.slices = slices;
        let addresses = |m: &MeshModel| -> Vec<Vec<String>> {
            m.services
                .iter()
                .map(|s| s.endpoints.iter().map(|e| e.address.clone()).collect())
                .collect()
        };
        let first = sources.model("r", &[], &local_origin());
        assert_eq!(addresses(&first), [["198.51.100.1"], ["198.51.100.9"]]);
        writer.apply_watcher_event(&watcher::Event::Apply(k8s_slice("shop", "greeter", &["198.51.100.2"])));
        let second = sources.model("r", &[], &local_origin());
        assert_eq!(addresses(&second), [["198.51.100.2"], ["198.51.100.9"]]);
        assert_eq!(sources.built.lock().unwrap().len(), 2, "one model kept per service");
    }

    #[test]
    fn one_service_per_namespace_and_name_with_the_endpoints_of_every_cluster() {
        let sources = Sources::from_objects(
            vec![k8s_service("shop", "greeter", "grpc", 50051)],
            vec![k8s_slice("shop", "greeter", &["10.0.0.1"])],
            vec![k8s_namespace("shop", &[])],
        );
        let remotes = Remotes::default();
        remotes.publish(vec![
            remote(
                "b",
                "net-a",
                // Another port in the remote: the local Service's ports win.
                vec![
                    k8s_service("shop", "greeter", "grpc", 9090),
                    k8s_service("shop", "only-in-b", "grpc", 7070),
                ],
                vec![
                    k8s_slice("shop", "greeter", &["10.1.0.1"]),
                    k8s_slice("shop", "only-in-b", &["10.1.0.2"]),
                ],
                vec![k8s_namespace("shop", &[])],
            ),
            remote(
                "c",
                "net-c",
                vec![k8s_service("shop", "only-in-b", "grpc", 6060)],
                vec![k8s_slice("shop", "only-in-b", &["10.2.0.2"])],
                vec![],
            ),
        ]);
        let sources = sources.with_remotes(remotes);
        let model = sources.model("r", &[], &local_origin());
        let names: Vec<&str> = model.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["greeter", "only-in-b"]);
        let greeter = &model.services[0];
        assert_eq!(greeter.ports.iter().map(|p| p.port).collect::<Vec<_>>(), [50051]);
        assert_eq!(
            where_from(greeter),
            [
                ("10.0.0.1".into(), "a".into(), "net-a".into()),
                ("10.1.0.1".into(), "b".into(), "net-a".into()),
            ]
        );
        let remote_only = &model.services[1];
        assert_eq!(
            remote_only.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
            [7070],
            "the first remote's ports, by cluster name"
        );
        assert_eq!(
            where_from(remote_only),
            [
                ("10.1.0.2".into(), "b".into(), "net-a".into()),
                ("10.2.0.2".into(), "c".into(), "net-c".into()),
            ]
        );
    }

    #[test]
    fn east_west_gateways_of_remote_clusters_join_the_model() {
        let gateway = |ns: &str, network: &str, ip: &str| -> K8sService {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "eastwest", "namespace": ns, "labels": {
                    labels::COMPONENT: labels::GATEWAY_COMPONENT,
                    super::super::network::NETWORK_LABEL: network}},
                "spec": {"ports": [{"name": "tls", "port": 15443}]},
                "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
            }))
            .unwrap()
        };
        let sources = Sources::from_objects(vec![gateway("weft", "net-a", "192.0.2.1")], vec![], vec![]);
        let remotes = Remotes::default();
        remotes.publish(vec![remote(
            "b",
            "net-b",
            vec![gateway("weft", "net-b", "192.0.2.2")],
            vec![],
            vec![],
        )]);
        let model = sources.with_remotes(remotes).model("r", &[], &local_origin());
        let seen: Vec<(&str, &str, &str)> = model
            .network_gateways
            .iter()
            .map(|g| (g.cluster.as_str(), g.network.as_str(), g.address.as_str()))
            .collect();
        assert_eq!(seen, [("a", "net-a", "192.0.2.1"), ("b", "net-b", "192.0.2.2")]);
    }

    #[test]
    fn discovery_selectors_read_the_remote_clusters_own_namespace_labels() {
        let selectors = vec![LabelSelector {
            match_labels: Some(BTreeMap::from([("mesh".to_string(), "on".to_string())])),
            ..Default::default()
        }];
        let sources = Sources::from_objects(
            vec![k8s_service("shop", "greeter", "grpc", 50051)],
            vec![k8s_slice("shop", "greeter", &["10.0.0.1"])],
            vec![k8s_namespace("shop", &[("mesh", "on")])],
        );
        let remotes = Remotes::default();
        remotes.publish(vec![remote(
            "b",
            "",
            vec![
                k8s_service("shop", "greeter", "grpc", 50051),
                k8s_service("pay", "ledger", "grpc", 50051),
            ],
            vec![
                k8s_slice("shop", "greeter", &["10.1.0.1"]),
                k8s_slice("pay", "ledger", &["10.1.0.9"]),
            ],
            // In b, shop is not in the mesh (although it is in a), pay is.
            vec![k8s_namespace("shop", &[]), k8s_namespace("pay", &[("mesh", "on")])],
        )]);
        let model = sources.with_remotes(remotes).model("r", &selectors, &local_origin());
        let seen: Vec<(String, Vec<WhereFrom>)> =
            model.services.iter().map(|s| (s.name.clone(), where_from(s))).collect();
        assert_eq!(
            seen,
            [
                ("ledger".to_string(), vec![("10.1.0.9".into(), "b".into(), "".into())]),
                (
                    "greeter".to_string(),
                    vec![("10.0.0.1".into(), "a".into(), "net-a".into())]
                ),
            ]
        );
    }

    #[test]
    fn without_remotes_the_model_is_the_local_one() {
        let sources = Sources::from_objects(
            vec![k8s_service("shop", "greeter", "grpc", 50051)],
            vec![k8s_slice("shop", "greeter", &["10.0.0.1"])],
            vec![],
        );
        let model = sources.model("r", &[], &local_origin());
        assert_eq!(model.services.len(), 1);
        assert_eq!(
            where_from(&model.services[0]),
            [("10.0.0.1".into(), "a".into(), "net-a".into())]
        );
    }

    #[test]
    fn namespace_labels_are_looked_up_in_the_named_remote_cluster() {
        let sources = Sources::from_objects(vec![], vec![], vec![k8s_namespace("shop", &[("weft.dev/rev", "blue")])]);
        let remotes = Remotes::default();
        remotes.publish(vec![remote(
            "b",
            "",
            vec![],
            vec![],
            vec![k8s_namespace("shop", &[("weft.dev/rev", "green")])],
        )]);
        let sources = sources.with_remotes(remotes);
        assert_eq!(sources.namespace_label("shop").as_deref(), Some("blue"));
        assert_eq!(sources.remote_namespace_label("b", "shop").as_deref(), Some("green"));
        assert_eq!(sources.remote_namespace_label("unknown", "shop"), None);
    }

    #[test]
    fn selectors_kubernetes_would_refuse_are_named() {
        let expr = |op: &str, values: Option<Vec<&str>>| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: op.into(),
                values: values.map(|v| v.into_iter().map(String::from).collect()),
            }]),
            ..Default::default()
        };
        assert!(check_selector(&expr("In", Some(vec!["a"]))).is_ok());
        assert!(check_selector(&expr("Exists", None)).is_ok());
        let unknown = check_selector(&expr("Equals", Some(vec!["a"]))).unwrap_err();
        assert!(unknown.contains("\"Equals\" is not an operator"), "{unknown}");
        assert!(
            check_selector(&expr("In", None))
                .unwrap_err()
                .contains("needs at least one value")
        );
        assert!(
            check_selector(&expr("Exists", Some(vec!["a"])))
                .unwrap_err()
                .contains("takes no values")
        );
    }

    #[test]
    fn label_selectors_match_like_kubernetes() {
        let labels = BTreeMap::from([("team".to_string(), "shop".to_string())]);
        let by_label = LabelSelector {
            match_labels: Some(BTreeMap::from([("team".to_string(), "shop".to_string())])),
            ..Default::default()
        };
        assert!(selector_matches(&by_label, &labels));
        let not_in = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "NotIn".into(),
                values: Some(vec!["shop".into()]),
            }]),
            ..Default::default()
        };
        assert!(!selector_matches(&not_in, &labels));
        assert!(selector_matches(&not_in, &BTreeMap::new()));
    }

    #[test]
    fn httproutes_attached_to_services_become_routes() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "split", "namespace": "shop"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "cart", "port": 50051}],
                "rules": [{
                    "matches": [{"path": {"type": "Exact", "value": "/a"}, "headers": [{"name": "x", "value": "1"}]}],
                    "backendRefs": [{"name": "cart", "port": 50051, "weight": 90}, {"name": "cart-v2", "port": 50051, "weight": 10}]
                }]
            }
        }))
        .unwrap();
        let r = route_model(&obj).expect("attached to a service");
        assert_eq!(r.parents[0].namespace, "shop");
        assert_eq!(r.rules[0].matches[0].path, Some(PathMatch::Exact("/a".into())));
        assert_eq!(
            r.rules[0].backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
            [90, 10]
        );
        let gateway_only: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "g", "namespace": "shop"},
            "spec": {"parentRefs": [{"name": "ingress"}]}
        }))
        .unwrap();
        assert!(
            route_model(&gateway_only).is_none(),
            "a Gateway parent is not a mesh route"
        );
    }

    fn route(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn meshgateway_parents_need_both_group_and_kind() {
        let r = route_model(&route(serde_json::json!({
            "hostnames": ["shop.example.com"],
            "parentRefs": [
                {"group": "weft.dev", "kind": "MeshGateway", "name": "ingress", "sectionName": "http"},
                {"group": "weft.dev", "kind": "MeshGateway", "name": "edge-gw", "namespace": "edge", "port": 443},
                {"group": "", "kind": "Service", "name": "cart"},
                {"kind": "MeshGateway", "name": "no-group"},
                {"group": "weft.dev", "name": "no-kind"},
                {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
                {"group": "example.com", "kind": "MeshGateway", "name": "foreign"}
            ],
            "rules": [{"backendRefs": [{"name": "cart", "port": 8080}]}]
        })))
        .expect("attached to gateways and a service");
        assert_eq!(r.hostnames, ["shop.example.com"]);
        assert_eq!(
            r.parents,
            [
                ParentRef {
                    kind: ParentKind::MeshGateway,
                    name: "ingress".into(),
                    namespace: "shop".into(),
                    port: None,
                    section_name: Some("http".into()),
                },
                ParentRef {
                    kind: ParentKind::MeshGateway,
                    name: "edge-gw".into(),
                    namespace: "edge".into(),
                    port: Some(443),
                    section_name: None,
                },
                ParentRef {
                    kind: ParentKind::Service,
                    name: "cart".into(),
                    namespace: "shop".into(),
                    port: None,
                    section_name: None,
                },
            ]
        );
        assert!(r.attaches_to(ParentKind::MeshGateway, "ingress", "shop", 80, "http"));
        assert!(!r.attaches_to(ParentKind::MeshGateway, "ingress", "shop", 8443, "http-alt"));
        assert!(!r.attaches_to(ParentKind::Service, "ingress", "shop", 80, "http"));
        assert!(r.attaches_to(ParentKind::MeshGateway, "edge-gw", "edge", 443, "https"));
        assert!(!r.attaches_to(ParentKind::MeshGateway, "edge-gw", "shop", 443, "https"));
    }

    #[test]
    fn routes_whose_only_parents_are_gateway_api_gateways_are_ignored() {
        for parent in [
            serde_json::json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ingress"}),
            serde_json::json!({"name": "ingress"}),
            serde_json::json!({"kind": "MeshGateway", "name": "ingress"}),
            serde_json::json!({"group": "weft.dev", "name": "ingress"}),
        ] {
            let r = route(serde_json::json!({"parentRefs": [parent.clone()]}));
            assert!(route_model(&r).is_none(), "{parent}");
        }
    }

    fn gateway(mesh: &str, service: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
            "metadata": {"name": "ingress", "namespace": "edge"},
            "spec": {"mesh": mesh, "service": service}
        }))
        .unwrap()
    }

    #[test]
    fn meshgateways_of_the_mesh_become_gateways_with_container_ports() {
        let g = gateway(
            "prod",
            serde_json::json!({"ports": [{"name": "http", "port": 80}, {"name": "alt", "port": 8443, "targetPort": 9443}]}),
        );
        let model = gateway_model(&g, Some("prod")).expect("same mesh");
        assert_eq!((model.name.as_str(), model.namespace.as_str()), ("ingress", "edge"));
        assert_eq!(
            model.ports,
            [
                GatewayPort {
                    name: "http".into(),
                    port: 80,
                    container_port: 8080
                },
                GatewayPort {
                    name: "alt".into(),
                    port: 8443,
                    container_port: 9443
                },
            ]
        );
        assert!(gateway_model(&g, None).is_some(), "no mesh name: every gateway");
        assert!(gateway_model(&g, Some("staging")).is_none(), "another mesh's gateway");
        let defaults = gateway_model(&gateway("prod", serde_json::json!({})), None).unwrap();
        assert_eq!(defaults.ports[0].container_port, 8080, "ingress default: http 80");
    }

    #[test]
    fn a_meshgateway_that_does_not_decode_is_skipped() {
        let bad = gateway("prod", serde_json::json!({"ports": "not a list"}));
        assert!(gateway_model(&bad, None).is_none());
    }

    #[test]
    fn a_meshgateway_without_a_spec_is_skipped_and_its_status_is_no_obstacle() {
        let no_spec: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
            "metadata": {"name": "ingress", "namespace": "edge"}
        }))
        .unwrap();
        assert!(gateway_model(&no_spec, None).is_none());
        let mut with_status = gateway("prod", serde_json::json!({}));
        with_status.data["status"] = serde_json::json!({"revision": "rev-a", "replicas": 2});
        assert!(gateway_model(&with_status, Some("prod")).is_some());
    }
}
