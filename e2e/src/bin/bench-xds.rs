//! xDS benchmark on the test bed (`make bench-xds`): 1000 Services with 5 endpoints each and
//! 2000 concurrent ADS streams (our own tonic clients, over 20 connections). Each stream
//! subscribes to every cluster (CDS wildcard) and to the load assignments of 20 clusters,
//! ten of which every stream shares. Prints the control plane's resident memory and CPU
//! seconds, the time until every stream has its initial configuration, and p50/p99 of the
//! time from an EndpointSlice change in the API server until every stream subscribed to it
//! has received it. Loopback only: endpoint addresses are bookkeeping (198.18.0.0/15).
//!
//! With more cluster names (`bench-xds PRIMARY REMOTE...`), the same 1000 Services (same
//! names and namespace) exist in every cluster, the primary's control plane discovers the
//! others through RemoteClusters made by `weft remote-secret`, so each service has 5
//! endpoints per cluster, and the changes are made in the last remote cluster.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
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
/// The namespace of the services, the same in every cluster (namespace sameness).
const NAMESPACE: &str = "bench-xds";
/// The mesh's namespace on the primary, where the RemoteClusters and their Secrets go.
const MESH_NAMESPACE: &str = "weft-bench";

fn cluster(ns: &str, i: usize) -> String {
    format!("outbound|80||svc-{i}.{ns}.svc.cluster.local")
}

/// Service `i`'s EndpointSlice in cluster number `cluster` (addresses differ per cluster).
fn slice(i: usize, generation: usize, cluster: usize) -> EndpointSlice {
    let endpoints: Vec<_> = (0..5)
        .map(|e| {
            let n = i * 5 + e + generation * 7;
            json!({"addresses": [format!("198.{}.{}.{}", 18 + cluster / 2, (cluster % 2) * 64 + (n / 250) % 64, n % 250 + 1)], "conditions": {"ready": true}, "zone": format!("zone-{}", ["a", "b", "c"][e % 3])})
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

/// Creates the namespace and the 1000 Services with their EndpointSlices in one cluster.
async fn populate(bed: &Bed, cluster: usize) {
    let started = Instant::now();
    let namespaces: Api<Namespace> = Api::all(bed.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).expect("a namespace");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create the namespace");
    let svcs: Api<Service> = Api::namespaced(bed.client.clone(), NAMESPACE);
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), NAMESPACE);
    futures::stream::iter(0..SERVICES)
        .for_each_concurrent(16, |i| {
            let (svcs, slices) = (svcs.clone(), slices.clone());
            async move {
                let svc: Service = serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}")}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})).unwrap();
                svcs.create(&PostParams::default(), &svc).await.expect("create service");
                slices.create(&PostParams::default(), &slice(i, 0, cluster)).await.expect("create endpointslice");
            }
        })
        .await;
    println!(
        "created {SERVICES} services with 5 endpoints each in {} in {:?}",
        bed.name,
        started.elapsed()
    );
}

/// Makes a credential for `remote` with `weft remote-secret` and applies the Secret and
/// RemoteCluster it prints on the primary.
fn join(primary: &Bed, remote: &Bed) {
    let yaml = weft_e2e::remote::remote_secret(remote, &remote.name, REVISION, MESH_NAMESPACE);
    weft_e2e::remote::apply_yaml(primary, &yaml);
}

/// Sums and counts of the control plane's histograms: (translate sum, translate count, EDS
/// push latency sum, EDS push count).
fn histograms(monitoring: u16) -> [f64; 4] {
    let (_, text) = weft_e2e::http_get(monitoring, "/metrics").expect("the control plane's metrics");
    [
        metric(&text, "weft_xds_translate_seconds_sum"),
        metric(&text, "weft_xds_translate_seconds_count"),
        metric(&text, "weft_xds_push_latency_seconds_sum{type=\"eds\"}"),
        metric(&text, "weft_xds_push_latency_seconds_count{type=\"eds\"}"),
    ]
}

