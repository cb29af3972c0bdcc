//! The RemoteCluster controller against real API servers: the primary A is the test-bed
//! cluster, the remote B a cluster of the test's own. Credentials are made by
//! `weft remote-secret` or by hand; what a user sees is the RemoteCluster's conditions,
//! `kubectl get remoteclusters`, Events, and that no credential reaches a log.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use weft::api::{MeshInstall, RemoteCluster};
use weft_e2e::operator::{Operator, SERIAL, delete_and_wait, install_crds, mesh};
use weft_e2e::remote::{
    CountingListener, apply_yaml, assert_absent, condition, delete_remote, kubeconfig, printed_kubeconfig, put_remote,
    put_secret, remote_secret, server_and_ca, stalled, token_of, wait_condition,
};
use weft_e2e::{Bed, OwnCluster, wait_for};

const READY: (&str, &str, &str) = ("Ready", "True", "Ready");
const UNREACHABLE: (&str, &str, &str) = ("Ready", "False", "Unreachable");

/// A MeshInstall `name` (local cluster `a`) and its namespace, created for the test.
async fn mesh_and_namespace(bed: &Bed, name: &str, ns: &str) {
    delete_and_wait(bed, name).await;
    let _ = bed.kubectl(&["create", "namespace", ns]);
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    let spec = json!({"meshConfig": {"clusterName": "a"}});
    meshes
        .create(&PostParams::default(), &mesh(name, ns, spec))
        .await
        .expect("create mesh");
}

