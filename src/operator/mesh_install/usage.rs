//! Watch → index: who uses which revision. Namespaces labelled `weft.dev/rev` (only those:
//! the watch is label-filtered) and MeshGateways are indexed by the tag or revision they
//! name, so a reconcile looks up the few values of its own mesh instead of listing every
//! namespace. Each visible change triggers the MeshInstalls to look again.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::warn;

use crate::api::MeshGateway;
use crate::api::labels;
use crate::operator::queue::describe;
use crate::operator::watch::Guarded;
use crate::watch_health::{Flow, WatchBackoff};

/// Keys (`name` or `namespace/name`) by the value they carry, kept up to date from a watch.
#[derive(Debug)]
struct ByValue<V> {
    live: HashMap<String, V>,
    by_value: HashMap<V, BTreeSet<String>>,
    /// Objects of a list in progress; swapped in when it is complete.
    pending: Option<HashMap<String, V>>,
    synced: bool,
}

impl<V: Clone + Eq + Hash> Default for ByValue<V> {
    fn default() -> Self {
        ByValue {
            live: HashMap::new(),
            by_value: HashMap::new(),
            pending: None,
            synced: false,
        }
    }
}

impl<V: Clone + Eq + Hash> ByValue<V> {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.live.remove(key)
            && let Some(keys) = self.by_value.get_mut(&old)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_value.remove(&old);
            }
        }
    }

    fn set(&mut self, key: String, value: Option<V>) {
        self.remove(&key);
        if let Some(v) = value {
            self.by_value.entry(v.clone()).or_default().insert(key.clone());
            self.live.insert(key, v);
        }
    }

    /// Applies one watch event; returns the values whose keys changed in a way readers see
    /// (a relist names every value before and after it).
    fn apply(&mut self, event: Event<(String, Option<V>)>) -> Vec<V> {
        match event {
            Event::Init => {
                self.pending = Some(HashMap::new());
                Vec::new()
            }
            Event::InitApply((key, value)) => {
                if let (Some(p), Some(v)) = (self.pending.as_mut(), value) {
                    p.insert(key, v);
                }
                Vec::new()
            }
            Event::InitDone => {
                let fresh = self.pending.take().unwrap_or_default();
                let mut touched: Vec<V> = self.by_value.keys().cloned().collect();
                self.live.clear();
                self.by_value.clear();
                for (k, v) in fresh {
                    self.set(k, Some(v));
                }
                touched.extend(self.by_value.keys().cloned());
                self.synced = true;
                touched
            }
            Event::Apply((key, value)) => {
                let old = self.live.get(&key).cloned();
                if old == value {
                    return Vec::new();
                }
                self.set(key, value.clone());
                old.into_iter().chain(value).collect()
            }
            Event::Delete((key, _)) => {
                let old = self.live.get(&key).cloned();
                self.remove(&key);
                old.into_iter().collect()
            }
        }
    }

    fn get(&self, value: &V) -> BTreeSet<String> {
        self.by_value.get(value).cloned().unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Namespace name by `weft.dev/rev` value.
    namespaces: ByValue<String>,
    /// Gateway `namespace/name` by (mesh, followed tag or revision).
    gateways: ByValue<(String, String)>,
}

impl Inner {
    fn synced(&self) -> bool {
        self.namespaces.synced && self.gateways.synced
    }
}

/// Whether this event made the index synced: every mesh must look again then, even when
/// the lists were empty (a reconcile before it deferred pruning, and nothing else would
/// wake it).
fn first_sync(was_synced: bool, i: &Inner) -> bool {
    !was_synced && i.synced()
}

/// The MeshInstalls a change of the index concerns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Concerns {
    /// None (nothing readers see changed).
    #[default]
    Nothing,
    /// These meshes: a gateway names its own mesh.
    Meshes(BTreeSet<String>),
    /// Every mesh: a namespace label names a tag or revision, which any mesh may own.
    All,
}

impl Concerns {
    fn add(&mut self, other: Concerns) {
        match (&mut *self, other) {
            (_, Concerns::Nothing) | (Concerns::All, _) => {}
            (Concerns::Meshes(mine), Concerns::Meshes(more)) => mine.extend(more),
            (me, other) => *me = other,
        }
    }
}

