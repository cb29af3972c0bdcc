//! The Helm chart (deploy/helm/weft-operator) as a user meets it: `helm lint --strict`, a
//! values schema that refuses typos, rendered objects that match `crds/` and `config/rbac`,
//! and `helm upgrade` from the previous chart version with a mesh running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::Api;
use serde_json::{Value, json};
use weft::api::MeshInstall;
use weft_e2e::operator::{Operator, condition, delete_and_wait, owned_objects, wait_ready};
use weft_e2e::{Bed, OwnCluster, repo_root, wait_for};

/// The chart as of the commit before this one's changes: the "previous chart version".
const PREVIOUS_CHART_COMMIT: &str = "d726b6a";

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/weft-operator")
}

/// Runs helm with `args`: Ok(stdout) on success, else Err(stdout and stderr).
fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(weft_e2e::helm_path())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", weft_e2e::helm_path().display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "helm {} failed:\n{stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The YAML documents of a multi-document text (helm template output, a config file), parsed.
fn documents(text: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("parse {d}: {e}")))
        .collect()
}

fn read_documents(path: &Path) -> Vec<Value> {
    documents(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// The chart rendered with its defaults (and the CRDs), as Helm would install it.
fn rendered() -> Vec<Value> {
    let chart = chart();
    let out = helm(&[
        "template",
        "weft",
        chart.to_str().unwrap(),
        "--namespace",
        "weft-system",
        "--include-crds",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    documents(&out)
}

/// The one object of `kind` and `name` among `docs`.
fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered chart"))
}

#[test]
fn helm_lint_strict_is_clean_with_defaults_and_with_every_option_set() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    // Lint also renders the templates: the optional ones must be rendered too.
    let everything = "extraVersions[0].version=1.2.0,extraVersions[0].images.controlPlane=example.org/cp:1.2.0,\
                      extraVersions[0].images.proxy=example.org/proxy:1,imagePolicy.enabled=true,\
                      imagePullSecrets[0].name=pull,tolerations[0].key=dedicated,nodeSelector.pool=system,\
                      global.imageRegistry=mirror.example.com:5000/weft";
    for extra in [&[][..], &["--set", everything][..]] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend_from_slice(extra);
        let out = helm(&args).unwrap_or_else(|e| panic!("{e}"));
        // --strict fails on warnings; errors and warnings must not be there even so.
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint --strict {extra:?}:\n{out}"
        );
    }
}

