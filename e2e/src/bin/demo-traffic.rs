//! `make demo`, second half: the mesh doing its job. A gRPC Service whose two backends run in
//! a test host answers a proxyless grpcio client through Weft's control plane; then a canary
//! upgrade moves the namespaces to the new revision, watched with `kubectl get mi -w`, and the
//! clients are answered through the new revision's control plane.
//!
//! Run by `e2e/demo` after MeshInstall `demo` (RevisionBased, tags `prod` → Active and
//! `canary` → Latest) is Ready: `demo-traffic CLUSTER`. Pods on the test bed are simulated,
//! so each revision's control plane runs here as a process, as its Deployment would run it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use weft::api::MeshInstall;
use weft_e2e::grpc_clients::{Calls, backend, call, client};
use weft_e2e::multicluster::Primary;
use weft_e2e::remote::apply_yaml;
use weft_e2e::testhost::{HOST_ADDRESS, Proc, TestHost};
use weft_e2e::{Bed, kubectl_path, wait_for};

const MESH: &str = "demo";
const BACKENDS: [(&str, &str); 2] = [("greeter-1", "198.51.100.10"), ("greeter-2", "198.51.100.11")];
/// Namespace, and the tag its `weft.dev/rev` label follows.
const NAMESPACES: [(&str, &str); 2] = [("shop", "prod"), ("beta", "canary")];

/// A revision's control plane, run as its Deployment would run it: with the mesh config the
/// operator rendered (ConfigMap `weft-cp-<revision>`), ADS on the test host's side.
struct ControlPlane {
    process: Primary,
    revision: String,
}

async fn control_plane(bed: &Bed, revision: &str) -> ControlPlane {
    let config_maps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), "weft-mesh");
    let name = format!("weft-cp-{revision}");
    let mesh_config = wait_for(&format!("ConfigMap {name}"), Duration::from_secs(30), || async {
        let cm = config_maps.get(&name).await.map_err(|e| e.to_string())?;
        cm.data
            .and_then(|d| d.get("mesh.yaml").cloned())
            .ok_or("no mesh.yaml".to_string())
    })
    .await;
    let process = Primary::start(bed, revision, &mesh_config, &["--mesh-namespace", "weft-mesh"]);
    wait_for(
        &format!("control plane {revision} to be ready"),
        Duration::from_secs(30),
        || async {
            process
                .ready()
                .map_err(|e| format!("{e} (log: {})", process.log.display()))
        },
    )
    .await;
    println!(
        "   control plane {revision}: xDS on {HOST_ADDRESS}:{} (log: {})",
        process.xds,
        process.log.display()
    );
    ControlPlane {
        process,
        revision: revision.to_string(),
    }
}

/// The Service `greeter` in each namespace, its endpoints the test host's backends.
fn services(bed: &Bed) {
    let mut yaml = String::new();
    for (ns, tag) in NAMESPACES {
        let endpoints: Vec<String> = BACKENDS
            .iter()
            .map(|(_, ip)| format!("  - addresses: [{ip}]\n    conditions: {{ready: true}}\n    zone: zone-a\n"))
            .collect();
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{weft.dev/rev: {tag}}}}}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: greeter, namespace: {ns}}}\n\
             spec: {{ports: [{{name: grpc, port: 50051, appProtocol: grpc}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: greeter-1, namespace: {ns}, labels: {{kubernetes.io/service-name: greeter}}}}\n\
             addressType: IPv4\nports: [{{name: grpc, port: 50051, protocol: TCP}}]\nendpoints:\n{}---\n",
            endpoints.concat()
        ));
    }
    apply_yaml(bed, &yaml);
}

/// A grpcio client in namespace `ns`, bootstrapped to control plane `cp`.
fn client_in(host: &TestHost, bed: &Bed, cp: &ControlPlane, ns: &str) -> Proc {
    let dir = bed.kubeconfig.parent().expect("cluster dir");
    let id = format!("demo-{ns}-{}", cp.revision);
    let metadata = json!({"NAMESPACE": ns, "ROLE": "proxyless"});
    client(
        host,
        dir,
        &format!("{HOST_ADDRESS}:{}", cp.process.xds),
        &id,
        metadata,
        &target(ns),
    )
}

fn target(ns: &str) -> String {
    format!("xds:///greeter.{ns}.svc.cluster.local:50051")
}

fn summary(calls: &Calls) -> String {
    let answered: Vec<String> = calls.counts.iter().map(|(who, n)| format!("{who} {n}")).collect();
    let mut line = format!("answered by {}; failed {}", answered.join(", "), calls.errors);
    if calls.errors > 0 {
        line.push_str(&format!(" ({})", calls.last_error));
    }
    line
}

