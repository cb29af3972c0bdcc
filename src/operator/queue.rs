//! Pending-work bookkeeping: which MeshInstalls have a trigger waiting for a reconcile, so
//! `workqueue_depth` means what it means in controller-runtime.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::metrics::{Metrics, NameLabels};

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

    /// The reconcile of `key` started.
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
