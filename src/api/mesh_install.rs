//! MeshInstall: one mesh control plane, installed as one or more revisions.

// kube-derive attribute lists repeat keys such as `type_` by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Autoscaling, DisruptionBudget, bounds, cel};
use super::security::{Security, SecurityStatus};

/// The namespace the control plane runs in unless `spec.namespace` says otherwise.
pub const DEFAULT_NAMESPACE: &str = "weft-system";

/// Why a mesh may not run in `default` or a `kube-*` namespace.
const SYSTEM_NAMESPACE_MESSAGE: &str = "namespace must not be default or a kube-* system namespace: the control plane may read every Secret in its namespace and can run an overridden image, so it needs a namespace of its own (the default is weft-system)";

/// Why a node selector was refused: its keys.
const NODE_SELECTOR_KEYS: &str = "nodeSelector: every key must be a label key: an optional DNS-subdomain prefix and '/' (such as example.com/), then a name of at most 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit";

/// Why a node selector was refused: its values.
const NODE_SELECTOR_VALUES: &str = "nodeSelector: every value must be a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit";

/// Why a discovery selector was refused: its keys or values.
const SELECTOR_LABELS_MESSAGE: &str = "discoverySelectors: keys must be label keys (an optional DNS-subdomain prefix and '/', then a name of at most 63 letters, digits, '-', '_' or '.') and values label values (at most 63 such characters, starting and ending with a letter or digit)";

/// The longest MeshInstall name: with a version of at most `MAX_VERSION` characters, the
/// revision `<name>-v<version>` stays within `MAX_REVISION_NAME`.
pub const MAX_MESH_NAME: usize = 30;

/// The longest `spec.version`.
pub const MAX_VERSION: usize = 20;

/// Longest revision name: object names such as `weft-proxy-<revision>` must stay within 63
/// characters (DNS labels), and `weft-proxy-` takes 11 of them.
pub const MAX_REVISION_NAME: usize = 52;

/// The desired state of a mesh control plane.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "MeshInstall",
    plural = "meshinstalls",
    shortname = "mi",
    category = "weft",
    status = "MeshInstallStatus",
    doc = "MeshInstall installs and upgrades one service-mesh control plane and its node proxies.",
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Active Revision", type_ = "string", json_path = ".status.activeRevision"),
    printcolumn(name = "Revisions", type_ = "integer", json_path = ".status.summary.revisions"),
    printcolumn(name = "In Use", type_ = "integer", json_path = ".status.summary.inUse"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("the MeshInstall name must be a DNS label: lower-case letters, digits and '-'"),
    // New MeshInstalls: at most 30. One created before that limit keeps its name as long
    // as its revision name still fits (the rule it was admitted under).
    validation = Rule::new("size(self.metadata.name) <= 30 || (oldSelf.hasValue() && size(self.metadata.name) <= 52 && (!has(self.spec.updateStrategy) || !has(self.spec.updateStrategy.type) || self.spec.updateStrategy.type != 'RevisionBased' || size(self.metadata.name) + size(self.spec.version) + 2 <= 52))").optional_old_self(true).message("the MeshInstall name must be at most 30 characters: revisions are named <name>-v<version> (a version is at most 20 characters), and a revision name must fit in 52 so that it is a valid label value and object names such as weft-proxy-<revision> stay within 63"),
)]
#[serde(rename_all = "camelCase")]
pub struct MeshInstallSpec {
    /// The mesh version to run, as a semantic version such as `1.1.0`. It must be one the
    /// operator supports (`weft versions`); otherwise the MeshInstall is Stalled and nothing
    /// already running is touched.
    #[x_kube(validation = Rule::new("self.matches('^(0|[1-9][0-9]*)\\\\.(0|[1-9][0-9]*)\\\\.(0|[1-9][0-9]*)(-[0-9a-z]+([.-][0-9a-z]+)*)?$')").message("version must be a semantic version such as 1.2.3 (a lower-case pre-release such as 1.2.3-rc.1 is allowed)"))]
    #[schemars(length(max = 20))]
    pub version: String,

    /// Built-in defaults to start from: `default`, `minimal`, `demo` or `ha`. Every field set
    /// in this spec overrides the profile's value.
    #[serde(default)]
    pub profile: Profile,

    /// The namespace the control plane runs in. Created if absent, never deleted. Immutable.
    #[serde(default = "default_namespace")]
    #[schemars(default = "default_namespace", length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("namespace is immutable: create a new MeshInstall to run a control plane elsewhere"))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("namespace must be a DNS label: lower-case letters, digits and '-'"))]
    #[x_kube(validation = Rule::new("self != 'default' && !self.startsWith('kube-')").message(SYSTEM_NAMESPACE_MESSAGE))]
    pub namespace: String,

