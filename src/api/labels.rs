//! Label and annotation keys, and the label sets on everything the operator owns.

use std::collections::BTreeMap;

/// The revision a namespace, gateway or owned object belongs to (a tag or revision name on
/// namespaces; always a revision name on owned objects).
pub const REVISION: &str = "weft.dev/rev";
/// The MeshInstall an owned object belongs to.
pub const MESH: &str = "weft.dev/mesh";
/// The component of an owned object (`control-plane`, `proxy`, `gateway`).
pub const COMPONENT: &str = "weft.dev/component";
/// The MeshGateway a gateway's objects and pods belong to.
pub const GATEWAY: &str = "weft.dev/gateway";
/// Who manages an object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`] on everything the operator owns.
pub const MANAGER: &str = "weft-operator";
/// The standard name label.
pub const NAME: &str = "app.kubernetes.io/name";
/// The standard instance label.
pub const INSTANCE: &str = "app.kubernetes.io/instance";
/// The standard part-of label.
pub const PART_OF: &str = "app.kubernetes.io/part-of";
/// On a revision's node-proxy bootstrap ConfigMap: the external control plane's address,
/// when the revision uses one (primary-remote).
pub const EXTERNAL_CONTROL_PLANE: &str = "weft.dev/external-control-plane";
/// The mesh version an owned object runs.
pub const VERSION: &str = "weft.dev/version";

/// Labels on every object a revision owns.
pub fn revision_labels(mesh: &str, revision: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (PART_OF.to_string(), "weft".to_string()),
        (MESH.to_string(), mesh.to_string()),
        (REVISION.to_string(), revision.to_string()),
    ])
}

/// The `component` value of everything a MeshGateway owns.
pub const GATEWAY_COMPONENT: &str = "gateway";

/// The pod labels that select one gateway's pods (immutable: never the revision).
pub fn gateway_selector(gateway: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (COMPONENT.to_string(), GATEWAY_COMPONENT.to_string()),
        (GATEWAY.to_string(), gateway.to_string()),
    ])
}

/// The label selector that finds everything one MeshInstall owns.
pub fn mesh_selector(mesh: &str) -> String {
    format!("{MANAGED_BY}={MANAGER},{MESH}={mesh}")
}
