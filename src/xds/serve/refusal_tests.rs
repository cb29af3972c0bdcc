//! Every refusal over a real connection on loopback: the status (or the closed connection)
//! the client sees, and the count in `weft_xds_refusals_total`.

use std::future::Future;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::server_tests::{
    Served, Sotw, delta, node, node_with, request, service, snapshot, sotw, start_with, test_admission,
};
use super::snapshot::{CLUSTER, Cache, ENDPOINT, LISTENER};
use crate::xds::control_plane::{Directory, Limits, admission};
use crate::xds::metrics::{Refusal, XdsMetrics};

const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

async fn serve(limits: Limits) -> (Cache, Served) {
    let cache = Cache::new();
    cache.publish(snapshot(1, &[service("a", &["198.51.100.2"])]));
    let served = start_with(cache.clone(), limits, test_admission()).await;
    (cache, served)
}

/// The status that ends the stream; a response before it fails the test (a refused client
/// is served nothing).
async fn refusal<T: std::fmt::Debug>(rx: &mut Streaming<T>) -> Status {
    match tokio::time::timeout(Duration::from_secs(5), rx.message()).await {
        Ok(Err(status)) => status,
        other => panic!("expected an error status within 5s, got {other:?}"),
    }
}

/// Waits until `check` holds, polling every 20 ms for at most `within`; on timeout, fails
/// with what `check` last saw.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match check().await {
            Ok(()) => return,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}; last seen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_counted(metrics: &XdsMetrics, reason: Refusal, n: u64) {
    assert_eq!(metrics.refusals(reason), n, "{reason:?} refusals");
    let line = format!("weft_xds_refusals_total{{reason=\"{}\"}} {n}", reason.label());
    assert!(metrics.encode().contains(&line), "{line} in:\n{}", metrics.encode());
}

fn first(type_url: &str, names: &[&str], revision: &str) -> DiscoveryRequest {
    let mut r = request(type_url, names, "", "");
    r.node = Some(node(revision));
    r
}

#[tokio::test]
async fn a_stream_whose_first_request_has_no_node_is_refused() {
    let (_cache, served) = serve(Limits::default()).await;
    let mut s = sotw(&served.url).await;
    s.send(request(CLUSTER, &[], "", "")).await;
    let err = refusal(&mut s.rx).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("must carry the node"), "{}", err.message());
    assert_counted(&served.metrics, Refusal::NoNode, 1);
}

#[tokio::test]
async fn a_node_naming_neither_revision_nor_namespace_is_served_nothing() {
    let (_cache, served) = serve(Limits::default()).await;
    let bare = [
        node_with(&[]),
        node_with(&[("ROLE", "proxyless")]),
        envoy_types::pb::envoy::config::core::v3::Node {
            id: "no-metadata".into(),
            ..Default::default()
        },
    ];
    for (i, n) in bare.into_iter().enumerate() {
        let mut s = sotw(&served.url).await;
        let mut r = request(CLUSTER, &[], "", "");
        r.node = Some(n);
        s.send(r).await;
        let err = refusal(&mut s.rx).await;
        assert_eq!(err.code(), Code::InvalidArgument);
        let m = err.message();
        assert!(
            m.contains("neither REVISION") && m.contains("NAMESPACE") && m.contains("set at least one"),
            "the refusal says what to set: {m}"
        );
        assert_counted(&served.metrics, Refusal::NoIdentity, i as u64 + 1);
    }
    // Naming only a namespace is enough to be considered (here: refused by admission).
    let mut s = sotw(&served.url).await;
    let mut r = request(CLUSTER, &[], "", "");
    r.node = Some(node_with(&[("NAMESPACE", "shop")]));
    s.send(r).await;
    assert_eq!(refusal(&mut s.rx).await.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn an_unknown_type_is_refused_with_the_served_types() {
    let (_cache, served) = serve(Limits::default()).await;
    let mut s = sotw(&served.url).await;
    s.send(first(CLUSTER, &[], "rev-a")).await;
    let cds = s.next().await;
    s.send(request(CLUSTER, &[], &cds.version_info, &cds.nonce)).await;
    s.send(request(SECRET, &["any"], "", "")).await;
    let err = refusal(&mut s.rx).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("not served") && err.message().contains(LISTENER),
        "{}",
        err.message()
    );
    assert_counted(&served.metrics, Refusal::UnknownType, 1);

    let (tx, mut rx) = delta(&served.url).await;
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("rev-a")),
        type_url: "not-a-type".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(refusal(&mut rx).await.code(), Code::InvalidArgument);
    assert_counted(&served.metrics, Refusal::UnknownType, 2);
}