#[test]
fn the_values_schema_accepts_the_documented_values_and_refuses_typos_and_wrong_types() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("weft-helm-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "replicaCount: 3\nimage:\n  repository: mirror.example.com/weft\n  tag: 0.1.0\n  pullPolicy: Always\n\
         imagePullSecrets:\n- name: pull\nresources:\n  requests:\n    cpu: 100m\n    memory: 128Mi\n\
         extraVersions:\n- version: 1.2.0\n  images:\n    controlPlane: example.org/cp:1.2.0\n    proxy: example.org/proxy:1\n\
         metrics:\n  port: 9090\nhealth:\n  port: 9091\nleaderElection:\n  leaseDurationSeconds: 30\n  leaseGraceSeconds: 10\n\
         nodeSelector:\n  pool: system\ntolerations:\n- key: dedicated\n  operator: Exists\n\
         rbacPolicy:\n  enabled: false\nimagePolicy:\n  enabled: true\n  allowedImagePrefixes:\n  - registry.example.com/weft/\n\
         networkPolicy:\n  enabled: false\n",
    )
    .unwrap();
    let out = helm(&["template", "weft", chart, "-f", good.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("mirror.example.com/weft:0.1.0"), "{out}");

    // (what a user sets, what Helm's message must name)
    for (set, named) in [
        ("imagee.tag=x", "additional properties 'imagee' not allowed"),
        ("image.tga=x", "additional properties 'tga' not allowed"),
        (
            "leaderElection.leaseDuration=30",
            "additional properties 'leaseDuration' not allowed",
        ),
        ("metrics.port=metrics", "at '/metrics/port': got string, want integer"),
        (
            "rbacPolicy.enabled=yes",
            "at '/rbacPolicy/enabled': got string, want boolean",
        ),
        ("replicaCount=two", "at '/replicaCount': got string, want integer"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        ("extraVersions[0].version=1.2.0,extraVersions[0].image=x", "'images'"),
        (
            "imagePolicy.allowedImagePrefixes[0]=registry.example.com",
            "allowedImagePrefixes/0",
        ),
        (
            "global.imageRegistry=https://mirror.example.com",
            "at '/global/imageRegistry'",
        ),
    ] {
        let err = helm(&["template", "weft", chart, "--set", set]).expect_err(&format!("--set {set} must be refused"));
        assert!(
            err.contains("values don't meet the specifications of the schema") && err.contains(named),
            "--set {set}: the error should name {named:?}:\n{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs a program that must succeed; its stdout.
fn run(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {} failed:\n{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The operator Deployment's container: its image, args and env.
fn operator_container(docs: &[Value]) -> &Value {
    &find(docs, "Deployment", "weft-operator")["spec"]["template"]["spec"]["containers"][0]
}

/// `weft versions --images [--image-registry R]`: (upstream, name used) of the operator's image,
/// and the names used for every mesh image.
fn weft_images(registry: Option<&str>) -> ((String, String), Vec<String>) {
    let mut args = vec!["versions", "--images"];
    args.extend(registry.iter().flat_map(|r| ["--image-registry", r]));
    let out = run(&weft_e2e::weft_bin(), &args);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    let used = |row: &Vec<&str>| row.get(3).unwrap_or(&row[2]).to_string();
    let operator = rows.iter().find(|r| r[0] == "operator").expect("an operator row");
    let mesh = rows.iter().filter(|r| r[0] != "operator").map(used).collect();
    ((operator[2].to_string(), used(operator)), mesh)
}

#[test]
fn one_image_name_in_weft_helm_and_kustomize_and_one_mirror_setting_for_every_image() {
    let kubectl = weft_e2e::kubectl_path();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let kustomize = |dir: &str| documents(&run(&kubectl, &["kustomize", repo_root().join(dir).to_str().unwrap()]));

    // Upstream: the same name and tag from weft, the chart's defaults and config/default.
    let ((operator, used), _) = weft_images(None);
    assert_eq!(operator, used);
    assert_eq!(operator, format!("ghcr.io/weft-dev/weft:{}", weft::VERSION));
    let helm_docs = documents(&helm(&["template", "weft", chart, "--namespace", "weft-system"]).unwrap());
    assert_eq!(
        operator_container(&helm_docs)["image"],
        operator.as_str(),
        "the chart's default image"
    );
    let kustomize_docs = kustomize("config/default");
    assert_eq!(
        operator_container(&kustomize_docs)["image"],
        operator.as_str(),
        "config/default's image"
    );

    // A mirror, set once: the chart's global.imageRegistry, or the air-gapped sample's
    // ConfigMap. The operator's image moves there, and the operator is told the mirror, which
    // `weft versions` shows moves every mesh image too (the cli test shows `render` uses it).
    let mirror = "registry.example.com/mirror";
    let ((_, mirrored), mesh) = weft_images(Some(mirror));
    assert!(mesh.iter().all(|i| i.starts_with(&format!("{mirror}/"))), "{mesh:?}");
    let helm_docs = documents(
        &helm(&[
            "template",
            "weft",
            chart,
            "--namespace",
            "weft-system",
            "--set",
            &format!("global.imageRegistry={mirror}"),
        ])
        .unwrap(),
    );
    let container = operator_container(&helm_docs);
    assert_eq!(
        container["image"],
        mirrored.as_str(),
        "the chart's image with global.imageRegistry"
    );
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("--image-registry={mirror}"))),
        "{container}"
    );
    let sample = kustomize("config/samples/air-gapped");
    let container = operator_container(&sample);
    assert_eq!(container["image"], mirrored.as_str(), "the air-gapped sample's image");
    let env = container["env"].as_array().unwrap();
    let from = env
        .iter()
        .find(|e| e["name"] == "WEFT_IMAGE_REGISTRY")
        .unwrap_or_else(|| panic!("no WEFT_IMAGE_REGISTRY in {env:?}"));
    let config_map = from["valueFrom"]["configMapKeyRef"]["name"].as_str().unwrap();
    let data = &find(&sample, "ConfigMap", config_map)["data"];
    assert_eq!(data["registry"], mirror, "the air-gapped sample's ConfigMap");
}

#[test]
fn the_charts_crds_are_those_in_crds() {
    let docs = rendered();
    let in_chart: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("crds"))
        .expect("crds/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert_eq!(
        in_chart.len(),
        files.len(),
        "the chart installs other CRDs than crds/ holds; run `make crds`"
    );
    for file in files {
        let want = &read_documents(&file)[0];
        let name = want["metadata"]["name"].as_str().expect("a CRD name");
        let got = find(&docs, "CustomResourceDefinition", name);
        assert!(
            got == want,
            "the chart's CRD {name} drifted from {}; run `make crds`",
            file.display()
        );
    }
}

#[test]
fn the_charts_cluster_role_and_rbac_policy_are_those_in_config_rbac() {
    let docs = rendered();
    let role = &read_documents(&repo_root().join("config/rbac/role.yaml"))[0];
    let name = role["metadata"]["name"].as_str().expect("a ClusterRole name");
    assert_eq!(
        find(&docs, "ClusterRole", name)["rules"],
        role["rules"],
        "the chart's ClusterRole {name} drifted from config/rbac/role.yaml"
    );

    // The admission policies: what they check (expressions and messages), what they match,
    // and the variables the expressions use. Not matchConditions: the chart knows its
    // ServiceAccount's namespace and names it, config/ (whose namespace kustomize may
    // change) accepts a weft-operator ServiceAccount in any namespace.
    for file in [
        "config/rbac/operator_rbac_policy.yaml",
        "config/rbac/operator_objects_policy.yaml",
    ] {
        for want in read_documents(&repo_root().join(file)) {
            let kind = want["kind"].as_str().expect("a kind");
            let name = want["metadata"]["name"].as_str().expect("a name");
            let got = find(&docs, kind, name);
            for field in [
                "validations",
                "variables",
                "matchConstraints",
                "policyName",
                "validationActions",
                "matchResources",
                "paramRef",
            ] {
                assert_eq!(
                    got["spec"][field], want["spec"][field],
                    "the chart's {kind} {name}: spec.{field} drifted from {file}"
                );
            }
            for c in got["spec"]["matchConditions"].as_array().into_iter().flatten() {
                let expression = c["expression"].as_str().unwrap_or_default();
                assert!(
                    expression.contains("'system:serviceaccount:weft-system:weft-operator'"),
                    "the chart's {kind} {name} should match its own ServiceAccount: {expression}"
                );
            }
        }
    }
}

/// Waits until `op` leads, has reconciled MeshInstalls at least once and has nothing queued.
async fn idle_after_reconciling(op: &Operator) {
    wait_for(
        "the operator to reconcile and go idle",
        Duration::from_secs(60),
        || async {
            let m = op.metrics()?;
            let sum = |p: &str| weft_e2e::operator::sum_metric(&m, p);
            let leading = sum("leader_election_master_status") == 1.0;
            let reconciled = sum("controller_runtime_reconcile_total{controller=\"meshinstall\"") >= 1.0;
            let idle = sum("workqueue_depth") == 0.0 && sum("controller_runtime_active_workers") == 0.0;
            if leading && reconciled && idle {
                Ok(())
            } else {
                Err(format!(
                    "leading={leading} reconciled={reconciled} idle={idle}\n{}",
                    op.log_tail()
                ))
            }
        },
    )
    .await;
}

/// The chart as of [`PREVIOUS_CHART_COMMIT`], extracted under `dir`.
fn previous_chart(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let archive = Command::new("git")
        .current_dir(repo_root())
        .args([
            "archive",
            "--format=tar",
            PREVIOUS_CHART_COMMIT,
            "deploy/helm/weft-operator",
        ])
        .output()
        .expect("run git archive");
    assert!(
        archive.status.success(),
        "git archive: {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let tar = dir.join("chart.tar");
    std::fs::write(&tar, &archive.stdout).unwrap();
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("run tar");
    assert!(untar.success(), "tar -xf {}", tar.display());
    dir.join("deploy/helm/weft-operator")
}

/// Runs helm against `bed`'s cluster, in namespace weft-system.
fn helm_on(bed: &Bed, args: &[&str]) -> String {
    let kubeconfig = bed.kubeconfig.to_str().expect("a UTF-8 path");
    let mut all = vec!["--kubeconfig", kubeconfig, "--namespace", "weft-system"];
    all.extend_from_slice(args);
    helm(&all).unwrap_or_else(|e| panic!("{e}"))
}

/// Upgrades to the current chart as a user does, and checks the upgrade took effect.
fn upgrade_as_a_user(bed: &Bed) {
    // Helm leaves crds/ alone on upgrade, so the CRDs are applied first, server side. Helm 4
    // created them server side as field manager `helm`: without --force-conflicts the apply
    // is refused (conflict with "helm": .spec.versions).
    let crds = repo_root().join("crds");
    bed.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crds.to_str().unwrap(),
    ])
    .expect("apply the current CRDs");
    let out = helm_on(bed, &["upgrade", "weft", chart().to_str().unwrap()]);
    assert!(out.contains("REVISION: 2"), "{out}");
    // The upgrade did change the cluster: the live ClusterRole is the current chart's.
    let live: Value = serde_json::from_str(
        &bed.kubectl(&["get", "clusterrole", "weft-operator", "-o", "json"])
            .expect("get the chart's ClusterRole"),
    )
    .expect("ClusterRole JSON");
    let role = &read_documents(&repo_root().join("config/rbac/role.yaml"))[0];
    assert_eq!(
        live["rules"], role["rules"],
        "helm upgrade did not apply the current ClusterRole"
    );
}

/// Status fields the current CRD has and [`PREVIOUS_CHART_COMMIT`]'s does not: the
/// operator fills them in once after the CRDs are upgraded.
const STATUS_FIELDS_SINCE_PREVIOUS_CHART: &[&str] = &["security"];

/// Asserts that `op` has sent no write to the API server but of the `(kind, verb)`s given.
fn assert_no_writes_but(op: &Operator, allowed: &[(&str, &str)]) {
    let text = op.metrics().expect("metrics");
    let others: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("weft_api_writes_total"))
        .filter(|l| {
            !allowed
                .iter()
                .any(|(k, v)| l.contains(&format!("kind=\"{k}\"")) && l.contains(&format!("verb=\"{v}\"")))
        })
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        others.is_empty(),
        "the operator wrote to the API server:\n{}",
        others.join("\n")
    );
}

