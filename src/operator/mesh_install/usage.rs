//! Watch → index: who uses which revision. Namespaces labelled `weft.dev/rev` (only those:
//! the watch is label-filtered) and MeshGateways are indexed by the tag or revision they
//! name, so a reconcile looks up the few values of its own mesh instead of listing every
//! namespace. Each visible change triggers the MeshInstalls to look again.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::{Arc, RwLock};

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

    /// Applies one watch event; `Some(true)` when the index changed in a way readers see.
    fn apply(&mut self, event: Event<(String, Option<V>)>) -> bool {
        match event {
            Event::Init => {
                self.pending = Some(HashMap::new());
                false
            }
            Event::InitApply((key, value)) => {
                if let (Some(p), Some(v)) = (self.pending.as_mut(), value) {
                    p.insert(key, v);
                }
                false
            }
            Event::InitDone => {
                let fresh = self.pending.take().unwrap_or_default();
                self.live.clear();
                self.by_value.clear();
                for (k, v) in fresh {
                    self.set(k, Some(v));
                }
                self.synced = true;
                true
            }
            Event::Apply((key, value)) => {
                let changed = self.live.get(&key) != value.as_ref();
                self.set(key, value);
                changed
            }
            Event::Delete((key, _)) => {
                let changed = self.live.contains_key(&key);
                self.remove(&key);
                changed
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

/// The usage index (cheap to clone). The namespace watch is its own; gateways come from
/// the operator's shared MeshGateway watch.
#[derive(Clone, Debug)]
pub struct UsageIndex {
    inner: Arc<RwLock<Inner>>,
    /// Bumped after each change readers can see.
    changed: Arc<watch::Sender<()>>,
}

impl Default for UsageIndex {
    fn default() -> Self {
        UsageIndex {
            inner: Arc::default(),
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
                    Ok(e) => {
                        let e = map_event(&e, |o| (o.name_any(), o.labels().get(labels::REVISION).cloned()));
                        self.write(|i| i.namespaces.apply(e));
                    }
                    Err(error) => warn!(%error, "namespace watch error"),
                }
                future::ready(())
            })
            .await;
    }

    /// Takes in one event of the shared MeshGateway watch.
    pub fn gateway_event(&self, e: &Event<Guarded<MeshGateway>>) {
        let e = map_event(e, |g| (describe(g), gateway_follows(g)));
        self.write(|i| i.gateways.apply(e));
    }

    /// Yields after each change readers can see (bursts may coalesce into one).
    pub fn changes(&self) -> impl Stream<Item = ()> + Send + 'static {
        futures::stream::unfold(self.changed.subscribe(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    fn write(&self, f: impl FnOnce(&mut Inner) -> bool) {
        let mut guard = self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = f(&mut guard);
        drop(guard);
        if changed {
            self.changed.send_replace(());
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        let guard = self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }

    /// Whether both watches have listed everything once.
    pub fn synced(&self) -> bool {
        self.read(|i| i.namespaces.synced && i.gateways.synced)
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
        assert!(!ix.apply(Event::Init));
        ix.apply(Event::InitApply(("a".into(), Some("canary".into()))));
        ix.apply(Event::InitApply(("b".into(), Some("stable".into()))));
        assert!(!ix.synced, "not synced before the list is complete");
        assert!(ix.apply(Event::InitDone));
        assert_eq!(ix.get(&"canary".into()), BTreeSet::from(["a".to_string()]));
        assert!(ix.apply(Event::Apply(("b".into(), Some("canary".into())))));
        assert!(
            !ix.apply(Event::Apply(("b".into(), Some("canary".into())))),
            "no change, no trigger"
        );
        assert_eq!(ix.get(&"canary".into()).len(), 2);
        assert!(ix.get(&"stable".into()).is_empty());
        assert!(ix.apply(Event::Delete(("a".into(), None))));
        // A relist replaces everything, including objects deleted while disconnected.
        ix.apply(Event::Init);
        ix.apply(Event::InitApply(("c".into(), Some("stable".into()))));
        ix.apply(Event::InitDone);
        assert!(ix.get(&"canary".into()).is_empty());
        assert_eq!(ix.get(&"stable".into()), BTreeSet::from(["c".to_string()]));
    }
}
