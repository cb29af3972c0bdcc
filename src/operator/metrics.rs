//! The operator's Prometheus metrics: controller-runtime's names, so existing dashboards and
//! alerts work, plus Weft's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use super::failures::ControllerLabels;
use super::failures::Failures;
use super::requests::ApiRequests;
use crate::watch_health::WatchHealth;

/// `controller` and `result` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The controller's name.
    pub controller: String,
    /// `success`, `error` or `requeue`.
    pub result: String,
}

/// `name` label (work queues, leases).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    /// The queue's or lease's name.
    pub name: String,
}

/// `kind` and `verb` labels of an API write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// The object kind written.
    pub kind: String,
    /// `apply`, `create`, `delete`, `status` or `finalizer`.
    pub verb: String,
}

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The condition reason.
    pub reason: String,
}

/// Labels of revision steps.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// `created`, `tag_moved`, `promoted`, `held` or `pruned`.
    pub step: String,
}

fn reconcile_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The metrics that keep their own state (watch health, failing reconciles, API requests),
/// registered in `r`.
fn registered_parts(r: &mut Registry) -> (WatchHealth, Failures, ApiRequests) {
    let (watches, failures, requests) = (WatchHealth::default(), Failures::default(), ApiRequests::default());
    watches.register(r);
    failures.register(r);
    requests.register(r);
    (watches, failures, requests)
}

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    reconcile_time: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    active_workers: Family<ControllerLabels, Gauge>,
    /// Objects waiting to be reconciled, per controller queue.
    pub workqueue_depth: Family<NameLabels, Gauge>,
    /// Objects added to a queue.
    pub workqueue_adds: Family<NameLabels, Counter>,
    /// 1 while this process holds the lease.
    pub leader: Family<NameLabels, Gauge>,
    writes: Family<WriteLabels, Counter>,
    stalled: Family<ReasonLabels, Counter>,
    revision_steps: Family<StepLabels, Counter>,
    /// Whether each watch flows (`weft_watch_up`), which readiness also reads.
    pub watches: WatchHealth,
    /// Reconciles that keep failing (`weft_reconcile_failing`), which readiness also reads.
    pub failures: Failures,
    /// Every API request (`weft_api_requests_total`), counted by the client.
    pub requests: ApiRequests,
    /// Reconciles finished, of every controller (for memory trimming).
    finished: Arc<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let reconcile_total = Family::<ResultLabels, Counter>::default();
        r.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            reconcile_total.clone(),
        );
        let reconcile_errors = Family::<ControllerLabels, Counter>::default();
        r.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            reconcile_errors.clone(),
        );
        let reconcile_time = Family::<ControllerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            reconcile_buckets as fn() -> Histogram,
        );
        r.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            reconcile_time.clone(),
        );
        let active_workers = Family::<ControllerLabels, Gauge>::default();
        r.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            active_workers.clone(),
        );
        let workqueue_depth = Family::<NameLabels, Gauge>::default();
        r.register("workqueue_depth", "Current depth of workqueue", workqueue_depth.clone());
        let workqueue_adds = Family::<NameLabels, Counter>::default();
        r.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            workqueue_adds.clone(),
        );
        let leader = Family::<NameLabels, Gauge>::default();
        r.register(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master",
            leader.clone(),
        );
        let writes = Family::<WriteLabels, Counter>::default();
        r.register(
            "weft_api_writes",
            "Writes the operator sent to the API server, by kind and verb (zero at steady state)",
            writes.clone(),
        );
        let stalled = Family::<ReasonLabels, Counter>::default();
        r.register(
            "weft_stalled_transitions",
            "Times an object became Stalled, by reason",
            stalled.clone(),
        );
        let revision_steps = Family::<StepLabels, Counter>::default();
        r.register(
            "weft_revision_steps",
            "Steps of revision upgrades: created, tag_moved, promoted, held, pruned",
            revision_steps.clone(),
        );
        let (watches, failures, requests) = registered_parts(&mut r);
        Metrics {
            registry: Arc::new(r),
            reconcile_total,
            reconcile_errors,
            reconcile_time,
            active_workers,
            workqueue_depth,
            workqueue_adds,
            leader,
            writes,
            stalled,
            revision_steps,
            watches,
            failures,
            requests,
            finished: Arc::default(),
        }
    }

    /// Records the start of a reconcile; the guard records its end.
    pub fn reconcile_started(&self, controller: &str) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.active_workers.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self.clone(),
            labels,
            start: std::time::Instant::now(),
        }
    }

    /// Reconciles of `controller` running now.
    pub fn active_reconciles(&self, controller: &str) -> i64 {
        self.active_workers
            .get_or_create(&ControllerLabels {
                controller: controller.to_string(),
            })
            .get()
    }

    /// Reconciles finished so far, of every controller.
    pub fn reconciles_finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// Counts a reconcile outcome.
    pub fn reconcile_result(&self, controller: &str, result: &str) {
        self.reconcile_total
            .get_or_create(&ResultLabels {
                controller: controller.to_string(),
                result: result.to_string(),
            })
            .inc();
        if result == "error" {
            self.reconcile_errors
                .get_or_create(&ControllerLabels {
                    controller: controller.to_string(),
                })
                .inc();
        }
    }

    /// Counts one write to the API server.
    pub fn write(&self, kind: &str, verb: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.to_string(),
                verb: verb.to_string(),
            })
            .inc();
    }

    /// Counts a transition to Stalled.
    pub fn stalled(&self, reason: &str) {
        self.stalled
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a revision step.
    pub fn revision_step(&self, step: &str) {
        self.revision_steps
            .get_or_create(&StepLabels { step: step.to_string() })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Ends a reconcile's timing when dropped.
pub struct ReconcileTimer {
    metrics: Metrics,
    labels: ControllerLabels,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        let elapsed: Duration = self.start.elapsed();
        self.metrics
            .reconcile_time
            .get_or_create(&self.labels)
            .observe(elapsed.as_secs_f64());
        self.metrics.active_workers.get_or_create(&self.labels).dec();
        self.metrics.finished.fetch_add(1, Ordering::Relaxed);
    }
}
