//! Pending-work bookkeeping: which objects have a trigger waiting for a reconcile, so
//! `workqueue_depth` means what it means in controller-runtime. Every trigger of a
//! controller goes through `controller::Triggers`, which counts it here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::ObjectRef;

use super::metrics::{Metrics, NameLabels};

/// The key of an object in queues and logs: `namespace/name`, or `name` when cluster-scoped.
pub fn key<K: kube::Resource>(r: &ObjectRef<K>) -> String
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    match &r.namespace {
        Some(ns) => format!("{ns}/{}", r.name),
        None => r.name.clone(),
    }
}

/// The same key, of an object.
pub fn describe<K: kube::ResourceExt>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

/// The set of objects waiting to be reconciled.
#[derive(Clone)]
pub struct Queue {
    name: NameLabels,
    pending: Arc<Mutex<HashSet<String>>>,
    metrics: Metrics,
}

impl Queue {
    /// An empty queue reported under `name`.
    pub fn new(name: &str, metrics: Metrics) -> Queue {
        Queue {
            name: NameLabels { name: name.to_string() },
            pending: Arc::default(),
            metrics,
        }
    }

    /// A trigger arrived for `key`; counted once until its reconcile starts.
    pub fn added(&self, key: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.metrics.workqueue_adds.get_or_create(&self.name).inc();
        if pending.insert(key.to_string()) {
            self.metrics
                .workqueue_depth
                .get_or_create(&self.name)
                .set(pending.len() as i64);
        }
    }

    /// The reconcile of `key` started, or will not run (its object is gone).
    pub fn started(&self, key: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.remove(key) {
            self.metrics
                .workqueue_depth
                .get_or_create(&self.name)
                .set(pending.len() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MeshGateway, MeshInstall};

    #[test]
    fn depth_counts_each_waiting_object_once_until_its_reconcile_starts() {
        let metrics = Metrics::new();
        let q = Queue::new("test", metrics.clone());
        let depth = || {
            metrics
                .workqueue_depth
                .get_or_create(&NameLabels { name: "test".into() })
                .get()
        };
        let mesh = key(&ObjectRef::<MeshInstall>::new("m"));
        let gw = key(&ObjectRef::<MeshGateway>::new("ingress").within("shop"));
        assert_eq!((mesh.as_str(), gw.as_str()), ("m", "shop/ingress"));
        q.added(&mesh);
        q.added(&mesh);
        q.added(&gw);
        assert_eq!(depth(), 2, "one trigger or two, an object waits once");
        q.started(&mesh);
        q.started("never-added");
        assert_eq!(depth(), 1);
        q.started(&gw);
        assert_eq!(depth(), 0);
    }
}
