//! The objects of one MeshGateway: identity, Envoy bootstrap, Service, Deployment,
//! autoscaler and disruption budget. Everything is named after the gateway and owned by it,
//! so deleting the gateway lets the garbage collector remove the rest.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSpec,
    PodTemplateSpec, Probe, Service, ServiceAccount, ServicePort, ServiceSpec, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::labels;
use crate::api::mesh_gateway::{
    ExternalTrafficPolicy, GatewayPort, GatewayType, MeshGateway, MeshGatewaySpec, ServiceType,
};
use crate::versions::MeshVersion;

use super::revision::{SECURE_XDS_PORT, control_plane_name};
use super::security::{container_context, pod_context};
use super::{Manifest, OwnedKind, RenderError, fnv1a, scaling};
use super::{agent, profile};

/// Envoy's admin port, bound to loopback only.
pub const ADMIN_PORT: i32 = 15000;
/// The health port: `/healthz/ready` answers once Envoy has its first configuration.
pub const HEALTH_PORT: i32 = 15021;
/// The label on an east-west gateway's Service naming the network behind it: how discovery
/// (`xds::network`) finds each network's gateways.
pub const NETWORK_LABEL: &str = "topology.weft.dev/network";
/// The user Envoy's image runs as.
const PROXY_UID: i64 = 101;

/// What one gateway is rendered from.
#[derive(Clone, Debug)]
pub struct GatewayInput<'a> {
    /// The MeshGateway (name, namespace, uid and spec).
    pub gateway: &'a MeshGateway,
    /// The MeshInstall it belongs to.
    pub mesh: &'a str,
    /// The revision its tag resolves to.
    pub revision: &'a str,
    /// The namespace of that revision's control plane.
    pub control_plane_namespace: &'a str,
    /// The control plane's host and xDS port when it runs in another cluster
    /// (primary-remote); else the revision's Service in `control_plane_namespace`.
    pub external_control_plane: Option<(String, u16)>,
    /// The mesh's name for this cluster (node metadata `CLUSTER`).
    pub cluster: &'a str,
    /// The version that revision runs (for the proxy image).
    pub version: &'a MeshVersion,
    /// The mesh's network (its meshConfig's): an east-west gateway's network when its spec
    /// names none.
    pub mesh_network: Option<&'a str>,
}

/// The name of a gateway's bootstrap ConfigMap.
pub fn bootstrap_name(gateway: &str) -> String {
    format!("{gateway}-bootstrap")
}

/// The label selector of a gateway's pods, as `status.selector` and the scale subresource
/// report it.
pub fn selector_string(gateway: &str) -> String {
    labels::gateway_selector(gateway)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks what admission cannot: that the ports the container binds are distinct and leave
/// Envoy's own ports alone.
pub fn validate_ports(ports: &[GatewayPort]) -> Result<(), RenderError> {
    let mut seen: BTreeMap<i32, &str> = BTreeMap::new();
    for p in ports {
        let target = p.container_port();
        if target == ADMIN_PORT || target == HEALTH_PORT {
            return Err(RenderError::Invalid(format!(
                "service port {} ({}) maps to container port {target}, which the gateway uses itself ({ADMIN_PORT} admin, {HEALTH_PORT} health); set another targetPort",
                p.name, p.port
            )));
        }
        if let Some(other) = seen.insert(target, &p.name) {
            return Err(RenderError::Invalid(format!(
                "service ports {other} and {} both map to container port {target}; give one of them another targetPort",
                p.name
            )));
        }
    }
    Ok(())
}

/// Checks that an east-west gateway's network (the mesh's, when its spec names none:
/// admission checks the spec's) can be a label value, which the Service carries.
fn check_network(input: &GatewayInput) -> Result<(), RenderError> {
    let spec = &input.gateway.spec;
    if spec.type_ != GatewayType::EastWest || spec.network.is_some() {
        return Ok(());
    }
    let Some(network) = input.mesh_network.filter(|n| !n.is_empty()) else {
        return Ok(());
    };
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let valid = network.len() <= 63
        && edge_ok(network.chars().next())
        && edge_ok(network.chars().last())
        && network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        return Ok(());
    }
    Err(RenderError::Invalid(format!(
        "the MeshInstall's meshConfig.network {network:?} is not a label value (letters, digits, '-', '_' and '.', at most 63 characters), and this east-west gateway's Service is labelled with it; set spec.network or fix the MeshInstall's"
    )))
}

