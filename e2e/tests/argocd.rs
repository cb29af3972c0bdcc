//! Argo CD health for Weft's kinds (deploy/argocd), evaluated by Argo CD's own Lua health
//! code (the harness in e2e/argocd, built against the pinned argo-cd module). Each kind is
//! driven through its stages on the test bed with the operator running as a process; the
//! object is read back at each stage and must get the health a user should see in Argo CD,
//! from both the upstream layout and the argocd-cm patch. With `WEFT_ARGOCD_CAPTURE=1` the
//! captured objects and the expected health are written as the upstream testdata
//! (`make argocd-testdata`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use weft_e2e::argocd::{self, Health, KINDS};
use weft_e2e::operator::{Operator, SERIAL, TIMEOUT, delete_and_wait, install_crds};
use weft_e2e::remote::{CountingListener, apply_yaml, kubeconfig, put_remote, put_secret, remote_secret};
use weft_e2e::{Bed, wait_for};

/// The mesh every object of the test belongs to, and its namespace.
const MESH: &str = "wa-argo";
const MESH_NS: &str = "wa-argo-mesh";
/// Where the gateways live.
const GW_NS: &str = "wa-argo-gw";

/// What the scripts say before the operator has written a status.
const NO_STATUS: &str = "Waiting for the Weft operator to report status";

fn capturing() -> bool {
    std::env::var_os("WEFT_ARGOCD_CAPTURE").is_some_and(|v| v == "1")
}

/// The API of one Weft kind in `ns` (all namespaces for the cluster-scoped MeshInstall).
fn api(bed: &Bed, kind: &str, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("weft.dev", "v1alpha1", kind));
    if kind == "MeshInstall" {
        Api::all_with(bed.client.clone(), &ar)
    } else {
        Api::namespaced_with(bed.client.clone(), ns, &ar)
    }
}

/// A condition of a raw object: (status, reason, message).
fn cond(obj: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = obj
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// Whether the status describes the current generation.
fn current(obj: &Value) -> bool {
    let observed = obj.pointer("/status/observedGeneration");
    observed.is_some() && observed == obj.pointer("/metadata/generation")
}

/// Collects captured objects per kind, checks their health, and writes them when capturing.
#[derive(Default)]
struct Captures {
    tests: BTreeMap<&'static str, Vec<(String, Health)>>,
    scratch: Option<PathBuf>,
}

impl Captures {
    /// Checks that Argo CD gives `obj` (as read when `want` was worked out from it: the
    /// object may have moved on since) `want` in both forms, and records it as testdata
    /// `stage`.yaml.
    fn capture(&mut self, kind: &'static str, obj: &Value, stage: &str, want: Health) {
        let obj = argocd::strip_noise(obj.clone());
        let file = format!("{stage}.yaml");
        let path = if capturing() {
            argocd::kind_dir(kind).join("testdata").join(&file)
        } else {
            let dir = self
                .scratch
                .get_or_insert_with(|| std::env::temp_dir().join(format!("weft-e2e-argocd-{}", std::process::id())));
            std::fs::create_dir_all(&*dir).expect("scratch dir");
            dir.join(format!("{kind}-{file}"))
        };
        std::fs::write(&path, argocd::to_yaml(&obj)).expect("write the object");
        let (upstream, cm) = argocd::evaluate(&path);
        println!("{kind} {stage}: {} {:?}", upstream.status, upstream.message);
        assert_eq!(
            upstream,
            want,
            "{kind} {stage} (upstream layout):\n{}",
            argocd::to_yaml(&obj)
        );
        assert_eq!(cm, want, "{kind} {stage} (argocd-cm):\n{}", argocd::to_yaml(&obj));
        self.tests.entry(kind).or_default().push((file, want));
    }

    /// Writes each kind's health_test.yaml and the argocd-cm patch (capture mode only).
    fn write(&self) {
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
        if !capturing() {
            return;
        }
        for kind in KINDS {
            let tests = self.tests.get(kind).cloned().unwrap_or_default();
            std::fs::write(
                argocd::kind_dir(kind).join("health_test.yaml"),
                argocd::health_test_yaml(&tests),
            )
            .expect("write health_test.yaml");
        }
        std::fs::write(argocd::configmap_path(), argocd::configmap_yaml()).expect("write argocd-cm.yaml");
    }
}

/// Waits until `kind` `name` has a status for its current generation that satisfies `f`.
async fn wait_status<F>(bed: &Bed, kind: &str, ns: &str, name: &str, what: &str, op: &Operator, f: F) -> Value
where
    F: Fn(&Value) -> bool,
{
    let api = api(bed, kind, ns);
    wait_for(&format!("{kind} {name}: {what}"), TIMEOUT, || async {
        let obj = serde_json::to_value(api.get(name).await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        if current(&obj) && f(&obj) {
            Ok(obj)
        } else {
            Err(format!("status: {}\noperator log:\n{}", obj["status"], op.log_tail()))
        }
    })
    .await
}

/// A Weft object as it is now.
async fn read(bed: &Bed, kind: &str, ns: &str, name: &str) -> Value {
    serde_json::to_value(api(bed, kind, ns).get(name).await.expect("read the object")).expect("JSON")
}

/// Creates a Weft object from JSON.
async fn create(bed: &Bed, kind: &str, ns: &str, obj: Value) {
    let obj: DynamicObject = serde_json::from_value(obj).expect("a valid object");
    api(bed, kind, ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {kind} {}: {e}", obj.name_any()));
}

/// Merge-patches the spec of a Weft object.
async fn patch_spec(bed: &Bed, kind: &str, ns: &str, name: &str, spec: Value) {
    api(bed, kind, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&json!({ "spec": spec })))
        .await
        .unwrap_or_else(|e| panic!("patch {kind} {name}: {e}"));
}

fn gateway(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
           "metadata": {"name": name, "namespace": GW_NS}, "spec": spec})
}

