//! The MeshInstall's status (pure): revisions with their health and users, the summary
//! for printer columns, tags, and the kstatus conditions with the one-word state. The same
//! input gives the same output, so an unchanged world produces no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::observe::RevisionObservation;
use super::revisions::Plan;
use crate::api::common::StallReason;
use crate::api::common::condition::{READY, STALLED};
use crate::api::mesh_install::{MeshInstall, MeshInstallStatus, MeshState, RevisionStatus, RevisionSummary};
use crate::api::security::SecurityStatus;
use crate::operator::conditions::{Conditioned, Conditions, Stall};

impl Conditioned for MeshInstallStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// Whether a status says the rollout missed its deadline.
pub fn is_revision_failed(s: &MeshInstallStatus) -> bool {
    s.condition(STALLED)
        .is_some_and(|c| c.status == "True" && c.reason == StallReason::RevisionFailed.as_str())
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct StatusInput<'a> {
    /// The MeshInstall as last read.
    pub mesh: &'a MeshInstall,
    /// The revision the spec asks for.
    pub target: &'a str,
    /// Installed revisions (those being deleted now left out).
    pub revisions: Vec<RevisionObservation>,
    /// The revision plan: active revision, tags, users, remembered times.
    pub plan: &'a Plan,
    /// Set when the spec cannot be acted on.
    pub stall: Option<Stall>,
    /// The time to stamp on conditions that flip.
    pub now: Time,
    /// The mesh CA (`None`: unknown now, the last one shown stays).
    pub security: Option<SecurityStatus>,
}

/// Computes the status.
pub fn compute(input: &StatusInput) -> MeshInstallStatus {
    let mesh = input.mesh;
    let previous = mesh.status.clone().unwrap_or_default();
    let generation = mesh.metadata.generation;
    let revisions = revisions(input);
    let summary = RevisionSummary {
        revisions: revisions.len() as i32,
        ready: revisions.iter().filter(|r| r.ready).count() as i32,
        in_use: revisions.iter().filter(|r| r.in_use).count() as i32,
    };
    let (conditions, state) = conditions(input, &previous);
    MeshInstallStatus {
        observed_generation: generation,
        conditions: conditions.build(&previous.conditions, generation, &input.now),
        state: Some(state.as_str().to_string()),
        active_revision: Some(input.plan.active.clone()),
        target_revision: Some(input.target.to_string()),
        revisions,
        summary: Some(summary),
        tags: input.plan.tags.clone(),
        rollout: Some(input.plan.rollout.clone()),
        security: input.security.clone().or(previous.security),
    }
}

/// Each installed revision as status reports it, sorted by name.
fn revisions(input: &StatusInput) -> Vec<RevisionStatus> {
    let plan = input.plan;
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
    revisions
}

/// The conditions and the state: deleting, stalled, ready, waiting for promotion, or
/// rolling out (installing, updating or degraded).
fn conditions(input: &StatusInput, previous: &MeshInstallStatus) -> (Conditions, MeshState) {
    let target = input.revisions.iter().find(|r| r.name == input.target);
    let promoted = input.plan.active == input.target;
    let target_ready = target.is_some_and(|r| r.ready());
    if input.mesh.metadata.deletion_timestamp.is_some() {
        let deleting = Conditions::progressing("Terminating", "the MeshInstall is being deleted".to_string())
            .with_reconciling("Terminating", "removing what the MeshInstall owned".to_string());
        return (deleting, MeshState::Terminating);
    }
    if let Some(stall) = &input.stall {
        return (Conditions::stalled(stall), MeshState::Stalled);
    }
    if target_ready && promoted {
        let progress = target.map(|t| t.progress()).unwrap_or_default();
        let ready = Conditions::ready("Ready", format!("revision {} is ready: {progress}", input.target))
            .with_reconciling("Reconciled", "everything owned is up to date".to_string())
            .with_stalled_reason("Reconciled");
        return (ready, MeshState::Healthy);
    }
    if target_ready {
        let message = format!(
            "revision {} is Ready and becomes active once it has stayed Ready for minReadySeconds; revision {} is active",
            input.target, input.plan.active
        );
        let promoting = Conditions::progressing("Promoting", message).with_stalled_reason("Reconciled");
        return (promoting, MeshState::Updating);
    }
    let progress = target.map_or_else(|| "objects not created yet".to_string(), |t| t.progress());
    let (reason, state) = rollout_reason(previous, input.mesh.metadata.generation, promoted);
    let message = format!("revision {}: {progress}", input.target);
    (
        Conditions::progressing(reason, message).with_stalled_reason("Reconciled"),
        state,
    )
}

/// Not ready yet: a first install, an update, or a ready mesh that lost pods without a
/// spec change (degraded).
fn rollout_reason(previous: &MeshInstallStatus, generation: Option<i64>, promoted: bool) -> (&'static str, MeshState) {
    let was_ready = previous.is(READY);
    if !was_ready {
        if MeshState::of(previous) == Some(MeshState::Updating) {
            ("RollingOut", MeshState::Updating)
        } else {
            ("Installing", MeshState::Installing)
        }
    } else if previous.observed_generation == generation && promoted {
        ("Degraded", MeshState::Degraded)
    } else {
        ("RollingOut", MeshState::Updating)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::condition::RECONCILING;
    use crate::api::mesh_install::TagStatus;
    use crate::operator::mesh_install::fixtures::{self, mesh, with_proxies};
    use k8s_openapi::jiff::Timestamp;

    const SPEC: &str = "version: 1.0.0\nrevisionTags: [{name: canary, target: Latest}, {name: pinned, target: old}]";

    fn rev(ready: bool) -> RevisionObservation {
        with_proxies(fixtures::rev("m", ready))
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
        let plan = super::super::revisions::plan(&super::super::revisions::PlanInput {
            mesh: m,
            target: "m",
            installed: &revisions,
            usage: &super::super::observe::Usage {
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
            security: None,
        })
    }

    fn cond<'a>(s: &'a MeshInstallStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn installing_then_ready_then_unchanged() {
        let m = mesh(SPEC, 1, None);
        let s1 = status(&m, vec![rev(false)], None, at(10));
        assert_eq!(s1.state.as_deref(), Some("Installing"));
        assert_eq!(cond(&s1, READY).status, "False");
        assert_eq!(cond(&s1, RECONCILING).status, "True");
        assert!(cond(&s1, READY).message.contains("control plane 0/1 ready"));

        let m = mesh(SPEC, 1, Some(s1));
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
        let m = mesh(SPEC, 1, Some(s2.clone()));
        let s3 = status(&m, vec![rev(true)], None, at(30));
        assert_eq!(s3, s2);
    }

    #[test]
    fn stalled_keeps_revision_health_and_is_never_reconciling() {
        let m = mesh(SPEC, 2, None);
        let stall = Stall {
            reason: StallReason::UnsupportedVersion,
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
        let m = mesh(SPEC, 1, None);
        let ready = status(&m, vec![rev(true)], None, at(1));
        let m = mesh(SPEC, 1, Some(ready.clone()));
        let s = status(&m, vec![rev(false)], None, at(2));
        assert_eq!(s.state.as_deref(), Some("Degraded"));
        let m = mesh(SPEC, 2, Some(ready));
        let s = status(&m, vec![rev(false)], None, at(2));
        assert_eq!(s.state.as_deref(), Some("Updating"));
    }
}
