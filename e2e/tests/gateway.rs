//! MeshGateways end to end: `weft operator` as a process against the test bed, checked
//! through what a user sees — `kubectl get mgw` (status), the objects in the gateway's
//! namespace, where the scheduler put the pods, and what admission says.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use serde_json::json;
use weft::api::mesh_gateway::{MeshGateway, MeshGatewayStatus};
use weft::api::{MeshInstall, labels};
use weft_e2e::operator::{Operator, SERIAL, TIMEOUT, delete_and_wait, install_crds, mesh, wait_ready};
use weft_e2e::{Bed, wait_for};

fn gateway(name: &str, ns: &str, spec: serde_json::Value) -> MeshGateway {
    serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "MeshGateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec
    }))
    .expect("valid MeshGateway")
}

/// A MeshInstall with one tag, `<name>-stable`, following the active revision.
fn tagged_mesh(name: &str) -> MeshInstall {
    mesh(
        name,
        &format!("e2e-{name}-mesh"),
        json!({"profile": "minimal", "revisionTags": [{"name": format!("{name}-stable"), "target": "Active"}]}),
    )
}

fn cond(s: &MeshGatewayStatus, t: &str) -> Option<(String, String, String)> {
    let c = s.conditions.iter().find(|c| c.type_ == t)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the gateway's status satisfies `f` for its current generation.
async fn gateway_when<F>(api: &Api<MeshGateway>, name: &str, what: &str, op: &Operator, f: F) -> MeshGatewayStatus
where
    F: Fn(&MeshGatewayStatus) -> bool,
{
    wait_for(what, TIMEOUT, || async {
        let gw = api.get(name).await.map_err(|e| e.to_string())?;
        let s = gw.status.clone().unwrap_or_default();
        if s.observed_generation == gw.metadata.generation && f(&s) {
            Ok(s)
        } else {
            Err(format!("status: {s:?}\noperator log:\n{}", op.log_tail()))
        }
    })
    .await
}

fn ready(s: &MeshGatewayStatus) -> bool {
    cond(s, "Ready").is_some_and(|c| c.0 == "True")
}

/// Every object the gateway owns, as `Kind name`.
async fn owned(bed: &Bed, ns: &str, gw: &str) -> BTreeSet<String> {
    let lp = ListParams::default().labels(&format!("{}={gw}", labels::GATEWAY));
    let mut out = BTreeSet::new();
    macro_rules! collect {
        ($($k:ty),*) => {$(
            let api: Api<$k> = Api::namespaced(bed.client.clone(), ns);
            for o in api.list(&lp).await.expect("list owned objects").items {
                out.insert(format!("{} {}", stringify!($k), o.name_any()));
            }
        )*};
    }
    collect!(
        ServiceAccount,
        ConfigMap,
        Service,
        Deployment,
        HorizontalPodAutoscaler,
        PodDisruptionBudget
    );
    out
}

/// The revision and xDS address a gateway's bootstrap names.
async fn bootstrap_target(bed: &Bed, ns: &str, gw: &str) -> (String, String) {
    let api: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    let cm = api.get(&format!("{gw}-bootstrap")).await.expect("bootstrap ConfigMap");
    let text = cm.data.unwrap_or_default().remove("bootstrap.json").unwrap_or_default();
    let b: serde_json::Value = serde_json::from_str(&text).expect("bootstrap is JSON");
    let xds = b["static_resources"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "xds")
        .cloned()
        .unwrap_or_default();
    let address =
        xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    (
        b["node"]["metadata"]["REVISION"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        address,
    )
}

async fn delete_gateway_and_wait(bed: &Bed, api: &Api<MeshGateway>, ns: &str, name: &str) {
    let _ = api.delete(name, &DeleteParams::default()).await;
    wait_for(
        &format!("MeshGateway {name} and what it owned to be deleted"),
        TIMEOUT,
        || async {
            let left = owned(bed, ns, name).await;
            let present = api.get_opt(name).await.map_err(|e| e.to_string())?.is_some();
            if !present && left.is_empty() {
                Ok(())
            } else {
                Err(format!("gateway present={present} left={left:?}"))
            }
        },
    )
    .await;
}

/// The production ingress of Istio's guide: autoscaling 2–5 and a PDB; the pods land on
/// distinct nodes; status shows replicas, selector and the load balancer's address; a
/// reconcile that changes nothing writes nothing; deleting removes what it owned.
#[tokio::test]
async fn production_ingress_gets_autoscaler_budget_distinct_nodes_and_status() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "gateway-prod", &[]);
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "gw-prod").await;
    meshes
        .create(&PostParams::default(), &tagged_mesh("gw-prod"))
        .await
        .expect("create mesh");
    wait_ready(&meshes, "gw-prod", &op).await;

    let ns = bed.namespace("e2e-gw-prod").await;
    let api: Api<MeshGateway> = Api::namespaced(bed.client.clone(), &ns.name);
    let spec = json!({
        "mesh": "gw-prod",
        "revision": "gw-prod-stable",
        "autoscaling": {"minReplicas": 2, "maxReplicas": 5},
        "podDisruptionBudget": {"minAvailable": 1},
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}
    });
    api.create(&PostParams::default(), &gateway("ingress", &ns.name, spec))
        .await
        .expect("create gateway");
    let s = gateway_when(
        &api,
        "ingress",
        "the ingress gateway to be Ready with 2 replicas",
        &op,
        |s| ready(s) && s.ready_replicas == Some(2),
    )
    .await;
    assert_eq!(
        s.revision.as_deref(),
        Some("gw-prod"),
        "an in-place mesh has one revision, named after it"
    );
    assert_eq!(s.replicas, Some(2));
    assert_eq!(
        s.selector.as_deref(),
        Some("weft.dev/component=gateway,weft.dev/gateway=ingress")
    );

    let hpa: Api<HorizontalPodAutoscaler> = Api::namespaced(bed.client.clone(), &ns.name);
    let h = hpa.get("ingress").await.expect("HPA").spec.unwrap();
    assert_eq!((h.min_replicas, h.max_replicas), (Some(2), 5));
    assert_eq!(h.scale_target_ref.kind, "Deployment");
    let pdb: Api<PodDisruptionBudget> = Api::namespaced(bed.client.clone(), &ns.name);
    let p = pdb.get("ingress").await.expect("PDB").spec.unwrap();
    assert_eq!(
        p.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    autoscaled_deployment_starts_at_min_and_is_left_to_the_autoscaler(&bed, &api, &ns.name, &op).await;

    // The scheduler honoured the default preferred anti-affinity: one pod per node.
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), &ns.name);
    let lp = ListParams::default().labels(s.selector.as_deref().unwrap());
    let nodes: Vec<String> = pods
        .list(&lp)
        .await
        .expect("pods")
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    let distinct: BTreeSet<&String> = nodes.iter().collect();
    assert_eq!(nodes.len(), 2, "two gateway pods: {nodes:?}");
    assert_eq!(distinct.len(), 2, "the pods share a node: {nodes:?}");

    // Port 80 maps to an unprivileged container port.
    let services: Api<Service> = Api::namespaced(bed.client.clone(), &ns.name);
    let svc = services.get("ingress").await.expect("Service").spec.unwrap();
    assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(svc.external_traffic_policy.as_deref(), Some("Local"));
    let port = &svc.ports.unwrap()[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (
            80,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080))
        )
    );

    // What a cloud's load-balancer controller would do (a documentation address: nothing
    // ever connects to it); the gateway reports it.
    services
        .patch_status(
            "ingress",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}})),
        )
        .await
        .expect("set load-balancer status");
    let s = gateway_when(&api, "ingress", "the load balancer's address in status", &op, |s| {
        s.addresses
            .iter()
            .any(|a| a.type_ == "IPAddress" && a.value == "203.0.113.10")
    })
    .await;
    assert!(ready(&s));

    // A reconcile that changes nothing writes nothing: touch metadata only, and wait for
    // the reconcile it triggers.
    let reconciles = |op: &Operator| {
        op.metric_sum("controller_runtime_reconcile_total{controller=\"meshgateway\"")
            .unwrap_or(0.0)
    };
    let writes_before = op.metric_sum("weft_api_writes_total").expect("metrics");
    let before = reconciles(&op);
    api.patch(
        "ingress",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"annotations": {"example.com/touched": "yes"}}})),
    )
    .await
    .expect("annotate");
    wait_for("a gateway reconcile", TIMEOUT, || async {
        let now = reconciles(&op);
        if now > before {
            Ok(())
        } else {
            Err(format!("reconciles {now}"))
        }
    })
    .await;
    let writes_after = op.metric_sum("weft_api_writes_total").expect("metrics");
    assert_eq!(writes_before, writes_after, "an unchanged gateway was written to");

    delete_gateway_and_wait(&bed, &api, &ns.name, "ingress").await;
    ns.delete().await;
    delete_and_wait(&bed, "gw-prod").await;
}

