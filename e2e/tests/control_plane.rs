//! `weft control-plane` against the test bed: what it serves follows the cluster. (Our own
//! ADS client reads the configuration here; nothing connects to the endpoint addresses.)

use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_e2e::control_plane::{ControlPlane, next, node, stream};
use weft_e2e::{Bed, http_get, wait_for};

const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn addresses(resp: &DiscoveryResponse) -> Vec<String> {
    let mut out = Vec::new();
    for r in &resp.resources {
        let cla = ClusterLoadAssignment::decode(r.value.as_slice()).unwrap();
        let text = format!("{cla:?}");
        for a in ["198.51.100.10", "198.51.100.11", "198.51.100.12"] {
            if text.contains(a) {
                out.push(a.to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn serves_services_and_endpoints_from_the_cluster_and_follows_changes() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("xds").await;
    let cp = ControlPlane::start(&bed, "cp-test");
    wait_for("the control plane to be ready", Duration::from_secs(30), || async {
        match http_get(cp.monitoring, "/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let svcs: Api<Service> = Api::namespaced(bed.client.clone(), &ns.name);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.expect("create service");
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), &ns.name);
    let slice = |addrs: &[(&str, bool)]| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
            "endpoints": addrs.iter().map(|(a, ready)| json!({"addresses": [a], "conditions": {"ready": ready}, "zone": "zone-a"})).collect::<Vec<_>>()
        }))
        .unwrap()
    };
    slices
        .create(
            &PostParams::default(),
            &slice(&[
                ("198.51.100.10", true),
                ("198.51.100.11", true),
                ("198.51.100.12", false),
            ]),
        )
        .await
        .expect("create endpointslice");

    let listener = format!("echo.{}.svc.cluster.local:50051", ns.name);
    let cluster = format!("outbound|50051||echo.{}.svc.cluster.local", ns.name);
    let (tx, mut rx) = stream(cp.xds).await;
    tx.send(DiscoveryRequest {
        node: Some(node("cp-test")),
        type_url: LDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The first answer may predate the Service; wait until the listener is served.
    let mut lds = next(&mut rx).await;
    loop {
        let names: Vec<String> = lds
            .resources
            .iter()
            .map(|a| {
                envoy_types::pb::envoy::config::listener::v3::Listener::decode(a.value.as_slice())
                    .unwrap()
                    .name
            })
            .collect();
        tx.send(DiscoveryRequest {
            type_url: LDS.into(),
            version_info: lds.version_info.clone(),
            response_nonce: lds.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        if names.contains(&listener) {
            break;
        }
        lds = next(&mut rx).await;
    }

    tx.send(DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec![cluster.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut eds = next(&mut rx).await;
    while eds.type_url != EDS || addresses(&eds).is_empty() {
        eds = next(&mut rx).await;
    }
    assert_eq!(
        addresses(&eds),
        ["198.51.100.10", "198.51.100.11"],
        "ready endpoints only"
    );
    tx.send(DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec![cluster.clone()],
        version_info: eds.version_info.clone(),
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // An endpoint goes away: the change is pushed.
    slices
        .patch(
            "echo-1",
            &PatchParams::apply("weft-e2e").force(),
            &Patch::Apply(&slice(&[("198.51.100.10", true)])),
        )
        .await
        .expect("update endpointslice");
    let mut update = next(&mut rx).await;
    while update.type_url != EDS {
        update = next(&mut rx).await;
    }
    assert_eq!(addresses(&update), ["198.51.100.10"]);

    // A client of another revision is refused.
    let (tx2, mut rx2) = stream(cp.xds).await;
    tx2.send(DiscoveryRequest {
        node: Some(node("some-other-rev")),
        type_url: LDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), rx2.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("serves revision cp-test"), "{}", err.message());

    let (_, metrics) = http_get(cp.monitoring, "/metrics").unwrap();
    for name in [
        "weft_xds_streams",
        "weft_xds_pushes_total",
        "weft_xds_push_latency_seconds",
        "weft_xds_resources",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    ns.delete().await;
}

/// The control plane's resident memory, in MiB (VmRSS from /proc).
fn rss_mib(cp: &ControlPlane) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", cp.pid())).expect("the control plane runs");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024
}

/// One sample of the control plane's metrics (the line starting with `series`).
fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").expect("monitoring port");
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `count` services of one port, each with an EndpointSlice of `endpoints` addresses (on the
/// test hosts' range; nothing connects to them). Returns the EDS names.
async fn services_with_endpoints(bed: &Bed, ns: &str, count: usize, endpoints: usize) -> Vec<String> {
    let svcs: Api<Service> = Api::namespaced(bed.client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), ns);
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("big-{i}");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}
        }))
        .unwrap();
        svcs.create(&PostParams::default(), &svc).await.expect("create service");
        slices
            .create(&PostParams::default(), &big_slice(&name, endpoints, 0))
            .await
            .expect("create endpointslice");
        names.push(format!("outbound|50051||{name}.{ns}.svc.cluster.local"));
    }
    names
}

/// An EndpointSlice of `endpoints` ready addresses for service `name`; `round` changes
/// its port, so every round is new content.
fn big_slice(name: &str, endpoints: usize, round: u32) -> EndpointSlice {
    let addrs: Vec<_> = (0..endpoints)
        .map(|i| json!({"addresses": [format!("198.51.100.{}", 10 + i % 200)], "conditions": {"ready": true}, "zone": "zone-a", "hostname": format!("pod-{i}")}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 8080 + round, "protocol": "TCP"}],
        "endpoints": addrs
    }))
    .unwrap()
}

