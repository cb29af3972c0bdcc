//! Multi-network tests: split-horizon EDS (direct on the client's network, through
//! east-west gateways elsewhere, left out and counted without a gateway), the snapshot's
//! per-network views, and the east-west gateway's listener and routes.

use std::collections::BTreeMap;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use prost::Message;

use super::eds::{Horizon, OTHER_NETWORKS, endpoints_without_gateway, load_assignment};
use super::{Resources, split_horizon, translate_all};
use crate::xds::model::*;
use crate::xds::serve::server::ClientInfo;
use crate::xds::serve::snapshot::{ENDPOINT, Snapshot, View};

const GREETER: &str = "outbound|50051||greeter.shop.svc.cluster.local";

fn endpoint(address: &str, cluster: &str, network: &str) -> Endpoint {
    Endpoint {
        address: address.to_string(),
        ports: BTreeMap::from([("grpc".to_string(), 8080)]),
        zone: Some("z1".to_string()),
        cluster: cluster.to_string(),
        network: network.to_string(),
        ready: true,
        terminating: false,
    }
}

fn greeter(endpoints: Vec<Endpoint>) -> Service {
    Service {
        name: "greeter".to_string(),
        namespace: "shop".to_string(),
        ports: vec![ServicePort {
            name: "grpc".to_string(),
            port: 50051,
            http2: true,
        }],
        endpoints: endpoints.into(),
    }
}

fn gateway(network: &str, cluster: &str, address: &str) -> NetworkGateway {
    NetworkGateway {
        network: network.to_string(),
        cluster: cluster.to_string(),
        address: address.to_string(),
        port: 15443,
    }
}

/// Cluster `a` on net-a (the control plane's): two endpoints; cluster `b` on net-b: three,
/// one not ready; cluster `c` on net-c: one, and net-c has no gateway.
fn world() -> (Vec<Service>, Vec<NetworkGateway>) {
    let mut not_ready = endpoint("10.2.0.9", "b", "net-b");
    not_ready.ready = false;
    let services = vec![greeter(vec![
        endpoint("10.1.0.1", "a", ""),
        endpoint("10.1.0.2", "a", "net-a"),
        endpoint("10.2.0.1", "b", "net-b"),
        endpoint("10.2.0.2", "b", "net-b"),
        endpoint("10.2.0.3", "b", "net-b"),
        not_ready,
        endpoint("10.3.0.1", "c", "net-c"),
    ])];
    let gateways = vec![
        gateway("net-a", "a", "203.0.113.1"),
        gateway("net-b", "b", "203.0.113.2"),
    ];
    (services, gateways)
}

/// (zone, sub_zone, locality weight, [(address, port, entry weight)]) of a load assignment.
type Seen = Vec<(String, String, u32, Vec<(String, u32, Option<u32>)>)>;

fn seen(cla: &ClusterLoadAssignment) -> Seen {
    cla.endpoints
        .iter()
        .map(|l| {
            let locality = l.locality.clone().unwrap_or_default();
            let entries = l
                .lb_endpoints
                .iter()
                .map(|e| {
                    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                        panic!("not an endpoint: {e:?}");
                    };
                    let Some(address::Address::SocketAddress(sa)) = ep.address.clone().and_then(|a| a.address) else {
                        panic!("not a socket address: {ep:?}");
                    };
                    let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
                        panic!("no port: {sa:?}");
                    };
                    (sa.address, port, e.load_balancing_weight.map(|w| w.value))
                })
                .collect();
            (
                locality.zone,
                locality.sub_zone,
                l.load_balancing_weight.map_or(0, |w| w.value),
                entries,
            )
        })
        .collect()
}

fn entry(address: &str, port: u32, weight: Option<u32>) -> (String, u32, Option<u32>) {
    (address.to_string(), port, weight)
}

fn client_view(services: &[Service], gateways: &[NetworkGateway], network: &str) -> Seen {
    let by_network = group(gateways);
    let horizon = Horizon::Client {
        network,
        own: "net-a",
        gateways: &by_network,
    };
    seen(&load_assignment(GREETER, &services[0], &services[0].ports[0], horizon))
}

