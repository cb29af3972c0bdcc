//! Operator benchmark on the test bed (`make bench`): time from apply to Ready, resident
//! memory idle and with 50 MeshInstalls, and API writes per reconcile at steady state; then
//! gateways at scale: 500 MeshGateways across 100 namespaces and 1000 labelled namespaces on
//! one MeshInstall (time until all are Ready, memory, writes and reconciles per gateway,
//! writes once settled), and a tag move that re-targets all 500.
//! Bounded in count and time; loopback only; prints its figures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use weft::api::{MeshGateway, MeshInstall};
use weft_e2e::operator::{Operator, sum_metric};
use weft_e2e::{Bed, wait_for};

const MESHES: usize = 50;
const GATEWAYS: usize = 500;
const GATEWAY_NAMESPACES: usize = 100;
const LABELLED_NAMESPACES: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(300);

fn mesh(name: &str) -> MeshInstall {
    serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "MeshInstall",
        "metadata": {"name": name},
        "spec": {"version": "1.0.0", "namespace": name}
    }))
    .expect("valid MeshInstall")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn ready(mi: &MeshInstall) -> bool {
    let current = mi.status.as_ref().and_then(|s| s.observed_generation) == mi.metadata.generation;
    current
        && mi
            .status
            .as_ref()
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the operator is idle: leading, nothing queued, nothing running.
async fn settle(op: &Operator) {
    wait_for("the operator to settle", TIMEOUT, || async {
        let m = op.metrics()?;
        let idle = sum_metric(&m, "leader_election_master_status") == 1.0
            && sum_metric(&m, "workqueue_depth") == 0.0
            && sum_metric(&m, "controller_runtime_active_workers") == 0.0;
        if idle { Ok(()) } else { Err("busy".to_string()) }
    })
    .await;
}

#[tokio::main]
async fn main() {
    let bed = Bed::connect().await;
    // WEFT_BENCH_ONLY=gateways runs only the gateways phase (quicker while iterating).
    let only_gateways = std::env::var("WEFT_BENCH_ONLY").is_ok_and(|v| v == "gateways");
    let crds = weft_e2e::repo_root().join("crds");
    bed.kubectl(&["apply", "--server-side", "-f", crds.to_str().expect("utf-8 path")])
        .expect("install CRDs");
    bed.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/meshinstalls.weft.dev",
    ])
    .expect("CRDs");
    if !only_gateways {
        meshes_phase(&bed).await;
    }
    gateways_at_scale(&bed).await;
}

