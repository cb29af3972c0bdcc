//! Flux end to end: Flux's source-controller and kustomize-controller (built from their Go
//! modules) run as processes against the test bed and apply, from a Git repository served
//! over smart HTTP on 127.0.0.1, Weft's CRDs, a MeshInstall and a MeshGateway with the
//! Kustomization documented in `deploy/flux/weft.yaml`. The operator runs as a process, as
//! in the other tests. What is checked is what a user of Flux sees: the Kustomization's
//! Ready condition and message, the Weft objects' status, what exists in the cluster,
//! Flux's own apply log (one line per apply, each object `created`, `configured` or
//! `unchanged`: how it reports drift) and the operator's metrics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use weft::api::MeshInstall;
use weft::api::mesh_gateway::MeshGateway;
use weft_e2e::flux::{self, Flux};
use weft_e2e::githttp::GitServer;
use weft_e2e::operator::{Operator, SERIAL, condition, owned_objects};
use weft_e2e::{Bed, repo_root, wait_for};

const MESH: &str = "fluxmesh";
const MESH_NS: &str = "e2e-flux";
/// The MeshGateway's namespace (in Git too) and name; it follows the stable tag.
const GW_NS: &str = "e2e-flux-gw";
const GW: &str = "ingress";
/// The MeshInstall (and directory, and Kustomization) that shows `wait: true` alone.
const BARE: &str = "fluxbare";
const OLD: &str = "fluxmesh-v1-0-0";
const NEW: &str = "fluxmesh-v1-1-0";
/// How long a step may take: Flux polls health every 5 s, the canary waits minReadySeconds.
const STEP: Duration = Duration::from_secs(90);

/// The MeshInstall as a user commits it: RevisionBased, so a version bump is a canary.
/// Its minReadySeconds outlasts two of Flux's health polls (every 5 s): a Flux that did not
/// wait for Ready would be seen Ready mid-canary.
fn mesh_yaml(version: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1
kind: MeshInstall
metadata:
  name: {MESH}
spec:
  version: \"{version}\"
  namespace: {MESH_NS}
  profile: Minimal
  updateStrategy:
    type: RevisionBased
    inactiveRevisionDeletionGracePeriodSeconds: 2
    promotion: {{minReadySeconds: 12, progressDeadlineSeconds: 60}}
  revisionTags:
  - {{name: flux-stable, target: Active}}
  - {{name: flux-canary, target: Latest}}
"
    )
}

/// A namespace and a MeshGateway in it that follows the mesh's Active tag.
fn gateway_yaml() -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: {GW_NS}
---
apiVersion: weft.dev/v1alpha1
kind: MeshGateway
metadata:
  name: {GW}
  namespace: {GW_NS}
spec:
  mesh: {MESH}
  revision: flux-stable
  type: Ingress
"
    )
}

/// The two objects of `deploy/flux/weft.yaml`: (GitRepository, Kustomization).
fn documented() -> (Value, Value) {
    let text = std::fs::read_to_string(repo_root().join("deploy/flux/weft.yaml")).expect("read deploy/flux/weft.yaml");
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("parse {d}: {e}")))
        .collect();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} in deploy/flux/weft.yaml"))
    };
    (find("GitRepository"), find("Kustomization"))
}

