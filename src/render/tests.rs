//! Golden files per profile, and properties every rendered object must have.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::PodSpec;
use kube::core::ObjectMeta;

use super::security::restricted_violations;
use super::*;
use crate::api::common::{Autoscaling, DisruptionBudget};
use crate::api::labels;
use crate::api::mesh_install::{ControlPlane, MeshInstall, MeshInstallSpec, Profile, Proxy};
use crate::versions::VersionTable;

fn mesh(name: &str, spec_yaml: &str) -> MeshInstall {
    let spec: MeshInstallSpec = serde_saphyr::from_str(spec_yaml).expect("valid spec");
    MeshInstall {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            uid: Some("00000000-0000-0000-0000-00000000beef".to_string()),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

fn render(mi: &MeshInstall) -> Result<Vec<Manifest>, RenderError> {
    let table = VersionTable::builtin();
    let version = table.get(&mi.spec.version).expect("known version");
    let revision = mi.metadata.name.clone().unwrap();
    render_revision(&RevisionInput {
        mesh: mi,
        revision: &revision,
        version,
        remote_secrets: &[],
    })
}

pub(super) fn to_yaml(objects: &[Manifest]) -> String {
    objects
        .iter()
        .map(|m| crate::yaml::document(&m.object).unwrap())
        .collect()
}

/// Compares with `src/render/testdata/NAME.yaml`; `WEFT_UPDATE_GOLDEN=1` rewrites it.
pub(super) fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/render/testdata")
        .join(format!("{name}.yaml"));
    if std::env::var("WEFT_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run WEFT_UPDATE_GOLDEN=1 cargo test", path.display()));
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
            .map(|(i, (a, b))| format!("line {}:\n  golden: {a}\n  actual: {b}", i + 1))
            .collect();
        panic!(
            "rendered output differs from {} ({} vs {} lines); rerun with WEFT_UPDATE_GOLDEN=1 if intended:\n{}",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn golden_default_profile() {
    golden(
        "default",
        &to_yaml(&render(&mesh("default", "version: 1.0.0")).unwrap()),
    );
}

#[test]
fn golden_minimal_profile() {
    golden(
        "minimal",
        &to_yaml(&render(&mesh("small", "version: 1.0.0\nprofile: minimal")).unwrap()),
    );
}

#[test]
fn golden_demo_profile() {
    golden(
        "demo",
        &to_yaml(&render(&mesh("demo", "version: 1.1.0\nprofile: demo\nnamespace: weft-demo")).unwrap()),
    );
}

#[test]
fn golden_ha_profile() {
    golden(
        "ha",
        &to_yaml(&render(&mesh("prod", "version: 1.1.0\nprofile: ha")).unwrap()),
    );
}

pub(super) fn find(objects: &[Manifest], kind: OwnedKind) -> Vec<&Manifest> {
    objects.iter().filter(|m| m.kind == kind).collect()
}

#[test]
fn ha_profile_is_highly_available() {
    let objects = render(&mesh("prod", "version: 1.1.0\nprofile: ha")).unwrap();
    let hpa = find(&objects, OwnedKind::HorizontalPodAutoscaler);
    assert_eq!(hpa.len(), 1);
    assert_eq!(hpa[0].object["spec"]["minReplicas"], 3);
    assert_eq!(hpa[0].object["spec"]["maxReplicas"], 5);
    let pdb = find(&objects, OwnedKind::PodDisruptionBudget);
    assert_eq!(pdb[0].object["spec"]["minAvailable"], 2);
    let deploy = find(&objects, OwnedKind::Deployment)[0];
    assert!(deploy.object["spec"].get("replicas").is_none(), "the HPA owns replicas");
    let pod = &deploy.object["spec"]["template"]["spec"];
    let term = &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "topology.kubernetes.io/zone"
    );
}

#[test]
fn pdb_only_with_more_than_one_replica_or_when_asked() {
    let one = render(&mesh("a", "version: 1.0.0")).unwrap();
    assert!(find(&one, OwnedKind::PodDisruptionBudget).is_empty());
    let two = render(&mesh("a", "version: 1.0.0\ncontrolPlane: {replicas: 2}")).unwrap();
    assert_eq!(
        find(&two, OwnedKind::PodDisruptionBudget)[0].object["spec"]["minAvailable"],
        1
    );
    let asked = render(&mesh(
        "a",
        "version: 1.0.0\ncontrolPlane: {podDisruptionBudget: {maxUnavailable: 1}}",
    ))
    .unwrap();
    assert_eq!(
        find(&asked, OwnedKind::PodDisruptionBudget)[0].object["spec"]["maxUnavailable"],
        1
    );
    let off = render(&mesh(
        "a",
        "version: 1.0.0\nprofile: ha\ncontrolPlane: {podDisruptionBudget: {enabled: false}}",
    ))
    .unwrap();
    assert!(find(&off, OwnedKind::PodDisruptionBudget).is_empty());
}

#[test]
fn min_above_profile_max_is_a_clear_error() {
    let Err(err) = render(&mesh(
        "a",
        "version: 1.0.0\nprofile: ha\ncontrolPlane: {autoscaling: {minReplicas: 7}}",
    )) else {
        panic!("min 7 above the ha profile's max 5 must not render");
    };
    assert!(
        err.to_string()
            .contains("minReplicas (7) is greater than maxReplicas (5"),
        "{err}"
    );
}

#[test]
fn minimal_profile_has_no_proxies_and_spec_overrides_profile() {
    let objects = render(&mesh("a", "version: 1.0.0\nprofile: minimal")).unwrap();
    assert!(find(&objects, OwnedKind::DaemonSet).is_empty());
    let objects = render(&mesh("a", "version: 1.0.0\nprofile: minimal\nproxy: {enabled: true}")).unwrap();
    assert_eq!(find(&objects, OwnedKind::DaemonSet).len(), 1);
}

#[test]
fn mesh_config_changes_roll_the_control_plane() {
    let hash = |objs: &[Manifest]| {
        find(objs, OwnedKind::Deployment)[0].object["spec"]["template"]["metadata"]["annotations"]["weft.dev/config-hash"]
            .clone()
    };
    let a = render(&mesh("a", "version: 1.0.0")).unwrap();
    let b = render(&mesh("a", "version: 1.0.0\nmeshConfig: {trustDomain: example.org}")).unwrap();
    assert_ne!(hash(&a), hash(&b));
}

/// Every combination of the settings that change which objects exist.
fn all_specs() -> Vec<MeshInstallSpec> {
    let mut specs = Vec::new();
    for profile in [Profile::Default, Profile::Minimal, Profile::Demo, Profile::Ha] {
        for replicas in [None, Some(1), Some(2), Some(4)] {
            for auto in [None, Some(false), Some(true)] {
                for pdb in [None, Some(false), Some(true)] {
                    for proxy in [None, Some(false), Some(true)] {
                        let spec = MeshInstallSpec {
                            version: "1.0.0".to_string(),
                            profile,
                            namespace: "mesh-ns".to_string(),
                            update_strategy: None,
                            revision_tags: None,
                            control_plane: Some(ControlPlane {
                                replicas,
                                autoscaling: auto.map(|enabled| Autoscaling {
                                    enabled: Some(enabled),
                                    ..Default::default()
                                }),
                                pod_disruption_budget: pdb.map(|enabled| DisruptionBudget {
                                    enabled: Some(enabled),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }),
                            proxy: proxy.map(|enabled| Proxy {
                                enabled: Some(enabled),
                                ..Default::default()
                            }),
                            mesh_config: None,
                            security: None,
                        };
                        specs.push(spec);
                    }
                }
            }
        }
    }
    specs
}

pub(super) fn pod_specs(objects: &[Manifest]) -> Vec<PodSpec> {
    let mut pods = Vec::new();
    for m in objects {
        match m.kind {
            OwnedKind::Deployment => {
                let d: Deployment = serde_json::from_value(m.object.clone()).unwrap();
                pods.push(d.spec.unwrap().template.spec.unwrap());
            }
            OwnedKind::DaemonSet => {
                let d: DaemonSet = serde_json::from_value(m.object.clone()).unwrap();
                pods.push(d.spec.unwrap().template.spec.unwrap());
            }
            _ => {}
        }
    }
    pods
}

#[test]
fn every_rendered_object_carries_revision_label_owner_and_restricted_pods() {
    let specs = all_specs();
    assert_eq!(specs.len(), 4 * 4 * 3 * 3 * 3);
    for (i, spec) in specs.into_iter().enumerate() {
        let name = format!("mesh-{i}");
        let mi = MeshInstall {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                uid: Some(format!("uid-{i}")),
                ..Default::default()
            },
            spec,
            status: None,
        };
        let objects = match render(&mi) {
            Ok(o) => o,
            // The only inconsistency these settings can produce is none: all must render.
            Err(e) => panic!("spec {i} ({:?}) failed to render: {e}", mi.spec),
        };
        assert!(objects.iter().any(|m| m.kind == OwnedKind::Deployment));
        for m in &objects {
            let meta = &m.object["metadata"];
            assert_eq!(meta["labels"][labels::REVISION], name.as_str(), "{}", m.describe());
            assert_eq!(meta["labels"][labels::MANAGED_BY], labels::MANAGER, "{}", m.describe());
            assert_eq!(meta["labels"][labels::MESH], name.as_str(), "{}", m.describe());
            let owners = meta["ownerReferences"].as_array().expect("owner references");
            assert_eq!(owners.len(), 1, "{}", m.describe());
            assert_eq!(owners[0]["kind"], "MeshInstall");
            assert_eq!(owners[0]["uid"], format!("uid-{i}"));
            assert_eq!(owners[0]["controller"], true);
            assert_eq!(m.namespace.is_some(), m.kind.namespaced(), "{}", m.describe());
            if let Some(ns) = &m.namespace {
                assert_eq!(ns, "mesh-ns");
            }
            assert!(m.name.len() <= 63, "{} name too long", m.describe());
        }
        for pod in pod_specs(&objects) {
            let v = restricted_violations(&pod);
            assert!(v.is_empty(), "spec {i}: not restricted: {v:?}");
        }
        // A Deployment with an HPA leaves replicas to it, and a PDB never demands every pod.
        let deploy = find(&objects, OwnedKind::Deployment)[0];
        let has_hpa = !find(&objects, OwnedKind::HorizontalPodAutoscaler).is_empty();
        assert_eq!(deploy.object["spec"].get("replicas").is_none(), has_hpa, "spec {i}");
    }
}

#[test]
fn the_checker_catches_what_restricted_forbids() {
    let bad: PodSpec = serde_json::from_value(serde_json::json!({
        "hostNetwork": true,
        "containers": [{"name": "c", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN"]}}}]
    }))
    .unwrap();
    let v = restricted_violations(&bad);
    for needle in [
        "host namespaces",
        "privileged",
        "allowPrivilegeEscalation",
        "runAsNonRoot",
        "seccompProfile",
        "drop ALL",
        "NET_BIND_SERVICE",
    ] {
        assert!(v.iter().any(|s| s.contains(needle)), "{needle} not reported in {v:?}");
    }
}

/// Every sample in `config/samples/` is a MeshInstall that renders.
#[test]
fn every_sample_renders() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("weft_v1alpha1_meshinstall") {
            continue;
        }
        let mi: MeshInstall = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).expect(&name);
        let objects = render(&mi).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!objects.is_empty(), "{name}");
        seen += 1;
    }
    assert!(seen >= 2, "both samples were read");
}