/// Apply → Ready of MeshInstalls one at a time and 50 at once; memory; steady-state writes.
async fn meshes_phase(bed: &Bed) {
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let op = Operator::start(bed, "bench", &[]);
    let pid = op.pid();
    settle(&op).await;
    let idle_rss = rss_kib(pid);

    // Apply → Ready, one MeshInstall at a time.
    let mut latencies = Vec::new();
    for i in 0..5 {
        let name = format!("bench-single-{i}");
        let start = Instant::now();
        api.create(&PostParams::default(), &mesh(&name)).await.expect("create");
        wait_for(&format!("{name} Ready"), TIMEOUT, || async {
            let mi = api.get(&name).await.map_err(|e| e.to_string())?;
            if ready(&mi) {
                Ok(())
            } else {
                Err("not ready".to_string())
            }
        })
        .await;
        latencies.push(start.elapsed());
    }
    latencies.sort();

    // 50 MeshInstalls, each in its own namespace, applied at once.
    let start = Instant::now();
    for i in 0..MESHES {
        api.create(&PostParams::default(), &mesh(&format!("bench-{i}")))
            .await
            .expect("create");
    }
    wait_for("50 MeshInstalls Ready", TIMEOUT, || async {
        let list = api.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let n = list
            .items
            .iter()
            .filter(|m| m.metadata.name.as_deref().is_some_and(|n| n.starts_with("bench-")) && ready(m))
            .count();
        if n >= MESHES + 5 {
            Ok(())
        } else {
            Err(format!("{n} ready"))
        }
    })
    .await;
    let all_ready = start.elapsed();
    settle(&op).await;
    let loaded_rss = rss_kib(pid);

    // Steady state: touch every MeshInstall (an annotation: a watch event, no spec change)
    // so each is reconciled, and count the writes those reconciles make.
    let before = op.metrics().expect("metrics");
    let (writes0, recs0) = (
        sum_metric(&before, "weft_api_writes_total"),
        sum_metric(&before, "controller_runtime_reconcile_total"),
    );
    let list = api.list(&Default::default()).await.expect("list");
    for mi in &list.items {
        let name = mi.metadata.name.clone().unwrap_or_default();
        let patch = json!({"metadata": {"annotations": {"bench.weft.dev/touch": "1"}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("touch");
    }
    wait_for("every touched MeshInstall to be reconciled", TIMEOUT, || async {
        let m = op.metrics()?;
        let recs = sum_metric(&m, "controller_runtime_reconcile_total") - recs0;
        if recs >= list.items.len() as f64 {
            Ok(())
        } else {
            Err(format!("{recs} reconciles"))
        }
    })
    .await;
    settle(&op).await;
    let after = op.metrics().expect("metrics");
    let writes = sum_metric(&after, "weft_api_writes_total") - writes0;
    let recs = sum_metric(&after, "controller_runtime_reconcile_total") - recs0;

    println!(
        "operator benchmark: {} ({MESHES} MeshInstalls at once)",
        weft_e2e::weft_bin().display()
    );
    println!(
        "  apply -> Ready, one at a time: min {:?}, median {:?}, max {:?}",
        latencies[0], latencies[2], latencies[4]
    );
    println!("  apply -> Ready, {MESHES} at once: {all_ready:?} until all Ready");
    println!("  resident memory idle: {} KiB", idle_rss);
    println!("  resident memory with {} MeshInstalls: {} KiB", MESHES + 5, loaded_rss);
    println!(
        "  steady state: {writes} writes in {recs} reconciles ({:.3} per reconcile)",
        writes / recs.max(1.0)
    );

    for mi in list.items {
        let _ = api
            .delete(&mi.metadata.name.unwrap_or_default(), &DeleteParams::default())
            .await;
    }
    op.stop();
}

/// Applies many objects with one `kubectl apply` (the YAML documents, joined).
fn apply_all(bed: &Bed, docs: &[String]) {
    let file = std::env::temp_dir().join(format!("weft-bench-{}.yaml", std::process::id()));
    std::fs::write(&file, docs.join("---\n")).expect("write YAML");
    bed.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=bench",
        "-f",
        file.to_str().expect("path"),
    ])
    .expect("apply");
    let _ = std::fs::remove_file(&file);
}

/// Counts gateways of mesh `gw` that are Ready for their current generation and follow
/// `revision`.
async fn gateways_ready(bed: &Bed, revision: &str) -> Result<usize, String> {
    let gws: Api<MeshGateway> = Api::all(bed.client.clone());
    let list = gws.list(&Default::default()).await.map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|g| g.spec.mesh == "gw" && gateway_ready(g, revision))
        .count())
}

