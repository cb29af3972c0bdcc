//! Pure rendering: the objects one revision of a MeshInstall, or one MeshGateway, consists of. Nothing here talks
//! to the API server, so what the operator applies can be unit-tested and reviewed
//! (`weft render`).

pub mod agent;
pub mod gateway;
pub mod kinds;
pub mod network_policy;
pub mod profile;
pub mod revision;
pub mod scaling;
pub mod security;
pub mod trust_bundle;

pub use gateway::{GatewayInput, render_gateway};
pub use kinds::{Manifest, OwnedKind};
pub use revision::{RevisionInput, render_revision};

/// Why a spec cannot be rendered. These are spec errors that admission could not catch;
/// the operator reports them as `Stalled` and leaves the running mesh alone.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The spec is inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// An object could not be encoded (a bug, not a user error).
    #[error("cannot encode {kind} {name}: {message}")]
    Encode {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What serde said.
        message: String,
    },
}

/// The owner reference every object a MeshInstall owns carries (its controller; deletion
/// waits for it).
pub fn mesh_owner(
    mesh: &crate::api::mesh_install::MeshInstall,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "weft.dev/v1alpha1".to_string(),
        kind: "MeshInstall".to_string(),
        name: mesh.metadata.name.clone().unwrap_or_default(),
        uid: mesh.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The volumes every Envoy pod has (node proxies, gateways): its bootstrap ConfigMap
/// `bootstrap`, and a `tmp` directory for the files Envoy writes (the root filesystem is
/// read-only).
pub fn envoy_volumes(bootstrap: &str) -> Vec<k8s_openapi::api::core::v1::Volume> {
    use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, Volume};
    vec![
        Volume {
            name: "bootstrap".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: bootstrap.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".to_string(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    ]
}

/// A short, stable hash of text (FNV-1a, 64 bits), for checksum annotations that roll pods
/// when their configuration changes. Stable across Rust releases, unlike `DefaultHasher`.
pub fn fnv1a(text: &str) -> String {
    fnv1a_bytes(text.as_bytes())
}

/// FNV-1a (64 bits) of bytes, as 16 hex digits.
pub fn fnv1a_bytes(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod security_doc;
#[cfg(test)]
mod tests;