#[tokio::test]
async fn a_request_naming_100_000_resources_is_refused() {
    let (_cache, served) = serve(Limits::default()).await;
    let names: Vec<String> = (0..100_000).map(|i| format!("bogus-{i}")).collect();
    let mut s = sotw(&served.url).await;
    let mut r = first(ENDPOINT, &[], "rev-a");
    r.resource_names = names;
    s.send(r).await;
    let err = refusal(&mut s.rx).await;
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("100000 resources") && err.message().contains("--xds-max-resource-names"),
        "{}",
        err.message()
    );
    assert_counted(&served.metrics, Refusal::TooManyNames, 1);
}

/// The measured attack: one delta stream subscribing to ever more bogus names. It is
/// answered until it holds more than the limit, then closed.
#[tokio::test]
async fn a_delta_stream_subscribing_to_ever_more_names_is_closed_at_the_limit() {
    let mut limits = Limits::default();
    limits.stream.max_names = 1_000;
    let (_cache, served) = serve(limits).await;
    let (tx, mut rx) = delta(&served.url).await;
    let mut answered = 0;
    let err = loop {
        let batch: Vec<String> = (0..300).map(|i| format!("bogus-{answered}-{i}")).collect();
        let req = DeltaDiscoveryRequest {
            node: (answered == 0).then(|| node("rev-a")),
            type_url: ENDPOINT.into(),
            resource_names_subscribe: batch,
            ..Default::default()
        };
        if tx.send(req).await.is_err() {
            break refusal(&mut rx).await;
        }
        match tokio::time::timeout(Duration::from_secs(5), rx.message()).await {
            Ok(Ok(Some(resp))) => {
                assert_eq!(resp.removed_resources.len(), 300, "bogus names are reported absent");
                answered += 1;
            }
            Ok(Err(status)) => break status,
            other => panic!("expected a response or a status, got {other:?}"),
        }
        assert!(answered <= 3, "still served after {answered} batches of 300 names");
    };
    assert_eq!(answered, 3, "900 names are within the limit, 1200 are not");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("1200 resource names") && err.message().contains("limit of 1000"),
        "{}",
        err.message()
    );
    assert_counted(&served.metrics, Refusal::TooManyNames, 1);
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_refused() {
    let mut limits = Limits::default();
    limits.frame.max_request_bytes = 64 * 1024;
    let (_cache, served) = serve(limits).await;
    let mut s = sotw(&served.url).await;
    let big = "x".repeat(100 * 1024);
    s.send(first(ENDPOINT, &[&big], "rev-a")).await;
    let err = refusal(&mut s.rx).await;
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert_counted(&served.metrics, Refusal::RequestTooLarge, 1);
}

/// Writes `bytes` on a fresh connection and reads until the server closes it.
async fn raw(served: &Served, bytes: &[u8]) -> Vec<u8> {
    let mut conn = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut got)).await;
    // A reset also ends it; only a connection left open fails.
    assert!(read.is_ok(), "the connection is still open; read so far: {got:?}");
    got
}