    /// How a change of `version` is rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,

    /// Revision tags: stable names that namespaces and gateways use (`weft.dev/rev=<tag>`)
    /// while the operator moves them between revisions. A tag named `default` always exists
    /// and tracks the active revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 32))]
    pub revision_tags: Option<Vec<RevisionTag>>,

    /// The control-plane Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlane>,

    /// The node-proxy DaemonSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,

    /// Mesh-wide settings handed to the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_config: Option<MeshConfig>,

    /// The mesh's certificate authority and workload certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<Security>,
}

/// The trust domain unless `meshConfig.trustDomain` names one (Istio's default too).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

impl MeshInstallSpec {
    /// The trust domain of the mesh's workload identities.
    pub fn trust_domain(&self) -> String {
        self.mesh_config
            .as_ref()
            .and_then(|m| m.trust_domain.clone())
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string())
    }
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

/// A set of built-in defaults: `Default`, `Minimal`, `Demo`, `HA` (the lowercase spellings
/// of earlier versions are accepted too).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Profile {
    /// One control-plane replica with modest resources, node proxies on every node.
    #[default]
    #[serde(alias = "default")]
    Default,
    /// The control plane only: no node proxies.
    #[serde(alias = "minimal")]
    Minimal,
    /// Small resources and verbose access logs, for trying the mesh out.
    #[serde(alias = "demo")]
    Demo,
    /// Highly available: at least 3 replicas across hosts and zones, a PDB and an HPA.
    #[serde(rename = "HA", alias = "ha")]
    Ha,
}

super::common::string_enum_schema!(
    Profile,
    "Profile",
    ["Default", "Minimal", "Demo", "HA", "default", "minimal", "demo", "ha"]
);

/// How version changes are rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// `InPlace` updates the single revision (named after the MeshInstall) in place;
    /// `RevisionBased` installs each version as its own revision beside the old one and
    /// promotes it when it is healthy.
    #[serde(default, rename = "type")]
    pub type_: UpdateStrategyType,

    /// How long, in seconds, a revision that is no longer active, targeted or in use is kept
    /// before it is deleted.
    #[serde(default = "default_grace", skip_serializing_if = "Option::is_none")]
    #[schemars(default = "default_grace", range(min = 0))]
    pub inactive_revision_deletion_grace_period_seconds: Option<i64>,

    /// When a new revision becomes the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
}

fn default_grace() -> Option<i64> {
    Some(30)
}

/// The update strategies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum UpdateStrategyType {
    /// One revision, updated in place.
    #[default]
    InPlace,
    /// One revision per version, installed side by side and promoted when healthy.
    RevisionBased,
}

/// Health gates for promoting a new revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// How long, in seconds, a new revision must stay Ready before it becomes active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: Option<i64>,
    /// How long, in seconds, a new revision may take to become Ready before the upgrade is
    /// held and reported as Stalled (reason RevisionFailed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i64>,
}

/// A revision tag.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.name != 'default' || !has(self.target) || self.target == 'Active'").message("the default tag always tracks the active revision; give other targets another tag name"))]
pub struct RevisionTag {
    /// The tag's name, used as the value of the namespace label `weft.dev/rev`.
    #[schemars(length(min = 1, max = 52))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("tag names must be DNS labels: lower-case letters, digits and '-'"))]
    pub name: String,
    /// What the tag points at: `Active` (the default), `Latest` (the newest revision once it is
    /// Ready), or the name of a revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 52))]
    #[x_kube(validation = Rule::new("self == 'Active' || self == 'Latest' || self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("target must be Active, Latest or a revision name (a DNS label)"))]
    pub target: Option<String>,
}

