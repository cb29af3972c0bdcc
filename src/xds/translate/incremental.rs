//! Incremental translation: each service is translated and encoded again only when what its
//! resources are made from changed. A service's listeners, route configurations and clusters
//! come from its name, ports and attached HTTPRoutes (and the mesh's telemetry); its load
//! assignments from its ports and endpoints. So an EndpointSlice change re-derives one
//! service's load assignments, and nothing else is encoded again. The full translation
//! (`translate_all`) stays the reference: a property test compares the two over random
//! sequences of changes.

use std::collections::{BTreeMap, HashMap};

use super::{mesh, node_proxy};
use crate::xds::model::{HttpRoute, ParentKind, Service, Telemetry};
use crate::xds::snapshot::{Encoded, encode};

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
            for cluster in mesh::constant_clusters(telemetry) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::xds::model::{Backend, Endpoint, ParentRef, RouteRule, ServicePort};
    use crate::xds::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot};
    use crate::xds::translate::{translate_all, translate_gateways};

    /// A small deterministic generator (xorshift), so a failure replays from its seed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn endpoints(rng: &mut Rng) -> Vec<Endpoint> {
        (0..rng.below(4))
            .map(|i| Endpoint {
                address: format!("198.51.100.{}", 10 + i * 10 + rng.below(3)),
                ports: BTreeMap::from([("grpc".to_string(), 8080), ("http".to_string(), 8081)]),
                zone: Some(["zone-a", "zone-b"][rng.below(2) as usize].to_string()),
                cluster: "local".to_string(),
                network: String::new(),
                ready: rng.below(4) > 0,
                terminating: rng.below(5) == 0,
            })
            .collect()
    }

    fn ports(rng: &mut Rng) -> Vec<ServicePort> {
        let grpc = ServicePort {
            name: "grpc".into(),
            port: 50051,
            http2: true,
        };
        let http = ServicePort {
            name: "http".into(),
            port: 8080,
            http2: rng.below(2) == 0,
        };
        match rng.below(3) {
            0 => vec![grpc],
            1 => vec![http],
            _ => vec![grpc, http],
        }
    }

    fn service(rng: &mut Rng, name: String) -> Service {
        Service {
            name,
            namespace: "shop".into(),
            ports: ports(rng),
            endpoints: endpoints(rng).into(),
        }
    }

    fn route(rng: &mut Rng, n: usize) -> HttpRoute {
        let target = |rng: &mut Rng| format!("svc-{}", rng.below(6));
        HttpRoute {
            name: format!("route-{n}"),
            namespace: "shop".into(),
            hostnames: vec![],
            parents: vec![ParentRef {
                kind: ParentKind::Service,
                name: target(rng),
                namespace: "shop".into(),
                port: None,
                section_name: None,
            }],
            rules: vec![RouteRule {
                matches: vec![],
                backends: vec![Backend {
                    name: target(rng),
                    namespace: "shop".into(),
                    port: 50051,
                    weight: 1 + rng.below(9) as u32,
                }],
            }],
        }
    }

    fn telemetry(rng: &mut Rng) -> Telemetry {
        if rng.below(2) == 0 {
            Telemetry::default()
        } else {
            crate::xds::translate::tests::telemetry()
        }
    }

    /// The reference: everything translated and encoded from scratch.
    fn full(services: &[Service], routes: &[HttpRoute], telemetry: &Telemetry) -> Snapshot {
        Snapshot::new(1, Instant::now(), &translate_all(services, &[], routes, telemetry))
    }

    #[test]
    fn incremental_translation_matches_the_full_rebuild_over_random_changes() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut services: Vec<Service> = (0..6).map(|i| service(&mut rng, format!("svc-{i}"))).collect();
            let mut routes: Vec<HttpRoute> = Vec::new();
            let mut tel = Telemetry::default();
            let mut inc = Incremental::default();
            let mut previous = Snapshot::empty();
            for step in 0..60 {
                let what = rng.below(6);
                let i = rng.below(services.len().max(1) as u64) as usize;
                match what {
                    0 | 1 if !services.is_empty() => services[i].endpoints = endpoints(&mut rng).into(),
                    2 if !services.is_empty() => services[i].ports = ports(&mut rng),
                    3 => {
                        if rng.below(2) == 0 || routes.is_empty() {
                            routes.push(route(&mut rng, step));
                        } else {
                            routes.remove(rng.below(routes.len() as u64) as usize);
                        }
                    }
                    4 => {
                        if rng.below(2) == 0 && !services.is_empty() {
                            services.remove(i);
                        } else {
                            let name = format!("svc-{}", rng.below(8));
                            if !services.iter().any(|s| s.name == name) {
                                services.push(service(&mut rng, name));
                            }
                        }
                    }
                    _ => tel = telemetry(&mut rng),
                }
                let mesh = inc.translate(&services, &routes, &tel);
                let got = Snapshot::assemble(
                    1,
                    Instant::now(),
                    mesh,
                    &translate_gateways(&services, &[], &routes, &tel),
                    &previous,
                );
                assert!(
                    got.same_content(&full(&services, &routes, &tel)),
                    "seed {seed}, step {step} (change {what}): incremental and full translations differ"
                );
                previous = got;
            }
        }
    }

    #[test]
    fn an_endpoint_change_translates_one_service_again() {
        let mut rng = Rng(7);
        let mut services: Vec<Service> = (0..50).map(|i| service(&mut rng, format!("svc-{i}"))).collect();
        let mut inc = Incremental::default();
        let tel = Telemetry::default();
        let before = inc.translate(&services, &[], &tel).0.clone();
        assert_eq!(inc.last_translated, 50);
        Arc::make_mut(&mut services[3].endpoints).push(Endpoint {
            address: "198.51.100.99".into(),
            ports: BTreeMap::from([("grpc".to_string(), 8080), ("http".to_string(), 8081)]),
            zone: None,
            cluster: "local".into(),
            network: String::new(),
            ready: true,
            terminating: false,
        });
        let (after, changed) = inc.translate(&services, &[], &tel);
        let after = after.clone();
        assert_eq!(
            changed,
            Changed {
                endpoints: true,
                ..Changed::default()
            },
            "only load assignments changed"
        );
        assert_eq!(inc.last_translated, 1, "only svc-3");
        assert_eq!(after.clusters, before.clusters, "no cluster changed");
        assert_eq!(after.listeners, before.listeners);
        let changed: Vec<&String> = after
            .endpoints
            .iter()
            .filter(|(name, e)| before.endpoints.get(*name) != Some(e))
            .map(|(name, _)| name)
            .collect();
        assert!(
            !changed.is_empty() && changed.iter().all(|n| n.contains("svc-3.")),
            "{changed:?}"
        );
        let (_, changed) = inc.translate(&services, &[], &tel);
        assert_eq!(inc.last_translated, 0, "nothing changed, nothing translated");
        assert_eq!(changed, Changed::default());
    }

    #[test]
    fn a_snapshot_shares_the_sets_an_endpoint_change_left_alone() {
        let mut rng = Rng(11);
        let mut services: Vec<Service> = (0..20).map(|i| service(&mut rng, format!("svc-{i}"))).collect();
        let mut inc = Incremental::default();
        let tel = Telemetry::default();
        let rest = |s: &[Service]| translate_gateways(s, &[], &[], &tel);
        let first = Snapshot::assemble(
            1,
            Instant::now(),
            inc.translate(&services, &[], &tel),
            &rest(&services),
            &Snapshot::empty(),
        );
        Arc::make_mut(&mut services[5].endpoints).push(Endpoint {
            address: "198.51.100.98".into(),
            ports: BTreeMap::from([("grpc".to_string(), 8080), ("http".to_string(), 8081)]),
            zone: None,
            cluster: "local".into(),
            network: String::new(),
            ready: true,
            terminating: false,
        });
        let second = Snapshot::assemble(
            2,
            Instant::now(),
            inc.translate(&services, &[], &tel),
            &rest(&services),
            &first,
        );
        for t in [CLUSTER, LISTENER, ROUTE] {
            assert!(Arc::ptr_eq(&first.resources[t], &second.resources[t]), "{t} is shared");
        }
        assert!(!Arc::ptr_eq(&first.resources[ENDPOINT], &second.resources[ENDPOINT]));
        assert!(second.same_content(&full(&services, &[], &tel)));
    }
}
