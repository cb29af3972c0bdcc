//! Pending-work bookkeeping: which objects have a trigger waiting for a reconcile, so
//! `workqueue_depth` means what it means in controller-runtime. Every trigger of a
//! controller goes through `controller::Triggers`, which counts it here.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FusedStream;
use futures::{Stream, StreamExt};
use tokio::sync::watch;

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
    /// How many wait, for [`paced`] to watch.
    depth: Arc<watch::Sender<usize>>,
}

impl Queue {
    /// An empty queue reported under `name`.
    pub fn new(name: &str, metrics: Metrics) -> Queue {
        Queue {
            name: NameLabels { name: name.to_string() },
            pending: Arc::default(),
            metrics,
            depth: Arc::new(watch::Sender::new(0)),
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
            self.depth.send_replace(pending.len());
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
            self.depth.send_replace(pending.len());
        }
    }
}

/// How long [`paced`] holds its next object at most, should the queue not move (a trigger
/// counted but never started would otherwise hold the rest for good).
const PACE_AT_MOST: Duration = Duration::from_secs(1);

/// Passes `refs` on as the queue makes room: while `limit` objects or more wait in `queue`,
/// the next is held. A change that names many objects at once (a tag move names every
/// gateway of its mesh) thus enters the queue a few at a time, and a trigger of any other
/// object waits behind those few, not behind all of them. Each object is held once.
pub fn paced<R, S>(refs: S, queue: &Queue, limit: usize) -> impl Stream<Item = R> + Send + 'static
where
    R: Clone + Eq + Hash + Send + Sync + 'static,
    S: Stream<Item = R> + Send + 'static,
{
    let state = (refs.boxed().fuse(), VecDeque::<R>::new(), queue.depth.subscribe());
    futures::stream::unfold(state, move |(mut refs, mut held, mut depth)| async move {
        loop {
            if !held.is_empty() && *depth.borrow_and_update() < limit {
                let next = held.pop_front()?;
                return Some((next, (refs, held, depth)));
            }
            if refs.is_terminated() && held.is_empty() {
                return None;
            }
            tokio::select! {
                r = refs.next(), if !refs.is_terminated() => {
                    if let Some(r) = r.filter(|r| !held.contains(r)) {
                        held.push_back(r);
                    }
                }
                changed = depth.changed(), if !held.is_empty() => {
                    // The queue is gone: so is the controller.
                    changed.ok()?;
                }
                _ = tokio::time::sleep(PACE_AT_MOST), if !held.is_empty() => {
                    let next = held.pop_front()?;
                    return Some((next, (refs, held, depth)));
                }
            }
        }
    })
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

    #[tokio::test(start_paused = true)]
    async fn a_burst_enters_the_queue_as_it_makes_room_and_others_pass_it() {
        let q = Queue::new("paced", Metrics::new());
        let (tx, rx) = futures::channel::mpsc::unbounded::<String>();
        let mut out = Box::pin(paced(rx, &q, 2));
        for i in 0..5 {
            tx.unbounded_send(format!("mesh/gw-{i}")).unwrap();
        }
        // Released ones are counted in the queue by the controller, as here.
        for want in ["mesh/gw-0", "mesh/gw-1"] {
            let r = out.next().await.unwrap();
            assert_eq!(r, want);
            q.added(&r);
        }
        // Two wait: the next is held, and another object's trigger goes straight in.
        let held = tokio::time::timeout(Duration::from_millis(500), out.next()).await;
        assert!(held.is_err(), "held while two wait");
        q.added("other/unrelated");
        q.started("mesh/gw-0");
        q.started("other/unrelated");
        assert_eq!(out.next().await.unwrap(), "mesh/gw-2", "room again");
        q.added("mesh/gw-2");
        // A queue that does not move holds the rest at most PACE_AT_MOST each.
        let start = tokio::time::Instant::now();
        assert_eq!(out.next().await.unwrap(), "mesh/gw-3");
        assert!(start.elapsed() >= PACE_AT_MOST);
        drop(tx);
        assert_eq!(out.next().await.unwrap(), "mesh/gw-4");
        assert_eq!(out.next().await, None, "ends with its input once all are passed on");
    }
}
