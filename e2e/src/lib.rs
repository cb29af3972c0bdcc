//! Helpers for Weft's end-to-end tests: connect to a test-bed cluster started by
//! `e2e/cluster up`, wait on conditions with a deadline, and make throwaway namespaces.

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

pub mod argocd;
pub mod control_plane;
pub mod envoy_validate;
pub mod flux;
pub mod githttp;
pub mod grpc_clients;
pub mod identity;
pub mod multicluster;
pub mod operator;
pub mod remote;
pub mod testhost;

/// The cluster the tests use unless `WEFT_E2E_CLUSTER` names another.
pub const DEFAULT_CLUSTER: &str = "weft-e2e";

/// How often a condition is checked while waiting for it.
const POLL: Duration = Duration::from_millis(200);

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ sits inside the repository")
        .to_path_buf()
}

/// The kubeconfig that `e2e/cluster up NAME` writes.
pub fn kubeconfig_path(name: &str) -> PathBuf {
    repo_root().join("e2e/.clusters").join(name).join("kubeconfig")
}

/// A connection to one test-bed cluster.
pub struct Bed {
    /// The cluster's name, as given to `e2e/cluster`.
    pub name: String,
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// A client for it.
    pub client: Client,
}

impl Bed {
    /// Connects to the cluster the test run was started with (`WEFT_E2E_CLUSTER`, default `weft`).
    pub async fn connect() -> Bed {
        let name = std::env::var("WEFT_E2E_CLUSTER").unwrap_or_else(|_| DEFAULT_CLUSTER.into());
        Bed::connect_to(&name).await
    }

    /// Connects to the named cluster; panics with the command to run when it is not up.
    pub async fn connect_to(name: &str) -> Bed {
        let kubeconfig = kubeconfig_path(name);
        let kc = Kubeconfig::read_from(&kubeconfig).unwrap_or_else(|e| {
            panic!(
                "test-bed cluster {name:?} is not up ({e}); start it with `e2e/cluster up {name}` or run `make test`"
            )
        });
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig of the test bed is valid");
        let client = Client::try_from(config).expect("client for the test bed");
        Bed {
            name: name.to_string(),
            kubeconfig,
            client,
        }
    }

    /// Creates a namespace with a unique name starting with `prefix`.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some([("weft.dev/e2e".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = api
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestNamespace {
            name: created.metadata.name.expect("server names the namespace"),
            api,
        }
    }

    /// Runs the built kubectl against this cluster and returns its standard output.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(kubectl_path())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// The value of `KEY=value` in `e2e/versions.env`.
fn pinned(key: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("e2e/versions.env")).expect("read e2e/versions.env");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} is not pinned in e2e/versions.env"))
        .trim()
        .to_string()
}

/// Where the test bed caches its binaries.
fn cache_dir() -> PathBuf {
    match std::env::var_os("WEFT_E2E_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/weft-e2e"),
    }
}

/// The kubectl that the test bed built (its version matches the API server's).
pub fn kubectl_path() -> PathBuf {
    cache_dir().join(format!("kubernetes-{}/bin/kubectl", pinned("KUBERNETES_VERSION")))
}

/// The helm that the test bed built.
pub fn helm_path() -> PathBuf {
    cache_dir().join(format!("helm-{}/bin/helm", pinned("HELM_VERSION")))
}

/// The OCI distribution registry that the test bed built.
pub fn registry_path() -> PathBuf {
    cache_dir().join(format!("registry-{}/bin/registry", pinned("DISTRIBUTION_VERSION")))
}

/// The Argo CD health harness (e2e/argocd) that the test bed built against argo-cd.
pub fn argocd_health_path() -> PathBuf {
    cache_dir().join(format!(
        "argocd-health-{}/bin/weft-argocd-health",
        pinned("ARGOCD_VERSION")
    ))
}

/// The `weft` binary under test (`WEFT_BIN`, or the workspace's debug build).
pub fn weft_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WEFT_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("debug/weft")
}

/// GET `path` from 127.0.0.1:`port` (plain HTTP/1.1): the status code and the body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response: {response}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A cluster of the test bed that one test starts for itself, because it breaks it (stops
/// the API server, restarts etcd); stopped and removed when dropped.
pub struct OwnCluster {
    /// Its name.
    pub name: String,
}

impl OwnCluster {
    /// Starts cluster `name` (from scratch) and connects to it.
    pub async fn up(name: &str) -> (OwnCluster, Bed) {
        let cluster = OwnCluster { name: name.to_string() };
        let _ = cluster.run(&["down", name]);
        cluster
            .run(&["up", name])
            .unwrap_or_else(|e| panic!("cluster {name} did not come up: {e}"));
        let bed = Bed::connect_to(name).await;
        (cluster, bed)
    }

    /// Stops `etcd` or `kube-apiserver`.
    pub fn stop(&self, component: &str) {
        self.run(&["stop", component, &self.name])
            .unwrap_or_else(|e| panic!("cannot stop {component}: {e}"));
    }

    /// Starts `etcd` or `kube-apiserver` again and waits until it serves.
    pub fn start(&self, component: &str) {
        self.run(&["start", component, &self.name])
            .unwrap_or_else(|e| panic!("cannot start {component}: {e}"));
    }

    /// Compacts etcd's history: watches resuming from before now get 410 Gone.
    pub fn compact(&self) {
        self.run(&["compact", &self.name])
            .unwrap_or_else(|e| panic!("cannot compact etcd: {e}"));
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(repo_root().join("e2e/cluster"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.run(&["down", &self.name]);
    }
}

/// A namespace made for one test; call [`TestNamespace::delete`] at the end.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    api: Api<Namespace>,
}

impl TestNamespace {
    /// Deletes the namespace (the cluster cleans up what was in it).
    pub async fn delete(self) {
        let _ = self.api.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Polls `probe` until it returns `Ok`, and returns that value. `probe` returns `Err` with a
/// description of what it saw; on timeout the test fails with the last one, so a failure says
/// what the cluster looked like rather than only that time ran out.
pub async fn wait_for<T, E, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
