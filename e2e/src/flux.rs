//! Flux's source-controller and kustomize-controller (built by the test bed from their Go
//! modules) run as processes against a test-bed cluster, and access to their objects.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::{Bed, cache_dir, pinned, wait_for};

/// The source-controller that the test bed built.
pub fn source_controller_path() -> PathBuf {
    let v = pinned("FLUX_SOURCE_CONTROLLER_VERSION");
    cache_dir().join(format!("source-controller-{v}/bin/source-controller"))
}

/// The kustomize-controller that the test bed built.
pub fn kustomize_controller_path() -> PathBuf {
    let v = pinned("FLUX_KUSTOMIZE_CONTROLLER_VERSION");
    cache_dir().join(format!("kustomize-controller-{v}/bin/kustomize-controller"))
}

/// The CRDs of both controllers, as their modules publish them.
pub fn crds_dir() -> PathBuf {
    let (s, k) = (
        pinned("FLUX_SOURCE_CONTROLLER_VERSION"),
        pinned("FLUX_KUSTOMIZE_CONTROLLER_VERSION"),
    );
    cache_dir().join(format!("flux-crds-{s}-{k}/crds"))
}

/// Installs Flux's CRDs (idempotent) and waits until the two the tests use are served.
pub async fn install_crds(bed: &Bed) {
    let dir = crds_dir();
    bed.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=weft-e2e",
        "-f",
        dir.to_str().expect("path"),
    ])
    .unwrap_or_else(|e| {
        panic!(
            "Flux CRDs from {} apply (built by `e2e/cluster build`): {e}",
            dir.display()
        )
    });
    for crd in [
        "gitrepositories.source.toolkit.fluxcd.io",
        "kustomizations.kustomize.toolkit.fluxcd.io",
    ] {
        wait_for(
            &format!("CRD {crd} to be established"),
            Duration::from_secs(30),
            || async {
                bed.kubectl(&[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=5s",
                    &format!("crd/{crd}"),
                ])
            },
        )
        .await;
    }
}

/// The GitRepository kind.
pub fn git_repository() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "source.toolkit.fluxcd.io",
        "v1",
        "GitRepository",
    ))
}

/// The Kustomization kind.
pub fn kustomization() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
    ))
}

/// An API for Flux objects of kind `ar` in `namespace`.
pub fn api(client: &Client, namespace: &str, ar: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, ar)
}

/// A condition of a Flux object: (status, reason, message, lastTransitionTime).
pub fn condition(obj: &DynamicObject, type_: &str) -> Option<(String, String, String, String)> {
    let conditions = obj.data.pointer("/status/conditions")?.as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message"), s("lastTransitionTime")))
}

/// Asks Flux to reconcile an object now (the `reconcile.fluxcd.io/requestedAt` annotation,
/// as `flux reconcile` sets it), instead of waiting for its interval. Returns the token.
pub async fn request_reconcile(api: &Api<DynamicObject>, name: &str) -> String {
    let token = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().to_string())
        .unwrap_or_default();
    let patch = json!({"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("annotate {name} for a reconcile: {e}"));
    token
}

/// One server-side apply the kustomize-controller logged: the Kustomization, the revision
/// and, per object (`Kind/name` or `Kind/namespace/name`), what the apply did (`created`,
/// `configured`, `unchanged`).
#[derive(Debug, Clone)]
pub struct Applied {
    /// The Kustomization's name.
    pub kustomization: String,
    /// The source revision applied (`main@sha1:…`).
    pub revision: String,
    /// What happened to each object.
    pub objects: BTreeMap<String, String>,
}

/// The two controllers running as processes; stopped when dropped.
pub struct Flux {
    source: Child,
    kustomize: Child,
    /// The source-controller's log.
    pub source_log: PathBuf,
    /// The kustomize-controller's log.
    pub kustomize_log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts one controller with its endpoints on 127.0.0.1; returns it and its health port.
fn start_controller(bed: &Bed, bin: PathBuf, namespace: &str, log: &PathBuf, extra: &[String]) -> (Child, u16) {
    let health = free_port();
    let file = std::fs::File::create(log).expect("create Flux controller log");
    let child = Command::new(&bin)
        .args([
            "--watch-all-namespaces=true".to_string(),
            "--enable-leader-election=false".to_string(),
            format!("--metrics-addr=127.0.0.1:{}", free_port()),
            format!("--health-addr=127.0.0.1:{health}"),
            "--log-encoding=json".to_string(),
        ])
        .args(extra)
        .env("KUBECONFIG", &bed.kubeconfig)
        .env("RUNTIME_NAMESPACE", namespace)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} (built by `e2e/cluster build`): {e}", bin.display()));
    (child, health)
}

impl Flux {
    /// Starts both controllers (runtime namespace `namespace`, where their events go) and
    /// waits until they are ready. Their logs and the artifact storage go into the cluster's
    /// directory.
    pub async fn start(bed: &Bed, namespace: &str) -> Flux {
        let dir = bed.kubeconfig.parent().expect("cluster dir").to_path_buf();
        let storage = dir.join(format!("flux-storage-{namespace}"));
        let _ = std::fs::remove_dir_all(&storage);
        std::fs::create_dir_all(&storage).expect("create the artifact storage");
        let storage_addr = format!("127.0.0.1:{}", free_port());
        let source_log = dir.join(format!("flux-source-controller-{namespace}.log"));
        let kustomize_log = dir.join(format!("flux-kustomize-controller-{namespace}.log"));
        let (source, source_health) = start_controller(
            bed,
            source_controller_path(),
            namespace,
            &source_log,
            &[
                format!("--storage-path={}", storage.display()),
                format!("--storage-addr={storage_addr}"),
                // Artifact URLs name this address; the kustomize-controller downloads from it.
                format!("--storage-adv-addr={storage_addr}"),
            ],
        );
        let (kustomize, kustomize_health) = start_controller(
            bed,
            kustomize_controller_path(),
            namespace,
            &kustomize_log,
            &[
                // Only what the source holds: no remote bases fetched from anywhere else.
                "--no-remote-bases=true".to_string(),
                // A Kustomization created before its source has an artifact looks again soon.
                "--requeue-dependency=2s".to_string(),
            ],
        );
        let flux = Flux {
            source,
            kustomize,
            source_log,
            kustomize_log,
        };
        for (name, port) in [
            ("source-controller", source_health),
            ("kustomize-controller", kustomize_health),
        ] {
            wait_for(&format!("{name} to be ready"), Duration::from_secs(60), || async {
                match crate::http_get(port, "/readyz") {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}\n{}", flux.log_tail())),
                }
            })
            .await;
        }
        flux
    }

    /// The last lines of both logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let tail = |p: &PathBuf| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(8)..].join("\n")
        };
        format!(
            "source-controller:\n{}\nkustomize-controller:\n{}",
            tail(&self.source_log),
            tail(&self.kustomize_log)
        )
    }

    /// Every server-side apply the kustomize-controller has logged, oldest first.
    pub fn applies(&self) -> Vec<Applied> {
        let text = std::fs::read_to_string(&self.kustomize_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["msg"] == "server-side apply completed")
            .map(|v| Applied {
                kustomization: v["name"].as_str().unwrap_or_default().to_string(),
                revision: v["revision"].as_str().unwrap_or_default().to_string(),
                objects: v["output"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, a)| (k.clone(), a.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }
}

impl Drop for Flux {
    fn drop(&mut self) {
        for child in [&mut self.source, &mut self.kustomize] {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
