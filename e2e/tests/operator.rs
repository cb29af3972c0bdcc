//! The MeshInstall operator end to end: `weft operator` runs as a process against the test
//! bed, and each test checks what a user would see with kubectl.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use weft::api::MeshInstall;
use weft_e2e::operator::{Operator, SERIAL, condition, delete_and_wait, install_crds, mesh, owned_objects, wait_ready};
use weft_e2e::{Bed, repo_root, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn sample_becomes_ready_owns_its_objects_and_is_cleaned_up_on_delete() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "sample", &[]);

    // As a user: apply the sample and wait for Ready with kubectl.
    let sample = repo_root().join("config/samples/weft_v1alpha1_meshinstall.yaml");
    bed.kubectl(&["apply", "-f", sample.to_str().unwrap()])
        .expect("apply sample");
    let waited = bed.kubectl(&["wait", "--for=condition=Ready", "--timeout=60s", "mi/default"]);
    assert!(
        waited.is_ok(),
        "kubectl wait failed: {waited:?}\noperator log:\n{}",
        op.log_tail()
    );

    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let mi = api.get("default").await.expect("get mi");
    let uid = mi.uid().unwrap();
    let status = mi.status.clone().unwrap();
    assert_eq!(status.state.as_deref(), Some("Healthy"));
    assert_eq!(status.active_revision.as_deref(), Some("default"));
    assert!(
        status
            .tags
            .iter()
            .any(|t| t.name == "stable" && t.revision == "default"),
        "{:?}",
        status.tags
    );
    for c in &status.conditions {
        assert_eq!(c.observed_generation, mi.metadata.generation, "{c:?}");
    }

    // Every owned object exists with the MeshInstall as controller owner.
    let owned = owned_objects(&bed, "default").await;
    for kind in [
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "DaemonSet",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        assert!(
            owned.keys().any(|k| k.starts_with(&format!("{kind} "))),
            "no {kind} among {owned:?}"
        );
    }
    let deploy: Api<Deployment> = Api::namespaced(bed.client.clone(), "weft-system");
    let d = deploy.get("weft-cp-default").await.expect("control plane deployment");
    let owner = &d.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("MeshInstall", uid.as_str(), Some(true))
    );
    assert_eq!(d.status.unwrap().ready_replicas, Some(1));
    let ds: Api<DaemonSet> = Api::namespaced(bed.client.clone(), "weft-system");
    assert_eq!(
        ds.get("weft-proxy-default")
            .await
            .expect("proxy daemonset")
            .status
            .unwrap()
            .number_ready,
        3
    );

    // kubectl get mi tells the truth in its columns.
    let table = bed
        .kubectl(&["get", "mi", "default", "--no-headers"])
        .expect("kubectl get mi");
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(
        &cols[..7],
        ["default", "True", "Healthy", "1.0.0", "default", "1", "1"],
        "{table}"
    );

    // An Event tells what happened.
    let events = bed
        .kubectl(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=MeshInstall,involvedObject.name=default",
            "-o",
            "name",
        ])
        .unwrap_or_default();
    assert!(!events.trim().is_empty(), "no events recorded for the MeshInstall");

    // Deleting the MeshInstall removes everything it owned, cluster-scoped included; the
    // namespace stays.
    delete_and_wait(&bed, "default").await;
    let ns: Api<Namespace> = Api::all(bed.client.clone());
    assert!(
        ns.get_opt("weft-system").await.unwrap().is_some(),
        "the namespace is never deleted"
    );
    op.stop();
}

