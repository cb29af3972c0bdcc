//! The custom resources of group `weft.dev`, version `v1alpha1`, and the labels they share.

pub mod common;
pub mod labels;
pub mod mesh_gateway;
pub mod mesh_install;
pub mod ports;
pub mod remote_cluster;
pub mod security;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use mesh_gateway::{MeshGateway, MeshGatewaySpec, MeshGatewayStatus};
pub use mesh_install::{MeshInstall, MeshInstallSpec, MeshInstallStatus};
pub use remote_cluster::{ControlPlaneView, RemoteCluster, RemoteClusterSpec, RemoteClusterStatus};

/// Every CRD, in the order of their files in `crds/` (alphabetical by plural name).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![MeshGateway::crd(), MeshInstall::crd(), RemoteCluster::crd()]
}

/// The file name `crds/` uses for a CRD.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` and the Helm chart's `crds/` must hold exactly what `weft crd` prints;
    /// regenerate both with `make crds`.
    #[test]
    fn checked_in_crds_match_the_code() {
        for dir in ["crds", "deploy/helm/weft-operator/crds"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let mut files: Vec<_> = std::fs::read_dir(&path)
                .expect("CRD directory exists")
                .map(|e| e.expect("readable entry").file_name().to_string_lossy().into_owned())
                .filter(|f| f.ends_with(".yaml"))
                .collect();
            files.sort();
            let wanted: Vec<String> = crds().iter().map(crd_file_name).collect();
            assert_eq!(
                files, wanted,
                "{dir}/ holds other CRD files than the code; run `make crds`"
            );
            for crd in crds() {
                let on_disk = std::fs::read_to_string(path.join(crd_file_name(&crd))).expect("readable CRD file");
                assert!(
                    on_disk == crate::yaml::document(&crd).expect("CRD encodes"),
                    "{dir}/{} drifted from the Rust types; run `make crds` and commit the result",
                    crd_file_name(&crd)
                );
            }
        }
    }

    /// Walks a schema: every node has a type (structural), and no array anywhere is empty.
    fn check_schema(path: &str, node: &serde_json::Value, problems: &mut Vec<String>) {
        match node {
            serde_json::Value::Array(items) => {
                if items.is_empty() {
                    problems.push(format!("{path}: empty array"));
                }
                for (i, item) in items.iter().enumerate() {
                    check_schema(&format!("{path}[{i}]"), item, problems);
                }
            }
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    let here = format!("{path}.{key}");
                    check_schema(&here, value, problems);
                    if key == "properties" {
                        for (field, schema) in value.as_object().into_iter().flatten() {
                            let typed = schema.get("type").is_some()
                                || schema.get("x-kubernetes-int-or-string").is_some()
                                || schema.get("x-kubernetes-preserve-unknown-fields").is_some();
                            if !typed {
                                problems.push(format!("{here}.{field}: no type (not structural)"));
                            }
                        }
                    }
                    for forbidden in ["anyOf", "oneOf", "allOf", "$ref"] {
                        if key == forbidden
                            && value
                                .as_array()
                                .is_some_and(|a| a.iter().any(|s| s.get("type").is_some()))
                        {
                            problems.push(format!("{here}: types inside {forbidden} (not structural)"));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    #[test]
    fn crds_are_structural_and_hold_no_empty_arrays() {
        for crd in crds() {
            let value = serde_json::to_value(&crd).expect("CRD encodes");
            let mut problems = Vec::new();
            check_schema("", &value, &mut problems);
            assert!(problems.is_empty(), "{}: {problems:#?}", crd_file_name(&crd));
        }
    }

    #[test]
    fn every_field_has_a_description() {
        fn walk(path: &str, node: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
                for (name, schema) in props {
                    let here = format!("{path}.{name}");
                    if name != "metadata"
                        && name != "apiVersion"
                        && name != "kind"
                        && schema.get("description").is_none()
                    {
                        missing.push(here.clone());
                    }
                    walk(&here, schema, missing);
                }
            }
            if let Some(items) = node.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        for crd in crds() {
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema encodes");
            let mut missing = Vec::new();
            walk("", &schema["openAPIV3Schema"], &mut missing);
            assert!(
                missing.is_empty(),
                "{}: fields without a description: {missing:#?}",
                crd_file_name(&crd)
            );
        }
    }
}

#[cfg(test)]
mod enum_spelling_tests {
    use super::mesh_gateway::GatewayType;
    use super::mesh_install::{LogLevel, OutboundTrafficPolicy, Profile};
    use kube::CustomResourceExt;

    fn read<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_json::from_value(serde_json::Value::String(s.to_string())).unwrap()
    }

    #[test]
    fn earlier_spellings_read_as_the_camelcase_values_which_are_what_is_written() {
        for (old, new, v) in [
            ("ingress", "Ingress", GatewayType::Ingress),
            ("egress", "Egress", GatewayType::Egress),
            ("eastwest", "EastWest", GatewayType::EastWest),
        ] {
            assert_eq!((read::<GatewayType>(old), read::<GatewayType>(new)), (v, v));
            assert_eq!(serde_json::to_value(v).unwrap(), new);
        }
        for (old, new, v) in [
            ("default", "Default", Profile::Default),
            ("minimal", "Minimal", Profile::Minimal),
            ("demo", "Demo", Profile::Demo),
            ("ha", "HA", Profile::Ha),
        ] {
            assert_eq!((read::<Profile>(old), read::<Profile>(new)), (v, v));
            assert_eq!(serde_json::to_value(v).unwrap(), new);
        }
        assert_eq!(read::<LogLevel>("warning"), LogLevel::Warning);
        assert_eq!(serde_json::to_value(LogLevel::Warning).unwrap(), "Warning");
        assert_eq!(
            read::<OutboundTrafficPolicy>("REGISTRY_ONLY"),
            OutboundTrafficPolicy::RegistryOnly
        );
        assert_eq!(
            serde_json::to_value(OutboundTrafficPolicy::AllowAny).unwrap(),
            "AllowAny"
        );
        assert!(serde_json::from_value::<GatewayType>("East-West".into()).is_err());
    }

    #[test]
    fn the_crd_schema_accepts_both_spellings_and_nothing_else() {
        let crd = serde_json::to_value(super::MeshGateway::crd()).unwrap();
        let text = crd.to_string();
        let start = text
            .find("\"type\":{\"default\":\"Ingress\"")
            .expect("the type field defaults to Ingress");
        let field = &text[start..start + 200];
        for v in ["Ingress", "Egress", "EastWest", "ingress", "egress", "eastwest"] {
            assert!(field.contains(&format!("\"{v}\"")), "{v} in {field}");
        }
    }
}
