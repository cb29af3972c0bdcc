//! The ADS server over a real gRPC connection on loopback, with the generated client.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::server::{Admission, AdsServer};
use super::snapshot::{CLUSTER, Cache, ENDPOINT, LISTENER, ROUTE, Snapshot, View};
use crate::xds::control_plane::{Limits, serve_xds};
use crate::xds::metrics::XdsMetrics;
use crate::xds::model::*;
use crate::xds::translate::{translate, translate_all};

pub(in crate::xds) fn service(name: &str, addresses: &[&str]) -> Service {
    Service {
        name: name.to_string(),
        namespace: "ns".to_string(),
        ports: vec![ServicePort {
            name: "grpc".into(),
            port: 50051,
            http2: true,
        }],
        endpoints: addresses
            .iter()
            .map(|a| Endpoint {
                address: a.to_string(),
                ports: BTreeMap::from([("grpc".to_string(), 50051)]),
                zone: Some("zone-a".into()),
                cluster: "local".into(),
                network: String::new(),
                ready: true,
                terminating: false,
            })
            .collect::<Vec<_>>()
            .into(),
    }
}

pub(in crate::xds) fn snapshot(version: u64, services: &[Service]) -> Snapshot {
    Snapshot::new(
        version,
        Instant::now(),
        &translate(services, &[], &Telemetry::default()),
    )
}

/// Admits revision `rev-a` and its tag `stable`.
pub(in crate::xds) fn test_admission() -> Admission {
    Arc::new(|c| match c.revision.as_deref() {
        Some("rev-a") | Some("stable") => Ok(()),
        other => Err(format!(
            "this control plane serves revision rev-a; the client asked for {other:?}"
        )),
    })
}

/// A control plane serving on loopback, as `weft control-plane` does.
pub(in crate::xds) struct Served {
    /// Its `http://` address.
    pub url: String,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// Its metrics.
    pub metrics: XdsMetrics,
}

/// Serves `cache` on loopback within `limits`, through the same listener and HTTP/2
/// settings as `weft control-plane`.
pub(in crate::xds) async fn start_with(cache: Cache, limits: Limits, admission: Admission) -> Served {
    let metrics = XdsMetrics::new();
    let server = AdsServer::new(cache, admission, metrics.clone(), limits.stream);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_xds(
        listener,
        server,
        limits,
        metrics.clone(),
        std::future::pending(),
    ));
    Served {
        url: format!("http://{addr}"),
        addr,
        metrics,
    }
}

async fn start(cache: Cache) -> String {
    start_with(cache, Limits::default(), test_admission()).await.url
}