#[tokio::test]
async fn changing_resources_rolls_out_and_becomes_ready_again() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "rollout", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "rollout").await;
    api.create(&PostParams::default(), &mesh("rollout", "e2e-rollout", json!({})))
        .await
        .expect("create");
    wait_ready(&api, "rollout", &op).await;
    let deploy: Api<Deployment> = Api::namespaced(bed.client.clone(), "e2e-rollout");
    let before = deploy.get("weft-cp-rollout").await.unwrap();

    let patch = json!({"spec": {"controlPlane": {"resources": {"requests": {"cpu": "300m", "memory": "200Mi"}}}}});
    api.patch("rollout", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch resources");
    let mi = wait_ready(&api, "rollout", &op).await;
    assert_eq!(mi.status.unwrap().observed_generation, Some(2));
    let after = deploy.get("weft-cp-rollout").await.unwrap();
    assert!(
        after.metadata.generation > before.metadata.generation,
        "the Deployment was updated"
    );
    let requests = after.spec.unwrap().template.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .requests
        .unwrap();
    assert_eq!(requests["cpu"].0, "300m");
    let s = after.status.unwrap();
    assert_eq!(
        (s.updated_replicas, s.ready_replicas),
        (Some(1), Some(1)),
        "rolled out: {s:?}"
    );

    // Objects no longer wanted are pruned: autoscaling on adds an HPA, off removes it.
    let hpa: Api<HorizontalPodAutoscaler> = Api::namespaced(bed.client.clone(), "e2e-rollout");
    let on = json!({"spec": {"controlPlane": {"autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 3}}}});
    api.patch("rollout", &PatchParams::default(), &Patch::Merge(&on))
        .await
        .expect("enable autoscaling");
    wait_ready(&api, "rollout", &op).await;
    assert!(hpa.get_opt("weft-cp-rollout").await.unwrap().is_some(), "HPA created");
    let off = json!({"spec": {"controlPlane": {"autoscaling": {"enabled": false}}}});
    api.patch("rollout", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .expect("disable autoscaling");
    wait_for("the HPA to be pruned", TIMEOUT, || async {
        match hpa.get_opt("weft-cp-rollout").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(h) => Err(format!(
                "still there (deleting: {})",
                h.metadata.deletion_timestamp.is_some()
            )),
        }
    })
    .await;
    delete_and_wait(&bed, "rollout").await;
    assert!(op.stop().success(), "SIGTERM stops the operator cleanly");
}

#[tokio::test]
async fn ha_profile_has_pdb_hpa_and_pods_on_three_nodes() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "ha", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "ha").await;
    api.create(&PostParams::default(), &mesh("ha", "e2e-ha", json!({"profile": "ha"})))
        .await
        .expect("create");
    // The Deployment is created at minReplicas (3), not raised there later by the HPA.
    wait_for("the ha control plane to run 3 ready pods", TIMEOUT, || async {
        let d: Api<Deployment> = Api::namespaced(bed.client.clone(), "e2e-ha");
        let s = d
            .get("weft-cp-ha")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if s.ready_replicas == Some(3) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    wait_ready(&api, "ha", &op).await;
    let d: Api<Deployment> = Api::namespaced(bed.client.clone(), "e2e-ha");
    weft_e2e::operator::assert_started_at_min_replicas(&d.get("weft-cp-ha").await.expect("Deployment"));

    let pdb: Api<PodDisruptionBudget> = Api::namespaced(bed.client.clone(), "e2e-ha");
    let pdb = pdb.get("weft-cp-ha").await.expect("PDB exists");
    assert_eq!(
        pdb.spec.unwrap().min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2))
    );
    let hpa: Api<HorizontalPodAutoscaler> = Api::namespaced(bed.client.clone(), "e2e-ha");
    let hpa = hpa.get("weft-cp-ha").await.expect("HPA exists").spec.unwrap();
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 5));
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), "e2e-ha");
    let pods = pods
        .list(&ListParams::default().labels("weft.dev/component=control-plane"))
        .await
        .unwrap()
        .items;
    let nodes: std::collections::BTreeSet<_> = pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    assert_eq!(nodes.len(), 3, "one control-plane pod per node: {nodes:?}");
    let affinity = pods[0].spec.as_ref().unwrap().affinity.clone().unwrap();
    assert!(
        affinity
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .is_some()
    );
    delete_and_wait(&bed, "ha").await;
    op.stop();
}

