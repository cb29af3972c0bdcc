//! MeshGateway rendering: golden output, defaults, overrides and the properties every
//! rendered gateway must have.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::core::ObjectMeta;

use super::gateway::{GatewayInput, render_gateway, selector_string};
use super::security::restricted_violations;
use super::tests::{find, golden, pod_specs, to_yaml};
use super::*;
use crate::api::labels;
use crate::api::mesh_gateway::{MeshGateway, MeshGatewaySpec};
use crate::versions::VersionTable;

fn gateway(name: &str, spec_yaml: &str) -> MeshGateway {
    let spec: MeshGatewaySpec = serde_saphyr::from_str(spec_yaml).expect("valid spec");
    MeshGateway {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("shop".to_string()),
            uid: Some("00000000-0000-0000-0000-0000000000aa".to_string()),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

fn render(gw: &MeshGateway, revision: &str) -> Result<Vec<Manifest>, RenderError> {
    let table = VersionTable::builtin();
    let version = table.get("1.0.0").expect("known version");
    render_gateway(&GatewayInput {
        gateway: gw,
        mesh: &gw.spec.mesh,
        revision,
        control_plane_namespace: "weft-system",
        external_control_plane: None,
        cluster: "Kubernetes",
        version,
        mesh_network: None,
    })
}

fn deployment(objects: &[Manifest]) -> Deployment {
    serde_json::from_value(find(objects, OwnedKind::Deployment)[0].object.clone()).unwrap()
}

fn service(objects: &[Manifest]) -> Service {
    serde_json::from_value(find(objects, OwnedKind::Service)[0].object.clone()).unwrap()
}

const PRODUCTION: &str = "mesh: default\nrevision: stable\nautoscaling: {minReplicas: 2, maxReplicas: 5}\npodDisruptionBudget: {minAvailable: 1}\nservice:\n  externalTrafficPolicy: Local\n  annotations: {example.com/lb: internal}\n  ports:\n  - {name: http, port: 80}\n  - {name: grpc, port: 9090}\n";

#[test]
fn golden_production_ingress() {
    let gw = gateway("ingress", PRODUCTION);
    golden("gateway-ingress", &to_yaml(&render(&gw, "default-v1-0-0").unwrap()));
}

#[test]
fn production_ingress_gets_autoscaler_budget_spread_and_unprivileged_ports() {
    let objects = render(&gateway("ingress", PRODUCTION), "default-v1-0-0").unwrap();
    let kinds: Vec<OwnedKind> = objects.iter().map(|m| m.kind).collect();
    assert_eq!(
        kinds,
        [
            OwnedKind::ServiceAccount,
            OwnedKind::ConfigMap,
            OwnedKind::Service,
            OwnedKind::Deployment,
            OwnedKind::HorizontalPodAutoscaler,
            OwnedKind::PodDisruptionBudget
        ]
    );
    let hpa = &find(&objects, OwnedKind::HorizontalPodAutoscaler)[0].object["spec"];
    assert_eq!(
        (hpa["minReplicas"].as_i64(), hpa["maxReplicas"].as_i64()),
        (Some(2), Some(5))
    );
    assert_eq!(
        find(&objects, OwnedKind::PodDisruptionBudget)[0].object["spec"]["minAvailable"],
        1
    );

    let d = deployment(&objects);
    let spec = d.spec.clone().unwrap();
    assert_eq!(spec.replicas, None, "the autoscaler owns replicas");
    let rolling = spec.strategy.unwrap().rolling_update.unwrap();
    assert_eq!(
        rolling.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)),
        "a rollout never takes a pod away before its replacement is ready"
    );
    let pod = spec.template.spec.unwrap();
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    let preferred = anti.preferred_during_scheduling_ignored_during_execution.unwrap();
    assert_eq!(preferred[0].pod_affinity_term.topology_key, "kubernetes.io/hostname");
    assert!(anti.required_during_scheduling_ignored_during_execution.is_none());
    let spread = pod.topology_spread_constraints.unwrap();
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
    assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
    let ports: Vec<i32> = pod.containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [8080, 9090, gateway::HEALTH_PORT]);

    let svc = service(&objects);
    let s = svc.spec.unwrap();
    assert_eq!(
        s.type_.as_deref(),
        Some("LoadBalancer"),
        "ingress defaults to a load balancer"
    );
    assert_eq!(s.external_traffic_policy.as_deref(), Some("Local"));
    let mapped: Vec<(i32, String)> = s
        .ports
        .unwrap()
        .iter()
        .map(|p| (p.port, format!("{:?}", p.target_port.clone().unwrap())))
        .collect();
    assert_eq!(mapped, [(80, "Int(8080)".to_string()), (9090, "Int(9090)".to_string())]);
    assert_eq!(
        svc.metadata
            .annotations
            .unwrap()
            .get("example.com/lb")
            .map(String::as_str),
        Some("internal")
    );
}

