//! The NetworkPolicy of one revision: who may reach its control plane. xDS on :15010 is
//! plaintext and trusts what clients claim (on :15012 a client is authenticated), so for
//! the plaintext port the network is the only boundary; this policy narrows both to the
//! mesh's own namespaces (see `docs/security.md`).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::labels;

/// Namespace label that lets a namespace (a Prometheus's, say) scrape every control plane's
/// monitoring port. Labelling namespaces is a cluster admin's act, hence a label.
pub const METRICS_LABEL: &str = "weft.dev/metrics";
/// The value of [`METRICS_LABEL`] that admits scrapers.
pub const METRICS_ALLOW: &str = "allow";

/// What one revision's policy is rendered from.
pub struct PolicyInput<'a> {
    /// Name and labels of the policy (the control plane's).
    pub meta: ObjectMeta,
    /// The control-plane pods it protects.
    pub pods: BTreeMap<String, String>,
    /// The mesh namespace (node proxies and gateways there).
    pub mesh_namespace: &'a str,
    /// `weft.dev/rev` values whose namespaces may connect: the revision, every tag of the
    /// mesh, and `default`.
    pub revs: Vec<String>,
    /// The xDS ports (plaintext and TLS).
    pub xds_ports: Vec<i32>,
    /// The monitoring port.
    pub monitoring_port: i32,
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

fn namespace_named(ns: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                ns.to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Namespaces whose `weft.dev/rev` is one of `revs`.
fn labelled_for(revs: &[String]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: labels::REVISION.to_string(),
                operator: "In".to_string(),
                values: Some(revs.to_vec()),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ingress to the control plane: xDS from the mesh namespace, from namespaces labelled for
/// one of `revs`, and from gateway pods anywhere; monitoring from the mesh namespace and
/// from namespaces labelled `weft.dev/metrics=allow`. Everything else is refused.
pub fn control_plane_policy(input: PolicyInput) -> NetworkPolicy {
    let labelled_for_mesh = labelled_for(&input.revs);
    // Gateways run in namespaces of their owners' choosing, not labelled for the mesh.
    let gateways = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                labels::COMPONENT.to_string(),
                labels::GATEWAY_COMPONENT.to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let scrapers = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(METRICS_LABEL.to_string(), METRICS_ALLOW.to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: input.meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(input.pods),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(input.xds_ports.iter().map(|p| tcp(*p)).collect()),
                    from: Some(vec![namespace_named(input.mesh_namespace), labelled_for_mesh, gateways]),
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(input.monitoring_port)]),
                    from: Some(vec![namespace_named(input.mesh_namespace), scrapers]),
                },
            ]),
            ..Default::default()
        }),
    }
}

/// What a revision's node-proxy policy is rendered from.
pub struct ProxyPolicyInput<'a> {
    /// Name and labels of the policy (the node proxies').
    pub meta: ObjectMeta,
    /// The node-proxy pods it protects.
    pub pods: BTreeMap<String, String>,
    /// The mesh namespace (the other node proxies there).
    pub mesh_namespace: &'a str,
    /// `weft.dev/rev` values whose namespaces may connect (as for the control plane).
    pub revs: Vec<String>,
    /// The outbound and inbound ports.
    pub ports: [i32; 2],
}

/// Ingress to the node proxies: their outbound and inbound ports from the mesh namespace
/// (other node proxies) and from namespaces labelled for one of `revs` (the workloads).
/// The readiness port needs no rule: kubelet probes come from the node.
pub fn node_proxy_policy(input: ProxyPolicyInput) -> NetworkPolicy {
    let labelled_for_mesh = labelled_for(&input.revs);
    NetworkPolicy {
        metadata: input.meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(input.pods),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(input.ports.iter().map(|p| tcp(*p)).collect()),
                from: Some(vec![namespace_named(input.mesh_namespace), labelled_for_mesh]),
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use kube::core::ObjectMeta;

    use crate::api::mesh_install::{MeshInstall, MeshInstallSpec};
    use crate::render::{OwnedKind, RevisionInput, render_revision};
    use crate::versions::VersionTable;

    fn rendered(spec_yaml: &str) -> NetworkPolicy {
        let spec: MeshInstallSpec = serde_saphyr::from_str(spec_yaml).unwrap();
        let mi = MeshInstall {
            metadata: ObjectMeta {
                name: Some("mesh".to_string()),
                uid: Some("u".to_string()),
                ..Default::default()
            },
            spec,
            status: None,
        };
        let table = VersionTable::builtin();
        let version = table.get(&mi.spec.version).unwrap();
        let objects = render_revision(&RevisionInput {
            mesh: &mi,
            revision: "mesh-v1-0-0",
            version,
            remote_secrets: &[],
        })
        .unwrap();
        let policies: Vec<_> = objects
            .iter()
            .filter(|m| m.kind == OwnedKind::NetworkPolicy && m.name.starts_with("weft-cp-"))
            .collect();
        assert_eq!(policies.len(), 1, "one control-plane NetworkPolicy per revision");
        assert_eq!(policies[0].namespace.as_deref(), Some("mesh-ns"));
        serde_json::from_value(policies[0].object.clone()).unwrap()
    }

    #[test]
    fn admits_the_mesh_namespaces_to_xds_and_scrapers_to_monitoring_only() {
        let np = rendered(
            "version: 1.0.0\nnamespace: mesh-ns\nrevisionTags:\n- name: canary\n  target: Latest\n- name: stable\n",
        );
        let v = serde_json::to_value(&np).unwrap();
        assert_eq!(v["metadata"]["name"], "weft-cp-mesh-v1-0-0");
        assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/managed-by"], "weft-operator");
        let spec = &v["spec"];
        assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress"]));
        assert_eq!(
            spec["podSelector"]["matchLabels"],
            serde_json::json!({"weft.dev/component": "control-plane", "weft.dev/mesh": "mesh", "weft.dev/rev": "mesh-v1-0-0"})
        );
        let xds = &spec["ingress"][0];
        assert_eq!(
            xds["ports"],
            serde_json::json!([{"port": 15010, "protocol": "TCP"}, {"port": 15012, "protocol": "TCP"}])
        );
        assert_eq!(
            xds["from"],
            serde_json::json!([
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mesh-ns"}}},
                {"namespaceSelector": {"matchExpressions": [{"key": "weft.dev/rev", "operator": "In",
                    "values": ["canary", "default", "mesh-v1-0-0", "stable"]}]}},
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"weft.dev/component": "gateway"}}},
            ])
        );
        let monitoring = &spec["ingress"][1];
        assert_eq!(
            monitoring["ports"],
            serde_json::json!([{"port": 15014, "protocol": "TCP"}])
        );
        assert_eq!(
            monitoring["from"],
            serde_json::json!([
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mesh-ns"}}},
                {"namespaceSelector": {"matchLabels": {"weft.dev/metrics": "allow"}}},
            ])
        );
        assert_eq!(spec["ingress"].as_array().map(Vec::len), Some(2), "no other ingress");
    }
}