#[tokio::test]
async fn deleted_and_edited_objects_are_restored() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "restore", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "restore").await;
    api.create(&PostParams::default(), &mesh("restore", "e2e-restore", json!({})))
        .await
        .expect("create");
    wait_ready(&api, "restore", &op).await;

    let deploy: Api<Deployment> = Api::namespaced(bed.client.clone(), "e2e-restore");
    let old_uid = deploy.get("weft-cp-restore").await.unwrap().uid();
    deploy
        .delete("weft-cp-restore", &DeleteParams::default())
        .await
        .expect("delete deployment");
    wait_for(
        "the deleted Deployment to be recreated",
        Duration::from_secs(15),
        || async {
            match deploy.get_opt("weft-cp-restore").await.map_err(|e| e.to_string())? {
                Some(d) if d.uid() != old_uid => Ok(()),
                other => Err(format!("uid {:?}", other.map(|d| d.uid()))),
            }
        },
    )
    .await;

    // A hand edit of fields the operator manages: a port's target and the selector.
    let svc: Api<Service> = Api::namespaced(bed.client.clone(), "e2e-restore");
    let edit =
        json!({"spec": {"ports": [{"port": 15010, "targetPort": 9999}], "selector": {"weft.dev/rev": "someone-else"}}});
    svc.patch("weft-cp-restore", &PatchParams::default(), &Patch::Strategic(&edit))
        .await
        .expect("edit service");
    wait_for("the edited Service to be restored", Duration::from_secs(15), || async {
        let spec = svc
            .get("weft-cp-restore")
            .await
            .map_err(|e| e.to_string())?
            .spec
            .unwrap();
        let targets: Vec<String> = spec
            .ports
            .unwrap()
            .iter()
            .map(|p| format!("{}->{:?}", p.port, p.target_port))
            .collect();
        let rev = spec.selector.unwrap_or_default().get("weft.dev/rev").cloned();
        if targets
            == [
                "15010->Some(Int(15010))",
                "15012->Some(Int(15012))",
                "15014->Some(Int(15014))",
            ]
            && rev.as_deref() == Some("restore")
        {
            Ok(())
        } else {
            Err(format!("ports {targets:?} selector rev {rev:?}"))
        }
    })
    .await;
    delete_and_wait(&bed, "restore").await;
    op.stop();
}

#[tokio::test]
async fn invalid_spec_is_rejected_at_admission_with_the_cel_message() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let manifest = repo_root()
        .join("e2e/.clusters")
        .join(&bed.name)
        .join("invalid-mi.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: weft.dev/v1alpha1\nkind: MeshInstall\nmetadata: {name: invalid}\nspec:\n  version: 1.0.0\n  controlPlane:\n    autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 2}\n",
    )
    .unwrap();
    let err = bed
        .kubectl(&["apply", "-f", manifest.to_str().unwrap()])
        .expect_err("the API server must refuse min > max");
    assert!(
        err.contains("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"),
        "{err}"
    );
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    assert!(api.get_opt("invalid").await.unwrap().is_none(), "nothing was stored");
}

#[tokio::test]
async fn unsupported_version_stalls_and_leaves_the_running_revision_alone() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "stall", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "stall").await;
    api.create(&PostParams::default(), &mesh("stall", "e2e-stall", json!({})))
        .await
        .expect("create");
    wait_ready(&api, "stall", &op).await;
    let deploy: Api<Deployment> = Api::namespaced(bed.client.clone(), "e2e-stall");
    let before = deploy.get("weft-cp-stall").await.unwrap();

    api.patch(
        "stall",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"version": "9.9.9"}})),
    )
    .await
    .expect("patch version");
    let mi = wait_for("the MeshInstall to be Stalled", TIMEOUT, || async {
        let mi = api.get("stall").await.map_err(|e| e.to_string())?;
        match condition(&mi, "Stalled") {
            Some((s, r, _)) if s == "True" && r == "UnsupportedVersion" => Ok(mi),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (_, _, message) = condition(&mi, "Stalled").unwrap();
    assert!(
        message.contains("9.9.9") && message.contains("1.0.0, 1.1.0"),
        "{message}"
    );
    assert_eq!(
        condition(&mi, "Reconciling").unwrap().0,
        "False",
        "never Stalled and Reconciling together"
    );
    let status = mi.status.unwrap();
    assert!(
        status
            .revisions
            .iter()
            .any(|r| r.name == "stall" && r.ready && r.version == "1.0.0"),
        "{:?}",
        status.revisions
    );
    let after = deploy.get("weft-cp-stall").await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the running control plane was not touched"
    );
    assert_eq!(after.status.unwrap().ready_replicas, Some(1));

    // Fixing the version recovers.
    api.patch(
        "stall",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"version": "1.0.0"}})),
    )
    .await
    .expect("patch version back");
    wait_ready(&api, "stall", &op).await;
    delete_and_wait(&bed, "stall").await;
    op.stop();
}

