//! Whether each watch is flowing: the truth behind `/readyz` and `weft_watch_up`.
//!
//! A watch that fails (the API server is gone, a 410 after compaction, a refused list) or
//! that is never polled again after failing is not flowing, even though its store still
//! answers with the last objects it saw. Readiness says which watch and why, instead of
//! hiding behind the last good state.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kube::runtime::watcher;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How long a watch may be failing, or listing for the first time, before it makes the
/// process unready: a routine re-list after a 410 or a brief API-server blip stays within it.
pub const GRACE: Duration = Duration::from_secs(20);

/// The first retry of a failed watch.
const RETRY_MIN: Duration = Duration::from_millis(500);
/// The longest wait between retries: after an API-server outage, every watch is back
/// within this (kube's default, 30 s, kept changes waiting that long).
const RETRY_MAX: Duration = Duration::from_secs(8);

/// `watch` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    /// The watch's name: its kind, and its owner when several watch one kind.
    pub watch: String,
}

/// Where one watch stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Started, the first list not complete yet.
    Listing { since: Instant },
    /// Listed; events arrive.
    Flowing,
    /// The last thing it yielded was an error, and nothing good since.
    Failing { since: Instant, error: String },
}

/// Every watch of the process and whether it flows.
#[derive(Clone, Default)]
pub struct WatchHealth {
    states: Arc<Mutex<BTreeMap<String, State>>>,
    up: Family<WatchLabels, Gauge>,
    errors: Family<WatchLabels, Counter>,
}

impl WatchHealth {
    /// Registers `weft_watch_up` and `weft_watch_errors_total`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "weft_watch_up",
            "1 while a watch has listed and is not failing, by watch",
            self.up.clone(),
        );
        r.register(
            "weft_watch_errors",
            "Errors a watch returned (each is retried with backoff), by watch",
            self.errors.clone(),
        );
    }

    /// Tracks a new watch named `name` until the returned handle is dropped.
    pub fn track(&self, name: impl Into<String>) -> Flow {
        let name = name.into();
        self.lock()
            .insert(name.clone(), State::Listing { since: Instant::now() });
        self.up.get_or_create(&labels(&name)).set(0);
        Flow(Arc::new(FlowInner {
            name,
            health: self.clone(),
        }))
    }

    /// Why the process is not ready, one line per watch that is not flowing for longer than
    /// `grace` at `now`; empty when every watch flows.
    pub fn problems(&self, now: Instant, grace: Duration) -> Vec<String> {
        self.lock()
            .iter()
            .filter_map(|(name, state)| match state {
                State::Flowing => None,
                State::Listing { since } => {
                    let for_ = now.saturating_duration_since(*since);
                    (for_ >= grace).then(|| format!("watch {name}: no complete list after {}s", for_.as_secs()))
                }
                State::Failing { since, error } => {
                    let for_ = now.saturating_duration_since(*since);
                    (for_ >= grace).then(|| format!("watch {name}: failing for {}s: {error}", for_.as_secs()))
                }
            })
            .collect()
    }

    fn set(&self, name: &str, next: impl FnOnce(Option<&State>) -> State) {
        let mut states = self.lock();
        let state = next(states.get(name));
        self.up
            .get_or_create(&labels(name))
            .set(i64::from(state == State::Flowing));
        states.insert(name.to_string(), state);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, State>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl crate::http::Check for WatchHealth {
    fn problems(&self, now: Instant) -> Vec<String> {
        WatchHealth::problems(self, now, GRACE)
    }
}

fn labels(name: &str) -> WatchLabels {
    WatchLabels {
        watch: name.to_string(),
    }
}

/// One tracked watch; it stops being tracked when the last clone is dropped (its
/// controller stopped, for one, when this process lost the lease).
#[derive(Clone)]
pub struct Flow(Arc<FlowInner>);

struct FlowInner {
    name: String,
    health: WatchHealth,
}

impl Drop for FlowInner {
    fn drop(&mut self) {
        self.health.lock().remove(&self.name);
        self.health.up.remove(&labels(&self.name));
    }
}

impl Flow {
    /// Records what the watch yielded.
    pub fn saw<K>(&self, item: &Result<watcher::Event<K>, watcher::Error>) {
        match item {
            // A (re-)list in progress: the store still holds the last complete list.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => self.flowing(),
            Err(e) => self.failed(e),
        }
    }

    /// The watch listed or delivered an event.
    pub fn flowing(&self) {
        self.0.health.set(&self.0.name, |_| State::Flowing);
    }

    /// The watch returned an error (it retries with backoff by itself).
    pub fn failed(&self, error: &dyn Display) {
        let FlowInner { name, health } = self.0.as_ref();
        health.errors.get_or_create(&labels(name)).inc();
        let error = error.to_string();
        health.set(name, |previous| match previous {
            // Failing since the first error, not the latest.
            Some(State::Failing { since, .. }) => State::Failing { since: *since, error },
            _ => State::Failing {
                since: Instant::now(),
                error,
            },
        });
    }
}

/// How a failed watch is retried: doubling from half a second to [`RETRY_MAX`], each wait
/// shortened by up to a half at random so many watches do not retry in step; reset by the
/// next success.
#[derive(Debug, Default)]
pub struct WatchBackoff {
    next: Option<Duration>,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next.unwrap_or(RETRY_MIN);
        self.next = Some((wait * 2).min(RETRY_MAX));
        Some(wait.mul_f64(1.0 - jitter() / 2.0))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = None;
    }
}