/// The fewest pods the gateway runs: its autoscaler's `minReplicas`, or 0 without one (then
/// `spec.replicas` alone says how many).
pub fn replica_floor(spec: &MeshGatewaySpec) -> i32 {
    let hpa = profile::resolve_hpa(spec.autoscaling.as_ref(), spec.autoscaling.is_some(), None, "spec", "");
    hpa.ok().flatten().map_or(0, |h| h.min)
}

/// Renders every object of one gateway, in apply order.
pub fn render_gateway(input: &GatewayInput) -> Result<Vec<Manifest>, RenderError> {
    let gw = input.gateway;
    let spec = &gw.spec;
    let name = gw.metadata.name.clone().unwrap_or_default();
    let ports = spec.ports();
    validate_ports(&ports)?;
    let hpa = profile::resolve_hpa(
        spec.autoscaling.as_ref(),
        spec.autoscaling.is_some(),
        None,
        "spec",
        "the default of 5",
    )?;
    check_network(input)?;
    let replicas = spec.replicas.unwrap_or(1);
    let floor = hpa.as_ref().map_or(replicas, |h| h.min);
    let r = Renderer {
        input,
        name: name.clone(),
        ns: gw.metadata.namespace.clone().unwrap_or_default(),
        ports,
    };
    let bootstrap = r.bootstrap()?;
    let hash = fnv1a(&serde_json::to_string(&bootstrap.data).unwrap_or_default());
    let mut out = vec![
        Manifest::new(OwnedKind::ServiceAccount, &r.account())?,
        Manifest::new(OwnedKind::ConfigMap, &bootstrap)?,
        Manifest::new(OwnedKind::Service, &r.service())?,
        Manifest::new(
            OwnedKind::Deployment,
            &r.deployment(&hash, hpa.is_none().then_some(replicas)),
        )?
        .starting_with(hpa.as_ref().map(|h| h.min)),
    ];
    if let Some(h) = &hpa {
        out.push(Manifest::new(
            OwnedKind::HorizontalPodAutoscaler,
            &scaling::autoscaler(r.meta(&name), &name, h),
        )?);
    }
    if let Some(b) = profile::resolve_budget(spec.pod_disruption_budget.as_ref(), floor, None) {
        out.push(Manifest::new(
            OwnedKind::PodDisruptionBudget,
            &scaling::disruption_budget(r.meta(&name), r.selector(), &b),
        )?);
    }
    Ok(out)
}

struct Renderer<'a> {
    input: &'a GatewayInput<'a>,
    name: String,
    ns: String,
    ports: Vec<GatewayPort>,
}

