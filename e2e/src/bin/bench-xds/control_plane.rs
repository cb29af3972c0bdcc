//! The control plane under test: started as a process, read through `/proc` and its
//! metrics.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use weft_e2e::control_plane::free_port;
use weft_e2e::{Bed, wait_for, weft_bin};

use crate::clients::REVISION;
use crate::population::selector_label;

/// The mesh's namespace on the primary, where the RemoteClusters and their Secrets go.
const MESH_NAMESPACE: &str = "weft-bench";

/// A `/proc/<pid>/status` field in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident KiB and CPU seconds (user + system) of a process.
pub fn proc_stat(pid: u32) -> (u64, f64) {
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

/// A metric's value, summed over the lines that start with `prefix`.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sums and counts of the control plane's histograms: (translate sum, translate count, EDS
/// push latency sum, EDS push count).
pub fn histograms(monitoring: u16) -> [f64; 4] {
    let (_, text) = weft_e2e::http_get(monitoring, "/metrics").expect("the control plane's metrics");
    [
        metric(&text, "weft_xds_translate_seconds_sum"),
        metric(&text, "weft_xds_translate_seconds_count"),
        metric(&text, "weft_xds_push_latency_seconds_sum{type=\"eds\"}"),
        metric(&text, "weft_xds_push_latency_seconds_count{type=\"eds\"}"),
    ]
}

/// A running control plane.
pub struct ControlPlane {
    pub child: Child,
    pub xds: u16,
    pub monitoring: u16,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the primary's control plane (mesh `bench`, cluster named after the primary),
/// discovering only the first `services` services (a discovery selector).
pub fn start(primary: &Bed, services: usize) -> ControlPlane {
    let (xds, monitoring) = (free_port(), free_port());
    let config = std::env::temp_dir().join(format!("weft-bench-mesh-{}.yaml", std::process::id()));
    let text = format!(
        "mesh: {REVISION}\nclusterName: {}\ndiscoverySelectors:\n- matchLabels:\n    {}: \"true\"\n",
        primary.name,
        selector_label(services)
    );
    std::fs::write(&config, text).expect("write the mesh config");
    let child = Command::new(weft_bin())
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
        .expect("start the control plane");
    ControlPlane { child, xds, monitoring }
}

/// Joins every cluster after the first to it as a RemoteCluster, with a credential made
/// by `weft remote-secret`.
pub async fn join_remotes(beds: &[Bed]) {
    let Some((primary, remotes)) = beds.split_first() else {
        return;
    };
    if remotes.is_empty() {
        return;
    }
    weft_e2e::operator::install_crds(primary);
    let namespaces: Api<Namespace> = Api::all(primary.client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": MESH_NAMESPACE}})).expect("a namespace");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create the mesh namespace");
    for remote in remotes {
        let yaml = weft_e2e::remote::remote_secret(remote, &remote.name, REVISION, MESH_NAMESPACE);
        weft_e2e::remote::apply_yaml(primary, &yaml);
    }
}

/// Waits until the control plane serves the `services` load assignments with the endpoints
/// of every one of `clusters` clusters.
pub async fn wait_synced(monitoring: u16, services: usize, clusters: usize) {
    wait_for(
        "the control plane to hold every cluster's endpoints",
        Duration::from_secs(300),
        || async {
            let (_, text) = weft_e2e::http_get(monitoring, "/metrics")?;
            let eds = metric(&text, "weft_xds_resources{type=\"eds\"}");
            let remote = metric(&text, "weft_remote_cluster_endpoints{");
            let wanted_remote = (services * 5 * (clusters - 1)) as f64;
            if eds == services as f64 && remote >= wanted_remote {
                Ok(())
            } else {
                Err(format!("{eds} load assignments, {remote} remote endpoints"))
            }
        },
    )
    .await;
}
