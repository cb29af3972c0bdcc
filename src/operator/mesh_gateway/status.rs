//! A MeshGateway's status (pure), from what was observed: the revision it runs, replica
//! counts, selector, load-balancer addresses and the kstatus conditions. A gateway whose
//! mesh, tag or revision does not exist yet waits (`WaitingForRevision`): GitOps may apply
//! the MeshInstall later, so it is not stalled.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::resolve::Resolution;
use crate::api::mesh_gateway::{GatewayAddress, MeshGateway, MeshGatewayStatus};
use crate::operator::conditions::{Conditioned, Conditions, Stall};
use crate::operator::health::deployment_health;

impl Conditioned for MeshGatewayStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// The condition reason of a gateway that waits for its mesh, tag or revision.
pub const WAITING_FOR_REVISION: &str = "WaitingForRevision";

/// What the gateway's status is computed from.
#[derive(Clone, Debug)]
pub struct GatewayObservation<'a> {
    /// The gateway as last read.
    pub gateway: &'a MeshGateway,
    /// Its tag's resolution.
    pub resolution: &'a Resolution,
    /// Set when the spec cannot be acted on.
    pub stall: Option<Stall>,
    /// Its Deployment, if it exists.
    pub deployment: Option<Deployment>,
    /// The fewest pods it must have to be Ready: its autoscaler's `minReplicas`, else 0.
    pub floor: i32,
    /// Its Service, if it exists.
    pub service: Option<Service>,
    /// The label selector of its pods.
    pub selector: String,
    /// The time to stamp on conditions that flip.
    pub now: Time,
}

/// The addresses of a Service's load balancer.
pub fn addresses(svc: &Service) -> Vec<GatewayAddress> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    ingress
        .into_iter()
        .filter_map(|i| match (i.ip, i.hostname) {
            (Some(ip), _) => Some(GatewayAddress {
                type_: "IPAddress".to_string(),
                value: ip,
            }),
            (None, Some(host)) => Some(GatewayAddress {
                type_: "Hostname".to_string(),
                value: host,
            }),
            (None, None) => None,
        })
        .collect()
}

/// Computes the status. Pure, so an unchanged world gives an unchanged status (no write).
pub fn compute(o: &GatewayObservation) -> MeshGatewayStatus {
    let previous = o.gateway.status.clone().unwrap_or_default();
    let generation = o.gateway.metadata.generation;
    let d_status = o.deployment.as_ref().and_then(|d| d.status.clone()).unwrap_or_default();
    // A waiting gateway keeps reporting the revision it still runs.
    let revision = match o.resolution {
        Resolution::Resolved { revision, .. } => Some(revision.clone()),
        Resolution::Waiting(_) => previous.revision.clone(),
    };
    MeshGatewayStatus {
        observed_generation: generation,
        conditions: conditions(o).build(&previous.conditions, generation, &o.now),
        revision,
        replicas: o.deployment.as_ref().map(|_| d_status.replicas.unwrap_or(0)),
        ready_replicas: o.deployment.as_ref().map(|_| d_status.ready_replicas.unwrap_or(0)),
        selector: Some(o.selector.clone()),
        addresses: o.service.as_ref().map(addresses).unwrap_or_default(),
    }
}

