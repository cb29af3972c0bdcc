//! Which revision a MeshGateway follows (pure): its `revision` is a tag first, then a
//! revision name, resolved against its MeshInstall's status. The status holds only tags
//! that moved after validation, so a gateway moves only when its tag does. A gateway whose
//! mesh, tag or revision does not exist yet waits: GitOps may apply the MeshInstall later.

use crate::api::mesh_gateway::MeshGateway;
use crate::api::mesh_install::MeshInstall;

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
        /// Where the control plane is, when it runs in another cluster (primary-remote).
        external: Option<(String, u16)>,
        /// The mesh's name for this cluster, for the proxies' metadata.
        cluster: String,
    },
    /// Nothing to follow yet; the message says what is missing.
    Waiting(String),
}

/// What a gateway reads of its MeshInstall ([`resolve`] and the build in `decide`): its spec
/// (by generation), whether it is being deleted, its tags and its revisions' versions and
/// readiness. The rest of its status (who uses which revision, replica counts, conditions)
/// changes as gateways come and go and concerns none of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshView {
    generation: Option<i64>,
    deleting: bool,
    tags: Vec<(String, String)>,
    revisions: Vec<(String, String, bool)>,
}

impl MeshView {
    /// The view of `mi`.
    pub fn of(mi: &MeshInstall) -> MeshView {
        let status = mi.status.as_ref();
        MeshView {
            generation: mi.metadata.generation,
            deleting: mi.metadata.deletion_timestamp.is_some(),
            tags: status
                .map(|s| s.tags.iter().map(|t| (t.name.clone(), t.revision.clone())).collect())
                .unwrap_or_default(),
            revisions: status
                .map(|s| {
                    s.revisions
                        .iter()
                        .map(|r| (r.name.clone(), r.version.clone(), r.ready))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Resolves a gateway's `revision` against the status of its MeshInstall.
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
    let mesh_config = mi.spec.mesh_config.as_ref();
    match status.revisions.iter().find(|r| r.name == revision) {
        Some(r) => Resolution::Resolved {
            revision,
            version: r.version.clone(),
            namespace: mi.spec.namespace.clone(),
            ready: r.ready,
            external: mi
                .spec
                .control_plane
                .as_ref()
                .and_then(|c| c.external.as_ref())
                .map(|e| e.host_port()),
            cluster: mesh_config
                .and_then(|c| c.cluster_name.clone())
                .unwrap_or_else(|| crate::api::mesh_install::DEFAULT_CLUSTER_NAME.to_string()),
        },
        None => Resolution::Waiting(format!(
            "{wanted} resolves to revision {revision} of MeshInstall {mesh_name}, which is not installed yet"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::mesh_gateway::fixtures::{self, gw};

    fn mesh(tags: &[(&str, &str)], revisions: &[(&str, bool)]) -> MeshInstall {
        fixtures::mesh("1.0.0", tags, revisions)
    }

    #[test]
    fn the_mesh_view_changes_with_tags_and_readiness_not_with_usage() {
        let mi = mesh(&[("prod", "mesh-a")], &[("mesh-a", true)]);
        let view = MeshView::of(&mi);
        let mut used = mi.clone();
        if let Some(s) = used.status.as_mut() {
            s.revisions[0].gateways = vec!["shop/ingress".into()];
            s.revisions[0].in_use = true;
        }
        assert_eq!(MeshView::of(&used), view, "a gateway joining is no news to the others");
        let moved = mesh(&[("prod", "mesh-b")], &[("mesh-a", true), ("mesh-b", true)]);
        assert_ne!(MeshView::of(&moved), view, "a tag moved");
        let unready = mesh(&[("prod", "mesh-a")], &[("mesh-a", false)]);
        assert_ne!(MeshView::of(&unready), view, "a revision's readiness changed");
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
                ready: true,
                external: None,
                cluster: "Kubernetes".into(),
            }
        );
        // A revision name works too.
        let pinned = gw("mesh: mesh\nrevision: mesh-b\n");
        assert!(matches!(
            resolve(&pinned, Some(&mesh(&[], &[("mesh-b", false)]))),
            Resolution::Resolved { ready: false, .. }
        ));
    }
}
