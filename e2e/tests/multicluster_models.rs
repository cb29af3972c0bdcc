//! The other two deployment models on real API servers, with real traffic from Python's
//! grpcio (an xDS client we did not write) in a test host:
//! - multi-network: cluster B is on another network than the primary A; A's control plane
//!   serves B's endpoints as the address of B's east-west gateway (a stand-in that answers
//!   with its own name, since no Envoy runs here), and says so when that gateway is gone;
//! - primary-remote: cluster C runs the operator with an external control plane (A's),
//!   so it installs only node proxies, whose rendered bootstrap is used as is to reach A's
//!   control plane, which serves C's proxies C's view (C's namespace labels, C's endpoints).
//!
//! Credentials for B and C are made by `weft remote-secret` against their API servers.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use weft::api::MeshInstall;
use weft_e2e::grpc_clients::{self, backend, call, wait_reached};
use weft_e2e::multicluster::{
    Primary, eastwest_service, greeter, namespace, remote_clusters, remote_secret, set_gateway_address, status_entry,
};
use weft_e2e::operator::{Operator, delete_and_wait, install_crds, mesh, wait_ready};
use weft_e2e::remote::apply_yaml;
use weft_e2e::testhost::{HOST_ADDRESS, Proc, TestHost};
use weft_e2e::{Bed, OwnCluster, wait_for};

const A_BACKEND: &str = "198.51.100.10";
const B_BACKEND: &str = "198.51.100.11";
const C_BACKEND: &str = "198.51.100.12";
const B_GATEWAY: &str = "198.51.100.30";

/// A grpcio xDS client of `greeter.<ns>` with this bootstrap `server` (host:port) and node.
fn client(bed: &Bed, host: &TestHost, server: &str, id: &str, metadata: Value, ns: &str) -> Proc {
    let target = format!("xds:///greeter.{ns}.svc.cluster.local:50051");
    grpc_clients::client(host, bed.kubeconfig.parent().unwrap(), server, id, metadata, &target)
}

/// Joins `remote` to the primary `a` as RemoteCluster `name` of `mesh`: the credential
/// `weft remote-secret` makes in the remote, applied on the primary.
async fn join(a: &Bed, remote: &Bed, name: &str, mesh: &str, mesh_ns: &str, extra: &[&str]) {
    namespace(a, mesh_ns, json!({})).await;
    let mut args = vec!["--name", name, "--mesh", mesh, "--mesh-namespace", mesh_ns];
    args.extend_from_slice(extra);
    apply_yaml(a, &remote_secret(&remote.kubeconfig, &args));
}

/// Deletes RemoteCluster `name` of `mesh_ns` on the primary, so no later test's operator
/// finds it (its cluster is gone by then).
async fn forget(a: &Bed, mesh_ns: &str, name: &str) {
    let _ = remote_clusters(a, mesh_ns).delete(name, &DeleteParams::default()).await;
}

async fn wait_ready_primary(primary: &Primary) {
    wait_for(
        "the primary's control plane to be ready",
        Duration::from_secs(60),
        || async { primary.ready() },
    )
    .await;
}