/// A metric's value, summed over the lines that start with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts the primary's control plane (mesh `bench`, cluster named after the primary).
fn start_control_plane(primary: &Bed, xds: u16, monitoring: u16) -> std::process::Child {
    let config = std::env::temp_dir().join(format!("weft-bench-mesh-{}.yaml", std::process::id()));
    std::fs::write(&config, format!("mesh: {REVISION}\nclusterName: {}\n", primary.name))
        .expect("write the mesh config");
    Command::new(weft_bin())
        .args([
            "control-plane",
            "--revision",
            REVISION,
            "--mesh-namespace",
            MESH_NAMESPACE,
        ])
        .arg("--kubeconfig")
        .arg(&primary.kubeconfig)
        .arg("--mesh-config")
        .arg(&config)
        .args([
            "--xds-address",
            &format!("127.0.0.1:{xds}"),
            "--monitoring-address",
            &format!("127.0.0.1:{monitoring}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the control plane")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Connects to the clusters named on the command line (the test run's when none), fills
/// each with the services, and joins the others to the first as RemoteClusters.
async fn clusters() -> Vec<Bed> {
    let names: Vec<String> = std::env::args().skip(1).collect();
    let mut beds = Vec::new();
    if names.is_empty() {
        beds.push(Bed::connect().await);
    }
    for name in &names {
        beds.push(Bed::connect_to(name).await);
    }
    for (cluster, bed) in beds.iter().enumerate() {
        populate(bed, cluster).await;
    }
    let primary = &beds[0];
    if beds.len() > 1 {
        weft_e2e::operator::install_crds(primary);
        let namespaces: Api<Namespace> = Api::all(primary.client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": MESH_NAMESPACE}})).expect("a namespace");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the mesh namespace");
        for remote in &beds[1..] {
            join(primary, remote);
        }
    }
    beds
}

/// Waits until the control plane serves every service with the endpoints of every cluster.
async fn wait_synced(monitoring: u16, clusters: usize) {
    let endpoints = (SERVICES * 5 * clusters) as f64;
    wait_for(
        "the control plane to hold every cluster's endpoints",
        Duration::from_secs(180),
        || async {
            let (_, text) = weft_e2e::http_get(monitoring, "/metrics")?;
            let eds = metric(&text, "weft_xds_resources{type=\"eds\"}");
            let remote = metric(&text, "weft_remote_cluster_endpoints{");
            let local = (SERVICES * 5) as f64;
            if eds >= SERVICES as f64 && local + remote >= endpoints {
                Ok(())
            } else {
                Err(format!("{eds} load assignments, {remote} remote endpoints"))
            }
        },
    )
    .await;
}

#[tokio::main]
async fn main() {
    let beds = clusters().await;
    let (xds, monitoring) = (free_port(), free_port());
    let mut cp = start_control_plane(&beds[0], xds, monitoring);
    let pid = cp.id();
    wait_synced(monitoring, beds.len()).await;
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
            NAMESPACE.to_string(),
            report_tx.clone(),
        ));
    }
    let initial = wait_initial(&mut reports, t0).await;
    let (loaded_rss, _) = proc_stat(pid);

    // Changes (in the last cluster, a remote one when there are several): each
    // EndpointSlice change of a shared cluster must reach all 2000 streams.
    let changed = &beds[beds.len() - 1];
    let before = histograms(monitoring);
    let ChangeLatencies {
        streams: mut latencies,
        mut watch,
    } = measure_changes(changed, beds.len() - 1, &mut reports).await;
    let after = histograms(monitoring);
    latencies.sort();
    watch.sort();
    let (final_rss, cpu) = proc_stat(pid);
    let peak_rss = status_kib(pid, "VmHWM:");

    let clusters = beds.len();
    println!(
        "xDS benchmark: {} ({clusters} cluster(s) x {SERVICES} services x 5 endpoints, {STREAMS} streams over {CONNECTIONS} connections)",
        weft_bin().display()
    );
    println!(
        "  control plane resident memory: {} KiB synced and idle, {} KiB with {STREAMS} streams, {} KiB after {CHANGES} changes, {} KiB peak",
        idle_rss, loaded_rss, final_rss, peak_rss
    );
    println!("  control plane CPU: {:.2} s to sync, {:.2} s in total", idle_cpu, cpu);
    println!("  initial configuration (CDS: {SERVICES} clusters, EDS: 20 assignments) on every stream: {initial:?}");
    println!(
        "  EndpointSlice change in {} -> all {STREAMS} streams: p50 {:?}, p99 {:?}, max {:?} over {CHANGES} changes (default debounce included: 10 ms quiet, 100 ms at most)",
        changed.name,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    println!(
        "    of which the API server's write and watch (a bare watch in the benchmark): p50 {:?}, p99 {:?}",
        percentile(&watch, 0.5),
        percentile(&watch, 0.99)
    );
    let d: Vec<f64> = (0..4).map(|i| after[i] - before[i]).collect();
    let mean_ms = |sum: f64, count: f64| if count > 0.0 { sum / count * 1000.0 } else { 0.0 };
    println!(
        "    in the control plane: {} snapshots built (mean {:.1} ms each: model, translation, encoding); \
         from seeing a change to writing its EDS response, mean {:.1} ms over {} responses (debounce included)",
        d[1],
        mean_ms(d[0], d[1]),
        mean_ms(d[2], d[3]),
        d[3]
    );
    let _ = cp.kill();
    let _ = cp.wait();
    translation_figures();
}

/// Where a snapshot's time goes, translation alone (no cluster, no streams): the same 1000
/// services translated in full, and incrementally after one endpoint change.
fn translation_figures() {
    use weft::xds::model::{Endpoint, Service as MeshService, ServicePort, Telemetry};
    use weft::xds::snapshot::Snapshot;
    use weft::xds::translate::{incremental::Incremental, translate_all, translate_gateways};
    let endpoint = |i: usize, e: usize| Endpoint {
        address: format!("198.18.{}.{}", i / 200, (i % 200) + e),
        ports: [("http".to_string(), 8080)].into(),
        zone: Some("zone-a".into()),
        cluster: "local".into(),
        network: String::new(),
        ready: true,
        terminating: false,
    };
    let mut services: Vec<MeshService> = (0..SERVICES)
        .map(|i| MeshService {
            name: format!("svc-{i}"),
            namespace: NAMESPACE.into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                http2: false,
            }],
            endpoints: (0..5).map(|e| endpoint(i, e)).collect(),
        })
        .collect();
    let telemetry = Telemetry::default();
    let t = Instant::now();
    let full = translate_all(&services, &[], &[], &telemetry);
    let translated = t.elapsed();
    let t = Instant::now();
    drop(Snapshot::new(1, Instant::now(), &full));
    let encoded = t.elapsed();
    let mut incremental = Incremental::default();
    incremental.translate(&services, &[], &telemetry);
    services[7].endpoints.pop();
    let t = Instant::now();
    let mesh = incremental.translate(&services, &[], &telemetry);
    let again = t.elapsed();
    let t = Instant::now();
    drop(Snapshot::assemble(
        2,
        Instant::now(),
        mesh,
        &translate_gateways(&services, &[], &[], &telemetry),
    ));
    let assembled = t.elapsed();
    println!(
        "  translation of {SERVICES} services, in this process: in full {translated:?} + encoding {encoded:?}; \
         incrementally after one endpoint change {again:?} + snapshot {assembled:?}"
    );
}