/// The control-plane Deployment of each revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.plaintextXds) || self.plaintextXds || !has(self.external)").message("controlPlane.plaintextXds concerns a control plane installed here; with controlPlane.external none is"))]
pub struct ControlPlane {
    /// Replicas when autoscaling is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// CPU and memory requests and limits of the control-plane container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::resources)]
    #[x_kube(validation = Rule::new(cel::QUANTITIES).message(cel::QUANTITIES_MESSAGE))]
    #[x_kube(validation = Rule::new(cel::REQUEST_LE_LIMIT).message(cel::REQUEST_LE_LIMIT_MESSAGE))]
    pub resources: Option<ResourceRequirements>,
    /// A HorizontalPodAutoscaler on CPU; when enabled the Deployment leaves `replicas` to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// A PodDisruptionBudget for the control-plane pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_disruption_budget: Option<DisruptionBudget>,
    /// Pod affinity rules (the `ha` profile requires one pod per host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Nodes the pods may run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::labels)]
    #[x_kube(validation = Rule::new(cel::KEYS).message(NODE_SELECTOR_KEYS))]
    #[x_kube(validation = Rule::new(cel::LABEL_VALUES).message(NODE_SELECTOR_VALUES))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    #[schemars(transform = bounds::tolerations)]
    #[x_kube(validation = Rule::new(cel::TOLERATION_OPERATORS).message(cel::TOLERATION_OPERATORS_MESSAGE))]
    #[x_kube(validation = Rule::new(cel::TOLERATION_VALUES).message(cel::TOLERATION_VALUES_MESSAGE))]
    #[x_kube(validation = Rule::new(cel::TOLERATION_SECONDS).message(cel::TOLERATION_SECONDS_MESSAGE))]
    pub tolerations: Option<Vec<Toleration>>,
    /// How pods spread across failure domains (the `ha` profile spreads across zones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// The pods' PriorityClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(cel::DNS_SUBDOMAIN).message("priorityClassName must name a PriorityClass: a DNS subdomain (lower-case letters, digits, '-' and '.')"))]
    pub priority_class_name: Option<String>,
    /// An image to run instead of the one the version table names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(cel::IMAGE).message(cel::IMAGE_MESSAGE))]
    pub image: Option<String>,
    /// Use a control plane that runs in another cluster (primary-remote): no control plane
    /// is installed here, and this revision's node proxies and gateways get their
    /// configuration from `address`. The primary needs a RemoteCluster for this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalControlPlane>,
    /// Serve xDS in plaintext on port 15010 too (default true, for clients that predate
    /// the TLS port). With `false` only the TLS port (15012) serves, where every client is
    /// authenticated; node proxies and gateways always use it. Remote clusters of a
    /// primary-remote mesh still need it until their workloads get certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_xds: Option<bool>,
}

/// The local cluster's name in the mesh when `meshConfig.clusterName` names none (Istio's
/// default too).
pub const DEFAULT_CLUSTER_NAME: &str = "Kubernetes";

/// A control plane outside this cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalControlPlane {
    /// Where its xDS (ADS) port is reached from this cluster's nodes, as `host:port`, such as
    /// the primary's east-west gateway.
    #[schemars(length(min = 3, max = 260))]
    #[x_kube(validation = Rule::new(cel::HOST_PORT).message("external.address must be host:port (a DNS name or IPv4 address, or [IPv6], then ':' and a port from 1 to 65535), such as eastwest.primary.example.com:15443"))]
    pub address: String,
}

impl ExternalControlPlane {
    /// The host and port of `address` (the schema guarantees both).
    pub fn host_port(&self) -> (String, u16) {
        let (host, port) = self.address.rsplit_once(':').unwrap_or((&self.address, "15010"));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (host.to_string(), port.parse().unwrap_or(15010))
    }
}

/// The node-proxy DaemonSet of each revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Proxy {
    /// Whether node proxies run (the `minimal` profile turns them off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// An image to run instead of the one the version table names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(cel::IMAGE).message(cel::IMAGE_MESSAGE))]
    pub image: Option<String>,
    /// CPU and memory requests and limits of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::resources)]
    #[x_kube(validation = Rule::new(cel::QUANTITIES).message(cel::QUANTITIES_MESSAGE))]
    #[x_kube(validation = Rule::new(cel::REQUEST_LE_LIMIT).message(cel::REQUEST_LE_LIMIT_MESSAGE))]
    pub resources: Option<ResourceRequirements>,
    /// Worker threads per proxy (0: one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub concurrency: Option<i32>,
    /// The proxy's log level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
    /// How node proxies are replaced during an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<ProxyUpdateStrategy>,
    /// Nodes the proxies run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::labels)]
    #[x_kube(validation = Rule::new(cel::KEYS).message(NODE_SELECTOR_KEYS))]
    #[x_kube(validation = Rule::new(cel::LABEL_VALUES).message(NODE_SELECTOR_VALUES))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the proxies tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    #[schemars(transform = bounds::tolerations)]
    #[x_kube(validation = Rule::new(cel::TOLERATION_OPERATORS).message(cel::TOLERATION_OPERATORS_MESSAGE))]
    #[x_kube(validation = Rule::new(cel::TOLERATION_VALUES).message(cel::TOLERATION_VALUES_MESSAGE))]
    #[x_kube(validation = Rule::new(cel::TOLERATION_SECONDS).message(cel::TOLERATION_SECONDS_MESSAGE))]
    pub tolerations: Option<Vec<Toleration>>,
}

