//! Types shared by the three kinds: autoscaling, disruption budgets, conditions.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Horizontal pod autoscaling on CPU utilisation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"))]
pub struct Autoscaling {
    /// Whether a HorizontalPodAutoscaler scales the workload. When enabled, `replicas` is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The fewest replicas the autoscaler keeps (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,
    /// The most replicas the autoscaler may create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,
    /// The average CPU utilisation, in percent of requests, that the autoscaler aims for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[serde(rename = "targetCPUUtilizationPercentage")]
    pub target_cpu_utilization_percentage: Option<i32>,
}

/// A PodDisruptionBudget: set at most one of `minAvailable` and `maxUnavailable`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.minAvailable) && has(self.maxUnavailable))").message("podDisruptionBudget: set at most one of minAvailable and maxUnavailable"))]
pub struct DisruptionBudget {
    /// Whether to create the budget. Unset: created when more than one replica is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How many pods (a number or a percentage) must stay available during voluntary disruptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// How many pods (a number or a percentage) may be unavailable during voluntary disruptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Condition types every kind reports (kstatus-compatible).
pub mod condition {
    /// True only when everything the object owns is healthy.
    pub const READY: &str = "Ready";
    /// True while a rollout, promotion or prune is under way.
    pub const RECONCILING: &str = "Reconciling";
    /// True for errors that will not fix themselves.
    pub const STALLED: &str = "Stalled";
}

/// Why an object is `Stalled`: errors that will not fix themselves. The one place these
/// reasons become the API's strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StallReason {
    /// The spec names a mesh version this operator cannot install.
    UnsupportedVersion,
    /// The spec is inconsistent in a way admission could not catch.
    InvalidSpec,
    /// An object could not be encoded (a bug, not a user error).
    RenderFailed,
    /// A tag or revision name is already used by an older MeshInstall.
    NameConflict,
    /// A new revision did not become Ready within its progress deadline.
    RevisionFailed,
    /// The API server refused an object rendered from the spec (nothing was applied).
    Rejected,
}

impl StallReason {
    /// The condition reason, as written in status and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            StallReason::UnsupportedVersion => "UnsupportedVersion",
            StallReason::InvalidSpec => "InvalidSpec",
            StallReason::RenderFailed => "RenderFailed",
            StallReason::NameConflict => "NameConflict",
            StallReason::RevisionFailed => "RevisionFailed",
            StallReason::Rejected => "Rejected",
        }
    }
}

impl std::fmt::Display for StallReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The regular expression a DNS label (RFC 1123) matches.
pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
