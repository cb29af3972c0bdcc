//! Gateway translation (pure): every port of a MeshGateway becomes a real Envoy listener on
//! `0.0.0.0:<container port>` whose HttpConnectionManager gets its RouteConfiguration over
//! RDS. The routes come from the HTTPRoutes attached to the gateway, ranked like mesh routes,
//! in one virtual host per hostname plus a `*` one.
//!
//! An east-west gateway (type `eastwest`) instead routes HTTP and gRPC by authority
//! (`:authority`/`Host`: a mesh service's short or full name, with or without the port) to
//! that service port's cluster, so clients on other networks reach this network's endpoints
//! through it. Plaintext for now: TLS passthrough (SNI routing of mTLS traffic) comes with
//! mTLS.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::google::protobuf::BoolValue;

use super::http::{connection_manager, default_route, domains as service_domains, ranked_routes, socket_listener};
use crate::xds::model::{self, Gateway, GatewayPort, HttpRoute, ParentKind, Service, Telemetry};

/// The virtual host (and hostname key) of requests no hostname claims.
const ANY_HOST: &str = "*";

/// The resources of every gateway.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayResources {
    /// Each gateway's listeners by name, keyed by `model::gateway_key`.
    pub listeners: BTreeMap<String, BTreeMap<String, Listener>>,
    /// Every gateway port's route configuration, named like its listener.
    pub routes: BTreeMap<String, RouteConfiguration>,
}

/// Translates every gateway (and the routes attached to it); east-west gateways route to no
/// service (see [`translate_with_services`]).
pub fn translate(gateways: &[Gateway], routes: &[HttpRoute], telemetry: &Telemetry) -> GatewayResources {
    translate_with_services(gateways, &[], routes, telemetry)
}

/// Translates every gateway: east-west ones route by authority to `services`, the others
/// by the routes attached to them.
pub fn translate_with_services(
    gateways: &[Gateway],
    services: &[Service],
    routes: &[HttpRoute],
    telemetry: &Telemetry,
) -> GatewayResources {
    let mut out = GatewayResources::default();
    for gw in gateways {
        let listeners = out
            .listeners
            .entry(model::gateway_key(&gw.name, &gw.namespace))
            .or_default();
        // Envoy rejects a whole LDS update with two listeners on one address; the operator
        // refuses such specs, so this only guards against a spec it has not checked yet.
        let mut bound = BTreeSet::new();
        for port in gw.ports.iter().filter(|p| bound.insert(p.container_port)) {
            let name = model::gateway_listener_name(&gw.name, &gw.namespace, port.port);
            listeners.insert(name.clone(), listener(&name, port, telemetry));
            let config = if gw.eastwest {
                eastwest_route_configuration(&name, services)
            } else {
                route_configuration(&name, gw, port, routes)
            };
            out.routes.insert(name.clone(), config);
        }
    }
    out
}

fn listener(name: &str, port: &GatewayPort, telemetry: &Telemetry) -> Listener {
    // Stats are per pod, and a pod runs one gateway: Istio's short prefix is unique enough.
    let mut hcm = connection_manager(&format!("0.0.0.0_{}", port.container_port), name, telemetry);
    // A gateway is the edge: it appends the real peer to X-Forwarded-For and does not take
    // a client's word for being internal.
    hcm.use_remote_address = Some(BoolValue { value: true });
    socket_listener(name, port.container_port, hcm)
}

/// A route's hostname keys: lowercased and distinct (Envoy compares domains without case
/// and rejects duplicates); `*` when it names none. Hostnames Gateway API would refuse (a
/// port, a path, a misplaced wildcard) are dropped, so a route naming only such hostnames
/// attaches nowhere rather than to every host.
fn host_keys(r: &HttpRoute) -> BTreeSet<String> {
    if r.hostnames.is_empty() {
        return BTreeSet::from([ANY_HOST.to_string()]);
    }
    r.hostnames
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| valid_hostname(h))
        .collect()
}

