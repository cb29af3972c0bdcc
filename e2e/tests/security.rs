//! The security model on the test bed (`docs/security.md`): the admission policy that bounds
//! the operator's RBAC refuses escalation and admits what a revision renders; image overrides
//! are limited to the registries an admin allows; a mesh and a gateway run in namespaces that
//! enforce Pod Security `restricted`, behind the revision's NetworkPolicy.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use weft::api::MeshInstall;
use weft::api::mesh_gateway::MeshGateway;
use weft_e2e::operator::{Operator, SERIAL, TIMEOUT, delete_and_wait, install_crds, mesh, wait_ready};
use weft_e2e::{Bed, repo_root, wait_for, weft_bin};

/// The operator's ServiceAccount, as `config/rbac` names it.
const OPERATOR_SA: &str = "system:serviceaccount:weft-system:weft-operator";

fn cluster_file(bed: &Bed, name: &str) -> PathBuf {
    bed.kubeconfig.with_file_name(name)
}

/// kubectl as the operator's ServiceAccount (impersonated by the admin).
fn as_operator(bed: &Bed, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["--as", OPERATOR_SA];
    all.extend_from_slice(args);
    bed.kubectl(&all)
}

/// Applies `config/rbac` (the operator's RBAC and the policy that bounds it) and waits until
/// the API server enforces the policy.
async fn apply_operator_rbac(bed: &Bed) {
    let _ = bed.kubectl(&["create", "namespace", "weft-system"]);
    let rbac = repo_root().join("config/rbac");
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
    // The policy takes effect once the API server's admission plugin has seen it.
    wait_for("the RBAC policy to be enforced", TIMEOUT, || async {
        match as_operator(
            bed,
            &["delete", "clusterrolebinding", "weft-operator", "--dry-run=server"],
        ) {
            Err(e) if e.contains("weft-operator-rbac") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// The escalation from issue 15: the operator may bind anything it holds, so without the
/// policy it could grant cluster-wide Secret read to every authenticated user. With
/// `config/rbac` applied, each way of doing so is refused with the policy's message, while
/// everything `weft render` produces for a revision is applied and deleted as the operator.
/// Asserts that `result` is a refusal by ValidatingAdmissionPolicy `policy` with `message`.
fn refused_by(policy: &str, what: &str, result: Result<String, String>, message: &str) {
    let err = result.expect_err(&format!("{what} must be refused"));
    assert!(
        err.contains(&format!("ValidatingAdmissionPolicy '{policy}'")) && err.contains(message),
        "{what}: refused, but not with {message:?}: {err}"
    );
}

#[tokio::test]
async fn the_rbac_policy_refuses_escalation_and_admits_what_a_revision_renders() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    apply_operator_rbac(&bed).await;
    // RBAC alone lets the operator write any binding: only the policy stands in the way.
    let can = as_operator(&bed, &["auth", "can-i", "create", "clusterrolebindings"]);
    assert_eq!(can.as_deref().map(str::trim), Ok("yes"));

    // What the operator really renders, from a live MeshInstall (owner references need its uid).
    let ns = "e2e-sec-rbac-mesh";
    let _ = bed.kubectl(&["create", "namespace", ns]);
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    let _ = meshes.delete("sec-rbac", &DeleteParams::default()).await;
    let mi = mesh("sec-rbac", ns, json!({"revisionTags": [{"name": "sec-stable"}]}));
    meshes.create(&PostParams::default(), &mi).await.expect("create mesh");
    let live = bed
        .kubectl(&["get", "meshinstall", "sec-rbac", "-o", "yaml"])
        .expect("get mesh");
    let mesh_file = cluster_file(&bed, "sec-rbac-mesh.yaml");
    std::fs::write(&mesh_file, live).expect("write mesh");
    let rendered = std::process::Command::new(weft_bin())
        .args(["render", "-f"])
        .arg(&mesh_file)
        .output()
        .expect("run weft render");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let objects_file = cluster_file(&bed, "sec-rbac-rendered.yaml");
    std::fs::write(&objects_file, &rendered.stdout).expect("write rendered");
    let objects = objects_file.to_str().unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout).into_owned();
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
    ] {
        assert!(text.contains(&format!("kind: {kind}\n")), "{kind} rendered:\n{text}");
    }
    let dry = as_operator(
        &bed,
        &[
            "apply",
            "--server-side",
            "--field-manager=weft-operator",
            "--dry-run=server",
            "-f",
            objects,
        ],
    );
    // A binding's dry run needs its role to exist (RBAC checks the role's rules), so apply.
    let applied = as_operator(
        &bed,
        &["apply", "--server-side", "--field-manager=weft-operator", "-f", objects],
    );
    assert!(
        applied.is_ok(),
        "the operator may apply what it renders: {applied:?} (dry run: {dry:?})"
    );
    let again = as_operator(
        &bed,
        &[
            "apply",
            "--server-side",
            "--field-manager=weft-operator",
            "--dry-run=server",
            "-f",
            objects,
        ],
    );
    assert!(again.is_ok(), "server-side dry run as the operator: {again:?}");

    // An admin's ClusterRole that reads every Secret, which the operator holds too.
    bed.kubectl(&[
        "create",
        "clusterrole",
        "e2e-secret-reader",
        "--verb=get,list,watch",
        "--resource=secrets",
        "--dry-run=client",
        "-o",
        "yaml",
    ])
    .and_then(|y| {
        let f = cluster_file(&bed, "sec-secret-reader.yaml");
        std::fs::write(&f, y).map_err(|e| e.to_string())?;
        bed.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=weft-e2e",
            "-f",
            f.to_str().unwrap(),
        ])
    })
    .expect("admin creates e2e-secret-reader");

    let refused = |what: &str, result, message: &str| refused_by("weft-operator-rbac", what, result, message);
    refused(
        "a ClusterRoleBinding granting Secret read to system:authenticated",
        as_operator(
            &bed,
            &[
                "create",
                "clusterrolebinding",
                "e2e-read-secrets",
                "--clusterrole=e2e-secret-reader",
                "--group=system:authenticated",
            ],
        ),
        "may create, change or delete only RBAC objects it manages",
    );
    let disguised = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "weft-cp-sec-rbac", "labels": {"app.kubernetes.io/managed-by": "weft-operator"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weft-cp-sec-rbac"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]
    });
    refused(
        "our own ClusterRoleBinding re-pointed at system:authenticated",
        apply_json_as_operator(&bed, "sec-disguised.json", &disguised),
        "has one subject, the ServiceAccount of its own name",
    );
    let cluster_admin = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "weft-cp-sec-other", "labels": {"app.kubernetes.io/managed-by": "weft-operator"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "e2e-secret-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "weft-cp-sec-other", "namespace": ns}]
    });
    refused(
        "our ClusterRoleBinding bound to another role",
        apply_json_as_operator(&bed, "sec-roleref.json", &cluster_admin),
        "refers only to the role of its own name",
    );
    let secret_role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "weft-cp-sec-rbac", "labels": {"app.kubernetes.io/managed-by": "weft-operator"}},
        "rules": [{"apiGroups": [""], "resources": ["services", "secrets"], "verbs": ["get", "list", "watch"]}]
    });
    refused(
        "cluster-wide Secret read in our ClusterRole",
        apply_json_as_operator(&bed, "sec-secret-role.json", &secret_role),
        "may not grant Secrets",
    );
    let wildcard = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "weft-cp-sec-rbac", "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "weft-operator"}},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update", "delete"]}]
    });
    refused(
        "write verbs in our Role",
        apply_json_as_operator(&bed, "sec-wildcard.json", &wildcard),
        "may only get, list and watch",
    );
    let all_secrets = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "weft-cp-sec-rbac", "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "weft-operator"}},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]
    });
    refused(
        "every Secret of the mesh namespace in our Role",
        apply_json_as_operator(&bed, "sec-all-secrets.json", &all_secrets),
        "grants Secrets only by name",
    );
    // What the operator renders once the mesh has a RemoteCluster: its Secret, by name.
    let mut named = all_secrets.clone();
    named["rules"][0]["resourceNames"] = json!(["weft-remote-b"]);
    let admitted = apply_json_as_operator(&bed, "sec-named-secret.json", &named);
    assert!(admitted.is_ok(), "a Role reading one named Secret: {admitted:?}");
    // (Wildcards, escalate, bind and impersonate the operator does not hold, so RBAC itself
    // refuses them before the policy is asked; the policy refuses them too, for an operator
    // given more rights.)
    let escalate = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "weft-cp-sec-rbac", "labels": {"app.kubernetes.io/managed-by": "weft-operator"}},
        "rules": [{"apiGroups": ["apps"], "resources": ["deployments", "daemonsets"], "verbs": ["get", "patch"]}]
    });
    refused(
        "cluster-wide workload writes in our ClusterRole",
        apply_json_as_operator(&bed, "sec-escalate.json", &escalate),
        "may only get, list and watch",
    );
    let system_role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "weft-cp-sec-rbac", "namespace": "kube-system", "labels": {"app.kubernetes.io/managed-by": "weft-operator"}},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]
    });
    refused(
        "a Role reading kube-system's Secrets",
        apply_json_as_operator(&bed, "sec-kube-system.json", &system_role),
        "manages no RBAC in kube-* namespaces",
    );
    let system_subject = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "weft-cp-sec-rbac", "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "weft-operator"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "weft-cp-sec-rbac"},
        "subjects": [{"kind": "ServiceAccount", "name": "weft-cp-sec-rbac", "namespace": "kube-system"}]
    });
    refused(
        "our RoleBinding granting a kube-system ServiceAccount",
        apply_json_as_operator(&bed, "sec-kube-subject.json", &system_subject),
        "no users, groups, system:authenticated or kube-* namespaces",
    );
    refused(
        "deleting another's binding",
        as_operator(&bed, &["delete", "clusterrolebinding", "weft-operator"]),
        "refused: ClusterRoleBinding weft-operator",
    );
    refused(
        "deleting the admin's ClusterRole",
        as_operator(&bed, &["delete", "clusterrole", "e2e-secret-reader"]),
        "refused: ClusterRole e2e-secret-reader",
    );
    objects_policy_refuses_takeover_and_tokens(&bed, ns);
    let nothing = bed.kubectl(&[
        "get",
        "clusterrolebinding",
        "e2e-read-secrets",
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    assert_eq!(nothing.as_deref(), Ok(""), "no binding was created");

    // What it rendered, it may delete (pruning).
    let deleted = as_operator(&bed, &["delete", "--wait=false", "-f", objects]);
    assert!(deleted.is_ok(), "the operator may delete what it renders: {deleted:?}");

    let _ = bed.kubectl(&["delete", "clusterrole", "e2e-secret-reader"]);
    let _ = meshes.delete("sec-rbac", &DeleteParams::default()).await;
    let _ = bed.kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

/// `weft-operator-objects`: as the operator, another's Deployment cannot be taken over or
/// deleted, a pod cannot run as another ServiceAccount with a token, nothing goes into
/// kube-system; a labelled, tokenless Deployment is admitted.
fn objects_policy_refuses_takeover_and_tokens(bed: &Bed, ns: &str) {
    let _ = bed.kubectl(&["-n", ns, "delete", "deployment", "e2e-victim", "--ignore-not-found"]);
    bed.kubectl(&[
        "-n",
        ns,
        "create",
        "deployment",
        "e2e-victim",
        "--image=registry.invalid/web:1",
    ])
    .expect("admin creates a Deployment");
    let deployment = |name: &str, namespace: &str, pod: serde_json::Value| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "weft-operator"}},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}},
                "spec": pod}}
        })
    };
    let container = json!([{"name": "c", "image": "evil.example/x:1"}]);
    let tokenless = json!({"automountServiceAccountToken": false, "containers": container});
    let refused = |what: &str, result, message: &str| refused_by("weft-operator-objects", what, result, message);
    refused(
        "taking over another's Deployment",
        apply_json_as_operator(
            bed,
            "sec-takeover.json",
            &deployment("e2e-victim", ns, tokenless.clone()),
        ),
        "never another's object of the same name",
    );
    refused(
        "deleting another's Deployment",
        as_operator(bed, &["-n", ns, "delete", "deployment", "e2e-victim"]),
        "never another's object of the same name",
    );
    let with_token = json!({"serviceAccountName": "default", "containers": container});
    refused(
        "a pod with another ServiceAccount's token",
        apply_json_as_operator(bed, "sec-token.json", &deployment("e2e-token", ns, with_token)),
        "or mounts no API token",
    );
    // A projected token is refused unless it is for the mesh CA alone (audience weft-ca).
    let projected = |audience: Option<&str>| {
        let mut token = json!({"path": "token", "expirationSeconds": 3600});
        if let Some(a) = audience {
            token["audience"] = json!(a);
        }
        json!({"automountServiceAccountToken": false, "containers": container,
               "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": token}]}}]})
    };
    refused(
        "a projected token for the API server",
        apply_json_as_operator(
            bed,
            "sec-projected.json",
            &deployment("e2e-projected", ns, projected(None)),
        ),
        "or mounts no API token",
    );
    refused(
        "a Deployment in kube-system",
        apply_json_as_operator(
            bed,
            "sec-kube.json",
            &deployment("e2e-kube", "kube-system", tokenless.clone()),
        ),
        "creates nothing in kube-* namespaces",
    );
    for (what, pod) in [
        ("a labelled, tokenless Deployment", tokenless),
        (
            "a labelled Deployment with a token for the mesh CA only",
            projected(Some("weft-ca")),
        ),
    ] {
        let path = cluster_file(bed, "sec-ours.json");
        std::fs::write(&path, deployment("e2e-ours", ns, pod).to_string()).expect("write");
        let admitted = as_operator(
            bed,
            &[
                "apply",
                "--server-side",
                "--field-manager=weft-operator",
                "--dry-run=server",
                "-f",
                path.to_str().unwrap(),
            ],
        );
        assert!(admitted.is_ok(), "{what}: {admitted:?}");
    }
}

