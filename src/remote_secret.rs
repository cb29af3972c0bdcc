//! `weft remote-secret`: gives a primary cluster read access to a remote one, safely. In the
//! remote cluster it creates (idempotently) a ServiceAccount whose ClusterRole may only
//! get, list and watch what discovery needs, and a token for it; it prints the Secret (a
//! kubeconfig with that token and the CA inline, checked like any RemoteCluster
//! credential) and the RemoteCluster to apply on the primary. The caller's own credentials
//! are used to create those objects and never printed.

use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::credentials;

/// The field manager of what the command creates in the remote cluster.
const MANAGER: &str = "weft-remote-secret";
/// How long the remote cluster's token controller may take to fill the token in.
const TOKEN_WAIT: Duration = Duration::from_secs(30);

/// What to make.
#[derive(Clone, Debug)]
pub struct Options {
    /// The remote cluster's name in the mesh.
    pub cluster_name: String,
    /// The MeshInstall it joins.
    pub mesh: String,
    /// The primary's namespace for the Secret and the RemoteCluster (the mesh's namespace).
    pub mesh_namespace: String,
    /// The remote cluster's network, if not the mesh's.
    pub network: Option<String>,
    /// The address the primary reaches the remote API server at (default: the kubeconfig's).
    pub server: Option<String>,
    /// The remote namespace for the ServiceAccount and its token.
    pub namespace: String,
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteSecretError {
    /// An API call to the remote cluster failed.
    #[error("{what}: {source}")]
    Api {
        /// What was attempted.
        what: String,
        /// Why it failed.
        source: kube::Error,
    },
    /// The token was not filled in.
    #[error(
        "the remote cluster did not fill in the token of Secret {0} within 30 s (is its token controller running?)"
    )]
    NoToken(String),
    /// What would be printed does not pass the credential check (a bug).
    #[error("the kubeconfig made for the primary is refused: {0}")]
    Refused(#[from] credentials::CredentialError),
    /// Output could not be written.
    #[error(transparent)]
    Yaml(#[from] crate::yaml::YamlError),
}

/// The name of the ServiceAccount, ClusterRole, binding and token Secret in the remote
/// cluster: one set per mesh, so several primaries can each have their own.
pub fn remote_name(o: &Options) -> String {
    format!("weft-remote-{}", o.mesh)
}

/// The objects created in the remote cluster (pure).
pub fn remote_objects(o: &Options) -> Vec<Value> {
    let name = remote_name(o);
    let labels = json!({"app.kubernetes.io/managed-by": MANAGER, "weft.dev/mesh": o.mesh});
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": o.namespace}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": o.namespace, "labels": labels}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": o.namespace}]}),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
               "metadata": {"name": format!("{name}-token"), "namespace": o.namespace, "labels": labels,
                            "annotations": {"kubernetes.io/service-account.name": name}}}),
    ]
}

/// The Secret and RemoteCluster to apply on the primary (pure), once the kubeconfig they
/// carry passes the same check the operator applies.
pub fn primary_objects(o: &Options, server: &str, ca: &[u8], token: &str) -> Result<Vec<Value>, RemoteSecretError> {
    // ByteString serialises as base64, as a kubeconfig's `-data` fields want.
    let ca = serde_json::to_value(ByteString(ca.to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {c}\n\
         clusters:\n- name: {c}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: {c}\n  user:\n    token: {token}\n\
         contexts:\n- name: {c}\n  context:\n    cluster: {c}\n    user: {c}\n",
        c = o.cluster_name,
    );
    credentials::check(&kubeconfig)?;
    let secret = format!("weft-remote-{}", o.cluster_name);
    let mut spec = json!({"mesh": o.mesh, "clusterName": o.cluster_name,
                          "kubeconfigSecretRef": {"name": secret, "key": "kubeconfig"}});
    if let Some(n) = &o.network {
        spec["network"] = json!(n);
    }
    Ok(vec![
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": secret, "namespace": o.mesh_namespace,
                            "labels": {"weft.dev/mesh": o.mesh, "weft.dev/remote-cluster": o.cluster_name}},
               "stringData": {"kubeconfig": kubeconfig}}),
        json!({"apiVersion": "weft.dev/v1alpha1", "kind": "RemoteCluster",
               "metadata": {"name": o.cluster_name, "namespace": o.mesh_namespace},
               "spec": spec}),
    ])
}