#[tokio::test]
async fn garbage_and_http1_connections_are_closed_and_counted() {
    let (_cache, served) = serve(Limits::default()).await;
    raw(&served, &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]).await;
    assert_counted(&served.metrics, Refusal::NotHttp2, 1);
    // A valid beginning of the preface, then garbage.
    raw(&served, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").await;
    assert_counted(&served.metrics, Refusal::NotHttp2, 2);
    let answer = raw(&served, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    // HTTP/2 sends its SETTINGS before reading anything, so the answer follows those bytes.
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.contains("HTTP/1.1 505 HTTP Version Not Supported") && answer.ends_with("(HTTP/2 with prior knowledge)"),
        "{answer}"
    );
    assert_counted(&served.metrics, Refusal::NotHttp2, 3);
    // The server still serves.
    let mut s = sotw(&served.url).await;
    s.send(first(CLUSTER, &[], "rev-a")).await;
    // The service's cluster and the node proxies' inbound passthrough.
    assert_eq!(s.next().await.resources.len(), 2);
}

/// A fixed cluster: revisions rev-a and rev-b, tag stable → rev-a; namespace `shop`
/// is labelled `stable`.
struct Fake;

impl Directory for Fake {
    fn namespace_label(&self, namespace: &str) -> Option<String> {
        (namespace == "shop").then(|| "stable".to_string())
    }

    fn known_revisions(&self) -> (Vec<String>, Vec<(String, String)>) {
        (
            vec!["rev-a".into(), "rev-b".into()],
            vec![("stable".into(), "rev-a".into())],
        )
    }
}

#[tokio::test]
async fn a_revision_that_does_not_exist_is_refused_naming_those_that_do() {
    let cache = Cache::new();
    cache.publish(snapshot(1, &[service("a", &["198.51.100.2"])]));
    let served = start_with(cache, Limits::default(), admission("rev-a".into(), Fake)).await;
    let mut s = sotw(&served.url).await;
    s.send(first(CLUSTER, &[], "rev-typo")).await;
    let err = refusal(&mut s.rx).await;
    assert_eq!(err.code(), Code::PermissionDenied);
    let m = err.message();
    assert!(
        m.contains("\"rev-typo\" is neither a revision nor a tag")
            && m.contains("revisions: rev-a, rev-b")
            && m.contains("tags: stable -> rev-a"),
        "{m}"
    );
    assert_counted(&served.metrics, Refusal::NotAdmitted, 1);

    // Another revision that exists: told where to go.
    let mut s = sotw(&served.url).await;
    s.send(first(CLUSTER, &[], "rev-b")).await;
    let m = refusal(&mut s.rx).await.message().to_string();
    assert!(m.contains("resolves to \"rev-b\": connect to weft-cp-rev-b"), "{m}");
    // The tag, and a namespace labelled with it, are served.
    for n in [node("stable"), node_with(&[("NAMESPACE", "shop")])] {
        let mut s = sotw(&served.url).await;
        let mut r = request(CLUSTER, &[], "", "");
        r.node = Some(n);
        s.send(r).await;
        // The service's cluster and the node proxies' inbound passthrough.
        assert_eq!(s.next().await.resources.len(), 2);
    }
    // An unlabelled namespace follows the default tag, which does not exist here.
    let mut s = sotw(&served.url).await;
    let mut r = request(CLUSTER, &[], "", "");
    r.node = Some(node_with(&[("NAMESPACE", "other")]));
    s.send(r).await;
    let m = refusal(&mut s.rx).await.message().to_string();
    assert!(
        m.contains("namespace other has no label") && m.contains("\"default\""),
        "{m}"
    );
}

