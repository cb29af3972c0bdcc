//! Node-proxy translation (pure): what the Envoy on every node (`ROLE=node-proxy`) is served.
//! Envoy takes an `api_listener` only from its bootstrap, never over LDS, so node proxies
//! cannot use the proxyless clients' listeners; they get socket listeners of their own:
//!
//! - **outbound** `0.0.0.0:15001`: workloads on the node send HTTP/1.1, HTTP/2 and gRPC
//!   here, addressed to a mesh service by `:authority`/`Host` (its full name or
//!   `<svc>.<ns>`, with or without the port), or open an HTTP `CONNECT` tunnel to
//!   `<host>:<port>` (clients with `HTTPS_PROXY` or `grpc_proxy` set). Its routes come over
//!   RDS: one virtual host per service port, holding the routes a proxyless client of that
//!   port gets (so HTTPRoutes apply alike), behind a CONNECT route to the port's cluster.
//! - **inbound** `0.0.0.0:15008`: a `CONNECT` to `<pod ip>:<port>` is forwarded to that
//!   address (an original-destination cluster keyed by `:authority`); loopback,
//!   link-local and unspecified addresses are refused. Mesh mTLS will be terminated here.
//! - **readiness** `0.0.0.0:15021`: `GET /healthz/ready` answers 200 once Envoy has its
//!   listeners, which the DaemonSet probes.
//!
//! One proxy serves every namespace of its node and cannot tell which one a caller is in,
//! so bare short names (`greeter`) are not routed: they would mean a different service in
//! each namespace. Every node proxy of a network sees the same resources.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac as RbacRules, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::http::{connection_manager, default_route, port_routes, socket_listener};
use crate::xds::model::{self, HttpRoute, Service, Telemetry};

pub use crate::api::ports::{
    NODE_PROXY_INBOUND as INBOUND_PORT, NODE_PROXY_OUTBOUND as OUTBOUND_PORT, NODE_PROXY_READY as READY_PORT,
    NODE_PROXY_READY_PATH as READY_PATH,
};
/// The outbound listener and its route configuration.
pub const OUTBOUND: &str = "node-proxy|outbound";
/// The inbound listener and its route configuration.
pub const INBOUND: &str = "node-proxy|inbound";
/// The readiness listener.
pub const READY: &str = "node-proxy|ready";
/// The cluster inbound tunnels are forwarded through: to the address they name.
pub const PASSTHROUGH_CLUSTER: &str = "node-proxy|inbound-passthrough";

/// Addresses the inbound side never forwards to, as it would reach the node proxy's own
/// pod or the node's metadata services rather than a workload (RE2, on `:authority`).
const REFUSED_AUTHORITY: &str = r"^(127\.|0\.|169\.254\.|localhost(:|$)|\[(::1?|fe80:[^\]]*|::ffff:[^\]]*)\](:|$))";

/// What node proxies are served besides the mesh's clusters and load assignments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeProxyResources {
    /// LDS: the outbound, inbound and readiness listeners.
    pub listeners: BTreeMap<String, Listener>,
    /// RDS: the outbound and inbound route configurations.
    pub routes: BTreeMap<String, RouteConfiguration>,
}

/// Translates what node proxies see of `services` and the routes attached to them.
pub fn translate(services: &[Service], routes: &[HttpRoute], telemetry: &Telemetry) -> NodeProxyResources {
    let listeners = [
        socket_listener(OUTBOUND, OUTBOUND_PORT, outbound_manager(telemetry)),
        socket_listener(INBOUND, INBOUND_PORT, inbound_manager(telemetry)),
        socket_listener(READY, READY_PORT, readiness_manager()),
    ];
    NodeProxyResources {
        listeners: listeners.into_iter().map(|l| (l.name.clone(), l)).collect(),
        routes: BTreeMap::from([
            (OUTBOUND.to_string(), outbound_routes(services, routes)),
            (INBOUND.to_string(), inbound_routes()),
        ]),
    }
}

/// The cluster inbound tunnels go through: the destination is the tunnel's `:authority`.
pub fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        lb_config: Some(cluster::LbConfig::OriginalDstLbConfig(cluster::OriginalDstLbConfig {
            use_http_header: true,
            http_header_name: ":authority".to_string(),
            ..Default::default()
        })),
        connect_timeout: Some(Duration { seconds: 5, nanos: 0 }),
        ..Default::default()
    }
}

/// A connection manager that also terminates HTTP/1.1 and HTTP/2 `CONNECT` (the routes say
/// where a tunnel goes).
fn tunnelling(mut hcm: HttpConnectionManager) -> HttpConnectionManager {
    hcm.upgrade_configs = vec![http_connection_manager::UpgradeConfig {
        upgrade_type: "CONNECT".to_string(),
        ..Default::default()
    }];
    hcm.http2_protocol_options = Some(Http2ProtocolOptions {
        allow_connect: true,
        ..Default::default()
    });
    hcm
}

fn outbound_manager(telemetry: &Telemetry) -> HttpConnectionManager {
    tunnelling(connection_manager(
        &format!("outbound_0.0.0.0_{OUTBOUND_PORT}"),
        OUTBOUND,
        telemetry,
    ))
}