/// The documented objects, pointed at the test's repository and namespace, with intervals
/// of seconds (reconciles are also requested explicitly) and a short first timeout.
fn flux_objects(ns: &str, url: &str) -> (Value, Value) {
    let (mut repo, mut ks) = documented();
    assert_eq!(ks["spec"]["wait"], true, "the documented Kustomization waits");
    assert_eq!(ks["spec"]["prune"], true, "the documented Kustomization prunes");
    let kinds: Vec<&Value> = ks["spec"]["healthCheckExprs"]
        .as_array()
        .expect("healthCheckExprs")
        .iter()
        .map(|e| &e["kind"])
        .collect();
    assert_eq!(kinds, [&json!("MeshInstall"), &json!("MeshGateway")]);
    repo["metadata"]["namespace"] = json!(ns);
    repo["spec"]["url"] = json!(url);
    repo["spec"]["interval"] = json!("1h");
    ks["metadata"]["namespace"] = json!(ns);
    ks["spec"]["sourceRef"]["name"] = repo["metadata"]["name"].clone();
    ks["spec"]["path"] = json!("./weft");
    ks["spec"]["interval"] = json!("30s");
    ks["spec"]["retryInterval"] = json!("3s");
    // Flux's shortest timeout: it uses 30 s for anything shorter.
    ks["spec"]["timeout"] = json!("30s");
    (repo, ks)
}

/// The repository's first commit: Weft's CRDs, the MeshInstall and the MeshGateway under
/// `weft/`, and another MeshInstall under `fluxbare/`.
fn initial_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("crds")).expect("read crds/") {
        let path = entry.expect("crds/ entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.push((
                format!("weft/crds/{name}"),
                std::fs::read_to_string(&path).expect("read CRD"),
            ));
        }
    }
    files.push(("weft/mesh.yaml".into(), mesh_yaml("1.0.0")));
    files.push(("weft/gateway.yaml".into(), gateway_yaml()));
    files.push((
        format!("{BARE}/mesh.yaml"),
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: MeshInstall\nmetadata:\n  name: {BARE}\nspec:\n  version: 1.0.0\n  namespace: e2e-{BARE}\n"
        ),
    ));
    files
}

/// What one look at the cluster saw.
#[derive(Debug)]
struct Sample {
    /// The Kustomization's Ready: (status, reason, message, lastTransitionTime).
    ready: Option<(String, String, String, String)>,
    /// The revision it last applied successfully.
    applied: String,
    /// The MeshInstall, if it exists.
    mesh: Option<MeshInstall>,
    /// The MeshGateway, if it exists.
    gateway: Option<MeshGateway>,
}

impl Sample {
    async fn take(t: &Setup) -> Result<Sample, String> {
        let k = t.kss.get(&t.ks_name).await.map_err(|e| e.to_string())?;
        Ok(Sample {
            ready: flux::condition(&k, "Ready"),
            applied: k
                .data
                .pointer("/status/lastAppliedRevision")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            mesh: t.mi.get_opt(MESH).await.map_err(|e| e.to_string())?,
            gateway: t.gw.get_opt(GW).await.map_err(|e| e.to_string())?,
        })
    }

    /// Flux says Ready for a revision ending in `commit`.
    fn flux_ready_at(&self, commit: &str) -> bool {
        self.ready.as_ref().is_some_and(|r| r.0 == "True") && self.applied.ends_with(commit)
    }

    /// The MeshInstall is Ready for its current generation.
    fn mesh_ready(&self) -> bool {
        self.mesh.as_ref().is_some_and(|mi| {
            mi.status.as_ref().and_then(|s| s.observed_generation) == mi.metadata.generation
                && condition(mi, "Ready").is_some_and(|c| c.0 == "True")
        })
    }

    /// The MeshGateway is Ready for its current generation, on `revision`.
    fn gateway_ready_on(&self, revision: &str) -> bool {
        self.gateway.as_ref().is_some_and(|gw| {
            let s = gw.status.clone().unwrap_or_default();
            s.observed_generation == gw.metadata.generation
                && s.revision.as_deref() == Some(revision)
                && s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
        })
    }

    fn active(&self) -> Option<String> {
        self.mesh.as_ref()?.status.as_ref()?.active_revision.clone()
    }

    fn tag(&self, tag: &str) -> Option<String> {
        let s = self.mesh.as_ref()?.status.as_ref()?;
        s.tags.iter().find(|t| t.name == tag).map(|t| t.revision.clone())
    }
}