/// Opens `per_connection` streams on one connection with small HTTP/2 windows, each as
/// its own node subscribing to every cluster and to the endpoints of `eds` by name, and
/// never reads them.
async fn unread_streams(
    port: u16,
    first: usize,
    per_connection: usize,
    eds: &[String],
) -> Vec<(mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>)> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut streams = Vec::new();
    for i in first..first + per_connection {
        let (tx, rx) = mpsc::channel(2);
        let mut n = node("cp-mem");
        n.id = format!("reader-that-never-reads-{i}");
        tx.send(DiscoveryRequest {
            node: Some(n),
            type_url: CDS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        tx.send(DiscoveryRequest {
            type_url: EDS.into(),
            resource_names: eds.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        let s = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open stream")
            .into_inner();
        streams.push((tx, s));
    }
    streams
}

/// Reads one stream until it ends, and returns the status it ended with.
async fn final_status(rx: &mut Streaming<DiscoveryResponse>) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Err(status)) => return status,
            other => panic!("expected the stream to end with a status, got {other:?}"),
        }
    }
}

/// Subscribes to `eds` by name as a client that reads, until every one of them has
/// endpoints (the first answers may predate some EndpointSlices); returns the size of
/// that response.
async fn watched_endpoints_served(cp: &ControlPlane, eds: &[String]) -> usize {
    let (tx, mut rx) = stream(cp.xds).await;
    let mut req = DiscoveryRequest {
        node: Some(node(&cp.revision)),
        type_url: EDS.into(),
        resource_names: eds.to_vec(),
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tx.send(req.clone()).await.unwrap();
        let resp = next(&mut rx).await;
        let with_endpoints = resp
            .resources
            .iter()
            .filter(|r| ClusterLoadAssignment::decode(r.value.as_slice()).is_ok_and(|c| !c.endpoints.is_empty()))
            .count();
        if with_endpoints == eds.len() {
            return resp.encoded_len();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {with_endpoints} of {} watched clusters have endpoints",
            eds.len()
        );
        // The ACK; the next response carries the next change.
        req.node = None;
        req.version_info = resp.version_info.clone();
        req.response_nonce = resp.nonce.clone();
    }
}

