//! Decide (pure): a RemoteCluster's status from what was observed. First the spec against
//! the mesh (the MeshInstall exists, the RemoteCluster is in its namespace, its
//! `clusterName` is free), then the credential as far as it got: no Secret or key, a
//! refused kubeconfig, and what the remote API server answered. Messages never carry a
//! credential: only names, the server's address and errors that quote neither.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::api::common::StallReason;
use crate::api::mesh_install::MeshInstall;
use crate::api::remote_cluster::{RemoteCluster, RemoteClusterStatus};
use crate::operator::conditions::{Conditioned, Conditions, Stall};

impl Conditioned for RemoteClusterStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }

    /// Each control plane writes its own `controlPlanes` entry.
    fn operator_owned(&self) -> Self {
        RemoteClusterStatus {
            control_planes: Vec::new(),
            ..self.clone()
        }
    }
}

/// The reason of `Ready=False` (and `Reconciling=True`) while the API server cannot be
/// reached: retried, not stalled.
pub const UNREACHABLE: &str = "Unreachable";

/// The local cluster's name when the MeshInstall sets none (as `render::profile` resolves it).
pub const DEFAULT_LOCAL_CLUSTER: &str = "Kubernetes";

/// One resource the credential lacks verbs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The resource, as `kubectl` names it (`services`, `endpointslices.discovery.k8s.io`).
    pub resource: String,
    /// The verbs it may not use, in the order asked.
    pub verbs: Vec<String>,
}

/// What the remote API server said, or why it could not be asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// It answered: its version (unless `/version` was refused) and the verbs the
    /// credential lacks (none: everything discovery needs is allowed).
    Answered {
        /// `gitVersion`.
        version: Option<String>,
        /// What is missing, per resource.
        missing: Vec<Missing>,
    },
    /// It does not accept the credential (401).
    Refused(String),
    /// The credential may not even ask what it may do (SelfSubjectAccessReview refused).
    CannotReview(String),
    /// It could not be reached, timed out or failed (5xx): retried with back-off.
    Unreachable(String),
}

/// A RemoteCluster's credential, as far as it got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The Secret does not exist.
    NoSecret,
    /// The Secret has no such key; the keys it has.
    NoKey(Vec<String>),
    /// The kubeconfig is refused before any connection (or cannot be used); the server it
    /// names, if it parses that far.
    Refused {
        /// The server's address.
        server: Option<String>,
        /// Why, naming the field.
        error: String,
    },
    /// The kubeconfig passed the check; what its API server said.
    Checked {
        /// The server's address.
        server: String,
        /// The answer.
        probe: Probe,
    },
}

/// Why the spec cannot be acted on, before any credential is read: the mesh is missing,
/// the RemoteCluster is outside its namespace, or its `clusterName` is taken (by the local
/// cluster, or by an older RemoteCluster of the mesh among `all`).
pub fn spec_stall(rc: &RemoteCluster, mesh: Option<&MeshInstall>, all: &[RemoteCluster]) -> Option<Stall> {
    let invalid = |message| {
        Some(Stall {
            reason: StallReason::InvalidSpec,
            message,
        })
    };
    let name = &rc.spec.mesh;
    let Some(mi) = mesh else {
        return invalid(format!(
            "MeshInstall {name} does not exist: a RemoteCluster joins an existing mesh; create it or correct spec.mesh"
        ));
    };
    if mi.metadata.deletion_timestamp.is_some() {
        return invalid(format!("MeshInstall {name} is being deleted"));
    }
    let (here, there) = (rc.namespace().unwrap_or_default(), &mi.spec.namespace);
    if &here != there {
        return invalid(format!(
            "a RemoteCluster of MeshInstall {name} must be in namespace {there} (the mesh's spec.namespace), where its control planes read RemoteClusters and their Secrets; this one is in {here}"
        ));
    }
    name_conflict(rc, mi, all)
}

