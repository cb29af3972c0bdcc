//! xDS benchmark on the test bed (`make bench-xds`). The control plane runs as a process
//! against the test bed's API server; our own tonic clients open many ADS streams over
//! connections of 100 streams each, and changes are made to EndpointSlices through the API
//! server. Each run prints the control plane's resident memory and CPU seconds, the time
//! until every stream has its initial configuration, and p50/p99 of the time from an
//! EndpointSlice change until every stream subscribed to it has received it, next to a bare
//! watch of the same EndpointSlices in this process. Loopback only: endpoint addresses are
//! bookkeeping (198.18.0.0/15).
//!
//! - `bench-xds CLUSTER`: 1000 services × 5 endpoints × 2000 streams (CDS wildcard + 20 EDS),
//!   state of the world, then delta; then 2000 node proxies (LDS and CDS wildcard, their
//!   route configurations, every load assignment), with the bytes of a node proxy's view
//!   beside a proxyless client's; then translation alone, in this process.
//! - `bench-xds PRIMARY REMOTE...`: the same 1000 services in every cluster, the others
//!   discovered through RemoteClusters made by `weft remote-secret`; changes in the last.
//! - `bench-xds --scale CLUSTER`: 10 000 services × 10 000 streams, and the scaling curve
//!   (services {100, 1000, 5000, 10 000} × streams {100, 1000, 10 000}) with streams of a
//!   proxyless gRPC client's shape (20 clusters and their 20 load assignments by name).
//!   With `WEFT_BENCH_DOCS=<repository>`, it writes the curve's table into the README and
//!   its chart to `docs/bench/xds-scaling.svg`.

mod chart;
mod clients;
mod control_plane;
mod population;
mod report;
mod scenario;

use std::time::Instant;

use weft_e2e::Bed;

use clients::{Protocol, Shape};
use scenario::Scenario;

/// Services and streams of the main case.
const SERVICES: usize = 1000;
const STREAMS: usize = 2000;

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--translation N`: translation alone, in this process, for N services (no cluster).
    if args.first().is_some_and(|a| a == "--translation") {
        let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(SERVICES);
        report::translation_figures(n);
        return;
    }
    let scale = args.first().is_some_and(|a| a == "--scale");
    if scale {
        args.remove(0);
    }
    let mut beds = Vec::new();
    for name in &args {
        beds.push(Bed::connect_to(name).await);
    }
    if beds.is_empty() {
        beds.push(Bed::connect().await);
    }
    if scale {
        scale_curve(&beds[0]).await;
    } else {
        main_case(&beds).await;
    }
}

/// 1000 services × 2000 streams: state of the world, and (on one cluster) delta.
async fn main_case(beds: &[Bed]) {
    for (cluster, bed) in beds.iter().enumerate() {
        population::populate(bed, cluster, 0, SERVICES).await;
    }
    control_plane::join_remotes(beds).await;
    // WEFT_BENCH_PROTOCOLS=sotw or delta runs one of them (while working on it).
    let only = std::env::var("WEFT_BENCH_PROTOCOLS").unwrap_or_default();
    let mut protocols = vec![Protocol::Sotw];
    if beds.len() == 1 {
        protocols.push(Protocol::Delta);
    }
    protocols.retain(|p| only.is_empty() || only.contains(&format!("{p:?}").to_lowercase()));
    let mut runs: Vec<(Protocol, Shape)> = protocols.into_iter().map(|p| (p, Shape::Wildcard)).collect();
    // Node proxies as Envoy subscribes (WEFT_BENCH_PROTOCOLS=nodeproxy runs only them).
    if beds.len() == 1 && (only.is_empty() || only.contains("nodeproxy")) {
        runs.push((Protocol::Sotw, Shape::NodeProxy));
        runs.push((Protocol::Delta, Shape::NodeProxy));
    }
    for (protocol, shape) in runs {
        let sc = Scenario {
            services: SERVICES,
            streams: STREAMS,
            protocol,
            shape,
            changes: 40,
        };
        let figures = scenario::run(beds, &sc).await;
        report::print(&figures, beds);
    }
    if beds.len() == 1 {
        report::translation_figures(SERVICES);
    }
}

/// 10 000 services × 10 000 streams, and the scaling curve.
async fn scale_curve(bed: &Bed) {
    let load = report::load_average();
    let started = Instant::now();
    // WEFT_BENCH_POINTS=10000x100,... runs only those points (while working on one).
    let only = std::env::var("WEFT_BENCH_POINTS").unwrap_or_default();
    let mut points = Vec::new();
    let mut populated = 0;
    for (services, _) in population::TIERS {
        population::populate(bed, 0, populated, services).await;
        populated = services;
        for streams in [100, 1000, 10_000] {
            if !only.is_empty() && !only.split(',').any(|p| p == format!("{services}x{streams}")) {
                continue;
            }
            let sc = Scenario {
                services,
                streams,
                protocol: Protocol::Sotw,
                shape: Shape::Named,
                changes: 20,
            };
            let figures = scenario::run(std::slice::from_ref(bed), &sc).await;
            report::print(&figures, std::slice::from_ref(bed));
            points.push(figures);
        }
    }
    println!("scaling curve done in {:.0?}", started.elapsed());
    report::curve(&points, &load, only.is_empty());
}