/// Proxy log levels: `Trace`, `Debug`, `Info`, `Warning`, `Error`, `Off` (the lowercase
/// spellings of earlier versions are accepted too).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Everything.
    #[serde(alias = "trace")]
    Trace,
    /// Debugging detail.
    #[serde(alias = "debug")]
    Debug,
    /// Normal operation.
    #[serde(alias = "info")]
    Info,
    /// Problems only.
    #[serde(alias = "warning")]
    Warning,
    /// Errors only.
    #[serde(alias = "error")]
    Error,
    /// Nothing.
    #[serde(alias = "off")]
    Off,
}

super::common::string_enum_schema!(
    LogLevel,
    "LogLevel",
    [
        "Trace", "Debug", "Info", "Warning", "Error", "Off", "trace", "debug", "info", "warning", "error", "off"
    ]
);

/// How node proxies are replaced during an update. Workloads reach the proxy on their own
/// node, so by default a new proxy starts beside the old one before it goes (`maxSurge: 1,
/// maxUnavailable: 0`) and no node is ever without one. A DaemonSet takes one of the two
/// above 0, not both: setting only one sets the other to 0 (or, for `maxSurge: 0`,
/// `maxUnavailable` to 1).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maxSurge) || !has(self.maxUnavailable) || ((type(self.maxSurge) == int ? self.maxSurge == 0 : self.maxSurge == '0%') != (type(self.maxUnavailable) == int ? self.maxUnavailable == 0 : self.maxUnavailable == '0%'))").message("proxy.updateStrategy: one of maxSurge and maxUnavailable must be 0 and the other above 0 (a DaemonSet either starts the new proxy beside the old one or takes nodes down, not both; with both 0 no node proxy could ever be replaced)"))]
pub struct ProxyUpdateStrategy {
    /// How many nodes (a number or a percentage) may be without a ready proxy during an
    /// update (default 0; 1 when `maxSurge` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 0 : self.matches('^(100|[1-9]?[0-9])%$')").message("proxy.updateStrategy.maxUnavailable must be a number from 0, or a percentage from 0% to 100%"))]
    pub max_unavailable: Option<IntOrString>,
    /// How many nodes (a number or a percentage) may run a new proxy beside the old one
    /// during an update (default 1, and 0 when only `maxUnavailable` is set above 0). With
    /// 0, the old proxy stops before the new one starts and the node's workloads cannot
    /// reach the mesh meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 0 : self.matches('^(100|[1-9]?[0-9])%$')").message("proxy.updateStrategy.maxSurge must be a number from 0, or a percentage from 0% to 100%"))]
    pub max_surge: Option<IntOrString>,
}

/// Mesh-wide settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// The mesh's identifier, shared by every cluster of a multi-cluster mesh.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "meshID")]
    pub mesh_id: Option<String>,
    /// The trust domain of workload identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// This cluster's name within the mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// The network this cluster's pods are on (for multi-network meshes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Access logging by the proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// Distributed tracing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// What proxies do with traffic to hosts outside the mesh registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Only namespaces matching one of these selectors are part of the mesh (all when empty).
    /// A selector the control plane could not evaluate would select nothing, so admission
    /// refuses unknown operators and malformed keys and values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    #[schemars(length(max = 16), transform = bounds::selectors)]
    #[x_kube(validation = Rule::new(cel::SELECTOR_OPERATORS).message("discoverySelectors: matchExpressions operator must be In, NotIn, Exists or DoesNotExist (a selector the control plane cannot evaluate would leave the mesh serving nothing)"))]
    #[x_kube(validation = Rule::new(cel::SELECTOR_VALUES_PRESENT).message("discoverySelectors: In and NotIn need at least one value"))]
    #[x_kube(validation = Rule::new(cel::SELECTOR_VALUES_ABSENT).message("discoverySelectors: Exists and DoesNotExist take no values"))]
    #[x_kube(validation = Rule::new(cel::SELECTOR_LABELS).message(SELECTOR_LABELS_MESSAGE))]
    pub discovery_selectors: Option<Vec<LabelSelector>>,
}

/// Access logging settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessLog {
    /// Whether proxies write access logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Where to write them (default `/dev/stdout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The log line format, in Envoy's format-string syntax (default: Envoy's default format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// Tracing settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// A Zipkin-compatible collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<Zipkin>,
    /// The share of requests traced, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub sampling_percent: Option<f64>,
}