/// The Deployment of a 2–5 gateway was created with 2 replicas (not 1, later raised by the
/// autoscaler), held by our hand-over manager; when the autoscaler changes the count, an
/// apply of a new spec leaves it alone.
async fn autoscaled_deployment_starts_at_min_and_is_left_to_the_autoscaler(
    bed: &Bed,
    api: &Api<MeshGateway>,
    ns: &str,
    op: &Operator,
) {
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), ns);
    let d = deployments.get("ingress").await.expect("Deployment");
    weft_e2e::operator::assert_started_at_min_replicas(&d);
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));

    // What the autoscaler does under load: scale through the subresource.
    deployments
        .patch_scale(
            "ingress",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale the Deployment as the autoscaler would");
    // A spec change makes the operator apply the Deployment again.
    api.patch(
        "ingress",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"resources": {"requests": {"cpu": "50m"}}}})),
    )
    .await
    .expect("change the gateway's resources");
    let d = wait_for("the Deployment to get the new resources", TIMEOUT, || async {
        let d = deployments.get("ingress").await.map_err(|e| e.to_string())?;
        let cpu = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
            .map(|q| q.0.clone());
        if cpu.as_deref() == Some("50m") {
            Ok(d)
        } else {
            Err(format!("cpu request {cpu:?}\noperator log:\n{}", op.log_tail()))
        }
    })
    .await;
    assert_eq!(
        d.spec.as_ref().and_then(|s| s.replicas),
        Some(3),
        "the operator undid the autoscaler's replicas"
    );
    gateway_when(api, "ingress", "the gateway to be Ready with 3 replicas", op, |s| {
        ready(s) && s.ready_replicas == Some(3)
    })
    .await;
    // Back to the spec's first state, so the rest of the test sees what it expects.
    api.patch(
        "ingress",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "remove", "path": "/spec/resources"}])).expect("a JSON patch"),
        ),
    )
    .await
    .expect("restore the gateway's resources");
    deployments
        .patch_scale(
            "ingress",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("scale back as the autoscaler would");
    gateway_when(
        api,
        "ingress",
        "the gateway to be Ready with 2 replicas again",
        op,
        |s| ready(s) && s.ready_replicas == Some(2) && s.replicas == Some(2),
    )
    .await;
}

