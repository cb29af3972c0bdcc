//! `weft agent` beside an Envoy (node proxies and gateways): the pod's workload identity,
//! and the xDS channel's TLS that uses it.
//!
//! The pod gets a projected ServiceAccount token (audience `weft-ca`), the trust bundle
//! ConfigMap `weft-root-ca`, and a memory-backed directory the agent writes its
//! certificate into. `weft agent --once` runs first as an init container (Envoy checks at
//! start that the SDS files it names exist), then `weft agent` stays beside Envoy as a
//! native sidecar (an init container with `restartPolicy: Always`), renewing at half the
//! lifetime and following the bundle. Envoy reads both from SDS files
//! (`path_config_source`), which it watches, so renewal and rotation need no restart.

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, ProjectedVolumeSource, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};

use super::profile;
use super::security::container_context;
use crate::identity::agent::{SDS_CERT, SDS_CERT_NAME, SDS_ROOT, SDS_ROOT_NAME};
use crate::identity::mesh_ca::BUNDLE_CONFIG_MAP;
use crate::identity::tokens::AUDIENCE;

/// Where the agent writes, and Envoy reads, the workload certificate.
pub const IDENTITY_DIR: &str = "/var/run/weft/identity";
/// The projected ServiceAccount token.
pub const TOKEN_FILE: &str = "/var/run/secrets/weft/token";
/// The trust bundle ConfigMap's mount.
pub const BUNDLE_DIR: &str = "/etc/weft-root-ca";
/// How long the projected token lives (the kubelet renews it at 80 %).
const TOKEN_SECONDS: i64 = 3600;

const IDENTITY_VOLUME: &str = "weft-identity";
const TOKEN_VOLUME: &str = "weft-token";
const BUNDLE_VOLUME: &str = "weft-root-ca";

/// The Envoy `transport_socket` of the static `xds` cluster: TLS to `server_name` (the
/// control plane's Service name, which its certificate carries), presenting the agent's
/// certificate and trusting the bundle, both from the agent's SDS files.
pub fn xds_transport_socket(server_name: &str) -> Value {
    let source = |file: &str| {
        json!({
            "path_config_source": {
                "path": format!("{IDENTITY_DIR}/{file}"),
                "watched_directory": {"path": IDENTITY_DIR},
            },
            "resource_api_version": "V3",
        })
    };
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [{"name": SDS_CERT_NAME, "sds_config": source(SDS_CERT)}],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": server_name}}],
                    },
                    "validation_context_sds_secret_config": {"name": SDS_ROOT_NAME, "sds_config": source(SDS_ROOT)},
                },
            },
        },
    })
}

/// The agent's init container (`--once`) and its native sidecar, for a pod whose
/// control plane's TLS port is `control_plane` (`host:port`).
pub fn containers(image: &str, control_plane: &str) -> Vec<Container> {
    let agent = |name: &str, once: bool| {
        let mut args = vec![
            "agent".to_string(),
            "--control-plane".to_string(),
            control_plane.to_string(),
            "--token-file".to_string(),
            TOKEN_FILE.to_string(),
            "--ca-file".to_string(),
            format!("{BUNDLE_DIR}/root-cert.pem"),
            "--out".to_string(),
            IDENTITY_DIR.to_string(),
        ];
        if once {
            args.push("--once".to_string());
        }
        Container {
            name: name.to_string(),
            image: Some(image.to_string()),
            args: Some(args),
            // A sidecar restarts with the pod's other containers left running.
            restart_policy: (!once).then(|| "Always".to_string()),
            resources: Some(profile::resources("10m", "16Mi", "64Mi")),
            security_context: Some(container_context()),
            volume_mounts: Some(vec![
                mount(IDENTITY_VOLUME, IDENTITY_DIR, false),
                mount(TOKEN_VOLUME, "/var/run/secrets/weft", true),
                mount(BUNDLE_VOLUME, BUNDLE_DIR, true),
            ]),
            ..Default::default()
        }
    };
    vec![agent("weft-agent-init", true), agent("weft-agent", false)]
}

/// Gives an Envoy pod its agent: Envoy (`envoy`) mounts the agent's directory read-only,
/// the pod gets the agent's volumes, and the agent's containers are returned, to be the
/// pod's init containers (its control plane's TLS port is `control_plane`, `host:port`).
pub fn attach(envoy: &mut Container, volumes: &mut Vec<Volume>, image: &str, control_plane: &str) -> Vec<Container> {
    envoy
        .volume_mounts
        .get_or_insert_default()
        .push(mount(IDENTITY_VOLUME, IDENTITY_DIR, true));
    volumes.extend(self::volumes());
    containers(image, control_plane)
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The pod's volumes for the agent: its directory (memory-backed: the key never touches
/// a disk), the token, and the bundle.
pub fn volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: IDENTITY_VOLUME.to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_string()),
                size_limit: Some(Quantity("1Mi".to_string())),
            }),
            ..Default::default()
        },
        Volume {
            name: TOKEN_VOLUME.to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(AUDIENCE.to_string()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".to_string(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: BUNDLE_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: BUNDLE_CONFIG_MAP.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_starts_once_then_stays_as_a_sidecar() {
        let c = containers("weft:1", "weft-cp-r.weft-system.svc:15012");
        assert_eq!(c.len(), 2);
        let args = |i: usize| c[i].args.clone().unwrap_or_default();
        assert!(args(0).contains(&"--once".to_string()) && c[0].restart_policy.is_none());
        assert!(!args(1).contains(&"--once".to_string()));
        assert_eq!(c[1].restart_policy.as_deref(), Some("Always"));
        for container in &c {
            let sc = container.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
        }
    }

    #[test]
    fn envoy_reads_the_agents_files_over_sds_and_checks_the_control_planes_name() {
        let t = xds_transport_socket("weft-cp-r.weft-system.svc");
        let ctx = &t["typed_config"]["common_tls_context"];
        assert_eq!(
            ctx["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]["path"],
            format!("{IDENTITY_DIR}/{SDS_CERT}")
        );
        assert_eq!(
            ctx["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"][0]["matcher"]
                ["exact"],
            "weft-cp-r.weft-system.svc"
        );
        assert_eq!(t["typed_config"]["sni"], "weft-cp-r.weft-system.svc");
    }
}
