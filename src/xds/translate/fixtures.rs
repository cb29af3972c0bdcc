//! The models translation tests share: a shop with an HTTPRoute split, a gateway with
//! hostnames and ports, telemetry, and golden files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::xds::model::*;

pub(crate) fn endpoint(address: &str, port: u16, zone: &str, ready: bool, terminating: bool) -> Endpoint {
    Endpoint {
        address: address.to_string(),
        ports: BTreeMap::from([("grpc".to_string(), port)]),
        zone: Some(zone.to_string()),
        cluster: "local".to_string(),
        network: String::new(),
        ready,
        terminating,
    }
}

pub(crate) fn service(name: &str, endpoints: Vec<Endpoint>) -> Service {
    Service {
        name: name.to_string(),
        namespace: "shop".to_string(),
        ports: vec![ServicePort {
            name: "grpc".to_string(),
            port: 50051,
            http2: true,
        }],
        endpoints: endpoints.into(),
    }
}

pub(crate) fn world() -> (Vec<Service>, Vec<HttpRoute>) {
    let services = vec![
        service(
            "cart",
            vec![
                endpoint("198.51.100.10", 8080, "zone-a", true, false),
                endpoint("198.51.100.11", 8080, "zone-b", true, false),
                endpoint("198.51.100.12", 8080, "zone-b", false, false),
                endpoint("198.51.100.13", 8080, "zone-c", true, true),
            ],
        ),
        service("cart-v2", vec![endpoint("198.51.100.20", 8080, "zone-a", true, false)]),
    ];
    let routes = vec![HttpRoute {
        name: "cart-split".to_string(),
        namespace: "shop".to_string(),
        hostnames: vec![],
        parents: vec![ParentRef {
            kind: ParentKind::Service,
            name: "cart".to_string(),
            namespace: "shop".to_string(),
            port: None,
            section_name: None,
        }],
        rules: vec![
            RouteRule {
                matches: vec![],
                backends: vec![
                    Backend {
                        name: "cart".into(),
                        namespace: "shop".into(),
                        port: 50051,
                        weight: 90,
                    },
                    Backend {
                        name: "cart-v2".into(),
                        namespace: "shop".into(),
                        port: 50051,
                        weight: 10,
                    },
                ],
            },
            RouteRule {
                matches: vec![RouteMatch {
                    path: Some(PathMatch::Prefix("/cart.Cart/Checkout".into())),
                    headers: vec![HeaderMatch {
                        name: "X-Canary".into(),
                        value: "yes".into(),
                        regex: false,
                    }],
                }],
                backends: vec![Backend {
                    name: "cart-v2".into(),
                    namespace: "shop".into(),
                    port: 50051,
                    weight: 1,
                }],
            },
        ],
    }];
    (services, routes)
}

pub(crate) fn telemetry() -> Telemetry {
    Telemetry {
        access_log: Some(FileLog {
            path: "/dev/stdout".into(),
            format: None,
        }),
        zipkin: Some(Zipkin {
            address: "zipkin.tracing:9411".into(),
            sampling_percent: 1.0,
        }),
    }
}

/// Compares with `src/xds/testdata/NAME.txt`; `WEFT_UPDATE_GOLDEN=1` rewrites it.
pub(crate) fn golden(name: &str, r: &impl std::fmt::Debug) {
    let actual = format!("{r:#?}\n");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/xds/testdata")
        .join(format!("{name}.txt"));
    if std::env::var("WEFT_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run WEFT_UPDATE_GOLDEN=1 cargo test", path.display()));
    if let Some((i, (e, a))) = expected
        .lines()
        .zip(actual.lines())
        .enumerate()
        .find(|(_, (e, a))| e != a)
    {
        panic!(
            "{} differs at line {}:\n  golden: {e}\n  actual: {a}\n(WEFT_UPDATE_GOLDEN=1 if intended)",
            path.display(),
            i + 1
        );
    }
    assert_eq!(
        expected.lines().count(),
        actual.lines().count(),
        "{} differs in length",
        path.display()
    );
}

pub(crate) fn backend(name: &str, weight: u32) -> Backend {
    Backend {
        name: name.into(),
        namespace: "shop".into(),
        port: 50051,
        weight,
    }
}

pub(crate) fn gateway_parent(name: &str, section_name: Option<&str>, port: Option<u16>) -> ParentRef {
    ParentRef {
        kind: ParentKind::MeshGateway,
        name: name.into(),
        namespace: "edge".into(),
        port,
        section_name: section_name.map(str::to_string),
    }
}

pub(crate) fn prefix(p: &str, headers: &[(&str, &str)]) -> RouteMatch {
    RouteMatch {
        path: Some(PathMatch::Prefix(p.into())),
        headers: headers
            .iter()
            .map(|(name, value)| HeaderMatch {
                name: name.to_string(),
                value: value.to_string(),
                regex: false,
            })
            .collect(),
    }
}

/// Gateway `edge/ingress` with `http` 80 (container 8080) and `http-alt` 8443; a storefront
/// route with hostnames on `http` only, a fallback on every port, and a route of another
/// gateway that must not show up.
pub(crate) fn gateway_world() -> (Vec<Gateway>, Vec<HttpRoute>) {
    let gateways = vec![Gateway {
        name: "ingress".into(),
        namespace: "edge".into(),
        ports: vec![
            GatewayPort {
                name: "http".into(),
                port: 80,
                container_port: 8080,
            },
            GatewayPort {
                name: "http-alt".into(),
                port: 8443,
                container_port: 8443,
            },
        ],
        eastwest: false,
    }];
    let routes = vec![
        HttpRoute {
            name: "fallback".into(),
            namespace: "edge".into(),
            hostnames: vec![],
            parents: vec![gateway_parent("ingress", None, None)],
            rules: vec![RouteRule {
                matches: vec![],
                backends: vec![backend("cart-v2", 1)],
            }],
        },
        HttpRoute {
            name: "internal-only".into(),
            namespace: "edge".into(),
            hostnames: vec![],
            parents: vec![gateway_parent("internal", None, None)],
            rules: vec![RouteRule {
                matches: vec![prefix("/internal", &[])],
                backends: vec![backend("cart", 1)],
            }],
        },
        HttpRoute {
            name: "storefront".into(),
            namespace: "shop".into(),
            hostnames: vec!["shop.example.com".into(), "*.shop.example.com".into()],
            parents: vec![gateway_parent("ingress", Some("http"), None)],
            rules: vec![
                RouteRule {
                    matches: vec![prefix("/api", &[])],
                    backends: vec![backend("cart", 90), backend("cart-v2", 10)],
                },
                RouteRule {
                    matches: vec![prefix("/api", &[("X-Canary", "yes")])],
                    backends: vec![backend("cart-v2", 1)],
                },
                RouteRule {
                    matches: vec![RouteMatch {
                        path: Some(PathMatch::Exact("/healthz".into())),
                        headers: vec![],
                    }],
                    backends: vec![backend("cart", 1)],
                },
            ],
        },
    ];
    (gateways, routes)
}