/// With autoscaling off, `kubectl scale mgw/x` sets the replicas, and more than one replica
/// brings a disruption budget; the scale subresource reads the selector from status.
#[tokio::test]
async fn kubectl_scale_changes_replicas_when_autoscaling_is_off() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "gateway-scale", &[]);
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "gw-scale").await;
    meshes
        .create(&PostParams::default(), &tagged_mesh("gw-scale"))
        .await
        .expect("create mesh");
    wait_ready(&meshes, "gw-scale", &op).await;
    let ns = bed.namespace("e2e-gw-scale").await;
    let api: Api<MeshGateway> = Api::namespaced(bed.client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &gateway(
            "edge",
            &ns.name,
            json!({"mesh": "gw-scale", "revision": "gw-scale-stable", "type": "egress"}),
        ),
    )
    .await
    .expect("create gateway");
    gateway_when(&api, "edge", "one ready replica", &op, |s| {
        ready(s) && s.ready_replicas == Some(1)
    })
    .await;
    assert!(!owned(&bed, &ns.name, "edge").await.contains("PodDisruptionBudget edge"));

    bed.kubectl(&["scale", "-n", &ns.name, "mgw/edge", "--replicas=3"])
        .expect("kubectl scale");
    let s = gateway_when(&api, "edge", "three ready replicas", &op, |s| {
        ready(s) && s.ready_replicas == Some(3) && s.replicas == Some(3)
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), &ns.name);
    assert_eq!(deployments.get("edge").await.unwrap().spec.unwrap().replicas, Some(3));
    assert!(owned(&bed, &ns.name, "edge").await.contains("PodDisruptionBudget edge"));
    // What `kubectl get --subresource=scale` shows.
    let scale = bed
        .kubectl(&["get", "-n", &ns.name, "mgw/edge", "--subresource=scale", "-o", "json"])
        .expect("read scale");
    let scale: serde_json::Value = serde_json::from_str(&scale).expect("scale JSON");
    assert_eq!(scale["status"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"].as_str(), s.selector.as_deref());

    delete_gateway_and_wait(&bed, &api, &ns.name, "edge").await;
    ns.delete().await;
    delete_and_wait(&bed, "gw-scale").await;
}

/// GitOps may apply the gateway before its MeshInstall: it waits (not Stalled, nothing
/// created) and becomes Ready once the mesh exists.
#[tokio::test]
async fn a_gateway_applied_before_its_mesh_waits_then_becomes_ready() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "gateway-late", &[]);
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "gw-late").await;
    let ns = bed.namespace("e2e-gw-late").await;
    let api: Api<MeshGateway> = Api::namespaced(bed.client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &gateway(
            "ingress",
            &ns.name,
            json!({"mesh": "gw-late", "revision": "gw-late-stable"}),
        ),
    )
    .await
    .expect("create gateway");
    let s = gateway_when(&api, "ingress", "the gateway to wait for its mesh", &op, |s| {
        cond(s, "Ready").is_some_and(|c| c.1 == "WaitingForRevision")
    })
    .await;
    let (status, _, message) = cond(&s, "Ready").unwrap();
    assert_eq!(status, "False");
    assert_eq!(message, "MeshInstall gw-late does not exist yet");
    assert_eq!(cond(&s, "Stalled").unwrap().0, "False", "waiting is not stalled");
    assert!(
        owned(&bed, &ns.name, "ingress").await.is_empty(),
        "nothing runs before the revision exists"
    );

    meshes
        .create(&PostParams::default(), &tagged_mesh("gw-late"))
        .await
        .expect("create mesh");
    let s = gateway_when(&api, "ingress", "the gateway to become Ready", &op, ready).await;
    assert_eq!(s.revision.as_deref(), Some("gw-late"));
    assert_eq!(
        bootstrap_target(&bed, &ns.name, "ingress").await,
        (
            "gw-late".to_string(),
            "weft-cp-gw-late.e2e-gw-late-mesh.svc".to_string()
        )
    );

    delete_gateway_and_wait(&bed, &api, &ns.name, "ingress").await;
    ns.delete().await;
    delete_and_wait(&bed, "gw-late").await;
}

