//! What the benchmark prints, and the scaling curve's table and chart.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use weft_e2e::{Bed, weft_bin};

use crate::clients::{Protocol, Shape};
use crate::scenario::{Figures, percentile};

/// The machine's load average now (1, 5, 15 minutes).
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn shape(f: &Figures) -> &'static str {
    match (f.protocol, f.shape) {
        (Protocol::Sotw, Shape::Wildcard) => "state of the world, CDS wildcard + 20 EDS",
        (Protocol::Delta, Shape::Wildcard) => "delta, CDS wildcard + 20 EDS",
        (Protocol::Sotw, Shape::Named) => "state of the world, 20 CDS + 20 EDS by name",
        (Protocol::Delta, Shape::Named) => "delta, 20 CDS + 20 EDS by name",
        (Protocol::Sotw, Shape::NodeProxy) => {
            "state of the world, node proxies: LDS and CDS wildcard, 2 RDS, every EDS by name"
        }
        (Protocol::Delta, Shape::NodeProxy) => "delta, node proxies: LDS and CDS wildcard, 2 RDS, every EDS by name",
    }
}

/// Prints one run's figures.
pub fn print(f: &Figures, beds: &[Bed]) {
    let [idle, loaded, settled, after, peak] = f.rss_kib;
    let (l, w) = (&f.latencies, &f.watch);
    println!(
        "xDS benchmark: {} ({} cluster(s) x {} services x 5 endpoints, {} streams over {} connections: {}; load {})",
        weft_bin().display(),
        beds.len(),
        f.services,
        f.streams,
        f.connections,
        shape(f),
        load_average()
    );
    println!(
        "  control plane resident memory: {idle} KiB synced and idle, {loaded} KiB as soon as {} streams are configured, {settled} KiB settled (6 s later), {after} KiB after {} changes, {peak} KiB peak",
        f.streams,
        l.len()
    );
    println!(
        "  control plane CPU: {:.2} s to sync, {:.2} s in total",
        f.cpu_sync, f.cpu
    );
    println!("  initial configuration on every stream: {:?}", f.initial);
    println!(
        "  EndpointSlice change in {} -> all {} streams: p50 {:?}, p99 {:?}, max {:?} over {} changes (defaults: a lone change is pushed at once, a burst waits for 10 ms of quiet, 100 ms at most); streams dropped: {}",
        beds[beds.len() - 1].name,
        f.streams,
        percentile(l, 0.5),
        percentile(l, 0.99),
        l[l.len() - 1],
        l.len(),
        f.dropped
    );
    println!(
        "    of which the API server's write and watch (a bare watch in the benchmark): p50 {:?}, p99 {:?}",
        percentile(w, 0.5),
        percentile(w, 0.99)
    );
    let d = f.histograms;
    let mean_ms = |sum: f64, count: f64| if count > 0.0 { sum / count * 1000.0 } else { 0.0 };
    println!(
        "    in the control plane: {} snapshots built (mean {:.1} ms each: model, translation, encoding); \
         from seeing a change to writing its EDS response, mean {:.1} ms over {} responses (debounce included)",
        d[1],
        mean_ms(d[0], d[1]),
        mean_ms(d[2], d[3]),
        d[3]
    );
}