#[test]
fn the_bootstrap_names_the_resolved_revision_and_its_control_plane() {
    let objects = render(&gateway("ingress", PRODUCTION), "default-v1-1-0").unwrap();
    let cm = find(&objects, OwnedKind::ConfigMap)[0];
    let text = cm.object["data"]["bootstrap.json"].as_str().unwrap();
    let b: serde_json::Value = serde_json::from_str(text).unwrap();
    let meta = &b["node"]["metadata"];
    assert_eq!(meta["ROLE"], "gateway");
    assert_eq!(meta["GATEWAY"], "ingress");
    assert_eq!(meta["NAMESPACE"], "shop");
    assert_eq!(meta["REVISION"], "default-v1-1-0");
    assert_eq!(meta["MESH"], "default");
    let xds = b["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "xds")
        .unwrap();
    let address = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(address["address"], "weft-cp-default-v1-1-0.weft-system.svc");
    assert_eq!(address["port_value"], 15012, "the TLS port");
    assert_eq!(
        xds["transport_socket"]["typed_config"]["sni"], "weft-cp-default-v1-1-0.weft-system.svc",
        "TLS to the name the control plane's certificate carries"
    );
    assert_eq!(b["admin"]["address"]["socket_address"]["address"], "127.0.0.1");
    // The agent beside Envoy, with the files Envoy reads.
    let pod = deployment(&objects).spec.unwrap().template.spec.unwrap();
    let init: Vec<_> = pod.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(init, ["weft-agent-init", "weft-agent"]);
    assert!(
        pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == crate::render::agent::IDENTITY_DIR && m.read_only == Some(true))
    );
    assert!(crate::render::security::restricted_violations(&pod).is_empty());

    // Moving to another revision rolls the pods (new bootstrap, new hash).
    let before = deployment(&render(&gateway("ingress", PRODUCTION), "default-v1-0-0").unwrap());
    let after = deployment(&objects);
    let hash = |d: &Deployment| d.spec.clone().unwrap().template.metadata.unwrap().annotations.unwrap();
    assert_ne!(hash(&before), hash(&after));
}

#[test]
fn defaults_one_replica_no_autoscaler_no_budget_and_scale_follows_replicas() {
    let objects = render(&gateway("egress", "mesh: m\ntype: egress\n"), "m").unwrap();
    assert!(find(&objects, OwnedKind::HorizontalPodAutoscaler).is_empty());
    assert!(find(&objects, OwnedKind::PodDisruptionBudget).is_empty());
    assert_eq!(deployment(&objects).spec.unwrap().replicas, Some(1));
    let s = service(&objects).spec.unwrap();
    assert_eq!(s.type_.as_deref(), Some("ClusterIP"), "egress stays inside the cluster");
    assert_eq!(s.ports.unwrap()[0].port, 80);

    // `kubectl scale` writes spec.replicas; more than one replica brings a budget.
    let objects = render(&gateway("egress", "mesh: m\ntype: egress\nreplicas: 3\n"), "m").unwrap();
    assert_eq!(deployment(&objects).spec.unwrap().replicas, Some(3));
    let pdb = &find(&objects, OwnedKind::PodDisruptionBudget)[0].object["spec"];
    assert_eq!(pdb["minAvailable"], 1);

    // Autoscaling explicitly off: replicas rule again.
    let objects = render(
        &gateway(
            "egress",
            "mesh: m\nreplicas: 2\nautoscaling: {enabled: false, maxReplicas: 9}\n",
        ),
        "m",
    )
    .unwrap();
    assert!(find(&objects, OwnedKind::HorizontalPodAutoscaler).is_empty());
    assert_eq!(deployment(&objects).spec.unwrap().replicas, Some(2));
}

