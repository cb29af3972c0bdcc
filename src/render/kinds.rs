//! The kinds of object the operator owns, and one rendered object ready to apply.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::core::ApiResource;
use serde::Serialize;

use super::RenderError;

/// A kind the operator owns. Everything it creates is one of these, labelled
/// `app.kubernetes.io/managed-by=weft-operator`, which is also how pruning finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnedKind {
    /// core/v1 ServiceAccount
    ServiceAccount,
    /// rbac/v1 ClusterRole
    ClusterRole,
    /// rbac/v1 ClusterRoleBinding
    ClusterRoleBinding,
    /// rbac/v1 Role
    Role,
    /// rbac/v1 RoleBinding
    RoleBinding,
    /// core/v1 ConfigMap
    ConfigMap,
    /// core/v1 Service
    Service,
    /// networking/v1 NetworkPolicy
    NetworkPolicy,
    /// apps/v1 Deployment
    Deployment,
    /// autoscaling/v2 HorizontalPodAutoscaler
    HorizontalPodAutoscaler,
    /// policy/v1 PodDisruptionBudget
    PodDisruptionBudget,
    /// apps/v1 DaemonSet
    DaemonSet,
}

impl OwnedKind {
    /// Every owned kind, in apply order (identity and permissions before the workloads).
    pub const ALL: [OwnedKind; 12] = [
        OwnedKind::ServiceAccount,
        OwnedKind::ClusterRole,
        OwnedKind::ClusterRoleBinding,
        OwnedKind::Role,
        OwnedKind::RoleBinding,
        OwnedKind::ConfigMap,
        OwnedKind::Service,
        OwnedKind::NetworkPolicy,
        OwnedKind::Deployment,
        OwnedKind::HorizontalPodAutoscaler,
        OwnedKind::PodDisruptionBudget,
        OwnedKind::DaemonSet,
    ];

    /// The API resource (group, version, plural) of the kind.
    pub fn api_resource(self) -> ApiResource {
        match self {
            OwnedKind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
            OwnedKind::ClusterRole => ApiResource::erase::<ClusterRole>(&()),
            OwnedKind::ClusterRoleBinding => ApiResource::erase::<ClusterRoleBinding>(&()),
            OwnedKind::Role => ApiResource::erase::<Role>(&()),
            OwnedKind::RoleBinding => ApiResource::erase::<RoleBinding>(&()),
            OwnedKind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            OwnedKind::Service => ApiResource::erase::<Service>(&()),
            OwnedKind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
            OwnedKind::Deployment => ApiResource::erase::<Deployment>(&()),
            OwnedKind::HorizontalPodAutoscaler => ApiResource::erase::<HorizontalPodAutoscaler>(&()),
            OwnedKind::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
            OwnedKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, OwnedKind::ClusterRole | OwnedKind::ClusterRoleBinding)
    }

    /// The kind's name, as in `kind:`.
    pub fn name(self) -> &'static str {
        match self {
            OwnedKind::ServiceAccount => "ServiceAccount",
            OwnedKind::ClusterRole => "ClusterRole",
            OwnedKind::ClusterRoleBinding => "ClusterRoleBinding",
            OwnedKind::Role => "Role",
            OwnedKind::RoleBinding => "RoleBinding",
            OwnedKind::ConfigMap => "ConfigMap",
            OwnedKind::Service => "Service",
            OwnedKind::NetworkPolicy => "NetworkPolicy",
            OwnedKind::Deployment => "Deployment",
            OwnedKind::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
            OwnedKind::PodDisruptionBudget => "PodDisruptionBudget",
            OwnedKind::DaemonSet => "DaemonSet",
        }
    }
}

/// One rendered object: what to server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Its kind.
    pub kind: OwnedKind,
    /// Its namespace (`None` for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// The full object, with `apiVersion` and `kind`.
    pub object: serde_json::Value,
    /// For an autoscaled Deployment: the replicas it starts with when created (the
    /// autoscaler's `minReplicas`). `object` leaves `spec.replicas` out, so that after the
    /// creation the autoscaler, not the operator, owns it.
    pub initial_replicas: Option<i32>,
}

impl Manifest {
    /// Wraps a typed object.
    pub fn new<K>(kind: OwnedKind, obj: &K) -> Result<Manifest, RenderError>
    where
        K: kube::Resource + Serialize,
    {
        let meta = obj.meta();
        let name = meta.name.clone().unwrap_or_default();
        let object = serde_json::to_value(obj).map_err(|e| RenderError::Encode {
            kind: kind.name(),
            name: name.clone(),
            message: e.to_string(),
        })?;
        Ok(Manifest {
            kind,
            namespace: meta.namespace.clone(),
            name,
            object,
            initial_replicas: None,
        })
    }

    /// The same, created with `replicas` pods and leaving them to an autoscaler afterwards.
    pub fn starting_with(self, replicas: Option<i32>) -> Manifest {
        Manifest {
            initial_replicas: replicas,
            ..self
        }
    }

    /// `Kind namespace/name`, for logs and events.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind.name(), self.name),
            None => format!("{} {}", self.kind.name(), self.name),
        }
    }
}