/// Opens a stream as node `id` and returns it with its first answer, or the refusal.
async fn stream_as(url: &str, id: &str) -> Result<Sotw, Status> {
    let mut s = sotw(url).await;
    let mut r = request(CLUSTER, &[], "", "");
    let mut n = node("rev-a");
    n.id = id.into();
    r.node = Some(n);
    s.send(r).await;
    match tokio::time::timeout(Duration::from_secs(5), s.rx.message()).await {
        Ok(Ok(Some(_))) => Ok(s),
        Ok(Err(status)) => Err(status),
        other => panic!("expected a response or a status, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_identity_gets_at_most_its_streams() {
    let mut limits = Limits::default();
    limits.stream.max_streams_per_client = 2;
    let (_cache, served) = serve(limits).await;
    let one = stream_as(&served.url, "node-1").await.expect("first stream");
    let _two = stream_as(&served.url, "node-1").await.expect("second stream");
    let err = stream_as(&served.url, "node-1")
        .await
        .err()
        .expect("a third is refused");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(
        err.message().contains("\"node-1\" already has 2 open streams"),
        "{}",
        err.message()
    );
    assert_counted(&served.metrics, Refusal::TooManyStreams, 1);
    assert!(
        stream_as(&served.url, "node-2").await.is_ok(),
        "other identities are not affected"
    );
    // One ends: its place is given back.
    drop(one);
    let url = served.url.clone();
    until("a stream's place to be given back", Duration::from_secs(5), || {
        let url = url.clone();
        async move { stream_as(&url, "node-1").await.map(drop).map_err(|e| e.to_string()) }
    })
    .await;
}

/// A client that opens a stream and never reads it: the responses queue up to the limit,
/// then the stream is closed, its queue dropped, and counted. Once the client reads, it
/// finds the status.
#[tokio::test]
async fn a_stream_that_is_not_read_is_closed_with_a_status() {
    let mut limits = Limits::default();
    limits.frame.max_queued_bytes = 16 * 1024;
    limits.frame.send_timeout = Duration::from_millis(300);
    let (cache, served) = serve(limits).await;
    // Small HTTP/2 windows, so the unread responses back up on the server quickly.
    let channel = tonic::transport::Endpoint::from_shared(served.url.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let (tx, requests) = mpsc::channel(8);
    let mut rx = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    tx.send(first(CLUSTER, &[], "rev-a")).await.unwrap();
    let mut version = 1;
    let metrics = served.metrics.clone();
    until("the unread stream to be closed", Duration::from_secs(20), || {
        // A config of 300 services that changes every round.
        version += 1;
        let services: Vec<_> = (0..300)
            .map(|i| service(&format!("svc-{i}-{version}"), &["198.51.100.2"]))
            .collect();
        cache.publish(snapshot(version, &services));
        let closed = metrics.refusals(Refusal::SlowReader);
        async move {
            if closed == 1 {
                Ok(())
            } else {
                Err(format!("{closed} closed after {version} snapshots"))
            }
        }
    })
    .await;
    let gauge = "weft_xds_streams{type=\"sotw\"} 0";
    assert!(metrics.encode().contains(gauge), "{gauge} in:\n{}", metrics.encode());
    // What was under way arrives whole, then the status.
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), rx.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Err(status)) => break status,
            other => panic!("expected the stream to end with a status, got {other:?}"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("unread") && status.message().contains("--xds-send-timeout"),
        "{}",
        status.message()
    );
}

/// Pushes go to each stream on its own: a client that stops reading, its responses backed
/// up on the server, holds up no other stream; every snapshot reaches the one that reads.
#[tokio::test]
async fn a_stream_that_is_not_read_delays_no_other() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;
    let mut limits = Limits::default();
    limits.frame.max_queued_bytes = 16 * 1024;
    let (cache, served) = serve(limits).await;
    let open = |url: String| async move {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        let (tx, requests) = mpsc::channel(8);
        let rx = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        tx.send(first(CLUSTER, &[], "rev-a")).await.unwrap();
        (tx, rx)
    };
    let (_stalled_tx, _stalled) = open(served.url.clone()).await;
    let (_tx, mut reader) = open(served.url.clone()).await;
    for version in 2..12u64 {
        // 300 clusters: more than the stalled stream's HTTP/2 window and queue hold.
        let services: Vec<_> = (0..300)
            .map(|i| service(&format!("svc-{i}-v{version}"), &["198.51.100.2"]))
            .collect();
        cache.publish(snapshot(version, &services));
        let wanted = format!("svc-0-v{version}.");
        loop {
            let response = tokio::time::timeout(Duration::from_secs(5), reader.message())
                .await
                .unwrap_or_else(|_| panic!("snapshot {version} did not reach the stream that reads within 5 s"))
                .unwrap()
                .unwrap();
            let names: Vec<String> = response
                .resources
                .iter()
                .map(|r| Cluster::decode(r.value.as_slice()).unwrap().name)
                .collect();
            if names.iter().any(|n| n.contains(&wanted)) {
                break;
            }
        }
    }
    let metrics = served.metrics.encode();
    assert!(
        metrics.contains("weft_xds_streams{type=\"sotw\"} 2"),
        "both streams open:\n{metrics}"
    );
    assert_eq!(
        served.metrics.refusals(Refusal::SlowReader),
        0,
        "the stalled stream is still open"
    );
}

