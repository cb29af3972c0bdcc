//! Translation tests: golden output, the protocol-relevant properties, and a round trip of
//! every resource through the Envoy types' protobuf encoding.

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action, route_match};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use prost::Message;

use super::fixtures::*;
use super::{translate, translate_all};
use crate::xds::model::*;

#[test]
fn golden_services_and_routes() {
    let (services, routes) = world();
    golden("shop", &translate(&services, &routes, &telemetry()));
}

#[test]
fn one_listener_route_cluster_and_assignment_per_service_port() {
    let (services, routes) = world();
    let r = translate(&services, &routes, &Telemetry::default());
    let names: Vec<&String> = r.listeners.keys().collect();
    assert_eq!(
        names,
        [
            "cart-v2.shop.svc.cluster.local:50051",
            "cart.shop.svc.cluster.local:50051"
        ]
    );
    // Node proxies' route configurations beside the proxyless clients'.
    let mut routes = names.clone();
    let node_proxy = [
        super::node_proxy::INBOUND.to_string(),
        super::node_proxy::OUTBOUND.to_string(),
    ];
    routes.extend(&node_proxy);
    assert_eq!(r.routes.keys().collect::<Vec<_>>(), routes);
    assert!(r.clusters.contains_key("outbound|50051||cart.shop.svc.cluster.local"));
    assert!(r.endpoints.contains_key("outbound|50051||cart.shop.svc.cluster.local"));
}

#[test]
fn only_ready_serving_endpoints_by_zone_with_weights() {
    let (services, routes) = world();
    let r = translate(&services, &routes, &Telemetry::default());
    let cla = &r.endpoints["outbound|50051||cart.shop.svc.cluster.local"];
    for locality in &cla.endpoints {
        let weight = locality
            .load_balancing_weight
            .expect("every locality has a weight")
            .value;
        assert_eq!(weight as usize, locality.lb_endpoints.len());
    }
    let text = format!("{cla:?}");
    assert!(text.contains("198.51.100.10") && text.contains("198.51.100.11"));
    assert!(!text.contains("198.51.100.12"), "not-ready endpoints are left out");
    assert!(!text.contains("198.51.100.13"), "terminating endpoints are left out");
    assert_eq!(cla.endpoints.len(), 2, "zone-a and zone-b");
}

fn hcm(listener: &Listener) -> HttpConnectionManager {
    let any = listener.api_listener.clone().unwrap().api_listener.unwrap();
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    HttpConnectionManager::decode(any.value.as_slice()).expect("HCM decodes")
}

#[test]
fn listeners_use_rds_over_ads_with_the_router_last_and_carry_telemetry() {
    let (services, routes) = world();
    let r = translate(&services, &routes, &telemetry());
    for (name, l) in &r.listeners {
        let h = hcm(l);
        match h.route_specifier {
            Some(http_connection_manager::RouteSpecifier::Rds(rds)) => assert_eq!(&rds.route_config_name, name),
            other => panic!("{name}: expected RDS, got {other:?}"),
        }
        assert_eq!(h.http_filters.last().unwrap().name, "envoy.filters.http.router");
        assert_eq!(h.access_log.len(), 1, "access log reaches the HCM");
        assert!(h.tracing.is_some(), "tracing reaches the HCM");
    }
    assert!(r.clusters.contains_key("zipkin"), "the collector gets a cluster");
    let plain = translate(&services, &routes, &Telemetry::default());
    let h = hcm(plain.listeners.values().next().unwrap());
    assert!(h.access_log.is_empty() && h.tracing.is_none());
}

fn routes_of(rc: &RouteConfiguration) -> &[envoy_types::pb::envoy::config::route::v3::Route] {
    &rc.virtual_hosts[0].routes
}

