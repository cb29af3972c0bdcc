//! The check over every profile's and gateway type's translation, as each Envoy role would
//! subscribe to it, and fixtures it must refuse.

use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::route;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::Message;

use super::*;
use crate::api::mesh_install::{MeshInstall, MeshInstallSpec};
use crate::render::{RevisionInput, render_revision};
use crate::versions::VersionTable;
use crate::xds::model::{Gateway, GatewayPort};
use crate::xds::serve::snapshot::{self, Snapshot, View};
use crate::xds::translate::{node_proxy, translate_all};

/// A node proxy as the DaemonSet runs it.
const NODE_PROXY: Role<'static> = Role::NodeProxy {
    outbound: node_proxy::OUTBOUND_PORT,
    ready: node_proxy::READY_PORT,
    ready_path: node_proxy::READY_PATH,
};

/// What an Envoy with `view` holds once it has subscribed as Envoy does: LDS and CDS
/// wildcard, then RDS and EDS by the names those ask for.
fn subscribed(snap: &Snapshot, view: &View) -> Served {
    let all = |t: &str| -> Vec<Any> {
        snap.of(t, view)
            .map(|s| s.items.values().map(|e| Any::clone(&e.any)).collect())
            .unwrap_or_default()
    };
    let (mut served, findings) = Served::decode(all(snapshot::LISTENER).iter().chain(&all(snapshot::CLUSTER)));
    assert!(findings.is_empty(), "{findings:?}");
    let pick = |t: &str, names: &BTreeSet<String>| -> Vec<Any> {
        snap.of(t, view)
            .map(|s| {
                names
                    .iter()
                    .filter_map(|n| s.items.get(n))
                    .map(|e| Any::clone(&e.any))
                    .collect()
            })
            .unwrap_or_default()
    };
    let rds = pick(snapshot::ROUTE, &served.rds_names());
    let eds = pick(snapshot::ENDPOINT, &served.eds_names());
    let (more, findings) = Served::decode(rds.iter().chain(&eds));
    assert!(findings.is_empty(), "{findings:?}");
    served.routes = more.routes;
    served.endpoints = more.endpoints;
    served
}

