//! Multi-primary discovery on two real API servers: cluster A (the run's test bed) runs
//! `weft control-plane` as a process; cluster B (a cluster of its own) is added with the
//! credential `weft remote-secret` makes against B's API server. A `greeter` Service in
//! namespace `shop` exists in both, each with one real gRPC backend on the test host, and
//! Python's grpcio, served by A's control plane, calls it. A's operator checks the
//! credential and reports it in the RemoteCluster's conditions.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weft::api::MeshInstall;
use weft_e2e::grpc_clients::{self, wait_reached};
use weft_e2e::multicluster::{self, Primary, remote_clusters, remote_secret, status_entry};
use weft_e2e::operator::{Operator, delete_and_wait, install_crds, mesh};
use weft_e2e::remote::apply_yaml;
use weft_e2e::testhost::{HOST_ADDRESS, Proc, TestHost};
use weft_e2e::{Bed, OwnCluster, wait_for};

const REVISION: &str = "mc";
const MESH: &str = "wcp";
const MESH_NS: &str = "wcp-mesh";
const A_BACKEND: &str = "198.51.100.10";
const B_BACKEND: &str = "198.51.100.11";
const EDS_CLUSTER: &str = "outbound|50051||greeter.shop.svc.cluster.local";

/// A backend named `name` on `address`, port 50051.
fn backend(host: &TestHost, address: &str, name: &str) -> Proc {
    grpc_clients::backend(host, &format!("{address}:50051"), name)
}

/// The grpcio client in the test host, served by `primary`.
fn client(bed: &Bed, host: &TestHost, primary: &Primary) -> Proc {
    grpc_clients::client(
        host,
        bed.kubeconfig.parent().unwrap(),
        &format!("{HOST_ADDRESS}:{}", primary.xds),
        "e2e-mc-client",
        json!({"REVISION": REVISION, "NAMESPACE": "shop", "ROLE": "proxyless"}),
        "xds:///greeter.shop.svc.cluster.local:50051",
    )
}

/// `shop/greeter` with one endpoint at `address`, in `bed`; `shop` labelled `mesh: on`.
async fn greeter(bed: &Bed, address: &str) {
    multicluster::namespace(bed, "shop", json!({"mesh": "on"})).await;
    multicluster::greeter(bed, "shop", address).await;
}

/// Sets (or removes, with `None`) the `mesh` label of namespace `shop` in `bed`.
async fn label_shop(bed: &Bed, value: Option<&str>) {
    let patch = json!({"metadata": {"labels": {"mesh": value}}});
    Api::<Namespace>::all(bed.client.clone())
        .patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label shop");
}

/// Waits until this control plane's entry in RemoteCluster `b` satisfies `check`.
async fn wait_entry(bed: &Bed, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_entry_of(bed, REVISION, what, check).await
}

