//! Profiles and resolution: a MeshInstall spec plus its profile's defaults, field by field,
//! give the settings a revision is rendered from.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, PodAffinityTerm, PodAntiAffinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::common::{Autoscaling, DisruptionBudget};
use crate::api::mesh_install::{
    AccessLog, ExternalControlPlane, LogLevel, MeshConfig, MeshInstallSpec, OutboundTrafficPolicy, Profile,
};

use super::RenderError;

/// Horizontal autoscaling as rendered.
#[derive(Clone, Debug, PartialEq)]
pub struct Hpa {
    /// Fewest replicas.
    pub min: i32,
    /// Most replicas.
    pub max: i32,
    /// Target average CPU utilisation in percent.
    pub cpu_percent: i32,
}

/// A disruption budget as rendered: exactly one of the two.
#[derive(Clone, Debug, PartialEq)]
pub enum Budget {
    /// `minAvailable`.
    MinAvailable(IntOrString),
    /// `maxUnavailable`.
    MaxUnavailable(IntOrString),
}

/// Control-plane settings after resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlPlane {
    /// Replicas when not autoscaled.
    pub replicas: i32,
    /// Autoscaling, when enabled.
    pub hpa: Option<Hpa>,
    /// The disruption budget, when one is wanted.
    pub pdb: Option<Budget>,
    /// Container resources.
    pub resources: ResourceRequirements,
    /// Pod affinity.
    pub affinity: Option<Affinity>,
    /// Topology spread.
    pub spread: Vec<TopologySpreadConstraint>,
    /// Node selector.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// PriorityClass.
    pub priority_class_name: Option<String>,
    /// Image override.
    pub image: Option<String>,
    /// A control plane elsewhere (primary-remote): none is installed here.
    pub external: Option<ExternalControlPlane>,
    /// Whether plaintext xDS (15010) is served beside the TLS port.
    pub plaintext_xds: bool,
}

/// Node-proxy settings after resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct Proxy {
    /// Image override.
    pub image: Option<String>,
    /// Container resources.
    pub resources: ResourceRequirements,
    /// Worker threads (0: one per core).
    pub concurrency: i32,
    /// Log level.
    pub log_level: LogLevel,
    /// DaemonSet rolling-update maxUnavailable.
    pub max_unavailable: IntOrString,
    /// DaemonSet rolling-update maxSurge.
    pub max_surge: IntOrString,
    /// Node selector.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
}

/// Everything a revision is rendered from, after the profile's defaults were applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The node proxies, unless disabled.
    pub proxy: Option<Proxy>,
    /// Mesh-wide settings with defaults filled in.
    pub mesh_config: MeshConfig,
}

/// Requests of CPU and memory, and a memory limit.
pub fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])),
        // No CPU limit: throttling an xDS server slows every proxy's convergence.
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory_limit.to_string()),
        )])),
        ..Default::default()
    }
}

/// The pod labels the control plane's anti-affinity and spread select on.
pub fn control_plane_selector(mesh: &str, revision: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (crate::api::labels::COMPONENT.to_string(), "control-plane".to_string()),
        (crate::api::labels::MESH.to_string(), mesh.to_string()),
        (crate::api::labels::REVISION.to_string(), revision.to_string()),
    ])
}

/// Preferred anti-affinity across hosts: pods spread over nodes when they can, and still
/// run when there are more pods than nodes.
pub fn preferred_host_anti_affinity(selector: &BTreeMap<String, String>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector.clone()),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".to_string(),
                    ..Default::default()
                },
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether an affinity demands one pod per host (then a surge pod may have nowhere to go).
pub fn hard_anti_affinity(affinity: Option<&Affinity>) -> bool {
    affinity
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|p| p.required_during_scheduling_ignored_during_execution.as_ref())
        .is_some_and(|terms| !terms.is_empty())
}

fn ha_affinity(selector: &BTreeMap<String, String>) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector.clone()),
                    ..Default::default()
                }),
                topology_key: "kubernetes.io/hostname".to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Spread across zones, best effort.
