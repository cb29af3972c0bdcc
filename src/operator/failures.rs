//! Reconciles that keep failing: counted per object, retried after as long as they have
//! been failing (never a tight loop against a broken API server), shown in
//! `weft_reconcile_failing` and, once an object has failed for a minute, in readiness.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `controller` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller's name.
    pub controller: String,
}

/// The first retry after a failed reconcile.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between retries.
const MAX_RETRY: Duration = Duration::from_secs(300);
/// How long an object may keep failing before the process reports it as not ready.
pub const GRACE: Duration = Duration::from_secs(60);

/// One object whose reconciles fail.
#[derive(Clone, Debug)]
struct Failing {
    count: u32,
    since: Instant,
    error: String,
}

/// Every object whose last reconcile failed, by controller and object.
#[derive(Clone, Default)]
pub struct Failures {
    failing: Arc<Mutex<BTreeMap<(String, String), Failing>>>,
    gauge: Family<ControllerLabels, Gauge>,
}

impl Failures {
    /// Registers `weft_reconcile_failing`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "weft_reconcile_failing",
            "Objects whose last reconcile failed (retried with back-off), by controller",
            self.gauge.clone(),
        );
    }

    /// Records a failure; returns how many in a row this object has had.
    pub fn failed(&self, controller: &str, object: &str, error: &str) -> u32 {
        let mut failing = self.lock();
        let entry = failing
            .entry((controller.to_string(), object.to_string()))
            .or_insert_with(|| Failing {
                count: 0,
                since: Instant::now(),
                error: String::new(),
            });
        entry.count += 1;
        entry.error = error.to_string();
        let count = entry.count;
        self.update_gauge(&failing, controller);
        count
    }

    /// Records a success (or an object gone): it is no longer failing.
    pub fn succeeded(&self, controller: &str, object: &str) {
        let mut failing = self.lock();
        if failing.remove(&(controller.to_string(), object.to_string())).is_some() {
            self.update_gauge(&failing, controller);
        }
    }

    /// When to retry `object`: as long as it has been failing, from 5 s to 5 minutes. By
    /// time, not by count: the watch events a failing object attracts (its namespace being
    /// deleted, say) add failures quickly but must not push its retry minutes away.
    pub fn retry_after(&self, controller: &str, object: &str, now: Instant) -> Duration {
        let failing_for = self
            .lock()
            .get(&(controller.to_string(), object.to_string()))
            .map_or(Duration::ZERO, |f| now.saturating_duration_since(f.since));
        failing_for.clamp(FIRST_RETRY, MAX_RETRY)
    }

    fn update_gauge(&self, failing: &BTreeMap<(String, String), Failing>, controller: &str) {
        let n = failing.keys().filter(|(c, _)| c == controller).count();
        self.gauge
            .get_or_create(&ControllerLabels {
                controller: controller.to_string(),
            })
            .set(n as i64);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), Failing>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl crate::http::Check for Failures {
    fn problems(&self, now: Instant) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, f)| now.saturating_duration_since(f.since) >= GRACE)
            .map(|((controller, object), f)| {
                let for_ = now.saturating_duration_since(f.since).as_secs();
                format!(
                    "{controller} {object}: reconcile failing for {for_}s ({} times): {}",
                    f.count, f.error
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Check;

    #[test]
    fn retries_wait_as_long_as_the_object_has_failed_from_five_seconds_to_five_minutes() {
        let f = Failures::default();
        let start = Instant::now();
        for _ in 0..20 {
            f.failed("meshinstall", "a", "boom");
        }
        let wait = |after: u64| f.retry_after("meshinstall", "a", start + Duration::from_secs(after));
        assert_eq!(wait(0), FIRST_RETRY, "twenty quick failures do not push it away");
        let w = wait(40);
        assert!(w > Duration::from_secs(39) && w <= Duration::from_secs(40), "{w:?}");
        assert_eq!(wait(3600), MAX_RETRY);
        assert_eq!(f.retry_after("meshinstall", "never-failed", start), FIRST_RETRY);
    }

    #[test]
    fn an_object_failing_past_the_grace_period_is_a_problem_until_it_succeeds() {
        let f = Failures::default();
        assert_eq!(f.failed("meshinstall", "default", "403 forbidden"), 1);
        assert_eq!(f.failed("meshinstall", "default", "403 forbidden"), 2);
        assert!(f.problems(Instant::now()).is_empty(), "within the grace period");
        let later = Instant::now() + GRACE + Duration::from_secs(1);
        let problems = f.problems(later);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("meshinstall default: reconcile failing for"),
            "{problems:?}"
        );
        assert!(problems[0].contains("(2 times): 403 forbidden"), "{problems:?}");
        f.succeeded("meshinstall", "default");
        assert!(f.problems(later).is_empty());
        assert_eq!(
            f.retry_after("meshinstall", "default", later),
            FIRST_RETRY,
            "no longer failing"
        );
    }
}