#[tokio::test]
async fn a_remote_network_is_reached_through_its_east_west_gateway() {
    const MESH: &str = "mcn";
    const MESH_NS: &str = "mcn-mesh";
    const NS: &str = "store";
    let a = Bed::connect().await;
    install_crds(&a);
    let (_b_cluster, b) = OwnCluster::up("weft-mcn-b").await;
    let host = TestHost::create();
    for address in [A_BACKEND, B_BACKEND, B_GATEWAY] {
        host.add_address(address);
    }
    let _a_backend = backend(&host, &format!("{A_BACKEND}:50051"), "a");
    let _b_backend = backend(&host, &format!("{B_BACKEND}:50051"), "b");
    let _b_gateway = backend(&host, &format!("{B_GATEWAY}:15443"), "gateway-b");
    greeter(&a, NS, A_BACKEND).await;
    greeter(&b, NS, B_BACKEND).await;
    namespace(&b, "weft-gw", json!({})).await;
    Api::<Service>::namespaced(b.client.clone(), "weft-gw")
        .create(&PostParams::default(), &eastwest_service("weft-gw", MESH, "net-b"))
        .await
        .expect("B's east-west gateway Service");
    set_gateway_address(&b, "weft-gw", json!([{"ip": B_GATEWAY}])).await;
    join(&a, &b, "b", MESH, MESH_NS, &["--network", "net-b"]).await;
    let config = format!("mesh: {MESH}\nclusterName: a\nnetwork: net-a\n");
    let primary = Primary::start(&a, MESH, &config, &["--mesh-namespace", MESH_NS]);
    wait_ready_primary(&primary).await;

    // A client on A's network: A's backend directly, B's through B's gateway, never B's
    // pod address.
    let server = format!("{HOST_ADDRESS}:{}", primary.xds);
    let metadata = json!({"REVISION": MESH, "NAMESPACE": NS, "ROLE": "proxyless"});
    let mut on_a = client(&a, &host, &server, "mcn-a", metadata, NS);
    wait_reached(
        &mut on_a,
        &["a", "gateway-b"],
        "calls to reach A's backend and B's gateway",
    )
    .await;
    let eds = primary
        .eds(MESH, &format!("outbound|50051||greeter.{NS}.svc.cluster.local"))
        .await
        .expect("EDS");
    assert_eq!(
        eds,
        [
            ("a".to_string(), A_BACKEND.to_string()),
            ("b".to_string(), B_GATEWAY.to_string())
        ],
        "B's endpoint is replaced by its gateway, in B's locality"
    );

    // B's gateway loses its address: B's endpoints are left out, and status and metric say why.
    set_gateway_address(&b, "weft-gw", json!([])).await;
    wait_reached(&mut on_a, &["a"], "calls to reach only A's backend").await;
    let series = "weft_endpoints_without_gateway{network=\"net-b\"} 1";
    assert!(
        primary
            .metrics("weft_endpoints_without_gateway")
            .iter()
            .any(|l| l == series),
        "{:?}",
        primary.metrics("weft_endpoints_without_gateway")
    );
    let rcs = remote_clusters(&a, MESH_NS);
    let entry = wait_for("B's status entry to say why", Duration::from_secs(60), || {
        let rcs = rcs.clone();
        async move {
            let entry = status_entry(&rcs, "b", MESH).await?;
            let message = entry["message"].as_str().unwrap_or_default().to_string();
            if message.contains("on network net-b cannot be reached from other networks") {
                Ok(entry)
            } else {
                Err(entry.to_string())
            }
        }
    })
    .await;
    assert_eq!(entry["synced"], true, "{entry}");
    forget(&a, MESH_NS, "b").await;
}

