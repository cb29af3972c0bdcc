//! Leader election on a `coordination.k8s.io` Lease, as client-go does it: only the holder
//! runs the controllers (and so writes); standbys wait.
//!
//! The holder renews every retry period. When it cannot renew (the API server is gone,
//! too slow, or refuses), it steps down on its own clock `grace` seconds before anyone
//! else may take the lease over, and abandons reconciles still running by then: a leader
//! that cannot reach the API server must not go on believing it leads. A standby takes the
//! lease once it has seen the same record unchanged for the lease's duration, measured on
//! its own clock (never by comparing timestamps across machines). A process that stops
//! gives the lease up at once, so a standby takes over without waiting for it to expire.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease as LeaseObject, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, Error as KubeError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::controller::{Shutdown, shutdown};
use super::metrics::{Metrics, NameLabels};
use crate::watch_health::Flow;

/// Where the Lease is and who this process is.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// Where the Lease lives.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This process's identity in the Lease.
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub duration: u64,
    /// Seconds before the lease could be taken over that a holder which cannot renew steps
    /// down.
    pub grace: u64,
}

impl LeaseOptions {
    /// How long others wait before taking over a lease nobody renews.
    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration.max(1))
    }

    /// How long the holder goes on leading without a successful renewal.
    fn renew_deadline(&self) -> Duration {
        Duration::from_secs(self.duration.saturating_sub(self.grace).max(1))
    }

    /// How often the holder renews and a standby looks: a few tries per renew deadline.
    fn retry(&self) -> Duration {
        (self.renew_deadline() / 4).max(Duration::from_millis(250))
    }
}

/// The election, running in the background.
pub struct Lease {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Elector>,
    stop: watch::Sender<bool>,
    grace: Duration,
    labels: NameLabels,
    metrics: Metrics,
}

impl Lease {
    /// Starts competing for the lease; `flow` tells readiness whether the API server answers.
    pub fn start(client: Client, opts: &LeaseOptions, metrics: Metrics, flow: Flow) -> Lease {
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let elector = Elector {
            api: Api::namespaced(client, &opts.namespace),
            opts: opts.clone(),
            observed: None,
            renewed: None,
            flow,
        };
        let labels = NameLabels {
            name: opts.name.clone(),
        };
        metrics.leader.get_or_create(&labels).set(0);
        Lease {
            leading,
            task: tokio::spawn(elector.run(leading_tx, stop_rx)),
            stop,
            grace: Duration::from_secs(opts.grace),
            labels,
            metrics,
        }
    }

    /// Runs `controllers` each time this process holds the lease, telling them to stop when
    /// it is lost (and dropping them if they have not stopped within the grace period, when
    /// the lease may be someone else's); returns once `stop` is true and they have stopped.
    pub async fn lead<F, Fut>(&mut self, stop: &watch::Receiver<bool>, mut controllers: F)
    where
        F: FnMut(Shutdown) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut stopping = stop.clone();
        loop {
            if *stopping.borrow() {
                return;
            }
            if *self.leading.borrow_and_update() {
                info!("acquired the lease; reconciling");
                self.set_leader(true);
                let (mut lost, mut stop_c) = (self.leading.clone(), stop.clone());
                let mut run = pin!(controllers(shutdown(async move {
                    tokio::select! {
                        _ = lost.wait_for(|l| !*l) => warn!("lost the lease; stopping the controllers"),
                        _ = stop_c.wait_for(|s| *s) => {}
                    }
                })));
                let mut lost = self.leading.clone();
                tokio::select! {
                    _ = &mut run => {}
                    _ = lost.wait_for(|l| !*l) => {
                        if tokio::time::timeout(self.grace, &mut run).await.is_err() {
                            warn!("reconciles still running when the lease may be taken over; abandoning them");
                        }
                    }
                }
                self.set_leader(false);
                continue;
            }
            tokio::select! {
                changed = self.leading.changed() => if changed.is_err() { return; },
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    fn set_leader(&self, leading: bool) {
        self.metrics.leader.get_or_create(&self.labels).set(i64::from(leading));
    }

    /// Stops competing and gives the lease up if this process holds it.
    pub async fn release(self) {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(elector) => elector.release().await,
            Err(e) => warn!(error = %e, "leader election task failed"),
        }
    }
}

/// The record a standby watches for change: who holds it, when they last renewed, and the
/// object's version.
type Record = (Option<String>, Option<MicroTime>, Option<String>);

/// Tries to acquire or renew the lease every retry period.
struct Elector {
    api: Api<LeaseObject>,
    opts: LeaseOptions,
    /// The last record seen, and when this process first saw it.
    observed: Option<(Record, Instant)>,
    /// When the last successful renewal was sent.
    renewed: Option<Instant>,
    flow: Flow,
}

impl Elector {
    async fn run(mut self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) -> Elector {
        loop {
            let was = *leading.borrow();
            let now_leading = self.step(was).await;
            leading.send_if_modified(|l| std::mem::replace(l, now_leading) != now_leading);
            tokio::select! {
                _ = tokio::time::sleep(self.opts.retry()) => {}
                _ = stop.wait_for(|s| *s) => return self,
            }
        }
    }

