//! Helpers for multi-cluster tests: credentials for a remote cluster (made by
//! `weft remote-secret`, or by hand), applied to the primary as a Secret and a
//! RemoteCluster, and waiting on a RemoteCluster's conditions.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::config::Kubeconfig;
use kube::{Api, ResourceExt};
use serde_json::json;
use weft::api::RemoteCluster;

use crate::operator::Operator;
use crate::{Bed, wait_for};

/// How long the RemoteCluster helpers wait.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `weft remote-secret` against `remote` (its admin kubeconfig) for cluster `name` of
/// mesh `mesh` in `mesh_ns`; returns the YAML to apply on the primary.
pub fn remote_secret(remote: &Bed, name: &str, mesh: &str, mesh_ns: &str) -> String {
    crate::multicluster::remote_secret(
        &remote.kubeconfig,
        &["--name", name, "--mesh", mesh, "--mesh-namespace", mesh_ns],
    )
}

/// Applies YAML on `bed` (server-side, as `kubectl apply -f -` would).
pub fn apply_yaml(bed: &Bed, yaml: &str) {
    let file = std::env::temp_dir().join(format!("weft-e2e-remote-{}-{}.yaml", std::process::id(), rand_suffix()));
    std::fs::write(&file, yaml).expect("write YAML");
    let applied = bed.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=weft-e2e",
        "-f",
        file.to_str().expect("path"),
    ]);
    let _ = std::fs::remove_file(&file);
    applied.expect("the YAML applies");
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// The token in a kubeconfig (the `token:` line), to look for in logs.
pub fn token_of(kubeconfig: &str) -> String {
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("a token in the kubeconfig")
        .trim()
        .to_string()
}

/// The kubeconfig `weft remote-secret` printed (its Secret's `stringData.kubeconfig`).
pub fn printed_kubeconfig(yaml: &str) -> String {
    let secret = yaml
        .split("---\n")
        .map(|d| d.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n"))
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str::<serde_json::Value>(&d).expect("a YAML document"))
        .find(|d| d["kind"] == "Secret")
        .expect("a Secret");
    secret["stringData"]["kubeconfig"]
        .as_str()
        .expect("kubeconfig")
        .to_string()
}

/// `server` and base64 `certificate-authority-data` of a test-bed cluster.
pub fn server_and_ca(bed: &Bed) -> (String, String) {
    let k = Kubeconfig::read_from(&bed.kubeconfig).expect("kubeconfig");
    let cluster = k.clusters[0].cluster.clone().expect("a cluster entry");
    let ca = std::fs::read_to_string(&bed.kubeconfig)
        .expect("kubeconfig")
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("certificate-authority-data: ")
                .map(str::to_string)
        })
        .expect("inline CA data");
    (cluster.server.expect("a server"), ca)
}

/// A kubeconfig for `server` whose user entry is `user` (YAML lines, indented by four).
pub fn kubeconfig(server: &str, ca: Option<&str>, user: &str) -> String {
    let ca = ca
        .map(|c| format!("    certificate-authority-data: {c}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: r\n\
         contexts:\n- name: r\n  context: {{cluster: r, user: r}}\n\
         clusters:\n- name: r\n  cluster:\n    server: {server}\n{ca}\
         users:\n- name: r\n  user:\n{user}"
    )
}

/// Creates or replaces Secret `name` in `ns` holding `kubeconfig` under key `kubeconfig`.
pub async fn put_secret(bed: &Bed, ns: &str, name: &str, kubeconfig: &str) {
    let api: Api<Secret> = Api::namespaced(bed.client.clone(), ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("kubeconfig".to_string(), ByteString(kubeconfig.as_bytes().to_vec()))].into()),
        ..Default::default()
    };
    api.patch(name, &PatchParams::apply("weft-e2e").force(), &Patch::Apply(&secret))
        .await
        .expect("apply Secret");
}