/// The message of condition `type_`.
fn message(obj: &Value, type_: &str) -> String {
    cond(obj, type_).map(|c| c.2).unwrap_or_default()
}

fn is(obj: &Value, type_: &str, status: &str, reason: Option<&str>) -> bool {
    cond(obj, type_).is_some_and(|c| c.0 == status && reason.is_none_or(|r| c.1 == r))
}

/// Every kind through its stages: no status yet; progressing (a control plane that cannot
/// be scheduled; a gateway waiting for its mesh; an unreachable remote cluster); Ready;
/// Stalled (an unsupported version; two gateway ports on one container port; a missing
/// credential); and a spec edited while the operator is down (its status describes an
/// older generation). Each object as read then gets the expected health in Argo CD.
#[tokio::test]
async fn weft_objects_get_their_argo_cd_health_at_every_stage() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    delete_and_wait(&bed, MESH).await;
    for ns in [MESH_NS, GW_NS] {
        let _ = bed.kubectl(&["create", "namespace", ns]);
    }
    let mut captures = Captures::default();

    // Applied before any operator runs, as GitOps may do: no status yet.
    let unschedulable = json!({"weft.dev/e2e": "no-such-node"});
    create(
        &bed,
        "MeshInstall",
        "",
        json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshInstall", "metadata": {"name": MESH},
        "spec": {"version": "1.0.0", "namespace": MESH_NS, "profile": "minimal",
                 "revisionTags": [{"name": "wa-argo-stable", "target": "Active"}],
                 "controlPlane": {"nodeSelector": unschedulable}}}),
    )
    .await;
    create(
        &bed,
        "MeshGateway",
        GW_NS,
        gateway("ingress", json!({"mesh": MESH, "revision": "wa-argo-stable"})),
    )
    .await;
    put_remote(&bed, MESH_NS, "no-secret", MESH, "no-secret", "wa-argo-absent").await;
    let none = Health::new("Progressing", NO_STATUS);
    captures.capture(
        "MeshInstall",
        &read(&bed, "MeshInstall", "", MESH).await,
        "no-status",
        none.clone(),
    );
    captures.capture(
        "MeshGateway",
        &read(&bed, "MeshGateway", GW_NS, "ingress").await,
        "no-status",
        none.clone(),
    );
    captures.capture(
        "RemoteCluster",
        &read(&bed, "RemoteCluster", MESH_NS, "no-secret").await,
        "no-status",
        none,
    );

    let op = Operator::start(&bed, "wa-argocd", &[]);
    progressing_stages(&bed, &op, &mut captures).await;
    ready_and_stalled_stages(&bed, &op, &mut captures).await;
    let op = old_generation_stages(&bed, op, &mut captures).await;

    for name in ["ingress", "waiting", "clash"] {
        let _ = api(&bed, "MeshGateway", GW_NS).delete(name, &Default::default()).await;
    }
    // What `weft remote-secret` made for the RemoteCluster that points at this cluster.
    let _ = bed.kubectl(&["delete", "clusterrole,clusterrolebinding", "weft-remote-wa-argo"]);
    let _ = bed.kubectl(&["-n", "weft-system", "delete", "serviceaccount", "weft-remote-wa-argo"]);
    delete_and_wait(&bed, MESH).await;
    for ns in [MESH_NS, GW_NS] {
        let _ = bed.kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
    drop(op);
    captures.write();
    if capturing() {
        match argocd::check_committed() {
            Ok(report) => print!("{report}"),
            Err(report) => panic!("the written health tests fail:\n{report}"),
        }
    }
}