/// Stalled, waiting for the revision, rolling out, or ready.
fn conditions(o: &GatewayObservation) -> Conditions {
    let (revision, revision_ready) = match (&o.stall, o.resolution) {
        (Some(stall), _) => return Conditions::stalled(stall),
        (None, Resolution::Waiting(why)) => return Conditions::progressing(WAITING_FOR_REVISION, why.clone()),
        (None, Resolution::Resolved { revision, ready, .. }) => (revision, *ready),
    };
    let health = o.deployment.as_ref().map(|d| deployment_health(d, o.floor));
    let counts = health.as_ref().map_or((0, 0), |h| (h.counts.ready, h.counts.desired));
    let progress = format!("{}/{} replicas ready on revision {revision}", counts.0, counts.1);
    if !health.as_ref().is_some_and(|h| h.ready) {
        Conditions::progressing("RollingOut", progress)
    } else if !revision_ready {
        let why = format!(
            "revision {revision} of MeshInstall {} is not ready yet",
            o.gateway.spec.mesh
        );
        Conditions::progressing(WAITING_FOR_REVISION, why)
    } else {
        Conditions::ready("Ready", progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::condition::{READY, RECONCILING, STALLED};
    use crate::operator::mesh_gateway::fixtures::gw;

    fn deployment(desired: i32, ready: i32) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ingress", "generation": 1},
            "spec": {"replicas": desired, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": desired, "updatedReplicas": desired,
                       "readyReplicas": ready, "availableReplicas": ready}
        }))
        .unwrap()
    }

    fn status_of(g: &MeshGateway, r: &Resolution, d: Option<Deployment>, svc: Option<Service>) -> MeshGatewayStatus {
        compute(&GatewayObservation {
            gateway: g,
            resolution: r,
            stall: None,
            deployment: d,
            floor: crate::render::gateway::replica_floor(&g.spec),
            service: svc,
            selector: "weft.dev/gateway=ingress".into(),
            now: Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap()),
        })
    }

    fn cond<'a>(s: &'a MeshGatewayStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn waiting_is_not_stalled_and_ready_needs_pods_and_revision() {
        let g = gw("mesh: mesh\n");
        let waiting = Resolution::Waiting("MeshInstall mesh does not exist yet".into());
        let s = status_of(&g, &waiting, None, None);
        assert_eq!(cond(&s, READY), ("False", WAITING_FOR_REVISION));
        assert_eq!(cond(&s, STALLED).0, "False");
        assert_eq!(cond(&s, RECONCILING).0, "True");
        assert_eq!(s.observed_generation, Some(3));

        let resolved = |ready| Resolution::Resolved {
            revision: "mesh-a".into(),
            version: "1.0.0".into(),
            namespace: "weft-mesh".into(),
            ready,
            external: None,
            cluster: "Kubernetes".into(),
        };
        let s = status_of(&g, &resolved(true), Some(deployment(2, 1)), None);
        assert_eq!(cond(&s, READY), ("False", "RollingOut"));
        assert_eq!((s.replicas, s.ready_replicas), (Some(2), Some(1)));
        let s = status_of(&g, &resolved(false), Some(deployment(2, 2)), None);
        assert_eq!(cond(&s, READY), ("False", WAITING_FOR_REVISION));
        let s = status_of(&g, &resolved(true), Some(deployment(2, 2)), None);
        assert_eq!(cond(&s, READY), ("True", "Ready"));
        assert_eq!(s.revision.as_deref(), Some("mesh-a"));
        assert_eq!(s.selector.as_deref(), Some("weft.dev/gateway=ingress"));

        // Unchanged input, unchanged status (no write).
        let mut again = g.clone();
        again.status = Some(s.clone());
        assert_eq!(status_of(&again, &resolved(true), Some(deployment(2, 2)), None), s);
        // The revision it runs stays reported while it waits.
        let s = status_of(&again, &waiting, Some(deployment(2, 2)), None);
        assert_eq!(s.revision.as_deref(), Some("mesh-a"));
    }

    /// A 2–5 autoscaled gateway is not Ready with one pod, though the Deployment (not yet
    /// raised by the autoscaler) asks for one.
    #[test]
    fn an_autoscaled_gateway_is_ready_only_at_min_replicas() {
        let g = gw("mesh: mesh\nautoscaling: {minReplicas: 2, maxReplicas: 5}\n");
        let resolved = Resolution::Resolved {
            revision: "mesh-a".into(),
            version: "1.0.0".into(),
            namespace: "weft-mesh".into(),
            ready: true,
            external: None,
            cluster: "Kubernetes".into(),
        };
        let s = status_of(&g, &resolved, Some(deployment(1, 1)), None);
        assert_eq!(cond(&s, READY), ("False", "RollingOut"));
        let ready = s.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert!(ready.message.starts_with("1/2 replicas ready"), "{}", ready.message);
        let s = status_of(&g, &resolved, Some(deployment(2, 2)), None);
        assert_eq!(cond(&s, READY), ("True", "Ready"));
    }

    #[test]
    fn addresses_come_from_the_load_balancer() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}]}}
        }))
        .unwrap();
        assert_eq!(
            addresses(&svc),
            [
                GatewayAddress {
                    type_: "IPAddress".into(),
                    value: "203.0.113.7".into()
                },
                GatewayAddress {
                    type_: "Hostname".into(),
                    value: "lb.example.com".into()
                }
            ]
        );
    }
}
