//! Remote clusters of the mesh (multi-primary discovery): the control plane watches the
//! RemoteClusters of its mesh and the Secret each names, and for each checked kubeconfig
//! watches that cluster's Services, EndpointSlices and Namespaces. `Remotes` is what
//! `Sources::model` merges; `remote_status` reports each cluster in the RemoteCluster's
//! status.
//!
//! - A remote whose API server goes away keeps its stores (its last endpoints are served).
//! - A RemoteCluster deleted, or moved to another mesh: its watches stop, its stores go.
//! - A rotated Secret: new watches start beside the old ones, which keep serving until the
//!   new ones have listed.
//! - Two RemoteClusters with one `clusterName`: the older is used (the operator reports the
//!   other as a NameConflict).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::Api;
use kube::config::KubeConfigOptions;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, Resource, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::remote_status::{Health, Reporter, Seen};
use super::sources::{RemoteStores, Remotes, run_optional};
use crate::api::RemoteCluster;
use crate::credentials::{self, Checked};
use crate::watch_health::WatchBackoff;
use crate::xds::metrics::XdsMetrics;
use crate::xds::model::Origin;

/// What the manager needs to know of its control plane.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The mesh namespace, where the RemoteClusters and their Secrets are.
    pub namespace: String,
    /// The mesh whose RemoteClusters are used (none are when unknown).
    pub mesh: Option<String>,
    /// The revision served (names this control plane's status entry).
    pub revision: String,
    /// The local cluster's name and network.
    pub local: Origin,
    /// The discovery selectors (for the counts in the status).
    pub selectors: Vec<LabelSelector>,
}

/// Starts watching the mesh's RemoteClusters. Returns the clusters served and a flag that
/// turns true once every remote cluster known at start has listed (or has a credential
/// that cannot be used).
pub fn start(
    client: &Client,
    settings: Settings,
    changed: Arc<Notify>,
    metrics: &XdsMetrics,
) -> (Remotes, watch::Receiver<bool>) {
    let remotes = Remotes::default();
    let (initial, synced) = watch::channel(false);
    let Some(mesh) = settings.mesh.clone() else {
        info!("the mesh config names no mesh: no remote clusters are watched");
        let _ = initial.send(true);
        return (remotes, synced);
    };
    let wake = Arc::new(Notify::new());
    let (rcs, writer) = reflector::store();
    tokio::spawn(run_optional(
        Api::<RemoteCluster>::namespaced(client.clone(), &settings.namespace),
        writer,
        wake.clone(),
        metrics.watches.track("RemoteCluster"),
        "RemoteClusters",
    ));
    let manager = Manager {
        client: client.clone(),
        mesh,
        reporter: Reporter::new(
            client,
            &settings.namespace,
            &settings.revision,
            &settings.selectors,
            metrics,
        ),
        settings,
        remotes: remotes.clone(),
        changed,
        wake,
        secrets: BTreeMap::new(),
        clusters: BTreeMap::new(),
        refused: BTreeMap::new(),
    };
    tokio::spawn(manager.run(rcs, initial));
    (remotes, synced)
}

/// The RemoteClusters of `mesh` that are used, one per cluster name: the oldest (then the
/// first by name) of those sharing one. A RemoteCluster naming the local cluster, or being
/// deleted, is not used.
pub fn choose<'a>(all: &'a [Arc<RemoteCluster>], mesh: &str, local: &str) -> Vec<&'a RemoteCluster> {
    let mut mine: Vec<&RemoteCluster> = all
        .iter()
        .map(|rc| rc.as_ref())
        .filter(|rc| rc.spec.mesh == mesh && rc.spec.cluster_name != local)
        .filter(|rc| rc.metadata.deletion_timestamp.is_none())
        .collect();
    mine.sort_by(|a, b| {
        let age = |rc: &RemoteCluster| rc.metadata.creation_timestamp.as_ref().map(|t| t.0);
        age(a).cmp(&age(b)).then_with(|| a.name_any().cmp(&b.name_any()))
    });
    let mut seen = BTreeSet::new();
    mine.retain(|rc| seen.insert(rc.spec.cluster_name.clone()));
    mine.sort_by(|a, b| a.spec.cluster_name.cmp(&b.spec.cluster_name));
    mine
}