/// Work under way: the mesh installs (its pods cannot be scheduled), a gateway waits for a
/// mesh that does not exist, a remote cluster does not answer; a missing credential stalls.
async fn progressing_stages(bed: &Bed, op: &Operator, captures: &mut Captures) {
    let mi = wait_status(bed, "MeshInstall", "", MESH, "installing", op, |o| {
        is(o, "Reconciling", "True", Some("Installing"))
    })
    .await;
    let want = Health::new("Progressing", &message(&mi, "Reconciling"));
    captures.capture("MeshInstall", &mi, "installing", want);

    create(
        bed,
        "MeshGateway",
        GW_NS,
        gateway("waiting", json!({"mesh": "wa-argo-later"})),
    )
    .await;
    let gw = wait_status(bed, "MeshGateway", GW_NS, "waiting", "waiting for its mesh", op, |o| {
        is(o, "Ready", "False", Some("WaitingForRevision"))
    })
    .await;
    assert_eq!(message(&gw, "Ready"), "MeshInstall wa-argo-later does not exist yet");
    let want = Health::new("Progressing", &message(&gw, "Ready"));
    captures.capture("MeshGateway", &gw, "waiting-for-mesh", want);

    let rc = wait_status(bed, "RemoteCluster", MESH_NS, "no-secret", "stalled", op, |o| {
        is(o, "Stalled", "True", Some("InvalidCredentials"))
    })
    .await;
    let want = Health::new("Degraded", &message(&rc, "Stalled"));
    captures.capture("RemoteCluster", &rc, "stalled-invalid-credentials", want);

    // Something listens but speaks no TLS: unreachable, which may heal, so not stalled.
    let listener = CountingListener::start();
    let server = format!("https://127.0.0.1:{}", listener.port);
    put_secret(
        bed,
        MESH_NS,
        "wa-unreachable",
        &kubeconfig(&server, None, "    token: wa-argo-e2e-token\n"),
    )
    .await;
    put_remote(bed, MESH_NS, "unreachable", MESH, "unreachable", "wa-unreachable").await;
    let rc = wait_status(bed, "RemoteCluster", MESH_NS, "unreachable", "unreachable", op, |o| {
        is(o, "Ready", "False", Some("Unreachable"))
    })
    .await;
    assert!(
        is(&rc, "Reconciling", "True", None),
        "unreachable is reconciling: {}",
        rc["status"]
    );
    let want = Health::new("Progressing", &message(&rc, "Reconciling"));
    captures.capture("RemoteCluster", &rc, "unreachable", want);
}

/// Ready: the mesh once its pods may be scheduled, its gateway, and a remote cluster whose
/// credential (made by `weft remote-secret`) reaches the test bed's own API server. Stalled:
/// a gateway whose two ports map to one container port.
async fn ready_and_stalled_stages(bed: &Bed, op: &Operator, captures: &mut Captures) {
    patch_spec(
        bed,
        "MeshInstall",
        "",
        MESH,
        json!({"controlPlane": {"nodeSelector": null}}),
    )
    .await;
    let mi = wait_status(bed, "MeshInstall", "", MESH, "Ready", op, |o| {
        is(o, "Ready", "True", None)
    })
    .await;
    let want = Health::new("Healthy", &message(&mi, "Ready"));
    captures.capture("MeshInstall", &mi, "ready", want);

    let gw = wait_status(bed, "MeshGateway", GW_NS, "ingress", "Ready", op, |o| {
        is(o, "Ready", "True", None)
    })
    .await;
    let want = Health::new("Healthy", &message(&gw, "Ready"));
    captures.capture("MeshGateway", &gw, "ready", want);

    let ports = json!([{"name": "http", "port": 80}, {"name": "alt", "port": 8080}]);
    let spec = json!({"mesh": MESH, "revision": "wa-argo-stable", "service": {"ports": ports}});
    create(bed, "MeshGateway", GW_NS, gateway("clash", spec)).await;
    let gw = wait_status(bed, "MeshGateway", GW_NS, "clash", "stalled", op, |o| {
        is(o, "Stalled", "True", Some("InvalidSpec"))
    })
    .await;
    let want = Health::new("Degraded", &message(&gw, "Stalled"));
    captures.capture("MeshGateway", &gw, "stalled-invalid-spec", want);

    apply_yaml(bed, &remote_secret(bed, "wa-self", MESH, MESH_NS));
    let rc = wait_status(bed, "RemoteCluster", MESH_NS, "wa-self", "Ready", op, |o| {
        is(o, "Ready", "True", None)
    })
    .await;
    let want = Health::new("Healthy", &message(&rc, "Ready"));
    captures.capture("RemoteCluster", &rc, "ready", want);
}