#[tokio::test]
async fn a_restarted_operator_with_nothing_changed_writes_nothing() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let first = Operator::start(&bed, "steady-a", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "steady").await;
    api.create(
        &PostParams::default(),
        &mesh("steady", "e2e-steady", json!({"profile": "ha"})),
    )
    .await
    .expect("create");
    // A RemoteCluster of the mesh: its Secret is in the control plane's Role, which a
    // restarted operator must not render before it has listed the RemoteClusters.
    let remote: weft::api::RemoteCluster = serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "RemoteCluster",
        "metadata": {"name": "west", "namespace": "e2e-steady"},
        "spec": {"mesh": "steady", "clusterName": "west", "kubeconfigSecretRef": {"name": "weft-remote-west"}}
    }))
    .expect("a RemoteCluster");
    let remotes: Api<weft::api::RemoteCluster> = Api::namespaced(bed.client.clone(), "e2e-steady");
    wait_for("the namespace to take a RemoteCluster", TIMEOUT, || async {
        match remotes.create(&PostParams::default(), &remote).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(bed.client.clone(), "e2e-steady");
    wait_for("the Role to name the RemoteCluster's Secret", TIMEOUT, || async {
        let role = roles.get("weft-cp-steady").await.map_err(|e| e.to_string())?;
        let text = serde_json::to_string(&role.rules).unwrap_or_default();
        if text.contains("weft-remote-west") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    wait_ready(&api, "steady", &first).await;
    first.stop();
    let before = owned_objects(&bed, "steady").await;
    let mi_version = api.get("steady").await.unwrap().resource_version();

    let second = Operator::start(&bed, "steady-b", &[]);
    // Settled: it leads, has reconciled, and nothing is queued or running.
    wait_for("the restarted operator to reconcile and settle", TIMEOUT, || async {
        let m = second.metrics()?;
        let sum = |p: &str| weft_e2e::operator::sum_metric(&m, p);
        let led = sum("leader_election_master_status") == 1.0;
        let reconciled =
            sum("controller_runtime_reconcile_total{controller=\"meshinstall\",result=\"success\"}") >= 1.0;
        let idle = sum("workqueue_depth") == 0.0 && sum("controller_runtime_active_workers") == 0.0;
        if led && reconciled && idle {
            Ok(())
        } else {
            Err(format!("led={led} reconciled={reconciled} idle={idle}"))
        }
    })
    .await;
    let writes = second.metric_sum("weft_api_writes_total").expect("metrics");
    assert_eq!(
        writes,
        0.0,
        "writes after restart:\n{}",
        second.metrics().unwrap_or_default()
    );
    let after = owned_objects(&bed, "steady").await;
    assert_eq!(before, after, "no owned object changed");
    assert_eq!(
        api.get("steady").await.unwrap().resource_version(),
        mi_version,
        "the MeshInstall was not written"
    );

    // The metrics carry controller-runtime's names.
    let text = second.metrics().unwrap();
    for name in [
        "controller_runtime_reconcile_total",
        "controller_runtime_reconcile_time_seconds_bucket",
        "workqueue_depth",
        "leader_election_master_status",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let (code, _) = second.get(second.health_port, "/readyz").expect("readyz");
    assert_eq!(code, 200);
    let _ = remotes.delete("west", &DeleteParams::default()).await;
    delete_and_wait(&bed, "steady").await;
    second.stop();
}

#[tokio::test]
async fn two_operators_elect_one_leader_and_fail_over() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let a = Operator::start(&bed, "elect-a", &[]);
    let b = Operator::start(&bed, "elect-b", &[]);
    let leaders = |a: &Operator, b: &Operator| -> Result<(bool, bool), String> {
        Ok((
            a.metric_sum("leader_election_master_status")? == 1.0,
            b.metric_sum("leader_election_master_status")? == 1.0,
        ))
    };
    let (a_leads, _) = wait_for("exactly one leader", TIMEOUT, || async {
        match leaders(&a, &b)? {
            (x, y) if x != y => Ok((x, y)),
            // The logs say what each one believes, should this ever time out.
            other => Err(format!(
                "leading (a, b) = {other:?}\n--- a:\n{}\n--- b:\n{}",
                a.log_tail(),
                b.log_tail()
            )),
        }
    })
    .await;
    let (leader, standby) = if a_leads { (a, b) } else { (b, a) };
    assert_eq!(
        standby.metric_sum("controller_runtime_reconcile_total").unwrap(),
        0.0,
        "the standby does not reconcile"
    );

    leader.kill();
    wait_for("the standby to take over", Duration::from_secs(30), || async {
        if standby.metric_sum("leader_election_master_status")? == 1.0 {
            Ok(())
        } else {
            Err("not leading yet".to_string())
        }
    })
    .await;
    // And it does the work.
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "failover").await;
    api.create(&PostParams::default(), &mesh("failover", "e2e-failover", json!({})))
        .await
        .expect("create");
    wait_ready(&api, "failover", &standby).await;
    delete_and_wait(&bed, "failover").await;
    standby.stop();
}

#[tokio::test]
async fn kustomize_and_helm_packages_pass_a_server_side_dry_run() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    // Namespaced objects are dry-run into the namespace, which must exist.
    let _ = bed.kubectl(&["create", "namespace", "weft-system"]);
    let kustomize = repo_root().join("config/default");
    let out = bed.kubectl(&[
        "apply",
        "--dry-run=server",
        "--server-side",
        "--field-manager=weft-e2e",
        "-k",
        kustomize.to_str().unwrap(),
    ]);
    let out = out.expect("config/default must pass a server-side dry run");
    for kind in [
        "customresourcedefinition",
        "clusterrole",
        "deployment.apps/weft-operator",
        "service/weft-operator-metrics",
        "validatingadmissionpolicy.admissionregistration.k8s.io/weft-operator-rbac",
        "validatingadmissionpolicy.admissionregistration.k8s.io/weft-operator-objects",
        "networkpolicy.networking.k8s.io/weft-operator",
    ] {
        assert!(
            out.to_lowercase().contains(kind),
            "{kind} not in dry-run output:\n{out}"
        );
    }

    let chart = repo_root().join("deploy/helm/weft-operator");
    let rendered = std::process::Command::new(weft_e2e::helm_path())
        .args(["template", "weft", chart.to_str().unwrap(), "--namespace", "weft-system", "--include-crds"])
        .args(["--set", "extraVersions[0].version=1.2.0,extraVersions[0].images.controlPlane=example.org/cp:1.2.0,extraVersions[0].images.proxy=example.org/proxy:1"])
        // The image policy is off by default; render it so the API server checks it too.
        .args(["--set", "imagePolicy.enabled=true"])
        .output()
        .expect("run helm");
    assert!(
        rendered.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let file = repo_root()
        .join("e2e/.clusters")
        .join(&bed.name)
        .join("helm-rendered.yaml");
    std::fs::write(&file, &rendered.stdout).unwrap();
    let out = bed
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "--server-side",
            "--field-manager=weft-e2e",
            "-n",
            "weft-system",
            "-f",
            file.to_str().unwrap(),
        ])
        .expect("the Helm chart must pass a server-side dry run");
    for kind in [
        "customresourcedefinition",
        "clusterrole",
        "deployment.apps/weft-operator",
        "configmap/weft-operator-versions",
        "validatingadmissionpolicy.admissionregistration.k8s.io/weft-operator-rbac",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/weft-image-overrides",
        "networkpolicy.networking.k8s.io/weft-operator",
    ] {
        assert!(
            out.to_lowercase().contains(kind),
            "{kind} not in dry-run output:\n{out}"
        );
    }
}