/// Creates or replaces RemoteCluster `name` in `ns` of mesh `mesh`, cluster `cluster`,
/// whose credential is Secret `secret`.
pub async fn put_remote(bed: &Bed, ns: &str, name: &str, mesh: &str, cluster: &str, secret: &str) {
    let api: Api<RemoteCluster> = Api::namespaced(bed.client.clone(), ns);
    let rc = json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "RemoteCluster",
        "metadata": {"name": name},
        "spec": {"mesh": mesh, "clusterName": cluster, "kubeconfigSecretRef": {"name": secret}}
    });
    api.patch(name, &PatchParams::apply("weft-e2e").force(), &Patch::Apply(&rc))
        .await
        .expect("apply RemoteCluster");
}

/// A condition's (status, reason, message).
pub fn condition(rc: &RemoteCluster, type_: &str) -> Option<(String, String, String)> {
    let c = rc.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until condition `type_` of RemoteCluster `ns/name` has `status` and `reason`, for
/// the current generation; returns the RemoteCluster.
pub async fn wait_condition(
    bed: &Bed,
    ns: &str,
    name: &str,
    (type_, status, reason): (&str, &str, &str),
    op: &Operator,
) -> RemoteCluster {
    let api: Api<RemoteCluster> = Api::namespaced(bed.client.clone(), ns);
    let what = format!("RemoteCluster {ns}/{name} to be {type_}={status} ({reason})");
    wait_for(&what, TIMEOUT, || async {
        let rc = api.get(name).await.map_err(|e| e.to_string())?;
        let current = rc.status.as_ref().and_then(|s| s.observed_generation) == rc.metadata.generation;
        match condition(&rc, type_) {
            Some((s, r, _)) if s == status && r == reason && current => Ok(rc),
            other => Err(format!(
                "{type_}={other:?} status={:?} generation={:?}\noperator log:\n{}",
                rc.status,
                rc.metadata.generation,
                op.log_tail()
            )),
        }
    })
    .await
}

/// The message of the `Stalled=True` condition with `reason`, once there.
pub async fn stalled(bed: &Bed, ns: &str, name: &str, reason: &str, op: &Operator) -> String {
    let rc = wait_condition(bed, ns, name, ("Stalled", "True", reason), op).await;
    condition(&rc, "Stalled").map(|c| c.2).unwrap_or_default()
}

/// Deletes RemoteCluster `ns/name`.
pub async fn delete_remote(bed: &Bed, ns: &str, name: &str) {
    let api: Api<RemoteCluster> = Api::namespaced(bed.client.clone(), ns);
    let _ = api.delete(name, &Default::default()).await;
    wait_for(&format!("RemoteCluster {ns}/{name} to be gone"), TIMEOUT, || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(rc) => Err(format!("still there: {}", rc.name_any())),
        }
    })
    .await;
}

/// A loopback listener that counts the connections it accepts (and closes each at once):
/// where a kubeconfig points to prove that nothing connected.
pub struct CountingListener {
    /// Its port on 127.0.0.1.
    pub port: u16,
    accepted: Arc<AtomicUsize>,
}

impl CountingListener {
    /// Starts listening on a free loopback port.
    pub fn start() -> CountingListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                count.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut c) = conn {
                    let _ = c.set_read_timeout(Some(Duration::from_millis(10)));
                    let _ = c.read(&mut [0u8; 64]);
                }
            }
        });
        CountingListener { port, accepted }
    }

    /// The connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Panics when any 16 characters of `secret` appear in `text` (`what` names the text).
pub fn assert_absent(secret: &str, text: &str, what: &str) {
    assert!(secret.len() >= 16, "a secret of at least 16 characters");
    let chars: Vec<char> = secret.chars().collect();
    for piece in chars.chunks(16).filter(|c| c.len() == 16) {
        let piece: String = piece.iter().collect();
        assert!(!text.contains(&piece), "a piece of a credential appears in {what}");
    }
}
