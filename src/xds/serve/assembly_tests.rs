//! Incremental translation assembled into snapshots, against the full rebuild: a property
//! test over random sequences of changes, and what an endpoint change shares.

use std::sync::Arc;
use std::time::Instant;

use std::collections::BTreeMap;

use super::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot};
use crate::xds::model::{Backend, Endpoint, ParentRef, RouteRule, ServicePort};
use crate::xds::model::{HttpRoute, ParentKind, Service, Telemetry};
use crate::xds::translate::incremental::{Changed, Incremental};
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
        crate::xds::translate::fixtures::telemetry()
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
