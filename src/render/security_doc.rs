//! The generated parts of `docs/security.md`: RBAC tables from `config/rbac` and from what
//! the renderer produces, who each component runs as, and the revision's NetworkPolicy. A
//! test regenerates them and fails when the doc drifts; `make security-doc` rewrites it.

use std::fmt::Write;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};
use kube::core::ObjectMeta;
use serde_json::Value;

use super::gateway::{GatewayInput, render_gateway};
use super::{Manifest, OwnedKind, RevisionInput, render_revision};
use crate::api::mesh_gateway::{MeshGateway, MeshGatewaySpec};
use crate::api::mesh_install::{MeshInstall, MeshInstallSpec};
use crate::versions::VersionTable;

const REVISION: &str = "<rev>";
const MESH_NS: &str = "<mesh-ns>";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The YAML documents of a file, parsed.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("parse {d}: {e}")))
        .collect()
}

fn revision_objects() -> Vec<Manifest> {
    let spec: MeshInstallSpec = serde_saphyr::from_str(&format!(
        "version: 1.0.0\nnamespace: \"{MESH_NS}\"\nrevisionTags:\n- name: \"<tag>\"\n"
    ))
    .unwrap();
    let mi = MeshInstall {
        metadata: ObjectMeta {
            name: Some("<mesh>".to_string()),
            uid: Some("u".to_string()),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let table = VersionTable::builtin();
    let version = table.get("1.0.0").unwrap();
    render_revision(&RevisionInput {
        mesh: &mi,
        revision: REVISION,
        version,
        // What the Role says once RemoteClusters exist.
        remote_secrets: &["<the Secret each RemoteCluster names>".to_string()],
    })
    .unwrap()
}

fn gateway_objects() -> Vec<Manifest> {
    let spec: MeshGatewaySpec = serde_saphyr::from_str("mesh: mesh\n").unwrap();
    let gw = MeshGateway {
        metadata: ObjectMeta {
            name: Some("<gateway>".to_string()),
            namespace: Some("<gateway-ns>".to_string()),
            uid: Some("u".to_string()),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let table = VersionTable::builtin();
    let version = table.get("1.0.0").unwrap();
    render_gateway(&GatewayInput {
        gateway: &gw,
        mesh: "<mesh>",
        revision: REVISION,
        control_plane_namespace: MESH_NS,
        external_control_plane: None,
        cluster: "Kubernetes",
        version,
        mesh_network: None,
    })
    .unwrap()
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| {
            if i.is_empty() {
                "`\"\"` (core)".to_string()
            } else {
                format!("`{i}`")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rule's resources, and the names it is limited to, if any.
fn resources(r: &PolicyRule) -> String {
    let all = list(r.resources.as_deref().unwrap_or_default());
    match r.resource_names.as_deref() {
        Some(names) if !names.is_empty() => format!("{all} named {}", names.join(", ")),
        _ => all,
    }
}

/// A Markdown table of RBAC rules, each with the scope it applies in.
fn rules_table(rows: &[(String, PolicyRule)]) -> String {
    let mut out = String::from("| Scope | API groups | Resources | Verbs |\n|---|---|---|---|\n");
    for (scope, r) in rows {
        let _ = writeln!(
            out,
            "| {scope} | {} | {} | {} |",
            list(r.api_groups.as_deref().unwrap_or_default()),
            resources(r),
            r.verbs.join(", ")
        );
    }
    out
}

fn rules_of(value: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(value["rules"].clone()).unwrap()
}

fn operator_rbac() -> String {
    let mut rows = Vec::new();
    for (file, scope) in [
        ("config/rbac/role.yaml", "cluster (ClusterRole `weft-operator`)"),
        (
            "config/rbac/leader_election_role.yaml",
            "operator namespace (Role `weft-operator-leader-election`)",
        ),
    ] {
        for doc in documents(&read(file)) {
            rows.extend(rules_of(&doc).into_iter().map(|r| (scope.to_string(), r)));
        }
    }
    rules_table(&rows)
}

fn subjects(s: &[Subject]) -> String {
    s.iter()
        .map(|s| format!("{} `{}/{}`", s.kind, s.namespace.as_deref().unwrap_or_default(), s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn control_plane_rbac() -> String {
    let objects = revision_objects();
    let mut rows = Vec::new();
    let mut bindings = String::new();
    for m in &objects {
        let scope = match m.kind {
            OwnedKind::ClusterRole => format!("cluster (ClusterRole `{}`)", m.name),
            OwnedKind::Role => format!("mesh namespace (Role `{}`)", m.name),
            OwnedKind::ClusterRoleBinding | OwnedKind::RoleBinding => {
                let s: Vec<Subject> = serde_json::from_value(m.object["subjects"].clone()).unwrap();
                let _ = writeln!(
                    bindings,
                    "- {} `{}` binds {} `{}` to {}",
                    m.kind.name(),
                    m.name,
                    m.object["roleRef"]["kind"].as_str().unwrap_or_default(),
                    m.object["roleRef"]["name"].as_str().unwrap_or_default(),
                    subjects(&s)
                );
                continue;
            }
            _ => continue,
        };
        rows.extend(rules_of(&m.object).into_iter().map(|r| (scope.clone(), r)));
    }
    format!("{}\n{bindings}", rules_table(&rows))
}

fn identities() -> String {
    let mut out = String::from("| Component | Runs as | API token mounted | Roles bound |\n|---|---|---|---|\n");
    let rows = [
        ("control plane", revision_objects(), "weft-cp-"),
        ("node proxy", revision_objects(), "weft-proxy-"),
        ("gateway", gateway_objects(), ""),
    ];
    for (component, objects, prefix) in rows {
        for m in objects
            .iter()
            .filter(|m| m.kind == OwnedKind::ServiceAccount && m.name.starts_with(prefix))
        {
            let sa: ServiceAccount = serde_json::from_value(m.object.clone()).unwrap();
            let bound: Vec<String> = objects
                .iter()
                .filter(|b| matches!(b.kind, OwnedKind::ClusterRoleBinding | OwnedKind::RoleBinding))
                .filter(|b| {
                    b.object["subjects"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| s["name"] == m.name.as_str())
                })
                .map(|b| {
                    format!(
                        "{} `{}`",
                        b.object["roleRef"]["kind"].as_str().unwrap_or_default(),
                        b.name
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "| {component} | ServiceAccount `{}/{}` | {} | {} |",
                m.namespace.as_deref().unwrap_or_default(),
                m.name,
                if sa.automount_service_account_token == Some(false) {
                    "no"
                } else {
                    "yes"
                },
                if bound.is_empty() {
                    "none".to_string()
                } else {
                    bound.join(", ")
                }
            );
        }
    }
    out
}

fn peer(p: &NetworkPolicyPeer) -> String {
    let sel = |s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
        let mut parts: Vec<String> = s
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect();
        for e in s.match_expressions.iter().flatten() {
            parts.push(format!(
                "`{} {} ({})`",
                e.key,
                e.operator,
                e.values.clone().unwrap_or_default().join(", ")
            ));
        }
        if parts.is_empty() {
            "any".to_string()
        } else {
            parts.join(", ")
        }
    };
    let ns = p
        .namespace_selector
        .as_ref()
        .map_or("the policy's own".to_string(), sel);
    let pods = p.pod_selector.as_ref().map_or("any".to_string(), sel);
    format!("namespaces: {ns}; pods: {pods}")
}

fn network_policy() -> String {
    let objects = revision_objects();
    let mut out = String::new();
    for m in objects.iter().filter(|m| m.kind == OwnedKind::NetworkPolicy) {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&policy_table(m));
    }
    out
}

fn policy_table(m: &Manifest) -> String {
    let np: NetworkPolicy = serde_json::from_value(m.object.clone()).unwrap();
    let pods = if m.name.starts_with("weft-proxy-") {
        "node-proxy"
    } else {
        "control-plane"
    };
    let mut out = format!(
        "NetworkPolicy `{}/{}` (policy types: Ingress; selects the revision's {pods} pods)\n\n| Port | Admitted from |\n|---|---|\n",
        MESH_NS, m.name
    );
    for rule in np.spec.and_then(|s| s.ingress).unwrap_or_default() {
        let ports: Vec<String> = rule
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let n = match &p.port {
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => n.to_string(),
                    Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s)) => s.clone(),
                    None => "any".to_string(),
                };
                format!("{n}/{}", p.protocol.as_deref().unwrap_or("TCP"))
            })
            .collect();
        let from: Vec<String> = rule.from.iter().flatten().map(peer).collect();
        let _ = writeln!(out, "| {} | {} |", ports.join(", "), from.join("<br>"));
    }
    out
}

/// Every generated section, by the name its markers carry.
fn sections() -> Vec<(&'static str, String)> {
    vec![
        ("operator-rbac", operator_rbac()),
        ("control-plane-rbac", control_plane_rbac()),
        ("identities", identities()),
        ("network-policy", network_policy()),
    ]
}

/// `doc` with each `<!-- BEGIN GENERATED name -->` … `<!-- END GENERATED name -->` section
/// replaced by its content.
fn splice(doc: &str, sections: &[(&str, String)]) -> String {
    let mut out = doc.to_string();
    for (name, content) in sections {
        let begin = format!("<!-- BEGIN GENERATED {name} -->\n");
        let end = format!("<!-- END GENERATED {name} -->");
        let (Some(b), Some(e)) = (out.find(&begin), out.find(&end)) else {
            panic!("docs/security.md lacks the markers of section {name}");
        };
        out.replace_range(b + begin.len()..e, content);
    }
    out
}

#[test]
fn security_doc_matches_config_rbac_and_the_renderer() {
    let path = repo("docs/security.md");
    let doc = read("docs/security.md");
    let want = splice(&doc, &sections());
    if std::env::var("WEFT_UPDATE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    assert!(
        doc == want,
        "docs/security.md is out of date with config/rbac or the renderer; run `make security-doc`"
    );
}

/// The chart template of `path` with its template directives made plain, parsed.
fn chart(path: &str) -> Vec<Value> {
    let text: String = read(path)
        .lines()
        .filter(|l| !l.trim_start().starts_with("{{-"))
        .map(|l| {
            l.replace("{{ .Release.Namespace }}", "weft-system")
                .replace("labels: {{- include \"weft.labels\" . | nindent 4 }}", "labels: {}")
                .replace(
                    "{{ printf \"[%s]\" (join \", \" $prefixes) | quote }}",
                    "\"['registry.example.com/weft/']\"",
                )
        })
        .collect::<Vec<_>>()
        .join("\n");
    documents(&text)
}

#[test]
fn the_chart_grants_and_admits_what_config_does() {
    let role = documents(&read("config/rbac/role.yaml"));
    let chart_role = chart("deploy/helm/weft-operator/templates/clusterrole.yaml");
    assert_eq!(
        role[0]["rules"], chart_role[0]["rules"],
        "the chart's ClusterRole drifted"
    );
    for (config, template) in [
        (
            "config/rbac/operator_rbac_policy.yaml",
            "deploy/helm/weft-operator/templates/rbac-policy.yaml",
        ),
        (
            "config/policy/image-overrides.yaml",
            "deploy/helm/weft-operator/templates/image-policy.yaml",
        ),
    ] {
        let (a, b) = (documents(&read(config)), chart(template));
        assert_eq!(a.len(), b.len(), "{template}: documents");
        for (x, y) in a.iter().zip(&b) {
            for field in [
                "validations",
                "variables",
                "matchConstraints",
                "paramKind",
                "policyName",
                "paramRef",
            ] {
                assert_eq!(
                    x["spec"][field], y["spec"][field],
                    "{template}: spec.{field} drifted from {config}"
                );
            }
        }
    }
}
