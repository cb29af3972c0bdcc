//! One measured run: a fresh control plane, its streams, their initial configuration, then
//! EndpointSlice changes.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use weft_e2e::Bed;

use crate::clients::{self, PER_STREAM, Protocol, Report, SHARED, Seen, Shape};
use crate::control_plane::{self as cp, proc_stat, status_kib};
use crate::population::{namespace_of, slice};

/// How long streams are left quiet before memory is sampled again.
const SETTLE: Duration = Duration::from_secs(6);

/// Streams per HTTP/2 connection (the control plane's default limit).
const STREAMS_PER_CONNECTION: usize = 100;

/// What one run measures.
pub struct Scenario {
    pub services: usize,
    pub streams: usize,
    pub protocol: Protocol,
    pub shape: Shape,
    /// EndpointSlice changes, each to one of the shared services.
    pub changes: usize,
}

impl Scenario {
    /// Connections the streams are spread over.
    pub fn connections(&self) -> usize {
        self.streams.div_ceil(STREAMS_PER_CONNECTION)
    }
}

/// What a run measured.
pub struct Figures {
    pub services: usize,
    pub streams: usize,
    pub connections: usize,
    pub protocol: Protocol,
    pub shape: Shape,
    /// Resident KiB: synced with no streams, as soon as every stream is configured, the
    /// same once settled, after the changes, and the peak.
    pub rss_kib: [u64; 5],
    /// CPU seconds to sync, and in all.
    pub cpu_sync: f64,
    pub cpu: f64,
    pub initial: Duration,
    /// Change → every stream, sorted.
    pub latencies: Vec<Duration>,
    /// Change → this process's bare watch, sorted.
    pub watch: Vec<Duration>,
    /// Control plane histograms over the changes: [translate sum, count, EDS push sum, count].
    pub histograms: [f64; 4],
    /// Streams that ended before the run did.
    pub dropped: usize,
}

/// The `p` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `sc` against the primary `beds[0]`, changes made in the last cluster.
pub async fn run(beds: &[Bed], sc: &Scenario) -> Figures {
    let control_plane = cp::start(&beds[0], sc.services);
    let pid = control_plane.child.id();
    cp::wait_synced(control_plane.monitoring, sc.services, beds.len()).await;
    let (idle_rss, cpu_sync) = proc_stat(pid);
    if sc.shape == Shape::NodeProxy && sc.protocol == Protocol::Sotw {
        crate::report::view_bytes(control_plane.xds, sc.services).await;
    }

    let (report_tx, mut reports) = mpsc::unbounded_channel::<Report>();
    let t0 = Instant::now();
    let mut channels = Vec::new();
    for _ in 0..sc.connections() {
        let endpoint = Channel::from_shared(format!("http://127.0.0.1:{}", control_plane.xds)).expect("valid URL");
        channels.push(endpoint.connect().await.expect("connect to the control plane"));
    }
    for id in 0..sc.streams {
        let channel = channels[id / STREAMS_PER_CONNECTION].clone();
        let reports = report_tx.clone();
        tokio::spawn(clients::run_stream(
            channel,
            id,
            sc.services,
            sc.protocol,
            sc.shape,
            reports,
        ));
    }
    let initial = wait_initial(&mut reports, sc, t0).await;
    let (loaded_rss, _) = proc_stat(pid);
    // Resident memory once quiet: not a wait for anything, a second sample after a set
    // quiet time, in which the control plane hands freed memory back (every 5 s while quiet).
    tokio::time::sleep(SETTLE).await;
    let (settled_rss, _) = proc_stat(pid);

    let changed = &beds[beds.len() - 1];
    let before = cp::histograms(control_plane.monitoring);
    let (mut latencies, mut watch) = measure_changes(changed, beds.len() - 1, sc, &mut reports).await;
    let after = cp::histograms(control_plane.monitoring);
    latencies.sort();
    watch.sort();
    let (final_rss, cpu) = proc_stat(pid);
    let peak_rss = status_kib(pid, "VmHWM:");
    let mut dropped = 0;
    while let Ok((_, seen, _)) = reports.try_recv() {
        dropped += usize::from(seen == Seen::Ended);
    }
    drop(control_plane);
    Figures {
        services: sc.services,
        streams: sc.streams,
        connections: sc.connections(),
        protocol: sc.protocol,
        shape: sc.shape,
        rss_kib: [idle_rss, loaded_rss, settled_rss, final_rss, peak_rss],
        cpu_sync,
        cpu,
        initial,
        latencies,
        watch,
        histograms: std::array::from_fn(|i| after[i] - before[i]),
        dropped,
    }
}

