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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::DynamicObject;
use kube::core::object::HasStatus;
use kube::runtime::controller::{self, Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info_span, warn};

use super::conditions::{Conditioned, retrying};
use super::error::Error;
use super::failures::Failures;
use super::index::OwnedStream;
use super::queue::{Queue, describe, key, paced};
use super::shared::Shared;
use super::status;
use super::watch::Guarded;

/// How often an unchanged object is looked at again, to catch drift no watch reported.
pub const RESYNC: Duration = Duration::from_secs(300);
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
    shared: Shared,
}

impl<K> Triggers<K>
where
    K: Resource<DynamicType = ()> + HasStatus + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::Status: Serialize + PartialEq + Default + Clone + Conditioned + Send + Sync,
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
            shared: shared.clone(),
        }
    }

    /// Each object of another shared watch triggers the objects `map` names. One change
    /// may name many (a tag move, every gateway of its mesh): they enter the queue as it
    /// makes room ([`paced`]), so other objects' triggers do not wait behind all of them.
    pub fn watches<O>(
        mut self,
        changed: impl Stream<Item = Arc<O>> + Send + 'static,
        map: impl Fn(&O) -> Vec<Ref<K>> + Send + Sync + 'static,
    ) -> Triggers<K>
    where
        O: Send + Sync + 'static,
    {
        let q = self.queue.clone();
        let named = changed.flat_map(move |o| futures::stream::iter(map(&o)));
        let released = paced(named, &self.queue, usize::from(self.shared.concurrency.max(1)));
        self.controller = self
            .controller
            .reconcile_on(released.inspect(move |r| q.added(&key(r))));
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
        let (name, metrics) = (self.name, self.shared.metrics.clone());
        let step = Step {
            name,
            queue: self.queue.clone(),
            shared: self.shared.clone(),
        };
        let failures = metrics.failures.clone();
        // After a failure: log it and retry with back-off that grows while it keeps failing.
        let error_policy = move |obj: Arc<Guarded<K>>, error: &Error, _: Arc<Ctx>| {
            let object = describe(obj.as_ref());
            let wait = failures.retry_after(name, &object, std::time::Instant::now());
            warn!(%object, kind = error.metric_label(), %error, retry_in = ?wait, "reconcile failed; retrying");
            Action::requeue(wait)
        };
        let reconciler = move |obj: Arc<Guarded<K>>, ctx: Arc<Ctx>| {
            let object = describe(obj.as_ref());
            let span = info_span!("reconcile", controller = name, %object);
            step.clone()
                .reconcile(object, obj, ctx, reconcile.clone())
                .instrument(span)
        };
        let (queue, failures) = (self.queue.clone(), metrics.failures.clone());
        let results = self
            .controller
            .graceful_shutdown_on(shutdown.clone())
            .run(reconciler, error_policy, ctx)
            .for_each(move |r| {
                log_result(name, &queue, &failures, r);
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
    shared: Shared,
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
        K: Resource<DynamicType = ()> + HasStatus + Clone,
        K::Status: Serialize + PartialEq + Default + Clone + Conditioned,
        F: Fn(Arc<K>, Arc<Ctx>) -> Fut,
        Fut: Future<Output = Result<Action, Error>>,
    {
        let metrics = &self.shared.metrics;
        self.queue.started(&object);
        let _timer = metrics.reconcile_started(self.name);
        debug!("reconcile started");
        let result = match &obj.0 {
            Ok(o) => {
                let result = f(Arc::new(o.clone()), ctx).await;
                self.account(o, &object, &result).await;
                result
            }
            Err(error) => {
                warn!(%error, "the object does not decode; it is left alone until it is fixed");
                Ok(Action::await_change())
            }
        };
        let outcome = if result.is_ok() { "success" } else { "error" };
        metrics.reconcile_result(self.name, outcome);
        result
    }

    /// Counts a failure, or clears the count; from the second failure in a row on, the
    /// object's status says that reconciles fail and why (`Reconciling`, `RetryingAfterError`).
    async fn account<K>(&self, obj: &K, object: &str, result: &Result<Action, Error>)
    where
        K: Resource<DynamicType = ()> + HasStatus,
        K::Status: Serialize + PartialEq + Default + Clone + Conditioned,
    {
        let failures = &self.shared.metrics.failures;
        let Err(error) = result else {
            failures.succeeded(self.name, object);
            return;
        };
        let error = error.to_string();
        if failures.failed(self.name, object, &error) < 2 {
            return;
        }
        let status = obj.status().cloned().unwrap_or_default();
        let Some(new) = retrying(&status, &error, &Time(Timestamp::now())) else {
            return;
        };
        // The API server may be what fails: then this fails too, and the log says so.
        if let Err(e) = status::write(&self.shared, obj, &new).await {
            debug!(error = %e, "could not say in status that reconciles fail");
        }
    }
}

/// Logs what the controller reports. An object deleted before its reconcile ran leaves
/// the queue without one, and is no longer failing.
fn log_result<T>(
    name: &str,
    queue: &Queue,
    failures: &Failures,
    result: Result<T, controller::Error<Error, watcher::Error>>,
) {
    match result {
        Ok(_) => {}
        Err(controller::Error::ObjectNotFound(r)) => {
            queue.started(&key(&r));
            failures.succeeded(name, &key(&r));
        }
        Err(other) => warn!(error = %other, "controller"),
    }
}

/// The shutdown signal as a [`Shutdown`] several controllers can wait on.
pub fn shutdown(signal: impl Future<Output = ()> + Send + 'static) -> Shutdown {
    signal.boxed().shared()
}
