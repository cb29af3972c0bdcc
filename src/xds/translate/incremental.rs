//! Incremental translation: each service is translated and encoded again only when what its
//! resources are made from changed. A service's listeners, route configurations and clusters
//! come from its name, ports and attached HTTPRoutes (and the mesh's telemetry); its load
//! assignments from its ports and endpoints. So an EndpointSlice change re-derives one
//! service's load assignments, and nothing else is encoded again. The full translation
//! (`translate_all`) stays the reference: a property test compares the two over random
//! sequences of changes.

use std::collections::{BTreeMap, HashMap};

use super::encoded::{Encoded, encode};
use super::{mesh, node_proxy};
use crate::xds::model::{HttpRoute, ParentKind, Service, Telemetry};

/// One service as last translated, and what that gave.
struct Entry {
    /// The service, endpoints included.
    service: Service,
    /// The HTTPRoutes attached to any of its ports.
    routes: Vec<HttpRoute>,
    /// Listeners, route configurations and clusters, by name.
    listeners: Vec<(String, Encoded)>,
    route_configs: Vec<(String, Encoded)>,
    clusters: Vec<(String, Encoded)>,
    /// Load assignments, by cluster name.
    endpoints: Vec<(String, Encoded)>,
    /// The translation round that last saw the service.
    round: u64,
}

/// The mesh's resources, encoded, by type and name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedMesh {
    /// LDS.
    pub listeners: BTreeMap<String, Encoded>,
    /// RDS.
    pub routes: BTreeMap<String, Encoded>,
    /// CDS.
    pub clusters: BTreeMap<String, Encoded>,
    /// EDS.
    pub endpoints: BTreeMap<String, Encoded>,
    /// LDS for node proxies (their route configurations are in `routes`).
    pub node_proxy_listeners: BTreeMap<String, Encoded>,
}

/// Which of the mesh's types a translation changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// LDS.
    pub listeners: bool,
    /// RDS.
    pub routes: bool,
    /// CDS.
    pub clusters: bool,
    /// EDS.
    pub endpoints: bool,
}

impl Changed {
    const ALL: Changed = Changed {
        listeners: true,
        routes: true,
        clusters: true,
        endpoints: true,
    };
}

/// The memory of the last translation: what each service was translated from, and the
/// mesh's encoded resources, kept up to date in place.
#[derive(Default)]
pub struct Incremental {
    entries: HashMap<String, Entry>,
    mesh: EncodedMesh,
    telemetry: Option<Telemetry>,
    round: u64,
    /// How many services the last call translated again (for tests and figures).
    pub last_translated: usize,
}

impl Incremental {
    /// The mesh resources of `services`, translating again only what changed since the last
    /// call, and which types changed.
    pub fn translate(
        &mut self,
        services: &[Service],
        routes: &[HttpRoute],
        telemetry: &Telemetry,
    ) -> (&EncodedMesh, Changed) {
        let mut changed = Changed::default();
        if self.telemetry.as_ref() != Some(telemetry) {
            // Telemetry is in every listener and cluster: everything again.
            self.entries.clear();
            self.mesh = EncodedMesh::default();
            self.telemetry = Some(telemetry.clone());
            for cluster in super::constant_clusters(telemetry) {
                self.mesh.clusters.insert(cluster.name.clone(), encode(&cluster));
            }
            changed = Changed::ALL;
        }
        self.round += 1;
        self.last_translated = 0;
        for svc in services {
            let key = format!("{}/{}", svc.namespace, svc.name);
            let attached: Vec<HttpRoute> = routes.iter().filter(|r| attached_to(r, svc)).cloned().collect();
            let old = self.entries.remove(&key);
            let entry = match old {
                Some(old) if same_service(&old, svc, &attached) => old,
                old => {
                    self.last_translated += 1;
                    let entry = translated(old.as_ref(), svc, attached, routes, telemetry);
                    replace(&mut self.mesh, old.as_ref(), &entry, &mut changed);
                    entry
                }
            };
            self.entries.insert(
                key,
                Entry {
                    round: self.round,
                    ..entry
                },
            );
        }
        let (round, mesh) = (self.round, &mut self.mesh);
        self.entries.retain(|_, e| {
            if e.round != round {
                remove(mesh, e, &mut changed);
            }
            e.round == round
        });
        // Node proxies route every service port in one configuration: made again whenever
        // any service's routes did (a service that came or went changes them too), never
        // for an endpoint change.
        if changed.routes {
            let node = node_proxy::translate(services, routes, telemetry);
            for (name, config) in &node.routes {
                self.mesh.routes.insert(name.clone(), encode(config));
            }
            let listeners = node.listeners.iter().map(|(n, l)| (n.clone(), encode(l))).collect();
            if self.mesh.node_proxy_listeners != listeners {
                self.mesh.node_proxy_listeners = listeners;
                changed.listeners = true;
            }
        }
        (&self.mesh, changed)
    }
}

