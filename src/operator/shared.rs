//! What every controller shares: the API client, metrics, the Event recorder and the
//! supported versions. Each controller's own context adds its indexes to this.

use kube::{Client, Resource};
use tracing::warn;

use super::events::{Note, Recorder};
use super::metrics::Metrics;
use crate::versions::VersionTable;

/// What every controller shares.
#[derive(Clone)]
pub struct Shared {
    /// API client.
    pub client: Client,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// Supported versions.
    pub versions: VersionTable,
    /// Reconciles one controller may run at once.
    pub concurrency: u16,
}

impl Shared {
    /// The shared parts, recording Events as this process (`identity`).
    pub fn new(client: Client, metrics: Metrics, versions: VersionTable, concurrency: u16, identity: &str) -> Shared {
        let recorder = Recorder::new(client.clone(), "weft-operator", identity);
        Shared {
            client,
            metrics,
            recorder,
            versions,
            concurrency,
        }
    }
}

impl Shared {
    /// Records `note` about `obj` as an Event (a failure is logged, never fatal).
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, note: &Note) {
        match self.recorder.publish(note, &obj.object_ref(&())).await {
            Ok(()) => self.metrics.write("Event", "create"),
            Err(error) => warn!(%error, "could not record an event"),
        }
    }

    /// Records every note, in order.
    pub async fn publish_all<K: Resource<DynamicType = ()>>(&self, obj: &K, notes: &[Note]) {
        for note in notes {
            self.publish(obj, note).await;
        }
    }
}