fn group(gateways: &[NetworkGateway]) -> BTreeMap<&str, Vec<&NetworkGateway>> {
    let mut by_network: BTreeMap<&str, Vec<&NetworkGateway>> = BTreeMap::new();
    for g in gateways {
        by_network.entry(g.network.as_str()).or_default().push(g);
    }
    by_network
}

#[test]
fn same_network_endpoints_are_direct_and_others_go_through_their_gateway_weighted() {
    let (services, gateways) = world();
    let expected: Seen = vec![
        // net-b's three ready endpoints, behind its one gateway: weight 3.
        ("".into(), "b".into(), 3, vec![entry("203.0.113.2", 15443, Some(3))]),
        // An endpoint without a network is on the control plane's (net-a).
        (
            "z1".into(),
            "a".into(),
            2,
            vec![entry("10.1.0.1", 8080, None), entry("10.1.0.2", 8080, None)],
        ),
        // net-c has no gateway: left out.
    ];
    assert_eq!(client_view(&services, &gateways, "net-a"), expected);
    let from_b: Seen = vec![
        ("".into(), "a".into(), 2, vec![entry("203.0.113.1", 15443, Some(2))]),
        (
            "z1".into(),
            "b".into(),
            3,
            vec![
                entry("10.2.0.1", 8080, None),
                entry("10.2.0.2", 8080, None),
                entry("10.2.0.3", 8080, None),
            ],
        ),
    ];
    assert_eq!(client_view(&services, &gateways, "net-b"), from_b);
}

#[test]
fn two_gateways_on_one_network_each_carry_the_endpoints_behind_them() {
    let (services, mut gateways) = world();
    gateways.push(gateway("net-b", "b", "203.0.113.3"));
    let view = client_view(&services, &gateways, "net-a");
    assert_eq!(
        view[0],
        (
            "".into(),
            "b".into(),
            3,
            vec![
                entry("203.0.113.2", 15443, Some(3)),
                entry("203.0.113.3", 15443, Some(3))
            ]
        )
    );
}

#[test]
fn a_network_without_a_gateway_is_left_out_and_counted() {
    let (services, gateways) = world();
    let from_c = client_view(&services, &gateways, "net-c");
    let sub_zones: Vec<&str> = from_c.iter().map(|l| l.1.as_str()).collect();
    assert_eq!(sub_zones, ["a", "b", "c"], "{from_c:?}");
    assert_eq!(
        endpoints_without_gateway(&services, &gateways, "net-a"),
        BTreeMap::from([("net-c".to_string(), 1)])
    );
    // Without any gateway, every network's endpoints are counted (not-ready ones are not).
    assert_eq!(
        endpoints_without_gateway(&services, &[], "net-a"),
        BTreeMap::from([
            ("net-a".to_string(), 2),
            ("net-b".to_string(), 3),
            ("net-c".to_string(), 1)
        ])
    );
    assert_eq!(
        super::eds::without_gateway_message("net-c", 1),
        "1 endpoint on network net-c cannot be reached from other networks: the network has no east-west gateway with a load-balancer address (a MeshGateway of type eastwest for network net-c, whose Service carries the label topology.weft.dev/network=net-c)"
    );
    // A client on a network nothing is on sees gateways only, and nothing of net-c.
    let elsewhere = client_view(&services, &gateways, "net-x");
    assert!(elsewhere.iter().all(|l| l.0.is_empty() && l.1 != "c"), "{elsewhere:?}");
    assert_eq!(elsewhere.len(), 2);
}

#[test]
fn east_west_gateways_see_only_their_own_network() {
    let (services, _) = world();
    let horizon = Horizon::Local {
        network: "net-b",
        own: "net-a",
    };
    let view = seen(&load_assignment(GREETER, &services[0], &services[0].ports[0], horizon));
    assert_eq!(view.len(), 1, "{view:?}");
    assert_eq!(view[0].1, "b");
    assert!(view[0].3.iter().all(|e| e.0.starts_with("10.2.")), "{view:?}");
}

/// Resources for the world, with the control plane on net-a and an east-west gateway
/// `weft-system/eastwest`.
fn resources(services: &[Service], gateways: &[NetworkGateway], own: &str) -> (Resources, BTreeMap<String, usize>) {
    let eastwest = Gateway {
        name: "eastwest".into(),
        namespace: "weft-system".into(),
        ports: vec![GatewayPort {
            name: "tls".into(),
            port: 15443,
            container_port: 15443,
        }],
        eastwest: true,
    };
    let mut r = translate_all(services, &[eastwest], &[], &Telemetry::default());
    let counts = split_horizon(&mut r, services, gateways, own);
    (r, counts)
}