impl Renderer<'_> {
    fn owner(&self) -> OwnerReference {
        OwnerReference {
            api_version: "weft.dev/v1alpha1".to_string(),
            kind: "MeshGateway".to_string(),
            name: self.name.clone(),
            uid: self.input.gateway.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        let mut l = labels::revision_labels(self.input.mesh, self.input.revision);
        l.extend(labels::gateway_selector(&self.name));
        l.insert(labels::NAME.to_string(), self.name.clone());
        l.insert(labels::INSTANCE.to_string(), self.name.clone());
        l.insert(labels::VERSION.to_string(), self.input.version.version.to_string());
        l
    }

    /// The network an east-west gateway leads into: its spec's, else the mesh's. `None` for
    /// other gateways, and for an east-west gateway of a mesh that names no network (then
    /// discovery does not see it as a network's gateway).
    fn network(&self) -> Option<String> {
        let spec = &self.input.gateway.spec;
        // A mesh network that is no label value stops rendering (check_network).
        if spec.type_ != GatewayType::EastWest {
            return None;
        }
        spec.network
            .clone()
            .or_else(|| self.input.mesh_network.map(str::to_string))
            .filter(|n| !n.is_empty())
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.ns.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner()]),
            ..Default::default()
        }
    }

    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels::gateway_selector(&self.name)),
            ..Default::default()
        }
    }

    fn account(&self) -> ServiceAccount {
        // The gateway gets everything from xDS; it never talks to the API server.
        ServiceAccount {
            metadata: self.meta(&self.name),
            automount_service_account_token: Some(false),
            ..Default::default()
        }
    }

    /// What the gateway's pods tell the control plane about themselves.
    fn node_metadata(&self) -> serde_json::Value {
        let mut metadata = serde_json::json!({
            "REVISION": self.input.revision,
            "NAMESPACE": self.ns,
            "ROLE": "gateway",
            "GATEWAY": self.name,
            "MESH": self.input.mesh,
            "CLUSTER": self.input.cluster,
        });
        // Split-horizon EDS: an east-west gateway sees only its network's endpoints, any
        // other gateway what a client on the mesh's network sees.
        let network = self
            .network()
            .or_else(|| self.input.mesh_network.filter(|n| !n.is_empty()).map(str::to_string));
        if let Some(network) = network {
            metadata["NETWORK"] = serde_json::Value::String(network);
        }
        metadata
    }

    /// Envoy's bootstrap: ADS from the resolved revision's control plane, admin on
    /// loopback, and a health listener that forwards `/healthz/ready` to admin `/ready`
    /// (ready once the first listeners and clusters arrived).
    fn bootstrap(&self) -> Result<ConfigMap, RenderError> {
        // Here: the TLS port, with the agent's certificate. Elsewhere (primary-remote):
        // plaintext, until remote workloads can get certificates from the primary.
        let tls = self.input.external_control_plane.is_none();
        let (xds_host, xds_port) = self
            .input
            .external_control_plane
            .clone()
            .unwrap_or_else(|| (self.control_plane_host(), SECURE_XDS_PORT as u16));
        let socket =
            |address: &str, port: i32| serde_json::json!({"socket_address": {"address": address, "port_value": port}});
        let static_cluster = |name: &str, address: serde_json::Value, http2: bool| {
            let mut c = serde_json::json!({
                "name": name,
                "type": if http2 { "STRICT_DNS" } else { "STATIC" },
                "connect_timeout": "5s",
                "load_assignment": {
                    "cluster_name": name,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]
                }
            });
            if http2 {
                c["typed_extension_protocol_options"] = serde_json::json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                });
            }
            c
        };
        let health_listener = serde_json::json!({
            "name": "health",
            "address": socket("0.0.0.0", HEALTH_PORT),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "health",
                    "route_config": {"virtual_hosts": [{
                        "name": "health",
                        "domains": ["*"],
                        "routes": [{
                            "match": {"path": "/healthz/ready"},
                            "route": {"cluster": "admin", "prefix_rewrite": "/ready"}
                        }]
                    }]},
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                    }]
                }
            }]}]
        });
        let mut bootstrap = serde_json::json!({
            "node": {
                "cluster": format!("{}.{}", self.name, self.ns),
                "metadata": self.node_metadata(),
            },
            "admin": {"address": socket("127.0.0.1", ADMIN_PORT)},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]
                },
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"}
            },
            "static_resources": {
                "listeners": [health_listener],
                "clusters": [
                    static_cluster("xds", socket(&xds_host, i32::from(xds_port)), true),
                    static_cluster("admin", socket("127.0.0.1", ADMIN_PORT), false),
                ]
            }
        });
        if tls {
            bootstrap["static_resources"]["clusters"][0]["transport_socket"] = agent::xds_transport_socket(&xds_host);
        }
        let text = serde_json::to_string_pretty(&bootstrap).map_err(|e| RenderError::Encode {
            kind: "ConfigMap",
            name: bootstrap_name(&self.name),
            message: e.to_string(),
        })?;
        Ok(ConfigMap {
            metadata: self.meta(&bootstrap_name(&self.name)),
            data: Some(BTreeMap::from([("bootstrap.json".to_string(), text)])),
            ..Default::default()
        })
    }

    fn service(&self) -> Service {
        let spec = &self.input.gateway.spec;
        let svc = spec.service.clone().unwrap_or_default();
        let type_ = svc.type_.unwrap_or(match spec.type_ {
            GatewayType::Ingress | GatewayType::EastWest => ServiceType::LoadBalancer,
            GatewayType::Egress => ServiceType::ClusterIP,
        });
        let mut meta = self.meta(&self.name);
        meta.annotations = svc.annotations.clone().filter(|a| !a.is_empty());
        // Discovery finds a network's east-west gateways by this label (xds::network).
        if let (Some(network), Some(l)) = (self.network(), meta.labels.as_mut()) {
            l.insert(NETWORK_LABEL.to_string(), network);
        }
        Service {
            metadata: meta,
            spec: Some(ServiceSpec {
                type_: Some(
                    match type_ {
                        ServiceType::ClusterIP => "ClusterIP",
                        ServiceType::NodePort => "NodePort",
                        ServiceType::LoadBalancer => "LoadBalancer",
                    }
                    .to_string(),
                ),
                selector: Some(labels::gateway_selector(&self.name)),
                ports: Some(
                    self.ports
                        .iter()
                        .map(|p| ServicePort {
                            name: Some(p.name.clone()),
                            port: p.port,
                            target_port: Some(IntOrString::Int(p.container_port())),
                            protocol: Some("TCP".to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                external_traffic_policy: svc.external_traffic_policy.map(|p| {
                    match p {
                        ExternalTrafficPolicy::Cluster => "Cluster",
                        ExternalTrafficPolicy::Local => "Local",
                    }
                    .to_string()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The revision's control plane Service, by the name its certificate carries.
    fn control_plane_host(&self) -> String {
        format!(
            "{}.{}.svc",
            control_plane_name(self.input.revision),
            self.input.control_plane_namespace
        )
    }

    fn deployment(&self, bootstrap_hash: &str, replicas: Option<i32>) -> Deployment {
        let spec = &self.input.gateway.spec;
        let pod_labels = labels::gateway_selector(&self.name);
        let affinity = spec
            .affinity
            .clone()
            .or_else(|| Some(profile::preferred_host_anti_affinity(&pod_labels)));
        let spread = spec
            .topology_spread_constraints
            .clone()
            .unwrap_or_else(|| vec![profile::zone_spread(&pod_labels)]);
        // Surge first so ready capacity never drops below the replica count (and so never
        // below the disruption budget); with one pod per host a surge pod may have nowhere
        // to go, so then replace one at a time.
        let (surge, unavailable) = if profile::hard_anti_affinity(affinity.as_ref()) {
            (0, 1)
        } else {
            (1, 0)
        };
        let mut ports: Vec<ContainerPort> = self
            .ports
            .iter()
            .map(|p| ContainerPort {
                name: Some(p.name.clone()),
                container_port: p.container_port(),
                protocol: Some("TCP".to_string()),
                ..Default::default()
            })
            .collect();
        ports.push(ContainerPort {
            container_port: HEALTH_PORT,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        });
        let container = Container {
            name: "gateway".to_string(),
            image: Some(self.input.version.images.proxy.clone()),
            args: Some(vec![
                "--config-path".to_string(),
                "/etc/weft/bootstrap.json".to_string(),
                "--service-node".to_string(),
                "$(POD_NAME)".to_string(),
                "--log-level".to_string(),
                "info".to_string(),
            ]),
            env: Some(vec![EnvVar {
                name: "POD_NAME".to_string(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(ports),
            readiness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    path: Some("/healthz/ready".to_string()),
                    port: IntOrString::Int(HEALTH_PORT),
                    scheme: Some("HTTP".to_string()),
                    ..Default::default()
                }),
                period_seconds: Some(5),
                ..Default::default()
            }),
            resources: Some(
                spec.resources
                    .clone()
                    .unwrap_or_else(|| profile::resources("100m", "128Mi", "1Gi")),
            ),
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
        // With the control plane in this cluster, the agent gives the gateway its identity.
        let (mut container, mut volumes) = (container, super::envoy_volumes(&bootstrap_name(&self.name)));
        let init_containers = self.input.external_control_plane.is_none().then(|| {
            agent::attach(
                &mut container,
                &mut volumes,
                &self.input.version.images.control_plane,
                &format!("{}:{SECURE_XDS_PORT}", self.control_plane_host()),
            )
        });
        Deployment {
            metadata: self.meta(&self.name),
            spec: Some(DeploymentSpec {
                replicas,
                selector: self.selector(),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".to_string()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::Int(surge)),
                        max_unavailable: Some(IntOrString::Int(unavailable)),
                    }),
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.labels()),
                        annotations: Some(BTreeMap::from([(
                            "weft.dev/config-hash".to_string(),
                            bootstrap_hash.to_string(),
                        )])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(self.name.clone()),
                        automount_service_account_token: Some(false),
                        security_context: Some(pod_context(PROXY_UID)),
                        init_containers,
                        containers: vec![container],
                        volumes: Some(volumes),
                        affinity,
                        topology_spread_constraints: (!spread.is_empty()).then_some(spread),
                        node_selector: spec.node_selector.clone().filter(|n| !n.is_empty()),
                        tolerations: spec.tolerations.clone().filter(|t| !t.is_empty()),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
