//! Watch → index: one reflector per owned kind, restricted to objects matching a label
//! selector (each controller indexes what it owns: the selectors are disjoint). The stores
//! answer "what is live?" without API calls, and the same watch streams trigger reconciles
//! of the owner.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, watcher::Config};
use serde_json::Value;
use tracing::warn;

use super::shared::Shared;
use crate::render::OwnedKind;
use crate::watch_health::WatchBackoff;

/// Owned objects of one kind that changed (deleted ones included): a controller trigger.
pub struct OwnedStream {
    /// The kind.
    pub kind: OwnedKind,
    /// The objects.
    pub stream: std::pin::Pin<Box<dyn Stream<Item = Result<DynamicObject, watcher::Error>> + Send>>,
}

/// An index and the streams that fill it (the controller polls them as triggers).
pub struct OwnedWatch {
    /// The index.
    pub index: OwnedIndex,
    /// One stream per kind.
    pub streams: Vec<OwnedStream>,
}

/// The live objects the operator owns, by kind.
#[derive(Clone)]
pub struct OwnedIndex {
    stores: Arc<HashMap<OwnedKind, Store<DynamicObject>>>,
    /// True once every store has its initial list. (A store's own `wait_until_ready` wakes
    /// only one of several concurrent waiters, so one task waits and publishes here.)
    ready: tokio::sync::watch::Receiver<bool>,
}

impl OwnedIndex {
    /// Starts one watch per kind, restricted to objects matching `selector`, each tracked
    /// in the watch health as `<owner>/<kind>`. The streams must be polled (the controllers
    /// do) for the stores to fill.
    pub fn start(shared: &Shared, owner: &str, selector: &str, kinds: &[OwnedKind]) -> OwnedWatch {
        let (client, health) = (&shared.client, &shared.metrics.watches);
        let mut stores = HashMap::new();
        let mut streams = Vec::new();
        for &kind in kinds {
            let ar = kind.api_resource();
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let writer = reflector::store::Writer::new(ar.clone());
            stores.insert(kind, writer.as_reader());
            let flow = health.track(format!("{owner}/{}", ar.kind));
            let stream = watcher(api, Config::default().labels(selector))
                .backoff(WatchBackoff::default())
                .modify(pack)
                .reflect(writer)
                .inspect(move |e| flow.saw(e))
                .touched_objects()
                .filter(move |r| future::ready(passes(kind, r)));
            streams.push(OwnedStream {
                kind,
                stream: Box::pin(stream),
            });
        }
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let waiting: Vec<Store<DynamicObject>> = stores.values().cloned().collect();
        tokio::spawn(async move {
            for store in waiting {
                // A dropped writer means the controller stopped; nothing left to wait for.
                if store.wait_until_ready().await.is_err() {
                    return;
                }
            }
            let _ = ready_tx.send(true);
        });
        OwnedWatch {
            index: OwnedIndex {
                stores: Arc::new(stores),
                ready,
            },
            streams,
        }
    }

    /// Waits until every store has its initial list.
    pub async fn ready(&self) {
        let _ = self.ready.clone().wait_for(|r| *r).await;
    }

    /// The live object, typed, if any and if it decodes.
    pub fn get_typed<K: kube::Resource + serde::de::DeserializeOwned>(
        &self,
        kind: OwnedKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<K> {
        self.get(kind, namespace, name)?.as_ref().clone().try_parse().ok()
    }

    /// The live object, if any.
    pub fn get(&self, kind: OwnedKind, namespace: Option<&str>, name: &str) -> Option<Arc<DynamicObject>> {
        let store = self.stores.get(&kind)?;
        let mut key = ObjectRef::new_with(name, kind.api_resource());
        if let Some(ns) = namespace {
            key = key.within(ns);
        }
        store.get(&key).map(|o| Arc::new(unpack(&o)))
    }

    /// Every live object of a kind whose controller is the owner with this uid.
    pub fn owned_by(&self, kind: OwnedKind, owner_uid: &str) -> Vec<Arc<DynamicObject>> {
        let Some(store) = self.stores.get(&kind) else {
            return Vec::new();
        };
        store
            .state_filter(|o| {
                o.owner_references()
                    .iter()
                    .any(|r| r.controller == Some(true) && r.uid == owner_uid)
            })
            .iter()
            .map(|o| Arc::new(unpack(o)))
            .collect()
    }
}

/// Makes a watched object small for the store: its managed fields go (most of an object's
/// size, never read here) and its body (everything but metadata) is kept as one compact
/// JSON string. A parsed body costs several times its text (a gateway's Deployment: 36 KiB
/// parsed, 4 KiB as text), and a reconcile reads only its own few objects, parsed back by
/// [`unpack`] when read. Only metadata (names, labels, owners) is read while packed.
fn pack(o: &mut DynamicObject) {
    o.managed_fields_mut().clear();
    let body = std::mem::take(&mut o.data);
    o.data = Value::String(body.to_string());
}

/// The object as the API server sent it (without managed fields), from its packed form.
fn unpack(o: &DynamicObject) -> DynamicObject {
    let data = match &o.data {
        // It was serialised from a Value just before: it parses.
        Value::String(text) => serde_json::from_str(text).unwrap_or_default(),
        other => other.clone(),
    };
    DynamicObject {
        types: o.types.clone(),
        metadata: o.metadata.clone(),
        data,
    }
}

/// Lets objects through and stops errors, after logging them (the watch retries by itself).
/// Errors must not reach kube's `Controller`: it backs off all of its triggers together on
/// any trigger's error, so a dozen owned watches re-listing after a 410 held back every
/// trigger, the owner's own watch included, for minutes.
fn passes(kind: OwnedKind, r: &Result<DynamicObject, watcher::Error>) -> bool {
    if let Err(error) = r {
        warn!(kind = %kind.api_resource().kind, %error, "owned-object watch error; retrying");
    }
    r.is_ok()
}

/// The name of an object's controller owner of `kind` (group `weft.dev`), if any.
pub fn controller_owner(o: &DynamicObject, kind: &str) -> Option<String> {
    o.owner_references()
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == kind && r.api_version.starts_with("weft.dev/"))
        .map(|r| r.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_object_reads_back_as_it_came_without_managed_fields() {
        let live: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "gw", "namespace": "shop", "labels": {"a": "b"},
                         "managedFields": [{"manager": "weft-operator", "operation": "Apply"}]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c"}]}}},
            "status": {"readyReplicas": 2}
        }))
        .unwrap();
        let mut packed = live.clone();
        pack(&mut packed);
        assert!(packed.data.is_string(), "the body is one string while stored");
        assert_eq!(
            packed.labels().get("a").map(String::as_str),
            Some("b"),
            "metadata stays readable"
        );
        let back = unpack(&packed);
        assert_eq!(back.data, live.data);
        assert!(back.metadata.managed_fields.as_ref().is_none_or(|f| f.is_empty()));
        assert_eq!(back.metadata.name, live.metadata.name);
        let d: k8s_openapi::api::apps::v1::Deployment = back.try_parse().unwrap();
        assert_eq!(d.status.and_then(|s| s.ready_replicas), Some(2));
    }
}
