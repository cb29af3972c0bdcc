//! Translation (pure): discovery's model → Envoy resources. For each service port a Listener
//! (an `api_listener` HttpConnectionManager that gets its routes over RDS from ADS), a
//! RouteConfiguration, an EDS Cluster and a ClusterLoadAssignment of the ready endpoints
//! grouped by zone. HTTPRoutes attached to a service replace its default route. Gateways
//! are translated in `gateway`, with the connection manager and route ranking shared here.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, HealthStatus, Http2ProtocolOptions,
    Locality, SocketAddress, SubstitutionFormatString, config_source, data_source, socket_address,
    substitution_format_string,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch as EnvoyRouteMatch, VirtualHost, WeightedCluster,
    header_matcher, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::config::trace::v3::{ZipkinConfig, tracing, zipkin_config};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;

use super::model::{self, Backend, Gateway, HttpRoute, ParentKind, PathMatch, Service, ServicePort, Telemetry};

/// The name of the cluster that carries traces to the Zipkin collector.
pub const ZIPKIN_CLUSTER: &str = "zipkin";

/// Every resource the control plane serves, by type and name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// LDS.
    pub listeners: BTreeMap<String, Listener>,
    /// RDS.
    pub routes: BTreeMap<String, RouteConfiguration>,
    /// CDS.
    pub clusters: BTreeMap<String, Cluster>,
    /// EDS.
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
    /// LDS for gateway clients: each gateway's listeners, by `model::gateway_key`. Only
    /// that gateway's pods see them; their route configurations are in `routes`.
    pub gateway_listeners: BTreeMap<String, BTreeMap<String, Listener>>,
}

/// Translates the mesh services and the gateways this control plane serves.
pub fn translate_all(
    services: &[Service],
    gateways: &[Gateway],
    routes: &[HttpRoute],
    telemetry: &Telemetry,
) -> Resources {
    let mut out = translate(services, routes, telemetry);
    let gw = super::gateway::translate(gateways, routes, telemetry);
    out.routes.extend(gw.routes);
    out.gateway_listeners = gw.listeners;
    out
}

/// Translates every service (and the routes attached to them); no gateways (`translate_all`).
pub fn translate(services: &[Service], routes: &[HttpRoute], telemetry: &Telemetry) -> Resources {
    let mut out = Resources::default();
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
    if let Some((address, _)) = &telemetry.zipkin {
        out.clusters.insert(ZIPKIN_CLUSTER.to_string(), zipkin_cluster(address));
    }
    out
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
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

/// An HttpConnectionManager that gets route configuration `route_config` over RDS (ADS),
/// with the router last and the mesh's access log and tracing.
pub(super) fn connection_manager(
    stat_prefix: &str,
    route_config: &str,
    telemetry: &Telemetry,
) -> HttpConnectionManager {
    let mut hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.to_string(),
        })),
        // The router must be the last filter.
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    if let Some((path, format)) = &telemetry.access_log {
        let access_log_format = format.as_ref().map(|f| {
            file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(f.clone())),
                    ..Default::default()
                })),
                ..Default::default()
            })
        });
        hcm.access_log = vec![AccessLog {
            name: "envoy.access_loggers.file".to_string(),
            config_type: Some(access_log::ConfigType::TypedConfig(pack_any(FileAccessLog {
                path: path.clone(),
                access_log_format,
            }))),
            ..Default::default()
        }];
    }
    if let Some((_, sampling)) = &telemetry.zipkin {
        hcm.tracing = Some(http_connection_manager::Tracing {
            random_sampling: Some(Percent { value: *sampling }),
            provider: Some(tracing::Http {
                name: "envoy.tracers.zipkin".to_string(),
                config_type: Some(tracing::http::ConfigType::TypedConfig(pack_any(ZipkinConfig {
                    collector_cluster: ZIPKIN_CLUSTER.to_string(),
                    collector_endpoint: "/api/v2/spans".to_string(),
                    collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson as i32,
                    ..Default::default()
                }))),
            }),
            ..Default::default()
        });
    }
    hcm
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

