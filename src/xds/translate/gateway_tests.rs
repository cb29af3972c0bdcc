//! Gateway translation tests: golden output, listeners that bind the container ports,
//! virtual hosts per hostname, and attachment by port name and number.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost, route, route_action, route_match};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use prost::Message;

use super::fixtures::{backend, gateway_parent, gateway_world, golden, prefix, telemetry, world};
use super::gateway::translate;
use super::translate_all;
use crate::xds::model::*;

const HTTP: &str = "gateway|80|edge/ingress";
const ALT: &str = "gateway|8443|edge/ingress";

#[test]
fn golden_gateway() {
    let (gateways, routes) = gateway_world();
    golden("gateway", &translate(&gateways, &routes, &telemetry()));
}

fn hcm(l: &Listener) -> HttpConnectionManager {
    assert!(
        l.api_listener.is_none(),
        "{}: a gateway listener is a real socket",
        l.name
    );
    let [chain] = l.filter_chains.as_slice() else {
        panic!("{}: one filter chain", l.name)
    };
    let [f] = chain.filters.as_slice() else {
        panic!("{}: one network filter", l.name)
    };
    assert_eq!(f.name, "envoy.filters.network.http_connection_manager");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("typed config")
    };
    HttpConnectionManager::decode(any.value.as_slice()).expect("HCM decodes")
}

fn bound_port(l: &Listener) -> (String, u32) {
    match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => (s.address.clone(), p),
            ref other => panic!("{other:?}"),
        },
        other => panic!("{}: {other:?}", l.name),
    }
}

#[test]
fn one_listener_per_port_on_its_container_port_with_rds_router_and_telemetry() {
    let (gateways, routes) = gateway_world();
    let r = translate(&gateways, &routes, &telemetry());
    let listeners = &r.listeners["edge/ingress"];
    assert_eq!(listeners.keys().collect::<Vec<_>>(), [HTTP, ALT]);
    assert_eq!(bound_port(&listeners[HTTP]), ("0.0.0.0".to_string(), 8080));
    assert_eq!(bound_port(&listeners[ALT]), ("0.0.0.0".to_string(), 8443));
    for (name, l) in listeners {
        let h = hcm(l);
        match h.route_specifier {
            Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                assert_eq!(&rds.route_config_name, name);
                assert!(r.routes.contains_key(name), "{name} has its route configuration");
            }
            other => panic!("{name}: expected RDS, got {other:?}"),
        }
        assert_eq!(h.http_filters.last().unwrap().name, "envoy.filters.http.router");
        assert_eq!(h.access_log.len(), 1, "access log reaches the HCM");
        assert!(h.tracing.is_some(), "tracing reaches the HCM");
    }
    assert_eq!(r.routes.len(), 2);
}

fn vhost<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name} in {}", rc.name))
}

/// A route as `(route name, path, header count, weighted clusters)`.
type Summary = (String, String, usize, Vec<(String, u32)>);

fn summary(vh: &VirtualHost) -> Vec<Summary> {
    vh.routes
        .iter()
        .map(|r| {
            let m = r.r#match.as_ref().unwrap();
            let path = match &m.path_specifier {
                Some(route_match::PathSpecifier::Prefix(p)) => format!("prefix {p}"),
                Some(route_match::PathSpecifier::Path(p)) => format!("exact {p}"),
                other => format!("{other:?}"),
            };
            let Some(route::Action::Route(action)) = &r.action else {
                panic!("route action")
            };
            let clusters = match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight.unwrap().value))
                    .collect(),
                other => panic!("{other:?}"),
            };
            (r.name.clone(), path, m.headers.len(), clusters)
        })
        .collect()
}

