//! Pod Security "restricted": the security contexts every rendered pod uses, and a checker
//! that tests hold every rendered pod to.

use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext};

/// The pod-level security context of every pod Weft renders.
pub fn pod_context(user: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(user),
        fs_group: Some(user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container-level security context of every container Weft renders.
pub fn container_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What in a pod spec breaks the "restricted" Pod Security Standard (empty when none).
/// Covers the checks of the standard that rendered pods could possibly hit.
pub fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    let pod = spec.security_context.clone().unwrap_or_default();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        v.push("host namespaces".to_string());
    }
    for vol in spec.volumes.iter().flatten() {
        if vol.host_path.is_some() {
            v.push(format!("volume {} is a hostPath", vol.name));
        }
    }
    let pod_seccomp = pod.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    for c in containers {
        let sc = c.security_context.clone().unwrap_or_default();
        let name = &c.name;
        if sc.privileged == Some(true) {
            v.push(format!("{name}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{name}: allowPrivilegeEscalation must be false"));
        }
        if sc.run_as_non_root.or(pod.run_as_non_root) != Some(true) {
            v.push(format!("{name}: runAsNonRoot must be true"));
        }
        if sc.run_as_user.or(pod.run_as_user) == Some(0) {
            v.push(format!("{name}: runAsUser must not be 0"));
        }
        let seccomp = sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()).or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault") | Some("Localhost")) {
            v.push(format!("{name}: seccompProfile must be RuntimeDefault or Localhost"));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            v.push(format!("{name}: capabilities must drop ALL"));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            v.push(format!("{name}: only NET_BIND_SERVICE may be added"));
        }
        for p in c.ports.iter().flatten() {
            if p.host_port.is_some_and(|h| h != 0) {
                v.push(format!("{name}: hostPort"));
            }
        }
    }
    v
}
