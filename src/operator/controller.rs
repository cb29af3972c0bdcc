//! Running a controller: kube's `Controller` over a shared, tolerant watch of its kind
//! (`watch::SharedWatch`), where every trigger is counted in the work queue once, here;
//! every reconcile is traced, timed and counted; one error policy retries; and shutdown
//! drains the reconciles in flight.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, BoxFuture};
use futures::{FutureExt, Stream, StreamExt};
use kube::Resource;
use kube::api::DynamicObject;
use kube::runtime::controller::{self, Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info_span, warn};

use super::error::Error;
use super::index::OwnedStream;
use super::metrics::Metrics;
use super::queue::{Queue, describe, key};
use super::shared::Shared;
use super::watch::Guarded;

/// How often an unchanged object is looked at again, to catch drift no watch reported.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a failed reconcile is retried.
const RETRY: Duration = Duration::from_secs(5);
/// How long shutdown waits for reconciles in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Resolves when the controllers should stop (the lease was lost, or the process ends).
pub type Shutdown = future::Shared<BoxFuture<'static, ()>>;

/// An object the controller reconciles, by reference.
pub type Ref<K> = ObjectRef<Guarded<K>>;

/// A controller of kind `K` being built: each trigger added here counts itself.
pub struct Triggers<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + 'static,
{
    name: &'static str,
    controller: Controller<Guarded<K>>,
    queue: Queue,
    metrics: Metrics,
}

impl<K> Triggers<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    /// Controller `name` of the objects in `store`, each reconciled when `changed` (a
    /// subscription to the same watch) yields it.
    pub fn new(
        name: &'static str,
        shared: &Shared,
        store: Store<Guarded<K>>,
        changed: impl Stream<Item = Arc<Guarded<K>>> + Send + 'static,
    ) -> Triggers<K> {
        let queue = Queue::new(name, shared.metrics.clone());
        let q = queue.clone();
        let changed = changed.inspect(move |o| q.added(&describe(o.as_ref())));
        Triggers {
            name,
            controller: Controller::for_shared_stream(changed, store)
                .with_config(Config::default().concurrency(shared.concurrency)),
            queue,
            metrics: shared.metrics.clone(),
        }
    }

    /// Each object of another shared watch triggers the objects `map` names.
    pub fn watches<O>(
        mut self,
        changed: impl Stream<Item = Arc<O>> + Send + 'static,
        map: impl Fn(&O) -> Vec<Ref<K>> + Send + Sync + 'static,
    ) -> Triggers<K>
    where
        O: Clone + Resource + DeserializeOwned + Debug + Send + 'static,
        O::DynamicType: Default + Debug + Clone,
    {
        let q = self.queue.clone();
        self.controller = self.controller.watches_shared_stream(changed, move |o: Arc<O>| {
            let refs = map(&o);
            refs.iter().for_each(|r| q.added(&key(r)));
            refs
        });
        self
    }

    /// Each owned object that changed triggers the owner `owner` names.
    pub fn owns(
        mut self,
        owned: Vec<OwnedStream>,
        owner: impl Fn(&DynamicObject) -> Option<Ref<K>> + Clone + Send + Sync + 'static,
    ) -> Triggers<K> {
        for OwnedStream { kind, stream } in owned {
            let (q, owner) = (self.queue.clone(), owner.clone());
            let map = move |o: DynamicObject| {
                let r = owner(&o);
                r.iter().for_each(|r| q.added(&key(r)));
                r
            };
            self.controller = self.controller.watches_stream_with(stream, map, kind.api_resource());
        }
        self
    }

    /// Each reference `refs` yields triggers that object.
    pub fn on(mut self, refs: impl Stream<Item = Ref<K>> + Send + 'static) -> Triggers<K> {
        let q = self.queue.clone();
        self.controller = self.controller.reconcile_on(refs.inspect(move |r| q.added(&key(r))));
        self
    }

    /// Runs `reconcile` for every triggered object that decodes, until `shutdown`; then
    /// waits for the reconciles in flight (at most ten seconds). The controller never ends
    /// by itself while requeues are scheduled, hence the separate drain.
    pub async fn run<Ctx, F, Fut>(self, ctx: Arc<Ctx>, reconcile: F, shutdown: Shutdown)
    where
        Ctx: Send + Sync + 'static,
        F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, Error>> + Send + 'static,
    {
        let (name, metrics) = (self.name, self.metrics.clone());
        let step = Step {
            name,
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
        };
        let reconciler = move |obj: Arc<Guarded<K>>, ctx: Arc<Ctx>| {
            let object = describe(obj.as_ref());
            let span = info_span!("reconcile", controller = name, %object);
            step.clone()
                .reconcile(object, obj, ctx, reconcile.clone())
                .instrument(span)
        };
        let queue = self.queue.clone();
        let results = self
            .controller
            .graceful_shutdown_on(shutdown.clone())
            .run(reconciler, error_policy, ctx)
            .for_each(move |r| {
                log_result(&queue, r);
                future::ready(())
            });
        let drained = async {
            shutdown.await;
            let deadline = tokio::time::Instant::now() + DRAIN;
            while metrics.active_reconciles(name) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = results => {}
            _ = drained => {}
        }
    }
}

/// The bookkeeping around one reconcile.
#[derive(Clone)]
struct Step {
    name: &'static str,
    queue: Queue,
    metrics: Metrics,
}

impl Step {
    async fn reconcile<K, Ctx, F, Fut>(
        self,
        object: String,
        obj: Arc<Guarded<K>>,
        ctx: Arc<Ctx>,
        f: F,
    ) -> Result<Action, Error>
    where
        K: Clone,
        F: Fn(Arc<K>, Arc<Ctx>) -> Fut,
        Fut: Future<Output = Result<Action, Error>>,
    {
        self.queue.started(&object);
        let _timer = self.metrics.reconcile_started(self.name);
        debug!("reconcile started");
        let result = match &obj.0 {
            Ok(o) => f(Arc::new(o.clone()), ctx).await,
            Err(error) => {
                warn!(%error, "the object does not decode; it is left alone until it is fixed");
                Ok(Action::await_change())
            }
        };
        let outcome = if result.is_ok() { "success" } else { "error" };
        self.metrics.reconcile_result(self.name, outcome);
        result
    }
}

/// After a failure: log it and try again shortly.
fn error_policy<K, Ctx>(obj: Arc<Guarded<K>>, error: &Error, _ctx: Arc<Ctx>) -> Action
where
    K: Resource<DynamicType = ()> + Clone,
{
    let object = describe(obj.as_ref());
    warn!(%object, kind = error.metric_label(), %error, "reconcile failed; retrying");
    Action::requeue(RETRY)
}

/// Logs what the controller reports. An object deleted before its reconcile ran leaves
/// the queue without one.
fn log_result<T>(queue: &Queue, result: Result<T, controller::Error<Error, watcher::Error>>) {
    match result {
        Ok(_) => {}
        Err(controller::Error::ObjectNotFound(r)) => queue.started(&key(&r)),
        Err(other) => warn!(error = %other, "controller"),
    }
}

/// The shutdown signal as a [`Shutdown`] several controllers can wait on.
pub fn shutdown(signal: impl Future<Output = ()> + Send + 'static) -> Shutdown {
    signal.boxed().shared()
}
