//! A shared, tolerant watch of one kind: one reflector whose store every controller reads
//! and whose changes each controller subscribes to (kube's `store_shared` / `subscribe`).
//! Objects are decoded one by one through `DeserializeGuard`, so one object that does not
//! decode is carried as an error instead of failing the whole list.

use std::fmt::Debug;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::watch_health::{Flow, WatchBackoff};

/// Subscriber backlog: a subscriber that falls this far behind holds the watch back.
const BUFFER: usize = 256;

/// A watched object: the object, or why it does not decode.
pub type Guarded<K> = DeserializeGuard<K>;

/// The watch's events, for the driver that polls it (and for indexes fed from it). The
/// store and subscribers only move while this is polled.
pub type Events<K> = BoxStream<'static, Result<watcher::Event<Guarded<K>>, watcher::Error>>;

/// Every object of kind `K`, kept current by one watch. Controllers subscribe while they
/// are built, then [`SharedWatch::start`] turns it into the events a driver polls.
pub struct SharedWatch<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<Guarded<K>>,
    writer: Writer<Guarded<K>>,
}

impl<K> Default for SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    fn default() -> Self {
        let (store, writer) = reflector::store_shared(BUFFER);
        SharedWatch { store, writer }
    }
}

impl<K> SharedWatch<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// The store of every object, decoded or not (filled once the watch runs).
    pub fn store(&self) -> Store<Guarded<K>> {
        self.store.clone()
    }

    /// A subscription to changed objects (every object once after each list, then each
    /// object that changed). It must be polled: an unread subscription holds the watch back.
    pub fn subscribe(&self) -> impl Stream<Item = Arc<Guarded<K>>> + Send + 'static {
        // A writer made by `store_shared` always hands out subscriptions.
        futures::stream::iter(self.writer.subscribe()).flatten()
    }

    /// Starts the watch of every `K`; nothing arrives until the events are polled.
    pub fn start(self, client: &Client) -> Events<K> {
        let api: Api<Guarded<K>> = Api::all(client.clone());
        watcher(api, watcher::Config::default())
            .backoff(WatchBackoff::default())
            .modify(|o| o.managed_fields_mut().clear())
            .reflect_shared(self.writer)
            .boxed()
    }
}

/// The object of a store, if it exists and decodes.
pub fn get<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<Guarded<K>>,
    name: &str,
    namespace: Option<&str>,
) -> Option<K> {
    let mut key = ObjectRef::new(name);
    if let Some(ns) = namespace {
        key = key.within(ns);
    }
    store.get(&key).and_then(|g| g.0.clone().ok())
}

/// Every object of a store that decodes.
pub fn valid<K: Resource<DynamicType = ()> + Clone>(store: &Store<Guarded<K>>) -> Vec<K> {
    store.state().iter().filter_map(|g| g.0.clone().ok()).collect()
}

/// Polls a watch's events until the process stops, logging errors (the watcher retries
/// with backoff by itself) and recording in `flow` whether it flows; `each` sees every event.
pub async fn drive<K>(events: Events<K>, flow: Flow, mut each: impl FnMut(&watcher::Event<Guarded<K>>))
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let kind = K::kind(&()).to_string();
    events
        .for_each(|event| {
            flow.saw(&event);
            match event {
                Ok(e) => {
                    warn_undecodable(&e);
                    each(&e);
                }
                Err(error) => warn!(%kind, %error, "watch error; retrying"),
            }
            futures::future::ready(())
        })
        .await;
}

/// Logs objects that do not decode: they are skipped, the rest of the list is served.
fn warn_undecodable<K: Resource<DynamicType = ()> + Clone>(event: &watcher::Event<Guarded<K>>) {
    let obj = match event {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => o,
        _ => return,
    };
    if let Err(e) = &obj.0 {
        let name = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
        warn!(kind = %K::kind(&()), object = %name, error = %e, "skipping an object that does not decode");
    }
}

/// Every change of a Secret's metadata, in any namespace (its data is neither watched nor
/// kept: a reconcile reads the one Secret it needs). `what` names the watch in metrics.
pub fn secret_changes(
    shared: &super::shared::Shared,
    what: &'static str,
) -> impl Stream<Item = Arc<kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Secret>>> + Send + 'static {
    metadata_changes(shared, what)
}

/// Every change to a `K` (metadata only: no data is ever read or held), as
/// [`secret_changes`] (ConfigMaps a mesh's `trustedRoots` name, for one).
pub fn metadata_changes<K>(
    shared: &super::shared::Shared,
    what: &'static str,
) -> impl Stream<Item = Arc<kube::core::PartialObjectMeta<K>>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    use kube::core::PartialObjectMeta;
    // A metadata-only watch: PartialObjectMeta asks for nothing else.
    let api: Api<PartialObjectMeta<K>> = Api::all(shared.client.clone());
    let flow = shared.metrics.watches.track(what);
    watcher(api, watcher::Config::default())
        .backoff(WatchBackoff::default())
        // Annotations may carry a copy of the data (kubectl's last-applied configuration).
        .modify(|m| {
            m.managed_fields_mut().clear();
            m.annotations_mut().clear();
        })
        .inspect(move |e| flow.saw(e))
        .touched_objects()
        .filter_map(|r| futures::future::ready(r.ok().map(Arc::new)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MeshInstall;

    fn guarded(json: serde_json::Value) -> Guarded<MeshInstall> {
        serde_json::from_value(json).expect("a guard always decodes")
    }

    #[test]
    fn an_object_that_does_not_decode_is_carried_and_skipped() {
        let good = guarded(serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshInstall",
            "metadata": {"name": "good"}, "spec": {"version": "1.0.0"}
        }));
        let bad = guarded(serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshInstall",
            "metadata": {"name": "bad"}, "spec": {"version": ["not", "a", "string"]}
        }));
        assert!(bad.0.is_err(), "the spec does not decode");
        let mut writer = reflector::store::Writer::<Guarded<MeshInstall>>::default();
        for o in [good, bad] {
            writer.apply_watcher_event(&watcher::Event::Apply(o));
        }
        let store = writer.as_reader();
        assert_eq!(
            store.state().len(),
            2,
            "both are in the store, so the list is not blocked"
        );
        let names: Vec<String> = valid(&store).iter().map(|m| m.name_any()).collect();
        assert_eq!(names, ["good"]);
        assert!(get(&store, "bad", None).is_none());
        assert!(get(&store, "good", None).is_some());
    }
}