/// Through a canary upgrade, a gateway on the `canary` tag moves as soon as the new
/// revision is installed, and one on `stable` only after promotion — with a rolling
/// update that never leaves fewer available pods than its disruption budget asks for.
#[tokio::test]
async fn gateways_follow_their_tags_through_a_canary_upgrade() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "gateway-canary", &[]);
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "gw-up").await;
    let mi = mesh(
        "gw-up",
        "e2e-gw-up-mesh",
        json!({
            "profile": "minimal",
            "updateStrategy": {
                "type": "RevisionBased",
                "inactiveRevisionDeletionGracePeriodSeconds": 5,
                "promotion": {"minReadySeconds": 8, "progressDeadlineSeconds": 120}
            },
            "revisionTags": [{"name": "gw-up-stable", "target": "Active"}, {"name": "gw-up-canary", "target": "Latest"}]
        }),
    );
    meshes.create(&PostParams::default(), &mi).await.expect("create mesh");
    wait_ready(&meshes, "gw-up", &op).await;
    let (old, new) = ("gw-up-v1-0-0", "gw-up-v1-1-0");

    let ns = bed.namespace("e2e-gw-up").await;
    let api: Api<MeshGateway> = Api::namespaced(bed.client.clone(), &ns.name);
    for (name, tag) in [("stable", "gw-up-stable"), ("canary", "gw-up-canary")] {
        let spec = json!({"mesh": "gw-up", "revision": tag, "replicas": 3, "podDisruptionBudget": {"minAvailable": 2}});
        api.create(&PostParams::default(), &gateway(name, &ns.name, spec))
            .await
            .expect("create gateway");
        let s = gateway_when(&api, name, "the gateway to be Ready on the old revision", &op, |s| {
            ready(s) && s.ready_replicas == Some(3)
        })
        .await;
        assert_eq!(s.revision.as_deref(), Some(old));
    }

    // Watch the stable gateway's Deployment for the whole upgrade: the fewest available
    // pods any update showed once the rollout began.
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), &ns.name);
    let fewest = Arc::new(Mutex::new(i32::MAX));
    let seen = fewest.clone();
    let watch = tokio::spawn(
        watcher(
            deployments.clone(),
            watcher::Config::default().fields("metadata.name=stable"),
        )
        .applied_objects()
        .for_each(move |d| {
            if let Ok(d) = d {
                let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
                let mut f = seen.lock().unwrap();
                *f = (*f).min(available);
            }
            futures::future::ready(())
        }),
    );

    meshes
        .patch(
            "gw-up",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"version": "1.1.0"}})),
        )
        .await
        .expect("upgrade");
    // The canary gateway moves as soon as the new revision is installed...
    gateway_when(&api, "canary", "the canary gateway to move", &op, |s| {
        s.revision.as_deref() == Some(new) && ready(s)
    })
    .await;
    // ...while the stable one stays until promotion (minReadySeconds has not passed).
    let mi = meshes.get("gw-up").await.unwrap();
    let stable = api.get("stable").await.unwrap().status.unwrap_or_default();
    if mi.status.as_ref().and_then(|s| s.active_revision.as_deref()) == Some(old) {
        assert_eq!(stable.revision.as_deref(), Some(old), "stable moved before promotion");
        assert_eq!(bootstrap_target(&bed, &ns.name, "stable").await.0, old);
    }
    let s = gateway_when(&api, "stable", "the stable gateway to follow the promotion", &op, |s| {
        s.revision.as_deref() == Some(new) && ready(s) && s.ready_replicas == Some(3)
    })
    .await;
    assert!(ready(&s));
    let mi = meshes.get("gw-up").await.unwrap();
    assert_eq!(
        mi.status.as_ref().and_then(|s| s.active_revision.as_deref()),
        Some(new),
        "the stable gateway moved, so its tag must have"
    );
    assert_eq!(
        bootstrap_target(&bed, &ns.name, "stable").await,
        (new.to_string(), format!("weft-cp-{new}.e2e-gw-up-mesh.svc"))
    );
    watch.abort();
    let fewest = *fewest.lock().unwrap();
    assert!(
        fewest >= 2,
        "the rollout left {fewest} available pods; the budget asks for 2"
    );

    // Gateways are users of their revision, like labelled namespaces.
    let mi = meshes.get("gw-up").await.unwrap();
    let users: Vec<String> = mi
        .status
        .unwrap()
        .revisions
        .into_iter()
        .filter(|r| r.name == new)
        .flat_map(|r| r.gateways)
        .collect();
    assert_eq!(users, [format!("{}/canary", ns.name), format!("{}/stable", ns.name)]);

    for name in ["stable", "canary"] {
        delete_gateway_and_wait(&bed, &api, &ns.name, name).await;
    }
    ns.delete().await;
    delete_and_wait(&bed, "gw-up").await;
}