fn eds_of(snap: &Snapshot, view: &View) -> Seen {
    let set = snap.of(ENDPOINT, view).expect("an EDS set");
    let any = &set.items[GREETER].any;
    seen(&ClusterLoadAssignment::decode(any.value.as_slice()).unwrap())
}

fn info(role: Option<&str>, network: Option<&str>) -> ClientInfo {
    ClientInfo {
        id: "c".into(),
        namespace: Some("weft-system".into()),
        role: role.map(str::to_string),
        gateway: role.map(|_| "eastwest".to_string()),
        network: network.map(str::to_string),
        ..Default::default()
    }
}

#[test]
fn snapshot_views_pick_the_client_networks_set() {
    let (services, gateways) = world();
    let (r, counts) = resources(&services, &gateways, "net-a");
    assert_eq!(counts, BTreeMap::from([("net-c".to_string(), 1)]));
    let snap = Snapshot::new(1, Instant::now(), &r);
    let view = |role, network| info(role, network).view().unwrap();
    // No NETWORK, or the control plane's own: the shared set (net-a's view).
    let own = eds_of(&snap, &view(None, None));
    assert_eq!(own, client_view(&services, &gateways, "net-a"));
    assert_eq!(eds_of(&snap, &view(None, Some("net-a"))), own);
    assert_eq!(eds_of(&snap, &view(None, Some(""))), own);
    assert_eq!(
        eds_of(&snap, &view(None, Some("net-b"))),
        client_view(&services, &gateways, "net-b")
    );
    // A network nothing is on: every endpoint is elsewhere.
    assert_eq!(
        eds_of(&snap, &view(None, Some("net-z"))),
        client_view(&services, &gateways, "net-z")
    );
    assert!(r.network_endpoints.contains_key(OTHER_NETWORKS));
    // The east-west gateway (on net-a unless it says otherwise): net-a's endpoints only.
    let gw = eds_of(&snap, &view(Some("gateway"), None));
    assert_eq!(gw.len(), 1, "{gw:?}");
    assert!(gw[0].3.iter().all(|e| e.0.starts_with("10.1.")), "{gw:?}");
    let gw_b = eds_of(&snap, &view(Some("gateway"), Some("net-b")));
    assert!(gw_b.iter().all(|l| l.1 == "b" && !l.0.is_empty()), "{gw_b:?}");
    // Counts include every network's sets: 1 shared + net-b, net-c, * + local a, b, c.
    let eds_count = snap.counts().find(|(t, _)| *t == ENDPOINT).unwrap().1;
    assert_eq!(eds_count, 1 + 3 + 3);
}

#[test]
fn a_single_network_mesh_keeps_one_shared_set() {
    let services = vec![greeter(vec![endpoint("10.1.0.1", "a", "")])];
    let (r, counts) = resources(&services, &[], "");
    assert!(counts.is_empty());
    assert!(r.network_endpoints.is_empty() && r.local_endpoints.is_empty());
    let snap = Snapshot::new(1, Instant::now(), &r);
    assert!(snap.networks.endpoints.is_empty() && snap.networks.local.is_empty());
    let shared = snap.of(ENDPOINT, &View::MESH).unwrap() as *const _;
    for view in [
        View::MESH.on("net-b"),
        View::gateway("weft-system/eastwest"),
        View::gateway("weft-system/eastwest").on("net-b"),
    ] {
        assert_eq!(snap.of(ENDPOINT, &view).unwrap() as *const _, shared, "{view:?}");
    }
}

#[test]
fn same_content_sees_changes_in_other_networks_views() {
    let (services, gateways) = world();
    let snap =
        |gateways: &[NetworkGateway]| Snapshot::new(1, Instant::now(), &resources(&services, gateways, "net-a").0);
    assert!(snap(&gateways).same_content(&snap(&gateways)));
    // A second gateway on net-a changes only what net-b (and elsewhere) sees.
    let mut more = gateways.clone();
    more.push(gateway("net-a", "a", "203.0.113.9"));
    let (a, b) = (snap(&gateways), snap(&more));
    assert!(same_shared_eds(&a, &b));
    assert!(!a.same_content(&b));
}