/// Everything the test drives: the bed, Flux, the repository and the objects' APIs.
struct Setup {
    bed: Bed,
    flux: Flux,
    git: GitServer,
    ns: String,
    repos: Api<DynamicObject>,
    kss: Api<DynamicObject>,
    mi: Api<MeshInstall>,
    gw: Api<MeshGateway>,
    repo_name: String,
    ks_name: String,
    /// When the Kustomizations were created.
    created: Instant,
}

impl Setup {
    /// Polls until `done` accepts a sample; `check` is asserted on every sample on the way.
    async fn until<D, C>(&self, what: &str, op: Option<&Operator>, done: D, mut check: C) -> Sample
    where
        D: Fn(&Sample) -> bool,
        C: FnMut(&Sample),
    {
        let mut last;
        let deadline = Instant::now() + STEP;
        loop {
            match Sample::take(self).await {
                Ok(s) => {
                    check(&s);
                    if done(&s) {
                        return s;
                    }
                    last = format!("{s:?}");
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {STEP:?} waiting for {what}; last seen: {last}\n{}\noperator log:\n{}",
                    self.flux.log_tail(),
                    op.map(Operator::log_tail).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Commits, asks the source-controller to fetch, and returns the commit id (Flux's
    /// revision string is `main@sha1:<id>`).
    async fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        let id = self.git.commit(files, message);
        flux::request_reconcile(&self.repos, &self.repo_name).await;
        id
    }

    /// Reverts a commit (`git revert`) and asks the source-controller to fetch.
    async fn revert(&self, id: &str) -> String {
        let id = self.git.revert(id);
        flux::request_reconcile(&self.repos, &self.repo_name).await;
        id
    }

    /// Sets the Kustomization's timeout (a spec change: Flux reconciles at once).
    async fn set_timeout(&self, timeout: &str) {
        self.kss
            .patch(
                &self.ks_name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"timeout": timeout}})),
            )
            .await
            .expect("set the Kustomization's timeout");
    }
}

/// Starts Flux with its CRDs, a Git server holding the first commit, and the documented
/// Kustomization (and the one without healthCheckExprs) pointed at it.
async fn start() -> Setup {
    let bed = Bed::connect().await;
    // Weft's CRDs are not installed here: Flux applies them from Git.
    flux::install_crds(&bed).await;
    let ns = bed.namespace("flux").await.name;
    let dir = bed
        .kubeconfig
        .parent()
        .expect("cluster dir")
        .join(format!("flux-git-{ns}"));
    let git = GitServer::start(&dir, "cluster", &dir.with_extension("log"));
    let files = initial_files();
    let refs: Vec<(&str, Option<&str>)> = files.iter().map(|(p, c)| (p.as_str(), Some(c.as_str()))).collect();
    git.commit(&refs, "Weft: CRDs and a MeshInstall at 1.0.0");
    let flux = Flux::start(&bed, &ns).await;
    let (repo, ks) = flux_objects(&ns, &git.url());
    let repos = flux::api(&bed.client, &ns, &flux::git_repository());
    let kss = flux::api(&bed.client, &ns, &flux::kustomization());
    let create = |v: &Value| serde_json::from_value::<DynamicObject>(v.clone()).expect("a Flux object");
    let created = Instant::now();
    repos
        .create(&PostParams::default(), &create(&repo))
        .await
        .expect("create the GitRepository");
    kss.create(&PostParams::default(), &create(&ks))
        .await
        .expect("create the Kustomization");
    // The same Kustomization without healthCheckExprs, for another directory.
    let mut bare = ks.clone();
    bare["metadata"]["name"] = json!(BARE);
    bare["spec"]["path"] = json!(format!("./{BARE}"));
    bare["spec"].as_object_mut().expect("spec").remove("healthCheckExprs");
    kss.create(&PostParams::default(), &create(&bare))
        .await
        .expect("create the Kustomization without healthCheckExprs");
    let mi = Api::all(bed.client.clone());
    let bed_client = bed.client.clone();
    Setup {
        repo_name: repo["metadata"]["name"].as_str().expect("name").to_string(),
        ks_name: ks["metadata"]["name"].as_str().expect("name").to_string(),
        created,
        bed,
        flux,
        git,
        ns,
        repos,
        kss,
        mi,
        gw: Api::namespaced(bed_client, GW_NS),
    }
}

