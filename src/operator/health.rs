//! Workload health: whether a Deployment or DaemonSet has fully rolled out, and its replica
//! counts, read from its status as the workload controllers report it.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};

use crate::api::mesh_install::ReplicaCounts;

/// One workload's replica counts and whether it has fully rolled out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Desired and ready counts.
    pub counts: ReplicaCounts,
    /// Rolled out: current generation observed, every replica updated and available.
    pub ready: bool,
}

/// The health of a Deployment.
pub fn deployment_health(d: &Deployment) -> Health {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let s = d.status.clone().unwrap_or_default();
    let observed = s.observed_generation >= d.metadata.generation;
    let updated = s.updated_replicas.unwrap_or(0);
    let available = s.available_replicas.unwrap_or(0);
    let ready = s.ready_replicas.unwrap_or(0);
    let total = s.replicas.unwrap_or(0);
    Health {
        counts: ReplicaCounts { desired, ready },
        ready: observed && updated >= desired && available >= desired && ready >= desired && total == updated,
    }
}

/// The health of a DaemonSet.
pub fn daemon_set_health(ds: &DaemonSet) -> Health {
    let s = ds.status.clone().unwrap_or_default();
    let observed = s.observed_generation >= ds.metadata.generation;
    let desired = s.desired_number_scheduled;
    Health {
        counts: ReplicaCounts {
            desired,
            ready: s.number_ready,
        },
        ready: observed
            && s.updated_number_scheduled.unwrap_or(0) >= desired
            && s.number_available.unwrap_or(0) >= desired
            && s.number_ready >= desired,
    }
}