/// Waits until the MeshInstall is Stalled with `reason` for its current generation, and
/// returns the message.
async fn stalled_with(api: &Api<MeshInstall>, name: &str, reason: &str, op: &Operator) -> String {
    wait_for(
        &format!("MeshInstall {name} to be Stalled with {reason}"),
        TIMEOUT,
        || async {
            let mi = api.get(name).await.map_err(|e| e.to_string())?;
            let current = mi.status.as_ref().and_then(|s| s.observed_generation) == mi.metadata.generation;
            match condition(&mi, "Stalled") {
                Some((s, r, m)) if s == "True" && r == reason && current => Ok(m),
                other => Err(format!("Stalled={other:?}\noperator log:\n{}", op.log_tail())),
            }
        },
    )
    .await
}

/// Name conflicts a schema cannot see, each a Stalled condition with a message, and nothing
/// of the stalled MeshInstall is installed: a newer MeshInstall named `default` (the
/// implicit tag of the oldest), a tag named like the MeshInstall's own revision, a tag
/// pinned to a revision that does not exist (fixed, it recovers).
#[tokio::test]
async fn name_conflicts_and_dangling_tags_stall_with_a_message() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "names", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    for name in ["a-first", "default", "nc-self", "nc-pin"] {
        delete_and_wait(&bed, name).await;
    }
    // "a-first" sorts before the others, so it is the oldest even within one second.
    let minimal = || json!({"profile": "minimal"});
    api.create(&PostParams::default(), &mesh("a-first", "e2e-nc-first", minimal()))
        .await
        .expect("create the oldest mesh");
    wait_ready(&api, "a-first", &op).await;

    api.create(&PostParams::default(), &mesh("default", "e2e-nc-default", minimal()))
        .await
        .expect("create a newer mesh named default");
    let message = stalled_with(&api, "default", "NameConflict", &op).await;
    assert!(
        message.contains("revision name default is the implicit tag default, which belongs to the oldest MeshInstall"),
        "{message}"
    );

    let own_tag = json!({"profile": "minimal", "revisionTags": [{"name": "nc-self"}]});
    api.create(&PostParams::default(), &mesh("nc-self", "e2e-nc-self", own_tag))
        .await
        .expect("create a mesh with a tag named like its revision");
    let message = stalled_with(&api, "nc-self", "NameConflict", &op).await;
    assert!(message.contains("tag nc-self has the name of a revision"), "{message}");

    let dangling = json!({"profile": "minimal", "revisionTags": [{"name": "nc-pin-old", "target": "nc-pin-v0-9-0"}]});
    api.create(&PostParams::default(), &mesh("nc-pin", "e2e-nc-pin", dangling))
        .await
        .expect("create a mesh with a dangling tag");
    let message = stalled_with(&api, "nc-pin", "TagTargetNotFound", &op).await;
    assert!(
        message.contains("tag nc-pin-old targets revision nc-pin-v0-9-0"),
        "{message}"
    );
    for name in ["default", "nc-self", "nc-pin"] {
        let left = owned_objects(&bed, name).await;
        assert!(left.is_empty(), "stalled {name} installed objects: {left:?}");
    }

    // Fixed, it installs and becomes Ready.
    api.patch(
        "nc-pin",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"revisionTags": [{"name": "nc-pin-old", "target": "Active"}]}})),
    )
    .await
    .expect("fix the tag");
    let mi = wait_ready(&api, "nc-pin", &op).await;
    let tags = mi.status.unwrap().tags;
    assert!(
        tags.iter().any(|t| t.name == "nc-pin-old" && t.revision == "nc-pin"),
        "{tags:?}"
    );
    for name in ["nc-pin", "nc-self", "default", "a-first"] {
        delete_and_wait(&bed, name).await;
    }
    op.stop();
}