fn gateway_ready(g: &MeshGateway, revision: &str) -> bool {
    g.status.as_ref().is_some_and(|s| {
        s.observed_generation == g.metadata.generation
            && s.revision.as_deref() == Some(revision)
            && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The operator's counters at one moment.
#[derive(Clone, Debug, Default)]
struct Counts {
    writes: f64,
    mesh_reconciles: f64,
    gateway_reconciles: f64,
    /// Every request by `verb resource code` (from `weft_api_requests_total`).
    requests: BTreeMap<String, f64>,
}

impl Counts {
    fn read(op: &Operator) -> Counts {
        let m = op.metrics().expect("metrics");
        let requests = m
            .lines()
            .filter_map(|l| l.strip_prefix("weft_api_requests_total{"))
            .filter_map(|l| {
                let (labels, value) = l.rsplit_once("} ")?;
                let label = |k: &str| {
                    labels
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                        .map(|v| v.trim_end_matches('"').to_string())
                        .unwrap_or_default()
                };
                let key = format!("{} {} {}", label("verb"), label("resource"), label("code"));
                Some((key, value.parse::<f64>().ok()?))
            })
            .collect();
        Counts {
            writes: sum_metric(&m, "weft_api_writes_total"),
            mesh_reconciles: sum_metric(&m, "controller_runtime_reconcile_total{controller=\"meshinstall\""),
            gateway_reconciles: sum_metric(&m, "controller_runtime_reconcile_total{controller=\"meshgateway\""),
            requests,
        }
    }

    /// What happened between `before` and this.
    fn since(&self, before: &Counts) -> Counts {
        let mut requests = self.requests.clone();
        for (k, v) in requests.iter_mut() {
            *v -= before.requests.get(k).copied().unwrap_or(0.0);
        }
        requests.retain(|_, v| *v > 0.0);
        Counts {
            writes: self.writes - before.writes,
            mesh_reconciles: self.mesh_reconciles - before.mesh_reconciles,
            gateway_reconciles: self.gateway_reconciles - before.gateway_reconciles,
            requests,
        }
    }

    fn total(&self) -> f64 {
        self.requests.values().sum()
    }

    /// Requests whose verb is a read (get, list, watch).
    fn reads(&self) -> f64 {
        self.requests
            .iter()
            .filter(|(k, _)| ["get", "list", "watch"].iter().any(|v| k.starts_with(v)))
            .map(|(_, v)| v)
            .sum()
    }

    fn throttled(&self) -> f64 {
        // From 0.0: an empty f64 sum is -0.
        self.requests
            .iter()
            .filter(|(k, _)| k.ends_with(" 429"))
            .fold(0.0, |sum, (_, v)| sum + v)
    }

    /// `verb resource: n` per gateway, largest first.
    fn breakdown(&self, per: f64) -> String {
        let mut by: BTreeMap<String, f64> = BTreeMap::new();
        for (k, v) in &self.requests {
            let (what, _code) = k.rsplit_once(' ').unwrap_or((k, ""));
            *by.entry(what.to_string()).or_default() += v;
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.iter()
            .filter(|(_, n)| n / per >= 0.005)
            .map(|(k, n)| format!("{k} {:.2}", n / per))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Requests the API server's flow control (APF) rejected since it started.
fn apf_rejected(bed: &Bed) -> f64 {
    let text = bed.kubectl(&["get", "--raw", "/metrics"]).unwrap_or_default();
    sum_metric(&text, "apiserver_flowcontrol_rejected_requests_total")
}

/// Seconds kube-controller-manager's requests have waited on its client-side rate limiter
/// (`--kube-api-qps`, 20 by default): how much of a rollout is the test bed's own pace.
fn controller_manager_throttled(bed: &Bed) -> f64 {
    let dir = bed.kubeconfig.parent().expect("cluster dir");
    let port = std::fs::read_to_string(dir.join("ports.env"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CONTROLLER_MANAGER_PORT=").map(str::to_string))
        .unwrap_or_default();
    let (cert, key) = (dir.join("pki/admin.crt"), dir.join("pki/admin.key"));
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "--cert",
            cert.to_str().expect("path"),
            "--key",
            key.to_str().expect("path"),
        ])
        .arg(format!("https://127.0.0.1:{port}/metrics"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    sum_metric(&out, "rest_client_rate_limiter_duration_seconds_sum")
}

/// Samples the operator's request count once a second (a measurement, not a
/// synchronisation); the highest one-second rate seen.
fn sample_rate(metrics_port: u16) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(0));
    let p = peak.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last: Option<f64> = None;
        loop {
            tick.tick().await;
            let total = tokio::task::spawn_blocking(move || {
                weft_e2e::http_get(metrics_port, "/metrics")
                    .map(|(_, body)| sum_metric(&body, "weft_api_requests_total"))
                    .ok()
            })
            .await
            .ok()
            .flatten();
            if let (Some(now), Some(before)) = (total, last) {
                p.fetch_max((now - before).max(0.0) as u64, Ordering::Relaxed);
            }
            last = total.or(last);
        }
    });
    (peak, task)
}

fn mesh_yaml(name: &str, namespace: &str, tag: &str) -> MeshInstall {
    serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshInstall", "metadata": {"name": name},
        "spec": {"version": "1.0.0", "namespace": namespace, "profile": "Minimal",
                 "updateStrategy": {"type": "RevisionBased", "inactiveRevisionDeletionGracePeriodSeconds": 5,
                                    "promotion": {"minReadySeconds": 1, "progressDeadlineSeconds": 300}},
                 "revisionTags": [{"name": tag, "target": "Active"}]}
    }))
    .expect("valid MeshInstall")
}

fn gateway_yaml(name: &str, namespace: &str, mesh: &str, tag: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: MeshGateway\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec: {{mesh: {mesh}, revision: {tag}, type: Ingress, service: {{type: ClusterIP, ports: [{{name: http, port: 80}}]}}}}\n"
    )
}