/// 500 streams that never read, while a large configuration keeps changing: the control
/// plane's memory stays within a bound, and each stream is closed with RESOURCE_EXHAUSTED
/// and counted. Each stream's endpoints are encoded for it alone, so without a send limit
/// each unread stream keeps its own queue of responses: run with the old bound (a queue of
/// 16 such messages, no timeout), RSS went from 40 to 254 MiB in 92 changes, still growing.
#[tokio::test]
async fn memory_stays_flat_under_500_streams_that_never_read() {
    const STREAMS: usize = 500;
    let bed = Bed::connect().await;
    let ns = bed.namespace("xds-mem").await;
    let cp = ControlPlane::start_with(&bed, "cp-mem", &["--xds-send-timeout", "5"]);
    wait_for("the control plane to be ready", Duration::from_secs(30), || async {
        match http_get(cp.monitoring, "/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // 40 services of 150 endpoints, shared by every stream's wildcard CDS; each stream also
    // watches the endpoints of 5 of them by name (encoded for that stream).
    let all = services_with_endpoints(&bed, &ns.name, 40, 150).await;
    let eds = all[..5].to_vec();
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), &ns.name);
    let full = watched_endpoints_served(&cp, &eds).await;
    let baseline = rss_mib(&cp);
    eprintln!("baseline RSS {baseline} MiB; one EDS response of the 5 watched clusters is {full} bytes");

    let mut streams = Vec::new();
    for c in 0..STREAMS / 100 {
        streams.extend(unread_streams(cp.xds, c * 100, 100, &eds).await);
    }
    let mut round = 0u32;
    let mut peak = baseline;
    let closed = "weft_xds_refusals_total{reason=\"slow_reader\"}";
    wait_for("every unread stream to be closed", Duration::from_secs(120), || {
        // The configuration changes on every poll, among the watched clusters: each change
        // owes every stream a new EDS response.
        round += 1;
        let name = format!("big-{}", round as usize % eds.len());
        let slices = slices.clone();
        peak = peak.max(rss_mib(&cp));
        let (rss, count) = (rss_mib(&cp), metric(cp.monitoring, closed));
        async move {
            slices
                .patch(
                    &format!("{name}-1"),
                    &PatchParams::apply("weft-e2e").force(),
                    &Patch::Apply(&big_slice(&name, 150, round)),
                )
                .await
                .map_err(|e| e.to_string())?;
            if count as usize >= STREAMS {
                Ok(())
            } else {
                Err(format!(
                    "{count} of {STREAMS} closed after {round} changes; RSS {rss} MiB"
                ))
            }
        }
    })
    .await;
    let after = rss_mib(&cp);
    eprintln!("500 unread streams: peak RSS {peak} MiB, after {after} MiB, baseline {baseline} MiB, {round} changes");
    assert_eq!(
        metric(cp.monitoring, closed) as usize,
        STREAMS,
        "each stream is closed once"
    );
    assert_eq!(metric(cp.monitoring, "weft_xds_streams{type=\"sotw\"}"), 0.0);
    assert!(
        peak < baseline + 120,
        "RSS grew from {baseline} MiB to {peak} MiB under {STREAMS} unread streams"
    );

    // A client that reads at last finds what was under way, then the status. (The others
    // go first: their unread data holds their connection's HTTP/2 window.)
    let (_, mut rx) = streams.pop().unwrap();
    drop(streams);
    let status = final_status(&mut rx).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--xds-send-timeout"), "{}", status.message());
    ns.delete().await;
}

/// The measured attack (29 MB → 1.13 GB in 115 s before): one delta stream subscribing to
/// ever more bogus names. With the default limit it is closed at 20 000 names with
/// RESOURCE_EXHAUSTED, counted, and the control plane's memory barely moves.
#[tokio::test]
async fn a_delta_stream_subscribing_to_bogus_names_is_capped() {
    let bed = Bed::connect().await;
    let cp = ControlPlane::start_with(&bed, "cp-names", &[]);
    wait_for("the control plane to be ready", Duration::from_secs(30), || async {
        match http_get(cp.monitoring, "/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let baseline = rss_mib(&cp);
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://127.0.0.1:{}", cp.xds))
        .await
        .unwrap();
    let (tx, requests) = mpsc::channel(1);
    let mut rx = client
        .delta_aggregated_resources(ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    let mut batches = 0;
    let status = loop {
        let names: Vec<String> = (0..5_000)
            .map(|i| format!("outbound|50051||bogus-{batches}-{i}.nowhere.svc.cluster.local"))
            .collect();
        let req = DeltaDiscoveryRequest {
            node: (batches == 0).then(|| node("cp-names")),
            type_url: EDS.into(),
            resource_names_subscribe: names,
            ..Default::default()
        };
        assert!(batches < 10, "still served after {batches} batches of 5000 names");
        if tx.send(req).await.is_err() {
            break final_delta_status(&mut rx).await;
        }
        match tokio::time::timeout(Duration::from_secs(20), rx.message()).await {
            Ok(Ok(Some(_))) => batches += 1,
            Ok(Err(status)) => break status,
            other => panic!("expected a response or a status, got {other:?}"),
        }
    };
    let after = rss_mib(&cp);
    eprintln!("bogus names: closed after {batches} batches of 5000; RSS {baseline} MiB -> {after} MiB");
    assert_eq!(batches, 4, "20 000 names are within the limit, 25 000 are not");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("25000 resource names") && status.message().contains("--xds-max-resource-names"),
        "{}",
        status.message()
    );
    let refused = "weft_xds_refusals_total{reason=\"too_many_names\"}";
    assert_eq!(metric(cp.monitoring, refused), 1.0);
    assert!(after < baseline + 50, "RSS {baseline} MiB -> {after} MiB");
}

/// The status a delta stream ended with.
async fn final_delta_status(rx: &mut Streaming<DeltaDiscoveryResponse>) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Err(status)) => return status,
            other => panic!("expected the stream to end with a status, got {other:?}"),
        }
    }
}