/// Whether `svc` with `attached` routes translates exactly as `old` did.
fn same_service(old: &Entry, svc: &Service, attached: &[HttpRoute]) -> bool {
    old.service.ports == svc.ports && old.routes == attached && old.service.endpoints == svc.endpoints
}

/// `svc` translated: its configuration again only when its ports or routes changed, its
/// load assignments again only when its ports or endpoints did.
fn translated(
    old: Option<&Entry>,
    svc: &Service,
    attached: Vec<HttpRoute>,
    routes: &[HttpRoute],
    telemetry: &Telemetry,
) -> Entry {
    let Some(old) = old else {
        return fresh(svc, attached, routes, telemetry);
    };
    let same_ports = old.service.ports == svc.ports;
    let same_endpoints = same_ports && old.service.endpoints == svc.endpoints;
    if same_ports && old.routes == attached {
        return Entry {
            service: svc.clone(),
            routes: attached,
            listeners: old.listeners.clone(),
            route_configs: old.route_configs.clone(),
            clusters: old.clusters.clone(),
            endpoints: endpoints_of(svc),
            round: 0,
        };
    }
    let mut e = fresh(svc, attached, routes, telemetry);
    if same_endpoints {
        e.endpoints = old.endpoints.clone();
    }
    e
}

/// Puts `new`'s resources in the mesh in place of those of `old` (none for a new service),
/// noting which types changed.
fn replace(mesh: &mut EncodedMesh, old: Option<&Entry>, new: &Entry, changed: &mut Changed) {
    fn swap(
        map: &mut BTreeMap<String, Encoded>,
        old: Option<&[(String, Encoded)]>,
        new: &[(String, Encoded)],
        changed: &mut bool,
    ) {
        if old == Some(new) {
            return;
        }
        *changed = true;
        for (name, _) in old.unwrap_or_default() {
            map.remove(name);
        }
        map.extend(new.iter().cloned());
    }
    swap(
        &mut mesh.listeners,
        old.map(|o| &o.listeners[..]),
        &new.listeners,
        &mut changed.listeners,
    );
    swap(
        &mut mesh.routes,
        old.map(|o| &o.route_configs[..]),
        &new.route_configs,
        &mut changed.routes,
    );
    swap(
        &mut mesh.clusters,
        old.map(|o| &o.clusters[..]),
        &new.clusters,
        &mut changed.clusters,
    );
    swap(
        &mut mesh.endpoints,
        old.map(|o| &o.endpoints[..]),
        &new.endpoints,
        &mut changed.endpoints,
    );
}

/// Takes a service that is gone out of the mesh.
fn remove(mesh: &mut EncodedMesh, gone: &Entry, changed: &mut Changed) {
    let empty = Entry {
        service: gone.service.clone(),
        routes: Vec::new(),
        listeners: Vec::new(),
        route_configs: Vec::new(),
        clusters: Vec::new(),
        endpoints: Vec::new(),
        round: 0,
    };
    replace(mesh, Some(gone), &empty, changed);
}

/// Whether `route` attaches to any port of `svc`.
fn attached_to(route: &HttpRoute, svc: &Service) -> bool {
    svc.ports
        .iter()
        .any(|p| route.attaches_to(ParentKind::Service, &svc.name, &svc.namespace, p.port, &p.name))
}

/// `svc` translated and encoded from scratch.
fn fresh(svc: &Service, attached: Vec<HttpRoute>, routes: &[HttpRoute], telemetry: &Telemetry) -> Entry {
    let mut entry = Entry {
        service: svc.clone(),
        routes: attached,
        listeners: Vec::new(),
        route_configs: Vec::new(),
        clusters: Vec::new(),
        endpoints: Vec::new(),
        round: 0,
    };
    for port in &svc.ports {
        let (listener, route_config, cluster) = mesh::port_config(svc, port, routes, telemetry);
        entry.listeners.push((listener.name.clone(), encode(&listener)));
        entry
            .route_configs
            .push((route_config.name.clone(), encode(&route_config)));
        entry.clusters.push((cluster.name.clone(), encode(&cluster)));
    }
    entry.endpoints = endpoints_of(svc);
    entry
}

fn endpoints_of(svc: &Service) -> Vec<(String, Encoded)> {
    svc.ports
        .iter()
        .map(|port| {
            let cla = mesh::port_endpoints(svc, port);
            (cla.cluster_name.clone(), encode(&cla))
        })
        .collect()
}
