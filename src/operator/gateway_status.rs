//! Pure decisions for a MeshGateway: which revision its tag resolves to, and its status
//! from what was observed. A gateway whose mesh, tag or revision does not exist yet waits
//! (`WaitingForRevision`): GitOps may apply the MeshInstall later, so it is not stalled.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::status::{Stall, condition};
use crate::api::common::condition::{READY, RECONCILING, STALLED};
use crate::api::mesh_gateway::{GatewayAddress, MeshGateway, MeshGatewayStatus};
use crate::api::mesh_install::MeshInstall;

/// The condition reason of a gateway that waits for its mesh, tag or revision.
pub const WAITING_FOR_REVISION: &str = "WaitingForRevision";

/// Where a gateway's tag points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The tag (or revision name) names an installed revision.
    Resolved {
        /// The revision.
        revision: String,
        /// The mesh version it runs.
        version: String,
        /// The namespace of its control plane.
        namespace: String,
        /// Whether its control plane is ready.
        ready: bool,
    },
    /// Nothing to follow yet; the message says what is missing.
    Waiting(String),
}

/// Resolves a gateway's `revision` (a tag first, then a revision name) against the status of
/// its MeshInstall. The status holds only tags that moved after validation, so a gateway
/// moves only when its tag does.
pub fn resolve(gw: &MeshGateway, mesh: Option<&MeshInstall>) -> Resolution {
    let (mesh_name, wanted) = (&gw.spec.mesh, &gw.spec.revision);
    let Some(mi) = mesh else {
        return Resolution::Waiting(format!("MeshInstall {mesh_name} does not exist yet"));
    };
    if mi.metadata.deletion_timestamp.is_some() {
        return Resolution::Waiting(format!("MeshInstall {mesh_name} is being deleted"));
    }
    let status = mi.status.clone().unwrap_or_default();
    let revision = status
        .tags
        .iter()
        .find(|t| &t.name == wanted)
        .map(|t| t.revision.clone())
        .or_else(|| {
            status
                .revisions
                .iter()
                .find(|r| &r.name == wanted)
                .map(|r| r.name.clone())
        });
    let Some(revision) = revision else {
        let tags: Vec<&str> = status.tags.iter().map(|t| t.name.as_str()).collect();
        let revisions: Vec<&str> = status.revisions.iter().map(|r| r.name.as_str()).collect();
        return Resolution::Waiting(format!(
            "MeshInstall {mesh_name} has no tag or revision {wanted} yet (tags: [{}], revisions: [{}])",
            tags.join(", "),
            revisions.join(", ")
        ));
    };
    match status.revisions.iter().find(|r| r.name == revision) {
        Some(r) => Resolution::Resolved {
            revision,
            version: r.version.clone(),
            namespace: mi.spec.namespace.clone(),
            ready: r.ready,
        },
        None => Resolution::Waiting(format!(
            "{wanted} resolves to revision {revision} of MeshInstall {mesh_name}, which is not installed yet"
        )),
    }
}

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
    let health = o.deployment.as_ref().map(super::status::deployment_health);
    let replicas = o.deployment.as_ref().map(|_| d_status.replicas.unwrap_or(0));
    let ready_replicas = o.deployment.as_ref().map(|_| d_status.ready_replicas.unwrap_or(0));
    // A waiting gateway keeps reporting the revision it still runs.
    let revision = match o.resolution {
        Resolution::Resolved { revision, .. } => Some(revision.clone()),
        Resolution::Waiting(_) => previous.revision.clone(),
    };

    type Cond = (bool, &'static str, String);
    let (ready, reconciling, stalled): (Cond, Cond, Cond) = match (&o.stall, o.resolution) {
        (Some(stall), _) => (
            (false, stall.reason, stall.message.clone()),
            (false, stall.reason, "waiting for the spec to be fixed".to_string()),
            (true, stall.reason, stall.message.clone()),
        ),
        (None, Resolution::Waiting(why)) => (
            (false, WAITING_FOR_REVISION, why.clone()),
            (true, WAITING_FOR_REVISION, why.clone()),
            (false, WAITING_FOR_REVISION, String::new()),
        ),
        (None, Resolution::Resolved { revision, ready, .. }) => {
            let counts = health.as_ref().map_or((0, 0), |h| (h.counts.ready, h.counts.desired));
            let progress = format!("{}/{} replicas ready on revision {revision}", counts.0, counts.1);
            if !health.as_ref().is_some_and(|h| h.ready) {
                (
                    (false, "RollingOut", progress.clone()),
                    (true, "RollingOut", progress),
                    (false, "RollingOut", String::new()),
                )
            } else if !ready {
                let why = format!(
                    "revision {revision} of MeshInstall {} is not ready yet",
                    o.gateway.spec.mesh
                );
                (
                    (false, WAITING_FOR_REVISION, why.clone()),
                    (true, WAITING_FOR_REVISION, why),
                    (false, WAITING_FOR_REVISION, String::new()),
                )
            } else {
                (
                    (true, "Ready", progress),
                    (false, "Ready", String::new()),
                    (false, "Ready", String::new()),
                )
            }
        }
    };
    let prev = &previous.conditions;
    let conditions = vec![
        condition(prev, READY, ready.0, ready.1, ready.2, generation, &o.now),
        condition(
            prev,
            RECONCILING,
            reconciling.0,
            reconciling.1,
            reconciling.2,
            generation,
            &o.now,
        ),
        condition(prev, STALLED, stalled.0, stalled.1, stalled.2, generation, &o.now),
    ];
    MeshGatewayStatus {
        observed_generation: generation,
        conditions,
        revision,
        replicas,
        ready_replicas,
        selector: Some(o.selector.clone()),
        addresses: o.service.as_ref().map(addresses).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mesh_install::{MeshInstallStatus, RevisionStatus, TagStatus};

    fn gw(yaml: &str) -> MeshGateway {
        let mut g = MeshGateway::new("ingress", serde_saphyr::from_str(yaml).unwrap());
        g.metadata.namespace = Some("shop".into());
        g.metadata.generation = Some(3);
        g
    }

    fn mesh(tags: &[(&str, &str)], revisions: &[(&str, bool)]) -> MeshInstall {
        let mut mi = MeshInstall::new(
            "mesh",
            serde_saphyr::from_str("version: 1.0.0\nnamespace: weft-mesh\n").unwrap(),
        );
        mi.status = Some(MeshInstallStatus {
            tags: tags
                .iter()
                .map(|(n, r)| TagStatus {
                    name: n.to_string(),
                    revision: r.to_string(),
                })
                .collect(),
            revisions: revisions
                .iter()
                .map(|(n, ready)| RevisionStatus {
                    name: n.to_string(),
                    version: "1.0.0".into(),
                    ready: *ready,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        mi
    }

    #[test]
    fn resolution_waits_for_mesh_tag_and_revision() {
        let g = gw("mesh: mesh\nrevision: prod\n");
        assert_eq!(
            resolve(&g, None),
            Resolution::Waiting("MeshInstall mesh does not exist yet".into())
        );
        let Resolution::Waiting(why) = resolve(&g, Some(&mesh(&[("canary", "mesh-a")], &[("mesh-a", true)]))) else {
            panic!("no prod tag yet");
        };
        assert_eq!(
            why,
            "MeshInstall mesh has no tag or revision prod yet (tags: [canary], revisions: [mesh-a])"
        );
        let Resolution::Waiting(why) = resolve(&g, Some(&mesh(&[("prod", "mesh-b")], &[]))) else {
            panic!("revision not installed");
        };
        assert!(why.contains("mesh-b") && why.contains("not installed yet"), "{why}");
        assert_eq!(
            resolve(
                &g,
                Some(&mesh(
                    &[("prod", "mesh-a"), ("canary", "mesh-b")],
                    &[("mesh-a", true), ("mesh-b", false)]
                ))
            ),
            Resolution::Resolved {
                revision: "mesh-a".into(),
                version: "1.0.0".into(),
                namespace: "weft-mesh".into(),
                ready: true
            }
        );
        // A revision name works too.
        let pinned = gw("mesh: mesh\nrevision: mesh-b\n");
        assert!(matches!(
            resolve(&pinned, Some(&mesh(&[], &[("mesh-b", false)]))),
            Resolution::Resolved { ready: false, .. }
        ));
    }

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