/// Makes 20 calls once the client has its configuration, and says who answered.
async fn show_calls(client: &mut Proc, ns: &str, cp: &ControlPlane) {
    // The first calls wait for the client's xDS configuration; show a settled picture.
    let calls = wait_for(
        &format!("calls in {ns} to be answered"),
        Duration::from_secs(30),
        || {
            let calls = call(client, 20);
            async move {
                if calls.errors == 0 {
                    Ok(calls)
                } else {
                    Err(summary(&calls))
                }
            }
        },
    )
    .await;
    println!(
        "   {ns} (weft.dev/rev={}) via {}: 20 calls to {}: {}",
        NAMESPACES.iter().find(|(n, _)| *n == ns).map_or("?", |(_, t)| t),
        cp.revision,
        target(ns),
        summary(&calls)
    );
}

/// The revision each tag points at, and the active revision.
async fn tags(meshes: &Api<MeshInstall>) -> (Vec<(String, String)>, Option<String>) {
    let status = meshes.get(MESH).await.ok().and_then(|m| m.status).unwrap_or_default();
    (
        status
            .tags
            .iter()
            .map(|t| (t.name.clone(), t.revision.clone()))
            .collect(),
        status.active_revision.clone(),
    )
}

async fn wait_tag(meshes: &Api<MeshInstall>, tag: &str, revision: &str) {
    wait_for(
        &format!("tag {tag} to move to {revision}"),
        Duration::from_secs(60),
        || async {
            let (tags, _) = tags(meshes).await;
            if tags.iter().any(|(t, r)| t == tag && r == revision) {
                Ok(())
            } else {
                Err(format!("{tags:?}"))
            }
        },
    )
    .await;
}

/// `kubectl get mi -w`, printing to our output until dropped.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn watch(bed: &Bed) -> Watch {
    let columns = "NAME:.metadata.name,READY:.status.conditions[?(@.type==\"Ready\")].status,STATUS:.status.state,\
                   VERSION:.spec.version,ACTIVE:.status.activeRevision,TAGS:.status.tags[*].name,\
                   AT:.status.tags[*].revision";
    let child = Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(&bed.kubeconfig)
        .args(["get", "mi", MESH, "-w", "-o", &format!("custom-columns={columns}")])
        .stdout(Stdio::inherit())
        .spawn()
        .expect("run kubectl get mi -w");
    Watch(child)
}

#[tokio::main]
async fn main() {
    let cluster = std::env::args().nth(1).unwrap_or_else(|| "weft".into());
    let bed = Bed::connect_to(&cluster).await;
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    let (_, active) = tags(&meshes).await;
    let old = active.expect("MeshInstall demo is Ready with an active revision");

    println!("== a gRPC service on a test host, called through Weft's control plane");
    let host = TestHost::create();
    let mut backends = Vec::new();
    for (name, ip) in BACKENDS {
        host.add_address(ip);
        backends.push(backend(&host, &format!("{ip}:50051"), name));
        println!(
            "   backend {name}: a Python gRPC server on {ip}:50051 (network namespace {})",
            host.netns
        );
    }
    services(&bed);
    let old_cp = control_plane(&bed, &old).await;
    let mut shop = client_in(&host, &bed, &old_cp, "shop");
    show_calls(&mut shop, "shop", &old_cp).await;

    println!("\n== canary upgrade 1.0.0 → 1.1.0: kubectl get mi {MESH} -w");
    let watching = watch(&bed);
    meshes
        .patch(
            MESH,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"version": "1.1.0"}})),
        )
        .await
        .expect("upgrade the MeshInstall");
    let new = format!("{MESH}-v1-1-0");
    let new_cp = control_plane(&bed, &new).await;
    wait_tag(&meshes, "canary", &new).await;
    let mut beta = client_in(&host, &bed, &new_cp, "beta");
    show_calls(&mut beta, "beta", &new_cp).await;
    show_calls(&mut shop, "shop", &old_cp).await;
    wait_tag(&meshes, "prod", &new).await;
    let mut shop_new = client_in(&host, &bed, &new_cp, "shop");
    show_calls(&mut shop_new, "shop", &new_cp).await;
    wait_for("the old revision to be removed", Duration::from_secs(60), || async {
        let mi = meshes.get(MESH).await.map_err(|e| e.to_string())?;
        let revisions = mi.status.map(|s| s.revisions.len()).unwrap_or_default();
        if revisions == 1 {
            Ok(())
        } else {
            Err(format!("{revisions} revisions"))
        }
    })
    .await;
    drop(watching);
    println!("   promoted: both namespaces on {new}; {old} removed after its grace period");
}