fn inbound_manager(telemetry: &Telemetry) -> HttpConnectionManager {
    let mut hcm = tunnelling(connection_manager(
        &format!("inbound_0.0.0.0_{INBOUND_PORT}"),
        INBOUND,
        telemetry,
    ));
    let refused = Policy {
        permissions: vec![Permission {
            rule: Some(permission::Rule::Header(HeaderMatcher {
                name: ":authority".to_string(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                        regex: REFUSED_AUTHORITY.to_string(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        }],
        principals: vec![Principal {
            identifier: Some(principal::Identifier::Any(true)),
        }],
        ..Default::default()
    };
    let rbac = Rbac {
        rules: Some(RbacRules {
            action: rbac::Action::Deny as i32,
            policies: HashMap::from([("host-addresses".to_string(), refused)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Before the router, which must stay last.
    hcm.http_filters.insert(
        0,
        HttpFilter {
            name: "envoy.filters.http.rbac".to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(rbac))),
            ..Default::default()
        },
    );
    hcm
}

/// The readiness listener's manager: its one route is inline (it must answer before, and
/// whatever, RDS says), and it logs nothing (kubelet probes every few seconds).
fn readiness_manager() -> HttpConnectionManager {
    let mut hcm = connection_manager("readiness", READY, &Telemetry::default());
    hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(
        RouteConfiguration {
            name: READY.to_string(),
            virtual_hosts: vec![VirtualHost {
                name: "readiness".to_string(),
                domains: vec!["*".to_string()],
                routes: vec![Route {
                    name: "ready".to_string(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Path(READY_PATH.to_string())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::DirectResponse(DirectResponseAction {
                        status: 200,
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    ));
    hcm
}

/// The names a node proxy routes to one service port: the full and namespaced names, with
/// the port and (see [`outbound_routes`]) without.
fn qualified_names(svc: &Service) -> [String; 3] {
    [
        svc.host(),
        format!("{}.{}", svc.name, svc.namespace),
        format!("{}.{}.svc", svc.name, svc.namespace),
    ]
}

/// One virtual host per service port. A name without a port that several ports of one
/// service share goes to port 80 if it has one, else to its lowest port (Envoy refuses a
/// domain in two virtual hosts).
fn outbound_routes(services: &[Service], routes: &[HttpRoute]) -> RouteConfiguration {
    let mut virtual_hosts = Vec::new();
    for svc in services {
        let bare_port = svc.ports.iter().map(|p| p.port).min_by_key(|p| (*p != 80, *p));
        let names = qualified_names(svc);
        for port in &svc.ports {
            let mut domains: Vec<String> = names.iter().map(|n| format!("{n}:{}", port.port)).collect();
            if bare_port == Some(port.port) {
                domains.extend(names.iter().cloned());
            }
            let http = port_routes(svc, port, routes);
            let mut envoy_routes = Vec::with_capacity(http.len() + 1);
            envoy_routes.push(connect_route(svc, port.port, &http));
            envoy_routes.extend(http);
            virtual_hosts.push(VirtualHost {
                name: model::listener_name(&svc.name, &svc.namespace, port.port),
                domains,
                routes: envoy_routes,
                ..Default::default()
            });
        }
    }
    RouteConfiguration {
        name: OUTBOUND.to_string(),
        virtual_hosts,
        ..Default::default()
    }
}

/// A CONNECT tunnel to a service port: to where its catch-all HTTP route sends requests (a
/// tunnel carries no path or headers for the other rules to match), else to its cluster.
fn connect_route(svc: &Service, port: u16, http: &[Route]) -> Route {
    let catch_all = http.iter().find_map(|r| {
        let m = r.r#match.as_ref()?;
        let everything = m.headers.is_empty()
            && m.query_parameters.is_empty()
            && matches!(&m.path_specifier, Some(route_match::PathSpecifier::Prefix(p)) if p == "/");
        match &r.action {
            Some(route::Action::Route(action)) if everything => Some(action.clone()),
            _ => None,
        }
    });
    let action = catch_all.unwrap_or_else(|| match default_route(svc, port).action {
        Some(route::Action::Route(action)) => action,
        _ => RouteAction::default(),
    });
    tunnel("connect", action)
}

/// A route that terminates CONNECT and carries the tunnel's bytes as `action` says.
fn tunnel(name: &str, action: RouteAction) -> Route {
    Route {
        name: name.to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::ConnectMatcher(
                route_match::ConnectMatcher {},
            )),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            upgrade_configs: vec![route_action::UpgradeConfig {
                upgrade_type: "CONNECT".to_string(),
                connect_config: Some(route_action::upgrade_config::ConnectConfig::default()),
                ..Default::default()
            }],
            ..action
        })),
        ..Default::default()
    }
}

/// Inbound: every CONNECT goes to the address it names.
fn inbound_routes() -> RouteConfiguration {
    let to_destination = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(PASSTHROUGH_CLUSTER.to_string())),
        ..Default::default()
    };
    RouteConfiguration {
        name: INBOUND.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "inbound".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![tunnel("destination", to_destination)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[cfg(test)]
#[path = "node_proxy_tests.rs"]
mod tests;