/// The local cluster's name in mesh `mi`: `spec.meshConfig.clusterName`, resolved as the
/// rendered mesh config resolves it.
pub fn local_cluster_name(mi: &MeshInstall) -> String {
    crate::render::profile::resolve(&mi.name_any(), "any", &mi.spec)
        .ok()
        .and_then(|r| r.mesh_config.cluster_name)
        .or_else(|| mi.spec.mesh_config.as_ref().and_then(|c| c.cluster_name.clone()))
        .unwrap_or_else(|| DEFAULT_LOCAL_CLUSTER.to_string())
}

/// A `clusterName` taken by the local cluster, or by an older RemoteCluster of the same mesh
/// in the same namespace (older: created first, then the name).
fn name_conflict(rc: &RemoteCluster, mi: &MeshInstall, all: &[RemoteCluster]) -> Option<Stall> {
    let (cluster, mesh) = (&rc.spec.cluster_name, &rc.spec.mesh);
    let conflict = |message| {
        Some(Stall {
            reason: StallReason::NameConflict,
            message,
        })
    };
    if *cluster == local_cluster_name(mi) {
        return conflict(format!(
            "clusterName {cluster} is the local cluster's name in MeshInstall {mesh} (spec.meshConfig.clusterName); give the remote cluster another name"
        ));
    }
    let age = |r: &RemoteCluster| (r.metadata.creation_timestamp.as_ref().map(|t| t.0), r.name_any());
    let older = all
        .iter()
        .filter(|o| o.namespace() == rc.namespace() && o.name_any() != rc.name_any())
        .filter(|o| o.spec.mesh == *mesh && o.spec.cluster_name == *cluster)
        .filter(|o| age(o) < age(rc))
        .min_by_key(|o| age(o))?;
    conflict(format!(
        "clusterName {cluster} is already used by RemoteCluster {}, which is older, in mesh {mesh}; give this cluster another name or delete one of them",
        older.name_any()
    ))
}

/// The status: from the spec's stall, else from the credential (`None` only with a stall).
pub fn status(
    rc: &RemoteCluster,
    stall: Option<&Stall>,
    credential: Option<&Credential>,
    now: &Time,
) -> RemoteClusterStatus {
    let previous = rc.status.clone().unwrap_or_default();
    let generation = rc.metadata.generation;
    let (conditions, server, version) = match (stall, credential) {
        (Some(stall), _) => (Conditions::stalled(stall), None, None),
        (None, Some(c)) => from_credential(rc, c, &previous),
        (None, None) => (
            Conditions::progressing("Checking", "the credential has not been checked yet".into()),
            None,
            None,
        ),
    };
    RemoteClusterStatus {
        observed_generation: generation,
        conditions: conditions.build(&previous.conditions, generation, now),
        server,
        kubernetes_version: version,
        control_planes: Vec::new(),
    }
}

/// Conditions, server and version from how far the credential got.
fn from_credential(
    rc: &RemoteCluster,
    c: &Credential,
    previous: &RemoteClusterStatus,
) -> (Conditions, Option<String>, Option<String>) {
    let r = &rc.spec.kubeconfig_secret_ref;
    let invalid = |message| {
        Conditions::stalled(&Stall {
            reason: StallReason::InvalidCredentials,
            message,
        })
    };
    match c {
        Credential::NoSecret => (
            invalid(format!(
                "Secret {} (spec.kubeconfigSecretRef.name) does not exist in namespace {}",
                r.name,
                rc.namespace().unwrap_or_default()
            )),
            None,
            None,
        ),
        Credential::NoKey(keys) => (
            invalid(format!(
                "Secret {} has no key {} (spec.kubeconfigSecretRef.key); its keys: [{}]",
                r.name,
                r.key,
                keys.join(", ")
            )),
            None,
            None,
        ),
        Credential::Refused { server, error } => (
            invalid(format!(
                "the kubeconfig in Secret {}, key {}, is refused; no connection was attempted: {error}",
                r.name, r.key
            )),
            server.clone(),
            None,
        ),
        Credential::Checked { server, probe } => {
            let (conditions, version) = from_probe(rc, server, probe, previous);
            (conditions, Some(server.clone()), version)
        }
    }
}