/// What admission can check is rejected with a message a person understands; what it
/// cannot (two ports on one container port) stalls the gateway and creates nothing.
#[tokio::test]
async fn invalid_gateways_are_rejected_or_stalled_with_clear_messages() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let ns = bed.namespace("e2e-gw-bad").await;
    let api: Api<MeshGateway> = Api::namespaced(bed.client.clone(), &ns.name);
    let cases = [
        (
            "scale",
            json!({"mesh": "m", "autoscaling": {"minReplicas": 6, "maxReplicas": 2}}),
            "autoscaling.minReplicas must not be greater than autoscaling.maxReplicas",
        ),
        (
            "names",
            json!({"mesh": "m", "service": {"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]}}),
            "every port needs a name of its own",
        ),
        (
            "policy",
            json!({"mesh": "m", "type": "egress", "service": {"externalTrafficPolicy": "Local"}}),
            "service.externalTrafficPolicy needs a NodePort or LoadBalancer Service",
        ),
        (
            "port-name",
            json!({"mesh": "m", "service": {"ports": [{"name": "HTTP", "port": 80}]}}),
            "a port name holds lowercase letters, digits and '-'",
        ),
        (
            "1st",
            json!({"mesh": "m"}),
            "a MeshGateway's name must start with a letter",
        ),
        (
            "tag",
            json!({"mesh": "m", "revision": "Prod"}),
            "revision must be a tag or revision name",
        ),
    ];
    for (name, spec, message) in cases {
        let err = api
            .create(&PostParams::default(), &gateway(name, &ns.name, spec))
            .await
            .expect_err(name);
        let text = err.to_string();
        assert!(text.contains(message), "{name}: {text}");
    }

    let op = Operator::start(&bed, "gateway-bad", &[]);
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "gw-bad").await;
    meshes
        .create(&PostParams::default(), &tagged_mesh("gw-bad"))
        .await
        .expect("create mesh");
    wait_ready(&meshes, "gw-bad", &op).await;
    let spec = json!({"mesh": "gw-bad", "revision": "gw-bad-stable", "service": {"ports": [{"name": "http", "port": 80}, {"name": "alt", "port": 8080}]}});
    api.create(&PostParams::default(), &gateway("clash", &ns.name, spec))
        .await
        .expect("admission cannot see the clash");
    let s = gateway_when(&api, "clash", "the gateway to stall", &op, |s| {
        cond(s, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    let (_, reason, message) = cond(&s, "Stalled").unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert_eq!(
        message,
        "service ports http and alt both map to container port 8080; give one of them another targetPort"
    );
    assert!(owned(&bed, &ns.name, "clash").await.is_empty());
    // Fixed: it runs.
    api.patch(
        "clash",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"service": {"ports": [{"name": "http", "port": 80}, {"name": "alt", "port": 8080, "targetPort": 8081}]}}})),
    )
    .await
    .expect("fix");
    gateway_when(&api, "clash", "the fixed gateway to be Ready", &op, ready).await;

    delete_gateway_and_wait(&bed, &api, &ns.name, "clash").await;
    ns.delete().await;
    delete_and_wait(&bed, "gw-bad").await;
}