#[tokio::test]
async fn helm_upgrade_from_the_previous_chart_keeps_a_running_mesh_untouched() {
    // A cluster of its own: the shared one may hold `config/rbac`'s objects (ClusterRole
    // weft-operator and the rest), which `helm install` refuses to adopt, and the chart's
    // admission policies must not outlive this test into others.
    let main = std::env::var("WEFT_E2E_CLUSTER").unwrap_or_else(|_| weft_e2e::DEFAULT_CLUSTER.into());
    let (_cluster, bed) = OwnCluster::up(&format!("{main}-helmup")).await;
    let previous = previous_chart(&bed.kubeconfig.parent().expect("cluster dir").join("helm-upgrade"));

    // The previous chart, CRDs included (Helm installs crds/ on install only). Its
    // Deployment becomes a kwok pod; the operator under test runs as a process.
    helm_on(
        &bed,
        &["install", "weft", previous.to_str().unwrap(), "--create-namespace"],
    );
    bed.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/meshinstalls.weft.dev",
    ])
    .expect("the previous chart's CRDs are established");
    let op = Operator::start(&bed, "helm-before", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    // As a user of the previous version wrote it (its CRD knows only the lowercase enum
    // spellings, so not through today's typed MeshInstall, which writes `profile: Default`).
    let previous_spec = json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshInstall",
        "metadata": {"name": "helm"},
        "spec": {"version": "1.0.0", "namespace": "e2e-helm", "profile": "default"}
    });
    weft_e2e::remote::apply_yaml(&bed, &previous_spec.to_string());
    wait_ready(&api, "helm", &op).await;
    idle_after_reconciling(&op).await;
    let before = owned_objects(&bed, "helm").await;
    assert!(before.len() > 5, "the mesh owns too few objects to compare: {before:?}");
    let mi_before = api.get("helm").await.expect("get mi");
    // The upgrade replaces the operator's pods: this one stops, a new one starts after.
    op.stop();

    upgrade_as_a_user(&bed);
    let op = Operator::start(&bed, "helm-after", &[]);
    idle_after_reconciling(&op).await;
    // The one write allowed: status fields the new CRD declares and the previous did not
    // (the operator could not store them before), filled in once.
    assert_no_writes_but(&op, &[("MeshInstall", "status")]);
    let after = owned_objects(&bed, "helm").await;
    assert_eq!(
        before, after,
        "the mesh's objects changed across helm upgrade (uid, version)"
    );
    let mi = api.get("helm").await.expect("get mi");
    let new_fields = |mi: &MeshInstall| {
        let mut s = serde_json::to_value(&mi.status).unwrap();
        for field in STATUS_FIELDS_SINCE_PREVIOUS_CHART {
            s.as_object_mut().map(|o| o.remove(*field));
        }
        s
    };
    assert_eq!(
        new_fields(&mi),
        new_fields(&mi_before),
        "the MeshInstall's status changed across the upgrade beyond the fields the new CRD added"
    );
    assert_eq!(
        mi.metadata.generation, mi_before.metadata.generation,
        "the MeshInstall's spec was written across the upgrade"
    );
    let ready = condition(&mi, "Ready");
    assert!(
        matches!(&ready, Some((s, _, _)) if s == "True"),
        "Ready={ready:?}\n{}",
        op.log_tail()
    );

    delete_and_wait(&bed, "helm").await;
    helm_on(&bed, &["uninstall", "weft"]);
    op.stop();
}