async fn mesh_ready(api: &Api<MeshInstall>, name: &str) {
    wait_for(&format!("MeshInstall {name} Ready"), TIMEOUT, || async {
        let mi = api.get(name).await.map_err(|e| e.to_string())?;
        if ready(&mi) {
            Ok(())
        } else {
            Err("not ready".to_string())
        }
    })
    .await;
}

/// Two meshes (`gw` for the 500 gateways, `other` for the unrelated change during the tag
/// move), and 1000 namespaces using `gw` through its tag.
async fn set_up_meshes(bed: &Bed, op: &Operator) {
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    for (name, ns, tag) in [("gw", "gw-mesh", "gw-stable"), ("other", "other-mesh", "other-stable")] {
        api.create(&PostParams::default(), &mesh_yaml(name, ns, tag))
            .await
            .expect("create MeshInstall");
    }
    mesh_ready(&api, "gw").await;
    mesh_ready(&api, "other").await;
    let mut namespaces: Vec<String> = (0..LABELLED_NAMESPACES)
        .map(|i| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench-app-{i}, labels: {{weft.dev/rev: gw-stable}}}}\n")
        })
        .collect();
    namespaces.push("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench-other}\n".to_string());
    apply_all(bed, &namespaces);
    settle(op).await;
}

/// 500 gateways applied at once: how long until all are Ready, and what it took.
async fn gateways_apply(bed: &Bed, op: &Operator) -> (Duration, Counts) {
    let before = Counts::read(op);
    let mut docs: Vec<String> = (0..GATEWAY_NAMESPACES)
        .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench-gw-{n}}}\n"))
        .collect();
    for g in 0..GATEWAYS {
        let ns = format!("bench-gw-{}", g % GATEWAY_NAMESPACES);
        docs.push(gateway_yaml(&format!("gw-{g}"), &ns, "gw", "gw-stable"));
    }
    let start = Instant::now();
    apply_all(bed, &docs);
    wait_for("every gateway Ready", TIMEOUT, || async {
        let n = gateways_ready(bed, "gw-v1-0-0").await?;
        if n == GATEWAYS {
            Ok(())
        } else {
            Err(format!("{n} of {GATEWAYS} Ready"))
        }
    })
    .await;
    let all_ready = start.elapsed();
    settle(op).await;
    (all_ready, Counts::read(op).since(&before))
}