pub fn zone_spread(selector: &BTreeMap<String, String>) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".to_string(),
        // ScheduleAnyway: a cluster with fewer zones than replicas must still run them all.
        when_unsatisfiable: "ScheduleAnyway".to_string(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Autoscaling as asked for: `enabled` unset means `enabled_by_default`; unset bounds come
/// from `base` (min 1, max 5, 80 % CPU when none). `field` and `source` name where the
/// values came from, for the error a person reads.
pub fn resolve_hpa(
    auto: Option<&Autoscaling>,
    enabled_by_default: bool,
    base: Option<Hpa>,
    field: &str,
    source: &str,
) -> Result<Option<Hpa>, RenderError> {
    let auto = auto.cloned().unwrap_or_default();
    if !auto.enabled.unwrap_or(enabled_by_default) {
        return Ok(None);
    }
    let base = base.unwrap_or(Hpa {
        min: 1,
        max: 5,
        cpu_percent: 80,
    });
    let min = auto.min_replicas.unwrap_or(base.min);
    let max = auto.max_replicas.unwrap_or(base.max);
    if min > max {
        return Err(RenderError::Invalid(format!(
            "{field}.autoscaling.minReplicas ({min}) is greater than maxReplicas ({max}, from {source}); set maxReplicas too"
        )));
    }
    Ok(Some(Hpa {
        min,
        max,
        cpu_percent: auto.target_cpu_utilization_percentage.unwrap_or(base.cpu_percent),
    }))
}

/// The disruption budget for a workload that never runs fewer than `floor` pods: what the
/// spec says, else `minAvailable` (at most `default_min`, 1 when none) once more than one
/// pod runs or the budget is enabled explicitly.
pub fn resolve_budget(budget: Option<&DisruptionBudget>, floor: i32, default_min: Option<i32>) -> Option<Budget> {
    let budget = budget.cloned().unwrap_or_default();
    if budget.enabled == Some(false) {
        None
    } else if let Some(v) = budget.min_available {
        Some(Budget::MinAvailable(v))
    } else if let Some(v) = budget.max_unavailable {
        Some(Budget::MaxUnavailable(v))
    } else if floor > 1 || budget.enabled == Some(true) {
        // Never demand every pod: a budget of all pods would block node drains forever.
        let min = default_min.unwrap_or(1).min((floor - 1).max(1));
        Some(Budget::MinAvailable(IntOrString::Int(min)))
    } else {
        None
    }
}

/// The profile's defaults, before the spec overrides them.
struct Defaults {
    replicas: i32,
    hpa: Option<Hpa>,
    pdb_min_available: Option<i32>,
    cp_resources: ResourceRequirements,
    ha_scheduling: bool,
    proxy_enabled: bool,
    proxy_resources: ResourceRequirements,
    access_log: bool,
}

fn defaults(profile: Profile) -> Defaults {
    let base = Defaults {
        replicas: 1,
        hpa: None,
        pdb_min_available: None,
        cp_resources: resources("100m", "128Mi", "1Gi"),
        ha_scheduling: false,
        proxy_enabled: true,
        proxy_resources: resources("50m", "64Mi", "512Mi"),
        access_log: false,
    };
    match profile {
        Profile::Default => base,
        Profile::Minimal => Defaults {
            proxy_enabled: false,
            ..base
        },
        Profile::Demo => Defaults {
            cp_resources: resources("10m", "64Mi", "512Mi"),
            proxy_resources: resources("10m", "40Mi", "256Mi"),
            access_log: true,
            ..base
        },
        Profile::Ha => Defaults {
            replicas: 3,
            hpa: Some(Hpa {
                min: 3,
                max: 5,
                cpu_percent: 80,
            }),
            pdb_min_available: Some(2),
            cp_resources: resources("200m", "256Mi", "2Gi"),
            ha_scheduling: true,
            ..base
        },
    }
}

/// Applies the profile's defaults to a spec, field by field.
pub fn resolve(mesh: &str, revision: &str, spec: &MeshInstallSpec) -> Result<Resolved, RenderError> {
    let d = defaults(spec.profile);
    let cp = spec.control_plane.clone().unwrap_or_default();
    let replicas = cp.replicas.unwrap_or(d.replicas);

    let hpa = resolve_hpa(
        cp.autoscaling.as_ref(),
        d.hpa.is_some(),
        d.hpa.clone(),
        "controlPlane",
        &format!("the {:?} profile", spec.profile),
    )?;
    let floor = hpa.as_ref().map_or(replicas, |h| h.min);
    let pdb = resolve_budget(cp.pod_disruption_budget.as_ref(), floor, d.pdb_min_available);

    let selector = control_plane_selector(mesh, revision);
    let affinity = cp
        .affinity
        .clone()
        .or_else(|| d.ha_scheduling.then(|| ha_affinity(&selector)));
    let spread = cp.topology_spread_constraints.clone().unwrap_or_else(|| {
        if d.ha_scheduling {
            vec![zone_spread(&selector)]
        } else {
            vec![]
        }
    });

    let control_plane = ControlPlane {
        replicas,
        hpa,
        pdb,
        resources: cp.resources.clone().unwrap_or(d.cp_resources),
        affinity,
        spread,
        node_selector: cp.node_selector.clone().unwrap_or_default(),
        tolerations: cp.tolerations.clone().unwrap_or_default(),
        priority_class_name: cp.priority_class_name.clone(),
        image: cp.image.clone(),
        external: cp.external.clone(),
        plaintext_xds: cp.plaintext_xds.unwrap_or(true),
    };

    let p = spec.proxy.clone().unwrap_or_default();
    // A DaemonSet surges or takes nodes down, not both: one of the two is 0 (admission
    // refuses a spec that sets both above 0, or both to 0).
    let zero = |v: &IntOrString| matches!(v, IntOrString::Int(0)) || matches!(v, IntOrString::String(s) if s == "0%");
    let (set_surge, set_unavailable) = p
        .update_strategy
        .as_ref()
        .map(|u| (u.max_surge.clone(), u.max_unavailable.clone()))
        .unwrap_or_default();
    let (surge, unavailable) = match (set_surge, set_unavailable) {
        (Some(s), Some(u)) => (s, u),
        (Some(s), None) if zero(&s) => (s, IntOrString::Int(1)),
        (Some(s), None) => (s, IntOrString::Int(0)),
        (None, Some(u)) if zero(&u) => (IntOrString::Int(1), u),
        (None, Some(u)) => (IntOrString::Int(0), u),
        (None, None) => (IntOrString::Int(1), IntOrString::Int(0)),
    };
    let proxy = p.enabled.unwrap_or(d.proxy_enabled).then(|| Proxy {
        image: p.image.clone(),
        resources: p.resources.clone().unwrap_or(d.proxy_resources),
        concurrency: p.concurrency.unwrap_or(2),
        log_level: p.log_level.unwrap_or(LogLevel::Info),
        max_surge: surge,
        max_unavailable: unavailable,
        node_selector: p.node_selector.clone().unwrap_or_default(),
        tolerations: p.tolerations.clone().unwrap_or_default(),
    });

    let mut mc = spec.mesh_config.clone().unwrap_or_default();
    mc.trust_domain.get_or_insert_with(|| spec.trust_domain());
    mc.cluster_name
        .get_or_insert_with(|| crate::api::mesh_install::DEFAULT_CLUSTER_NAME.to_string());
    mc.outbound_traffic_policy
        .get_or_insert(OutboundTrafficPolicy::AllowAny);
    let log = mc.access_log.get_or_insert_with(AccessLog::default);
    log.enabled.get_or_insert(d.access_log);
    log.path.get_or_insert_with(|| "/dev/stdout".to_string());

    Ok(Resolved {
        control_plane,
        proxy,
        mesh_config: mc,
    })
}
