//! The trust bundle: a ConfigMap `weft-root-ca` (key `root-cert.pem`, every root the mesh
//! trusts) in each namespace of the mesh, which workloads and agents read to verify peers
//! and the control plane.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::{Manifest, OwnedKind, RenderError};
use crate::api::labels;
use crate::api::mesh_install::MeshInstall;
use crate::identity::ca::ROOT_CERT;
use crate::identity::mesh_ca::BUNDLE_CONFIG_MAP;

/// The `app.kubernetes.io/component` of trust-bundle ConfigMaps.
pub const COMPONENT: &str = "trust-bundle";

/// One `weft-root-ca` ConfigMap per namespace in `namespaces`, holding `roots_pem`.
pub fn trust_bundles(
    mesh: &MeshInstall,
    namespaces: &BTreeSet<String>,
    roots_pem: &str,
) -> Result<Vec<Manifest>, RenderError> {
    let owner = super::mesh_owner(mesh);
    let labels = BTreeMap::from([
        (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
        (labels::MESH.to_string(), mesh.name_any()),
        (labels::COMPONENT.to_string(), COMPONENT.to_string()),
        (labels::NAME.to_string(), BUNDLE_CONFIG_MAP.to_string()),
    ]);
    namespaces
        .iter()
        .map(|ns| {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(BUNDLE_CONFIG_MAP.to_string()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(ROOT_CERT.to_string(), roots_pem.to_string())])),
                ..Default::default()
            };
            Manifest::new(OwnedKind::ConfigMap, &cm)
        })
        .collect()
}
