//! Translation (pure): discovery's model → Envoy resources. `mesh` translates services,
//! `gateway` the MeshGateways' listeners; both build on `http` (the connection manager and
//! route ranking they share) and never on each other. This module puts their results
//! together as the [`Resources`] a snapshot encodes.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::model::{Gateway, HttpRoute, Service, Telemetry};

pub mod gateway;
mod http;
pub mod mesh;

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
    /// LDS for gateway clients: each gateway's listeners, by `model::gateway_key`. Only
    /// that gateway's pods see them; their route configurations are in `routes`.
    pub gateway_listeners: BTreeMap<String, BTreeMap<String, Listener>>,
}

impl From<mesh::MeshResources> for Resources {
    fn from(m: mesh::MeshResources) -> Resources {
        Resources {
            listeners: m.listeners,
            routes: m.routes,
            clusters: m.clusters,
            endpoints: m.endpoints,
            gateway_listeners: BTreeMap::new(),
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
    let gw = gateway::translate(gateways, routes, telemetry);
    out.routes.extend(gw.routes);
    out.gateway_listeners = gw.listeners;
    out
}

/// Translates every service (and the routes attached to them); no gateways (`translate_all`).
pub fn translate(services: &[Service], routes: &[HttpRoute], telemetry: &Telemetry) -> Resources {
    mesh::translate(services, routes, telemetry).into()
}

#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod tests;
