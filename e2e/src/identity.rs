//! Mesh-identity helpers shared by the identity tests and `bench-ca`.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use weft::identity::ca::SigningCa;
use weft::identity::mesh_ca;

/// The issuer Secret `weft-ca-issuer` holding `signing`, as the operator writes it.
pub fn issuer_secret(signing: &SigningCa) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(mesh_ca::ISSUER_SECRET.into()),
            ..Default::default()
        },
        data: Some(
            mesh_ca::issuer_data(signing)
                .0
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    }
}