fn mesh(spec_yaml: &str) -> MeshInstall {
    let spec: MeshInstallSpec = serde_saphyr::from_str(spec_yaml).expect("valid spec");
    MeshInstall {
        metadata: kube::core::ObjectMeta {
            name: Some("mesh".to_string()),
            uid: Some("00000000-0000-0000-0000-00000000beef".to_string()),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// The telemetry a control plane of this spec runs with: from the mesh config file the
/// operator renders for it, read as the control plane reads it.
fn rendered_telemetry(spec_yaml: &str) -> crate::xds::model::Telemetry {
    let mi = mesh(spec_yaml);
    let table = VersionTable::builtin();
    let version = table.get(&mi.spec.version).expect("known version");
    let objects = render_revision(&RevisionInput {
        mesh: &mi,
        revision: "mesh",
        version,
        remote_secrets: &[],
    })
    .expect("renders");
    let text = objects
        .iter()
        .find_map(|m| m.object["data"]["mesh.yaml"].as_str().map(str::to_string))
        .expect("a mesh config");
    crate::xds::control_plane::parse_mesh_config(&text)
        .expect("the control plane reads it")
        .telemetry
}

fn gateways() -> Vec<Gateway> {
    let port = |name: &str, port: u16, container: u16| GatewayPort {
        name: name.to_string(),
        port,
        container_port: container,
    };
    let gw = |name: &str, eastwest: bool, ports: Vec<GatewayPort>| Gateway {
        name: name.to_string(),
        namespace: "edge".to_string(),
        ports,
        eastwest,
    };
    vec![
        gw("ingress", false, vec![port("http", 80, 8080), port("https", 443, 8443)]),
        gw("egress", false, vec![port("http", 80, 8080)]),
        gw("eastwest", true, vec![port("tls", 15443, 15443)]),
    ]
}

#[test]
fn every_profile_and_gateway_type_is_served_what_envoy_accepts() {
    let (services, mut routes) = crate::xds::translate::fixtures::world();
    let (_, gateway_routes) = crate::xds::translate::fixtures::gateway_world();
    routes.extend(gateway_routes);
    let specs = [
        "version: 1.0.0",
        "version: 1.0.0\nprofile: Minimal",
        "version: 1.0.0\nprofile: Demo",
        "version: 1.0.0\nprofile: HA",
        "version: 1.0.0\nmeshConfig:\n  accessLog: {enabled: true, format: '%START_TIME%'}\n  tracing: {zipkin: {address: 'zipkin.tracing:9411'}, samplingPercent: 5}",
    ];
    for spec in specs {
        let telemetry = rendered_telemetry(spec);
        let snap = Snapshot::new(
            1,
            Instant::now(),
            &translate_all(&services, &gateways(), &routes, &telemetry),
        );
        let node = subscribed(&snap, &View::NODE_PROXY);
        assert_eq!(check(NODE_PROXY, &node), vec![], "node proxy, {spec}");
        assert!(!node.endpoints.is_empty() && !node.routes.is_empty(), "{node:?}");
        for gw in gateways() {
            let served = subscribed(
                &snap,
                &View::gateway(crate::xds::model::gateway_key(&gw.name, &gw.namespace)),
            );
            assert_eq!(check(Role::Gateway, &served), vec![], "gateway {}, {spec}", gw.name);
        }
    }
}

#[test]
fn a_node_proxy_served_the_proxyless_view_is_refused() {
    // What node proxies were served before they had listeners of their own.
    let (services, routes) = crate::xds::translate::fixtures::world();
    let snap = Snapshot::new(
        1,
        Instant::now(),
        &translate_all(&services, &[], &routes, &Default::default()),
    );
    let served = subscribed(&snap, &View::MESH);
    let findings = check(NODE_PROXY, &served);
    let api: Vec<&Finding> = findings.iter().filter(|f| f.problem.contains("api_listener")).collect();
    assert_eq!(api.len(), served.listeners.len(), "{findings:#?}");
    assert!(
        findings.iter().any(|f| f.problem.contains("outbound port 15001")),
        "{findings:#?}"
    );
    assert!(
        findings.iter().any(|f| f.problem.contains("/healthz/ready")),
        "{findings:#?}"
    );
}

fn served_node_proxy() -> Served {
    let (services, routes) = crate::xds::translate::fixtures::world();
    let snap = Snapshot::new(
        1,
        Instant::now(),
        &translate_all(&services, &[], &routes, &Default::default()),
    );
    subscribed(&snap, &View::NODE_PROXY)
}

fn problems(served: &Served) -> Vec<String> {
    check(NODE_PROXY, served).into_iter().map(|f| f.to_string()).collect()
}

/// Asserts that the check finds, in what a node proxy is served, a problem whose text holds
/// every one of `parts`.
fn assert_found(served: &Served, parts: &[&str]) {
    let found = problems(served);
    assert!(
        found.iter().any(|f| parts.iter().all(|p| f.contains(p))),
        "no finding with {parts:?}: {found:#?}"
    );
}

#[test]
fn a_dangling_rds_name_is_refused() {
    let mut served = served_node_proxy();
    served.routes.retain(|r| r.name != node_proxy::OUTBOUND);
    assert_found(&served, &["node-proxy|outbound", "no route configuration answers"]);
}

#[test]
fn a_missing_cluster_is_refused() {
    let mut served = served_node_proxy();
    let gone = "outbound|50051||cart-v2.shop.svc.cluster.local";
    served.clusters.retain(|c| c.name != gone);
    served.endpoints.retain(|e| e.cluster_name != gone);
    assert_found(
        &served,
        &[&format!("names cluster \"{gone}\", which CDS does not serve")],
    );
}

#[test]
fn an_eds_cluster_without_its_assignment_is_refused() {
    let mut served = served_node_proxy();
    let cluster = served
        .clusters
        .iter()
        .find(|c| c.name.starts_with("outbound|"))
        .unwrap()
        .name
        .clone();
    served.endpoints.retain(|e| e.cluster_name != cluster);
    assert_found(&served, &[cluster.as_str(), "load assignment"]);
}

fn listener(name: &str, port: Option<u32>, typed: Any) -> Listener {
    Listener {
        name: name.to_string(),
        address: port.map(|p| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(p)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "f".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(typed)),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The node proxy's outbound listener's connection manager, as served.
fn outbound_hcm(served: &Served) -> Any {
    let l = served
        .listeners
        .iter()
        .find(|l| l.name == node_proxy::OUTBOUND)
        .unwrap();
    match &l.filter_chains[0].filters[0].config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_listeners_on_one_address_and_one_without_an_address_are_refused() {
    let mut served = served_node_proxy();
    let hcm = outbound_hcm(&served);
    served.listeners.push(listener("again", Some(15001), hcm.clone()));
    served.listeners.push(listener("nowhere", None, hcm));
    assert_found(&served, &["\"again\": binds 0.0.0.0:15001 like listener"]);
    assert_found(&served, &["\"nowhere\": has no socket address"]);
}

#[test]
fn a_filter_envoy_does_not_know_is_refused() {
    let mut served = served_node_proxy();
    let unknown = Any {
        type_url: "type.googleapis.com/example.Unknown".to_string(),
        value: vec![],
    };
    served.listeners.push(listener("odd", Some(9000), unknown));
    assert_found(&served, &["\"odd\"", "Envoy does not know"]);
}

#[test]
fn a_domain_in_two_virtual_hosts_is_refused() {
    let mut served = served_node_proxy();
    let rc = served
        .routes
        .iter_mut()
        .find(|r| r.name == node_proxy::OUTBOUND)
        .unwrap();
    let mut twin = rc.virtual_hosts[0].clone();
    twin.name = "twin".to_string();
    rc.virtual_hosts.push(twin);
    assert_found(&served, &["is in virtual hosts"]);
}

#[test]
fn a_connect_route_that_does_not_terminate_is_refused() {
    let mut served = served_node_proxy();
    let rc = served
        .routes
        .iter_mut()
        .find(|r| r.name == node_proxy::OUTBOUND)
        .unwrap();
    let connect = &mut rc.virtual_hosts[0].routes[0];
    match &mut connect.action {
        Some(route::Action::Route(a)) => a.upgrade_configs.clear(),
        other => panic!("the first route is the CONNECT one: {other:?}"),
    }
    assert_found(&served, &["does not terminate it"]);
}

#[test]
fn resources_that_do_not_decode_are_findings() {
    let broken = Any {
        type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".to_string(),
        value: vec![0xff, 0xff, 0xff],
    };
    let (served, findings) = Served::decode([&broken]);
    assert!(served.listeners.is_empty());
    assert_eq!(findings.len(), 1, "{findings:?}");
    let fine = pack_any(served_node_proxy().listeners[0].clone());
    let (served, findings) = Served::decode([&fine]);
    assert_eq!((served.listeners.len(), findings.len()), (1, 0));
    assert!(!fine.encode_to_vec().is_empty());
}