#[test]
fn an_external_control_plane_installs_only_the_proxies_bootstrapped_to_it() {
    let mi = mesh(
        "remote",
        "version: 1.0.0\ncontrolPlane: {external: {address: 'eastwest.primary.example.com:15443'}}\n\
         meshConfig: {clusterName: c, network: net-c}",
    );
    let objects = render(&mi).unwrap();
    let kinds: Vec<(OwnedKind, &str)> = objects.iter().map(|m| (m.kind, m.name.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (OwnedKind::ServiceAccount, "weft-proxy-remote"),
            (OwnedKind::ConfigMap, "weft-proxy-remote"),
            (OwnedKind::Service, "weft-proxy-remote"),
            (OwnedKind::NetworkPolicy, "weft-proxy-remote"),
            (OwnedKind::DaemonSet, "weft-proxy-remote"),
        ],
        "no control plane, no RBAC for one"
    );
    let bootstrap = &objects[1].object;
    assert_eq!(
        bootstrap["metadata"]["annotations"][labels::EXTERNAL_CONTROL_PLANE],
        "eastwest.primary.example.com:15443"
    );
    let text = bootstrap["data"]["bootstrap.json"].as_str().unwrap();
    let b: serde_json::Value = serde_json::from_str(text).unwrap();
    let socket = &b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    assert_eq!(socket["address"], "eastwest.primary.example.com");
    assert_eq!(socket["port_value"], 15443);
    assert!(
        b["static_resources"]["clusters"][0].get("transport_socket").is_none(),
        "plaintext to a control plane elsewhere (its workloads cannot get certificates from it yet)"
    );
    let ds: DaemonSet = serde_json::from_value(objects[4].object.clone()).unwrap();
    assert!(
        ds.spec.unwrap().template.spec.unwrap().init_containers.is_none(),
        "no agent"
    );
    let metadata = &b["node"]["metadata"];
    assert_eq!(
        (metadata["CLUSTER"].as_str(), metadata["NETWORK"].as_str()),
        (Some("c"), Some("net-c"))
    );

    // Without node proxies the bootstrap ConfigMap still marks the revision installed.
    let minimal = mesh(
        "remote",
        "version: 1.0.0\nprofile: minimal\ncontrolPlane: {external: {address: '192.0.2.10:15010'}}",
    );
    let kinds: Vec<OwnedKind> = render(&minimal).unwrap().iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [OwnedKind::ServiceAccount, OwnedKind::ConfigMap]);
}

