//! Mesh translation: for each service port a Listener (an `api_listener` HttpConnectionManager
//! that gets its routes over RDS from ADS), a RouteConfiguration, an EDS Cluster and a
//! ClusterLoadAssignment of the ready endpoints grouped by zone. HTTPRoutes attached to a
//! service replace its default route.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Http2ProtocolOptions, Locality, SocketAddress, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch as EnvoyRouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::http::{ZIPKIN_CLUSTER, ads, connection_manager, ranked_routes};
use crate::xds::model::{self, HttpRoute, ParentKind, Service, ServicePort, Telemetry};

/// The mesh's resources, by type and name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshResources {
    /// LDS: one `api_listener` per service port.
    pub listeners: BTreeMap<String, Listener>,
    /// RDS: one route configuration per service port, named like its listener.
    pub routes: BTreeMap<String, RouteConfiguration>,
    /// CDS: one EDS cluster per service port, plus the Zipkin collector's when tracing is on.
    pub clusters: BTreeMap<String, Cluster>,
    /// EDS: one load assignment per service port, named like its cluster.
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
}

/// Translates every service (and the routes attached to them).
pub fn translate(services: &[Service], routes: &[HttpRoute], telemetry: &Telemetry) -> MeshResources {
    let mut out = MeshResources::default();
    for svc in services {
        for port in &svc.ports {
            let name = model::listener_name(&svc.name, &svc.namespace, port.port);
            let cluster = model::cluster_name(&svc.name, &svc.namespace, port.port);
            out.listeners.insert(name.clone(), api_listener(&name, telemetry));
            out.routes.insert(name.clone(), route_configuration(svc, port, routes));
            out.clusters.insert(cluster.clone(), eds_cluster(&cluster, port));
            out.endpoints
                .insert(cluster.clone(), load_assignment(&cluster, svc, port));
        }
    }
    if let Some(zipkin) = &telemetry.zipkin {
        out.clusters
            .insert(ZIPKIN_CLUSTER.to_string(), zipkin_cluster(&zipkin.address));
    }
    out
}

/// A mesh listener: an `api_listener` (no socket) whose routes come over RDS, as proxyless
/// gRPC clients and the node proxy's outbound side use it.
fn api_listener(name: &str, telemetry: &Telemetry) -> Listener {
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(connection_manager(name, name, telemetry))),
        }),
        ..Default::default()
    }
}

/// The names a client may use for a service port: short, namespaced and fully qualified,
/// each with and without the port.
fn domains(svc: &Service, port: u16) -> Vec<String> {
    let ns = &svc.namespace;
    let base = [
        svc.name.clone(),
        format!("{}.{ns}", svc.name),
        format!("{}.{ns}.svc", svc.name),
        svc.host(),
    ];
    base.iter().flat_map(|h| [h.clone(), format!("{h}:{port}")]).collect()
}

fn route_configuration(svc: &Service, port: &ServicePort, routes: &[HttpRoute]) -> RouteConfiguration {
    let name = model::listener_name(&svc.name, &svc.namespace, port.port);
    let attached: Vec<&HttpRoute> = routes
        .iter()
        .filter(|r| r.attaches_to(ParentKind::Service, &svc.name, &svc.namespace, port.port, &port.name))
        .collect();
    let mut envoy_routes = ranked_routes(&attached);
    if attached.is_empty() {
        envoy_routes.push(Route {
            name: "default".to_string(),
            r#match: Some(prefix_match("/")),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(model::cluster_name(
                    &svc.name,
                    &svc.namespace,
                    port.port,
                ))),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vec![VirtualHost {
            name,
            domains: domains(svc, port.port),
            routes: envoy_routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> EnvoyRouteMatch {
    EnvoyRouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

fn eds_cluster(name: &str, port: &ServicePort) -> Cluster {
    let mut typed_extension_protocol_options = std::collections::HashMap::<String, Any>::new();
    if port.http2 {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            )),
            ..Default::default()
        };
        typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(options),
        );
    }
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_string(),
        }),
        connect_timeout: Some(Duration { seconds: 5, nanos: 0 }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        typed_extension_protocol_options,
        ..Default::default()
    }
}

fn zipkin_cluster(address: &str) -> Cluster {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "9411"));
    let port: u32 = port.parse().unwrap_or(9411);
    Cluster {
        name: ZIPKIN_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32,
        )),
        connect_timeout: Some(Duration { seconds: 5, nanos: 0 }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: ZIPKIN_CLUSTER.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint_for(host, port)],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn lb_endpoint_for(address: &str, port: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(Address {
                address: Some(
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(SocketAddress {
                        address: address.to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    }),
                ),
            }),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        ..Default::default()
    }
}

/// Ready, non-terminating endpoints of one service port, grouped by locality: zone, and
/// the mesh cluster as `sub_zone` (so endpoints of two clusters in one zone stay two
/// localities; gRPC refuses an EDS response that names a locality twice). Every locality
/// gets a weight (its endpoint count): gRPC ignores localities without one.
fn load_assignment(name: &str, svc: &Service, port: &ServicePort) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<(String, String), Vec<LbEndpoint>> = BTreeMap::new();
    let mut usable: Vec<(&model::Endpoint, u16)> = svc
        .endpoints
        .iter()
        .filter(|e| e.ready && !e.terminating)
        .filter_map(|e| e.ports.get(&port.name).map(|p| (e, *p)))
        .collect();
    usable.sort_by(|a, b| (&a.0.cluster, &a.0.address, a.1).cmp(&(&b.0.cluster, &b.0.address, b.1)));
    usable.dedup_by(|a, b| a.0.cluster == b.0.cluster && a.0.address == b.0.address && a.1 == b.1);
    for (e, target) in usable {
        by_locality
            .entry((e.zone.clone().unwrap_or_default(), e.cluster.clone()))
            .or_default()
            .push(lb_endpoint_for(&e.address, u32::from(target)));
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|((zone, cluster), lb_endpoints)| LocalityLbEndpoints {
                locality: Some(Locality {
                    zone,
                    sub_zone: cluster,
                    ..Default::default()
                }),
                load_balancing_weight: Some(UInt32Value {
                    value: lb_endpoints.len() as u32,
                }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