/// Waits until every stream has all its clusters and load assignments; how long that took.
async fn wait_initial(reports: &mut mpsc::UnboundedReceiver<Report>, sc: &Scenario, t0: Instant) -> Duration {
    // Wildcard CDS holds every service's cluster and the node proxies' passthrough.
    let (clusters, assignments) = match sc.shape {
        Shape::Wildcard => (sc.services + 1, PER_STREAM),
        Shape::Named => (PER_STREAM, PER_STREAM),
        Shape::NodeProxy => (sc.services + 1, sc.services),
    };
    let mut got = vec![(false, false); sc.streams];
    let mut complete = 0;
    while complete < sc.streams {
        let Ok(Some((id, seen, _))) = tokio::time::timeout(Duration::from_secs(60), reports.recv()).await else {
            break;
        };
        let g = &mut got[id];
        let before = g.0 && g.1;
        match seen {
            Seen::Clusters(n) => g.0 |= n == clusters,
            Seen::Assignments(n) => g.1 |= n == assignments,
            Seen::Other => {}
            Seen::Ended => panic!("stream {id} ended before its initial configuration"),
        }
        if !before && g.0 && g.1 {
            complete += 1;
        }
    }
    assert_eq!(
        complete, sc.streams,
        "only {complete} streams got their initial configuration ({clusters} clusters, {assignments} load assignments) within a minute of the last response"
    );
    t0.elapsed()
}

/// A watch of a namespace's EndpointSlices: each applied object's resourceVersion and when
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

/// Makes the changes in cluster number `cluster`: how long each took to reach every
/// stream, and to reach a bare watch of the same EndpointSlices (the part no control
/// plane can save).
async fn measure_changes(
    bed: &Bed,
    cluster: usize,
    sc: &Scenario,
    reports: &mut mpsc::UnboundedReceiver<Report>,
) -> (Vec<Duration>, Vec<Duration>) {
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), namespace_of(0));
    let mut watched = bare_watch(slices.clone()).await;
    let (mut streams, mut watch) = (Vec::new(), Vec::new());
    for n in 0..sc.changes {
        let i = n % SHARED;
        while let Ok((id, seen, _)) = reports.try_recv() {
            assert_ne!(seen, Seen::Ended, "stream {id} ended");
        }
        let start = Instant::now();
        let patched = slices
            .patch(
                &format!("svc-{i}-1"),
                &PatchParams::apply("bench").force(),
                &Patch::Apply(&slice(i, n + 1, cluster)),
            )
            .await
            .expect("patch");
        wait_all_streams(reports, sc.streams, n).await;
        streams.push(start.elapsed());
        let version = patched.metadata.resource_version.unwrap_or_default();
        loop {
            let Ok(Some((seen, at))) = tokio::time::timeout(Duration::from_secs(30), watched.recv()).await else {
                panic!("change {n}: the bare watch never saw resourceVersion {version}");
            };
            if seen == version {
                watch.push(at - start);
                break;
            }
        }
    }
    (streams, watch)
}

/// Waits until every stream has received a load assignment since change `n`.
async fn wait_all_streams(reports: &mut mpsc::UnboundedReceiver<Report>, streams: usize, n: usize) {
    let mut seen = vec![false; streams];
    let mut count = 0;
    while count < streams {
        let Ok(Some((id, what, _))) = tokio::time::timeout(Duration::from_secs(30), reports.recv()).await else {
            panic!("change {n}: only {count} of {streams} streams received it");
        };
        match what {
            Seen::Assignments(_) if !seen[id] => {
                seen[id] = true;
                count += 1;
            }
            Seen::Ended => panic!("change {n}: stream {id} ended"),
            _ => {}
        }
    }
}
