//! RemoteCluster: a cluster whose endpoints join the mesh.

// kube-derive attribute lists repeat keys such as `type_` by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The desired state of a remote cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "RemoteCluster",
    plural = "remoteclusters",
    shortname = "mrc",
    category = "weft",
    namespaced,
    status = "RemoteClusterStatus",
    doc = "RemoteCluster adds another cluster's services and endpoints to a mesh.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(name = "Network", type_ = "string", json_path = ".spec.network"),
    printcolumn(name = "Server", type_ = "string", json_path = ".status.server", priority = 1),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.kubernetesVersion"),
    printcolumn(name = "Synced", type_ = "string", json_path = ".status.controlPlanes[*].synced"),
    printcolumn(name = "Services", type_ = "string", json_path = ".status.controlPlanes[*].services"),
    printcolumn(
        name = "Endpoints",
        type_ = "string",
        json_path = ".status.controlPlanes[*].endpoints"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterSpec {
    /// The MeshInstall the cluster joins (the RemoteCluster lives in that mesh's namespace).
    #[schemars(length(min = 1, max = 30))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("mesh must name a MeshInstall: a DNS label (lower-case letters, digits and '-') of at most 30 characters"))]
    pub mesh: String,
    /// The cluster's name in the mesh; unique within the mesh.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("clusterName must be a DNS label: lower-case letters, digits and '-'"))]
    pub cluster_name: String,
    /// The network the cluster's pods are on; clusters on other networks are reached through
    /// east-west gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The Secret (in this namespace) holding a kubeconfig for the remote cluster. Token or
    /// certificate credentials only: exec and auth-provider plugins are refused.
    pub kubeconfig_secret_ref: SecretKeyRef,
}

/// A key in a Secret of the RemoteCluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the kubeconfig.
    #[serde(default = "default_key")]
    #[schemars(default = "default_key", length(min = 1, max = 253))]
    pub key: String,
}

fn default_key() -> String {
    "kubeconfig".to_string()
}

/// What the operator observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled, kstatus-style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The remote API server's address, from the kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The remote API server's Kubernetes version (`gitVersion`), when it last answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// What each revision's control plane sees of the cluster; each control plane writes
    /// its own entry (field manager `weft-control-plane-<revision>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["revision".into()]))]
    pub control_planes: Vec<ControlPlaneView>,
}

/// One revision's control plane's view of a remote cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneView {
    /// The revision whose control plane this is.
    pub revision: String,
    /// Whether its watches on the cluster have listed and are flowing. False while the
    /// cluster is unreachable: the last endpoints it listed are still served.
    pub synced: bool,
    /// Mesh services it sees in the cluster.
    pub services: i64,
    /// Ready endpoints it sees in the cluster.
    pub endpoints: i64,
    /// Why it is not synced, or why some endpoints are not served (such as a network
    /// without an east-west gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When this entry last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}