/// No operator, `wait: true` without healthCheckExprs: kstatus counts an object without
/// status as Current, so Flux says Ready within seconds for a MeshInstall nobody has looked
/// at. Then that Kustomization is deleted; it prunes its MeshInstall.
async fn wait_alone_reports_a_status_less_mesh_ready(t: &Setup) {
    let mi = wait_for(
        "the Kustomization without healthCheckExprs to be Ready",
        STEP,
        || async {
            let k = t.kss.get(BARE).await.map_err(|e| e.to_string())?;
            let mi = t.mi.get_opt(BARE).await.map_err(|e| e.to_string())?;
            match (flux::condition(&k, "Ready"), mi) {
                (Some(r), Some(mi)) if r.0 == "True" => Ok(mi),
                other => Err(format!("{other:?}\n{}", t.flux.log_tail())),
            }
        },
    )
    .await;
    assert!(
        mi.status.is_none(),
        "Ready with a MeshInstall that has status: {:?}",
        mi.status
    );
    t.kss.delete(BARE, &DeleteParams::default()).await.expect("delete it");
    wait_for("it and its MeshInstall to be deleted", STEP, || async {
        let k = t.kss.get_opt(BARE).await.map_err(|e| e.to_string())?;
        let mi = t.mi.get_opt(BARE).await.map_err(|e| e.to_string())?;
        if k.is_none() && mi.is_none() {
            Ok(())
        } else {
            Err(format!("Kustomization {} MeshInstall {}", k.is_some(), mi.is_some()))
        }
    })
    .await;
}

/// No operator: the documented Kustomization does not call the status-less MeshInstall and
/// MeshGateway ready; it waits and fails at its timeout, saying they have no conditions.
async fn without_operator_flux_waits_and_fails_at_its_timeout(t: &Setup) {
    let s = t
        .until(
            "the Kustomization to fail its health check",
            None,
            |s| {
                s.ready
                    .as_ref()
                    .is_some_and(|r| r.0 == "False" && r.1 == "HealthCheckFailed")
            },
            |s| {
                assert!(
                    s.ready.as_ref().is_none_or(|r| r.0 != "True"),
                    "Flux said Ready with no operator: {s:?}"
                )
            },
        )
        .await;
    let message = &s.ready.as_ref().unwrap().2;
    eprintln!("no operator: Flux says {message}");
    assert!(
        message.contains("timeout waiting for")
            && message.contains(&format!("MeshInstall/{MESH} status: 'Unknown'"))
            && message.contains(&format!("MeshGateway/{GW_NS}/{GW} status: 'Unknown'")),
        "{message}"
    );
    assert!(
        t.created.elapsed() >= Duration::from_secs(30),
        "failed before its 30 s timeout: {message}"
    );
    let mesh = s.mesh.expect("Flux applied the MeshInstall");
    assert!(
        mesh.status.is_none(),
        "nothing but the operator writes status: {:?}",
        mesh.status
    );
}

