//! Weft's Argo CD health checks (deploy/argocd): evaluating objects with Argo CD's own Lua
//! health code through the harness in e2e/argocd, and writing captured objects as the
//! testdata of Argo CD's upstream layout.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use crate::{argocd_health_path, repo_root};

/// The kinds that get a health check, all in API group weft.dev.
pub const KINDS: [&str; 3] = ["MeshInstall", "MeshGateway", "RemoteCluster"];

/// deploy/argocd/resource_customizations: Argo CD's upstream layout.
pub fn customizations_dir() -> PathBuf {
    repo_root().join("deploy/argocd/resource_customizations")
}

/// deploy/argocd/resource_customizations/weft.dev/`kind`.
pub fn kind_dir(kind: &str) -> PathBuf {
    customizations_dir().join("weft.dev").join(kind)
}

/// deploy/argocd/argocd-cm.yaml: the same scripts as an `argocd-cm` patch.
pub fn configmap_path() -> PathBuf {
    repo_root().join("deploy/argocd/argocd-cm.yaml")
}

/// The `argocd-cm` key that holds `kind`'s health check.
pub fn configmap_key(kind: &str) -> String {
    format!("resource.customizations.health.weft.dev_{kind}")
}

/// A health status as Argo CD reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Healthy, Progressing, Degraded, …
    pub status: String,
    /// The message shown next to it.
    pub message: String,
}

impl Health {
    /// A status and message.
    pub fn new(status: &str, message: &str) -> Health {
        Health {
            status: status.to_string(),
            message: message.to_string(),
        }
    }

    fn from_json(v: &Value) -> Health {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        Health {
            status: s("status"),
            message: s("message"),
        }
    }
}

/// Runs the harness with `args`; its standard output, or what it printed on failure.
fn harness(args: &[&str]) -> Result<String, String> {
    let bin = argocd_health_path();
    let out = Command::new(&bin)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {} (built by `e2e/cluster build`): {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The health Argo CD gives the object in file `path`: (upstream layout, argocd-cm form).
pub fn evaluate(path: &std::path::Path) -> (Health, Health) {
    let v = evaluate_with(&configmap_path(), path);
    (Health::from_json(&v["upstream"]), Health::from_json(&v["argocdCm"]))
}

/// The harness's verdict on the object in file `path` with the argocd-cm in file `cm`:
/// `{"upstream": …, "argocdCm": …}`, where `argocdCm` is null when Argo CD has no health
/// check for the object.
pub fn evaluate_with(cm: &std::path::Path, path: &std::path::Path) -> Value {
    let dir = customizations_dir();
    let args = [
        "eval",
        dir.to_str().expect("path"),
        cm.to_str().expect("path"),
        path.to_str().expect("path"),
    ];
    let out = harness(&args).unwrap_or_else(|e| panic!("the harness failed on {}: {e}", path.display()));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("harness output {out:?}: {e}"))
}

/// Runs every committed health_test.yaml in both forms; the harness's report, or it with
/// the failures.
pub fn check_committed() -> Result<String, String> {
    let dir = customizations_dir();
    let cm = configmap_path();
    harness(&["check", dir.to_str().expect("path"), cm.to_str().expect("path")])
}

/// An object as read from the API server, without what changes on every run and says
/// nothing about health (managed fields, uid, resource version, timestamps).
pub fn strip_noise(mut obj: Value) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["managedFields", "uid", "resourceVersion", "creationTimestamp"] {
            meta.remove(key);
        }
    }
    if let Some(conditions) = obj.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
        for c in conditions.iter_mut().filter_map(Value::as_object_mut) {
            c.remove("lastTransitionTime");
        }
    }
    obj
}

/// The YAML of a captured object, as written to testdata.
pub fn to_yaml(obj: &Value) -> String {
    serde_saphyr::to_string(obj).expect("an object serialises as YAML")
}

/// An upstream health_test.yaml for `tests`: (testdata file name, expected health).
pub fn health_test_yaml(tests: &[(String, Health)]) -> String {
    let tests: Vec<Value> = tests
        .iter()
        .map(|(file, h)| {
            json!({
                "healthStatus": {"status": h.status, "message": h.message},
                "inputPath": format!("testdata/{file}"),
            })
        })
        .collect();
    to_yaml(&json!({ "tests": tests }))
}

/// The argocd-cm patch holding each kind's upstream health.lua.
pub fn configmap_yaml() -> String {
    let mut out = String::from(
        "# Weft's Argo CD health checks as an argocd-cm patch: deploy/argocd/health.lua, the one\n\
         # script every kind's resource_customizations/weft.dev/<Kind>/health.lua links to, once\n\
         # per kind (a test fails when they differ;\n\
         # `make argocd-testdata` rewrites this file from them). They need no Lua library that\n\
         # argocd-cm scripts lack, so no useOpenLibs key. Apply with\n\
         #   kubectl -n argocd patch configmap argocd-cm --patch-file deploy/argocd/argocd-cm.yaml\n\
         # or list it under `patches:` of the kustomization that installs Argo CD.\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: argocd-cm\n  namespace: argocd\n  labels:\n\
         \x20   app.kubernetes.io/name: argocd-cm\n    app.kubernetes.io/part-of: argocd\n\
         data:\n",
    );
    for kind in KINDS {
        let script = std::fs::read_to_string(kind_dir(kind).join("health.lua")).expect("read health.lua");
        out.push_str(&format!("  {}: |\n", configmap_key(kind)));
        for line in script.lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}