/// A number in [0, 1) from the standard library's randomly keyed hasher.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(0u8) % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(h: &WatchHealth, name: &str) -> i64 {
        h.up.get_or_create(&labels(name)).get()
    }

    #[test]
    fn retries_double_up_to_the_maximum_and_start_over_after_a_success() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let waits: Vec<Duration> = b.by_ref().take(8).collect();
        assert!(waits[0] <= RETRY_MIN && waits[0] >= RETRY_MIN / 2, "{waits:?}");
        assert!(waits.iter().all(|w| *w <= RETRY_MAX), "{waits:?}");
        assert!(waits[7] >= RETRY_MAX / 2, "{waits:?}");
        b.reset();
        assert!(b.next().is_some_and(|w| w <= RETRY_MIN));
    }

    #[test]
    fn a_watch_is_a_problem_only_after_the_grace_period() {
        let h = WatchHealth::default();
        let flow = h.track("Deployment");
        let start = Instant::now();
        assert!(h.problems(start, GRACE).is_empty(), "listing within the grace period");
        let late = start + GRACE + Duration::from_secs(1);
        assert_eq!(h.problems(late, GRACE).len(), 1, "{:?}", h.problems(late, GRACE));
        flow.flowing();
        assert!(h.problems(late, GRACE).is_empty());
        assert_eq!(up(&h, "Deployment"), 1);
    }

    #[test]
    fn a_failing_watch_counts_from_its_first_error_and_names_the_last() {
        let h = WatchHealth::default();
        let flow = h.track("MeshInstall");
        flow.flowing();
        flow.failed(&"410 Gone");
        let first = Instant::now();
        flow.failed(&"connection refused");
        assert_eq!(up(&h, "MeshInstall"), 0);
        let problems = h.problems(first + GRACE + Duration::from_secs(2), GRACE);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("watch MeshInstall: failing for"), "{problems:?}");
        assert!(problems[0].contains("connection refused"), "{problems:?}");
        assert_eq!(h.errors.get_or_create(&labels("MeshInstall")).get(), 2);
    }

    #[test]
    fn a_relist_does_not_clear_a_failure_until_it_completes() {
        let h = WatchHealth::default();
        let flow = h.track("Service");
        flow.failed(&"410 Gone");
        flow.saw::<()>(&Ok(watcher::Event::Init));
        assert_eq!(up(&h, "Service"), 0);
        flow.saw::<()>(&Ok(watcher::Event::InitDone));
        assert_eq!(up(&h, "Service"), 1);
    }

    #[test]
    fn a_dropped_watch_is_no_longer_tracked() {
        let h = WatchHealth::default();
        let flow = h.track("Namespace");
        let copy = flow.clone();
        drop(flow);
        assert_eq!(h.lock().len(), 1, "a clone still tracks it");
        drop(copy);
        assert!(h.lock().is_empty());
        assert!(h.problems(Instant::now() + GRACE * 2, GRACE).is_empty());
    }
}