#[tokio::test]
async fn flux_applies_waits_for_upgrades_reports_stalled_and_prunes_a_mesh() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let t = start().await;
    wait_alone_reports_a_status_less_mesh_ready(&t).await;
    without_operator_flux_waits_and_fails_at_its_timeout(&t).await;
    let op = Operator::start(&t.bed, "flux", &[]);
    with_the_operator_flux_is_ready_after_the_mesh(&t, &op).await;
    a_version_bump_is_a_canary_flux_waits_for(&t, &op).await;
    an_unsupported_version_is_reported_and_a_revert_recovers(&t, &op).await;

    // One more reconcile of the same revision: Flux finds nothing to change.
    let applies_before = t.flux.applies().len();
    flux::request_reconcile(&t.kss, &t.ks_name).await;
    wait_for("Flux to apply the same revision again", STEP, || async {
        let n = t.flux.applies().len();
        if n > applies_before {
            Ok(())
        } else {
            Err(t.flux.log_tail())
        }
    })
    .await;
    assert_no_drift(&t);
    assert_operator_wrote_no_spec(&t, &op).await;

    deleting_the_file_from_git_removes_the_mesh(&t, &op).await;
    cleanup(&t).await;
    op.stop();
    eprintln!("flux end to end took {:?}", started.elapsed());
}

/// The operator starts; Flux (retrying, with room for a canary now) turns Ready only once
/// the MeshInstall is Ready for its generation.
async fn with_the_operator_flux_is_ready_after_the_mesh(t: &Setup, op: &Operator) {
    let first = t.git.head();
    t.set_timeout("60s").await;
    let s = t
        .until(
            "Flux to be Ready at the first commit",
            Some(op),
            |s| s.flux_ready_at(&first),
            |s| {
                assert!(
                    !s.flux_ready_at(&first) || (s.mesh_ready() && s.gateway_ready_on(OLD)),
                    "Flux Ready before the MeshInstall and the MeshGateway: {s:?}"
                )
            },
        )
        .await;
    let flux_since = &s.ready.as_ref().unwrap().3;
    let (mesh_since, gw_since) = (ready_since(json!(s.mesh)), ready_since(json!(s.gateway)));
    assert!(
        flux_since >= &mesh_since && flux_since >= &gw_since,
        "Flux Ready at {flux_since}, the MeshInstall at {mesh_since}, the MeshGateway at {gw_since}"
    );
    assert_eq!(s.active().as_deref(), Some(OLD));
}

/// A commit bumps the version: a canary. Flux is Ready at it only once promoted; on the
/// way the canary tag moves first while Flux still waits.
async fn a_version_bump_is_a_canary_flux_waits_for(t: &Setup, op: &Operator) {
    let bump = t
        .commit(&[("weft/mesh.yaml", Some(&mesh_yaml("1.1.0")))], "Weft 1.1.0")
        .await;
    let mut saw_canary = false;
    let s = t
        .until(
            "Flux to be Ready after the canary is promoted",
            Some(op),
            |s| s.flux_ready_at(&bump),
            |s| {
                if s.tag("flux-canary").as_deref() == Some(NEW) && s.active().as_deref() == Some(OLD) {
                    assert!(!s.flux_ready_at(&bump), "Flux Ready mid-canary: {s:?}");
                    saw_canary = true;
                }
                if s.flux_ready_at(&bump) {
                    assert!(
                        s.mesh_ready() && s.active().as_deref() == Some(NEW) && s.gateway_ready_on(NEW),
                        "Flux Ready before the promotion and the gateway following it: {s:?}"
                    );
                }
            },
        )
        .await;
    assert!(
        saw_canary,
        "never saw the canary step (canary tag moved, not yet promoted)"
    );
    assert_eq!(s.tag("flux-stable").as_deref(), Some(NEW));
}