/// Reports what one watch yields into its generation's [`Health`].
#[derive(Clone)]
struct Probe {
    kind: &'static str,
    cluster: String,
    health: Arc<Mutex<Health>>,
    /// Pinged on every change of the store (retranslation), if set.
    changed: Option<Arc<Notify>>,
    /// Pinged when the watch lists or starts or stops failing (the manager).
    wake: Arc<Notify>,
}

impl Probe {
    fn saw<K>(&self, event: &Result<watcher::Event<K>, watcher::Error>) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(e) => {
                let first = matches!(e, watcher::Event::InitDone) && h.listed.insert(self.kind);
                if h.failing.remove(self.kind).is_some() {
                    info!(cluster = %self.cluster, watch = self.kind, "remote watch flows again");
                    self.wake.notify_one();
                }
                if first {
                    self.wake.notify_one();
                }
                if let Some(changed) = &self.changed {
                    changed.notify_one();
                }
            }
            Err(e) => {
                let kind = error_kind(e);
                if h.failing.insert(self.kind, kind.clone()).is_none() {
                    warn!(cluster = %self.cluster, watch = self.kind, error = %kind, "remote watch failing; serving its last objects, retrying");
                    self.wake.notify_one();
                } else {
                    debug!(cluster = %self.cluster, watch = self.kind, error = %kind, "remote watch still failing");
                }
            }
        }
    }
}

/// What kind of error a watch met, without the error's own text (which could quote more
/// than we want in a status): the HTTP status, or the innermost cause of a failed
/// connection (such as "Connection refused (os error 111)").
pub fn error_kind(e: &watcher::Error) -> String {
    let inner = match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            e
        }
        watcher::Error::WatchError(s) => return format!("HTTP {} {}", s.code, s.reason),
        watcher::Error::NoResourceVersion => return "no resource version in a watch result".to_string(),
    };
    if let kube::Error::Api(s) = inner {
        return format!("HTTP {} {}", s.code, s.reason);
    }
    let mut cause: &dyn std::error::Error = inner;
    while let Some(next) = cause.source() {
        cause = next;
    }
    crate::xds::serve::server::clip(cause.to_string().lines().next().unwrap_or_default(), 160)
}

/// Keeps `writer` current; what it yields goes to `probe`. A failed watch keeps its store.
async fn follow<K>(api: Api<K>, config: watcher::Config, writer: reflector::store::Writer<K>, probe: Probe)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    watcher(api, config)
        .backoff(WatchBackoff::default())
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|event| {
            probe.saw(&event);
            futures::future::ready(())
        })
        .await
}

