//! Leader election: only the holder of the Lease runs the controllers (and so writes);
//! standbys wait. Losing the lease stops the controllers, and a process that stops gives
//! the lease up at once so a standby takes over without waiting for it to expire.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::controller::{Shutdown, shutdown};
use super::metrics::{Metrics, NameLabels};

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
    /// Seconds before expiry that the holder renews.
    pub grace: u64,
}

/// The lease, once the API server answered.
pub struct Lease {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
    labels: NameLabels,
    metrics: Metrics,
}

impl Lease {
    /// Starts competing for the lease.
    pub async fn start(client: Client, opts: &LeaseOptions, metrics: Metrics) -> Result<Lease, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, &opts.name)
            .with_namespace(&opts.namespace)
            .with_identity(&opts.identity)
            .with_duration(opts.duration)
            .with_grace(opts.grace)
            .with_field_manager(format!("weft-operator-lease-{}", opts.identity))
            .build()
            .await?;
        let (leading, task) = manager.watch().await;
        let labels = NameLabels {
            name: opts.name.clone(),
        };
        metrics.leader.get_or_create(&labels).set(0);
        Ok(Lease {
            leading,
            task,
            labels,
            metrics,
        })
    }

    /// Runs `controllers` each time this process holds the lease, telling them to stop when
    /// it is lost; returns once `stop` is true and they have stopped.
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
                controllers(shutdown(async move {
                    tokio::select! {
                        _ = lost.wait_for(|l| !*l) => warn!("lost the lease; stopping the controllers"),
                        _ = stop_c.wait_for(|s| *s) => {}
                    }
                }))
                .await;
                self.set_leader(false);
                continue;
            }
            tokio::select! {
                changed = self.leading.changed() => if changed.is_err() { error!("leader election stopped"); return; },
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    fn set_leader(&self, leading: bool) {
        self.metrics.leader.get_or_create(&self.labels).set(i64::from(leading));
    }

    /// Gives the lease up.
    pub async fn release(self) {
        drop(self.leading);
        match self.task.await {
            Ok(Ok(manager)) => {
                if let Err(e) = manager.release().await {
                    warn!(error = %e, "could not release the lease");
                }
            }
            Ok(Err(e)) => warn!(error = %e, "leader election ended with an error"),
            Err(e) => warn!(error = %e, "leader election task failed"),
        }
    }
}
