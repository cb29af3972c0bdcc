//! The objects of one revision: control-plane identity, permissions, configuration,
//! Deployment, Service, autoscaler and disruption budget, and the node-proxy DaemonSet.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec, DeploymentStrategy,
    RollingUpdateDaemonSet, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount, ServicePort, ServiceSpec,
    TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::api::mesh_install::{LogLevel, MeshConfig, MeshInstall};
use crate::api::{labels, ports};
use crate::identity::mesh_ca::ISSUER_SECRET;
use crate::versions::MeshVersion;

use super::agent;
use super::profile::{self, Resolved};
use super::security::{container_context, pod_context};
use super::{Manifest, OwnedKind, RenderError, fnv1a, scaling};

/// The xDS port of every control plane.
pub const XDS_PORT: i32 = 15010;
/// The TLS port of every control plane: the certificate service and authenticated xDS.
pub const SECURE_XDS_PORT: i32 = ports::SECURE_XDS as i32;
/// The monitoring port (`/metrics`, `/ready`) of every control plane.
pub const MONITORING_PORT: i32 = 15014;
/// The user the control plane runs as.
const CONTROL_PLANE_UID: i64 = 65532;
/// The user Envoy's image runs as.
const PROXY_UID: i64 = 101;
/// The node proxy's outbound port: workloads send their mesh traffic here.
pub const PROXY_OUTBOUND_PORT: i32 = ports::NODE_PROXY_OUTBOUND as i32;
/// The node proxy's inbound port: tunnels to a pod on its node.
pub const PROXY_INBOUND_PORT: i32 = ports::NODE_PROXY_INBOUND as i32;
/// The node proxy's readiness port (`/healthz/ready`).
pub const PROXY_READY_PORT: i32 = ports::NODE_PROXY_READY as i32;

/// What one revision is rendered from.
#[derive(Clone, Debug)]
pub struct RevisionInput<'a> {
    /// The MeshInstall (its name, uid and spec).
    pub mesh: &'a MeshInstall,
    /// The revision's name.
    pub revision: &'a str,
    /// The version it runs.
    pub version: &'a MeshVersion,
    /// The Secrets the mesh's RemoteClusters name (in the mesh namespace): the only ones
    /// its control plane may read.
    pub remote_secrets: &'a [String],
}

/// A read-only (get, list, watch) RBAC rule.
fn read_rule(groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: ["get", "list", "watch"].iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The name of a revision's control-plane objects.
pub fn control_plane_name(revision: &str) -> String {
    format!("weft-cp-{revision}")
}

/// The name of a revision's node-proxy objects.
pub fn proxy_name(revision: &str) -> String {
    format!("weft-proxy-{revision}")
}

/// Renders every object of one revision, in apply order. The namespace itself is not among
/// them: it is created if absent and never owned or deleted.
pub fn render_revision(input: &RevisionInput) -> Result<Vec<Manifest>, RenderError> {
    let mesh_name = input.mesh.metadata.name.clone().unwrap_or_default();
    let resolved = profile::resolve(&mesh_name, input.revision, &input.mesh.spec)?;
    let r = Renderer {
        input,
        mesh: mesh_name,
        ns: input.mesh.spec.namespace.clone(),
        resolved,
    };
    r.all()
}

struct Renderer<'a> {
    input: &'a RevisionInput<'a>,
    mesh: String,
    ns: String,
    resolved: Resolved,
}

/// The mesh configuration file the control plane reads.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfigFile<'a> {
    mesh: &'a str,
    revision: &'a str,
    version: String,
    #[serde(flatten)]
    config: &'a MeshConfig,
}

