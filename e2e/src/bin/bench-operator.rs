//! Operator benchmark on the test bed (`make bench`): time from apply to Ready, resident
//! memory idle and with 50 MeshInstalls, and API writes per reconcile at steady state.
//! Bounded in count and time; loopback only; prints its figures.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use weft::api::MeshInstall;
use weft_e2e::operator::{Operator, sum_metric};
use weft_e2e::{Bed, wait_for};

const MESHES: usize = 50;
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
}
