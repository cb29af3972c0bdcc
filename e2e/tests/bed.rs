//! Smoke tests that prove the test bed is a real cluster: the scheduler honours affinity,
//! kwok runs pods to Ready on three nodes, the controller manager's controllers (deployment,
//! daemonset, disruption, garbage collector) work, and two clusters run side by side.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use weft_e2e::{Bed, repo_root, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

fn pod_template(app: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "containers": [{"name": "main", "image": "registry.invalid/weft/never-pulled:1"}]
        }
    })
}

fn deployment(name: &str, replicas: i32, mut template: serde_json::Value) -> Deployment {
    template["metadata"]["labels"]["app"] = json!(name);
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": template
        }
    }))
    .expect("valid Deployment")
}

async fn wait_available(api: &Api<Deployment>, name: &str, replicas: i32) {
    wait_for(
        &format!("Deployment {name} to have {replicas} available replicas"),
        TIMEOUT,
        || async {
            let d = api.get(name).await.map_err(|e| e.to_string())?;
            let status = d.status.clone().unwrap_or_default();
            let available = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Available" && c.status == "True");
            if available && status.available_replicas == Some(replicas) {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await
}

async fn pods_of(client: &Client, ns: &str, app: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods")
        .items
}

#[tokio::test]
async fn nodes_are_ready_in_three_zones() {
    let bed = Bed::connect().await;
    let nodes: Api<Node> = Api::all(bed.client.clone());
    let zones: BTreeSet<String> = nodes
        .list(&ListParams::default())
        .await
        .expect("list nodes")
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.metadata.labels.as_ref()?.get("topology.kubernetes.io/zone").cloned())
        .collect();
    assert_eq!(
        zones,
        BTreeSet::from(["zone-a".into(), "zone-b".into(), "zone-c".into()])
    );
}

#[tokio::test]
async fn deployment_with_required_anti_affinity_lands_on_three_nodes() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("smoke-affinity").await;
    let api: Api<Deployment> = Api::namespaced(bed.client.clone(), &ns.name);
    let mut template = pod_template("spread");
    template["spec"]["affinity"] = json!({
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "labelSelector": {"matchLabels": {"app": "spread"}},
                "topologyKey": "kubernetes.io/hostname"
            }]
        }
    });
    api.create(&PostParams::default(), &deployment("spread", 3, template))
        .await
        .expect("create Deployment");
    wait_available(&api, "spread", 3).await;

    let pods = pods_of(&bed.client, &ns.name, "spread").await;
    let nodes: BTreeSet<_> = pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    assert_eq!(pods.len(), 3, "pods: {pods:?}");
    assert_eq!(
        nodes.len(),
        3,
        "required anti-affinity must put each pod on its own node: {nodes:?}"
    );
    for p in &pods {
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        assert!(
            ip.starts_with("10.244."),
            "kwok gives pod IPs from the bed's pod CIDR, got {ip:?}"
        );
    }
    ns.delete().await;
}