#[test]
fn one_virtual_host_per_hostname_with_the_catch_all_routes_last_and_no_repeated_domain() {
    let (gateways, routes) = gateway_world();
    let r = translate(&gateways, &routes, &telemetry());
    let http = &r.routes[HTTP];
    let names: Vec<&str> = http.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["*:80", "*.shop.example.com:80", "shop.example.com:80"]);
    let mut seen = BTreeSet::new();
    for d in http.virtual_hosts.iter().flat_map(|v| &v.domains) {
        assert!(
            seen.insert(d.to_lowercase()),
            "domain {d} repeats: Envoy would reject the update"
        );
    }
    assert_eq!(
        vhost(http, "shop.example.com:80").domains,
        ["shop.example.com", "shop.example.com:80"]
    );
    assert_eq!(vhost(http, "*:80").domains, ["*"]);

    let cart = "outbound|50051||cart.shop.svc.cluster.local".to_string();
    let v2 = "outbound|50051||cart-v2.shop.svc.cluster.local".to_string();
    // The host's own rules by precedence (exact, then more headers), then the routes
    // without hostnames.
    let expected = vec![
        (
            "shop/storefront".to_string(),
            "exact /healthz".to_string(),
            0,
            vec![(cart.clone(), 1)],
        ),
        ("shop/storefront".into(), "prefix /api".into(), 1, vec![(v2.clone(), 1)]),
        (
            "shop/storefront".into(),
            "prefix /api".into(),
            0,
            vec![(cart.clone(), 90), (v2.clone(), 10)],
        ),
        ("edge/fallback".into(), "prefix /".into(), 0, vec![(v2.clone(), 1)]),
    ];
    assert_eq!(summary(vhost(http, "shop.example.com:80")), expected);
    assert_eq!(summary(vhost(http, "*.shop.example.com:80")), expected);
    let fallback_only = vec![("edge/fallback".to_string(), "prefix /".to_string(), 0, vec![(v2, 1)])];
    assert_eq!(summary(vhost(http, "*:80")), fallback_only);

    // `sectionName: http` keeps the storefront off the other port; the fallback is on both.
    let alt = &r.routes[ALT];
    assert_eq!(alt.virtual_hosts.len(), 1);
    assert_eq!(summary(vhost(alt, "*:8443")), fallback_only);
    assert!(
        !format!("{r:?}").contains("/internal"),
        "another gateway's route stays out"
    );
}

#[test]
fn a_port_number_parent_attaches_to_that_port_only() {
    let (gateways, mut routes) = gateway_world();
    routes.push(HttpRoute {
        name: "alt-only".into(),
        namespace: "edge".into(),
        hostnames: vec!["alt.example.com".into()],
        parents: vec![gateway_parent("ingress", None, Some(8443))],
        rules: vec![RouteRule {
            matches: vec![],
            backends: vec![backend("cart", 1)],
        }],
    });
    let r = translate(&gateways, &routes, &telemetry());
    assert!(
        r.routes[HTTP]
            .virtual_hosts
            .iter()
            .all(|v| v.name != "alt.example.com:80")
    );
    let alt = vhost(&r.routes[ALT], "alt.example.com:8443");
    assert_eq!(alt.domains, ["alt.example.com", "alt.example.com:8443"]);
    assert_eq!(alt.routes.len(), 2, "its own route, then the fallback");
}

#[test]
fn a_port_without_routes_answers_404_from_an_empty_catch_all() {
    let (gateways, _) = gateway_world();
    let r = translate(&gateways, &[], &Telemetry::default());
    for name in [HTTP, ALT] {
        let rc = &r.routes[name];
        assert_eq!(rc.virtual_hosts.len(), 1);
        assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
        assert!(rc.virtual_hosts[0].routes.is_empty());
    }
}

#[test]
fn two_ports_on_one_container_port_keep_the_first_listener() {
    let (mut gateways, routes) = gateway_world();
    gateways[0].ports[1].container_port = 8080;
    let r = translate(&gateways, &routes, &telemetry());
    assert_eq!(r.listeners["edge/ingress"].keys().collect::<Vec<_>>(), [HTTP]);
}

#[test]
fn one_route_attaches_to_a_service_and_a_gateway_and_gateway_listeners_stay_apart() {
    let (services, _) = world();
    let (gateways, _) = gateway_world();
    let both = HttpRoute {
        name: "both".into(),
        namespace: "shop".into(),
        hostnames: vec!["shop.example.com".into()],
        parents: vec![
            ParentRef {
                kind: ParentKind::Service,
                name: "cart".into(),
                namespace: "shop".into(),
                port: None,
                section_name: None,
            },
            gateway_parent("ingress", None, None),
        ],
        rules: vec![RouteRule {
            matches: vec![prefix("/v2", &[])],
            backends: vec![backend("cart-v2", 1)],
        }],
    };
    let r = translate_all(&services, &gateways, &[both], &Telemetry::default());
    let mesh = &r.routes["cart.shop.svc.cluster.local:50051"];
    assert_eq!(
        mesh.virtual_hosts[0].routes[0].name, "shop/both",
        "hostnames do not apply to services"
    );
    assert_eq!(
        vhost(&r.routes[HTTP], "shop.example.com:80").routes[0].name,
        "shop/both"
    );
    assert!(
        r.listeners.keys().all(|n| !n.starts_with("gateway|")),
        "mesh clients' listeners hold no gateway listener"
    );
    assert_eq!(r.gateway_listeners["edge/ingress"].len(), 2);
}
