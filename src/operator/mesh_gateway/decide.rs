//! Decide (pure): one function turns a MeshGateway, what was observed and the time into
//! what the reconcile does: the objects to apply (none while it waits for its revision or
//! is stalled: what runs is left alone), the status, and the Events the change deserves.
//! Resolve → validate → build → status.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::resolve::{Resolution, resolve};
use super::status::{GatewayObservation, compute};
use crate::api::common::StallReason;
use crate::api::mesh_gateway::{MeshGateway, MeshGatewayStatus};
use crate::api::mesh_install::MeshInstall;
use crate::operator::conditions::Stall;
use crate::operator::events::Note;
use crate::render::gateway::replica_floor;
use crate::render::gateway::selector_string;
use crate::render::{GatewayInput, Manifest, render_gateway};
use crate::versions::VersionTable;

/// What the gateway's decision is made from, besides its own spec and status.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Its MeshInstall, if it exists.
    pub mesh: Option<MeshInstall>,
    /// Its Deployment, if it exists.
    pub deployment: Option<Deployment>,
    /// Its Service, if it exists.
    pub service: Option<Service>,
    /// Set when the API server refused one of its objects just now.
    pub rejected: Option<Stall>,
}

/// What the reconcile of one MeshGateway does.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The gateway's objects; `None` while it waits or is stalled.
    pub install: Option<Vec<Manifest>>,
    /// The status to write.
    pub status: MeshGatewayStatus,
    /// Events to record once the status is written.
    pub notes: Vec<Note>,
}

/// Decides what to do about `gw`.
pub fn decide(gw: &MeshGateway, versions: &VersionTable, observed: &Observed, now: Timestamp) -> Decision {
    let resolution = resolve(gw, observed.mesh.as_ref());
    let built = match &observed.rejected {
        Some(rejected) => Some(Err(rejected.clone())),
        None => build(gw, versions, &resolution, observed.mesh.as_ref()),
    };
    let status = compute(&GatewayObservation {
        gateway: gw,
        resolution: &resolution,
        stall: built.as_ref().and_then(|b| b.as_ref().err().cloned()),
        deployment: observed.deployment.clone(),
        floor: replica_floor(&gw.spec),
        service: observed.service.clone(),
        selector: selector_string(&gw.name_any()),
        now: Time(now),
    });
    Decision {
        install: built.and_then(Result::ok),
        notes: revision_changed(gw, &status).into_iter().collect(),
        status,
    }
}

/// Validate and build: the objects the gateway consists of, or why it cannot run; `None`
/// while its revision does not resolve.
fn build(
    gw: &MeshGateway,
    versions: &VersionTable,
    resolution: &Resolution,
    mesh: Option<&MeshInstall>,
) -> Option<Result<Vec<Manifest>, Stall>> {
    let Resolution::Resolved {
        revision,
        version,
        namespace,
        external,
        cluster,
        ..
    } = resolution
    else {
        return None;
    };
    let Some(version) = versions.get(version) else {
        return Some(Err(Stall {
            reason: StallReason::UnsupportedVersion,
            message: format!(
                "revision {revision} runs version {version}, which this operator does not support (supported: {}); the running gateway is left as it is",
                versions.list()
            ),
        }));
    };
    let input = GatewayInput {
        gateway: gw,
        mesh: &gw.spec.mesh,
        revision,
        control_plane_namespace: namespace,
        external_control_plane: external.clone(),
        cluster,
        version,
        mesh_network: mesh
            .and_then(|m| m.spec.mesh_config.as_ref())
            .and_then(|c| c.network.as_deref()),
    };
    Some(render_gateway(&input).map_err(Stall::from))
}

/// An Event when the gateway follows its tag to another revision.
fn revision_changed(gw: &MeshGateway, new: &MeshGatewayStatus) -> Option<Note> {
    let old = gw.status.as_ref()?.revision.as_ref()?;
    let new = new.revision.as_ref()?;
    (old != new).then(|| {
        let message = format!(
            "{} moved: the gateway follows it from revision {old} to {new}",
            gw.spec.revision
        );
        Note::normal("RevisionChanged", "Upgrade", message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::mesh_gateway::fixtures;
    use crate::render::OwnedKind;

    fn gw(yaml: &str, status: Option<MeshGatewayStatus>) -> MeshGateway {
        MeshGateway {
            status,
            ..fixtures::gw(yaml)
        }
    }

    fn mesh(version: &str, stable: &str) -> MeshInstall {
        fixtures::mesh(version, &[("stable", stable)], &[("mesh-a", true), ("mesh-b", true)])
    }

    fn observed(mesh: Option<MeshInstall>) -> Observed {
        Observed {
            mesh,
            ..Default::default()
        }
    }

    const SPEC: &str = "mesh: mesh\nrevision: stable\nservice: {ports: [{name: http, port: 80}]}\n";

    fn now() -> Timestamp {
        Timestamp::from_second(1000).unwrap()
    }

    #[test]
    fn a_gateway_without_its_mesh_waits_and_creates_nothing() {
        let d = decide(&gw(SPEC, None), &VersionTable::builtin(), &observed(None), now());
        assert!(d.install.is_none());
        let ready = d.status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "WaitingForRevision");
        assert!(d.notes.is_empty());
    }

    #[test]
    fn a_resolved_gateway_builds_its_objects_and_follows_its_tag() {
        let versions = VersionTable::builtin();
        let d = decide(
            &gw(SPEC, None),
            &versions,
            &observed(Some(mesh("1.0.0", "mesh-a"))),
            now(),
        );
        let objects = d.install.expect("objects to apply");
        assert!(
            objects
                .iter()
                .any(|m| m.kind == OwnedKind::Deployment && m.name == "ingress")
        );
        assert_eq!(d.status.revision.as_deref(), Some("mesh-a"));
        assert!(d.notes.is_empty(), "nothing moved yet");

        let running = gw(SPEC, Some(d.status));
        let moved = decide(&running, &versions, &observed(Some(mesh("1.0.0", "mesh-b"))), now());
        assert_eq!(moved.status.revision.as_deref(), Some("mesh-b"));
        assert_eq!(moved.notes.len(), 1);
        assert_eq!(moved.notes[0].reason, "RevisionChanged");
        assert!(moved.notes[0].message.contains("from revision mesh-a to mesh-b"));
    }

    #[test]
    fn an_unsupported_version_stalls_and_touches_nothing() {
        let d = decide(
            &gw(SPEC, None),
            &VersionTable::builtin(),
            &observed(Some(mesh("9.9.9", "mesh-a"))),
            now(),
        );
        assert!(d.install.is_none());
        let stalled = d.status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "UnsupportedVersion")
        );
    }
}
