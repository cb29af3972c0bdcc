//! The autoscaler and disruption budget of a Deployment, shared by control planes and
//! gateways.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::profile::{Budget, Hpa};

/// An autoscaler on CPU for the Deployment `deployment`.
pub fn autoscaler(metadata: ObjectMeta, deployment: &str, h: &Hpa) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "Deployment".to_string(),
                name: deployment.to_string(),
            },
            min_replicas: Some(h.min),
            max_replicas: h.max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_string(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_string(),
                    target: MetricTarget {
                        type_: "Utilization".to_string(),
                        average_utilization: Some(h.cpu_percent),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A disruption budget for the pods `selector` matches.
pub fn disruption_budget(metadata: ObjectMeta, selector: LabelSelector, budget: &Budget) -> PodDisruptionBudget {
    let (min_available, max_unavailable) = match budget {
        Budget::MinAvailable(v) => (Some(v.clone()), None),
        Budget::MaxUnavailable(v) => (None, Some(v.clone())),
    };
    PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            min_available,
            max_unavailable,
            selector: Some(selector),
            ..Default::default()
        }),
        ..Default::default()
    }
}
