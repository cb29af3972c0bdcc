//! Status: a pure function from what was observed to the MeshInstall's status, with
//! kstatus conditions (Ready, Reconciling, Stalled) that carry observedGeneration and keep
//! their lastTransitionTime unless their status flips.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::revisions::Plan;
use crate::api::common::condition::{READY, RECONCILING, STALLED};
use crate::api::mesh_install::{MeshInstall, MeshInstallStatus, ReplicaCounts, RevisionStatus, RevisionSummary};

/// One component's replica counts and whether it has fully rolled out.
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

/// What was observed of one installed revision.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionObservation {
    /// The revision's name.
    pub name: String,
    /// The version its objects are labelled with.
    pub version: String,
    /// The control-plane Deployment, if it exists.
    pub control_plane: Option<Health>,
    /// The node-proxy DaemonSet, if it exists.
    pub proxy: Option<Health>,
    /// Whether node proxies are wanted (so a missing DaemonSet means not ready).
    pub proxy_wanted: bool,
}

impl RevisionObservation {
    /// Control plane rolled out, and node proxies too when wanted.
    pub fn ready(&self) -> bool {
        self.control_plane.as_ref().is_some_and(|h| h.ready)
            && (!self.proxy_wanted || self.proxy.as_ref().is_some_and(|h| h.ready))
    }

    /// Replica progress, for condition messages.
    pub fn progress(&self) -> String {
        let part = |what: &str, h: &Option<Health>| match h {
            Some(h) => format!("{what} {}/{} ready", h.counts.ready, h.counts.desired),
            None => format!("{what} not created yet"),
        };
        let mut s = part("control plane", &self.control_plane);
        if self.proxy_wanted {
            s.push_str("; ");
            s.push_str(&part("node proxies", &self.proxy));
        }
        s
    }
}

/// An error that will not fix itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The condition reason (`UnsupportedVersion`, `InvalidSpec`, …).
    pub reason: &'static str,
    /// What a person should know, and do.
    pub message: String,
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// The MeshInstall as last read.
    pub mesh: &'a MeshInstall,
    /// The revision the spec asks for.
    pub target: &'a str,
    /// Installed revisions.
    pub revisions: Vec<RevisionObservation>,
    /// The revision plan: active revision, tags, users, remembered times.
    pub plan: &'a Plan,
    /// Set when the spec cannot be acted on.
    pub stall: Option<Stall>,
    /// The time to stamp on conditions that flip.
    pub now: Time,
}