/// A Zipkin collector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Zipkin {
    /// The collector's `host:port`.
    pub address: String,
}

/// Outbound traffic policies: `AllowAny`, `RegistryOnly` (Istio's `ALLOW_ANY` and
/// `REGISTRY_ONLY`, which earlier versions used, are accepted too).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundTrafficPolicy {
    /// Traffic to unknown hosts passes through.
    #[serde(alias = "ALLOW_ANY")]
    AllowAny,
    /// Only hosts in the mesh registry are reachable.
    #[serde(alias = "REGISTRY_ONLY")]
    RegistryOnly,
}

super::common::string_enum_schema!(
    OutboundTrafficPolicy,
    "OutboundTrafficPolicy",
    ["AllowAny", "RegistryOnly", "ALLOW_ANY", "REGISTRY_ONLY"]
);

impl OutboundTrafficPolicy {
    /// Istio's spelling, which the control plane's mesh config file keeps (so that file, and
    /// with it every control plane's pod template, is unchanged by the new API spelling).
    pub fn istio_name(self) -> &'static str {
        match self {
            OutboundTrafficPolicy::AllowAny => "ALLOW_ANY",
            OutboundTrafficPolicy::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

/// What the operator observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshInstallStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled, kstatus-style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// One word for humans: Installing, Healthy, Updating, Degraded, Stalled or Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The revision tags with target Active (and the `default` tag) resolve to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_revision: Option<String>,
    /// The revision the current spec asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// Every installed revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub revisions: Vec<RevisionStatus>,
    /// Counts for the printer columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<RevisionSummary>,
    /// Where each tag points; control planes resolve namespace labels through this map.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub tags: Vec<TagStatus>,
    /// The rollout under way (or last finished): which revision and spec generation, and
    /// when it started, so the progress deadline survives an operator restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// The mesh's certificate authority: trust domain, trusted roots, issuer expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityStatus>,
}

/// The one-word `status.state` of a MeshInstall. The one place these become the API's strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshState {
    /// Installed for the first time, not yet Ready.
    Installing,
    /// Everything owned is healthy.
    Healthy,
    /// A new spec or revision is rolling out, or waiting for promotion.
    Updating,
    /// It was Ready, and lost pods without a spec change.
    Degraded,
    /// The spec cannot be acted on.
    Stalled,
    /// Being deleted.
    Terminating,
}

impl MeshState {
    /// The word written in `status.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            MeshState::Installing => "Installing",
            MeshState::Healthy => "Healthy",
            MeshState::Updating => "Updating",
            MeshState::Degraded => "Degraded",
            MeshState::Stalled => "Stalled",
            MeshState::Terminating => "Terminating",
        }
    }

    /// The state a status records, if it holds a known word.
    pub fn of(status: &MeshInstallStatus) -> Option<MeshState> {
        use MeshState::*;
        [Installing, Healthy, Updating, Degraded, Stalled, Terminating]
            .into_iter()
            .find(|s| status.state.as_deref() == Some(s.as_str()))
    }
}

/// A rollout of the target revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The revision being rolled out.
    pub revision: String,
    /// The spec generation it started with.
    pub generation: i64,
    /// When it started.
    pub start_time: Time,
}

/// One installed revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// The revision's name.
    pub name: String,
    /// The mesh version it runs.
    pub version: String,
    /// Whether its control plane and node proxies are all ready.
    pub ready: bool,
    /// Whether any namespace, gateway or tag resolves to it.
    pub in_use: bool,
    /// Control-plane replicas: desired and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ReplicaCounts>,
    /// Node proxies: desired and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ReplicaCounts>,
    /// Namespaces whose label resolves to this revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub namespaces: Vec<String>,
    /// Gateways (`namespace/name`) that resolve to this revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub gateways: Vec<String>,
    /// Tags that resolve to this revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub tags: Vec<String>,
    /// Since when it has been Ready without interruption (for `minReadySeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_since: Option<Time>,
    /// Since when it has been neither active, targeted nor in use (for the deletion grace
    /// period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_since: Option<Time>,
}

/// Desired and ready replicas.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaCounts {
    /// How many are wanted.
    pub desired: i32,
    /// How many are ready.
    pub ready: i32,
}

/// Revision counts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSummary {
    /// Installed revisions.
    pub revisions: i32,
    /// Ready revisions.
    pub ready: i32,
    /// Revisions in use.
    pub in_use: i32,
}

/// Where one tag points.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TagStatus {
    /// The tag.
    pub name: String,
    /// The revision it resolves to.
    pub revision: String,
}