/// Removes the mesh (while the operator runs, for its finalizer) and its namespace.
async fn clean_up(bed: &Bed, name: &str, ns: &str) {
    delete_and_wait(bed, name).await;
    let _ = Api::<Namespace>::all(bed.client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

/// Reconciles of the RemoteCluster controller so far.
fn reconciles(op: &Operator) -> f64 {
    ["success", "error"]
        .iter()
        .map(|r| {
            op.metric_sum(&format!(
                "controller_runtime_reconcile_total{{controller=\"remotecluster\",result=\"{r}\"}}"
            ))
            .unwrap_or_default()
        })
        .sum()
}

/// RemoteCluster status writes so far.
fn status_writes(op: &Operator) -> f64 {
    op.metric_sum("weft_api_writes_total{kind=\"RemoteCluster\",verb=\"status\"}")
        .unwrap_or_default()
}

/// Waits until at least `n` more reconciles than `since` have run.
async fn reconciled(op: &Operator, since: f64, n: f64, what: &str) {
    wait_for(what, Duration::from_secs(60), || async {
        let now = reconciles(op);
        if now >= since + n {
            Ok(())
        } else {
            Err(format!("{now} reconciles (from {since})\n{}", op.log_tail()))
        }
    })
    .await;
}

/// A kubeconfig with an exec plugin, and one with a token file, are refused naming the
/// field, and nothing connects to the server they name (a loopback listener counts
/// connections), not even on the periodic re-checks; a plain token to the same address
/// does connect (so the listener would have seen it), and is Unreachable, not Stalled.
#[tokio::test]
async fn credentials_are_checked_before_any_connection() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let (name, ns) = ("rc-check", "weft-rc-check");
    let op = Operator::start(&bed, "rc-check", &["--remote-recheck-seconds", "1"]);
    mesh_and_namespace(&bed, name, ns).await;
    let listener = CountingListener::start();
    let server = format!("https://127.0.0.1:{}", listener.port);
    let token = "e2e-never-sent-token-0123456789abcdef";
    let _ = std::fs::remove_file("/tmp/weft-e2e-exec-ran");

    let exec = kubeconfig(
        &server,
        None,
        &format!(
            "    token: {token}\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: ['-c', 'touch /tmp/weft-e2e-exec-ran']\n"
        ),
    );
    put_secret(&bed, ns, "exec", &exec).await;
    put_remote(&bed, ns, "exec", name, "exec", "exec").await;
    let file = kubeconfig(
        &server,
        None,
        "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n",
    );
    put_secret(&bed, ns, "file", &file).await;
    put_remote(&bed, ns, "file", name, "file", "file").await;

    let m = stalled(&bed, ns, "exec", "InvalidCredentials", &op).await;
    assert!(
        m.contains("`exec` is not allowed") && m.contains("no connection was attempted"),
        "{m}"
    );
    let m = stalled(&bed, ns, "file", "InvalidCredentials", &op).await;
    assert!(m.contains("`tokenFile` is not allowed"), "{m}");
    let api: Api<RemoteCluster> = Api::namespaced(bed.client.clone(), ns);
    let rc = api.get("exec").await.expect("exec");
    let status = rc.status.clone().unwrap_or_default();
    assert_eq!(status.server.as_deref(), Some(server.as_str()), "the server is shown");
    assert_eq!(status.kubernetes_version, None);
    // Periodic re-checks (every second) refuse again, and still connect nowhere.
    let since = reconciles(&op);
    reconciled(&op, since, 4.0, "periodic re-checks of the refused kubeconfigs").await;
    assert_eq!(listener.accepted(), 0, "no connection was attempted");
    assert!(
        !std::path::Path::new("/tmp/weft-e2e-exec-ran").exists(),
        "the plugin never ran"
    );

    // The same address with an inline token is connected to: the listener would have seen
    // a connection. It answers no TLS: Unreachable, retried, not Stalled.
    let plain = kubeconfig(&server, None, &format!("    token: {token}\n"));
    put_secret(&bed, ns, "plain", &plain).await;
    put_remote(&bed, ns, "plain", name, "plain", "plain").await;
    let rc = wait_condition(&bed, ns, "plain", UNREACHABLE, &op).await;
    assert_eq!(condition(&rc, "Stalled").map(|c| c.0).as_deref(), Some("False"));
    assert!(listener.accepted() > 0, "the plain kubeconfig connected");
    assert_eq!(
        rc.status.and_then(|s| s.server).as_deref(),
        Some(server.as_str()),
        "the server is shown while unreachable"
    );

    assert_absent(token, &op.log_text(), "the operator's log");
    clean_up(&bed, name, ns).await;
    op.stop();
}

/// A real remote cluster B: a credential from `weft remote-secret` is Ready (server and
/// version shown, also by `kubectl get remoteclusters -o wide`); a control plane's status
/// entry survives the operator's writes and causes none; a missing Secret is
/// InvalidCredentials until it is created (picked up from the Secret watch, well within the
/// 60 s re-check); a duplicate clusterName and the local cluster's name are NameConflicts,
/// and deleting the older frees the name. Then, re-checking every 2 s: a token without RBAC
/// is Forbidden listing the verbs, and Ready once they are granted in B, without touching
/// the RemoteCluster; B's API server stopped → Unreachable (not Stalled, the operator stays
/// ready), started → Ready, nothing restarted. No token reaches a log or an Event.
#[tokio::test]
async fn remote_clusters_are_checked_against_a_real_api_server() {
    let _serial = SERIAL.lock().await;
    let a = Bed::connect().await;
    install_crds(&a);
    let (name, ns) = ("rc-mesh", "weft-rc-mesh");
    let (cluster_b, b) = OwnCluster::up("wrc-b").await;
    let op = Operator::start(&a, "rc-real", &[]);
    mesh_and_namespace(&a, name, ns).await;

    let yaml = remote_secret(&b, "b", name, ns);
    let token = token_of(&printed_kubeconfig(&yaml));
    real_credential_is_ready(&a, &b, &yaml, ns, &op).await;
    control_plane_entries_are_left_alone(&a, ns, &op).await;
    missing_secret_until_created(&a, &yaml, ns, name, &op).await;
    name_conflicts(&a, ns, name, &op).await;
    op.stop();

    // Short re-checks from here on.
    let op = Operator::start(&a, "rc-real-2", &["--remote-recheck-seconds", "2"]);
    // A new leader finds every status as it would write it: no write (no flap while its
    // stores fill).
    reconciled(&op, 0.0, 2.0, "the new leader's first checks").await;
    assert_eq!(
        status_writes(&op),
        0.0,
        "a failover rewrites nothing\n{}",
        op.log_tail()
    );
    let norbac = forbidden_until_granted(&a, &b, ns, name, &op).await;
    outage(&a, &cluster_b, ns, &op).await;

    let events: Api<Event> = Api::namespaced(a.client.clone(), ns);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .iter()
        .map(|e| format!("{:?} {:?}", e.reason, e.message))
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("NameConflict")),
        "an Event for becoming Stalled: {notes:?}"
    );
    for secret in [&token, &norbac] {
        assert_absent(secret, &op.log_text(), "the operator's log");
        assert_absent(secret, &notes.join("\n"), "the Events");
    }
    for log in ["operator-rc-real.log", "operator-rc-real-2.log"] {
        let text = std::fs::read_to_string(a.kubeconfig.parent().expect("dir").join(log)).unwrap_or_default();
        assert!(!text.is_empty(), "{log} was written");
        for secret in [&token, &norbac] {
            assert_absent(secret, &text, log);
        }
    }
    clean_up(&a, name, ns).await;
    op.stop();
}