#[tokio::test]
async fn a_connection_without_streams_is_closed_after_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let (cache, served) = serve(limits).await;
    let mut busy = sotw(&served.url).await;
    busy.send(first(CLUSTER, &[], "rev-a")).await;
    let cds = busy.next().await;
    busy.send(request(CLUSTER, &[], &cds.version_info, &cds.nonce)).await;

    // The preface and an empty SETTINGS frame, then nothing.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    raw(&served, &hello).await;
    assert_counted(&served.metrics, Refusal::Idle, 1);
    // The connection with a stream, older than the idle one, is still served.
    cache.publish(snapshot(2, &[service("b", &["198.51.100.3"])]));
    assert_ne!(busy.next().await.version_info, cds.version_info);
    assert_counted(&served.metrics, Refusal::Idle, 1);
}

/// Sends and receives gRPC messages as raw bytes, to send what no generated client would.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test]
async fn a_request_that_does_not_decode_is_refused() {
    let (_cache, served) = serve(Limits::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(served.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    // Field 2, wire type 7: no such wire type.
    let garbage = tokio_stream::iter(vec![vec![0x17, 0xff, 0xff, 0xff]]);
    let path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
    let mut rx = grpc
        .streaming(tonic::Request::new(garbage), path.parse().unwrap(), RawCodec)
        .await
        .unwrap()
        .into_inner();
    let err = refusal(&mut rx).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("does not decode"), "{}", err.message());
    assert_counted(&served.metrics, Refusal::MalformedRequest, 1);
}

#[tokio::test]
async fn a_connection_carries_at_most_its_streams_and_the_next_waits_for_a_free_one() {
    let limits = Limits {
        max_streams_per_connection: 2,
        ..Default::default()
    };
    let (_cache, served) = serve(limits).await;
    let channel = tonic::transport::Endpoint::from_shared(served.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let open = |id: &'static str| {
        let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
        async move {
            let (tx, requests) = mpsc::channel(2);
            let mut n = node("rev-a");
            n.id = id.into();
            let mut r = request(CLUSTER, &[], "", "");
            r.node = Some(n);
            tx.send(r).await.unwrap();
            let mut rx = client
                .stream_aggregated_resources(ReceiverStream::new(requests))
                .await
                .unwrap()
                .into_inner();
            let first = rx.message().await.unwrap().expect("a first response");
            (tx, rx, first)
        }
    };
    let one = tokio::time::timeout(Duration::from_secs(5), open("one"))
        .await
        .expect("first stream");
    let _two = tokio::time::timeout(Duration::from_secs(5), open("two"))
        .await
        .expect("second stream");
    let mut third = tokio::spawn(open("three"));
    // Nothing within a short window: asserts absence, not timing.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "a third stream was served on a connection limited to two"
    );
    drop(one);
    let (_, _, first) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third stream is served once one ends")
        .unwrap();
    assert_eq!(first.resources.len(), 2, "the service's cluster and the passthrough");
}

#[test]
fn what_clients_send_is_clipped_in_statuses() {
    assert_eq!(super::server::clip("short", 10), "short");
    assert_eq!(super::server::clip("abcdef", 3), "abc…");
    // Never inside a character.
    assert_eq!(super::server::clip("ééé", 3), "é…");
}
