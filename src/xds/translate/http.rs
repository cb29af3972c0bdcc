//! The HTTP layer that mesh and gateway listeners share: the HttpConnectionManager (RDS over
//! ADS, router last, the mesh's access log and tracing) and HTTPRoute rules as Envoy routes,
//! ranked by Gateway API precedence. `mesh` and `gateway` both build on it, so neither needs
//! the other.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, SubstitutionFormatString, config_source, data_source,
    substitution_format_string,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteMatch as EnvoyRouteMatch, WeightedCluster, header_matcher, route,
    route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::config::trace::v3::{ZipkinConfig, tracing, zipkin_config};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use crate::xds::model::{self, Backend, HttpRoute, ParentKind, PathMatch, Service, ServicePort, Telemetry};

/// The name of the cluster that carries traces to the Zipkin collector.
pub const ZIPKIN_CLUSTER: &str = "zipkin";

/// The config source of every xDS reference: ADS, over the stream the client already has.
pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
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
    if let Some(log) = &telemetry.access_log {
        let access_log_format = log.format.as_ref().map(|f| {
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
                path: log.path.clone(),
                access_log_format,
            }))),
            ..Default::default()
        }];
    }
    if let Some(zipkin) = &telemetry.zipkin {
        hcm.tracing = Some(http_connection_manager::Tracing {
            random_sampling: Some(Percent {
                value: zipkin.sampling_percent,
            }),
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

/// The names a client may use for a service port: short, namespaced and fully qualified,
/// each with and without the port.
pub(super) fn domains(svc: &Service, port: u16) -> Vec<String> {
    let ns = &svc.namespace;
    let base = [
        svc.name.clone(),
        format!("{}.{ns}", svc.name),
        format!("{}.{ns}.svc", svc.name),
        svc.host(),
    ];
    base.iter().flat_map(|h| [h.clone(), format!("{h}:{port}")]).collect()
}

/// Every request to one service port's cluster.
pub(super) fn default_route(svc: &Service, port: u16) -> Route {
    Route {
        name: "default".to_string(),
        r#match: Some(prefix_match("/")),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(model::cluster_name(
                &svc.name,
                &svc.namespace,
                port,
            ))),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> EnvoyRouteMatch {
    EnvoyRouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

/// A service port's routes: its attached HTTPRoutes' rules, ranked, or else every request
/// to its own cluster. Proxyless clients and node proxies route the same way.
pub(super) fn port_routes(svc: &Service, port: &ServicePort, routes: &[HttpRoute]) -> Vec<Route> {
    let attached: Vec<&HttpRoute> = routes
        .iter()
        .filter(|r| r.attaches_to(ParentKind::Service, &svc.name, &svc.namespace, port.port, &port.name))
        .collect();
    let mut envoy_routes = ranked_routes(&attached);
    if attached.is_empty() {
        envoy_routes.push(default_route(svc, port.port));
    }
    envoy_routes
}

/// A socket listener on `0.0.0.0:port` whose one filter chain is `hcm`.
pub(super) fn socket_listener(name: &str, port: u16, hcm: HttpConnectionManager) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
