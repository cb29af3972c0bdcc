//! Translation (pure): discovery's model → Envoy resources. `mesh` translates services (for
//! proxyless clients, and through `node_proxy` for node proxies), `gateway` the
//! MeshGateways' listeners; both build on `http` (the connection manager and
//! route ranking they share) and never on each other. This module puts their results
//! together as the [`Resources`] a snapshot encodes. `eds` builds load assignments, with
//! split-horizon EDS for multi-network meshes.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::model::{Gateway, HttpRoute, NetworkGateway, Service, Telemetry};

pub mod eds;
pub mod encoded;
pub mod gateway;
mod http;
pub mod incremental;
pub mod mesh;
pub mod node_proxy;

pub use http::ZIPKIN_CLUSTER;

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
    /// LDS for node proxies (`node_proxy`): socket listeners, where the mesh's are
    /// `api_listener`s only proxyless clients can use.
    pub node_proxy_listeners: BTreeMap<String, Listener>,
    /// LDS for gateway clients: each gateway's listeners, by `model::gateway_key`. Only
    /// that gateway's pods see them; their route configurations are in `routes`.
    pub gateway_listeners: BTreeMap<String, BTreeMap<String, Listener>>,
    /// The keys of the east-west gateways among them.
    pub eastwest_gateways: BTreeSet<String>,
    /// The control plane's own network: clients on it see `endpoints`.
    pub own_network: String,
    /// EDS for clients on each other network (multi-network meshes only; see
    /// `eds::OTHER_NETWORKS`).
    pub network_endpoints: BTreeMap<String, BTreeMap<String, ClusterLoadAssignment>>,
    /// EDS for east-west gateways on each network, where it differs from what a client on
    /// that network sees.
    pub local_endpoints: BTreeMap<String, BTreeMap<String, ClusterLoadAssignment>>,
    /// Whether split-horizon EDS replaced `endpoints` (a multi-network mesh).
    pub split_horizon: bool,
}

impl From<mesh::MeshResources> for Resources {
    fn from(m: mesh::MeshResources) -> Resources {
        Resources {
            listeners: m.listeners,
            routes: m.routes,
            clusters: m.clusters,
            endpoints: m.endpoints,
            ..Default::default()
        }
    }
}

/// Translates the mesh services and the gateways this control plane serves.
pub fn translate_all(
    services: &[Service],
    gateways: &[Gateway],
    routes: &[HttpRoute],
    telemetry: &Telemetry,
) -> Resources {
    let mut out = translate(services, routes, telemetry);
    let gw = translate_gateways(services, gateways, routes, telemetry);
    out.routes.extend(gw.routes);
    out.gateway_listeners = gw.gateway_listeners;
    out.eastwest_gateways = gw.eastwest_gateways;
    out
}

/// What `translate_all` adds to the mesh services: the gateways' listeners and route
/// configurations.
pub fn translate_gateways(
    services: &[Service],
    gateways: &[Gateway],
    routes: &[HttpRoute],
    telemetry: &Telemetry,
) -> Resources {
    let gw = gateway::translate_with_services(gateways, services, routes, telemetry);
    Resources {
        routes: gw.routes,
        gateway_listeners: gw.listeners,
        eastwest_gateways: gateways
            .iter()
            .filter(|g| g.eastwest)
            .map(|g| super::model::gateway_key(&g.name, &g.namespace))
            .collect(),
        ..Default::default()
    }
}

/// Split-horizon EDS (`eds::translate`) for a control plane on network `own`: replaces
/// `endpoints` with what clients on `own` see and fills the other networks' sets. Returns
/// the usable endpoints on networks without a gateway, by network (empty for a
/// single-network mesh, which keeps its one shared set).
pub fn split_horizon(
    out: &mut Resources,
    services: &[Service],
    network_gateways: &[NetworkGateway],
    own: &str,
) -> BTreeMap<String, usize> {
    out.own_network = own.to_string();
    let Some(n) = eds::translate(services, network_gateways, own) else {
        return BTreeMap::new();
    };
    out.endpoints = n.own;
    out.split_horizon = true;
    out.network_endpoints = n.by_network;
    out.local_endpoints = n.local;
    n.without_gateway
}

/// Translates every service (and the routes attached to them) for proxyless clients and
/// node proxies; no gateways (`translate_all`).
pub fn translate(services: &[Service], routes: &[HttpRoute], telemetry: &Telemetry) -> Resources {
    let mut out: Resources = mesh::translate(services, routes, telemetry).into();
    for cluster in constant_clusters(telemetry) {
        out.clusters.insert(cluster.name.clone(), cluster);
    }
    let node = node_proxy::translate(services, routes, telemetry);
    out.routes.extend(node.routes);
    out.node_proxy_listeners = node.listeners;
    out
}

/// The clusters no service makes: the node proxies' inbound passthrough, and the Zipkin
/// collector's when tracing is on.
pub fn constant_clusters(telemetry: &Telemetry) -> Vec<Cluster> {
    let mut out = vec![node_proxy::passthrough_cluster()];
    if let Some(zipkin) = &telemetry.zipkin {
        out.push(mesh::zipkin_cluster(&zipkin.address));
    }
    out
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod network_tests;
#[cfg(test)]
mod tests;
