//! The custom resources of group `weft.dev`, version `v1alpha1`, and the labels they share.

pub mod common;
pub mod labels;
pub mod mesh_gateway;
pub mod mesh_install;
pub mod remote_cluster;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use mesh_gateway::{MeshGateway, MeshGatewaySpec, MeshGatewayStatus};
pub use mesh_install::{MeshInstall, MeshInstallSpec, MeshInstallStatus};
pub use remote_cluster::{RemoteCluster, RemoteClusterSpec, RemoteClusterStatus};

/// Every CRD, in the order of their files in `crds/` (alphabetical by plural name).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![MeshGateway::crd(), MeshInstall::crd(), RemoteCluster::crd()]
}

/// The file name `crds/` uses for a CRD.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}