/// A condition, keeping its last transition time while its status stays the same.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// Computes the status. Pure: the same input gives the same output, so an unchanged world
/// produces an unchanged status and no write.
pub fn compute(input: &StatusInput) -> MeshInstallStatus {
    let mesh = input.mesh;
    let previous = mesh.status.clone().unwrap_or_default();
    let generation = mesh.metadata.generation;
    let target = input.revisions.iter().find(|r| r.name == input.target);
    let plan = input.plan;
    let promoted = plan.active == input.target;
    let target_ready = target.is_some_and(|r| r.ready()) && promoted;
    let waiting_for_promotion = !promoted && target.is_some_and(|r| r.ready());

    let mut revisions: Vec<RevisionStatus> = input
        .revisions
        .iter()
        .map(|r| {
            let users = plan.users.get(&r.name).cloned().unwrap_or_default();
            RevisionStatus {
                name: r.name.clone(),
                version: r.version.clone(),
                ready: r.ready(),
                in_use: users.any(),
                control_plane: r.control_plane.as_ref().map(|h| h.counts.clone()),
                proxy: r.proxy.as_ref().map(|h| h.counts.clone()),
                namespaces: users.namespaces.into_iter().collect(),
                gateways: users.gateways.into_iter().collect(),
                tags: users.tags.into_iter().collect(),
                ready_since: plan.ready_since.get(&r.name).cloned(),
                unused_since: plan.unused_since.get(&r.name).cloned(),
            }
        })
        .collect();
    revisions.sort_by(|a, b| a.name.cmp(&b.name));
    let summary = RevisionSummary {
        revisions: revisions.len() as i32,
        ready: revisions.iter().filter(|r| r.ready).count() as i32,
        in_use: revisions.iter().filter(|r| r.in_use).count() as i32,
    };

    let prev_conds = &previous.conditions;
    let was_ready = prev_conds.iter().any(|c| c.type_ == READY && c.status == "True");
    let deleting = mesh.metadata.deletion_timestamp.is_some();
    let (ready, reconciling, stalled, state) = match (&input.stall, deleting) {
        (_, true) => (
            (false, "Terminating", "the MeshInstall is being deleted".to_string()),
            (true, "Terminating", "removing what the MeshInstall owned".to_string()),
            (false, "Terminating", String::new()),
            "Terminating",
        ),
        (Some(stall), false) => (
            (false, stall.reason, stall.message.clone()),
            (false, stall.reason, "waiting for the spec to be fixed".to_string()),
            (true, stall.reason, stall.message.clone()),
            "Stalled",
        ),
        (None, false) if target_ready => (
            (
                true,
                "Ready",
                format!(
                    "revision {} is ready: {}",
                    input.target,
                    target.map(|t| t.progress()).unwrap_or_default()
                ),
            ),
            (false, "Reconciled", "everything owned is up to date".to_string()),
            (false, "Reconciled", String::new()),
            "Healthy",
        ),
        (None, false) if waiting_for_promotion => {
            let message = format!(
                "revision {} is Ready and becomes active once it has stayed Ready for minReadySeconds; revision {} is active",
                input.target, plan.active
            );
            (
                (false, "Promoting", message.clone()),
                (true, "Promoting", message),
                (false, "Reconciled", String::new()),
                "Updating",
            )
        }
        (None, false) => {
            let progress = target.map_or_else(|| "objects not created yet".to_string(), |t| t.progress());
            let (reason, state) = if !was_ready {
                let updating = previous.state.as_deref() == Some("Updating");
                if updating {
                    ("RollingOut", "Updating")
                } else {
                    ("Installing", "Installing")
                }
            } else if previous.observed_generation == generation && promoted {
                ("Degraded", "Degraded")
            } else {
                ("RollingOut", "Updating")
            };
            (
                (false, reason, format!("revision {}: {progress}", input.target)),
                (true, reason, format!("revision {}: {progress}", input.target)),
                (false, "Reconciled", String::new()),
                state,
            )
        }
    };
    let conditions = vec![
        condition(prev_conds, READY, ready.0, ready.1, ready.2, generation, &input.now),
        condition(
            prev_conds,
            RECONCILING,
            reconciling.0,
            reconciling.1,
            reconciling.2,
            generation,
            &input.now,
        ),
        condition(
            prev_conds, STALLED, stalled.0, stalled.1, stalled.2, generation, &input.now,
        ),
    ];

    MeshInstallStatus {
        observed_generation: generation,
        conditions,
        state: Some(state.to_string()),
        active_revision: Some(plan.active.clone()),
        target_revision: Some(input.target.to_string()),
        revisions,
        summary: Some(summary),
        tags: plan.tags.clone(),
        rollout: Some(plan.rollout.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mesh_install::{MeshInstallSpec, TagStatus};
    use k8s_openapi::jiff::Timestamp;
    use kube::core::ObjectMeta;

    fn mesh(generation: i64, status: Option<MeshInstallStatus>) -> MeshInstall {
        MeshInstall {
            metadata: ObjectMeta {
                name: Some("m".into()),
                generation: Some(generation),
                ..Default::default()
            },
            spec: serde_saphyr::from_str::<MeshInstallSpec>(
                "version: 1.0.0\nrevisionTags: [{name: canary, target: Latest}, {name: pinned, target: old}]",
            )
            .unwrap(),
            status,
        }
    }

    fn rev(ready: bool) -> RevisionObservation {
        RevisionObservation {
            name: "m".into(),
            version: "1.0.0".into(),
            control_plane: Some(Health {
                counts: ReplicaCounts {
                    desired: 1,
                    ready: ready as i32,
                },
                ready,
            }),
            proxy: Some(Health {
                counts: ReplicaCounts { desired: 3, ready: 3 },
                ready: true,
            }),
            proxy_wanted: true,
        }
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn status(
        m: &MeshInstall,
        revisions: Vec<RevisionObservation>,
        stall: Option<Stall>,
        now: Time,
    ) -> MeshInstallStatus {
        let plan = crate::operator::revisions::plan(&crate::operator::revisions::PlanInput {
            mesh: m,
            target: "m",
            installed: &revisions,
            usage: &crate::operator::revisions::Usage {
                synced: true,
                ..Default::default()
            },
            owns_default: true,
            taken: &Default::default(),
            now: now.0,
        });
        compute(&StatusInput {
            mesh: m,
            target: "m",
            revisions,
            plan: &plan,
            stall,
            now,
        })
    }

    fn cond<'a>(s: &'a MeshInstallStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn installing_then_ready_then_unchanged() {
        let m = mesh(1, None);
        let s1 = status(&m, vec![rev(false)], None, at(10));
        assert_eq!(s1.state.as_deref(), Some("Installing"));
        assert_eq!(cond(&s1, READY).status, "False");
        assert_eq!(cond(&s1, RECONCILING).status, "True");
        assert!(cond(&s1, READY).message.contains("control plane 0/1 ready"));

        let m = mesh(1, Some(s1));
        let s2 = status(&m, vec![rev(true)], None, at(20));
        assert_eq!(s2.state.as_deref(), Some("Healthy"));
        assert_eq!(cond(&s2, READY).status, "True");
        assert_eq!(cond(&s2, READY).last_transition_time, at(20));
        assert_eq!(
            cond(&s2, STALLED).last_transition_time,
            at(10),
            "unflipped conditions keep their time"
        );
        assert_eq!(
            s2.tags,
            vec![
                TagStatus {
                    name: "canary".into(),
                    revision: "m".into()
                },
                TagStatus {
                    name: "default".into(),
                    revision: "m".into()
                },
            ]
        );

        // Nothing changed: the same status, so the operator writes nothing.
        let m = mesh(1, Some(s2.clone()));
        let s3 = status(&m, vec![rev(true)], None, at(30));
        assert_eq!(s3, s2);
    }

    #[test]
    fn stalled_keeps_revision_health_and_is_never_reconciling() {
        let m = mesh(2, None);
        let stall = Stall {
            reason: "UnsupportedVersion",
            message: "version 9.9.9 is not supported".into(),
        };
        let s = status(&m, vec![rev(true)], Some(stall), at(1));
        assert_eq!(cond(&s, STALLED).status, "True");
        assert_eq!(cond(&s, STALLED).reason, "UnsupportedVersion");
        assert_eq!(cond(&s, RECONCILING).status, "False");
        assert_eq!(cond(&s, READY).status, "False");
        assert!(s.revisions[0].ready, "the running revision is still reported ready");
        assert!(s.conditions.iter().all(|c| c.observed_generation == Some(2)));
    }

    #[test]
    fn a_ready_mesh_that_loses_pods_without_a_spec_change_is_degraded() {
        let m = mesh(1, None);
        let ready = status(&m, vec![rev(true)], None, at(1));
        let m = mesh(1, Some(ready.clone()));
        let s = status(&m, vec![rev(false)], None, at(2));
        assert_eq!(s.state.as_deref(), Some("Degraded"));
        let m = mesh(2, Some(ready));
        let s = status(&m, vec![rev(false)], None, at(2));
        assert_eq!(s.state.as_deref(), Some("Updating"));
    }
}