/// Tasks aborted when dropped.
struct Tasks(Vec<AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// One set of watches on a remote cluster, with one credential.
pub struct Generation {
    /// Its stores.
    pub stores: Arc<RemoteStores>,
    /// Its watches' state.
    pub health: Arc<Mutex<Health>>,
    /// The API server's address.
    pub server: String,
    _tasks: Tasks,
}

impl Generation {
    /// Whether every watch has listed once.
    pub fn listed(&self) -> bool {
        self.health().listed.len() == super::remote_status::KINDS
    }

    /// A copy of its health.
    pub fn health(&self) -> Health {
        self.health.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A remote cluster being watched.
pub struct Running {
    /// The RemoteCluster it comes from (name and uid).
    pub source: (String, String),
    /// A hash of the kubeconfig `current` uses.
    hash: u64,
    /// The watches whose stores are served.
    pub current: Generation,
    /// Watches with a new kubeconfig, until they have listed.
    next: Option<(u64, Generation)>,
}

/// One Secret watched by name.
struct SecretWatch {
    store: Store<Secret>,
    health: Arc<Mutex<Health>>,
    _tasks: Tasks,
}

impl SecretWatch {
    fn listed(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .listed
            .contains("Secret")
    }

    /// The text under `key`: `None` when the Secret or the key is missing.
    fn text(&self, name: &str, ns: &str, key: &str) -> Option<String> {
        let secret = self.store.get(&ObjectRef::new(name).within(ns))?;
        let bytes = secret.data.as_ref()?.get(key)?;
        String::from_utf8(bytes.0.clone()).ok()
    }
}

/// Runs the RemoteClusters of one mesh.
struct Manager {
    client: Client,
    mesh: String,
    settings: Settings,
    remotes: Remotes,
    changed: Arc<Notify>,
    wake: Arc<Notify>,
    secrets: BTreeMap<String, SecretWatch>,
    /// By cluster name.
    clusters: BTreeMap<String, Running>,
    /// Why a RemoteCluster's credential is not used, by RemoteCluster name: logged once.
    refused: BTreeMap<String, String>,
    reporter: Reporter,
}

fn hash_of(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Manager {
    /// Reconciles on every change and every second (for the status), until the process ends.
    async fn run(mut self, rcs: Store<RemoteCluster>, initial: watch::Sender<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
            if rcs.wait_until_ready().now_or_never().is_none() {
                continue;
            }
            let all = rcs.state();
            let settled = self.reconcile(&all).await;
            if settled && !*initial.borrow() {
                info!(
                    clusters = self.clusters.len(),
                    "remote clusters known at start have listed"
                );
                let _ = initial.send(true);
            }
            let seen = self
                .clusters
                .iter()
                .map(|(cluster, run)| Seen {
                    cluster,
                    source: &run.source,
                    stores: &run.current.stores,
                    health: run.current.health(),
                    server: &run.current.server,
                })
                .collect();
            self.reporter.report(seen).await;
        }
    }

    /// Brings the watched clusters in line with the RemoteClusters; `true` when every one
    /// that can be used has listed.
    async fn reconcile(&mut self, all: &[Arc<RemoteCluster>]) -> bool {
        let chosen = choose(all, &self.mesh, &self.settings.local.cluster);
        self.watch_secrets(&chosen);
        let mut settled = true;
        let mut wanted = BTreeSet::new();
        for rc in chosen {
            let cluster = rc.spec.cluster_name.clone();
            let name = rc.name_any();
            let secret_ref = &rc.spec.kubeconfig_secret_ref;
            let Some(secret) = self.secrets.get(&secret_ref.name) else {
                continue;
            };
            if !secret.listed() {
                // Not known yet: keep what runs.
                settled = false;
                wanted.insert(cluster);
                continue;
            }
            let Some(text) = secret.text(&secret_ref.name, &self.settings.namespace, &secret_ref.key) else {
                self.refuse(
                    &name,
                    format!("Secret {}, key {}: missing", secret_ref.name, secret_ref.key),
                );
                continue;
            };
            let checked = match credentials::check(&text) {
                Ok(c) => c,
                Err(e) => {
                    // The last good credential keeps serving; the operator reports this one.
                    self.refuse(&name, e.to_string());
                    wanted.insert(cluster);
                    continue;
                }
            };
            self.refused.remove(&name);
            wanted.insert(cluster.clone());
            let origin = Origin {
                cluster,
                network: rc
                    .spec
                    .network
                    .clone()
                    .unwrap_or_else(|| self.settings.local.network.clone()),
            };
            let source = (name, rc.uid().unwrap_or_default());
            settled &= self.ensure(source, origin, hash_of(&text), checked).await;
        }
        for gone in self.clusters.keys().filter(|c| !wanted.contains(*c)) {
            info!(cluster = %gone, "remote cluster removed: its watches stop");
        }
        self.clusters.retain(|c, _| wanted.contains(c));
        let next = self.clusters.values().map(|r| r.current.stores.clone()).collect();
        if self.remotes.publish(next) {
            self.changed.notify_one();
        }
        settled
    }

    /// Logs once why a RemoteCluster's credential is not used (the message holds no secret).
    fn refuse(&mut self, name: &str, why: String) {
        if self.refused.get(name) != Some(&why) {
            warn!(remote_cluster = %name, reason = %why, "not using this RemoteCluster's credential");
            self.refused.insert(name.to_string(), why);
        }
    }

    /// Watches exactly the Secrets the chosen RemoteClusters name.
    fn watch_secrets(&mut self, chosen: &[&RemoteCluster]) {
        let names: BTreeSet<String> = chosen
            .iter()
            .map(|rc| rc.spec.kubeconfig_secret_ref.name.clone())
            .collect();
        self.secrets.retain(|n, _| names.contains(n));
        for name in names {
            if self.secrets.contains_key(&name) {
                continue;
            }
            let (store, writer) = reflector::store();
            let health = Arc::new(Mutex::new(Health::default()));
            let probe = Probe {
                kind: "Secret",
                cluster: format!("(Secret {name})"),
                health: health.clone(),
                changed: None,
                wake: self.wake.clone(),
            };
            // By name, so a Role limited by resourceNames suffices.
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let api = Api::<Secret>::namespaced(self.client.clone(), &self.settings.namespace);
            let task = tokio::spawn(follow(api, config, writer, probe)).abort_handle();
            self.secrets.insert(
                name,
                SecretWatch {
                    store,
                    health,
                    _tasks: Tasks(vec![task]),
                },
            );
        }
    }

    /// Runs `origin`'s cluster with the kubeconfig hashed `hash`: starts it, or starts new
    /// watches beside the old when the kubeconfig changed, switching once they have listed.
    /// `true` when it is listed with that kubeconfig.
    async fn ensure(&mut self, source: (String, String), origin: Origin, hash: u64, checked: Checked) -> bool {
        let cluster = origin.cluster.clone();
        let Some(run) = self.clusters.get_mut(&cluster) else {
            match self.generation(&origin, checked).await {
                Some(current) => {
                    info!(cluster = %cluster, server = %current.server, "watching remote cluster");
                    let run = Running {
                        source,
                        hash,
                        current,
                        next: None,
                    };
                    self.clusters.insert(cluster, run);
                }
                None => return true,
            }
            return false;
        };
        run.source = source;
        if run.current.stores.origin != origin {
            let s = &run.current.stores;
            run.current.stores = Arc::new(RemoteStores {
                origin: origin.clone(),
                services: s.services.clone(),
                slices: s.slices.clone(),
                namespaces: s.namespaces.clone(),
            });
        }
        if run.hash == hash {
            run.next = None;
        } else if run.next.as_ref().map(|(h, _)| *h) != Some(hash) {
            info!(cluster = %cluster, "remote cluster's credential changed: new watches start beside the old");
            let next = self.generation(&origin, checked).await;
            let Some(run) = self.clusters.get_mut(&cluster) else {
                return false;
            };
            run.next = next.map(|g| (hash, g));
        }
        // (Present: it was found above, and nothing removes it in between.)
        let Some(run) = self.clusters.get_mut(&cluster) else {
            return false;
        };
        if let Some((h, g)) = run.next.take_if(|(_, g)| g.listed()) {
            info!(cluster = %cluster, "new credential's watches have listed: the old ones stop");
            run.current = g;
            run.hash = h;
        }
        run.current.listed() && run.next.is_none()
    }

    /// Starts watches on a remote cluster; `None` (logged) when no client can be made.
    async fn generation(&self, origin: &Origin, checked: Checked) -> Option<Generation> {
        let server = checked.server.clone();
        let config = match Config::from_custom_kubeconfig(checked.kubeconfig, &KubeConfigOptions::default()).await {
            Ok(c) => c,
            Err(e) => {
                warn!(cluster = %origin.cluster, error = %error_text(&e), "cannot use the remote cluster's kubeconfig");
                return None;
            }
        };
        let client = match Client::try_from(config) {
            Ok(c) => c,
            Err(e) => {
                warn!(cluster = %origin.cluster, error = %error_text(&e), "cannot make a client for the remote cluster");
                return None;
            }
        };
        let health = Arc::new(Mutex::new(Health::default()));
        let probe = |kind| Probe {
            kind,
            cluster: origin.cluster.clone(),
            health: health.clone(),
            changed: Some(self.changed.clone()),
            wake: self.wake.clone(),
        };
        let config = watcher::Config::default;
        let (services, w1) = reflector::store();
        let (slices, w2) = reflector::store();
        let (namespaces, w3) = reflector::store();
        let tasks = vec![
            tokio::spawn(follow(
                Api::<K8sService>::all(client.clone()),
                config(),
                w1,
                probe("Service"),
            ))
            .abort_handle(),
            tokio::spawn(follow(
                Api::<EndpointSlice>::all(client.clone()),
                config(),
                w2,
                probe("EndpointSlice"),
            ))
            .abort_handle(),
            tokio::spawn(follow(Api::<Namespace>::all(client), config(), w3, probe("Namespace"))).abort_handle(),
        ];
        Some(Generation {
            stores: Arc::new(RemoteStores {
                origin: origin.clone(),
                services,
                slices,
                namespaces,
            }),
            health,
            server,
            _tasks: Tasks(tasks),
        })
    }
}

/// An error's first line, clipped: kubeconfig errors name fields, never their values.
fn error_text(e: &dyn std::fmt::Display) -> String {
    crate::xds::serve::server::clip(e.to_string().lines().next().unwrap_or_default(), 200)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RemoteClusterSpec;
    use crate::api::remote_cluster::SecretKeyRef;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn rc(name: &str, mesh: &str, cluster: &str, created: i64) -> Arc<RemoteCluster> {
        let mut rc = RemoteCluster::new(
            name,
            RemoteClusterSpec {
                mesh: mesh.into(),
                cluster_name: cluster.into(),
                network: None,
                kubeconfig_secret_ref: SecretKeyRef {
                    name: format!("weft-remote-{cluster}"),
                    key: "kubeconfig".into(),
                },
            },
        );
        rc.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        Arc::new(rc)
    }

    #[test]
    fn the_older_of_two_remoteclusters_with_one_cluster_name_is_used() {
        let all = vec![
            rc("b-new", "prod", "b", 200),
            rc("b-old", "prod", "b", 100),
            rc("c", "prod", "c", 300),
            rc("other-mesh", "staging", "d", 50),
            rc("names-local", "prod", "a", 50),
        ];
        let chosen: Vec<String> = choose(&all, "prod", "a").iter().map(|r| r.name_any()).collect();
        assert_eq!(chosen, ["b-old", "c"]);
        // Same age: the first by name.
        let tie = vec![rc("b2", "prod", "b", 100), rc("b1", "prod", "b", 100)];
        let chosen: Vec<String> = choose(&tie, "prod", "a").iter().map(|r| r.name_any()).collect();
        assert_eq!(chosen, ["b1"]);
    }

    #[test]
    fn a_remotecluster_being_deleted_is_not_used() {
        let mut gone = (*rc("b", "prod", "b", 100)).clone();
        gone.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(500).unwrap()));
        assert!(choose(&[Arc::new(gone)], "prod", "a").is_empty());
    }

    #[test]
    fn watch_errors_are_reported_by_kind_without_their_text() {
        let status = kube::core::Status::failure("secret token abc in a message", "Unauthorized").with_code(401);
        let e = watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)));
        assert_eq!(error_kind(&e), "HTTP 401 Unauthorized");
    }

    #[test]
    fn publishing_the_same_clusters_changes_nothing() {
        let remotes = Remotes::default();
        assert!(!remotes.publish(vec![]), "empty to empty");
        let stores = Arc::new(RemoteStores {
            origin: Origin {
                cluster: "b".into(),
                network: String::new(),
            },
            services: reflector::store().0,
            slices: reflector::store().0,
            namespaces: reflector::store().0,
        });
        assert!(remotes.publish(vec![stores.clone()]));
        assert!(!remotes.publish(vec![stores.clone()]));
        assert!(remotes.cluster("b").is_some() && remotes.cluster("c").is_none());
        assert!(remotes.publish(vec![]));
    }
}