/// `weft remote-secret`'s output applied on A: Ready, with B's server and version.
async fn real_credential_is_ready(a: &Bed, b: &Bed, yaml: &str, ns: &str, op: &Operator) {
    apply_yaml(a, yaml);
    let rc = wait_condition(a, ns, "b", READY, op).await;
    let status = rc.status.clone().unwrap_or_default();
    let (server, _) = server_and_ca(b);
    assert_eq!(status.server.as_deref(), Some(server.as_str()));
    let version = status.kubernetes_version.clone().unwrap_or_default();
    assert!(version.starts_with("v1."), "the remote's version: {version:?}");
    let (_, _, message) = condition(&rc, "Ready").expect("Ready");
    assert!(
        message.contains("may get, list and watch services, endpointslices and namespaces"),
        "{message}"
    );
    let table = a
        .kubectl(&["get", "remoteclusters", "-n", ns, "-o", "wide"])
        .expect("kubectl get");
    let header = table.lines().next().unwrap_or_default();
    for column in ["READY", "REASON", "CLUSTER", "SERVER", "VERSION", "SYNCED"] {
        assert!(header.contains(column), "column {column} in:\n{table}");
    }
    let row = table.lines().find(|l| l.starts_with("b ")).unwrap_or_default();
    for value in ["True", "Ready", &server, &version] {
        assert!(row.contains(value), "{value} in:\n{table}");
    }
}

/// A control plane writes its entry with its own field manager: no operator write follows,
/// and the operator's next write (a spec change) leaves the entry as it is.
async fn control_plane_entries_are_left_alone(a: &Bed, ns: &str, op: &Operator) {
    let api: Api<RemoteCluster> = Api::namespaced(a.client.clone(), ns);
    let entry = json!({"revision": "rc-mesh-x", "synced": true, "services": 3, "endpoints": 5});
    let body = json!({"apiVersion": "weft.dev/v1alpha1", "kind": "RemoteCluster",
                      "status": {"controlPlanes": [entry]}});
    let (writes, since) = (status_writes(op), reconciles(op));
    api.patch_status(
        "b",
        &PatchParams::apply("weft-control-plane-rc-mesh-x"),
        &Patch::Apply(&body),
    )
    .await
    .expect("a control plane's status write");
    reconciled(op, since, 1.0, "the reconcile the control plane's write triggers").await;
    assert_eq!(
        status_writes(op),
        writes,
        "no operator write for a control plane's entry"
    );

    // A spec change: the operator writes status (observedGeneration) and the entry stays.
    api.patch(
        "b",
        &PatchParams::apply("weft-e2e-network"),
        &Patch::Apply(&json!({"apiVersion": "weft.dev/v1alpha1", "kind": "RemoteCluster",
                              "spec": {"network": "net-b"}})),
    )
    .await
    .expect("set network");
    let rc = wait_condition(a, ns, "b", READY, op).await;
    let planes = rc.status.map(|s| s.control_planes).unwrap_or_default();
    assert_eq!(planes.len(), 1, "the entry survives: {planes:?}");
    assert_eq!((planes[0].revision.as_str(), planes[0].services), ("rc-mesh-x", 3));
    // The metric counts the write once its answer is back, just after the status shows it.
    wait_for(
        "the operator's status write to be counted",
        Duration::from_secs(10),
        || async {
            let now = status_writes(op);
            if now > writes {
                Ok(())
            } else {
                let m = op.metrics().unwrap_or_default();
                let lines: Vec<&str> = m.lines().filter(|l| l.contains("RemoteCluster")).collect();
                Err(format!("{now} writes (from {writes}): {lines:?}"))
            }
        },
    )
    .await;
}

/// A RemoteCluster whose Secret does not exist yet, then does.
async fn missing_secret_until_created(a: &Bed, yaml: &str, ns: &str, mesh: &str, op: &Operator) {
    put_remote(a, ns, "late", mesh, "late", "weft-remote-late").await;
    let m = stalled(a, ns, "late", "InvalidCredentials", op).await;
    assert_eq!(
        m,
        format!("Secret weft-remote-late (spec.kubeconfigSecretRef.name) does not exist in namespace {ns}")
    );
    put_secret(a, ns, "weft-remote-late", &printed_kubeconfig(yaml)).await;
    let api: Api<RemoteCluster> = Api::namespaced(a.client.clone(), ns);
    // The re-check period is 60 s: Ready sooner comes from the Secret's watch.
    wait_for("Ready from the Secret watch", Duration::from_secs(30), || async {
        let rc = api.get("late").await.map_err(|e| e.to_string())?;
        match condition(&rc, "Ready") {
            Some((s, _, _)) if s == "True" => Ok(()),
            other => Err(format!("{other:?}\n{}", op.log_tail())),
        }
    })
    .await;
    delete_remote(a, ns, "late").await;
}