/// The usage index (cheap to clone). The namespace watch is its own; gateways come from
/// the operator's shared MeshGateway watch.
#[derive(Clone, Debug)]
pub struct UsageIndex {
    inner: Arc<RwLock<Inner>>,
    /// What changed since [`UsageIndex::changes`] last yielded.
    pending: Arc<Mutex<Concerns>>,
    /// Bumped after each change readers can see.
    changed: Arc<watch::Sender<()>>,
}

impl Default for UsageIndex {
    fn default() -> Self {
        UsageIndex {
            inner: Arc::default(),
            pending: Arc::default(),
            changed: Arc::new(watch::Sender::new(())),
        }
    }
}

impl UsageIndex {
    /// Watches namespaces labelled `weft.dev/rev` into the index, until the process stops,
    /// recording in `flow` whether the watch flows.
    pub async fn watch_namespaces(&self, client: &Client, flow: Flow) {
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
        watcher::watcher(api, watcher::Config::default().labels(labels::REVISION))
            .backoff(WatchBackoff::default())
            .for_each(|e| {
                flow.saw(&e);
                match e {
                    Ok(e) => self.namespace_event(map_event(&e, |o| {
                        (o.name_any(), o.labels().get(labels::REVISION).cloned())
                    })),
                    Err(error) => warn!(%error, "namespace watch error"),
                }
                future::ready(())
            })
            .await;
    }

    /// Takes in one event of the namespace watch: (name, `weft.dev/rev` value).
    fn namespace_event(&self, e: Event<(String, Option<String>)>) {
        self.write(|i| {
            let was_synced = i.synced();
            let touched = i.namespaces.apply(e);
            if !touched.is_empty() || first_sync(was_synced, i) {
                Concerns::All
            } else {
                Concerns::Nothing
            }
        });
    }

    /// Takes in one event of the shared MeshGateway watch.
    pub fn gateway_event(&self, e: &Event<Guarded<MeshGateway>>) {
        let e = map_event(e, |g| (describe(g), gateway_follows(g)));
        self.write(|i| {
            let was_synced = i.synced();
            let touched = i.gateways.apply(e);
            if first_sync(was_synced, i) {
                Concerns::All
            } else if touched.is_empty() {
                Concerns::Nothing
            } else {
                Concerns::Meshes(touched.into_iter().map(|(mesh, _)| mesh).collect())
            }
        });
    }