/// The operator needs no more than `config/rbac` grants: run as its ServiceAccount (by
/// impersonation), it installs a mesh — cluster-scoped RBAC for the control plane included —
/// and a gateway with autoscaler and budget, and reports both Ready.
#[tokio::test]
async fn the_operator_runs_on_its_own_least_privilege_role() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let _ = bed.kubectl(&["create", "namespace", "weft-system"]);
    let rbac = weft_e2e::repo_root().join("config/rbac");
    bed.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=weft-e2e",
        "-n",
        "weft-system",
        "-k",
        rbac.to_str().unwrap(),
    ])
    .expect("apply config/rbac");
    let admin = std::fs::read_to_string(&bed.kubeconfig).expect("read kubeconfig");
    let as_operator = admin.replacen(
        "  user:\n",
        "  user:\n    as: system:serviceaccount:weft-system:weft-operator\n",
        1,
    );
    assert_ne!(admin, as_operator, "the kubeconfig has a user to impersonate with");
    let kubeconfig = bed.kubeconfig.with_file_name("kubeconfig-as-operator");
    std::fs::write(&kubeconfig, as_operator).expect("write kubeconfig");
    let whoami = std::process::Command::new(weft_e2e::kubectl_path())
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])
        .output()
        .expect("run kubectl");
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout),
        "system:serviceaccount:weft-system:weft-operator",
        "{}",
        String::from_utf8_lossy(&whoami.stderr)
    );
    let op = Operator::start_with(
        &bed,
        &kubeconfig,
        "gateway-rbac",
        &["--leader-election-namespace", "weft-system"],
    );

    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "gw-rbac").await;
    meshes
        .create(&PostParams::default(), &tagged_mesh("gw-rbac"))
        .await
        .expect("create mesh");
    wait_ready(&meshes, "gw-rbac", &op).await;
    let ns = bed.namespace("e2e-gw-rbac").await;
    let api: Api<MeshGateway> = Api::namespaced(bed.client.clone(), &ns.name);
    let spec = json!({"mesh": "gw-rbac", "revision": "gw-rbac-stable", "autoscaling": {"minReplicas": 2, "maxReplicas": 3}, "podDisruptionBudget": {"minAvailable": 1}});
    api.create(&PostParams::default(), &gateway("ingress", &ns.name, spec))
        .await
        .expect("create gateway");
    gateway_when(&api, "ingress", "the gateway to be Ready", &op, |s| {
        ready(s) && s.ready_replicas == Some(2)
    })
    .await;
    assert!(
        !op.log_text().to_lowercase().contains("forbidden"),
        "the operator was refused something:\n{}",
        op.log_text()
    );

    delete_gateway_and_wait(&bed, &api, &ns.name, "ingress").await;
    ns.delete().await;
    delete_and_wait(&bed, "gw-rbac").await;
}
