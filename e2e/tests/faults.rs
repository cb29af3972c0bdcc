//! Faults on the real test bed: the API server or etcd goes away under a running operator
//! and control plane. Each test breaks a cluster of its own (so the other suites never see
//! it) and asserts what a user sees and that nothing was lost: the uid and version of every
//! owned object, and the operator's write counter.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, ResourceQuota, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use weft::api::MeshInstall;
use weft::api::mesh_install::MeshInstallStatus;
use weft_e2e::control_plane::{ControlPlane, next, node, stream};
use weft_e2e::operator::{Operator, condition, delete_and_wait, install_crds, mesh, owned_objects, wait_ready};
use weft_e2e::{OwnCluster, http_get, repo_root, wait_for};

const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// Longer than any retry of a failed watch or lease (8 s), with room for a loaded machine.
const RECOVERY: Duration = Duration::from_secs(45);

/// Whether the operator leads, by its metric.
fn leads(op: &Operator) -> Result<bool, String> {
    Ok(op.metric_sum("leader_election_master_status")? == 1.0)
}

/// `/readyz`: its status code and body.
fn readyz(op: &Operator) -> Result<(u16, String), String> {
    op.get(op.health_port, "/readyz")
}

/// Waits until the operator leads, has nothing queued or running, and says it is ready.
async fn settled(op: &Operator, what: &str) {
    wait_for(what, RECOVERY, || async {
        let m = op.metrics()?;
        let sum = |p: &str| weft_e2e::operator::sum_metric(&m, p);
        let (code, body) = readyz(op)?;
        let leading = sum("leader_election_master_status") == 1.0;
        let idle = sum("workqueue_depth") == 0.0 && sum("controller_runtime_active_workers") == 0.0;
        if leading && idle && code == 200 {
            Ok(())
        } else {
            Err(format!(
                "leading={leading} idle={idle} readyz={code} {body}\n{}",
                op.log_tail()
            ))
        }
    })
    .await;
}