pub(in crate::xds) fn node(revision: &str) -> Node {
    Node {
        id: "test-client".into(),
        metadata: Some(Struct {
            fields: [(
                "REVISION".to_string(),
                Value {
                    kind: Some(Kind::StringValue(revision.into())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    }
}

pub(in crate::xds) struct Sotw {
    pub tx: mpsc::Sender<DiscoveryRequest>,
    pub rx: Streaming<DiscoveryResponse>,
}

pub(in crate::xds) async fn sotw(url: &str) -> Sotw {
    let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let rx = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Sotw { tx, rx }
}

impl Sotw {
    pub async fn send(&self, r: DiscoveryRequest) {
        self.tx.send(r).await.unwrap();
    }
    pub async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5s")
            .expect("no stream error")
            .expect("stream open")
    }
    /// Nothing arrives within a short window: asserts quiet, not timing.
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(300), self.rx.message()).await;
        assert!(got.is_err(), "expected no response, got {got:?}");
    }
}

pub(in crate::xds) fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn sotw_wildcard_lds_then_named_rds_and_updates_only_where_changed() {
    let cache = Cache::new();
    cache.publish(snapshot(
        1,
        &[service("a", &["198.51.100.2"]), service("b", &["198.51.100.3"])],
    ));
    let url = start(cache.clone()).await;
    let mut s = sotw(&url).await;

    let mut first = request(LISTENER, &[], "", "");
    first.node = Some(node("rev-a"));
    s.send(first).await;
    let lds = s.next().await;
    assert_eq!(lds.resources.len(), 2, "wildcard LDS gets every listener");
    s.send(request(LISTENER, &[], &lds.version_info, &lds.nonce)).await;

    s.send(request(ROUTE, &["a.ns.svc.cluster.local:50051"], "", "")).await;
    let rds = s.next().await;
    assert_eq!(rds.resources.len(), 1, "only the requested route configuration");
    s.send(request(
        ROUTE,
        &["a.ns.svc.cluster.local:50051"],
        &rds.version_info,
        &rds.nonce,
    ))
    .await;
    s.send(request(ENDPOINT, &["outbound|50051||a.ns.svc.cluster.local"], "", ""))
        .await;
    let eds = s.next().await;
    assert_eq!(eds.resources.len(), 1);
    s.send(request(
        ENDPOINT,
        &["outbound|50051||a.ns.svc.cluster.local"],
        &eds.version_info,
        &eds.nonce,
    ))
    .await;

    // b's endpoints change: this client watches only a's, so it hears nothing.
    cache.publish(snapshot(
        2,
        &[service("a", &["198.51.100.2"]), service("b", &["198.51.100.4"])],
    ));
    s.quiet().await;
    // a's endpoints change: exactly one EDS response.
    cache.publish(snapshot(
        3,
        &[service("a", &["198.51.100.5"]), service("b", &["198.51.100.4"])],
    ));
    let eds2 = s.next().await;
    assert_eq!(eds2.type_url, ENDPOINT);
    assert_ne!(eds2.version_info, eds.version_info);
    let cla = ClusterLoadAssignment::decode(eds2.resources[0].value.as_slice()).expect("a load assignment");
    assert!(format!("{cla:?}").contains("198.51.100.5"), "the new endpoint: {cla:?}");
    s.send(request(
        ENDPOINT,
        &["outbound|50051||a.ns.svc.cluster.local"],
        &eds2.version_info,
        &eds2.nonce,
    ))
    .await;
    s.quiet().await;
}

#[tokio::test]
async fn nothing_is_answered_before_the_first_snapshot() {
    let cache = Cache::new();
    let url = start(cache.clone()).await;
    let mut s = sotw(&url).await;
    let mut first = request(LISTENER, &[], "", "");
    first.node = Some(node("rev-a"));
    s.send(first).await;
    s.quiet().await;
    cache.publish(snapshot(1, &[service("a", &["198.51.100.2"])]));
    assert_eq!(s.next().await.resources.len(), 1, "answered once the sources synced");
}

#[tokio::test]
async fn a_nacked_version_is_not_sent_again_and_a_later_change_is() {
    let cache = Cache::new();
    cache.publish(snapshot(1, &[service("a", &["198.51.100.2"])]));
    let url = start(cache.clone()).await;
    let mut s = sotw(&url).await;
    let mut first = request(CLUSTER, &[], "", "");
    first.node = Some(node("rev-a"));
    s.send(first).await;
    let cds = s.next().await;
    let mut nack = request(CLUSTER, &[], "", &cds.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "rejected on purpose".into(),
        ..Default::default()
    });
    s.send(nack).await;
    s.quiet().await;
    cache.publish(snapshot(
        2,
        &[service("a", &["198.51.100.2"]), service("c", &["198.51.100.9"])],
    ));
    let next = s.next().await;
    assert_eq!(
        next.resources.len(),
        3,
        "the new state is sent after a NACK (two services and the passthrough)"
    );
}

#[tokio::test]
async fn clients_of_another_revision_are_refused_with_a_clear_status() {
    let cache = Cache::new();
    let url = start(cache).await;
    let mut s = sotw(&url).await;
    let mut first = request(LISTENER, &[], "", "");
    first.node = Some(node("rev-b"));
    s.send(first).await;
    let err = tokio::time::timeout(Duration::from_secs(5), s.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("serves revision rev-a"), "{}", err.message());
}

pub(in crate::xds) async fn delta(
    url: &str,
) -> (mpsc::Sender<DeltaDiscoveryRequest>, Streaming<DeltaDiscoveryResponse>) {
    let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

pub(in crate::xds) async fn next_delta(rx: &mut Streaming<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(5), rx.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn delta_sends_only_changes_and_signals_removals() {
    let cache = Cache::new();
    cache.publish(snapshot(
        1,
        &[service("a", &["198.51.100.2"]), service("b", &["198.51.100.3"])],
    ));
    let url = start(cache.clone()).await;
    let (tx, mut rx) = delta(&url).await;
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("stable")),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let all = next_delta(&mut rx).await;
    assert_eq!(all.resources.len(), 3, "wildcard CDS: two services and the passthrough");
    tx.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: all.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // b goes away, c arrives, a is unchanged.
    cache.publish(snapshot(
        2,
        &[service("a", &["198.51.100.2"]), service("c", &["198.51.100.9"])],
    ));
    let change = next_delta(&mut rx).await;
    let names: Vec<&str> = change.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["outbound|50051||c.ns.svc.cluster.local"]);
    assert_eq!(change.removed_resources, ["outbound|50051||b.ns.svc.cluster.local"]);

    // A named EDS subscription to a missing resource is answered with its removal.
    tx.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec!["outbound|50051||zzz.ns.svc.cluster.local".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let missing = next_delta(&mut rx).await;
    assert_eq!(missing.removed_resources, ["outbound|50051||zzz.ns.svc.cluster.local"]);
}

/// A wildcard response is this stream's head fields followed by the snapshot's shared
/// bytes; decoded, it must be exactly the message those parts stand for.
#[test]
fn shared_encodings_decode_as_whole_messages() {
    let snap = snapshot(1, &[service("a", &["10.0.0.1"]), service("b", &["10.0.0.2"])]);
    let set = snap.of(CLUSTER, &View::MESH).unwrap();
    let head = DiscoveryResponse {
        version_info: set.wildcard_version.clone(),
        type_url: CLUSTER.into(),
        nonce: "7".into(),
        ..Default::default()
    };
    let mut bytes = head.encode_to_vec();
    bytes.extend_from_slice(&set.all_sotw());
    let decoded = DiscoveryResponse::decode(bytes.as_slice()).unwrap();
    let expected = DiscoveryResponse {
        resources: set.items.values().map(|e| (*e.any).clone()).collect(),
        ..head
    };
    assert_eq!(decoded, expected);

    let head = DeltaDiscoveryResponse {
        system_version_info: "1".into(),
        type_url: CLUSTER.into(),
        nonce: "8".into(),
        ..Default::default()
    };
    let mut bytes = head.encode_to_vec();
    bytes.extend_from_slice(&set.all_delta());
    let decoded = DeltaDiscoveryResponse::decode(bytes.as_slice()).unwrap();
    let names: Vec<&str> = decoded.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "node-proxy|inbound-passthrough",
            "outbound|50051||a.ns.svc.cluster.local",
            "outbound|50051||b.ns.svc.cluster.local"
        ]
    );
    for r in &decoded.resources {
        let e = &set.items[&r.name];
        assert_eq!(
            (r.version.as_str(), r.resource.as_ref()),
            (e.version.as_str(), Some(&*e.any))
        );
    }
    assert_eq!((decoded.nonce.as_str(), decoded.type_url.as_str()), ("8", CLUSTER));
}

fn gateway(name: &str, ports: &[u16]) -> Gateway {
    Gateway {
        name: name.into(),
        namespace: "edge".into(),
        ports: ports
            .iter()
            .map(|p| GatewayPort {
                name: format!("http-{p}"),
                port: *p,
                container_port: p + 8000,
            })
            .collect(),
        eastwest: false,
    }
}

/// Mesh service `a`, gateway `edge/ingress` on 80 and 443, gateway `edge/other` on `other`.
fn gateway_snapshot(version: u64, other: &[u16]) -> Snapshot {
    let gateways = [gateway("ingress", &[80, 443]), gateway("other", other)];
    Snapshot::new(
        version,
        Instant::now(),
        &translate_all(
            &[service("a", &["198.51.100.2"])],
            &gateways,
            &[],
            &Telemetry::default(),
        ),
    )
}

pub(in crate::xds) fn node_with(fields: &[(&str, &str)]) -> Node {
    Node {
        id: "test-client".into(),
        metadata: Some(Struct {
            fields: fields
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value {
                            kind: Some(Kind::StringValue(v.to_string())),
                        },
                    )
                })
                .collect(),
        }),
        ..Default::default()
    }
}