/// Creates the remote objects through `client` (the remote cluster; `server` is where the
/// primary should reach it) and returns the YAML to apply on the primary.
pub async fn run(client: &Client, o: &Options, server: &str) -> Result<String, RemoteSecretError> {
    let objects = remote_objects(o);
    for obj in &objects {
        apply(client, obj).await?;
    }
    let (ca, token) = wait_for_token(client, o).await?;
    let server = o.server.as_deref().unwrap_or(server);
    let mut out = String::new();
    for obj in primary_objects(o, server, &ca, &token)? {
        out.push_str(&crate::yaml::document(&obj)?);
    }
    Ok(out)
}

/// What `run` would create in the remote cluster, as YAML (nothing is created).
pub fn dry_run(o: &Options) -> Result<String, RemoteSecretError> {
    let mut out = String::from("# would create in the remote cluster (then print the Secret and RemoteCluster):\n");
    for obj in remote_objects(o) {
        out.push_str(&crate::yaml::document(&obj)?);
    }
    Ok(out)
}

/// Server-side applies one of the remote objects.
async fn apply(client: &Client, obj: &Value) -> Result<(), RemoteSecretError> {
    match obj["kind"].as_str() {
        Some("Namespace") => patch::<Namespace>(Api::all(client.clone()), obj).await,
        Some("ServiceAccount") => patch::<ServiceAccount>(namespaced(client, obj), obj).await,
        Some("ClusterRole") => patch::<ClusterRole>(Api::all(client.clone()), obj).await,
        Some("ClusterRoleBinding") => patch::<ClusterRoleBinding>(Api::all(client.clone()), obj).await,
        _ => patch::<Secret>(namespaced(client, obj), obj).await,
    }
}

fn namespaced<K: Resource<Scope = k8s_openapi::NamespaceResourceScope>>(client: &Client, obj: &Value) -> Api<K>
where
    K::DynamicType: Default,
{
    Api::namespaced(
        client.clone(),
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
    )
}

async fn patch<K>(api: Api<K>, obj: &Value) -> Result<(), RemoteSecretError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj))
        .await
        .map(|_| ())
        .map_err(|source| RemoteSecretError::Api {
            what: format!("apply {} {name}", obj["kind"].as_str().unwrap_or_default()),
            source,
        })
}

/// Waits until the token controller has filled the token Secret in: its CA and token.
async fn wait_for_token(client: &Client, o: &Options) -> Result<(Vec<u8>, String), RemoteSecretError> {
    let name = format!("{}-token", remote_name(o));
    let api: Api<Secret> = Api::namespaced(client.clone(), &o.namespace);
    let deadline = Instant::now() + TOKEN_WAIT;
    loop {
        let secret = api.get(&name).await.map_err(|source| RemoteSecretError::Api {
            what: format!("read Secret {name}"),
            source,
        })?;
        let data = secret.data.unwrap_or_default();
        if let (Some(ByteString(ca)), Some(ByteString(token))) = (data.get("ca.crt"), data.get("token")) {
            return Ok((ca.clone(), String::from_utf8_lossy(token).into_owned()));
        }
        if Instant::now() >= deadline {
            return Err(RemoteSecretError::NoToken(name));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            cluster_name: "east".into(),
            mesh: "prod".into(),
            mesh_namespace: "weft-prod".into(),
            network: Some("net-2".into()),
            server: None,
            namespace: "weft-system".into(),
        }
    }

    #[test]
    fn the_remote_role_only_reads_what_discovery_needs() {
        let objects = remote_objects(&opts());
        let role = objects
            .iter()
            .find(|o| o["kind"] == "ClusterRole")
            .expect("a ClusterRole");
        let rules = role["rules"].as_array().expect("rules");
        for rule in rules {
            assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "{rule}");
        }
        let resources: Vec<&str> = rules
            .iter()
            .flat_map(|r| r["resources"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(resources, ["services", "namespaces", "endpointslices"]);
        let binding = objects
            .iter()
            .find(|o| o["kind"] == "ClusterRoleBinding")
            .expect("a binding");
        assert_eq!(binding["subjects"][0]["name"], "weft-remote-prod");
    }

    #[test]
    fn the_primary_gets_a_checked_kubeconfig_and_its_remote_cluster() {
        let objects = primary_objects(&opts(), "https://10.0.0.1:6443", b"CA", "tok").expect("objects");
        let kubeconfig = objects[0]["stringData"]["kubeconfig"].as_str().expect("kubeconfig");
        let checked = credentials::check(kubeconfig).expect("passes the check");
        assert_eq!(checked.server, "https://10.0.0.1:6443");
        assert_eq!(objects[1]["spec"]["network"], "net-2");
        assert_eq!(
            objects[1]["spec"]["kubeconfigSecretRef"]["name"],
            objects[0]["metadata"]["name"]
        );
        assert_eq!(objects[1]["metadata"]["namespace"], "weft-prod");
    }
}
