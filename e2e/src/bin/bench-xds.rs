//! xDS benchmark on the test bed (`make bench-xds`): 1000 Services with 5 endpoints each and
//! 2000 concurrent ADS streams (our own tonic clients, over 20 connections). Each stream
//! subscribes to every cluster (CDS wildcard) and to the load assignments of 20 clusters,
//! ten of which every stream shares. Prints the control plane's resident memory and CPU
//! seconds, the time until every stream has its initial configuration, and p50/p99 of the
//! time from an EndpointSlice change in the API server until every stream subscribed to it
//! has received it. Loopback only: endpoint addresses are bookkeeping (198.18.0.0/15).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use weft_e2e::{Bed, wait_for, weft_bin};

const SERVICES: usize = 1000;
const STREAMS: usize = 2000;
const CONNECTIONS: usize = 20;
const CHANGES: usize = 40;
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const REVISION: &str = "bench";

fn cluster(ns: &str, i: usize) -> String {
    format!("outbound|80||svc-{i}.{ns}.svc.cluster.local")
}

fn slice(i: usize, generation: usize) -> EndpointSlice {
    let endpoints: Vec<_> = (0..5)
        .map(|e| {
            let n = i * 5 + e + generation * 7;
            json!({"addresses": [format!("198.18.{}.{}", (n / 250) % 256, n % 250 + 1)], "conditions": {"ready": true}, "zone": format!("zone-{}", ["a", "b", "c"][e % 3])})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-1"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .expect("valid EndpointSlice")
}

/// A `/proc/<pid>/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn proc_stat(pid: u32) -> (u64, f64) {
    let rss = status_kib(pid, "VmRSS:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    (rss, ticks as f64 / 100.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What a stream reports: (stream, type, when).
type Report = (usize, &'static str, Instant);

async fn run_stream(channel: Channel, id: usize, ns: String, reports: mpsc::UnboundedSender<Report>) {
    let mut client = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(4);
    let node = Node {
        id: format!("bench-{id}"),
        metadata: Some(Struct {
            fields: [(
                "REVISION".to_string(),
                Value {
                    kind: Some(Kind::StringValue(REVISION.into())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    };
    let names: Vec<String> = (0..10)
        .chain((0..10).map(|k| 10 + (id * 10 + k) % (SERVICES - 10)))
        .map(|i| cluster(&ns, i))
        .collect();
    let _ = tx
        .send(DiscoveryRequest {
            node: Some(node),
            type_url: CDS.into(),
            ..Default::default()
        })
        .await;
    let _ = tx
        .send(DiscoveryRequest {
            type_url: EDS.into(),
            resource_names: names.clone(),
            ..Default::default()
        })
        .await;
    let Ok(response) = client.stream_aggregated_resources(ReceiverStream::new(rx)).await else {
        return;
    };
    let mut responses = response.into_inner();
    while let Ok(Some(r)) = responses.message().await {
        let kind = if r.type_url == CDS { "cds" } else { "eds" };
        let _ = reports.send((id, kind, Instant::now()));
        let names = if r.type_url == EDS { names.clone() } else { vec![] };
        let ack = DiscoveryRequest {
            type_url: r.type_url,
            version_info: r.version_info,
            response_nonce: r.nonce,
            resource_names: names,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("bench-xds").await;
    let started = Instant::now();
    let svcs: Api<Service> = Api::namespaced(bed.client.clone(), &ns.name);
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), &ns.name);
    futures::stream::iter(0..SERVICES)
        .for_each_concurrent(16, |i| {
            let (svcs, slices) = (svcs.clone(), slices.clone());
            async move {
                let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}")}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})).unwrap();
                svcs.create(&PostParams::default(), &svc).await.expect("create service");
                slices.create(&PostParams::default(), &slice(i, 0)).await.expect("create endpointslice");
            }
        })
        .await;
    println!(
        "created {SERVICES} services with 5 endpoints each in {:?}",
        started.elapsed()
    );

    let xds = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let monitoring = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cp = Command::new(weft_bin())
        .args(["control-plane", "--revision", REVISION])
        .arg("--kubeconfig")
        .arg(&bed.kubeconfig)
        .args([
            "--xds-address",
            &format!("127.0.0.1:{xds}"),
            "--monitoring-address",
            &format!("127.0.0.1:{monitoring}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the control plane");
    let pid = cp.id();
    wait_for(
        "the control plane to hold every cluster",
        Duration::from_secs(120),
        || async {
            let (_, text) = weft_e2e::http_get(monitoring, "/metrics")?;
            let eds = text
                .lines()
                .find(|l| l.starts_with("weft_xds_resources{type=\"eds\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
                .unwrap_or(0);
            if eds >= SERVICES {
                Ok(())
            } else {
                Err(format!("{eds} load assignments"))
            }
        },
    )
    .await;
    let (idle_rss, idle_cpu) = proc_stat(pid);

    // 2000 streams over 20 connections.
    let (report_tx, mut reports) = mpsc::unbounded_channel::<Report>();
    let t0 = Instant::now();
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        let endpoint = Channel::from_shared(format!("http://127.0.0.1:{xds}")).expect("valid URL");
        channels.push(endpoint.connect().await.expect("connect to the control plane"));
    }
    for id in 0..STREAMS {
        tokio::spawn(run_stream(
            channels[id % CONNECTIONS].clone(),
            id,
            ns.name.clone(),
            report_tx.clone(),
        ));
    }
    let mut got = vec![(false, false); STREAMS];
    let mut complete = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while complete < STREAMS && Instant::now() < deadline {
        let Ok(Some((id, kind, _))) = tokio::time::timeout(Duration::from_secs(60), reports.recv()).await else {
            break;
        };
        let g = &mut got[id];
        let before = g.0 && g.1;
        if kind == "cds" {
            g.0 = true
        } else {
            g.1 = true
        }
        if !before && g.0 && g.1 {
            complete += 1;
        }
    }
    let initial = t0.elapsed();
    assert_eq!(
        complete, STREAMS,
        "only {complete} streams got their initial configuration"
    );
    let (loaded_rss, _) = proc_stat(pid);

    // Changes: each EndpointSlice change of a shared cluster must reach all 2000 streams.
    let mut latencies = Vec::new();
    for n in 0..CHANGES {
        let i = n % 10;
        while reports.try_recv().is_ok() {}
        let start = Instant::now();
        slices
            .patch(
                &format!("svc-{i}-1"),
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&slice(i, n + 1)),
            )
            .await
            .expect("patch");
        let mut seen = vec![false; STREAMS];
        let mut count = 0;
        while count < STREAMS {
            let Ok(Some((id, kind, _))) = tokio::time::timeout(Duration::from_secs(30), reports.recv()).await else {
                panic!("change {n}: only {count} of {STREAMS} streams received it");
            };
            if kind == "eds" && !seen[id] {
                seen[id] = true;
                count += 1;
            }
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let (final_rss, cpu) = proc_stat(pid);
    let peak_rss = status_kib(pid, "VmHWM:");

    println!(
        "xDS benchmark: {} ({SERVICES} services x 5 endpoints, {STREAMS} streams over {CONNECTIONS} connections)",
        weft_bin().display()
    );
    println!(
        "  control plane resident memory: {} KiB synced and idle, {} KiB with {STREAMS} streams, {} KiB after {CHANGES} changes, {} KiB peak",
        idle_rss, loaded_rss, final_rss, peak_rss
    );
    println!("  control plane CPU: {:.2} s to sync, {:.2} s in total", idle_cpu, cpu);
    println!("  initial configuration (CDS: {SERVICES} clusters, EDS: 20 assignments) on every stream: {initial:?}");
    println!(
        "  EndpointSlice change -> all {STREAMS} streams: p50 {:?}, p99 {:?}, max {:?} over {CHANGES} changes (debounce 100 ms included)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    let _ = cp.kill();
    let _ = cp.wait();
    ns.delete().await;
}