/// Conditions and version from the API server's answer. While it is unreachable the version
/// it last reported (from the same server) stays.
fn from_probe(
    rc: &RemoteCluster,
    server: &str,
    probe: &Probe,
    previous: &RemoteClusterStatus,
) -> (Conditions, Option<String>) {
    let stalled = |reason, message| Conditions::stalled(&Stall { reason, message });
    match probe {
        Probe::Unreachable(error) => {
            let kept = (previous.server.as_deref() == Some(server))
                .then(|| previous.kubernetes_version.clone())
                .flatten();
            let message = format!("cannot reach the API server at {server}: {error}; retrying");
            (Conditions::progressing(UNREACHABLE, message), kept)
        }
        Probe::Refused(error) => (
            stalled(
                StallReason::InvalidCredentials,
                format!(
                    "the API server at {server} refused the credential ({error}): it is not valid there (expired, revoked, or for another cluster); make a new one with `weft remote-secret`"
                ),
            ),
            None,
        ),
        Probe::CannotReview(error) => (
            stalled(
                StallReason::Forbidden,
                format!(
                    "the credential may not create selfsubjectaccessreviews.authorization.k8s.io at {server}, so what it may read cannot be checked: {error}"
                ),
            ),
            None,
        ),
        Probe::Answered { version, missing } if !missing.is_empty() => (
            stalled(
                StallReason::Forbidden,
                forbidden_message(&rc.spec.cluster_name, missing),
            ),
            version.clone(),
        ),
        Probe::Answered { version, .. } => {
            let answers = match version {
                Some(v) => format!("answers (Kubernetes {v})"),
                None => "answers".to_string(),
            };
            let message = format!(
                "the API server at {server} {answers} and the credential may get, list and watch services, endpointslices and namespaces"
            );
            (Conditions::ready("Ready", message), version.clone())
        }
    }
}