#[test]
fn httproute_weights_and_matches_become_envoy_routes_in_precedence_order() {
    let (services, routes) = world();
    let r = translate(&services, &routes, &Telemetry::default());
    let rc = &r.routes["cart.shop.svc.cluster.local:50051"];
    let vh = &rc.virtual_hosts[0];
    assert!(
        vh.domains.contains(&"cart".to_string())
            && vh.domains.contains(&"cart.shop.svc.cluster.local:50051".to_string())
    );
    let rs = routes_of(rc);
    assert_eq!(rs.len(), 2);
    // The longer, header-qualified prefix outranks the catch-all.
    match &rs[0].r#match.as_ref().unwrap().path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => assert_eq!(p, "/cart.Cart/Checkout"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rs[0].r#match.as_ref().unwrap().headers[0].name, "x-canary");
    let Some(route::Action::Route(action)) = &rs[1].action else {
        panic!("route action")
    };
    match &action.cluster_specifier {
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let weights: Vec<(String, u32)> = w
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.weight.unwrap().value))
                .collect();
            assert_eq!(
                weights,
                [
                    ("outbound|50051||cart.shop.svc.cluster.local".to_string(), 90),
                    ("outbound|50051||cart-v2.shop.svc.cluster.local".to_string(), 10)
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    // A service without routes gets one catch-all to itself.
    let plain = routes_of(&r.routes["cart-v2.shop.svc.cluster.local:50051"]);
    assert_eq!(plain.len(), 1);
}

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    assert_eq!(&M::decode(bytes.as_slice()).expect("decodes"), m);
}

/// Decodes a packed message as the type its URL names, and everything packed inside it.
fn decode_any(any: &envoy_types::pb::google::protobuf::Any) {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log;
    use envoy_types::pb::envoy::config::trace::v3::ZipkinConfig;
    use envoy_types::pb::envoy::config::trace::v3::tracing;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    fn decoded<M: Message + Default + prost::Name>(any: &envoy_types::pb::google::protobuf::Any) -> M {
        assert_eq!(any.type_url, M::type_url());
        M::decode(any.value.as_slice()).unwrap_or_else(|e| panic!("{}: {e}", any.type_url))
    }
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    match name {
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
            let h: HttpConnectionManager = decoded(any);
            for f in &h.http_filters {
                if let Some(http_filter::ConfigType::TypedConfig(a)) = &f.config_type {
                    decode_any(a);
                }
            }
            for l in &h.access_log {
                if let Some(access_log::ConfigType::TypedConfig(a)) = &l.config_type {
                    decode_any(a);
                }
            }
            if let Some(tracing::http::ConfigType::TypedConfig(a)) = h
                .tracing
                .as_ref()
                .and_then(|t| t.provider.as_ref()?.config_type.as_ref())
            {
                decode_any(a);
            }
            round_trip(&h);
        }
        "envoy.extensions.filters.http.router.v3.Router" => round_trip(&decoded::<Router>(any)),
        "envoy.extensions.access_loggers.file.v3.FileAccessLog" => round_trip(&decoded::<FileAccessLog>(any)),
        "envoy.config.trace.v3.ZipkinConfig" => round_trip(&decoded::<ZipkinConfig>(any)),
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => round_trip(&decoded::<HttpProtocolOptions>(any)),
        other => panic!("no decoder for {other}"),
    }
}

fn decode_listener(l: &Listener) {
    round_trip(l);
    if let Some(any) = l.api_listener.as_ref().and_then(|a| a.api_listener.as_ref()) {
        decode_any(any);
    }
    for chain in &l.filter_chains {
        for f in &chain.filters {
            match &f.config_type {
                Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) => {
                    decode_any(any)
                }
                other => panic!("{}: filter {} has no typed config: {other:?}", l.name, f.name),
            }
        }
    }
}

#[test]
fn every_resource_round_trips_through_the_envoy_types() {
    let (services, mut routes) = world();
    let (gateways, gateway_routes) = gateway_world();
    routes.extend(gateway_routes);
    let r = translate_all(&services, &gateways, &routes, &telemetry());
    assert!(!r.gateway_listeners.is_empty(), "gateway resources are covered too");
    r.listeners.values().for_each(decode_listener);
    r.gateway_listeners
        .values()
        .flat_map(|l| l.values())
        .for_each(decode_listener);
    r.routes.values().for_each(round_trip);
    for c in r.clusters.values() {
        round_trip(c);
        c.typed_extension_protocol_options.values().for_each(decode_any);
    }
    r.endpoints.values().for_each(round_trip);
}