#[test]
fn scheduling_overrides_replace_the_defaults() {
    let spec = "mesh: m\nreplicas: 3\naffinity:\n  podAntiAffinity:\n    requiredDuringSchedulingIgnoredDuringExecution:\n    - topologyKey: kubernetes.io/hostname\n      labelSelector: {matchLabels: {weft.dev/gateway: gw}}\ntopologySpreadConstraints: []\nnodeSelector: {pool: edge}\n";
    let d = deployment(&render(&gateway("gw", spec), "m").unwrap());
    let spec = d.spec.unwrap();
    let pod = spec.template.spec.unwrap();
    let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
    assert!(anti.preferred_during_scheduling_ignored_during_execution.is_none());
    assert!(
        pod.topology_spread_constraints.is_none(),
        "an empty list turns spreading off"
    );
    assert_eq!(pod.node_selector.unwrap()["pool"], "edge");
    // One pod per host: a surge pod could have nowhere to go, so replace one at a time.
    let rolling = spec.strategy.unwrap().rolling_update.unwrap();
    assert_eq!(
        rolling.max_surge,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
}

#[test]
fn colliding_container_ports_are_a_clear_error() {
    let err = render(
        &gateway(
            "gw",
            "mesh: m\nservice:\n  ports:\n  - {name: http, port: 80}\n  - {name: alt, port: 8080}\n",
        ),
        "m",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service ports http and alt both map to container port 8080; give one of them another targetPort"
    );
    let err = render(
        &gateway("gw", "mesh: m\nservice:\n  ports:\n  - {name: status, port: 15021}\n"),
        "m",
    )
    .unwrap_err();
    assert!(err.to_string().contains("which the gateway uses itself"), "{err}");
    let err = render(&gateway("gw", "mesh: m\nautoscaling: {minReplicas: 7}\n"), "m").unwrap_err();
    assert!(err.to_string().contains("spec.autoscaling.minReplicas (7)"), "{err}");
}

#[test]
fn every_gateway_object_is_owned_labelled_and_restricted() {
    for spec in [
        PRODUCTION,
        "mesh: m\n",
        "mesh: m\ntype: eastwest\nnetwork: net-2\n",
        "mesh: m\ntype: egress\nreplicas: 4\npodDisruptionBudget: {maxUnavailable: 25%}\n",
    ] {
        let gw = gateway("gw", spec);
        let objects = render(&gw, "rev-1").unwrap();
        for m in &objects {
            let meta = &m.object["metadata"];
            assert_eq!(m.namespace.as_deref(), Some("shop"), "{}", m.describe());
            assert_eq!(meta["labels"][labels::MANAGED_BY], labels::MANAGER);
            assert_eq!(meta["labels"][labels::COMPONENT], labels::GATEWAY_COMPONENT);
            assert_eq!(meta["labels"][labels::GATEWAY], "gw");
            assert_eq!(meta["labels"][labels::REVISION], "rev-1");
            let owners = meta["ownerReferences"].as_array().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0]["kind"], "MeshGateway");
            assert_eq!(owners[0]["controller"], true);
        }
        for pod in pod_specs(&objects) {
            let v = restricted_violations(&pod);
            assert!(v.is_empty(), "{spec}: not restricted: {v:?}");
            assert_eq!(pod.automount_service_account_token, Some(false));
        }
        let d = deployment(&objects);
        let selector = d.spec.unwrap().selector.match_labels.unwrap();
        assert_eq!(
            selector,
            labels::gateway_selector("gw"),
            "the selector never names the revision"
        );
        assert_eq!(selector_string("gw"), "weft.dev/component=gateway,weft.dev/gateway=gw");
    }
}

/// The gateway sample renders.
#[test]
fn the_gateway_sample_renders() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/samples/weft_v1alpha1_meshgateway.yaml");
    let gw: MeshGateway = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let objects = render(&gw, "default-v1-0-0").unwrap();
    assert!(!find(&objects, OwnedKind::HorizontalPodAutoscaler).is_empty());
}

#[test]
fn an_east_west_gateway_is_labelled_with_its_network_and_bootstrapped_on_it() {
    use super::gateway::NETWORK_LABEL;
    let render_with = |spec: &str, mesh_network: Option<&str>| {
        let gw = gateway("eastwest", spec);
        let table = VersionTable::builtin();
        let objects = render_gateway(&GatewayInput {
            gateway: &gw,
            mesh: &gw.spec.mesh,
            revision: "rev-1",
            control_plane_namespace: "weft-system",
            external_control_plane: None,
            cluster: "Kubernetes",
            version: table.get("1.0.0").expect("known version"),
            mesh_network,
        })
        .unwrap();
        let svc = service(&objects);
        let label = svc.metadata.labels.unwrap_or_default().get(NETWORK_LABEL).cloned();
        let cm = find(&objects, OwnedKind::ConfigMap)[0];
        let b: serde_json::Value = serde_json::from_str(cm.object["data"]["bootstrap.json"].as_str().unwrap()).unwrap();
        let node_network = b["node"]["metadata"]["NETWORK"].as_str().map(str::to_string);
        let ports: Vec<(String, i32)> = svc
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.port))
            .collect();
        (label, node_network, ports)
    };
    let net = |n: &str| Some(n.to_string());
    // The spec's network wins over the mesh's; the default port is tls 15443.
    let (label, node, ports) = render_with("mesh: m\ntype: eastwest\nnetwork: net-2\n", Some("net-1"));
    assert_eq!((label, node), (net("net-2"), net("net-2")));
    assert_eq!(ports, [("tls".to_string(), 15443)]);
    // Without one, the mesh's.
    let (label, node, _) = render_with("mesh: m\ntype: eastwest\n", Some("net-1"));
    assert_eq!((label, node), (net("net-1"), net("net-1")));
    // Neither: no label (discovery does not see it as a network's gateway).
    assert_eq!(render_with("mesh: m\ntype: eastwest\n", None).0, None);
    // Other gateway types never get the label; their pods are on the mesh's network.
    let (label, node, _) = render_with("mesh: m\n", Some("net-1"));
    assert_eq!((label, node), (None, net("net-1")));
}

#[test]
fn a_mesh_network_that_is_no_label_value_stops_an_east_west_gateway() {
    let gw = gateway("eastwest", "mesh: m\ntype: eastwest\n");
    let table = VersionTable::builtin();
    let err = render_gateway(&GatewayInput {
        gateway: &gw,
        mesh: "m",
        revision: "rev-1",
        control_plane_namespace: "weft-system",
        external_control_plane: None,
        cluster: "Kubernetes",
        version: table.get("1.0.0").expect("known version"),
        mesh_network: Some("net b"),
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("meshConfig.network \"net b\" is not a label value"),
        "{err}"
    );
}
