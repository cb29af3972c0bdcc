//! Runs `weft operator` as a process against a test-bed cluster, as a user would, and reads
//! its metrics endpoint.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use weft::api::MeshInstall;

use crate::{Bed, repo_root, wait_for, weft_bin};

/// Operator tests share one cluster and so one leader: they take this lock to run one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running `weft operator` process.
pub struct Operator {
    child: Child,
    /// Its identity in the Lease.
    pub identity: String,
    /// Its metrics port on 127.0.0.1.
    pub metrics_port: u16,
    /// Its health port on 127.0.0.1.
    pub health_port: u16,
    /// Where its log goes.
    pub log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Operator {
    /// Starts an operator with a short lease (so failover tests are quick) and `extra` flags.
    pub fn start(bed: &Bed, identity: &str, extra: &[&str]) -> Operator {
        Operator::start_with(bed, &bed.kubeconfig, identity, extra)
    }

    /// Like [`Operator::start`], with the credentials of another kubeconfig.
    pub fn start_with(bed: &Bed, kubeconfig: &std::path::Path, identity: &str, extra: &[&str]) -> Operator {
        let metrics_port = free_port();
        let health_port = free_port();
        let log = bed
            .kubeconfig
            .parent()
            .expect("cluster dir")
            .join(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).expect("create operator log");
        let child = Command::new(weft_bin())
            .arg("operator")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
            .args(["--health-address", &format!("127.0.0.1:{health_port}")])
            .args(["--identity", identity])
            // A short lease, so failover tests are quick, unless the test sets its own.
            .args(if extra.contains(&"--lease-duration") {
                &[][..]
            } else {
                &["--lease-duration", "4", "--lease-grace", "1"][..]
            })
            // The Lease lives in `default` unless the test names another namespace.
            .args(if extra.contains(&"--leader-election-namespace") {
                &[][..]
            } else {
                &["--leader-election-namespace", "default"][..]
            })
            .args(extra)
            .env("RUST_LOG", "info,weft=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with `cargo build`)",
                    weft_bin().display()
                )
            });
        Operator {
            child,
            identity: identity.to_string(),
            metrics_port,
            health_port,
            log,
        }
    }

    /// GET a path of one of its endpoints; `Err` while it is not answering.
    pub fn get(&self, port: u16, path: &str) -> Result<(u16, String), String> {
        crate::http_get(port, path)
    }

    /// The metrics text.
    pub fn metrics(&self) -> Result<String, String> {
        self.get(self.metrics_port, "/metrics").map(|(_, body)| body)
    }

    /// The sum of every sample of a metric whose line starts with `prefix` (a name, or a
    /// name with some labels), e.g. `weft_api_writes_total`.
    pub fn metric_sum(&self, prefix: &str) -> Result<f64, String> {
        let text = self.metrics()?;
        Ok(sum_metric(&text, prefix))
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// Its whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks it to stop (SIGTERM) and waits for it to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for the operator")
    }

    /// Kills it without warning (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sums the samples of lines starting with `prefix` in Prometheus text.
pub fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter(|l| {
            // `prefix` must end at a name or label boundary: `foo` must not match `foo_bar`.
            let rest = &l[prefix.len()..];
            rest.starts_with(' ')
                || rest.starts_with('{')
                || rest.starts_with(',')
                || prefix.ends_with(',')
                || prefix.ends_with('{')
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// How long the MeshInstall helpers wait.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Installs the CRDs from `crds/` (idempotent).
pub fn install_crds(bed: &Bed) {
    let dir = repo_root().join("crds");
    bed.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=weft-e2e",
        "-f",
        dir.to_str().unwrap(),
    ])
    .expect("CRDs apply");
    // `kubectl wait` fails at once, instead of waiting, while a new CRD has no conditions
    // yet: ask again until the deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match bed.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/meshinstalls.weft.dev",
        ]) {
            Ok(_) => return,
            Err(e) if std::time::Instant::now() >= deadline => panic!("CRDs not established: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A MeshInstall `name` at version 1.0.0 in `namespace`, with `extra` spec fields.
pub fn mesh(name: &str, namespace: &str, extra: serde_json::Value) -> MeshInstall {
    let mut spec = json!({"version": "1.0.0", "namespace": namespace});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "MeshInstall",
        "metadata": {"name": name},
        "spec": spec
    }))
    .expect("valid MeshInstall")
}