    /// Yields, after changes readers can see, the meshes they concern (a burst may coalesce
    /// into one item).
    pub fn changes(&self) -> impl Stream<Item = Concerns> + Send + 'static {
        let pending = self.pending.clone();
        futures::stream::unfold(self.changed.subscribe(), move |mut rx| {
            let pending = pending.clone();
            async move {
                loop {
                    rx.changed().await.ok()?;
                    let concerns = std::mem::take(&mut *lock(&pending));
                    // An earlier wake-up may have taken this change already.
                    if concerns != Concerns::Nothing {
                        return Some((concerns, rx));
                    }
                }
            }
        })
    }

    fn write(&self, f: impl FnOnce(&mut Inner) -> Concerns) {
        let mut guard = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let concerns = f(&mut guard);
        drop(guard);
        if concerns != Concerns::Nothing {
            lock(&self.pending).add(concerns);
            self.changed.send_replace(());
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// Whether both watches have listed everything once.
    pub fn synced(&self) -> bool {
        self.read(Inner::synced)
    }

    /// Namespaces labelled `weft.dev/rev=<value>`.
    pub fn namespaces(&self, value: &str) -> BTreeSet<String> {
        self.read(|i| i.namespaces.get(&value.to_string()))
    }

    /// Gateways (`namespace/name`) of `mesh` that follow `value`.
    pub fn gateways(&self, mesh: &str, value: &str) -> BTreeSet<String> {
        self.read(|i| i.gateways.get(&(mesh.to_string(), value.to_string())))
    }
}

fn lock(pending: &Mutex<Concerns>) -> std::sync::MutexGuard<'_, Concerns> {
    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn map_event<K, T>(e: &Event<K>, f: impl Fn(&K) -> T) -> Event<T> {
    match e {
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
    }
}

/// The (mesh, tag or revision) a gateway follows; a gateway being deleted, or one that
/// does not decode, follows nothing.
fn gateway_follows(g: &Guarded<MeshGateway>) -> Option<(String, String)> {
    let gw = g.0.as_ref().ok()?;
    if gw.metadata.deletion_timestamp.is_some() {
        return None;
    }
    Some((gw.spec.mesh.clone(), gw.spec.revision.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_applies_deletes_and_relists() {
        let mut ix: ByValue<String> = ByValue::default();
        assert!(ix.apply(Event::Init).is_empty());
        ix.apply(Event::InitApply(("a".into(), Some("canary".into()))));
        ix.apply(Event::InitApply(("b".into(), Some("stable".into()))));
        assert!(!ix.synced, "not synced before the list is complete");
        assert_eq!(ix.apply(Event::InitDone).len(), 2);
        assert_eq!(ix.get(&"canary".into()), BTreeSet::from(["a".to_string()]));
        assert_eq!(
            ix.apply(Event::Apply(("b".into(), Some("canary".into())))),
            ["stable", "canary"],
            "the value left and the value joined"
        );
        assert!(
            ix.apply(Event::Apply(("b".into(), Some("canary".into())))).is_empty(),
            "no change, no trigger"
        );
        assert_eq!(ix.get(&"canary".into()).len(), 2);
        assert!(ix.get(&"stable".into()).is_empty());
        assert_eq!(ix.apply(Event::Delete(("a".into(), None))), ["canary"]);
        // A relist replaces everything, including objects deleted while disconnected.
        ix.apply(Event::Init);
        ix.apply(Event::InitApply(("c".into(), Some("stable".into()))));
        ix.apply(Event::InitDone);
        assert!(ix.get(&"canary".into()).is_empty());
        assert_eq!(ix.get(&"stable".into()), BTreeSet::from(["c".to_string()]));
    }

    fn gateway(ns: &str, name: &str, mesh: &str, revision: &str) -> Guarded<MeshGateway> {
        let gw: MeshGateway = serde_json::from_value(serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"mesh": mesh, "revision": revision}
        }))
        .unwrap();
        kube::core::DeserializeGuard(Ok(gw))
    }

    #[tokio::test]
    async fn a_gateway_change_concerns_only_its_mesh_and_a_namespace_every_mesh() {
        let ix = UsageIndex::default();
        let mut changes = Box::pin(ix.changes());
        ix.gateway_event(&Event::Init);
        ix.gateway_event(&Event::InitDone);
        ix.gateway_event(&Event::Apply(gateway("a", "gw", "mesh-a", "stable")));
        // Coalesced with the previous change: both are pending when the stream is polled.
        ix.gateway_event(&Event::Apply(gateway("b", "gw", "mesh-b", "stable")));
        assert_eq!(
            changes.next().await,
            Some(Concerns::Meshes(BTreeSet::from([
                "mesh-a".to_string(),
                "mesh-b".to_string()
            ])))
        );
        // The same gateway again (a status write): nothing readers see.
        ix.gateway_event(&Event::Apply(gateway("a", "gw", "mesh-a", "stable")));
        // Moved to another mesh: both meshes look again.
        ix.gateway_event(&Event::Apply(gateway("a", "gw", "mesh-c", "stable")));
        assert_eq!(
            changes.next().await,
            Some(Concerns::Meshes(BTreeSet::from([
                "mesh-a".to_string(),
                "mesh-c".to_string()
            ])))
        );
        ix.namespace_event(Event::Apply(("shop".into(), Some("stable".into()))));
        assert_eq!(changes.next().await, Some(Concerns::All));
    }

    #[tokio::test]
    async fn the_first_sync_concerns_every_mesh_even_when_nothing_is_listed() {
        // A reconcile before the sync deferred pruning; with no labelled namespace and no
        // gateway the lists touch no value, and only this wakes it (the upgrade killed
        // after Promoted in the faults test waited for it).
        let ix = UsageIndex::default();
        let mut changes = Box::pin(ix.changes());
        ix.namespace_event(Event::Init);
        ix.namespace_event(Event::InitDone);
        ix.gateway_event(&Event::Init);
        ix.gateway_event(&Event::InitDone);
        assert!(ix.synced());
        assert_eq!(changes.next().await, Some(Concerns::All));
        // A later empty relist changes nothing readers see.
        ix.namespace_event(Event::Init);
        ix.namespace_event(Event::InitDone);
        ix.gateway_event(&Event::Apply(gateway("a", "gw", "mesh-a", "stable")));
        assert_eq!(
            changes.next().await,
            Some(Concerns::Meshes(BTreeSet::from(["mesh-a".to_string()])))
        );
    }
}