/// Settled: touching every gateway (an annotation: a watch event, no spec change) makes
/// each reconcile, and those reconciles must write nothing.
async fn gateways_touch(bed: &Bed, op: &Operator) -> Counts {
    let before = Counts::read(op);
    for g in 0..GATEWAYS {
        let patch = json!({"metadata": {"annotations": {"bench.weft.dev/touch": "1"}}});
        Api::<MeshGateway>::namespaced(bed.client.clone(), &format!("bench-gw-{}", g % GATEWAY_NAMESPACES))
            .patch(&format!("gw-{g}"), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("touch gateway");
    }
    wait_for("every touched gateway to be reconciled", TIMEOUT, || async {
        let gw = Counts::read(op).since(&before).gateway_reconciles;
        if gw >= GATEWAYS as f64 {
            Ok(())
        } else {
            Err(format!("{gw} reconciles"))
        }
    })
    .await;
    settle(op).await;
    Counts::read(op).since(&before)
}

/// When each step of the tag move was first seen, from its start.
#[derive(Debug, Default)]
struct Milestones {
    /// The tag moved to the new revision (the 500 gateways are due).
    tag_moved: Option<Duration>,
    /// The unrelated gateway (of mesh `other`) was created.
    other_created: Option<Instant>,
    /// ... was reconciled (its status is for its generation), from its creation.
    other_reconciled: Option<Duration>,
    /// ... was Ready, from its creation.
    other_ready: Option<Duration>,
    /// Every gateway Deployment carried the new revision (the operator's part done).
    applied: Option<Duration>,
    /// Every gateway was Ready on the new revision.
    ready: Option<Duration>,
    /// Seconds kube-controller-manager's requests waited on its own rate limiter meanwhile.
    controller_manager_throttled: f64,
}

/// One look at the tag move's progress; `Ok` when everything is done.
async fn tag_move_probe(bed: &Bed, start: Instant, m: &Mutex<Milestones>) -> Result<(), String> {
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    let other: Api<MeshGateway> = Api::namespaced(bed.client.clone(), "bench-other");
    let deployments: Api<Deployment> = Api::all(bed.client.clone());
    let now = start.elapsed();
    let tag_moved = m.lock().expect("lock").tag_moved.is_some();
    if !tag_moved {
        let mi = meshes.get("gw").await.map_err(|e| e.to_string())?;
        let moved = mi.status.is_some_and(|s| {
            s.tags
                .iter()
                .any(|t| t.name == "gw-stable" && t.revision == "gw-v1-1-0")
        });
        if !moved {
            return Err("tag not moved yet".into());
        }
        // The 500 are due now: an unrelated gateway of another mesh must not wait for them.
        let gw: MeshGateway =
            serde_saphyr::from_str(&gateway_yaml("unrelated", "bench-other", "other", "other-stable")).expect("yaml");
        other
            .create(&PostParams::default(), &gw)
            .await
            .map_err(|e| e.to_string())?;
        let mut m = m.lock().expect("lock");
        m.tag_moved = Some(now);
        m.other_created = Some(Instant::now());
    }
    let g = other.get("unrelated").await.map_err(|e| e.to_string())?;
    let reconciled = g
        .status
        .as_ref()
        .is_some_and(|s| s.observed_generation == g.metadata.generation);
    let other_ready = gateway_ready(&g, "other-v1-0-0");
    let lp = ListParams::default().labels("weft.dev/component=gateway,weft.dev/rev=gw-v1-1-0");
    let applied = deployments
        .list_metadata(&lp)
        .await
        .map_err(|e| e.to_string())?
        .items
        .len();
    let ready = gateways_ready(bed, "gw-v1-1-0").await?;
    let mut m = m.lock().expect("lock");
    let since_created = m.other_created.map(|c| c.elapsed()).unwrap_or_default();
    if reconciled && m.other_reconciled.is_none() {
        m.other_reconciled = Some(since_created);
    }
    if other_ready && m.other_ready.is_none() {
        m.other_ready = Some(since_created);
    }
    if applied == GATEWAYS && m.applied.is_none() {
        m.applied = Some(now);
    }
    if ready == GATEWAYS && m.ready.is_none() {
        m.ready = Some(now);
    }
    if m.ready.is_some() && m.other_ready.is_some() && m.applied.is_some() {
        Ok(())
    } else {
        Err(format!(
            "{applied} Deployments on gw-v1-1-0, {ready} of {GATEWAYS} Ready on it; unrelated gateway reconciled {reconciled}, Ready {other_ready}"
        ))
    }
}

/// A tag move: the upgrade's promotion re-targets every gateway.
async fn tag_move(bed: &Bed, op: &Operator) -> (Milestones, Counts) {
    let (before, kcm) = (Counts::read(op), controller_manager_throttled(bed));
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let start = Instant::now();
    api.patch(
        "gw",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"version": "1.1.0"}})),
    )
    .await
    .expect("upgrade");
    let milestones = Mutex::new(Milestones::default());
    wait_for("every gateway to follow the new revision", TIMEOUT, || {
        tag_move_probe(bed, start, &milestones)
    })
    .await;
    settle(op).await;
    let mut m = milestones.into_inner().expect("lock");
    m.controller_manager_throttled = controller_manager_throttled(bed) - kcm;
    (m, Counts::read(op).since(&before))
}