fn valid_hostname(h: &str) -> bool {
    let bare = h.strip_prefix("*.").unwrap_or(h);
    h == ANY_HOST || (!bare.is_empty() && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
}

/// Whether a route for hostname `pattern` serves requests for virtual host `host`: the same
/// name, a wildcard (`*.example.com`) over it, or `*`.
fn covers(pattern: &str, host: &str) -> bool {
    pattern == host
        || pattern == ANY_HOST
        || pattern
            .strip_prefix('*')
            .is_some_and(|suffix| suffix.starts_with('.') && host.len() > suffix.len() && host.ends_with(suffix))
}

/// The names a virtual host answers to: the hostname with and without the port (`*` alone).
fn domains(host: &str, port: u16) -> Vec<String> {
    if host == ANY_HOST {
        vec![host.to_string()]
    } else {
        vec![host.to_string(), format!("{host}:{port}")]
    }
}

fn route_configuration(name: &str, gw: &Gateway, port: &GatewayPort, routes: &[HttpRoute]) -> RouteConfiguration {
    let attached: Vec<&HttpRoute> = routes
        .iter()
        .filter(|r| r.attaches_to(ParentKind::MeshGateway, &gw.name, &gw.namespace, port.port, &port.name))
        .collect();
    // Hostname → indices of the routes naming it, in the given (creation) order. `*` is
    // always there, so a port without routes still answers (404) like Istio's.
    let mut by_host: BTreeMap<String, Vec<usize>> = BTreeMap::from([(ANY_HOST.to_string(), Vec::new())]);
    for (i, r) in attached.iter().enumerate() {
        for key in host_keys(r) {
            by_host.entry(key).or_default().push(i);
        }
    }
    let virtual_hosts = by_host
        .keys()
        .map(|host| {
            // Gateway API precedence: the most specific matching hostname first (exact,
            // then longer wildcards, then none); a route counts once, at its most specific.
            let mut patterns: Vec<&String> = by_host.keys().filter(|p| covers(p, host)).collect();
            patterns.sort_by_key(|p| (p.as_str() == ANY_HOST, std::cmp::Reverse(p.len())));
            let mut seen = BTreeSet::new();
            let mut envoy_routes = Vec::new();
            for p in patterns {
                let group: Vec<&HttpRoute> = by_host[p]
                    .iter()
                    .filter(|i| seen.insert(**i))
                    .map(|i| attached[*i])
                    .collect();
                envoy_routes.extend(ranked_routes(&group));
            }
            VirtualHost {
                name: format!("{host}:{}", port.port),
                domains: domains(host, port.port),
                routes: envoy_routes,
                ..Default::default()
            }
        })
        .collect();
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        ..Default::default()
    }
}

/// An east-west gateway's routes: one virtual host per service port, answering to the
/// names a client may use for it (see `mesh::domains`). Envoy refuses a name in two virtual
/// hosts: a bare name (no port) that several ports of one service share goes to port 80 if
/// it has one, else to its lowest port; a name several services share (a short name in two
/// namespaces) is ambiguous and left out.
fn eastwest_route_configuration(name: &str, services: &[Service]) -> RouteConfiguration {
    // Domain → the (service index, port) candidates claiming it.
    let mut claims: BTreeMap<String, Vec<(usize, u16)>> = BTreeMap::new();
    for (i, svc) in services.iter().enumerate() {
        for port in &svc.ports {
            for d in service_domains(svc, port.port) {
                claims.entry(d).or_default().push((i, port.port));
            }
        }
    }
    let mut by_port: BTreeMap<(usize, u16), Vec<String>> = BTreeMap::new();
    for (domain, candidates) in claims {
        let first = candidates[0].0;
        if candidates.iter().any(|(i, _)| *i != first) {
            continue;
        }
        let port = candidates
            .iter()
            .map(|(_, p)| *p)
            .min_by_key(|p| (*p != 80, *p))
            .unwrap_or_default();
        by_port.entry((first, port)).or_default().push(domain);
    }
    let virtual_hosts = by_port
        .into_iter()
        .map(|((i, port), domains)| {
            let svc = &services[i];
            VirtualHost {
                name: model::listener_name(&svc.name, &svc.namespace, port),
                domains,
                routes: vec![default_route(svc, port)],
                ..Default::default()
            }
        })
        .collect();
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_subdomains_only() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.example.com", "*.a.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "aexample.com"));
        assert!(covers("*", "example.com"));
        assert!(!covers("a.example.com", "b.example.com"));
    }

    #[test]
    fn hostnames_are_normalised_and_invalid_ones_dropped() {
        let r = |hostnames: &[&str]| HttpRoute {
            name: "r".into(),
            namespace: "ns".into(),
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            parents: vec![],
            rules: vec![],
        };
        assert_eq!(host_keys(&r(&[])), BTreeSet::from(["*".to_string()]));
        assert_eq!(
            host_keys(&r(&["Shop.Example.com", "shop.example.com", "*.example.com"])),
            BTreeSet::from(["*.example.com".to_string(), "shop.example.com".to_string()])
        );
        assert!(host_keys(&r(&["shop.example.com:80", "a/b", "a.*.com", ""])).is_empty());
    }
}