/// Bytes of what one client holds, by type (LDS, RDS, CDS, EDS), as served by the control
/// plane at `xds`: a node proxy's whole view, and a proxyless client's of the benchmark's
/// shape (its 20 services' listener, route configuration, cluster and load assignment).
pub async fn view_bytes(xds: u16, services: usize) {
    use weft::config_dump::{fetch_complete, node_of};
    let address = format!("http://127.0.0.1:{xds}");
    let fetch = |role: &str| {
        let metadata = [("REVISION", crate::clients::REVISION), ("ROLE", role)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        fetch_complete(
            &address,
            node_of("bench-view", &metadata),
            std::time::Duration::from_secs(30),
        )
    };
    let by_type = |dump: &weft::config_dump::Dump, keep: &dyn Fn(&str) -> bool| -> [usize; 4] {
        ["Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"].map(|t| {
            dump.resources
                .iter()
                .filter(|(url, _)| url.ends_with(&format!(".{t}")))
                .flat_map(|(_, items)| items.iter())
                .filter(|(name, _)| keep(name))
                .map(|(_, any)| any.value.len())
                .sum()
        })
    };
    let node = fetch("node-proxy").await.expect("the node proxy's view");
    let node = by_type(&node, &|_| true);
    let proxyless = fetch("proxyless").await.expect("the proxyless view");
    // The first stream's 20 services, by their host names.
    let hosts: Vec<String> = crate::clients::subscribed(0, services)
        .iter()
        .filter_map(|c| c.rsplit("||").next().map(str::to_string))
        .collect();
    let proxyless = by_type(&proxyless, &|name| hosts.iter().any(|h| name.contains(h.as_str())));
    let kib = |b: [usize; 4]| {
        let [l, r, c, e] = b.map(|x| x as f64 / 1024.0);
        format!(
            "LDS {l:.1} KiB, RDS {r:.1} KiB, CDS {c:.1} KiB, EDS {e:.1} KiB, {:.1} KiB in all",
            l + r + c + e
        )
    };
    println!("  a node proxy's view of {services} services: {}", kib(node));
    println!("  a proxyless client's view of its 20 services: {}", kib(proxyless));
}

/// Where a snapshot's time goes, translation alone (no cluster, no streams): `count`
/// services translated in full, and incrementally after one endpoint change.
pub fn translation_figures(count: usize) {
    use weft::xds::model::{Endpoint, Service as MeshService, ServicePort, Telemetry};
    use weft::xds::serve::snapshot::Snapshot;
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
    let mut services: Vec<MeshService> = (0..count)
        .map(|i| MeshService {
            name: format!("svc-{i}"),
            namespace: "bench".into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                http2: false,
            }],
            endpoints: std::sync::Arc::new((0..5).map(|e| endpoint(i, e)).collect()),
        })
        .collect();
    let telemetry = Telemetry::default();
    let t = Instant::now();
    let full = translate_all(&services, &[], &[], &telemetry);
    let translated = t.elapsed();
    let t = Instant::now();
    let first = Snapshot::new(1, Instant::now(), &full);
    let encoded = t.elapsed();
    let mut incremental = Incremental::default();
    let rest = translate_gateways(&services, &[], &[], &telemetry);
    let second = Snapshot::assemble(
        1,
        Instant::now(),
        incremental.translate(&services, &[], &telemetry),
        &rest,
        &first,
    );
    std::sync::Arc::make_mut(&mut services[7].endpoints).pop();
    let t = Instant::now();
    let mesh = incremental.translate(&services, &[], &telemetry);
    let again = t.elapsed();
    let t = Instant::now();
    let rest = translate_gateways(&services, &[], &[], &telemetry);
    drop(Snapshot::assemble(2, Instant::now(), mesh, &rest, &second));
    let assembled = t.elapsed();
    println!(
        "  translation of {count} services, in this process: in full {translated:?} + encoding {encoded:?}; \
         incrementally after one endpoint change {again:?} + snapshot {assembled:?}"
    );
}

/// One point's cells for the table: memory MiB, CPU s, initial s, p99 ms.
fn cells(f: &Figures) -> [f64; 4] {
    [
        f.rss_kib[4] as f64 / 1024.0,
        f.cpu,
        f.initial.as_secs_f64(),
        percentile(&f.latencies, 0.99).as_secs_f64() * 1000.0,
    ]
}

/// The curve as a Markdown table.
fn table(points: &[Figures]) -> String {
    let mut out = String::from(
        "| Services | Streams | Peak memory (MiB) | CPU (s) | Initial push (s) | Change → all streams p99 (ms) | p50 (ms) | Dropped |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in points {
        let [mem, cpu, initial, p99] = cells(f);
        let p50 = percentile(&f.latencies, 0.5).as_secs_f64() * 1000.0;
        let _ = writeln!(
            out,
            "| {} | {} | {mem:.0} | {cpu:.1} | {initial:.2} | {p99:.0} | {p50:.0} | {} |",
            f.services, f.streams, f.dropped
        );
    }
    out
}

/// Prints the curve, and writes it into the README and `docs/bench/` when asked to and
/// `complete` (every point was measured).
pub fn curve(points: &[Figures], load_at_start: &str, complete: bool) {
    let table = table(points);
    println!(
        "scaling curve (state of the world, each stream 20 clusters and their 20 load assignments by name; 20 changes per point):\n{table}"
    );
    let Some(repo) = std::env::var_os("WEFT_BENCH_DOCS").filter(|_| complete) else {
        return;
    };
    let repo = Path::new(&repo);
    let svg = crate::chart::svg(points);
    let dir = repo.join("docs/bench");
    std::fs::create_dir_all(&dir).expect("create docs/bench");
    std::fs::write(dir.join("xds-scaling.svg"), svg).expect("write the chart");
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let region = format!(
        "Measured by `make bench-xds` on {date}, release build, {cpus} cores (load average {load_at_start} at the start), \
         the control plane, the API server and the benchmark's clients on the same machine. Each stream subscribes \
         to 20 clusters and their 20 load assignments by name (a proxyless gRPC client's shape), over connections \
         of 100 streams; 20 EndpointSlice changes per point, each reaching every stream. Memory is the control \
         plane's peak resident size; CPU its user + system seconds from start to the last change.\n\n{table}\n\
         ![Memory, CPU, initial push and p99 against services, one line per stream count](docs/bench/xds-scaling.svg)\n"
    );
    replace_region(&repo.join("README.md"), &region);
    println!("wrote docs/bench/xds-scaling.svg and the README's scaling table");
}

const START: &str = "<!-- bench-xds:scaling:start (written by make bench-xds) -->\n";
const END: &str = "<!-- bench-xds:scaling:end -->";

/// Replaces the text between the README's markers.
fn replace_region(readme: &Path, region: &str) {
    let text = std::fs::read_to_string(readme).expect("read the README");
    let (Some(a), Some(b)) = (text.find(START), text.find(END)) else {
        panic!("{} has no bench-xds:scaling markers", readme.display());
    };
    let updated = format!("{}{START}{region}{}", &text[..a], &text[b..]);
    std::fs::write(readme, updated).expect("write the README");
}