/// Waits until `revision`'s entry in RemoteCluster `b` satisfies `check`.
async fn wait_entry_of(bed: &Bed, revision: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let api = remote_clusters(bed, MESH_NS);
    wait_for(what, Duration::from_secs(60), || {
        let api = api.clone();
        let check = &check;
        async move {
            let entry = status_entry(&api, "b", revision).await?;
            if check(&entry) {
                Ok(entry)
            } else {
                Err(entry.to_string())
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_primary_serves_a_remote_clusters_endpoints_and_follows_its_remotecluster() {
    let a = Bed::connect().await;
    install_crds(&a);
    // The operator checks the credential (RemoteCluster conditions); the control plane,
    // started below as a process, serves what it discovers.
    let op = Operator::start(&a, "wcp-op", &["--remote-recheck-seconds", "3"]);
    let meshes: Api<MeshInstall> = Api::all(a.client.clone());
    meshes
        .create(
            &PostParams::default(),
            &mesh(MESH, MESH_NS, json!({"profile": "minimal"})),
        )
        .await
        .expect("create the mesh");
    let (b_cluster, b) = OwnCluster::up("wcp-b").await;
    greeter(&a, A_BACKEND).await;
    greeter(&b, B_BACKEND).await;
    let first = remote_secret(
        &b.kubeconfig,
        &["--name", "b", "--mesh", MESH, "--mesh-namespace", MESH_NS],
    );
    apply_yaml(&a, &first);
    wait_condition(&a, "True", "Ready").await;

    let host = TestHost::create();
    host.add_address(A_BACKEND);
    host.add_address(B_BACKEND);
    let _backends = [backend(&host, A_BACKEND, "a"), backend(&host, B_BACKEND, "b")];
    let mesh_config = format!("mesh: {MESH}\nclusterName: a\ndiscoverySelectors:\n- matchLabels: {{mesh: \"on\"}}\n");
    let mut primary = Primary::start(&a, REVISION, &mesh_config, &["--mesh-namespace", MESH_NS]);
    wait_for("the control plane to be ready", Duration::from_secs(60), || async {
        primary.ready()
    })
    .await;
    let mut grpc = client(&a, &host, &primary);

    // Both clusters' endpoints, B's in a locality whose sub-zone names cluster b.
    wait_reached(&mut grpc, &["a", "b"], "calls to reach both clusters' backends").await;
    let eds = primary.eds(REVISION, EDS_CLUSTER).await.expect("EDS");
    assert_eq!(
        eds,
        [
            ("a".to_string(), A_BACKEND.to_string()),
            ("b".to_string(), B_BACKEND.to_string())
        ],
        "(sub_zone, address) of each endpoint"
    );
    let entry = wait_entry(&a, "a synced status entry with counts", |e| {
        e["synced"] == true && e["services"].as_i64() >= Some(1) && e["endpoints"].as_i64() >= Some(1)
    })
    .await;
    assert!(entry["message"].is_null(), "{entry}");
    assert!(entry["lastChangeTime"].is_string(), "{entry}");
    let synced = primary.metrics("weft_remote_cluster_synced");
    assert_eq!(synced, ["weft_remote_cluster_synced{cluster=\"b\"} 1"], "{synced:?}");

    // discoverySelectors are evaluated on B's own namespace labels.
    label_shop(&b, None).await;
    wait_reached(
        &mut grpc,
        &["a"],
        "B's greeter to leave once B's shop is out of the mesh",
    )
    .await;
    label_shop(&b, Some("on")).await;
    wait_reached(&mut grpc, &["a", "b"], "B's greeter back with the label").await;

    rotate_then_survive_an_outage(&a, &b, &b_cluster, &mut primary, &mut grpc).await;

    // Moved to another mesh: B's endpoints leave, and so does this control plane's entry.
    let rcs = remote_clusters(&a, MESH_NS);
    let move_to = |mesh: &str| json!({"spec": {"mesh": mesh}});
    rcs.patch("b", &PatchParams::default(), &Patch::Merge(&move_to("another")))
        .await
        .expect("move b to another mesh");
    wait_reached(&mut grpc, &["a"], "B's backend to leave with its RemoteCluster's mesh").await;
    wait_for(
        "this control plane's entry to be withdrawn",
        Duration::from_secs(30),
        || async {
            match status_entry(&rcs, "b", REVISION).await {
                Err(e) if e.starts_with("no entry") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    rcs.patch("b", &PatchParams::default(), &Patch::Merge(&move_to(MESH)))
        .await
        .expect("move b back");
    wait_reached(&mut grpc, &["a", "b"], "B's backend back with its mesh").await;

    // Deleting the RemoteCluster removes B's endpoints within seconds.
    remote_clusters(&a, MESH_NS)
        .delete("b", &DeleteParams::default())
        .await
        .expect("delete RemoteCluster b");
    wait_reached(
        &mut grpc,
        &["a"],
        "B's backend to be dropped after its RemoteCluster is deleted",
    )
    .await;
    assert!(primary.metrics("weft_remote_cluster_synced{").is_empty());
    assert!(primary.running(), "no restart");

    delete_and_wait(&a, MESH).await;
    op.stop();
    for ns in ["shop", MESH_NS] {
        let _ = Api::<Namespace>::all(a.client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
}

/// Waits until RemoteCluster `b`'s Ready condition has `status` and `reason` (and it is not
/// Stalled), as the operator writes it.
async fn wait_condition(a: &Bed, status: &str, reason: &str) {
    let rcs = remote_clusters(a, MESH_NS);
    wait_for(
        &format!("RemoteCluster b to be Ready={status} ({reason})"),
        Duration::from_secs(60),
        || {
            let rcs = rcs.clone();
            async move {
                let rc = rcs.get("b").await.map_err(|e| e.to_string())?;
                let conditions = rc.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
                let of = |t: &str| conditions.iter().find(|c| c["type"] == t).cloned().unwrap_or_default();
                let (ready, stalled) = (of("Ready"), of("Stalled"));
                if ready["status"] == status && ready["reason"] == reason && stalled["status"] != "True" {
                    Ok(())
                } else {
                    Err(format!("{conditions:?}"))
                }
            }
        },
    )
    .await;
}

/// A rotated credential is picked up without a restart; then B's API server stops: its
/// endpoints are still served and the entry says why; back, it syncs with the new
/// credential (the old token is deleted, so the old one could not).
async fn rotate_then_survive_an_outage(
    a: &Bed,
    b: &Bed,
    b_cluster: &OwnCluster,
    primary: &mut Primary,
    grpc: &mut Proc,
) {
    let second = remote_secret(
        &b.kubeconfig,
        &[
            "--name",
            "b",
            "--mesh",
            MESH,
            "--mesh-namespace",
            MESH_NS,
            "--namespace",
            "weft-rot",
        ],
    );
    apply_yaml(a, &second);
    wait_for(
        "the new credential's watches to take over",
        Duration::from_secs(60),
        || async {
            let log = primary.log();
            if log.contains("new credential's watches have listed") {
                Ok(())
            } else {
                Err(log.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
            }
        },
    )
    .await;
    Api::<Secret>::namespaced(b.client.clone(), "weft-system")
        .delete("weft-remote-wcp-token", &DeleteParams::default())
        .await
        .expect("delete the old token");
    wait_reached(grpc, &["a", "b"], "both backends after the rotation").await;

    b_cluster.stop("kube-apiserver");
    wait_condition(a, "False", "Unreachable").await;
    let down = wait_entry(a, "the entry to say B cannot be reached", |e| e["synced"] == false).await;
    let message = down["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("cannot reach https://") && message.contains("serving the 1 endpoints last seen"),
        "{down}"
    );
    wait_reached(grpc, &["a", "b"], "B's endpoint still served while B is down").await;
    primary.ready().expect("a remote down leaves the control plane ready");
    assert_eq!(
        primary.metrics("weft_remote_cluster_synced"),
        ["weft_remote_cluster_synced{cluster=\"b\"} 0"]
    );

    // A control plane starting while B is down waits for it at most the remote sync
    // timeout, then serves the local mesh; its entry sits beside the first one's.
    let config = format!("mesh: {MESH}\nclusterName: a\n");
    let flags = ["--mesh-namespace", MESH_NS, "--remote-sync-timeout-seconds", "3"];
    let late = Primary::start(a, "mc2", &config, &flags);
    wait_for(
        "the second control plane to be ready without B",
        Duration::from_secs(30),
        || async { late.ready() },
    )
    .await;
    assert_eq!(
        late.eds("mc2", EDS_CLUSTER).await.expect("EDS"),
        [("a".to_string(), A_BACKEND.to_string())]
    );
    wait_entry_of(
        a,
        "mc2",
        "the second control plane's entry to say B cannot be reached",
        |e| {
            e["synced"] == false
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("cannot reach https://"))
        },
    )
    .await;
    wait_entry(a, "the first entry to be kept beside the second", |e| {
        e["synced"] == false
    })
    .await;

    b_cluster.start("kube-apiserver");
    wait_for(
        "the second control plane to serve B once it lists",
        Duration::from_secs(60),
        || async {
            let eds = late.eds("mc2", EDS_CLUSTER).await?;
            if eds.len() == 2 {
                Ok(())
            } else {
                Err(format!("{eds:?}"))
            }
        },
    )
    .await;
    wait_entry_of(a, "mc2", "the second entry to be synced", |e| e["synced"] == true).await;
    let up = wait_entry(a, "the entry to be synced again", |e| e["synced"] == true).await;
    assert!(up["message"].is_null(), "{up}");
    wait_condition(a, "True", "Ready").await;
    wait_reached(grpc, &["a", "b"], "both backends once B is back").await;
    assert!(primary.running(), "no restart");
}