fn gateway_node(name: &str) -> Node {
    node_with(&[
        ("REVISION", "rev-a"),
        ("ROLE", "gateway"),
        ("GATEWAY", name),
        ("NAMESPACE", "edge"),
        ("MESH", "prod"),
    ])
}

fn listener_names(resources: &[envoy_types::pb::google::protobuf::Any]) -> Vec<String> {
    resources
        .iter()
        .map(|a| {
            envoy_types::pb::envoy::config::listener::v3::Listener::decode(a.value.as_slice())
                .expect("a listener")
                .name
        })
        .collect()
}

const INGRESS: [&str; 2] = ["gateway|443|edge/ingress", "gateway|80|edge/ingress"];

#[tokio::test]
async fn sotw_lds_gives_a_gateway_only_its_listeners_and_mesh_clients_none_of_them() {
    let cache = Cache::new();
    cache.publish(gateway_snapshot(1, &[80]));
    let url = start(cache.clone()).await;

    let mut gw = sotw(&url).await;
    let mut first = request(LISTENER, &[], "", "");
    first.node = Some(gateway_node("ingress"));
    gw.send(first).await;
    let lds = gw.next().await;
    assert_eq!(
        listener_names(&lds.resources),
        INGRESS,
        "wildcard LDS: its own listeners only"
    );
    gw.send(request(LISTENER, &[], &lds.version_info, &lds.nonce)).await;
    // Its route configurations come from the shared RDS set.
    gw.send(request(ROUTE, &INGRESS, "", "")).await;
    assert_eq!(gw.next().await.resources.len(), 2);

    // Proxyless clients get the mesh's api_listeners; node proxies their socket listeners
    // (Envoy takes an api_listener only from its bootstrap).
    let node_proxy_listeners = [
        crate::xds::translate::node_proxy::INBOUND,
        crate::xds::translate::node_proxy::OUTBOUND,
        crate::xds::translate::node_proxy::READY,
    ];
    for (role, want) in [
        ("proxyless", &["a.ns.svc.cluster.local:50051"][..]),
        ("node-proxy", &node_proxy_listeners[..]),
    ] {
        let mut mesh = sotw(&url).await;
        let mut first = request(LISTENER, &["*"], "", "");
        first.node = Some(node_with(&[
            ("REVISION", "rev-a"),
            ("ROLE", role),
            ("NAMESPACE", "edge"),
        ]));
        mesh.send(first).await;
        let lds = mesh.next().await;
        assert_eq!(listener_names(&lds.resources), want, "{role}");
    }

    // Asking by name does not reach across views either.
    let mut named = sotw(&url).await;
    let mut first = request(
        LISTENER,
        &["gateway|80|edge/other", "a.ns.svc.cluster.local:50051"],
        "",
        "",
    );
    first.node = Some(gateway_node("ingress"));
    named.send(first).await;
    assert!(named.next().await.resources.is_empty());
    let mut named = sotw(&url).await;
    let mut first = request(LISTENER, &["gateway|80|edge/ingress"], "", "");
    first.node = Some(node_with(&[("REVISION", "rev-a"), ("ROLE", "proxyless")]));
    named.send(first).await;
    assert!(named.next().await.resources.is_empty());

    // Another gateway's change is not this gateway's news.
    cache.publish(gateway_snapshot(2, &[80, 8080]));
    gw.quiet().await;
}