impl Renderer<'_> {
    fn revision(&self) -> &str {
        self.input.revision
    }

    fn owner(&self) -> OwnerReference {
        super::mesh_owner(self.input.mesh)
    }

    fn labels(&self, component: &str, name: &str) -> BTreeMap<String, String> {
        let mut l = labels::revision_labels(&self.mesh, self.revision());
        l.insert(labels::COMPONENT.to_string(), component.to_string());
        l.insert(labels::NAME.to_string(), name.to_string());
        l.insert(labels::INSTANCE.to_string(), self.revision().to_string());
        l.insert(labels::VERSION.to_string(), self.input.version.version.to_string());
        l
    }

    fn meta(&self, name: &str, namespaced: bool, component: &str) -> ObjectMeta {
        let app = if component == "proxy" {
            "weft-proxy"
        } else {
            "weft-control-plane"
        };
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: namespaced.then(|| self.ns.clone()),
            labels: Some(self.labels(component, app)),
            owner_references: Some(vec![self.owner()]),
            ..Default::default()
        }
    }

    fn cp_selector(&self) -> BTreeMap<String, String> {
        profile::control_plane_selector(&self.mesh, self.revision())
    }

    fn proxy_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::COMPONENT.to_string(), "proxy".to_string()),
            (labels::MESH.to_string(), self.mesh.clone()),
            (labels::REVISION.to_string(), self.revision().to_string()),
        ])
    }

    fn all(&self) -> Result<Vec<Manifest>, RenderError> {
        let cp = control_plane_name(self.revision());
        let mut out = Vec::new();
        let xds = match &self.resolved.control_plane.external {
            // Primary-remote: the control plane runs elsewhere; only the proxies are ours
            // (plaintext until remote workloads can get certificates from the primary).
            Some(external) => external.host_port(),
            // Here: the TLS port, with the agent's certificate.
            None => {
                self.control_plane(&cp, &mut out)?;
                (format!("{cp}.{}.svc", self.ns), SECURE_XDS_PORT as u16)
            }
        };
        if self.resolved.proxy.is_some() || self.resolved.control_plane.external.is_some() {
            // With an external control plane the bootstrap ConfigMap is what marks the
            // revision as installed, so it exists even without node proxies.
            let px = proxy_name(self.revision());
            out.push(Manifest::new(OwnedKind::ServiceAccount, &self.proxy_account(&px))?);
            let bootstrap = self.proxy_bootstrap(&px, &xds)?;
            let hash = fnv1a(&serde_json::to_string(&bootstrap.data).unwrap_or_default());
            out.push(Manifest::new(OwnedKind::ConfigMap, &bootstrap)?);
            if let Some(ds) = self.daemon_set(&px, &hash) {
                out.push(Manifest::new(OwnedKind::Service, &self.proxy_service(&px))?);
                out.push(Manifest::new(
                    OwnedKind::NetworkPolicy,
                    &self.proxy_network_policy(&px),
                )?);
                out.push(Manifest::new(OwnedKind::DaemonSet, &ds)?);
            }
        }
        Ok(out)
    }

    /// The control plane's objects: identity, RBAC, mesh config, Service, Deployment, and
    /// its autoscaler and disruption budget when wanted.
    fn control_plane(&self, cp: &str, out: &mut Vec<Manifest>) -> Result<(), RenderError> {
        out.extend([
            Manifest::new(OwnedKind::ServiceAccount, &self.control_plane_account(cp))?,
            Manifest::new(OwnedKind::ClusterRole, &self.cluster_role(cp))?,
            Manifest::new(OwnedKind::ClusterRoleBinding, &self.cluster_role_binding(cp))?,
            Manifest::new(OwnedKind::Role, &self.role(cp))?,
            Manifest::new(OwnedKind::RoleBinding, &self.role_binding(cp))?,
        ]);
        let config = self.mesh_config_map(cp)?;
        let config_hash = fnv1a(&serde_json::to_string(&config.data).unwrap_or_default());
        out.push(Manifest::new(OwnedKind::ConfigMap, &config)?);
        out.push(Manifest::new(OwnedKind::Service, &self.service(cp))?);
        out.push(Manifest::new(OwnedKind::NetworkPolicy, &self.network_policy(cp))?);
        let floor = self.resolved.control_plane.hpa.as_ref().map(|h| h.min);
        out.push(Manifest::new(OwnedKind::Deployment, &self.deployment(cp, &config_hash))?.starting_with(floor));
        if let Some(hpa) = self.hpa(cp) {
            out.push(Manifest::new(OwnedKind::HorizontalPodAutoscaler, &hpa)?);
        }
        if let Some(pdb) = self.pdb(cp) {
            out.push(Manifest::new(OwnedKind::PodDisruptionBudget, &pdb)?);
        }
        Ok(())
    }

    fn control_plane_account(&self, name: &str) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(name, true, "control-plane"),
            automount_service_account_token: Some(true),
            ..Default::default()
        }
    }

    fn proxy_account(&self, name: &str) -> ServiceAccount {
        // Node proxies get everything from xDS; they never talk to the API server.
        ServiceAccount {
            metadata: self.meta(name, true, "proxy"),
            automount_service_account_token: Some(false),
            ..Default::default()
        }
    }

    /// Read-only access to what discovery watches across the cluster.
    fn cluster_role(&self, name: &str) -> ClusterRole {
        ClusterRole {
            metadata: self.meta(name, false, "control-plane"),
            rules: Some(vec![
                read_rule(&[""], &["services", "namespaces"]),
                read_rule(&["discovery.k8s.io"], &["endpointslices"]),
                read_rule(&["gateway.networking.k8s.io"], &["httproutes"]),
                read_rule(&["weft.dev"], &["meshinstalls", "meshgateways"]),
                // The certificate service checks each caller's ServiceAccount token.
                PolicyRule {
                    api_groups: Some(vec!["authentication.k8s.io".to_string()]),
                    resources: Some(vec!["tokenreviews".to_string()]),
                    verbs: vec!["create".to_string()],
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }
    }

    fn subject(&self, name: &str) -> Subject {
        Subject {
            kind: "ServiceAccount".to_string(),
            name: name.to_string(),
            namespace: Some(self.ns.clone()),
            ..Default::default()
        }
    }

    fn cluster_role_binding(&self, name: &str) -> ClusterRoleBinding {
        ClusterRoleBinding {
            metadata: self.meta(name, false, "control-plane"),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_string(),
                kind: "ClusterRole".to_string(),
                name: name.to_string(),
            },
            subjects: Some(vec![self.subject(name)]),
        }
    }

    /// In its own namespace only: the RemoteClusters, its entry of their status, the
    /// Secrets they name, by name (none while there are none: an empty `resourceNames`
    /// would allow every Secret), and the mesh CA's issuer, by name (never the root).
    fn role(&self, name: &str) -> Role {
        let mut rules = vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".to_string()]),
            resource_names: Some(vec![ISSUER_SECRET.to_string()]),
            verbs: vec!["get".to_string()],
            ..Default::default()
        }];
        if !self.input.remote_secrets.is_empty() {
            rules.push(PolicyRule {
                resource_names: Some(self.input.remote_secrets.to_vec()),
                ..read_rule(&[""], &["secrets"])
            });
        }
        Role {
            metadata: self.meta(name, true, "control-plane"),
            rules: Some(vec![
                read_rule(&["weft.dev"], &["remoteclusters"]),
                // Its own entry of each RemoteCluster's status.controlPlanes (server-side apply).
                PolicyRule {
                    api_groups: Some(vec!["weft.dev".to_string()]),
                    resources: Some(vec!["remoteclusters/status".to_string()]),
                    verbs: vec!["patch".to_string()],
                    ..Default::default()
                },
            ])
            .map(|r| rules.into_iter().chain(r).collect()),
        }
    }

    fn role_binding(&self, name: &str) -> RoleBinding {
        RoleBinding {
            metadata: self.meta(name, true, "control-plane"),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_string(),
                kind: "Role".to_string(),
                name: name.to_string(),
            },
            subjects: Some(vec![self.subject(name)]),
        }
    }

    fn mesh_config_map(&self, name: &str) -> Result<ConfigMap, RenderError> {
        let file = MeshConfigFile {
            mesh: &self.mesh,
            revision: self.revision(),
            version: self.input.version.version.to_string(),
            config: &self.resolved.mesh_config,
        };
        let text = serde_json::to_value(&file)
            .map(|mut v| {
                // Istio's spelling in the file, as before the API's CamelCase values: the
                // file's hash is in the pod template, so a new spelling would roll every
                // control plane on an operator upgrade.
                if let Some(p) = self.resolved.mesh_config.outbound_traffic_policy {
                    v["outboundTrafficPolicy"] = serde_json::Value::String(p.istio_name().to_string());
                }
                v
            })
            .map_err(|e| e.to_string())
            .and_then(|v| serde_saphyr::to_string(&v).map_err(|e| e.to_string()))
            .map_err(|message| RenderError::Encode {
                kind: "ConfigMap",
                name: name.to_string(),
                message,
            })?;
        Ok(ConfigMap {
            metadata: self.meta(name, true, "control-plane"),
            data: Some(BTreeMap::from([("mesh.yaml".to_string(), text)])),
            ..Default::default()
        })
    }

    /// The xDS ports the control plane serves: the TLS port, and plaintext unless turned off.
    fn xds_ports(&self) -> Vec<i32> {
        if self.resolved.control_plane.plaintext_xds {
            vec![XDS_PORT, SECURE_XDS_PORT]
        } else {
            vec![SECURE_XDS_PORT]
        }
    }

    /// Every port of the control plane, named (the container's and the Service's).
    fn served_ports(&self) -> Vec<(&'static str, i32)> {
        let mut out = Vec::new();
        if self.resolved.control_plane.plaintext_xds {
            out.push(("grpc-xds", XDS_PORT));
        }
        out.push(("tls-xds", SECURE_XDS_PORT));
        out.push(("http-monitoring", MONITORING_PORT));
        out
    }

    fn service(&self, name: &str) -> Service {
        let port = |name: &str, port: i32| ServicePort {
            name: Some(name.to_string()),
            port,
            target_port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".to_string()),
            app_protocol: None,
            ..Default::default()
        };
        Service {
            metadata: self.meta(name, true, "control-plane"),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".to_string()),
                selector: Some(self.cp_selector()),
                ports: Some(self.served_ports().into_iter().map(|(n, p)| port(n, p)).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The `weft.dev/rev` values of the mesh's namespaces: the revision, every tag of the
    /// mesh (not only those on this revision: tags move during an upgrade, and clients
    /// still connected to the old revision must reconnect to it) and `default`.
    fn mesh_revs(&self) -> Vec<String> {
        let mut revs = vec![self.revision().to_string(), "default".to_string()];
        revs.extend(
            self.input
                .mesh
                .spec
                .revision_tags
                .iter()
                .flatten()
                .map(|t| t.name.clone()),
        );
        revs.sort();
        revs.dedup();
        revs
    }

    /// Who may reach the control plane: the mesh's namespaces (see `network_policy.rs`).
    fn network_policy(&self, name: &str) -> k8s_openapi::api::networking::v1::NetworkPolicy {
        super::network_policy::control_plane_policy(super::network_policy::PolicyInput {
            meta: self.meta(name, true, "control-plane"),
            pods: self.cp_selector(),
            mesh_namespace: &self.ns,
            revs: self.mesh_revs(),
            xds_ports: self.xds_ports(),
            monitoring_port: MONITORING_PORT,
        })
    }

    /// The control plane's image (the `weft` binary, which is also the agent).
    fn control_plane_image(&self) -> String {
        self.resolved
            .control_plane
            .image
            .clone()
            .unwrap_or_else(|| self.input.version.images.control_plane.clone())
    }

    fn deployment(&self, name: &str, config_hash: &str) -> Deployment {
        let cp = &self.resolved.control_plane;
        let image = self.control_plane_image();
        let hard_anti_affinity = profile::hard_anti_affinity(cp.affinity.as_ref());
        // With one pod per host a surge pod may have nowhere to go, so replace in place;
        // otherwise surge first so capacity never drops.
        let (surge, unavailable) = if hard_anti_affinity { (0, 1) } else { (1, 0) };
        let container = Container {
            name: "control-plane".to_string(),
            image: Some(image),
            args: Some(
                [
                    "control-plane".to_string(),
                    "--revision".to_string(),
                    self.revision().to_string(),
                    "--mesh-config".to_string(),
                    "/etc/weft/mesh.yaml".to_string(),
                    "--ca-secret".to_string(),
                    ISSUER_SECRET.to_string(),
                ]
                .into_iter()
                .chain((!cp.plaintext_xds).then(|| "--no-plaintext-xds".to_string()))
                .chain(
                    self.input
                        .mesh
                        .spec
                        .security
                        .as_ref()
                        .and_then(|s| s.workload_cert_ttl.clone())
                        .map(|ttl| {
                            // Only when set, so the arguments (and pods) of meshes that leave it alone do not change.
                            format!("--workload-cert-ttl={ttl}")
                        }),
                )
                .collect(),
            ),
            env: Some(vec![EnvVar {
                name: "POD_NAMESPACE".to_string(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.namespace".to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(container_ports(self.served_ports())),
            readiness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some("/ready".to_string()),
                    port: IntOrString::Int(MONITORING_PORT),
                    scheme: Some("HTTP".to_string()),
                    ..Default::default()
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            // Liveness does not wait for sync: a slow API server must not restart the pod.
            liveness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(MONITORING_PORT),
                    ..Default::default()
                }),
                period_seconds: Some(10),
                ..Default::default()
            }),
            resources: Some(cp.resources.clone()),
            security_context: Some(container_context()),
            volume_mounts: Some(vec![VolumeMount {
                name: "mesh-config".to_string(),
                mount_path: "/etc/weft".to_string(),
                read_only: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let mut pod_labels = self.labels("control-plane", "weft-control-plane");
        pod_labels.extend(self.cp_selector());
        Deployment {
            metadata: self.meta(name, true, "control-plane"),
            spec: Some(DeploymentSpec {
                replicas: cp.hpa.is_none().then_some(cp.replicas),
                selector: LabelSelector {
                    match_labels: Some(self.cp_selector()),
                    ..Default::default()
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".to_string()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::Int(surge)),
                        max_unavailable: Some(IntOrString::Int(unavailable)),
                    }),
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        annotations: Some(BTreeMap::from([(
                            "weft.dev/config-hash".to_string(),
                            config_hash.to_string(),
                        )])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(name.to_string()),
                        security_context: Some(pod_context(CONTROL_PLANE_UID)),
                        containers: vec![container],
                        volumes: Some(vec![Volume {
                            name: "mesh-config".to_string(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: name.to_string(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                        affinity: cp.affinity.clone(),
                        topology_spread_constraints: (!cp.spread.is_empty()).then(|| cp.spread.clone()),
                        node_selector: (!cp.node_selector.is_empty()).then(|| cp.node_selector.clone()),
                        tolerations: (!cp.tolerations.is_empty()).then(|| cp.tolerations.clone()),
                        priority_class_name: cp.priority_class_name.clone(),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn hpa(&self, name: &str) -> Option<HorizontalPodAutoscaler> {
        let h = self.resolved.control_plane.hpa.as_ref()?;
        Some(scaling::autoscaler(self.meta(name, true, "control-plane"), name, h))
    }

    fn pdb(&self, name: &str) -> Option<PodDisruptionBudget> {
        let budget = self.resolved.control_plane.pdb.as_ref()?;
        let selector = LabelSelector {
            match_labels: Some(self.cp_selector()),
            ..Default::default()
        };
        Some(scaling::disruption_budget(
            self.meta(name, true, "control-plane"),
            selector,
            budget,
        ))
    }

    /// Envoy's bootstrap: delta ADS from this revision's control plane at `xds` (host,
    /// port), admin on loopback only. The node metadata names the cluster and network, so a
    /// control plane serving several clusters gives each proxy its own cluster's view.
    fn proxy_bootstrap(&self, name: &str, xds: &(String, u16)) -> Result<ConfigMap, RenderError> {
        let (xds_host, xds_port) = xds;
        let tls = self.resolved.control_plane.external.is_none();
        let mc = &self.resolved.mesh_config;
        let mut metadata = serde_json::json!({
            "REVISION": self.revision(),
            "NAMESPACE": self.ns,
            "ROLE": "node-proxy",
            "MESH": self.mesh,
            "CLUSTER": mc.cluster_name.clone().unwrap_or_default(),
        });
        if let Some(network) = &mc.network {
            metadata["NETWORK"] = serde_json::Value::String(network.clone());
        }
        let mut bootstrap = serde_json::json!({
            "node": {
                "cluster": name,
                "metadata": metadata
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
            "dynamic_resources": {
                // Delta: every node proxy holds every service's load assignment, and a
                // change sends only what changed (state of the world would resend all of
                // them to every node; see the README's node-proxy figures).
                "ads_config": {
                    "api_type": "DELTA_GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]
                },
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"}
            },
            "static_resources": {
                "clusters": [{
                    "name": "xds",
                    "type": "STRICT_DNS",
                    "connect_timeout": "5s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}}
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": xds_host, "port_value": xds_port
                        }}}}]}]
                    }
                }]
            }
        });
        if tls {
            bootstrap["static_resources"]["clusters"][0]["transport_socket"] = agent::xds_transport_socket(xds_host);
        }
        let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| RenderError::Encode {
            kind: "ConfigMap",
            name: name.to_string(),
            message: e.to_string(),
        })?;
        let mut metadata = self.meta(name, true, "proxy");
        if let Some(external) = &self.resolved.control_plane.external {
            metadata.annotations = Some(BTreeMap::from([(
                labels::EXTERNAL_CONTROL_PLANE.to_string(),
                external.address.clone(),
            )]));
        }
        Ok(ConfigMap {
            metadata,
            data: Some(BTreeMap::from([("bootstrap.json".to_string(), text)])),
            ..Default::default()
        })
    }

    /// The node-local Service workloads reach their node's proxy by: `internalTrafficPolicy:
    /// Local` keeps every connection on the caller's node.
    fn proxy_service(&self, name: &str) -> Service {
        let port = |name: &str, port: i32| ServicePort {
            name: Some(name.to_string()),
            port,
            target_port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        };
        Service {
            metadata: self.meta(name, true, "proxy"),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".to_string()),
                selector: Some(self.proxy_selector()),
                internal_traffic_policy: Some("Local".to_string()),
                ports: Some(vec![
                    port("http-outbound", PROXY_OUTBOUND_PORT),
                    port("http-inbound", PROXY_INBOUND_PORT),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Who may reach the node proxies: the mesh's namespaces (see `network_policy.rs`).
    fn proxy_network_policy(&self, name: &str) -> k8s_openapi::api::networking::v1::NetworkPolicy {
        super::network_policy::node_proxy_policy(super::network_policy::ProxyPolicyInput {
            meta: self.meta(name, true, "proxy"),
            pods: self.proxy_selector(),
            mesh_namespace: &self.ns,
            revs: self.mesh_revs(),
            ports: [PROXY_OUTBOUND_PORT, PROXY_INBOUND_PORT],
        })
    }

    fn daemon_set(&self, name: &str, bootstrap_hash: &str) -> Option<DaemonSet> {
        let p = self.resolved.proxy.as_ref()?;
        let image = p
            .image
            .clone()
            .unwrap_or_else(|| self.input.version.images.proxy.clone());
        let level = match p.log_level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Off => "off",
        };
        let container = Container {
            name: "proxy".to_string(),
            image: Some(image),
            args: Some(vec![
                "--config-path".to_string(),
                "/etc/weft/bootstrap.json".to_string(),
                "--service-node".to_string(),
                "$(NODE_NAME)".to_string(),
                "--concurrency".to_string(),
                p.concurrency.to_string(),
                "--log-level".to_string(),
                level.to_string(),
            ]),
            env: Some(vec![EnvVar {
                name: "NODE_NAME".to_string(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "spec.nodeName".to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(container_ports(vec![
                ("http-outbound", PROXY_OUTBOUND_PORT),
                ("http-inbound", PROXY_INBOUND_PORT),
                ("http-ready", PROXY_READY_PORT),
            ])),
            // Ready once Envoy holds the listeners xDS serves it (the readiness listener is
            // one of them), so a new proxy takes traffic only when it can carry it.
            readiness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(ports::NODE_PROXY_READY_PATH.to_string()),
                    port: IntOrString::Int(PROXY_READY_PORT),
                    scheme: Some("HTTP".to_string()),
                    ..Default::default()
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            resources: Some(p.resources.clone()),
            security_context: Some(container_context()),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "bootstrap".to_string(),
                    mount_path: "/etc/weft".to_string(),
                    read_only: Some(true),
                    ..Default::default()
                },
                // Envoy writes its hot-restart and admin files; the root filesystem is read-only.
                VolumeMount {
                    name: "tmp".to_string(),
                    mount_path: "/tmp".to_string(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        // With the control plane here, the agent gives the proxy its identity for the TLS port.
        let (mut container, mut volumes) = (container, super::envoy_volumes(name));
        let init_containers = self.resolved.control_plane.external.is_none().then(|| {
            let cp = control_plane_name(self.revision());
            agent::attach(
                &mut container,
                &mut volumes,
                &self.control_plane_image(),
                &format!("{cp}.{}.svc:{SECURE_XDS_PORT}", self.ns),
            )
        });
        let mut pod_labels = self.labels("proxy", "weft-proxy");
        pod_labels.extend(self.proxy_selector());
        Some(DaemonSet {
            metadata: self.meta(name, true, "proxy"),
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: Some(self.proxy_selector()),
                    ..Default::default()
                },
                update_strategy: Some(DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".to_string()),
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_unavailable: Some(p.max_unavailable.clone()),
                        max_surge: Some(p.max_surge.clone()),
                    }),
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        annotations: Some(BTreeMap::from([(
                            "weft.dev/config-hash".to_string(),
                            bootstrap_hash.to_string(),
                        )])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(name.to_string()),
                        automount_service_account_token: Some(false),
                        security_context: Some(pod_context(PROXY_UID)),
                        init_containers,
                        containers: vec![container],
                        volumes: Some(volumes),
                        node_selector: (!p.node_selector.is_empty()).then(|| p.node_selector.clone()),
                        tolerations: (!p.tolerations.is_empty()).then(|| p.tolerations.clone()),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

/// Named TCP container ports.
fn container_ports(ports: Vec<(&str, i32)>) -> Vec<ContainerPort> {
    ports
        .into_iter()
        .map(|(name, port)| ContainerPort {
            name: Some(name.to_string()),
            container_port: port,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        })
        .collect()
}