    /// One try; whether this process leads afterwards.
    async fn step(&mut self, leading: bool) -> bool {
        let deadline = self.renewed.map(|t| t + self.opts.renew_deadline());
        // A try may not outlast the deadline of the current term.
        let limit = match deadline {
            Some(d) if leading => d.saturating_duration_since(Instant::now()),
            _ => self.opts.renew_deadline(),
        };
        let sent = Instant::now();
        match tokio::time::timeout(limit, self.try_acquire_or_renew()).await {
            Ok(Ok(true)) => {
                self.flow.flowing();
                self.renewed = Some(sent);
                true
            }
            Ok(Ok(false)) => {
                self.flow.flowing();
                false
            }
            Ok(Err(e)) => self.failed(leading, deadline, &e),
            Err(_) => self.failed(leading, deadline, &"no answer from the API server in time"),
        }
    }

    /// After a failed try: leads only while the current term's deadline has not passed.
    fn failed(&mut self, leading: bool, deadline: Option<Instant>, error: &dyn std::fmt::Display) -> bool {
        self.flow.failed(error);
        let still = leading && deadline.is_some_and(|d| Instant::now() < d);
        if leading && !still {
            warn!(%error, "could not renew the lease before its deadline; stepping down");
        } else {
            debug!(%error, "lease attempt failed");
        }
        still
    }

    /// Takes the lease if it is free, expired or ours; true when this process holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, KubeError> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.opts.name).await? else {
            let lease = LeaseObject {
                metadata: ObjectMeta {
                    name: Some(self.opts.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, now)),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.clone(),
            lease.metadata.resource_version.clone(),
        );
        let since = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record, since));
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.opts.identity.as_str());
        let valid_for = spec
            .lease_duration_seconds
            .map_or(self.opts.duration(), |s| Duration::from_secs(s.max(0) as u64));
        if !ours && holder.is_some() && since.elapsed() < valid_for {
            return Ok(false);
        }
        lease.spec = Some(self.spec(Some(&spec), now));
        // The resourceVersion makes this a compare-and-swap: two standbys cannot both win.
        conflict_is_false(self.api.replace(&self.opts.name, &PostParams::default(), &lease).await)
    }

    /// The spec that names this process the holder, renewed `now`.
    fn spec(&self, previous: Option<&LeaseSpec>, now: MicroTime) -> LeaseSpec {
        let previous = previous.cloned().unwrap_or_default();
        let ours = previous.holder_identity.as_deref() == Some(self.opts.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.opts.identity.clone()),
            lease_duration_seconds: Some(self.opts.duration as i32),
            acquire_time: if ours { previous.acquire_time } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(previous.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..previous
        }
    }

    /// Gives the lease up if this process holds it, so a standby need not wait.
    async fn release(self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.opts.name).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.opts.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        match self.api.replace(&self.opts.name, &PostParams::default(), &lease).await {
            Ok(_) => info!("released the lease"),
            Err(e) => warn!(error = %e, "could not release the lease"),
        }
    }
}

/// A write that lost a race (409) means someone else holds the lease.
fn conflict_is_false<T>(result: Result<T, KubeError>) -> Result<bool, KubeError> {
    match result {
        Ok(_) => Ok(true),
        Err(KubeError::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(duration: u64, grace: u64) -> LeaseOptions {
        LeaseOptions {
            namespace: "weft-system".into(),
            name: "weft-operator".into(),
            identity: "a".into(),
            duration,
            grace,
        }
    }

    #[test]
    fn the_holder_tries_a_few_times_before_stepping_down_ahead_of_a_takeover() {
        let o = opts(15, 5);
        assert_eq!(o.renew_deadline(), Duration::from_secs(10));
        assert_eq!(o.retry(), Duration::from_millis(2500));
        assert!(
            o.renew_deadline() < o.duration(),
            "steps down before others may take over"
        );
        let tight = opts(4, 1);
        assert_eq!(tight.renew_deadline(), Duration::from_secs(3));
        assert_eq!(tight.retry(), Duration::from_millis(750));
        // A grace as long as the lease still leaves a one-second term.
        assert_eq!(opts(2, 5).renew_deadline(), Duration::from_secs(1));
    }
}