/// A commit with a version the operator does not have: the MeshInstall is Stalled, Flux
/// fails its health check at once (not at the timeout), and the running mesh is untouched.
/// Reverting the commit recovers.
async fn an_unsupported_version_is_reported_and_a_revert_recovers(t: &Setup, op: &Operator) {
    let cp: Api<Deployment> = Api::namespaced(t.bed.client.clone(), MESH_NS);
    let serving = cp
        .get(&format!("weft-cp-{NEW}"))
        .await
        .expect("the serving control plane")
        .resource_version();
    let bad = t
        .commit(&[("weft/mesh.yaml", Some(&mesh_yaml("9.9.9")))], "Weft 9.9.9")
        .await;
    let pushed = Instant::now();
    let s = t
        .until(
            "Flux to report the stalled MeshInstall",
            Some(op),
            |s| {
                s.ready.as_ref().is_some_and(|r| r.1 == "HealthCheckFailed")
                    && s.mesh.as_ref().is_some_and(|m| m.spec.version == "9.9.9")
            },
            |_| {},
        )
        .await;
    let message = &s.ready.as_ref().unwrap().2;
    // Flux 1.9's health-check error names the object and its state, not the object's own
    // message: the reason is in the MeshInstall's Stalled condition.
    eprintln!("unsupported version: Flux says {message}");
    assert!(
        message.contains("failed early due to stalled resources")
            && message.contains(&format!("MeshInstall/{MESH} status: 'Failed'")),
        "{message}"
    );
    assert!(
        pushed.elapsed() < Duration::from_secs(30),
        "Flux waited for its timeout (60 s) instead of failing early: {:?}",
        pushed.elapsed()
    );
    let stalled = condition(s.mesh.as_ref().unwrap(), "Stalled").expect("Stalled condition");
    assert_eq!(
        (stalled.0.as_str(), stalled.1.as_str()),
        ("True", "UnsupportedVersion"),
        "{stalled:?}"
    );
    assert!(stalled.2.contains("9.9.9"), "{stalled:?}");
    eprintln!(
        "unsupported version: the MeshInstall says Stalled, {}: {}",
        stalled.1, stalled.2
    );
    assert_eq!(s.active().as_deref(), Some(NEW));
    assert_eq!(
        cp.get(&format!("weft-cp-{NEW}")).await.unwrap().resource_version(),
        serving,
        "the running mesh was touched"
    );

    let revert = t.revert(&bad).await;
    let s = t
        .until(
            "Flux to be Ready after the revert",
            Some(op),
            |s| s.flux_ready_at(&revert),
            |s| {
                assert!(
                    !s.flux_ready_at(&revert) || (s.mesh_ready() && s.gateway_ready_on(NEW)),
                    "{s:?}"
                )
            },
        )
        .await;
    assert_eq!(s.mesh.as_ref().unwrap().spec.version, "1.1.0");
    assert_eq!(
        condition(s.mesh.as_ref().unwrap(), "Stalled").map(|c| c.0),
        Some("False".to_string())
    );
}

/// Deleting the files from Git: Flux prunes the MeshInstall (and the gateway with its
/// namespace), the operator's finalizer removes the cluster-scoped objects and the garbage
/// collector the rest.
async fn deleting_the_file_from_git_removes_the_mesh(t: &Setup, op: &Operator) {
    let before = owned_objects(&t.bed, MESH).await;
    assert!(
        before.keys().any(|k| k.starts_with("ClusterRole ")),
        "the mesh has cluster-scoped objects: {before:?}"
    );
    let mi = t.mi.get(MESH).await.expect("the MeshInstall");
    assert!(
        mi.finalizers().iter().any(|f| f == "weft.dev/cleanup"),
        "{:?}",
        mi.finalizers()
    );
    let removed = t
        .commit(
            &[("weft/mesh.yaml", None), ("weft/gateway.yaml", None)],
            "Remove the mesh and its gateway",
        )
        .await;
    t.until(
        "Flux to be Ready without the mesh",
        Some(op),
        |s| s.flux_ready_at(&removed) && s.mesh.is_none() && s.gateway.is_none(),
        |_| {},
    )
    .await;
    wait_for("everything the mesh owned to be deleted", STEP, || async {
        let left = owned_objects(&t.bed, MESH).await;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {left:?}\n{}", op.log_tail()))
        }
    })
    .await;
    let log = std::fs::read_to_string(&t.flux.kustomize_log).unwrap_or_default();
    assert!(
        log.contains(&format!("garbage collection completed: MeshInstall/{MESH} deleted")),
        "Flux did not log the prune"
    );
}