fn same_shared_eds(a: &Snapshot, b: &Snapshot) -> bool {
    let set = |s: &Snapshot| -> Vec<(String, String)> {
        s.resources[ENDPOINT]
            .items
            .iter()
            .map(|(n, e)| (n.clone(), e.version.clone()))
            .collect()
    };
    set(a) == set(b)
}

/// Decodes the east-west gateway's listener and its route configuration.
fn eastwest_config(r: &Resources) -> (Listener, RouteConfiguration) {
    let listeners = &r.gateway_listeners["weft-system/eastwest"];
    let (name, listener) = listeners.iter().next().unwrap();
    let listener = Listener::decode(listener.encode_to_vec().as_slice()).unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &listener.filter_chains[0].filters[0].config_type else {
        panic!("no typed config");
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
        panic!("not RDS");
    };
    assert_eq!(&rds.route_config_name, name);
    let routes = RouteConfiguration::decode(r.routes[name].encode_to_vec().as_slice()).unwrap();
    (listener, routes)
}

/// Where the east-west gateway sends a request with this authority (Envoy matches domains
/// exactly here: no wildcards are used).
fn route_for(routes: &RouteConfiguration, authority: &str) -> Option<String> {
    let vh = routes
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == authority))?;
    match &vh.routes[0].action {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => Some(c.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn the_east_west_listener_routes_by_authority() {
    let mut services = world().0;
    let mut two_ports = greeter(vec![]);
    two_ports.name = "web".into();
    two_ports.ports = vec![
        ServicePort {
            name: "http".into(),
            port: 80,
            http2: false,
        },
        ServicePort {
            name: "admin".into(),
            port: 9090,
            http2: false,
        },
    ];
    let mut other_ns = greeter(vec![]);
    other_ns.namespace = "lab".into();
    services.extend([two_ports, other_ns]);
    let (r, _) = resources(&services, &[], "net-a");
    let (listener, routes) = eastwest_config(&r);
    let Some(address::Address::SocketAddress(sa)) = listener.address.and_then(|a| a.address) else {
        panic!("no socket address");
    };
    assert_eq!(
        (sa.address.as_str(), sa.port_specifier),
        ("0.0.0.0", Some(socket_address::PortSpecifier::PortValue(15443)))
    );
    let greeter = Some(GREETER.to_string());
    for authority in [
        "greeter.shop.svc.cluster.local:50051",
        "greeter.shop.svc.cluster.local",
        "greeter.shop:50051",
        "greeter.shop.svc",
    ] {
        assert_eq!(route_for(&routes, authority), greeter, "{authority}");
    }
    // Short names exist in two namespaces: ambiguous, so left out.
    assert_eq!(route_for(&routes, "greeter:50051"), None);
    assert_eq!(
        route_for(&routes, "greeter.lab:50051").as_deref(),
        Some("outbound|50051||greeter.lab.svc.cluster.local")
    );
    // A bare name of a two-port service goes to port 80; with a port, to that port.
    let web = |p: u16| Some(format!("outbound|{p}||web.shop.svc.cluster.local"));
    assert_eq!(route_for(&routes, "web"), web(80));
    assert_eq!(route_for(&routes, "web.shop.svc.cluster.local:9090"), web(9090));
    // Envoy refuses a domain in two virtual hosts.
    let mut all: Vec<&String> = routes.virtual_hosts.iter().flat_map(|v| &v.domains).collect();
    let before = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), before);
    // Only the east-west gateway's listeners are different: mesh clients see the mesh's.
    assert!(r.listeners.contains_key("greeter.shop.svc.cluster.local:50051"));
    assert!(!r.listeners.keys().any(|k| k.starts_with("gateway|")));
}

#[test]
fn the_metric_shows_current_networks_only() {
    let metrics = crate::xds::metrics::XdsMetrics::new();
    metrics.set_endpoints_without_gateway(&BTreeMap::from([("net-a".to_string(), 1)]));
    let text = metrics.encode();
    assert!(
        text.contains("weft_endpoints_without_gateway{network=\"net-a\"} 1"),
        "{text}"
    );
    metrics.set_endpoints_without_gateway(&BTreeMap::new());
    assert!(!metrics.encode().contains("network=\"net-a\""));
}
