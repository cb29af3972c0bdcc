//! Operator benchmark on the test bed (`make bench`): time from apply to Ready, resident
//! memory idle and with 50 MeshInstalls, and API writes per reconcile at steady state; then
//! gateways at scale: 500 MeshGateways across 100 namespaces and 1000 labelled namespaces on
//! one MeshInstall (time until all are Ready, memory, writes and reconciles per gateway,
//! writes once settled), and a tag move that re-targets all 500.
//! Bounded in count and time; loopback only; prints its figures.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
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
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let op = Operator::start(&bed, "bench", &[]);
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
    gateways_at_scale(&bed).await;
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

/// Counts gateways that are Ready for their current generation and follow `revision`.
async fn gateways_ready(bed: &Bed, revision: &str) -> Result<usize, String> {
    let gws: Api<MeshGateway> = Api::all(bed.client.clone());
    let list = gws.list(&Default::default()).await.map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|g| {
            g.status.as_ref().is_some_and(|s| {
                s.observed_generation == g.metadata.generation
                    && s.revision.as_deref() == Some(revision)
                    && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .count())
}

/// (writes by the operator, MeshInstall reconciles, MeshGateway reconciles), from its metrics.
fn counters(op: &Operator) -> (f64, f64, f64) {
    let m = op.metrics().expect("metrics");
    (
        sum_metric(&m, "weft_api_writes_total"),
        sum_metric(&m, "controller_runtime_reconcile_total{controller=\"meshinstall\""),
        sum_metric(&m, "controller_runtime_reconcile_total{controller=\"meshgateway\""),
    )
}

async fn gateways_at_scale(bed: &Bed) {
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let op = Operator::start(bed, "bench-gateways", &[]);
    let pid = op.pid();
    let mesh: MeshInstall = serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshInstall", "metadata": {"name": "gw"},
        "spec": {"version": "1.0.0", "namespace": "gw-mesh", "profile": "Minimal",
                 "updateStrategy": {"type": "RevisionBased", "inactiveRevisionDeletionGracePeriodSeconds": 5,
                                    "promotion": {"minReadySeconds": 1, "progressDeadlineSeconds": 300}},
                 "revisionTags": [{"name": "gw-stable", "target": "Active"}]}
    }))
    .expect("valid MeshInstall");
    api.create(&PostParams::default(), &mesh)
        .await
        .expect("create MeshInstall gw");
    wait_for("MeshInstall gw Ready", TIMEOUT, || async {
        let mi = api.get("gw").await.map_err(|e| e.to_string())?;
        if ready(&mi) {
            Ok(())
        } else {
            Err("not ready".to_string())
        }
    })
    .await;
    // 1000 namespaces using the mesh through its tag, and 500 gateways following it.
    let namespaces: Vec<String> = (0..LABELLED_NAMESPACES)
        .map(|i| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench-app-{i}, labels: {{weft.dev/rev: gw-stable}}}}\n")
        })
        .collect();
    apply_all(bed, &namespaces);
    settle(&op).await;
    let (w0, mi0, gw0) = counters(&op);
    let mut docs: Vec<String> = (0..GATEWAY_NAMESPACES)
        .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench-gw-{n}}}\n"))
        .collect();
    for g in 0..GATEWAYS {
        docs.push(format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshGateway\nmetadata: {{name: gw-{g}, namespace: bench-gw-{}}}\n\
             spec: {{mesh: gw, revision: gw-stable, type: Ingress, service: {{type: ClusterIP, ports: [{{name: http, port: 80}}]}}}}\n",
            g % GATEWAY_NAMESPACES
        ));
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
    settle(&op).await;
    let rss = rss_kib(pid);
    let (w1, mi1, gw1) = counters(&op);

    // Settled: touching every gateway (an annotation: a watch event, no spec change) makes
    // each reconcile, and those reconciles must write nothing.
    for g in 0..GATEWAYS {
        let patch = json!({"metadata": {"annotations": {"bench.weft.dev/touch": "1"}}});
        Api::<MeshGateway>::namespaced(bed.client.clone(), &format!("bench-gw-{}", g % GATEWAY_NAMESPACES))
            .patch(&format!("gw-{g}"), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("touch gateway");
    }
    wait_for("every touched gateway to be reconciled", TIMEOUT, || async {
        let (_, _, gw) = counters(&op);
        if gw - gw1 >= GATEWAYS as f64 {
            Ok(())
        } else {
            Err(format!("{} reconciles", gw - gw1))
        }
    })
    .await;
    settle(&op).await;
    let (w2, mi2, gw2) = counters(&op);

    // A tag move: the upgrade's promotion re-targets every gateway.
    let start = Instant::now();
    api.patch(
        "gw",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"version": "1.1.0"}})),
    )
    .await
    .expect("upgrade");
    wait_for("every gateway to follow the new revision", TIMEOUT, || async {
        let n = gateways_ready(bed, "gw-v1-1-0").await?;
        if n == GATEWAYS {
            Ok(())
        } else {
            Err(format!("{n} of {GATEWAYS} on gw-v1-1-0"))
        }
    })
    .await;
    let retarget = start.elapsed();
    settle(&op).await;
    let (w3, mi3, gw3) = counters(&op);
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();

    println!(
        "  gateways: {GATEWAYS} MeshGateways in {GATEWAY_NAMESPACES} namespaces, {LABELLED_NAMESPACES} labelled namespaces, one MeshInstall"
    );
    println!(
        "    apply -> all Ready: {all_ready:?}; {:.1} writes and {:.2} gateway reconciles per gateway; {} MeshInstall reconciles",
        (w1 - w0) / GATEWAYS as f64,
        (gw1 - gw0) / GATEWAYS as f64,
        mi1 - mi0
    );
    println!("    resident memory with them: {rss} KiB (peak {peak})");
    println!(
        "    settled, every gateway touched: {} writes in {} gateway reconciles, {} MeshInstall reconciles",
        w2 - w1,
        gw2 - gw1,
        mi2 - mi1
    );
    println!(
        "    tag move (upgrade, promotion) re-targeting all {GATEWAYS}: {retarget:?}; {} writes, {} gateway and {} MeshInstall reconciles",
        w3 - w2,
        gw3 - gw2,
        mi3 - mi2
    );
    let _ = api.delete("gw", &DeleteParams::default()).await;
    op.stop();
}