#[tokio::test]
async fn delta_lds_gives_a_gateway_only_its_listeners_and_mesh_clients_none_of_them() {
    let cache = Cache::new();
    cache.publish(gateway_snapshot(1, &[80]));
    let url = start(cache.clone()).await;

    let (tx, mut rx) = delta(&url).await;
    tx.send(DeltaDiscoveryRequest {
        node: Some(gateway_node("ingress")),
        type_url: LISTENER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let all = next_delta(&mut rx).await;
    let names: Vec<&str> = all.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, INGRESS);
    let decoded: Vec<String> = all
        .resources
        .iter()
        .filter_map(|r| r.resource.clone())
        .map(|a| listener_names(&[a]).remove(0))
        .collect();
    assert_eq!(decoded, INGRESS);

    let (mtx, mut mrx) = delta(&url).await;
    mtx.send(DeltaDiscoveryRequest {
        node: Some(node_with(&[("REVISION", "rev-a"), ("ROLE", "proxyless")])),
        type_url: LISTENER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mesh = next_delta(&mut mrx).await;
    let names: Vec<&str> = mesh.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a.ns.svc.cluster.local:50051"]);
}

#[tokio::test]
async fn a_gateway_client_must_name_its_gateway() {
    let cache = Cache::new();
    cache.publish(gateway_snapshot(1, &[80]));
    let url = start(cache).await;
    let mut s = sotw(&url).await;
    let mut first = request(LISTENER, &[], "", "");
    first.node = Some(node_with(&[
        ("REVISION", "rev-a"),
        ("ROLE", "gateway"),
        ("NAMESPACE", "edge"),
    ]));
    s.send(first).await;
    let err = tokio::time::timeout(Duration::from_secs(5), s.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("GATEWAY"), "{}", err.message());
}

#[test]
fn snapshots_differ_when_only_a_gateway_listener_does_and_cost_nothing_without_gateways() {
    assert!(gateway_snapshot(1, &[80]).same_content(&gateway_snapshot(2, &[80])));
    assert!(!gateway_snapshot(1, &[80]).same_content(&gateway_snapshot(2, &[81])));
    let mesh_only = snapshot(1, &[service("a", &["198.51.100.2"])]);
    assert!(mesh_only.gateway_listeners.is_empty());
    assert!(!mesh_only.same_content(&gateway_snapshot(2, &[80])));
    let view = View::gateway("edge/ingress");
    assert_eq!(gateway_snapshot(1, &[80]).of(LISTENER, &view).unwrap().items.len(), 2);
    assert!(
        mesh_only.of(LISTENER, &view).is_none(),
        "an unknown gateway has no listeners"
    );
}

/// Service `a` on net-a (the control plane's) with net-a's east-west gateway.
fn network_snapshot() -> Snapshot {
    let services = [service("a", &["198.51.100.2"])];
    let gateways = [NetworkGateway {
        network: "net-a".into(),
        cluster: "local".into(),
        address: "203.0.113.1".into(),
        port: 15443,
    }];
    let mut r = translate(&services, &[], &Telemetry::default());
    crate::xds::translate::split_horizon(&mut r, &services, &gateways, "net-a");
    Snapshot::new(1, Instant::now(), &r)
}

#[tokio::test]
async fn a_stream_gets_the_load_assignments_of_its_clients_network() {
    let cache = Cache::new();
    cache.publish(network_snapshot());
    let url = start(cache).await;
    let mut addresses = Vec::new();
    for network in [None, Some("net-a"), Some("net-b")] {
        let mut s = sotw(&url).await;
        let mut first = request(ENDPOINT, &["outbound|50051||a.ns.svc.cluster.local"], "", "");
        let mut fields = vec![("REVISION", "rev-a")];
        fields.extend(network.map(|n| ("NETWORK", n)));
        first.node = Some(node_with(&fields));
        s.send(first).await;
        let eds = s.next().await;
        let cla = ClusterLoadAssignment::decode(eds.resources[0].value.as_slice()).unwrap();
        let lb = &cla.endpoints[0].lb_endpoints[0];
        let Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e)) =
            &lb.host_identifier
        else {
            panic!("no endpoint");
        };
        let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
            e.address.clone().and_then(|a| a.address)
        else {
            panic!("no socket address");
        };
        addresses.push(sa.address);
    }
    assert_eq!(addresses, ["198.51.100.2", "198.51.100.2", "203.0.113.1"]);
}