/// "the credential may not list, watch endpointslices.discovery.k8s.io; get namespaces; …"
pub fn forbidden_message(cluster: &str, missing: &[Missing]) -> String {
    let parts: Vec<String> = missing
        .iter()
        .map(|m| format!("{} {}", m.verbs.join(", "), m.resource))
        .collect();
    format!(
        "the credential may not {}; grant them in cluster {cluster} (the ClusterRole `weft remote-secret` creates does); this is re-checked periodically",
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::condition::{READY, RECONCILING, STALLED};
    use crate::api::remote_cluster::ControlPlaneView;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn rc(name: &str, cluster: &str, created: i64) -> RemoteCluster {
        let spec =
            format!("mesh: mesh\nclusterName: {cluster}\nkubeconfigSecretRef: {{name: weft-remote-{cluster}}}\n");
        let mut r = RemoteCluster::new(name, serde_saphyr::from_str(&spec).unwrap());
        r.metadata.namespace = Some("weft-mesh".into());
        r.metadata.generation = Some(2);
        r.metadata.creation_timestamp = Some(at(created));
        r
    }

    fn mesh(extra: &str) -> MeshInstall {
        MeshInstall::new(
            "mesh",
            serde_saphyr::from_str(&format!("version: 1.0.0\nnamespace: weft-mesh\n{extra}")).unwrap(),
        )
    }

    /// (status, reason, message) of condition `t`.
    fn cond(s: &RemoteClusterStatus, t: &str) -> (String, String, String) {
        let c = s.condition(t).unwrap_or_else(|| panic!("no {t}"));
        assert_eq!(c.observed_generation, Some(2), "{t} carries the generation");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn checked(probe: Probe) -> Credential {
        Credential::Checked {
            server: "https://127.0.0.1:6443".into(),
            probe,
        }
    }

    fn answered(version: &str, missing: Vec<Missing>) -> Probe {
        Probe::Answered {
            version: Some(version.into()),
            missing,
        }
    }

    fn of(r: &RemoteCluster, c: &Credential) -> RemoteClusterStatus {
        status(r, None, Some(c), &at(100))
    }

    fn stalled(s: &RemoteClusterStatus, reason: &str) -> String {
        let (st, r, message) = cond(s, STALLED);
        assert_eq!((st.as_str(), r.as_str()), ("True", reason), "{message}");
        assert_eq!(cond(s, READY).0, "False");
        assert_eq!(cond(s, RECONCILING).0, "False", "stalled is never reconciling");
        message
    }

    #[test]
    fn the_mesh_must_exist_and_hold_the_remote_cluster_in_its_namespace() {
        let r = rc("b", "b", 10);
        let stall = spec_stall(&r, None, &[]).expect("no mesh");
        assert_eq!(stall.reason, StallReason::InvalidSpec);
        assert!(
            stall.message.starts_with("MeshInstall mesh does not exist"),
            "{}",
            stall.message
        );
        let mut elsewhere = r.clone();
        elsewhere.metadata.namespace = Some("shop".into());
        let stall = spec_stall(&elsewhere, Some(&mesh("")), &[]).expect("wrong namespace");
        assert_eq!(stall.reason, StallReason::InvalidSpec);
        assert!(
            stall.message.contains("must be in namespace weft-mesh") && stall.message.ends_with("this one is in shop"),
            "{}",
            stall.message
        );
        let mut deleting = mesh("");
        deleting.metadata.deletion_timestamp = Some(at(5));
        assert!(spec_stall(&r, Some(&deleting), &[]).is_some_and(|s| s.message.contains("being deleted")));
        assert_eq!(spec_stall(&r, Some(&mesh("")), std::slice::from_ref(&r)), None);
        let s = status(&r, spec_stall(&r, None, &[]).as_ref(), None, &at(100));
        stalled(&s, "InvalidSpec");
        let unchecked = status(&r, None, None, &at(100));
        assert_eq!(cond(&unchecked, READY).1, "Checking", "nothing claimed before a check");
        assert_eq!((s.server, s.kubernetes_version), (None, None));
    }

    #[test]
    fn the_newer_of_two_with_one_cluster_name_and_the_local_name_conflict() {
        let (old, new, other) = (rc("east", "b", 10), rc("east2", "b", 20), rc("west", "c", 5));
        let all = vec![old.clone(), new.clone(), other.clone()];
        let m = mesh("");
        assert_eq!(spec_stall(&old, Some(&m), &all), None, "the older keeps its name");
        let stall = spec_stall(&new, Some(&m), &all).expect("the newer conflicts");
        assert_eq!(stall.reason, StallReason::NameConflict);
        assert!(
            stall.message.contains("already used by RemoteCluster east,"),
            "{}",
            stall.message
        );
        // Same creation time: the name decides.
        let twin = rc("aaa", "b", 10);
        let with_twin = [all.clone(), vec![twin.clone()]].concat();
        assert_eq!(spec_stall(&twin, Some(&m), &with_twin), None);
        assert!(spec_stall(&old, Some(&m), &with_twin).is_some_and(|s| s.message.contains("RemoteCluster aaa,")));
        // Another mesh or namespace is no conflict.
        let mut foreign = rc("east-x", "b", 1);
        foreign.spec.mesh = "other".into();
        let mut away = rc("east-y", "b", 1);
        away.metadata.namespace = Some("elsewhere".into());
        assert_eq!(spec_stall(&old, Some(&m), &[old.clone(), foreign, away]), None);
        // The local cluster's name, set or defaulted.
        let local = rc("a", "alpha", 1);
        let stall = spec_stall(&local, Some(&mesh("meshConfig: {clusterName: alpha}\n")), &[]).expect("local name");
        assert_eq!(stall.reason, StallReason::NameConflict);
        assert!(stall.message.contains("local cluster's name"), "{}", stall.message);
        assert_eq!(local_cluster_name(&mesh("")), DEFAULT_LOCAL_CLUSTER);
    }

    #[test]
    fn a_missing_secret_key_or_refused_kubeconfig_is_invalid_credentials() {
        let r = rc("b", "b", 10);
        let m = stalled(&of(&r, &Credential::NoSecret), "InvalidCredentials");
        assert_eq!(
            m,
            "Secret weft-remote-b (spec.kubeconfigSecretRef.name) does not exist in namespace weft-mesh"
        );
        let m = stalled(&of(&r, &Credential::NoKey(vec!["config".into()])), "InvalidCredentials");
        assert_eq!(
            m,
            "Secret weft-remote-b has no key kubeconfig (spec.kubeconfigSecretRef.key); its keys: [config]"
        );
        let refused = Credential::Refused {
            server: Some("https://10.0.0.1".into()),
            error: "user \"b\": `exec` is not allowed".into(),
        };
        let s = of(&r, &refused);
        let m = stalled(&s, "InvalidCredentials");
        assert!(m.contains("no connection was attempted") && m.contains("`exec`"), "{m}");
        assert_eq!(s.server.as_deref(), Some("https://10.0.0.1"));
        let s = of(&r, &checked(Probe::Refused("401 Unauthorized".into())));
        let m = stalled(&s, "InvalidCredentials");
        assert!(m.contains("refused the credential (401 Unauthorized)"), "{m}");
        assert_eq!(s.server.as_deref(), Some("https://127.0.0.1:6443"));
    }

    #[test]
    fn missing_verbs_are_listed_per_resource() {
        let r = rc("b", "b", 10);
        let missing = vec![
            Missing {
                resource: "endpointslices.discovery.k8s.io".into(),
                verbs: vec!["list".into(), "watch".into()],
            },
            Missing {
                resource: "namespaces".into(),
                verbs: vec!["get".into()],
            },
        ];
        let s = of(&r, &checked(answered("v1.33.1", missing)));
        let m = stalled(&s, "Forbidden");
        assert!(
            m.starts_with("the credential may not list, watch endpointslices.discovery.k8s.io; get namespaces; grant them in cluster b"),
            "{m}"
        );
        assert_eq!(s.kubernetes_version.as_deref(), Some("v1.33.1"));
        let s = of(&r, &checked(Probe::CannotReview("403".into())));
        assert!(stalled(&s, "Forbidden").contains("selfsubjectaccessreviews"));
    }

    #[test]
    fn ready_when_everything_is_allowed_and_unreachable_is_not_stalled() {
        let mut r = rc("b", "b", 10);
        let ready = of(&r, &checked(answered("v1.33.1", vec![])));
        let (st, reason, message) = cond(&ready, READY);
        assert_eq!((st.as_str(), reason.as_str()), ("True", "Ready"));
        assert!(
            message.contains("at https://127.0.0.1:6443 answers (Kubernetes v1.33.1)"),
            "{message}"
        );
        assert_eq!(cond(&ready, STALLED).0, "False");
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(ready.server.as_deref(), Some("https://127.0.0.1:6443"));

        // Unreachable: Ready=False, Reconciling, not Stalled; the last version stays.
        r.status = Some(ready.clone());
        let down = status(
            &r,
            None,
            Some(&checked(Probe::Unreachable("connection refused".into()))),
            &at(200),
        );
        let (st, reason, message) = cond(&down, READY);
        assert_eq!((st.as_str(), reason.as_str()), ("False", UNREACHABLE));
        assert!(message.contains("cannot reach the API server at https://127.0.0.1:6443: connection refused"));
        assert_eq!(cond(&down, RECONCILING).0, "True");
        assert_eq!(cond(&down, STALLED).0, "False");
        assert_eq!(down.kubernetes_version.as_deref(), Some("v1.33.1"));
        assert_eq!(down.server.as_deref(), Some("https://127.0.0.1:6443"));

        // The same answer again: the same status, so nothing is written.
        assert_eq!(
            status(&r, None, Some(&checked(answered("v1.33.1", vec![]))), &at(300)),
            ready
        );
    }

    #[test]
    fn the_control_planes_entries_are_not_the_operators() {
        let mut r = rc("b", "b", 10);
        let ours = of(&r, &checked(answered("v1.33.1", vec![])));
        let mut live = ours.clone();
        live.control_planes.push(ControlPlaneView {
            revision: "mesh-a".into(),
            synced: true,
            ..Default::default()
        });
        r.status = Some(live.clone());
        let again = of(&r, &checked(answered("v1.33.1", vec![])));
        assert!(again.control_planes.is_empty(), "never written by the operator");
        assert_eq!(
            live.operator_owned(),
            again.operator_owned(),
            "a control plane's write is no reason to write"
        );
        let body = serde_json::to_value(&again).unwrap();
        assert!(body.get("controlPlanes").is_none(), "not in the applied status: {body}");
    }
}