#[tokio::test]
async fn daemonset_gets_one_ready_pod_per_node() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("smoke-daemonset").await;
    let api: Api<DaemonSet> = Api::namespaced(bed.client.clone(), &ns.name);
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "per-node"},
        "spec": {"selector": {"matchLabels": {"app": "per-node"}}, "template": pod_template("per-node")}
    }))
    .expect("valid DaemonSet");
    api.create(&PostParams::default(), &ds).await.expect("create DaemonSet");
    wait_for("DaemonSet per-node to have 3 ready pods", TIMEOUT, || async {
        let s = api
            .get("per-node")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if s.desired_number_scheduled == 3 && s.number_ready == 3 && s.number_available == Some(3) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let pods = pods_of(&bed.client, &ns.name, "per-node").await;
    let nodes: BTreeSet<_> = pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    assert_eq!(nodes.len(), 3, "one pod per node: {nodes:?}");
    ns.delete().await;
}

#[tokio::test]
async fn hpa_is_accepted_and_pdb_status_is_computed() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("smoke-pdb").await;
    let deploys: Api<Deployment> = Api::namespaced(bed.client.clone(), &ns.name);
    deploys
        .create(
            &PostParams::default(),
            &deployment("guarded", 3, pod_template("guarded")),
        )
        .await
        .expect("create Deployment");

    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(bed.client.clone(), &ns.name);
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}
    }))
    .expect("valid PDB");
    pdbs.create(&PostParams::default(), &pdb).await.expect("create PDB");

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(bed.client.clone(), &ns.name);
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "guarded"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "guarded"},
            "minReplicas": 3,
            "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }
    }))
    .expect("valid HPA");
    hpas.create(&PostParams::default(), &hpa).await.expect("create HPA");
    let stored = hpas.get("guarded").await.expect("read HPA back");
    let spec = stored.spec.expect("HPA has a spec");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(3), 5));

    // The disruption controller computes the PDB's status from the Deployment's Ready pods.
    wait_for("the disruption controller to compute PDB guarded", TIMEOUT, || async {
        let p = pdbs.get("guarded").await.map_err(|e| e.to_string())?;
        let s = p.status.clone().unwrap_or_default();
        let observed = s.observed_generation == p.metadata.generation;
        if observed
            && s.expected_pods == 3
            && s.current_healthy == 3
            && s.desired_healthy == 2
            && s.disruptions_allowed == 1
        {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    ns.delete().await;
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("smoke-gc").await;
    let deploys: Api<Deployment> = Api::namespaced(bed.client.clone(), &ns.name);
    deploys
        .create(&PostParams::default(), &deployment("owner", 2, pod_template("owner")))
        .await
        .expect("create Deployment");
    wait_available(&deploys, "owner", 2).await;

    // A dependent we own by hand, as the operator will own its objects.
    let owner = deploys.get("owner").await.expect("get Deployment");
    let cms: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &ns.name);
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": "owner",
                "uid": owner.metadata.uid, "controller": true, "blockOwnerDeletion": true
            }]
        }
    }))
    .expect("valid ConfigMap");
    cms.create(&PostParams::default(), &cm).await.expect("create dependent");

    deploys
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete Deployment");
    let replicasets: Api<ReplicaSet> = Api::namespaced(bed.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &ns.name);
    wait_for("the garbage collector to remove the dependents", TIMEOUT, || async {
        let rs = replicasets
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        let pod_count = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        let cm = cms.get_opt("dependent").await.map_err(|e| e.to_string())?.is_some();
        if rs == 0 && pod_count == 0 && !cm {
            Ok(())
        } else {
            Err(format!("replicasets={rs} pods={pod_count} configmap present={cm}"))
        }
    })
    .await;
    ns.delete().await;
}

/// Runs `e2e/cluster ARGS`, failing the test with its output when it fails.
fn cluster(args: &[&str]) -> String {
    let out = Command::new(repo_root().join("e2e/cluster"))
        .args(args)
        .output()
        .expect("run e2e/cluster");
    assert!(
        out.status.success(),
        "e2e/cluster {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Stops the second cluster even when an assertion fails.
struct Down(&'static str);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("e2e/cluster"))
            .args(["down", self.0])
            .output();
    }
}

#[tokio::test]
async fn a_second_cluster_runs_beside_the_first_and_is_independent() {
    const SECOND: &str = "weft-second";
    let first = Bed::connect().await;
    let guard = Down(SECOND);
    let kubeconfig = cluster(&["up", SECOND]);
    assert!(
        kubeconfig.ends_with(&format!("{SECOND}/kubeconfig")),
        "up prints the kubeconfig path: {kubeconfig}"
    );
    let second = Bed::connect_to(SECOND).await;

    let server = |b: &Bed| {
        b.kubectl(&[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ])
    };
    let (a, b) = (
        server(&first).expect("first server"),
        server(&second).expect("second server"),
    );
    assert_ne!(a, b, "the clusters listen on different ports");

    let ns = second.namespace("only-in-second").await;
    let in_first: Api<Namespace> = Api::all(first.client.clone());
    assert!(
        in_first.get_opt(&ns.name).await.expect("query first cluster").is_none(),
        "a namespace created in the second cluster must not appear in the first"
    );
    let nodes: Api<Node> = Api::all(second.client.clone());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .expect("list nodes")
            .items
            .len(),
        3
    );

    drop(guard);
    assert!(
        !weft_e2e::kubeconfig_path(SECOND).exists(),
        "down removes the second cluster's state"
    );
    // The first cluster is untouched by the second one going away.
    first
        .kubectl(&["get", "--raw", "/readyz"])
        .expect("first cluster still ready");
}
