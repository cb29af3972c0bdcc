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

/// The health of a Deployment that must run at least `floor` pods: an autoscaled one's
/// `minReplicas`, which its `spec.replicas` may not have reached yet (the Deployment is
/// created before its autoscaler acts), 0 when it is not autoscaled.
pub fn deployment_health(d: &Deployment, floor: i32) -> Health {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(floor);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(spec_replicas: i32, available: i32) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"replicas": spec_replicas, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": spec_replicas, "updatedReplicas": spec_replicas,
                       "readyReplicas": available, "availableReplicas": available}
        }))
        .expect("a Deployment")
    }

    #[test]
    fn an_autoscaled_deployment_is_ready_only_at_its_floor() {
        // The HPA has not raised spec.replicas yet: one pod of a 2–5 autoscaler is not enough.
        let h = deployment_health(&deployment(1, 1), 2);
        assert!(!h.ready);
        assert_eq!(h.counts, ReplicaCounts { desired: 2, ready: 1 });
        assert!(deployment_health(&deployment(2, 2), 2).ready);
        assert!(
            !deployment_health(&deployment(3, 2), 2).ready,
            "every replica it has must be available"
        );
        assert!(
            deployment_health(&deployment(1, 1), 0).ready,
            "no floor without an autoscaler"
        );
    }
}