/// Primary-remote, the remote side: a MeshInstall whose control plane runs in another
/// cluster installs no control plane, only node proxies (and gateways) bootstrapped to that
/// address, and is Ready when they are.
#[tokio::test]
async fn an_external_control_plane_installs_only_proxies_bootstrapped_to_it() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "external", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "ext").await;
    const ADDRESS: &str = "eastwest.primary.example.com:15443";
    let spec = json!({
        "controlPlane": {"external": {"address": ADDRESS}},
        "meshConfig": {"clusterName": "c", "network": "net-c"}
    });
    api.create(&PostParams::default(), &mesh("ext", "e2e-ext", spec))
        .await
        .expect("create a mesh with an external control plane");
    let mi = wait_ready(&api, "ext", &op).await;
    let ready = condition(&mi, "Ready").expect("a Ready condition");
    assert!(
        ready.2.contains(&format!("control plane external at {ADDRESS}")),
        "{ready:?}"
    );

    let owned = owned_objects(&bed, "ext").await;
    let kinds: Vec<&str> = owned.keys().map(|k| k.split(' ').next().unwrap_or_default()).collect();
    for absent in ["Deployment", "Role", "ClusterRole"] {
        assert!(!kinds.contains(&absent), "a {absent} was installed: {owned:?}");
    }
    // The node proxies' own Service and NetworkPolicy, none of a control plane.
    for kind in ["Service", "NetworkPolicy"] {
        let names: Vec<&String> = owned.keys().filter(|k| k.starts_with(&format!("{kind} "))).collect();
        assert!(
            names.iter().all(|k| k.ends_with("/weft-proxy-ext")),
            "a control plane's {kind} was installed: {owned:?}"
        );
    }
    assert!(kinds.contains(&"DaemonSet"), "no node proxies: {owned:?}");

    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(bed.client.clone(), "e2e-ext");
    let bootstrap = maps.get("weft-proxy-ext").await.expect("the proxies' bootstrap");
    let text = bootstrap
        .data
        .unwrap_or_default()
        .remove("bootstrap.json")
        .unwrap_or_default();
    let b: serde_json::Value = serde_json::from_str(&text).expect("bootstrap JSON");
    let socket = &b["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    assert_eq!(
        (socket["address"].as_str(), socket["port_value"].as_u64()),
        (Some("eastwest.primary.example.com"), Some(15443)),
        "{b}"
    );
    assert_eq!(b["node"]["metadata"]["CLUSTER"], "c");
    assert_eq!(b["node"]["metadata"]["NETWORK"], "net-c");

    // A gateway of that mesh is bootstrapped to the same address.
    let gateways: Api<weft::api::MeshGateway> = Api::namespaced(bed.client.clone(), "e2e-ext");
    let gw: weft::api::MeshGateway = serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
        "metadata": {"name": "ingress", "namespace": "e2e-ext"},
        // The revision by name: the implicit `default` tag is the oldest mesh's.
        "spec": {"mesh": "ext", "revision": "ext"}
    }))
    .expect("a MeshGateway");
    gateways
        .create(&PostParams::default(), &gw)
        .await
        .expect("create a gateway");
    let text = wait_for("the gateway's bootstrap", Duration::from_secs(30), || {
        let maps = maps.clone();
        async move {
            let cm = maps.get("ingress-bootstrap").await.map_err(|e| e.to_string())?;
            cm.data
                .and_then(|mut d| d.remove("bootstrap.json"))
                .ok_or_else(|| "no bootstrap.json yet".to_string())
        }
    })
    .await;
    assert!(
        text.contains("eastwest.primary.example.com") && text.contains("15443"),
        "{text}"
    );
    gateways
        .delete("ingress", &DeleteParams::default())
        .await
        .expect("delete the gateway");
    delete_and_wait(&bed, "ext").await;
    op.stop();
}

/// Run outside a cluster against a fresh one, the operator says in one line that its
/// Lease's namespace is missing and what to do, and exits, instead of retrying API errors.
#[tokio::test]
async fn a_missing_lease_namespace_is_one_line_saying_what_to_do() {
    let bed = Bed::connect().await;
    install_crds(&bed);
    let mut op = Operator::start(&bed, "no-lease-ns", &["--leader-election-namespace", "weft-nowhere"]);
    wait_for("the operator to exit", TIMEOUT, || {
        let running = op.running();
        async move { if running { Err("still running") } else { Ok(()) } }
    })
    .await;
    let log = op.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("weft-nowhere")).collect();
    assert_eq!(
        lines,
        [
            "error: the leader-election namespace weft-nowhere does not exist in this cluster: create it (kubectl create namespace weft-nowhere) or name another with --leader-election-namespace"
        ],
        "{log}"
    );
    assert!(!log.contains("ApiError"), "{log}");
}