/// The Envoy routes of some HTTPRoutes' rules, ordered by Gateway API precedence: exact
/// paths, then regular expressions, then longer prefixes, then more header matches; ties
/// keep the given order (creation order). Rules with nowhere to send traffic are left out.
pub(super) fn ranked_routes(routes: &[&HttpRoute]) -> Vec<Route> {
    let mut ranked: Vec<(u8, usize, usize, usize, Route)> = Vec::new();
    let catch_all = [model::RouteMatch {
        path: None,
        headers: Vec::new(),
    }];
    for r in routes {
        for rule in &r.rules {
            let Some(action) = backends_action(&rule.backends) else {
                continue;
            };
            let matches = if rule.matches.is_empty() {
                &catch_all[..]
            } else {
                &rule.matches[..]
            };
            for m in matches {
                let (kind_rank, len) = match &m.path {
                    Some(PathMatch::Exact(p)) => (0, p.len()),
                    Some(PathMatch::Regex(p)) => (1, p.len()),
                    Some(PathMatch::Prefix(p)) => (2, p.len()),
                    None => (2, 1),
                };
                let route = Route {
                    name: format!("{}/{}", r.namespace, r.name),
                    r#match: Some(route_match(m)),
                    action: Some(route::Action::Route(action.clone())),
                    ..Default::default()
                };
                let seq = ranked.len();
                ranked.push((kind_rank, usize::MAX - len, usize::MAX - m.headers.len(), seq, route));
            }
        }
    }
    ranked.sort_by_key(|r| (r.0, r.1, r.2, r.3));
    ranked.into_iter().map(|r| r.4).collect()
}

fn prefix_match(prefix: &str) -> EnvoyRouteMatch {
    EnvoyRouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

fn route_match(m: &model::RouteMatch) -> EnvoyRouteMatch {
    let path_specifier = match &m.path {
        None => route_match::PathSpecifier::Prefix("/".to_string()),
        Some(PathMatch::Prefix(p)) => route_match::PathSpecifier::Prefix(p.clone()),
        Some(PathMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(PathMatch::Regex(p)) => route_match::PathSpecifier::SafeRegex(RegexMatcher {
            regex: p.clone(),
            ..Default::default()
        }),
    };
    let headers = m
        .headers
        .iter()
        .map(|h| {
            let pattern = if h.regex {
                string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                    regex: h.value.clone(),
                    ..Default::default()
                })
            } else {
                string_matcher::MatchPattern::Exact(h.value.clone())
            };
            HeaderMatcher {
                name: h.name.to_lowercase(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(pattern),
                    ..Default::default()
                })),
                ..Default::default()
            }
        })
        .collect();
    EnvoyRouteMatch {
        path_specifier: Some(path_specifier),
        headers,
        ..Default::default()
    }
}

/// A single backend routes straight to its cluster; several become weighted clusters.
/// `None` when every weight is zero (the rule has nowhere to send traffic).
fn backends_action(backends: &[Backend]) -> Option<RouteAction> {
    let live: Vec<&Backend> = backends.iter().filter(|b| b.weight > 0).collect();
    let specifier = match live.as_slice() {
        [] => return None,
        [one] => route_action::ClusterSpecifier::Cluster(model::cluster_name(&one.name, &one.namespace, one.port)),
        many => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|b| weighted_cluster::ClusterWeight {
                    name: model::cluster_name(&b.name, &b.namespace, b.port),
                    weight: Some(UInt32Value { value: b.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    Some(RouteAction {
        cluster_specifier: Some(specifier),
        ..Default::default()
    })
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

/// Ready, non-terminating endpoints of one service port, grouped by zone. Every locality
/// gets a weight (its endpoint count): gRPC ignores localities without one.
fn load_assignment(name: &str, svc: &Service, port: &ServicePort) -> ClusterLoadAssignment {
    let mut by_zone: BTreeMap<String, Vec<LbEndpoint>> = BTreeMap::new();
    let mut usable: Vec<(&model::Endpoint, u16)> = svc
        .endpoints
        .iter()
        .filter(|e| e.ready && !e.terminating)
        .filter_map(|e| e.ports.get(&port.name).map(|p| (e, *p)))
        .collect();
    usable.sort_by(|a, b| (&a.0.address, a.1).cmp(&(&b.0.address, b.1)));
    usable.dedup_by(|a, b| a.0.address == b.0.address && a.1 == b.1);
    for (e, target) in usable {
        by_zone
            .entry(e.zone.clone().unwrap_or_default())
            .or_default()
            .push(lb_endpoint_for(&e.address, u32::from(target)));
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_zone
            .into_iter()
            .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
                locality: Some(Locality {
                    zone,
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