fn apply_json_as_operator(bed: &Bed, file: &str, object: &serde_json::Value) -> Result<String, String> {
    let path = cluster_file(bed, file);
    std::fs::write(&path, object.to_string()).map_err(|e| e.to_string())?;
    as_operator(
        bed,
        &[
            "apply",
            "--server-side",
            "--field-manager=weft-operator",
            "-f",
            path.to_str().unwrap(),
        ],
    )
}

/// Removes the image policy when the test ends (pass or fail): it is cluster-wide and other
/// tests override images.
struct ImagePolicy<'a>(&'a Bed);

impl Drop for ImagePolicy<'_> {
    fn drop(&mut self) {
        let policy = repo_root().join("config/policy");
        let _ = self.0.kubectl(&[
            "delete",
            "-k",
            policy.to_str().unwrap_or_default(),
            "--ignore-not-found",
        ]);
    }
}

/// `config/policy` (its refusals are tested in `admission.rs`): it still refuses after a
/// delete and immediate re-apply; narrowing the allowed registries refuses new overrides
/// from the dropped one, but never blocks an update that leaves an existing override as it
/// was (the operator's finalizer updates among them).
#[tokio::test]
async fn image_policy_survives_reapply_and_narrowing_does_not_block_updates() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let _ = bed.kubectl(&["create", "namespace", "weft-system"]);
    let policy = repo_root().join("config/policy");
    let _cleanup = ImagePolicy(&bed);
    // Deleted and re-applied at once, it still holds (a ConfigMap parameter would not:
    // kube-apiserver then loses it for good, and the policy admitted any image).
    for verb in ["apply", "delete", "apply"] {
        bed.kubectl(&[verb, "-k", policy.to_str().unwrap()])
            .expect("apply or delete config/policy");
    }
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let evil = mesh(
        "sec-images-evil",
        "e2e-sec-images",
        json!({"proxy": {"image": "evil.example/proxy:1"}}),
    );
    wait_for("the re-applied policy to refuse", TIMEOUT, || async {
        match meshes.create(&dry, &evil).await {
            Err(e) if e.to_string().contains("refused: evil.example/proxy:1") => Ok(()),
            r => Err(format!("{r:?}")),
        }
    })
    .await;
    // The admin edits the list in the policy (a CEL list literal).
    let prefixes = |list: &str| {
        let patch = json!([{"op": "replace", "path": "/spec/variables/0/expression", "value": list}]);
        bed.kubectl(&[
            "patch",
            "validatingadmissionpolicy",
            "weft-image-overrides",
            "--type=json",
            "-p",
            &patch.to_string(),
        ])
        .expect("edit allowed images")
    };
    prefixes("['registry.example.com/weft/', 'mirror.example.org/weft/']");
    let _ = meshes.delete("sec-images", &DeleteParams::default()).await;
    let image = "mirror.example.org/weft/control-plane:1";
    let mi = mesh(
        "sec-images",
        "e2e-sec-images",
        json!({"controlPlane": {"image": image}}),
    );
    wait_for("the mirror to be allowed", TIMEOUT, || async {
        meshes
            .create(&PostParams::default(), &mi)
            .await
            .map_err(|e| e.to_string())
    })
    .await;

    prefixes("['registry.example.com/weft/']");
    let other = mesh(
        "sec-images-2",
        "e2e-sec-images",
        json!({"controlPlane": {"image": image}}),
    );
    wait_for("the mirror to be refused for new overrides", TIMEOUT, || async {
        match meshes.create(&dry, &other).await {
            Err(e)
                if e.to_string()
                    .contains("refused: mirror.example.org/weft/control-plane:1") =>
            {
                Ok(())
            }
            r => Err(format!("{r:?}")),
        }
    })
    .await;
    let finalizer = bed.kubectl(&[
        "patch",
        "meshinstall",
        "sec-images",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["weft.dev/e2e"]},"spec":{"profile":"minimal"}}"#,
    ]);
    assert!(finalizer.is_ok(), "an update that keeps the override: {finalizer:?}");
    let changed = bed.kubectl(&[
        "patch",
        "meshinstall",
        "sec-images",
        "--type=merge",
        "-p",
        r#"{"spec":{"proxy":{"image":"mirror.example.org/weft/proxy:1"}}}"#,
    ]);
    assert!(
        changed
            .as_ref()
            .is_err_and(|e| e.contains("refused: mirror.example.org/weft/proxy:1")),
        "a new override from the dropped registry: {changed:?}"
    );
    bed.kubectl(&[
        "patch",
        "meshinstall",
        "sec-images",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .expect("remove the finalizer");
    let _ = meshes.delete("sec-images", &DeleteParams::default()).await;
}

/// Creates a namespace that enforces Pod Security `restricted`.
async fn restricted_namespace(bed: &Bed, name: &str) {
    let api: Api<Namespace> = Api::all(bed.client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    wait_for(&format!("namespace {name} to be gone"), TIMEOUT, || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|n| n.map(|n| n.name_any())))),
        }
    })
    .await;
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                [
                    ("pod-security.kubernetes.io/enforce", "restricted"),
                    ("pod-security.kubernetes.io/enforce-version", "latest"),
                    ("weft.dev/e2e", "true"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns).await.expect("create namespace");
}