/// Waits until every stream has its clusters and load assignments; how long that took.
async fn wait_initial(reports: &mut mpsc::UnboundedReceiver<Report>, t0: Instant) -> Duration {
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
    assert_eq!(
        complete, STREAMS,
        "only {complete} streams got their initial configuration"
    );
    t0.elapsed()
}

/// Makes the changes in cluster number `cluster`; how long each took to reach every stream.
/// What the changes took: to every stream, and to a bare watch of the same EndpointSlices
/// (this process's own, the part no control plane can save).
struct ChangeLatencies {
    streams: Vec<Duration>,
    watch: Vec<Duration>,
}

/// A watch of the namespace's EndpointSlices: each applied object's resourceVersion and when
/// it arrived. Returns once the watch has listed.
async fn bare_watch(slices: Api<EndpointSlice>) -> mpsc::UnboundedReceiver<(String, Instant)> {
    use kube::runtime::watcher::{self, Event};
    let (tx, rx) = mpsc::unbounded_channel();
    let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut listed = Some(listed_tx);
        let mut events = std::pin::pin!(watcher::watcher(slices, watcher::Config::default()));
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::InitDone) => {
                    if let Some(l) = listed.take() {
                        let _ = l.send(());
                    }
                }
                Ok(Event::Apply(o)) => {
                    let _ = tx.send((o.metadata.resource_version.unwrap_or_default(), Instant::now()));
                }
                _ => {}
            }
        }
    });
    listed_rx.await.expect("the bare watch lists");
    rx
}

async fn measure_changes(bed: &Bed, cluster: usize, reports: &mut mpsc::UnboundedReceiver<Report>) -> ChangeLatencies {
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), NAMESPACE);
    let mut watched = bare_watch(slices.clone()).await;
    let mut out = ChangeLatencies {
        streams: Vec::new(),
        watch: Vec::new(),
    };
    for n in 0..CHANGES {
        let i = n % 10;
        while reports.try_recv().is_ok() {}
        let start = Instant::now();
        let patched = slices
            .patch(
                &format!("svc-{i}-1"),
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&slice(i, n + 1, cluster)),
            )
            .await
            .expect("patch");
        wait_all_streams(reports, n).await;
        out.streams.push(start.elapsed());
        let version = patched.metadata.resource_version.unwrap_or_default();
        loop {
            let Ok(Some((seen, at))) = tokio::time::timeout(Duration::from_secs(30), watched.recv()).await else {
                panic!("change {n}: the bare watch never saw resourceVersion {version}");
            };
            if seen == version {
                out.watch.push(at - start);
                break;
            }
        }
    }
    out
}

/// Waits until every stream has received a load assignment since the change `n`.
async fn wait_all_streams(reports: &mut mpsc::UnboundedReceiver<Report>, n: usize) {
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
}
