//! A node proxy's view, routed the way Envoy's router would route requests: by authority,
//! with and without the port, as a CONNECT tunnel, and through an HTTPRoute.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;

use super::*;
use crate::envoy_check::{Request, route_clusters, route_for};
use crate::xds::model::{Backend, Endpoint, ParentKind, ParentRef, RouteRule, ServicePort};
use crate::xds::translate::translate_all;

const GREETER: &str = "outbound|50051||greeter.shop.svc.cluster.local";

fn greeter() -> Service {
    Service {
        name: "greeter".into(),
        namespace: "shop".into(),
        ports: vec![
            ServicePort {
                name: "grpc".into(),
                port: 50051,
                http2: true,
            },
            ServicePort {
                name: "http".into(),
                port: 8080,
                http2: false,
            },
        ],
        endpoints: Arc::new(vec![Endpoint {
            address: "198.51.100.20".into(),
            ports: BTreeMap::from([("grpc".into(), 50051), ("http".into(), 8080)]),
            zone: Some("zone-a".into()),
            cluster: "local".into(),
            network: String::new(),
            ready: true,
            terminating: false,
        }]),
    }
}

fn greeter_v2() -> Service {
    Service {
        name: "greeter-v2".into(),
        ..greeter()
    }
}

fn outbound(services: &[Service], routes: &[HttpRoute]) -> RouteConfiguration {
    translate(services, routes, &Telemetry::default()).routes[OUTBOUND].clone()
}

fn clusters(rc: &RouteConfiguration, req: &Request) -> Vec<(String, u32)> {
    route_for(rc, req).map(route_clusters).unwrap_or_default()
}

fn get<'a>(authority: &'a str, path: &'a str) -> Request<'a> {
    Request {
        authority,
        path,
        ..Default::default()
    }
}

#[test]
fn the_full_and_namespaced_names_route_to_the_service_cluster_and_short_ones_nowhere() {
    let rc = outbound(&[greeter()], &[]);
    for authority in [
        "greeter.shop.svc.cluster.local:50051",
        "greeter.shop:50051",
        "greeter.shop.svc:50051",
        "Greeter.Shop:50051",
    ] {
        assert_eq!(
            clusters(&rc, &get(authority, "/")),
            [(GREETER.to_string(), 1)],
            "{authority}"
        );
    }
    // Without the port: the service's port 80 if it has one, else its lowest (8080 here).
    let http = "outbound|8080||greeter.shop.svc.cluster.local";
    assert_eq!(clusters(&rc, &get("greeter.shop", "/")), [(http.to_string(), 1)]);
    assert_eq!(clusters(&rc, &get("greeter.shop:8080", "/x")), [(http.to_string(), 1)]);
    let single = Service {
        ports: greeter().ports[..1].to_vec(),
        ..greeter()
    };
    let rc_single = outbound(&[single], &[]);
    for authority in ["greeter.shop", "greeter.shop.svc.cluster.local"] {
        assert_eq!(
            clusters(&rc_single, &get(authority, "/")),
            [(GREETER.to_string(), 1)],
            "{authority}"
        );
    }
    // A shared proxy cannot tell the caller's namespace: a short name is not routed.
    assert!(route_for(&rc, &get("greeter:50051", "/")).is_none());
    assert!(route_for(&rc, &get("greeter", "/")).is_none());
}

#[test]
fn connect_tunnels_reach_the_service_cluster() {
    let rc = outbound(&[greeter()], &[]);
    let connect = Request {
        authority: "greeter.shop.svc.cluster.local:50051",
        connect: true,
        ..Default::default()
    };
    let route = route_for(&rc, &connect).expect("a CONNECT route");
    assert_eq!(route_clusters(route), [(GREETER.to_string(), 1)]);
    let Some(route::Action::Route(action)) = &route.action else {
        panic!("{route:?}")
    };
    assert!(
        action
            .upgrade_configs
            .iter()
            .any(|u| u.upgrade_type == "CONNECT" && u.connect_config.is_some()),
        "the route terminates CONNECT: {action:?}"
    );
    // A CONNECT matches no HTTP route, and an HTTP request no CONNECT one.
    assert!(matches!(
        route.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()),
        Some(route_match::PathSpecifier::ConnectMatcher(_))
    ));
    let http = route_for(&rc, &get("greeter.shop.svc.cluster.local:50051", "/")).unwrap();
    assert_eq!(http.name, "default");
    // The connection manager lets CONNECT in, on HTTP/1.1 and HTTP/2.
    let hcm = outbound_hcm(&translate(&[greeter()], &[], &Telemetry::default()).listeners[OUTBOUND]);
    assert!(hcm.upgrade_configs.iter().any(|u| u.upgrade_type == "CONNECT"));
    assert!(hcm.http2_protocol_options.as_ref().is_some_and(|o| o.allow_connect));
}