/// When a Weft object's Ready condition last changed (RFC 3339, as Flux writes its own).
fn ready_since(v: Value) -> String {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// Flux's drift detection found nothing: every apply of a revision after its first left
/// every object `unchanged`, although the operator wrote the MeshInstall's status and
/// finalizer in between; and the last apply did so for the MeshInstall.
fn assert_no_drift(t: &Setup) {
    let applies: Vec<flux::Applied> = t
        .flux
        .applies()
        .into_iter()
        .filter(|a| a.kustomization == t.ks_name)
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut again = 0;
    for a in &applies {
        if seen.insert(a.revision.clone()) {
            continue;
        }
        again += 1;
        let changed: Vec<_> = a.objects.iter().filter(|(_, action)| *action != "unchanged").collect();
        assert!(
            changed.is_empty(),
            "drift: re-applying {} changed {changed:?}; all applies: {applies:#?}",
            a.revision
        );
    }
    assert!(again > 0, "Flux never re-applied a revision: {applies:#?}");
    let last = applies.last().expect("Flux applied");
    assert_eq!(
        last.objects.get(&format!("MeshInstall/{MESH}")).map(String::as_str),
        Some("unchanged"),
        "{last:?}"
    );
}

/// The operator wrote only the status of the MeshInstall and the MeshGateway (and the
/// MeshInstall's finalizer), never the spec or labels Flux applies: by its
/// `weft_api_writes_total`, and by who owns which fields.
async fn assert_operator_wrote_no_spec(t: &Setup, op: &Operator) {
    let metrics = op.metrics().expect("operator metrics");
    for kind in ["MeshInstall", "MeshGateway"] {
        let writes: BTreeMap<String, f64> = metrics
            .lines()
            .filter(|l| l.starts_with("weft_api_writes_total{") && l.contains(&format!("kind=\"{kind}\"")))
            .filter_map(|l| {
                let verb = l.split("verb=\"").nth(1)?.split('"').next()?.to_string();
                Some((verb, l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        assert!(
            writes.get("status").is_some_and(|n| *n > 0.0),
            "no {kind} status writes counted: {writes:?}"
        );
        assert!(
            writes.keys().all(|v| v == "status" || v == "finalizer"),
            "the operator wrote a {kind} other than its status and finalizer: {writes:?}"
        );
    }
    let mi = t.mi.get(MESH).await.expect("the MeshInstall");
    let gw = t.gw.get(GW).await.expect("the MeshGateway");
    for f in mi.managed_fields().iter().chain(gw.managed_fields()) {
        let fields = f.fields_v1.as_ref().map(|v| &v.0).cloned().unwrap_or_default();
        for path in ["/f:spec", "/f:metadata/f:labels"] {
            if fields.pointer(path).is_some() {
                assert_eq!(
                    f.manager.as_deref(),
                    Some("kustomize-controller"),
                    "{path} is held by {f:?}"
                );
            }
        }
    }
}

/// Removes the Flux objects without pruning (the CRDs stay for later tests) and the
/// namespaces.
async fn cleanup(t: &Setup) {
    t.kss
        .patch(
            &t.ks_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"prune": false}})),
        )
        .await
        .expect("stop pruning");
    for (api, name) in [(&t.kss, &t.ks_name), (&t.repos, &t.repo_name)] {
        let _ = api.delete(name, &DeleteParams::default()).await;
        wait_for(&format!("{name} to be deleted"), STEP, || async {
            match api.get_opt(name).await {
                Ok(None) => Ok(()),
                other => Err(format!(
                    "{:?}\n{}",
                    other.map(|o| o.map(|o| o.metadata)),
                    t.flux.log_tail()
                )),
            }
        })
        .await;
    }
    let namespaces: Api<Namespace> = Api::all(t.bed.client.clone());
    for ns in [t.ns.as_str(), MESH_NS, GW_NS] {
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    }
}