fn peak_rss(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// A kubeconfig of ServiceAccount `default/weft-bench` (bound to cluster-admin): the API
/// server's flow control (APF) puts its requests in the `workload-low` priority level, as
/// it would an operator in a pod; the bed's own admin credentials are exempt from it.
fn service_account_kubeconfig(bed: &Bed) -> std::path::PathBuf {
    let _ = bed.kubectl(&["create", "serviceaccount", "weft-bench", "-n", "default"]);
    let _ = bed.kubectl(&[
        "create",
        "clusterrolebinding",
        "weft-bench",
        "--clusterrole=cluster-admin",
        "--serviceaccount=default:weft-bench",
    ]);
    let token = bed
        .kubectl(&["create", "token", "weft-bench", "-n", "default", "--duration=2h"])
        .expect("a token");
    let (server, ca) = weft_e2e::remote::server_and_ca(bed);
    let yaml = weft_e2e::remote::kubeconfig(&server, Some(&ca), &format!("    token: {}\n", token.trim()));
    let path = bed.kubeconfig.with_file_name("bench-operator.kubeconfig");
    std::fs::write(&path, yaml).expect("write kubeconfig");
    path
}

async fn gateways_at_scale(bed: &Bed) {
    // WEFT_BENCH_CONCURRENCY=N runs the operator with --concurrency N (default: its own).
    let concurrency = std::env::var("WEFT_BENCH_CONCURRENCY").unwrap_or_default();
    let flags: Vec<&str> = if concurrency.is_empty() {
        Vec::new()
    } else {
        vec!["--concurrency", &concurrency]
    };
    let kubeconfig = service_account_kubeconfig(bed);
    let op = Operator::start_with(bed, &kubeconfig, "bench-gateways", &flags);
    let (pid, apf0) = (op.pid(), apf_rejected(bed));
    let (peak_rate, sampler) = sample_rate(op.metrics_port);
    set_up_meshes(bed, &op).await;
    let (all_ready, applied) = gateways_apply(bed, &op).await;
    let rss = rss_kib(pid);
    let touched = gateways_touch(bed, &op).await;
    let (m, moved) = tag_move(bed, &op).await;
    let (peak, apf) = (peak_rss(pid), apf_rejected(bed) - apf0);
    sampler.abort();
    let per = GATEWAYS as f64;
    println!(
        "  gateways: {GATEWAYS} MeshGateways in {GATEWAY_NAMESPACES} namespaces, {LABELLED_NAMESPACES} labelled namespaces, one MeshInstall; operator as a ServiceAccount, concurrency {}",
        if concurrency.is_empty() {
            "default"
        } else {
            &concurrency
        }
    );
    println!(
        "    apply -> all Ready: {all_ready:?}; per gateway {:.1} API requests ({:.1} reads), {:.1} writes, {:.2} gateway reconciles; {} MeshInstall reconciles",
        applied.total() / per,
        applied.reads() / per,
        applied.writes / per,
        applied.gateway_reconciles / per,
        applied.mesh_reconciles
    );
    println!("      requests per gateway by verb: {}", applied.breakdown(per));
    println!("    resident memory with them: {rss} KiB");
    println!(
        "    settled, every gateway touched: {} writes ({} requests) in {} gateway reconciles, {} MeshInstall reconciles{}",
        touched.writes,
        touched.total(),
        touched.gateway_reconciles,
        touched.mesh_reconciles,
        if touched.writes == 0.0 { "" } else { "  <- MUST BE 0" }
    );
    let s = |d: Option<Duration>| d.map_or("never".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
    println!(
        "    tag move (upgrade, promotion) re-targeting all {GATEWAYS}: tag moved at {}, every Deployment on the new revision at {} (the operator's part), all Ready at {}; {} requests, {} writes, {} gateway and {} MeshInstall reconciles",
        s(m.tag_moved),
        s(m.applied),
        s(m.ready),
        moved.total(),
        moved.writes,
        moved.gateway_reconciles,
        moved.mesh_reconciles
    );
    println!("      requests per gateway by verb: {}", moved.breakdown(per));
    println!(
        "      meanwhile kube-controller-manager's requests waited {:.0} s in all on its client-side rate limiter (--kube-api-qps, default 20)",
        m.controller_manager_throttled
    );
    println!(
        "      an unrelated gateway (another mesh) created as the tag moved: reconciled in {}, Ready in {}",
        s(m.other_reconciled),
        s(m.other_ready)
    );
    println!(
        "    throttling over the whole phase: {} requests rejected by the API server's flow control (APF), {} answers 429 to the operator; peak {} operator requests/s; peak resident memory {peak}",
        apf,
        moved.throttled() + applied.throttled() + touched.throttled(),
        peak_rate.load(Ordering::Relaxed)
    );
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    for name in ["gw", "other"] {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    op.stop();
}