/// Two RemoteClusters with one clusterName: the newer is Stalled; one named like the local
/// cluster too; deleting the older frees the name (without waiting for a re-check).
async fn name_conflicts(a: &Bed, ns: &str, mesh: &str, op: &Operator) {
    put_remote(a, ns, "b-twin", mesh, "b", "weft-remote-b").await;
    let m = stalled(a, ns, "b-twin", "NameConflict", op).await;
    assert!(m.contains("already used by RemoteCluster b,"), "{m}");
    let b = wait_condition(a, ns, "b", READY, op).await;
    assert!(b.status.is_some(), "the older stays Ready");
    put_remote(a, ns, "local", mesh, "a", "weft-remote-b").await;
    let m = stalled(a, ns, "local", "NameConflict", op).await;
    assert!(m.contains("local cluster's name"), "{m}");
    delete_remote(a, ns, "local").await;

    delete_remote(a, ns, "b").await;
    let api: Api<RemoteCluster> = Api::namespaced(a.client.clone(), ns);
    wait_for(
        "the newer to be Ready once the older is gone",
        Duration::from_secs(30),
        || async {
            let rc = api.get("b-twin").await.map_err(|e| e.to_string())?;
            match condition(&rc, "Ready") {
                Some((s, _, _)) if s == "True" => Ok(()),
                other => Err(format!("{other:?}\n{}", op.log_tail())),
            }
        },
    )
    .await;
}

/// A ServiceAccount token without RBAC in B: Forbidden, listing every verb; granted in B:
/// Ready, the RemoteCluster untouched. Returns the token (to look for in logs).
async fn forbidden_until_granted(a: &Bed, b: &Bed, ns: &str, mesh: &str, op: &Operator) -> String {
    b.kubectl(&["create", "serviceaccount", "weft-norbac", "-n", "default"])
        .expect("ServiceAccount in B");
    let token = b
        .kubectl(&["create", "token", "weft-norbac", "-n", "default", "--duration", "1h"])
        .expect("token")
        .trim()
        .to_string();
    let (server, ca) = server_and_ca(b);
    put_secret(
        a,
        ns,
        "weft-remote-nr",
        &kubeconfig(&server, Some(&ca), &format!("    token: {token}\n")),
    )
    .await;
    put_remote(a, ns, "nr", mesh, "nr", "weft-remote-nr").await;
    let m = stalled(a, ns, "nr", "Forbidden", op).await;
    assert!(
        m.starts_with("the credential may not get, list, watch services; get, list, watch endpointslices.discovery.k8s.io; get, list, watch namespaces; grant them in cluster nr"),
        "{m}"
    );
    let api: Api<RemoteCluster> = Api::namespaced(a.client.clone(), ns);
    let before = api.get("nr").await.expect("nr");

    b.kubectl(&[
        "create",
        "clusterrole",
        "weft-norbac",
        "--verb=get,list,watch",
        "--resource=services,namespaces,endpointslices.discovery.k8s.io",
    ])
    .expect("ClusterRole in B");
    b.kubectl(&[
        "create",
        "clusterrolebinding",
        "weft-norbac",
        "--clusterrole=weft-norbac",
        "--serviceaccount=default:weft-norbac",
    ])
    .expect("binding in B");
    let after = wait_condition(a, ns, "nr", READY, op).await;
    assert_eq!(
        (after.metadata.generation, after.uid()),
        (before.metadata.generation, before.uid()),
        "the RemoteCluster was not touched"
    );
    token
}

/// B's API server stopped, then started.
async fn outage(a: &Bed, cluster_b: &OwnCluster, ns: &str, op: &Operator) {
    let pid = op.pid();
    wait_condition(a, ns, "b-twin", READY, op).await;
    cluster_b.stop("kube-apiserver");
    let rc = wait_condition(a, ns, "b-twin", UNREACHABLE, op).await;
    assert_eq!(condition(&rc, "Stalled").map(|c| c.0).as_deref(), Some("False"));
    assert_eq!(condition(&rc, "Reconciling").map(|c| c.0).as_deref(), Some("True"));
    let status = rc.status.unwrap_or_default();
    assert!(
        status.server.is_some() && status.kubernetes_version.is_some(),
        "{status:?}"
    );
    let (code, body) = op.get(op.health_port, "/readyz").expect("readyz");
    assert_eq!(code, 200, "a remote being down is not the operator's problem: {body}");

    cluster_b.start("kube-apiserver");
    wait_condition(a, ns, "b-twin", READY, op).await;
    wait_condition(a, ns, "nr", READY, op).await;
    assert_eq!(op.pid(), pid, "nothing restarted");
}