#[tokio::test]
async fn an_api_server_gone_longer_than_the_lease_loses_nothing_and_the_operator_steps_down_and_back() {
    let (cluster, bed) = OwnCluster::up("weft-fault-api").await;
    install_crds(&bed);
    let mut op = Operator::start(&bed, "fault-api", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    api.create(&PostParams::default(), &mesh("outage", "e2e-outage", json!({})))
        .await
        .expect("create");
    wait_ready(&api, "outage", &op).await;
    settled(&op, "the operator to settle").await;
    let before = owned_objects(&bed, "outage").await;

    // A change, and the API server gone before (or while) it is reconciled.
    let change = json!({"spec": {"controlPlane": {"resources": {"requests": {"cpu": "150m"}}}}});
    api.patch("outage", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("patch");
    cluster.stop("kube-apiserver");

    // Longer than the lease (4 s): the operator must stop believing it leads, and say why
    // it is not ready.
    wait_for("the operator to step down and report why", RECOVERY, || async {
        let (code, body) = readyz(&op)?;
        match (leads(&op)?, code) {
            (false, 503) if body.contains("Lease") => Ok(()),
            seen => Err(format!("(leading, readyz) = {seen:?} {body}\n{}", op.log_tail())),
        }
    })
    .await;
    assert!(op.running(), "the operator keeps running without its API server");

    cluster.start("kube-apiserver");
    let mi = wait_ready(&api, "outage", &op).await;
    settled(&op, "the operator to lead again and settle").await;
    assert!(op.running(), "no crash");

    // Nothing deleted or recreated; only the changed Deployment moved on.
    let after = owned_objects(&bed, "outage").await;
    let changed: Vec<&String> = before.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
    assert_eq!(before.len(), after.len(), "before {before:#?}\nafter {after:#?}");
    assert!(
        changed.iter().all(|k| k.starts_with("Deployment ")),
        "only the control-plane Deployment changes: {changed:?}"
    );
    let uid = |m: &std::collections::BTreeMap<String, String>, k: &String| {
        m.get(k).and_then(|v| v.split_whitespace().nth(1).map(String::from))
    };
    for k in before.keys() {
        assert_eq!(uid(&before, k), uid(&after, k), "{k} was recreated");
    }
    assert_eq!(
        mi.status.as_ref().and_then(|s| s.observed_generation),
        mi.metadata.generation,
        "the change was acted on"
    );
    op.stop();
}

#[tokio::test]
async fn after_etcd_restarts_and_compacts_under_an_api_server_restart_changes_are_acted_on_within_seconds() {
    let (cluster, bed) = OwnCluster::up("weft-fault-410").await;
    install_crds(&bed);
    // A lease long enough to outlast the restarts below: the operator keeps leading, so its
    // watches (not new ones) must find their way back.
    let op = Operator::start(&bed, "fault-410", &["--lease-duration", "60", "--lease-grace", "10"]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    api.create(&PostParams::default(), &mesh("relist", "e2e-relist", json!({})))
        .await
        .expect("create");
    wait_ready(&api, "relist", &op).await;
    settled(&op, "the operator to settle").await;
    let before = owned_objects(&bed, "relist").await;
    let writes = op.metric_sum("weft_api_writes_total").expect("metrics");
    let errors = op.metric_sum("weft_watch_errors_total").expect("metrics");

    // Every watch must resume from a version etcd no longer has: 410 Gone, then a re-list.
    let restart = || {
        cluster.stop("kube-apiserver");
        cluster.stop("etcd");
        cluster.start("etcd");
        cluster.compact();
        cluster.start("kube-apiserver");
    };
    restart();
    settled(&op, "every watch to flow again").await;
    assert!(
        op.metric_sum("weft_watch_errors_total").expect("metrics") > errors,
        "the watches failed and re-listed (else this test proves nothing)"
    );
    // Re-listing changed nothing: no spurious deletes, no burst of writes.
    assert_eq!(owned_objects(&bed, "relist").await, before, "owned objects unchanged");
    assert_eq!(
        op.metric_sum("weft_api_writes_total").expect("metrics"),
        writes,
        "no writes after the re-list:\n{}",
        op.metrics().unwrap_or_default()
    );

    // Again, and a spec change as soon as the API server is back is acted on within
    // seconds: it once waited nine minutes, while every owned watch's 410 paused the
    // controller's triggers in turn.
    restart();
    let started = Instant::now();
    let change = json!({"spec": {"controlPlane": {"resources": {"requests": {"cpu": "160m"}}}}});
    api.patch("relist", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("patch");
    wait_for("the change to be acted on", Duration::from_secs(30), || async {
        let mi = api.get("relist").await.map_err(|e| e.to_string())?;
        let observed = mi.status.as_ref().and_then(|s| s.observed_generation);
        if observed == mi.metadata.generation {
            Ok(())
        } else {
            Err(format!(
                "observedGeneration {observed:?} of {:?}\n{}",
                mi.metadata.generation,
                op.log_tail()
            ))
        }
    })
    .await;
    println!("change acted on {:?} after it was made", started.elapsed());
    op.stop();
}

/// The endpoint addresses in an EDS response.
fn endpoint_addresses(resp: &DiscoveryResponse) -> Vec<String> {
    let mut out: Vec<String> = resp
        .resources
        .iter()
        .filter_map(|r| ClusterLoadAssignment::decode(r.value.as_slice()).ok())
        .flat_map(|cla| cla.endpoints)
        .flat_map(|l| l.lb_endpoints)
        .filter_map(|e| match e.host_identifier? {
            HostIdentifier::Endpoint(e) => match e.address?.address? {
                Address::SocketAddress(s) => Some(s.address),
                _ => None,
            },
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// A fresh client's view of one cluster's endpoints: a new stream asks EDS for `cluster`.
async fn served_endpoints(cp: &ControlPlane, revision: &str, cluster: &str) -> Vec<String> {
    let (tx, mut rx) = stream(cp.xds).await;
    tx.send(DiscoveryRequest {
        node: Some(node(revision)),
        type_url: EDS.into(),
        resource_names: vec![cluster.to_string()],
        ..Default::default()
    })
    .await
    .expect("send EDS request");
    endpoint_addresses(&next(&mut rx).await)
}

#[tokio::test]
async fn a_control_plane_without_its_api_server_keeps_serving_and_says_why_it_is_not_ready() {
    let (cluster, bed) = OwnCluster::up("weft-fault-cp").await;
    let ns = bed.namespace("cp-outage").await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}
    }))
    .expect("service");
    Api::<Service>::namespaced(bed.client.clone(), &ns.name)
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    // Documentation addresses (RFC 5737): served as data, never connected to.
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["198.51.100.10"]}, {"addresses": ["198.51.100.11"]}]
    }))
    .expect("slice");
    Api::<EndpointSlice>::namespaced(bed.client.clone(), &ns.name)
        .create(&PostParams::default(), &slice)
        .await
        .expect("create endpointslice");
    let cp = ControlPlane::start(&bed, "outage");
    cp.wait_ready().await;
    let eds = format!("outbound|50051||echo.{}.svc.cluster.local", ns.name);
    let expected = ["198.51.100.10", "198.51.100.11"];
    wait_for("the endpoints to be served", RECOVERY, || async {
        match served_endpoints(&cp, "outage", &eds).await {
            seen if seen == expected => Ok(()),
            seen => Err(seen),
        }
    })
    .await;

    cluster.stop("kube-apiserver");
    wait_for("/ready to say which watch fails", RECOVERY, || async {
        match cp.ready()? {
            (503, body) if body.contains("EndpointSlice") => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;
    // The last good configuration is still served, to clients already connected and new ones.
    assert_eq!(served_endpoints(&cp, "outage", &eds).await, expected);
    let (_, metrics) = http_get(cp.monitoring, "/metrics").expect("metrics");
    assert!(
        metrics.contains("weft_watch_up{watch=\"EndpointSlice\"} 0"),
        "the metric says the watch is down:\n{metrics}"
    );

    cluster.start("kube-apiserver");
    cp.wait_ready().await;
    assert_eq!(
        served_endpoints(&cp, "outage", &eds).await,
        expected,
        "the re-list did not empty or change any endpoint list"
    );
}

/// The points of a canary upgrade at which the operator is killed, each recognised in
/// status (which is where every step is recorded first).
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The new revision is installed.
    Created,
    /// The canary tag follows it.
    TagMoved,
    /// It is active.
    Promoted,
    /// The old revision is gone from status.
    Pruned,
}

impl Step {
    fn reached(self, s: &MeshInstallStatus, old: &str, new: &str, canary: &str) -> bool {
        let listed = |r: &str| s.revisions.iter().any(|x| x.name == r);
        match self {
            Step::Created => listed(new),
            Step::TagMoved => s.tags.iter().any(|t| t.name == canary && t.revision == new),
            Step::Promoted => s.active_revision.as_deref() == Some(new),
            Step::Pruned => listed(new) && !listed(old),
        }
    }
}

/// Each (reason, message) of the MeshInstall's Events and how often it happened.
async fn event_counts(bed: &weft_e2e::Bed, mesh: &str) -> BTreeMap<(String, String), i32> {
    let api: Api<Event> = Api::all(bed.client.clone());
    let lp = ListParams::default().fields(&format!("involvedObject.name={mesh},involvedObject.kind=MeshInstall"));
    let mut out = BTreeMap::new();
    for e in api.list(&lp).await.expect("events").items {
        let n = e
            .series
            .as_ref()
            .and_then(|s| s.count)
            .unwrap_or(0)
            .max(e.count.unwrap_or(1));
        *out.entry((e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .or_default() += n;
    }
    out
}

#[tokio::test]
async fn an_operator_killed_at_each_step_of_an_upgrade_completes_it_exactly_once() {
    let (_cluster, bed) = OwnCluster::up("weft-fault-kill").await;
    install_crds(&bed);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let steps = [Step::Created, Step::TagMoved, Step::Promoted, Step::Pruned];
    for (i, step) in steps.into_iter().enumerate() {
        let name = format!("kill{i}");
        let (old, new, canary) = (
            format!("{name}-v1-0-0"),
            format!("{name}-v1-1-0"),
            format!("{name}-canary"),
        );
        let first = Operator::start(&bed, &format!("{name}-a"), &[]);
        let spec = json!({
            "profile": "minimal",
            "updateStrategy": {
                "type": "RevisionBased",
                "inactiveRevisionDeletionGracePeriodSeconds": 1,
                "promotion": {"minReadySeconds": 2, "progressDeadlineSeconds": 120}
            },
            "revisionTags": [{"name": format!("{name}-stable"), "target": "Active"}, {"name": canary, "target": "Latest"}]
        });
        api.create(&PostParams::default(), &mesh(&name, &format!("e2e-{name}"), spec))
            .await
            .expect("create");
        wait_ready(&api, &name, &first).await;
        let patch = json!({"spec": {"version": "1.1.0"}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("upgrade");
        wait_for(&format!("{step:?} before the kill"), RECOVERY, || async {
            let mi = api.get(&name).await.map_err(|e| e.to_string())?;
            let s = mi.status.unwrap_or_default();
            if step.reached(&s, &old, &new, &canary) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
        first.kill();
        let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), &format!("e2e-{name}"));
        let uid = |d: Option<Deployment>| d.and_then(|d| d.uid());
        let new_cp = format!("weft-cp-{new}");
        let created = uid(deployments.get_opt(&new_cp).await.expect("read"));

        let second = Operator::start(&bed, &format!("{name}-b"), &[]);
        // The same outcome as an upgrade that was never interrupted.
        let s = wait_for(
            &format!("the upgrade killed after {step:?} to complete"),
            RECOVERY,
            || async {
                let mi = api.get(&name).await.map_err(|e| e.to_string())?;
                let ready = condition(&mi, "Ready").is_some_and(|c| c.0 == "True");
                let s = mi.status.clone().unwrap_or_default();
                let old_gone = uid(deployments
                    .get_opt(&format!("weft-cp-{old}"))
                    .await
                    .map_err(|e| e.to_string())?)
                .is_none();
                if ready && Step::Pruned.reached(&s, &old, &new, &canary) && old_gone {
                    Ok(s)
                } else {
                    Err(format!(
                        "ready={ready} old_gone={old_gone} {s:?}\n{}",
                        second.log_tail()
                    ))
                }
            },
        )
        .await;
        let tags: BTreeMap<&str, &str> = s.tags.iter().map(|t| (t.name.as_str(), t.revision.as_str())).collect();
        let stable = format!("{name}-stable");
        assert_eq!(
            tags,
            BTreeMap::from([
                (canary.as_str(), new.as_str()),
                (stable.as_str(), new.as_str()),
                ("default", new.as_str())
            ]),
            "killed after {step:?}"
        );
        assert_eq!(s.revisions.len(), 1, "{:?}", s.revisions);
        if created.is_some() {
            assert_eq!(
                uid(deployments.get_opt(&new_cp).await.expect("read")),
                created,
                "killed after {step:?}: the new revision was installed once, not recreated"
            );
        }
        // No step recorded twice by the two operators.
        let twice: Vec<_> = event_counts(&bed, &name)
            .await
            .into_iter()
            .filter(|((reason, _), n)| reason != "Applied" && *n > 1)
            .collect();
        assert!(
            twice.is_empty(),
            "killed after {step:?}, steps recorded twice: {twice:?}"
        );
        // Gone before the next round: the oldest MeshInstall owns the implicit `default` tag.
        delete_and_wait(&bed, &name).await;
        second.stop();
    }
}

/// The control-plane Deployment of mesh `mesh` (the only Deployment it owns).
async fn control_plane_deployment(bed: &weft_e2e::Bed, mesh: &str) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(bed.client.clone(), &format!("e2e-{mesh}"));
    let lp = ListParams::default().labels(&format!("weft.dev/mesh={mesh}"));
    let mut items = api.list(&lp).await.expect("list deployments").items;
    assert_eq!(items.len(), 1, "one control-plane Deployment");
    items.remove(0)
}

/// A Deployment's first container: its name and the names of its env vars.
fn env_names(d: &Deployment) -> (String, Vec<String>) {
    let pod = d.spec.clone().unwrap_or_default().template.spec.unwrap_or_default();
    let c = pod.containers.into_iter().next().expect("a container");
    (c.name, c.env.unwrap_or_default().into_iter().map(|e| e.name).collect())
}

/// Server-side applies the operator has sent, of any kind.
fn applies(op: &Operator) -> f64 {
    let text = op.metrics().expect("metrics");
    text.lines()
        .filter(|l| l.starts_with("weft_api_writes_total{") && l.contains("verb=\"apply\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the operator has reconciled more than `since` times and settled.
async fn reconciled_after(op: &Operator, since: f64, what: &str) {
    wait_for(what, RECOVERY, || async {
        let n = op.metric_sum("controller_runtime_reconcile_total{controller=\"meshinstall\"")?;
        if n > since {
            Ok(())
        } else {
            Err(format!("{n} reconciles\n{}", op.log_tail()))
        }
    })
    .await;
    settled(op, what).await;
}

#[tokio::test]
async fn other_actors_are_not_fought_and_a_refused_object_stalls_without_a_retry_storm() {
    let (_cluster, bed) = OwnCluster::up("weft-fault-actor").await;
    install_crds(&bed);
    let op = Operator::start(&bed, "fault-actor", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    api.create(&PostParams::default(), &mesh("actor", "e2e-actor", json!({})))
        .await
        .expect("create");
    wait_ready(&api, "actor", &op).await;
    settled(&op, "the operator to settle").await;
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), "e2e-actor");
    let cp = control_plane_deployment(&bed, "actor").await;
    let (name, (container, ours)) = (cp.name_any(), env_names(&cp));

    // A mutating webhook's kind of change: an annotation and an env var of its own.
    let (writes, reconciles) = (
        applies(&op),
        op.metric_sum("controller_runtime_reconcile_total{controller=\"meshinstall\"")
            .expect("metrics"),
    );
    let injected = json!({
        "metadata": {"annotations": {"example.com/injected": "yes"}},
        "spec": {"template": {"spec": {"containers": [{"name": container, "env": [{"name": "INJECTED", "value": "x"}]}]}}}
    });
    deployments
        .patch(&name, &PatchParams::default(), &Patch::Strategic(&injected))
        .await
        .expect("inject");
    reconciled_after(&op, reconciles, "the operator to look at the changed Deployment").await;
    // (Status may change: the Deployment rolls out its new template.)
    assert_eq!(
        applies(&op),
        writes,
        "the operator does not fight another actor's additions:\n{}",
        op.metrics().unwrap_or_default()
    );
    let d = deployments.get(&name).await.expect("get");
    let (_, env) = env_names(&d);
    assert!(env.contains(&"INJECTED".to_string()), "theirs kept: {env:?}");
    assert!(ours.iter().all(|e| env.contains(e)), "ours kept: {env:?} ⊇ {ours:?}");
    assert_eq!(
        d.annotations().get("example.com/injected").map(String::as_str),
        Some("yes")
    );

    // Someone scales it: ours again.
    let replicas = cp.spec.as_ref().and_then(|s| s.replicas);
    deployments
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale");
    wait_for("the replica count to be restored", RECOVERY, || async {
        let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
        match d.spec.and_then(|s| s.replicas) {
            r if r == replicas => Ok(()),
            r => Err(format!("replicas {r:?}\n{}", op.log_tail())),
        }
    })
    .await;

    // Someone removes the finalizer: it is put back.
    api.patch(
        "actor",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    wait_for("the finalizer to be back", RECOVERY, || async {
        let mi = api.get("actor").await.map_err(|e| e.to_string())?;
        if mi.finalizers().is_empty() {
            Err(op.log_tail())
        } else {
            Ok(())
        }
    })
    .await;

    // A spec our admission lets through and the API server refuses (maxSkew must be > 0).
    settled(&op, "the operator to settle").await;
    let before = control_plane_deployment(&bed, "actor").await;
    let errors = op
        .metric_sum("controller_runtime_reconcile_errors_total")
        .expect("metrics");
    let bad = json!({"spec": {"controlPlane": {"topologySpreadConstraints": [{
        "maxSkew": 0, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"
    }]}}});
    api.patch("actor", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .expect("a spec admission accepts");
    let message = wait_for("Stalled with the API server's message", RECOVERY, || async {
        let mi = api.get("actor").await.map_err(|e| e.to_string())?;
        match condition(&mi, "Stalled") {
            Some((s, r, m)) if s == "True" && r == "Rejected" => Ok(m),
            other => Err(format!("Stalled={other:?}\n{}", op.log_tail())),
        }
    })
    .await;
    assert!(message.contains("maxSkew"), "{message}");
    settled(&op, "the operator to settle on the stall").await;
    let after = control_plane_deployment(&bed, "actor").await;
    assert_eq!(
        (after.uid(), after.metadata.generation),
        (before.uid(), before.metadata.generation),
        "the running revision is untouched"
    );
    assert_eq!(
        op.metric_sum("controller_runtime_reconcile_errors_total")
            .expect("metrics"),
        errors,
        "a refusal is a stall, not an error retried in a loop"
    );

    // Fixed: Ready again.
    let fixed = json!({"spec": {"controlPlane": {"topologySpreadConstraints": null}}});
    api.patch("actor", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .expect("fix");
    let mi = wait_ready(&api, "actor", &op).await;
    assert_eq!(condition(&mi, "Stalled").map(|c| c.0), Some("False".to_string()));

    // A reconcile that keeps failing for a reason outside the spec (a quota that refuses
    // the autoscaler the change needs) shows in status and in the metric, not behind Ready.
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-autoscalers"},
        "spec": {"hard": {"count/horizontalpodautoscalers.autoscaling": "0"}}
    }))
    .expect("quota");
    let quotas: Api<ResourceQuota> = Api::namespaced(bed.client.clone(), "e2e-actor");
    quotas.create(&PostParams::default(), &quota).await.expect("quota");
    let change =
        json!({"spec": {"controlPlane": {"autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 2}}}});
    api.patch("actor", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect("a change that needs a new HorizontalPodAutoscaler");
    let message = wait_for("Reconciling=True, RetryingAfterError", RECOVERY, || async {
        let mi = api.get("actor").await.map_err(|e| e.to_string())?;
        match condition(&mi, "Reconciling") {
            Some((s, r, m)) if s == "True" && r == "RetryingAfterError" => Ok(m),
            other => Err(format!("Reconciling={other:?}\n{}", op.log_tail())),
        }
    })
    .await;
    assert!(message.contains("quota"), "{message}");
    assert_eq!(
        op.metric_sum("weft_reconcile_failing{controller=\"meshinstall\"}")
            .expect("metrics"),
        1.0
    );
    quotas
        .delete("no-autoscalers", &Default::default())
        .await
        .expect("delete quota");
    // Retried with back-off (5, 10, 20 s…): within a minute it goes through.
    wait_for(
        "the change to go through once the quota is gone",
        Duration::from_secs(90),
        || async {
            let mi = api.get("actor").await.map_err(|e| e.to_string())?;
            let current = mi.status.as_ref().and_then(|s| s.observed_generation) == mi.metadata.generation;
            match (current, condition(&mi, "Reconciling")) {
                (true, Some((s, r, _))) if r != "RetryingAfterError" => Ok(s),
                seen => Err(format!("{seen:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        op.metric_sum("weft_reconcile_failing{controller=\"meshinstall\"}")
            .expect("metrics"),
        0.0
    );
    op.stop();
}

#[tokio::test]
async fn a_deleted_mesh_namespace_is_recreated_and_deleted_crds_come_back_when_reapplied() {
    let (_cluster, bed) = OwnCluster::up("weft-fault-gone").await;
    install_crds(&bed);
    let op = Operator::start(&bed, "fault-gone", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    api.create(&PostParams::default(), &mesh("gone", "e2e-gone", json!({})))
        .await
        .expect("create");
    wait_ready(&api, "gone", &op).await;
    let namespaces: Api<Namespace> = Api::all(bed.client.clone());
    let ns_uid = namespaces.get("e2e-gone").await.expect("namespace").uid();
    let cp_uid = control_plane_deployment(&bed, "gone").await.uid();

    // The mesh's namespace deleted under it: once it is gone, it and the revision come back.
    namespaces
        .delete("e2e-gone", &Default::default())
        .await
        .expect("delete namespace");
    wait_for(
        "the namespace and the revision to be back",
        Duration::from_secs(120),
        || async {
            let ns = namespaces.get_opt("e2e-gone").await.map_err(|e| e.to_string())?;
            let mi = api.get("gone").await.map_err(|e| e.to_string())?;
            let ready = condition(&mi, "Ready").is_some_and(|c| c.0 == "True");
            let back = ns
                .as_ref()
                .is_some_and(|n| n.uid() != ns_uid && n.metadata.deletion_timestamp.is_none());
            if back && ready {
                Ok(())
            } else {
                Err(format!(
                    "namespace back={back} Ready={:?}\n{}",
                    condition(&mi, "Ready"),
                    op.log_tail()
                ))
            }
        },
    )
    .await;
    assert_ne!(control_plane_deployment(&bed, "gone").await.uid(), cp_uid, "recreated");
    settled(&op, "the operator to settle").await;

    // The CRDs deleted: their objects go, through the finalizer (so what they owned goes
    // too), and readiness says the watch has nothing to watch.
    bed.kubectl(&[
        "delete",
        "-f",
        repo_root().join("crds").to_str().expect("path"),
        "--wait=true",
    ])
    .expect("delete CRDs");
    wait_for("what the mesh owned to be cleaned up", RECOVERY, || async {
        let left = owned_objects(&bed, "gone").await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    wait_for("/readyz to name the MeshInstall watch", RECOVERY, || async {
        match readyz(&op)? {
            (503, body) if body.contains("watch MeshInstall") => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;

    // Re-applied: a new MeshInstall is acted on, and the operator is ready again.
    install_crds(&bed);
    api.create(&PostParams::default(), &mesh("back", "e2e-back", json!({})))
        .await
        .expect("create after the CRDs came back");
    wait_ready(&api, "back", &op).await;
    settled(&op, "the operator to be ready again").await;
    op.stop();
}

/// What one stream of many has seen: how often it opened, and its last CDS and EDS versions.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    opened: u32,
    cds: String,
    eds: String,
}

/// One ADS stream (CDS wildcard and EDS for `names`) that reconnects whenever it breaks,
/// with jittered exponential back-off as gRPC clients do, recording what it sees.
async fn follow(channel: Channel, id: usize, names: Vec<String>, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut wait = Duration::from_millis(100);
    loop {
        let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
        let (tx, rx) = mpsc::channel(4);
        let mut n = node("restart");
        n.id = format!("restart-{id}");
        let first = [
            DiscoveryRequest {
                node: Some(n),
                type_url: CDS.into(),
                ..Default::default()
            },
            DiscoveryRequest {
                type_url: EDS.into(),
                resource_names: names.clone(),
                ..Default::default()
            },
        ];
        for r in first {
            let _ = tx.send(r).await;
        }
        if let Ok(response) = client.stream_aggregated_resources(ReceiverStream::new(rx)).await {
            seen.lock().expect("lock")[id].opened += 1;
            let mut responses = response.into_inner();
            while let Ok(Some(r)) = responses.message().await {
                wait = Duration::from_millis(100);
                {
                    let mut s = seen.lock().expect("lock");
                    let entry = &mut s[id];
                    if r.type_url == CDS {
                        entry.cds = r.version_info.clone()
                    } else {
                        entry.eds = r.version_info.clone()
                    }
                }
                let names = if r.type_url == EDS { names.clone() } else { Vec::new() };
                let ack = DiscoveryRequest {
                    type_url: r.type_url,
                    version_info: r.version_info,
                    response_nonce: r.nonce,
                    resource_names: names,
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        }
        let jitter = (RandomState::new().hash_one(id) % 400) as f64 / 1000.0;
        tokio::time::sleep(wait.mul_f64(0.8 + jitter)).await;
        wait = wait.mul_f64(1.6).min(Duration::from_secs(2));
    }
}

/// Waits until every stream has opened `opened` times and holds versions that `ok` accepts.
async fn all_streams(seen: &Arc<Mutex<Vec<Seen>>>, what: &str, opened: u32, ok: impl Fn(usize, &Seen) -> bool) {
    wait_for(what, Duration::from_secs(120), || async {
        let s = seen.lock().expect("lock");
        let behind: Vec<(usize, &Seen)> = s
            .iter()
            .enumerate()
            .filter(|(i, x)| x.opened < opened || x.cds.is_empty() || x.eds.is_empty() || !ok(*i, x))
            .collect();
        match behind.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} of {} streams behind, first {first:?}",
                behind.len(),
                s.len()
            )),
        }
    })
    .await;
}

#[tokio::test]
async fn a_restarted_control_plane_serves_2000_reconnecting_streams_the_same_configuration() {
    const STREAMS: usize = 2000;
    const CONNECTIONS: usize = 20;
    let (_cluster, bed) = OwnCluster::up("weft-fault-restart").await;
    let ns = bed.namespace("restart").await;
    let services: Api<Service> = Api::namespaced(bed.client.clone(), &ns.name);
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), &ns.name);
    for i in 0..20 {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}")},
            "spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}
        }))
        .expect("service");
        services
            .create(&PostParams::default(), &svc)
            .await
            .expect("create service");
        // Documentation addresses (RFC 5737): served as data, never connected to.
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}-1"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [format!("198.51.100.{}", i + 1)]}]
        }))
        .expect("slice");
        slices
            .create(&PostParams::default(), &slice)
            .await
            .expect("create slice");
    }
    let mut cp = ControlPlane::start(&bed, "restart");
    cp.wait_ready().await;

    let seen = Arc::new(Mutex::new(vec![Seen::default(); STREAMS]));
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", cp.xds))
            .expect("endpoint")
            .connect_lazy();
        for id in (c..STREAMS).step_by(CONNECTIONS) {
            let names = (0..5)
                .map(|k| format!("outbound|50051||svc-{}.{}.svc.cluster.local", (id + k) % 20, ns.name))
                .collect();
            tasks.push(tokio::spawn(follow(channel.clone(), id, names, seen.clone())));
        }
    }
    all_streams(&seen, "every stream to be configured", 1, |_, _| true).await;
    let before = seen.lock().expect("lock").clone();

    cp.restart(&bed, &[]);
    cp.wait_ready().await;
    // Every stream reconnects, and is served exactly what it had: versions name content.
    all_streams(
        &seen,
        "every stream to reconnect and get the same configuration",
        2,
        |i, s| (&s.cds, &s.eds) == (&before[i].cds, &before[i].eds),
    )
    .await;
    let (_, metrics) = http_get(cp.monitoring, "/metrics").expect("metrics");
    let sum = |prefix: &str| weft_e2e::operator::sum_metric(&metrics, prefix);
    assert_eq!(sum("weft_xds_streams{"), STREAMS as f64, "{metrics}");
    assert_eq!(sum("weft_xds_refusals_total"), 0.0, "nothing refused:\n{metrics}");
    for t in tasks {
        t.abort();
    }
    ns.delete().await;
}
