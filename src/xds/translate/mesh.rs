//! Mesh translation: for each service port a Listener (an `api_listener` HttpConnectionManager
//! that gets its routes over RDS from ADS, for proxyless gRPC clients), a RouteConfiguration,
//! an EDS Cluster and a ClusterLoadAssignment of the ready endpoints grouped by zone.
//! HTTPRoutes attached to a service replace its default route. Node proxies' listeners and
//! routes over the same services come from `node_proxy`, beside it.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::google::protobuf::{Any, Duration};
use envoy_types::util::pack_any;

use super::eds::{self, lb_endpoint_for};
use super::http::{ZIPKIN_CLUSTER, ads, connection_manager, domains, port_routes};
use crate::xds::model::{self, HttpRoute, Service, ServicePort, Telemetry};

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

/// Translates every service (and the routes attached to them); the clusters no service
/// makes are `super::constant_clusters`.
pub fn translate(services: &[Service], routes: &[HttpRoute], telemetry: &Telemetry) -> MeshResources {
    let mut out = MeshResources::default();
    for svc in services {
        for port in &svc.ports {
            let (listener, route, cluster) = port_config(svc, port, routes, telemetry);
            out.listeners.insert(listener.name.clone(), listener);
            out.routes.insert(route.name.clone(), route);
            out.clusters.insert(cluster.name.clone(), cluster);
            let assignment = port_endpoints(svc, port);
            out.endpoints.insert(assignment.cluster_name.clone(), assignment);
        }
    }
    out
}

/// A service port's listener, route configuration and cluster: what its name, port and
/// attached routes (and the telemetry) make, whatever its endpoints.
pub fn port_config(
    svc: &Service,
    port: &ServicePort,
    routes: &[HttpRoute],
    telemetry: &Telemetry,
) -> (Listener, RouteConfiguration, Cluster) {
    let name = model::listener_name(&svc.name, &svc.namespace, port.port);
    let cluster = model::cluster_name(&svc.name, &svc.namespace, port.port);
    (
        api_listener(&name, telemetry),
        route_configuration(svc, port, routes),
        eds_cluster(&cluster, port),
    )
}

/// A service port's load assignment: its ready endpoints by zone.
pub fn port_endpoints(svc: &Service, port: &ServicePort) -> ClusterLoadAssignment {
    let cluster = model::cluster_name(&svc.name, &svc.namespace, port.port);
    eds::load_assignment(&cluster, svc, port, eds::Horizon::All)
}

/// A mesh listener: an `api_listener` (no socket) whose routes come over RDS, for proxyless
/// gRPC clients only (Envoy takes an `api_listener` only from its bootstrap; node proxies
/// get `node_proxy`'s socket listeners instead).
fn api_listener(name: &str, telemetry: &Telemetry) -> Listener {
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(connection_manager(name, name, telemetry))),
        }),
        ..Default::default()
    }
}

fn route_configuration(svc: &Service, port: &ServicePort, routes: &[HttpRoute]) -> RouteConfiguration {
    let name = model::listener_name(&svc.name, &svc.namespace, port.port);
    RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vec![VirtualHost {
            name,
            domains: domains(svc, port.port),
            routes: port_routes(svc, port, routes),
            ..Default::default()
        }],
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

/// The cluster of the Zipkin collector.
pub fn zipkin_cluster(address: &str) -> Cluster {
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