#[tokio::test]
async fn a_cluster_with_an_external_control_plane_is_served_its_own_view_by_the_primary() {
    const MESH: &str = "mcm";
    const MESH_NS: &str = "mcm-mesh";
    const NS: &str = "depot";
    let a = Bed::connect().await;
    install_crds(&a);
    let (_c_cluster, c) = OwnCluster::up("weft-mcm-c").await;
    install_crds(&c);
    let host = TestHost::create();
    for address in [A_BACKEND, C_BACKEND] {
        host.add_address(address);
    }
    let _a_backend = backend(&host, &format!("{A_BACKEND}:50051"), "a");
    let _c_backend = backend(&host, &format!("{C_BACKEND}:50051"), "c");
    let config = format!("mesh: {MESH}\nclusterName: a\nnetwork: net-1\n");
    let primary = Primary::start(&a, MESH, &config, &["--mesh-namespace", MESH_NS]);
    wait_ready_primary(&primary).await;

    // C: the operator installs the mesh with A's control plane as its external one.
    let op = Operator::start(&c, "mcm-c", &[]);
    let external = format!("{HOST_ADDRESS}:{}", primary.xds);
    let spec = json!({
        "controlPlane": {"external": {"address": external}},
        "meshConfig": {"clusterName": "c", "network": "net-1"}
    });
    let meshes: Api<MeshInstall> = Api::all(c.client.clone());
    meshes
        .create(&PostParams::default(), &mesh(MESH, MESH_NS, spec))
        .await
        .expect("create C's MeshInstall");
    wait_ready(&meshes, MESH, &op).await;
    let deployments = Api::<Deployment>::namespaced(c.client.clone(), MESH_NS)
        .list(&ListParams::default())
        .await
        .expect("list C's Deployments");
    assert!(
        deployments.items.is_empty(),
        "C runs no control plane: {:?}",
        deployments.items
    );
    let bootstrap = Api::<ConfigMap>::namespaced(c.client.clone(), MESH_NS)
        .get(&format!("weft-proxy-{MESH}"))
        .await
        .expect("C's proxy bootstrap");
    let text = bootstrap
        .data
        .unwrap_or_default()
        .remove("bootstrap.json")
        .unwrap_or_default();
    let boot: Value = serde_json::from_str(&text).expect("bootstrap JSON");
    let socket = &boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    let server = format!(
        "{}:{}",
        socket["address"].as_str().unwrap_or_default(),
        socket["port_value"]
    );
    assert_eq!(server, external, "the proxies' bootstrap names the primary's address");

    // C's workloads: namespace NS labelled for the mesh's revision in C only; the primary
    // discovers C with a credential for C.
    greeter(&a, NS, A_BACKEND).await;
    namespace(&c, NS, json!({"weft.dev/rev": MESH})).await;
    greeter(&c, NS, C_BACKEND).await;
    join(&a, &c, "c", MESH, MESH_NS, &[]).await;

    // A proxyless client with the cluster and network C's proxies carry, but the workload's
    // namespace and no revision: admitted by C's namespace label, served both clusters'
    // endpoints.
    let mut metadata = boot["node"]["metadata"].clone();
    assert_eq!(
        (metadata["CLUSTER"].as_str(), metadata["NETWORK"].as_str()),
        (Some("c"), Some("net-1"))
    );
    metadata["NAMESPACE"] = json!(NS);
    metadata["ROLE"] = json!("proxyless");
    metadata.as_object_mut().unwrap().remove("REVISION");
    let mut from_c = client(&c, &host, &server, "mcm-c", metadata.clone(), NS);
    wait_reached(&mut from_c, &["a", "c"], "C's client to reach both clusters' backends").await;

    // The same client claiming to be in A is refused: A's namespace has no such label.
    metadata["CLUSTER"] = json!("a");
    let mut claims_a = client(&c, &host, &server, "mcm-claims-a", metadata, NS);
    let calls = call(&mut claims_a, 3);
    assert!(calls.counts.is_empty() && calls.errors == 3, "{calls:?}");
    drop((from_c, claims_a));
    forget(&a, MESH_NS, "c").await;
    op.stop();
}

