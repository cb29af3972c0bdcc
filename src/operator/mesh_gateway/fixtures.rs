//! Test fixtures shared by the MeshGateway controller's unit tests.

use crate::api::mesh_gateway::MeshGateway;
use crate::api::mesh_install::{MeshInstall, MeshInstallStatus, RevisionStatus, TagStatus};

/// Gateway `shop/ingress` (generation 3) with this spec (YAML).
pub fn gw(yaml: &str) -> MeshGateway {
    let mut g = MeshGateway::new("ingress", serde_saphyr::from_str(yaml).unwrap());
    g.metadata.namespace = Some("shop".into());
    g.metadata.generation = Some(3);
    g
}

/// MeshInstall `mesh` (namespace `weft-mesh`) whose status has these tags (name, revision)
/// and revisions (name, ready), all running `version`.
pub fn mesh(version: &str, tags: &[(&str, &str)], revisions: &[(&str, bool)]) -> MeshInstall {
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
                version: version.into(),
                ready: *ready,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    mi
}
