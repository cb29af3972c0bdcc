//! MeshGateway: an ingress, egress or east-west gateway served by a mesh revision.

// kube-derive attribute lists repeat keys such as `type_` by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Autoscaling, DisruptionBudget, bounds, cel};

/// The desired state of a gateway.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshGateway",
    plural = "meshgateways",
    shortname = "mgw",
    category = "weft",
    namespaced,
    status = "MeshGatewayStatus",
    doc = "MeshGateway runs an ingress, egress or east-west gateway for a mesh.",
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("a MeshGateway's name must start with a letter, hold only lowercase letters, digits and '-', and be at most 63 characters: it names the gateway's Service"),
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".status.revision"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Address", type_ = "string", json_path = ".status.addresses[0].value"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.service) || !has(self.service.externalTrafficPolicy) || (has(self.service.type) ? self.service.type != 'ClusterIP' : !(self.type in ['Egress', 'egress']))").message("service.externalTrafficPolicy needs a NodePort or LoadBalancer Service (an egress gateway's Service is ClusterIP unless service.type says otherwise)"))]
#[x_kube(validation = Rule::new("!has(self.network) || self.type in ['EastWest', 'eastwest']").message("network applies to east-west gateways only (type: EastWest)"))]
pub struct MeshGatewaySpec {
    /// The MeshInstall whose control plane serves this gateway.
    #[schemars(length(min = 1, max = 30))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("mesh must name a MeshInstall: a DNS label (lower-case letters, digits and '-') of at most 30 characters"))]
    pub mesh: String,
    /// The revision tag or revision name to follow. The gateway moves to a new revision only
    /// when this tag moves, that is after the new control plane was validated.
    #[serde(default = "default_revision")]
    #[schemars(default = "default_revision", length(min = 1, max = 52))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("revision must be a tag or revision name (a DNS label)"))]
    pub revision: String,
    /// What the gateway is for.
    #[serde(default, rename = "type")]
    pub type_: GatewayType,
    /// Replicas when autoscaling is off (also settable with `kubectl scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// A HorizontalPodAutoscaler on CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// A PodDisruptionBudget for the gateway pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<DisruptionBudget>,
    /// The gateway's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<GatewayService>,
    /// CPU and memory requests and limits of the gateway container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::resources)]
    #[x_kube(validation = Rule::new(cel::QUANTITIES).message(cel::QUANTITIES_MESSAGE))]
    #[x_kube(validation = Rule::new(cel::REQUEST_LE_LIMIT).message(cel::REQUEST_LE_LIMIT_MESSAGE))]
    pub resources: Option<ResourceRequirements>,
    /// Pod affinity rules (default: prefer one pod per host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How pods spread across failure domains (default: across zones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Nodes the pods may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::labels)]
    #[x_kube(validation = Rule::new(cel::KEYS).message("nodeSelector: every key must be a label key: an optional DNS-subdomain prefix and '/' (such as example.com/), then a name of at most 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit"))]
    #[x_kube(validation = Rule::new(cel::LABEL_VALUES).message("nodeSelector: every value must be a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    #[schemars(transform = bounds::tolerations)]
    #[x_kube(validation = Rule::new(cel::TOLERATION_OPERATORS).message(cel::TOLERATION_OPERATORS_MESSAGE))]
    #[x_kube(validation = Rule::new(cel::TOLERATION_VALUES).message(cel::TOLERATION_VALUES_MESSAGE))]
    #[x_kube(validation = Rule::new(cel::TOLERATION_SECONDS).message(cel::TOLERATION_SECONDS_MESSAGE))]
    pub tolerations: Option<Vec<Toleration>>,
    /// The network an east-west gateway leads into (default: the MeshInstall's
    /// `meshConfig.network`). Its Service is labelled `topology.weft.dev/network` with it, which
    /// is how control planes find the gateways of each network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')").message("network must be a label value: letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most 63 characters"))]
    pub network: Option<String>,
}

fn default_revision() -> String {
    "default".to_string()
}

impl MeshGatewaySpec {
    /// The ports the gateway listens on: the Service's, or the type's default (`http` 80
    /// for ingress and egress, `tls` 15443 for east-west).
    pub fn ports(&self) -> Vec<GatewayPort> {
        if let Some(ports) = self.service.as_ref().and_then(|s| s.ports.clone()) {
            return ports;
        }
        let (name, port) = match self.type_ {
            GatewayType::Ingress | GatewayType::Egress => ("http", 80),
            GatewayType::EastWest => ("tls", 15443),
        };
        vec![GatewayPort {
            name: name.to_string(),
            port,
            target_port: None,
        }]
    }
}

impl GatewayPort {
    /// The port the gateway container listens on. Ports below 1024 need privileges that Pod
    /// Security "restricted" forbids, so they map to `port + 8000` unless `targetPort` says.
    pub fn container_port(&self) -> i32 {
        self.target_port
            .unwrap_or(if self.port < 1024 { self.port + 8000 } else { self.port })
    }
}

/// Gateway roles: `Ingress`, `Egress`, `EastWest` (the lowercase spellings of earlier
/// versions are accepted too).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GatewayType {
    /// Traffic entering the mesh.
    #[default]
    #[serde(alias = "ingress")]
    Ingress,
    /// Traffic leaving the mesh.
    #[serde(alias = "egress")]
    Egress,
    /// Traffic between clusters of a multi-network mesh.
    #[serde(alias = "eastwest")]
    EastWest,
}

super::common::string_enum_schema!(
    GatewayType,
    "GatewayType",
    ["Ingress", "Egress", "EastWest", "ingress", "egress", "eastwest"]
);

/// The gateway's Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayService {
    /// The Service type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// The ports the gateway listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["port".into()]))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))").message("service.ports: every port needs a name of its own"))]
    #[schemars(length(min = 1, max = 64))]
    pub ports: Option<Vec<GatewayPort>>,
    /// Annotations for the Service (for example a cloud load balancer's settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new(cel::KEYS).message("service.annotations: every key must be an annotation key: an optional DNS-subdomain prefix and '/' (such as service.beta.kubernetes.io/), then a name of at most 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit"))]
    pub annotations: Option<BTreeMap<String, String>>,
    /// `Cluster` or `Local`, for LoadBalancer and NodePort Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<ExternalTrafficPolicy>,
}

/// Service types a gateway can have.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ServiceType {
    /// A cluster-internal address.
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// An external load balancer.
    LoadBalancer,
}

/// External traffic policies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ExternalTrafficPolicy {
    /// Spread over all nodes.
    Cluster,
    /// Only to nodes with a gateway pod, keeping the client address.
    Local,
}

/// A gateway port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPort {
    /// The port's name (an IANA service name: lowercase letters, digits and `-`; HTTPRoutes
    /// pick it with `sectionName`).
    #[schemars(length(min = 1, max = 15))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && self.matches('[a-z]')").message("a port name holds lowercase letters, digits and '-', with at least one letter (for example http or http-alt)"))]
    pub name: String,
    /// The Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The container port; ports below 1024 map to port + 8000 by default, so the gateway
    /// runs without privileges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub target_port: Option<i32>,
}

/// What the operator observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshGatewayStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled, kstatus-style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The revision the gateway's tag resolves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Current replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The label selector of the gateway's pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Addresses from the Service's load-balancer status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub addresses: Vec<GatewayAddress>,
}

/// One address of a gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The address.
    pub value: String,
}