/// A condition's (status, reason, message).
pub fn condition(mi: &MeshInstall, type_: &str) -> Option<(String, String, String)> {
    let c = mi.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the MeshInstall is Ready for its current generation.
pub async fn wait_ready(api: &Api<MeshInstall>, name: &str, op: &Operator) -> MeshInstall {
    wait_for(&format!("MeshInstall {name} to be Ready"), TIMEOUT, || async {
        let mi = api.get(name).await.map_err(|e| e.to_string())?;
        let current = mi.status.as_ref().and_then(|s| s.observed_generation) == mi.metadata.generation;
        match condition(&mi, "Ready") {
            Some((s, _, _)) if s == "True" && current => Ok(mi),
            other => Err(format!(
                "Ready={other:?} status={:?}\noperator log:\n{}",
                mi.status,
                op.log_tail()
            )),
        }
    })
    .await
}

/// Deletes a MeshInstall and waits until it and everything it owned are gone.
pub async fn delete_and_wait(bed: &Bed, name: &str) {
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    wait_for(
        &format!("MeshInstall {name} and its objects to be deleted"),
        TIMEOUT,
        || async {
            let left = owned_objects(bed, name).await;
            let mi = api.get_opt(name).await.map_err(|e| e.to_string())?;
            if mi.is_none() && left.is_empty() {
                Ok(())
            } else {
                Err(format!("mesh present={} left={left:?}", mi.is_some()))
            }
        },
    )
    .await;
}

/// Every object labelled as belonging to the MeshInstall: `Kind ns/name` → its uid and its
/// spec's version: `generation` for kinds whose status other controllers write, else
/// resourceVersion. Equal maps mean nothing was recreated or changed.
pub async fn owned_objects(bed: &Bed, mesh: &str) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels(&format!("weft.dev/mesh={mesh}"));
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($($k:ty),*) => {$(
            let api: Api<$k> = Api::all(bed.client.clone());
            for o in api.list(&lp).await.expect("list owned objects").items {
                let uid = o.uid().unwrap_or_default();
                let version = match o.meta().generation {
                    Some(g) => format!("uid {uid} generation {g}"),
                    None => format!("uid {uid} resourceVersion {}", o.resource_version().unwrap_or_default()),
                };
                out.insert(
                    format!("{} {}/{}", <$k as Resource>::kind(&()), o.namespace().unwrap_or_default(), o.name_any()),
                    version,
                );
            }
        )*};
    }
    collect!(
        ServiceAccount,
        ConfigMap,
        Service,
        Deployment,
        DaemonSet,
        HorizontalPodAutoscaler,
        PodDisruptionBudget,
        NetworkPolicy,
        Role,
        RoleBinding,
        ClusterRole,
        ClusterRoleBinding
    );
    out
}

/// Who holds a Deployment's `spec.replicas`: (field manager, subresource) per entry.
pub fn replicas_owners(d: &k8s_openapi::api::apps::v1::Deployment) -> Vec<(String, Option<String>)> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| {
            f.fields_v1
                .as_ref()
                .is_some_and(|v| v.0.pointer("/f:spec/f:replicas").is_some())
        })
        .map(|f| (f.manager.clone().unwrap_or_default(), f.subresource.clone()))
        .collect()
}

/// Asserts that an autoscaled Deployment was created at its `minReplicas`: its replicas
/// are held by the operator's hand-over manager, and the autoscaler never had to raise them.
pub fn assert_started_at_min_replicas(d: &k8s_openapi::api::apps::v1::Deployment) {
    let owners = replicas_owners(d);
    assert!(
        owners.iter().any(|(m, _)| m == weft::operator::apply::REPLICAS_MANAGER),
        "spec.replicas is not held by the hand-over manager: {owners:?}"
    );
    assert!(
        !owners.iter().any(|(_, sub)| sub.as_deref() == Some("scale")),
        "the autoscaler had to raise the replicas: the Deployment did not start at minReplicas: {owners:?}"
    );
}

/// The Events about MeshInstall `mesh`: (reason, message).
pub async fn mesh_events(bed: &Bed, mesh: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::all(bed.client.clone());
    let lp = ListParams::default().fields(&format!("involvedObject.name={mesh},involvedObject.kind=MeshInstall"));
    api.list(&lp)
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// Waits for `Stalled=True` with `reason` on MeshInstall `name`; its message.
pub async fn wait_stalled(api: &Api<MeshInstall>, name: &str, reason: &str) -> String {
    wait_for(&format!("{name} to be Stalled={reason}"), TIMEOUT, || async {
        let mi = api.get(name).await.map_err(|e| e.to_string())?;
        match condition(&mi, "Stalled") {
            Some((s, r, message)) if s == "True" && r == reason => Ok(message),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}