/// Every multi-cluster sample (`config/samples/multicluster/`) decodes as its kind, and
/// MeshInstalls and MeshGateways render.
#[test]
fn every_multicluster_sample_decodes_and_renders() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/samples/multicluster");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in text.split("\n---\n") {
            let value: serde_json::Value = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "MeshInstall" => {
                    let mi: MeshInstall = serde_json::from_value(value).unwrap();
                    assert!(!render(&mi).unwrap().is_empty(), "{path:?}");
                }
                "MeshGateway" => {
                    let gw: crate::api::MeshGateway = serde_json::from_value(value).unwrap();
                    let table = VersionTable::builtin();
                    super::render_gateway(&super::GatewayInput {
                        gateway: &gw,
                        mesh: &gw.spec.mesh,
                        revision: "mesh",
                        control_plane_namespace: "weft-system",
                        external_control_plane: None,
                        cluster: "east",
                        version: table.get("1.0.0").unwrap(),
                        mesh_network: Some("net-east"),
                    })
                    .unwrap_or_else(|e| panic!("{path:?}: {e}"));
                }
                "RemoteCluster" => {
                    let _: crate::api::RemoteCluster = serde_json::from_value(value).unwrap();
                }
                "Secret" => assert!(value["stringData"]["kubeconfig"].is_string(), "{path:?}"),
                other => panic!("{path:?}: unexpected kind {other:?}"),
            }
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["MeshGateway", "MeshInstall", "MeshInstall", "RemoteCluster", "Secret"],
        "the samples the README walks through"
    );
}