/// Events that say a controller could not create pods in `ns` (Pod Security refusals).
async fn failed_creates(bed: &Bed, ns: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(bed.client.clone(), ns);
    let list = events.list(&ListParams::default()).await.expect("list events");
    list.items
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("FailedCreate")
                || e.message.as_deref().is_some_and(|m| m.contains("PodSecurity"))
        })
        .map(|e| format!("{:?}: {:?}", e.reason, e.message))
        .collect()
}

/// Every pod Weft renders passes Pod Security `restricted`: the control plane and node
/// proxies in an enforcing mesh namespace and a gateway in another get their pods created
/// (no FailedCreate), and the revision's NetworkPolicy is accepted by the API server.
#[tokio::test]
async fn mesh_and_gateway_run_where_pod_security_restricted_is_enforced() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let mesh_ns = "e2e-sec-restricted-mesh";
    let gw_ns = "e2e-sec-restricted-gw";
    restricted_namespace(&bed, mesh_ns).await;
    restricted_namespace(&bed, gw_ns).await;
    // The namespaces do enforce: a pod that is not `restricted` is refused.
    let pods: Api<Pod> = Api::namespaced(bed.client.clone(), mesh_ns);
    let loose: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loose"},
        "spec": {"containers": [{"name": "c", "image": "registry.invalid/x:1"}]}
    }))
    .expect("valid pod");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let refused = pods
        .create(&dry, &loose)
        .await
        .expect_err("a pod that is not restricted");
    assert!(refused.to_string().contains("violates PodSecurity"), "{refused}");

    let op = Operator::start(&bed, "security", &[]);
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "sec-psa").await;
    let spec = json!({"revisionTags": [{"name": "sec-psa-stable", "target": "Active"}]});
    meshes
        .create(&PostParams::default(), &mesh("sec-psa", mesh_ns, spec))
        .await
        .expect("create mesh");
    let mi = wait_ready(&meshes, "sec-psa", &op).await;
    let rev = mi
        .status
        .as_ref()
        .and_then(|s| s.active_revision.clone())
        .expect("an active revision");

    let gateways: Api<MeshGateway> = Api::namespaced(bed.client.clone(), gw_ns);
    let gw: MeshGateway = serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
        "metadata": {"name": "ingress", "namespace": gw_ns},
        "spec": {"mesh": "sec-psa", "revision": "sec-psa-stable", "replicas": 2}
    }))
    .expect("valid gateway");
    gateways
        .create(&PostParams::default(), &gw)
        .await
        .expect("create gateway");

    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), gw_ns);
    wait_for("the gateway's pods to be available", TIMEOUT, || async {
        let d = deployments.get_opt("ingress").await.map_err(|e| e.to_string())?;
        let available = d
            .as_ref()
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.available_replicas);
        if available == Some(2) {
            Ok(())
        } else {
            Err(format!("available={available:?}\n{}", op.log_tail()))
        }
    })
    .await;
    let daemons: Api<DaemonSet> = Api::namespaced(bed.client.clone(), mesh_ns);
    let proxy = daemons.get(&format!("weft-proxy-{rev}")).await.expect("node proxies");
    let scheduled = proxy.status.as_ref().map(|s| s.current_number_scheduled);
    assert!(scheduled.is_some_and(|n| n > 0), "node-proxy pods: {:?}", proxy.status);

    for ns in [mesh_ns, gw_ns] {
        let pods: Api<Pod> = Api::namespaced(bed.client.clone(), ns);
        let n = pods.list(&ListParams::default()).await.expect("list pods").items.len();
        assert!(n > 0, "pods in {ns}");
        let failed = failed_creates(&bed, ns).await;
        assert!(failed.is_empty(), "pods refused in {ns}: {failed:?}");
    }

    let policies: Api<NetworkPolicy> = Api::namespaced(bed.client.clone(), mesh_ns);
    let np = policies
        .get(&format!("weft-cp-{rev}"))
        .await
        .expect("the revision's NetworkPolicy was accepted");
    let spec = serde_json::to_value(np.spec).expect("encode");
    assert_eq!(spec["ingress"][0]["ports"][0]["port"], 15010, "{spec}");
    let mut revs = vec!["default".to_string(), rev.clone(), "sec-psa-stable".to_string()];
    revs.sort();
    assert_eq!(
        spec["ingress"][0]["from"][1]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(revs),
        "{spec}"
    );

    gateways
        .delete("ingress", &DeleteParams::default())
        .await
        .expect("delete gateway");
    delete_and_wait(&bed, "sec-psa").await;
    for ns in [mesh_ns, gw_ns] {
        let _ = bed.kubectl(&["delete", "namespace", ns, "--wait=false"]);
    }
    op.stop();
}