/// Specs edited while the operator is down: each status describes an older generation, so
/// nothing is Healthy until the operator catches up. Then the mesh's new version turns out
/// to be unsupported: Stalled. Returns the restarted operator.
async fn old_generation_stages(bed: &Bed, op: Operator, captures: &mut Captures) -> Operator {
    op.stop();
    let edits = [
        ("MeshInstall", "", MESH, json!({"version": "9.9.9"})),
        ("MeshGateway", GW_NS, "ingress", json!({"replicas": 2})),
        ("RemoteCluster", MESH_NS, "wa-self", json!({"network": "wa-net"})),
    ];
    for (kind, ns, name, spec) in edits {
        patch_spec(bed, kind, ns, name, spec).await;
        let obj = serde_json::to_value(api(bed, kind, ns).get(name).await.expect("read")).expect("JSON");
        assert!(is(&obj, "Ready", "True", None), "{kind} was Ready: {}", obj["status"]);
        assert!(!current(&obj), "{kind}: the status is for an older generation");
        let generation = obj["metadata"]["generation"].as_i64().expect("generation");
        let want = Health::new(
            "Progressing",
            &format!("Waiting for the Weft operator to observe generation {generation}"),
        );
        captures.capture(kind, &obj, "old-generation", want);
    }

    let op = Operator::start(bed, "wa-argocd-2", &[]);
    let mi = wait_status(bed, "MeshInstall", "", MESH, "stalled", &op, |o| {
        is(o, "Stalled", "True", Some("UnsupportedVersion"))
    })
    .await;
    let want = Health::new("Degraded", &message(&mi, "Stalled"));
    captures.capture("MeshInstall", &mi, "stalled-unsupported-version", want);
    op
}

/// The committed testdata, in the upstream layout and as argocd-cm, give the health their
/// health_test.yaml expects when run by Argo CD's Lua health code.
#[test]
fn committed_health_tests_pass_in_both_forms() {
    if capturing() {
        // The capture rewrites them, then runs this check itself.
        return;
    }
    match argocd::check_committed() {
        Ok(report) => {
            print!("{report}");
            for kind in KINDS {
                assert!(
                    report.contains(&format!("weft.dev/{kind} testdata/")),
                    "{kind} has tests:\n{report}"
                );
            }
        }
        Err(report) => panic!("Argo CD health tests failed:\n{report}"),
    }
}

/// The argocd-cm patch holds exactly the upstream health.lua of each kind (regenerate it
/// with `make argocd-testdata`).
#[test]
fn argocd_cm_patch_matches_the_upstream_scripts() {
    let committed = std::fs::read_to_string(argocd::configmap_path()).expect("read argocd-cm.yaml");
    assert!(
        committed == argocd::configmap_yaml(),
        "deploy/argocd/argocd-cm.yaml differs from deploy/argocd/health.lua; run `make argocd-testdata`"
    );
    let cm: Value = serde_saphyr::from_str(&committed).expect("argocd-cm.yaml is YAML");
    for kind in KINDS {
        // One script for every kind: each kind's file links to it, so none can drift.
        let link = std::fs::read_link(argocd::kind_dir(kind).join("health.lua"));
        assert_eq!(
            link.ok().as_deref(),
            Some(std::path::Path::new("../../../health.lua")),
            "{kind}/health.lua must link to deploy/argocd/health.lua"
        );
        let script = std::fs::read_to_string(argocd::kind_dir(kind).join("health.lua")).expect("health.lua");
        assert_eq!(
            cm["data"][argocd::configmap_key(kind)].as_str(),
            Some(script.as_str()),
            "{kind}"
        );
    }
}

/// Without the argocd-cm patch Argo CD gives a Weft object no health at all, so an
/// Application would show Healthy while its mesh is Stalled: the patch is needed.
#[test]
fn without_the_patch_argo_cd_gives_weft_objects_no_health() {
    let cm = std::env::temp_dir().join(format!("weft-e2e-argocd-cm-{}.yaml", std::process::id()));
    let bare = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\n  namespace: argocd\n  labels:\n    app.kubernetes.io/part-of: argocd\n";
    std::fs::write(&cm, bare).expect("write a bare argocd-cm");
    for kind in KINDS {
        let dir = argocd::kind_dir(kind).join("testdata");
        let stalled = std::fs::read_dir(&dir)
            .expect("testdata")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("stalled"))
            })
            .unwrap_or_else(|| panic!("{kind} has a stalled testdata file"));
        let v = argocd::evaluate_with(&cm, &stalled);
        assert_eq!(v["upstream"]["status"], "Degraded", "{kind}: {v}");
        assert!(v["argocdCm"].is_null(), "{kind}: a bare argocd-cm gives no health: {v}");
    }
    let _ = std::fs::remove_file(&cm);
}