fn outbound_hcm(l: &Listener) -> HttpConnectionManager {
    match &l.filter_chains[0].filters[0].config_type {
        Some(filter::ConfigType::TypedConfig(any)) => HttpConnectionManager::decode(&any.value[..]).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_httproute_changes_the_node_proxy_route_as_it_changes_the_proxyless_one() {
    let services = [greeter(), greeter_v2()];
    let split = HttpRoute {
        name: "split".into(),
        namespace: "shop".into(),
        hostnames: vec![],
        parents: vec![ParentRef {
            kind: ParentKind::Service,
            name: "greeter".into(),
            namespace: "shop".into(),
            port: Some(50051),
            section_name: None,
        }],
        rules: vec![RouteRule {
            matches: vec![],
            backends: vec![
                Backend {
                    name: "greeter".into(),
                    namespace: "shop".into(),
                    port: 50051,
                    weight: 80,
                },
                Backend {
                    name: "greeter-v2".into(),
                    namespace: "shop".into(),
                    port: 50051,
                    weight: 20,
                },
            ],
        }],
    };
    let want = vec![
        (GREETER.to_string(), 80),
        ("outbound|50051||greeter-v2.shop.svc.cluster.local".to_string(), 20),
    ];
    let before = outbound(&services, &[]);
    assert_eq!(
        clusters(&before, &get("greeter.shop:50051", "/greeter.Greeter/Hello")),
        [(GREETER.to_string(), 1)]
    );
    let all = translate_all(&services, &[], std::slice::from_ref(&split), &Telemetry::default());
    let node = &all.routes[OUTBOUND];
    let proxyless = &all.routes["greeter.shop.svc.cluster.local:50051"];
    let req = get("greeter.shop.svc.cluster.local:50051", "/greeter.Greeter/Hello");
    assert_eq!(clusters(node, &req), want);
    assert_eq!(clusters(proxyless, &req), want, "the proxyless route is the same split");
    // A tunnel follows the catch-all split too; the other port is untouched.
    let connect = Request {
        authority: "greeter.shop:50051",
        connect: true,
        ..Default::default()
    };
    assert_eq!(clusters(node, &connect), want);
    assert_eq!(
        clusters(node, &get("greeter.shop:8080", "/")),
        [("outbound|8080||greeter.shop.svc.cluster.local".to_string(), 1)]
    );
}

#[test]
fn the_inbound_side_forwards_tunnels_to_their_address_but_not_to_the_node_proxys_own() {
    let r = translate(&[greeter()], &[], &Telemetry::default());
    let inbound = &r.routes[INBOUND];
    let connect = |authority| Request {
        authority,
        connect: true,
        ..Default::default()
    };
    assert_eq!(
        clusters(inbound, &connect("198.51.100.20:50051")),
        [(PASSTHROUGH_CLUSTER.to_string(), 1)]
    );
    assert!(
        route_for(inbound, &get("198.51.100.20:50051", "/")).is_none(),
        "CONNECT only"
    );
    let re = regex::Regex::new(REFUSED_AUTHORITY).unwrap();
    for refused in [
        "127.0.0.1:15000",
        "localhost:15000",
        "169.254.169.254:80",
        "0.0.0.0:80",
        "[::1]:15000",
        "[fe80::1]:80",
    ] {
        assert!(re.is_match(refused), "{refused}");
    }
    for allowed in [
        "198.51.100.20:50051",
        "10.1.2.3:8080",
        "[2001:db8::1]:80",
        "localhost.example:80",
    ] {
        assert!(!re.is_match(allowed), "{allowed}");
    }
    let listener = &r.listeners[INBOUND];
    let hcm = outbound_hcm(listener);
    assert_eq!(hcm.http_filters[0].name, "envoy.filters.http.rbac");
    assert_eq!(hcm.http_filters.last().unwrap().name, "envoy.filters.http.router");
}

#[test]
fn every_listener_is_a_socket_and_the_readiness_one_answers_its_path() {
    let r = translate(&[greeter()], &[], &Telemetry::default());
    let ports: Vec<u32> = r
        .listeners
        .values()
        .map(|l| {
            assert!(l.api_listener.is_none(), "{}", l.name);
            match l.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(address::Address::SocketAddress(sa)) => match sa.port_specifier {
                    Some(socket_address::PortSpecifier::PortValue(p)) => p,
                    _ => 0,
                },
                _ => 0,
            }
        })
        .collect();
    assert_eq!(ports, [15008, 15001, 15021], "inbound, outbound, ready (by name)");
    let hcm = outbound_hcm(&r.listeners[READY]);
    let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier else {
        panic!("the readiness route is inline: {hcm:?}")
    };
    let route = route_for(rc, &get("10.0.0.1:15021", READY_PATH)).expect("the readiness route");
    assert!(matches!(&route.action, Some(route::Action::DirectResponse(d)) if d.status == 200));
    assert!(route_for(rc, &get("10.0.0.1:15021", "/other")).is_none());
}