/// Node proxies surge by default (a node whose proxy is down drops its workloads' calls);
/// without surge they go one node at a time; what the spec sets wins, and one of the two is
/// always 0 (the DaemonSet API refuses both above 0).
#[test]
fn node_proxies_surge_unless_told_otherwise() {
    let strategy = |proxy: &str| {
        let mi = mesh("m", &format!("version: 1.0.0\nproxy: {proxy}"));
        let objects = render(&mi).unwrap();
        let ds = objects.iter().find(|m| m.kind == OwnedKind::DaemonSet).unwrap();
        let ds: DaemonSet = serde_json::from_value(ds.object.clone()).unwrap();
        let rolling = ds.spec.unwrap().update_strategy.unwrap().rolling_update.unwrap();
        (rolling.max_surge.unwrap(), rolling.max_unavailable.unwrap())
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::{Int, String as Percent};
    assert_eq!(strategy("{}"), (Int(1), Int(0)));
    assert_eq!(strategy("{updateStrategy: {maxSurge: 0}}"), (Int(0), Int(1)));
    assert_eq!(
        strategy("{updateStrategy: {maxSurge: '0%'}}"),
        (Percent("0%".into()), Int(1))
    );
    assert_eq!(
        strategy("{updateStrategy: {maxSurge: '10%'}}"),
        (Percent("10%".into()), Int(0))
    );
    // Setting only maxUnavailable takes nodes down instead: the DaemonSet refuses both.
    assert_eq!(
        strategy("{updateStrategy: {maxUnavailable: '10%'}}"),
        (Int(0), Percent("10%".into()))
    );
    assert_eq!(strategy("{updateStrategy: {maxUnavailable: 0}}"), (Int(1), Int(0)));
    assert_eq!(
        strategy("{updateStrategy: {maxSurge: 0, maxUnavailable: 2}}"),
        (Int(0), Int(2))
    );
}

fn object(objects: &[Manifest], kind: OwnedKind) -> &serde_json::Value {
    &objects.iter().find(|m| m.kind == kind).expect("rendered").object
}

#[test]
fn node_proxies_reach_the_tls_port_with_the_agents_certificate() {
    let objects = render(&mesh("m", "version: 1.0.0")).unwrap();
    let ds: DaemonSet = serde_json::from_value(object(&objects, OwnedKind::DaemonSet).clone()).unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let init: Vec<&str> = pod.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(init, ["weft-agent-init", "weft-agent"]);
    let args = pod.init_containers.as_ref().unwrap()[1].args.clone().unwrap();
    assert!(
        args.contains(&"weft-cp-m.weft-system.svc:15012".to_string()),
        "{args:?}"
    );
    assert!(
        restricted_violations(&pod).is_empty(),
        "{:?}",
        restricted_violations(&pod)
    );
    let bootstrap = objects
        .iter()
        .find(|m| m.kind == OwnedKind::ConfigMap && m.name == "weft-proxy-m")
        .unwrap();
    let b: serde_json::Value =
        serde_json::from_str(bootstrap.object["data"]["bootstrap.json"].as_str().unwrap()).unwrap();
    let xds = &b["static_resources"]["clusters"][0];
    assert_eq!(
        xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"],
        15012
    );
    assert_eq!(xds["transport_socket"]["name"], "envoy.transport_sockets.tls");
}

#[test]
fn plaintext_xds_off_closes_15010_everywhere() {
    let ports = |objects: &[Manifest]| -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        let nums = |v: &serde_json::Value, key: &str| -> Vec<i64> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p[key].as_i64())
                .collect()
        };
        let svc = object(objects, OwnedKind::Service);
        let dep = object(objects, OwnedKind::Deployment);
        let np = object(objects, OwnedKind::NetworkPolicy);
        (
            nums(&svc["spec"]["ports"], "port"),
            nums(
                &dep["spec"]["template"]["spec"]["containers"][0]["ports"],
                "containerPort",
            ),
            nums(&np["spec"]["ingress"][0]["ports"], "port"),
        )
    };
    let open = render(&mesh("m", "version: 1.0.0")).unwrap();
    assert_eq!(
        ports(&open),
        (vec![15010, 15012, 15014], vec![15010, 15012, 15014], vec![15010, 15012])
    );
    let closed = render(&mesh("m", "version: 1.0.0\ncontrolPlane: {plaintextXds: false}")).unwrap();
    assert_eq!(ports(&closed), (vec![15012, 15014], vec![15012, 15014], vec![15012]));
    let args = object(&closed, OwnedKind::Deployment)["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array().unwrap().iter().any(|a| a == "--no-plaintext-xds"),
        "{args}"
    );
    let open_args = object(&open, OwnedKind::Deployment)["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(!open_args.as_array().unwrap().iter().any(|a| a == "--no-plaintext-xds"));
}