/// The control plane needs no more than the RBAC the operator renders for it: run as its
/// own ServiceAccount (impersonated), it reads the one Secret its RemoteCluster names (the
/// Role lists it by name, and no other), discovers the remote cluster and writes its status
/// entry.
#[tokio::test]
async fn a_control_plane_with_only_its_rendered_rbac_discovers_a_remote_cluster() {
    const MESH: &str = "mcr";
    const MESH_NS: &str = "mcr-mesh";
    const NS: &str = "bin";
    let a = Bed::connect().await;
    install_crds(&a);
    let op = Operator::start(&a, "mcr-a", &[]);
    let meshes: Api<MeshInstall> = Api::all(a.client.clone());
    meshes
        .create(
            &PostParams::default(),
            &mesh(MESH, MESH_NS, json!({"profile": "minimal"})),
        )
        .await
        .expect("create A's MeshInstall");
    wait_ready(&meshes, MESH, &op).await;
    let (_b_cluster, b) = OwnCluster::up("weft-mcr-b").await;
    greeter(&b, NS, B_BACKEND).await;
    join(&a, &b, "b", MESH, MESH_NS, &[]).await;

    // The operator names the RemoteCluster's Secret in the control plane's Role (beside the
    // mesh CA's issuer, which every control plane reads).
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(a.client.clone(), MESH_NS);
    let name = format!("weft-cp-{MESH}");
    wait_for("the Role to name the remote Secret", Duration::from_secs(30), || {
        let (roles, name) = (roles.clone(), name.clone());
        async move {
            let role = roles.get(&name).await.map_err(|e| e.to_string())?;
            let rules = role.rules.unwrap_or_default();
            let names: Vec<String> = rules
                .iter()
                .filter(|r| r.resources.iter().flatten().any(|x| x == "secrets"))
                .flat_map(|r| r.resource_names.clone().unwrap_or_default())
                .collect();
            if names == ["weft-ca-issuer", "weft-remote-b"] {
                Ok(())
            } else {
                Err(format!("{rules:?}"))
            }
        }
    })
    .await;
    let account = format!("system:serviceaccount:{MESH_NS}:{name}");
    let other = a.kubectl(&["--as", &account, "get", "secrets", "-n", MESH_NS]);
    assert!(other.is_err_and(|e| e.contains("Forbidden")), "may list every Secret");

    // The control plane, as that ServiceAccount.
    let text = std::fs::read_to_string(&a.kubeconfig).expect("A's kubeconfig");
    let mut kubeconfig: Value = serde_saphyr::from_str(&text).expect("kubeconfig YAML");
    for user in kubeconfig["users"].as_array_mut().expect("users") {
        user["user"]["as"] = json!(account);
    }
    let path = a.kubeconfig.with_file_name("kubeconfig-weft-cp-mcr");
    std::fs::write(&path, kubeconfig.to_string()).expect("write the impersonating kubeconfig");
    let as_cp = Bed {
        name: a.name.clone(),
        kubeconfig: path,
        client: a.client.clone(),
    };
    let _host = TestHost::create();
    let primary = Primary::start(
        &as_cp,
        MESH,
        // Only NS is in the mesh, so the counts are of greeter alone.
        &format!(
            "mesh: {MESH}\nclusterName: a\ndiscoverySelectors:\n- matchLabels: {{kubernetes.io/metadata.name: {NS}}}\n"
        ),
        &["--mesh-namespace", MESH_NS],
    );
    wait_ready_primary(&primary).await;
    let cluster = format!("outbound|50051||greeter.{NS}.svc.cluster.local");
    wait_for("B's endpoint in A's EDS", Duration::from_secs(30), || async {
        let eds = primary.eds(MESH, &cluster).await?;
        if eds == [("b".to_string(), B_BACKEND.to_string())] {
            Ok(())
        } else {
            Err(format!("{eds:?}"))
        }
    })
    .await;
    let rcs = remote_clusters(&a, MESH_NS);
    let entry = wait_for("its status entry", Duration::from_secs(30), || {
        let rcs = rcs.clone();
        async move {
            let entry = status_entry(&rcs, "b", MESH).await?;
            if entry["synced"] == true && entry["endpoints"] == 1 {
                Ok(entry)
            } else {
                Err(entry.to_string())
            }
        }
    })
    .await;
    assert_eq!(entry["services"], 1, "{entry}");
    // What `kubectl get mrc` shows: the operator's check and the control plane's view.
    let table = wait_for("kubectl get mrc to show both", Duration::from_secs(60), || {
        let table = a.kubectl(&["get", "mrc", "-n", MESH_NS, "-o", "wide"]);
        async move {
            let table = table?;
            let row = table
                .lines()
                .find(|l| l.starts_with("b "))
                .unwrap_or_default()
                .to_string();
            let cells: Vec<&str> = row.split_whitespace().collect();
            if cells.get(1..3) == Some(&["True", "Ready"][..]) && row.contains(" true ") && row.contains(" 1 ") {
                Ok(table)
            } else {
                Err(table)
            }
        }
    })
    .await;
    println!("{table}");
    assert!(
        !primary.log().contains("Forbidden"),
        "the control plane was refused something:\n{}",
        primary.log()
    );
    forget(&a, MESH_NS, "b").await;
    delete_and_wait(&a, MESH).await;
    op.stop();
}
