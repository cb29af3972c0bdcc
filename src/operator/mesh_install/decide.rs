//! Decide (pure): one function turns a MeshInstall, what was observed and the time into
//! everything the reconcile does: the objects of the target revision to apply (none when
//! the spec cannot be acted on), the revisions to delete, the status and the upgrade steps
//! to record. Validate → build → plan → status.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::names::{self, Neighbours, missing_tag_target};
use super::observe::{Observed, Usage};
use super::revisions::{self, PlanInput};
use super::status::{self, StatusInput};
use super::steps::{self, Transition};
use crate::api::common::StallReason;
use crate::api::mesh_install::{MeshInstall, MeshInstallStatus};
use crate::identity::mesh_ca::{self, SecretData};
use crate::operator::conditions::Stall;
use crate::operator::controller::RESYNC;
use crate::render::trust_bundle::trust_bundles;
use crate::render::{Manifest, OwnedKind, RevisionInput, render_revision};
use crate::versions::{MeshVersion, VersionTable};

/// What the reconcile of one MeshInstall does.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The revision the spec asks for.
    pub target: String,
    /// The target revision's objects, to apply in its namespace; `None` when stalled: then
    /// nothing that runs is touched.
    pub install: Option<Vec<Manifest>>,
    /// Revisions to delete now (only when not stalled).
    pub prune: Vec<String>,
    /// The status to write.
    pub status: MeshInstallStatus,
    /// The upgrade steps the status records, for Events and metrics.
    pub steps: Vec<Transition>,
    /// When to look again.
    pub requeue: Duration,
    /// The mesh CA's Secrets to write and its trust bundles (only when not stalled).
    pub ca: Option<CaWrites>,
}

/// What the reconcile writes of the mesh CA.
#[derive(Clone, Debug)]
pub struct CaWrites {
    /// New content of the root Secret (`None`: unchanged).
    pub root: Option<SecretData>,
    /// New content of the issuer Secret (`None`: unchanged).
    pub issuer: Option<SecretData>,
    /// What the issuer's new content does (a rotation step), for its Event.
    pub note: Option<String>,
    /// The `weft-root-ca` ConfigMap of every namespace of the mesh; `None` until the usage
    /// index has listed (an unknown usage must not prune a bundle a namespace still needs).
    pub bundles: Option<Vec<Manifest>>,
}

/// Decides what to do about `mi`.
pub fn decide(mi: &MeshInstall, versions: &VersionTable, observed: &Observed, now: Timestamp) -> Decision {
    let target = names::target_revision(mi);
    let neighbours = Neighbours::of(mi, &observed.others);
    let built = match &observed.rejected {
        Some(rejected) => Err(rejected.clone()),
        None => build(mi, versions, &target, &neighbours, observed),
    };

    // Node proxies are wanted for the target when its objects include them (or, stalled,
    // when unknown); other revisions keep what they were installed with.
    let mut installed = observed.revisions.clone();
    let proxy_wanted = built
        .as_ref()
        .map_or(true, |m| m.iter().any(|m| m.kind == OwnedKind::DaemonSet));
    if let Some(r) = installed.iter_mut().find(|r| r.name == target) {
        r.proxy_wanted = proxy_wanted;
    }
    let plan = revisions::plan(&PlanInput {
        mesh: mi,
        target: &target,
        installed: &installed,
        usage: &observed.usage,
        owns_default: neighbours.owns_default,
        taken: &neighbours.taken,
        now,
    });

    // Revisions past their grace period go, unless the spec is stalled.
    let prune = if built.is_ok() { plan.prune.clone() } else { Vec::new() };
    installed.retain(|r| !prune.contains(&r.name));
    let ca = match (&built, &observed.ca) {
        (Ok(_), Some(Ok(plan))) => Some(CaWrites {
            root: plan.root.clone(),
            issuer: plan.issuer.clone(),
            note: plan.note.clone(),
            bundles: observed
                .usage
                .synced
                .then(|| {
                    trust_bundles(
                        mi,
                        &mesh_namespaces(mi, &observed.usage, neighbours.owns_default),
                        &plan.bundle_pem(),
                    )
                    .ok()
                })
                .flatten(),
        }),
        _ => None,
    };
    // Only a CA that is stored (or about to be) is shown: while nothing is written, a
    // planned new root exists nowhere, and a new one would be planned next time.
    let security = match &observed.ca {
        Some(Ok(plan)) if ca.is_some() || (plan.root.is_none() && plan.issuer.is_none()) => {
            let mut s = mesh_ca::status(&mi.spec.trust_domain(), plan);
            s.serving_revisions = installed.iter().filter(|r| r.ready()).map(|r| r.name.clone()).collect();
            Some(s)
        }
        _ => None,
    };
    let status = status::compute(&StatusInput {
        mesh: mi,
        target: &target,
        revisions: installed,
        plan: &plan,
        stall: built.as_ref().err().cloned().or_else(|| plan.failed.clone()),
        now: Time(now),
        security,
    });
    let previous = mi.status.clone().unwrap_or_default();
    // A rotation's next step may be due before anything else changes.
    let rotation_due = match (&ca, &observed.ca) {
        (Some(_), Some(Ok(p))) => p.due,
        _ => None,
    };
    let requeue = [plan.requeue, rotation_due]
        .into_iter()
        .flatten()
        .fold(RESYNC, Duration::min);
    Decision {
        steps: steps::transitions(&previous, &status, &prune),
        requeue,
        install: built.ok(),
        ca,
        target,
        prune,
        status,
    }
}

/// Validate and build: the target revision's objects, or why the spec cannot be acted on.
fn build(
    mi: &MeshInstall,
    versions: &VersionTable,
    target: &str,
    neighbours: &Neighbours,
    observed: &Observed,
) -> Result<Vec<Manifest>, Stall> {
    if let Some(conflict) = &neighbours.conflict {
        return Err(conflict.clone());
    }
    let installed = observed.revisions.iter().map(|r| r.name.clone()).collect();
    if let Some(missing) = missing_tag_target(mi, &installed, target) {
        return Err(missing);
    }
    let version = supported(mi, versions)?;
    if let Some(Err(invalid)) = &observed.ca {
        return Err(invalid.clone());
    }
    Ok(render_revision(&RevisionInput {
        mesh: mi,
        revision: target,
        version,
        remote_secrets: &observed.remote_secrets,
    })?)
}

/// The namespaces that belong to the mesh: those labelled for one of its revisions or tags
/// (`default` only when this mesh owns that tag), its gateways' and its own.
pub(super) fn mesh_namespaces(mi: &MeshInstall, usage: &Usage, owns_default: bool) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = usage
        .namespaces
        .iter()
        .filter(|(value, _)| owns_default || value.as_str() != "default")
        .flat_map(|(_, ns)| ns.iter().cloned())
        .collect();
    out.extend(
        usage
            .gateways
            .values()
            .flatten()
            .filter_map(|g| g.split_once('/').map(|(ns, _)| ns.to_string())),
    );
    out.insert(mi.spec.namespace.clone());
    out
}

/// The spec's version, if this operator supports it.
fn supported<'v>(mi: &MeshInstall, versions: &'v VersionTable) -> Result<&'v MeshVersion, Stall> {
    versions.get(&mi.spec.version).ok_or_else(|| Stall {
        reason: StallReason::UnsupportedVersion,
        message: format!(
            "version {} is not supported by this operator (supported: {}); the running mesh is left as it is",
            mi.spec.version,
            versions.list()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::mesh_install::fixtures::{self, at, mesh, with_proxies};
    use crate::operator::mesh_install::names::Neighbour;
    use crate::operator::mesh_install::observe::{RevisionObservation, Usage};
    use crate::operator::mesh_install::steps::RevisionStep;
    use std::collections::BTreeSet;

    const CANARY: &str = "version: 1.1.0\nupdateStrategy: {type: RevisionBased, inactiveRevisionDeletionGracePeriodSeconds: 30, \
                          promotion: {minReadySeconds: 0}}\nrevisionTags: [{name: canary, target: Latest}]";

    fn rev(name: &str, ready: bool) -> RevisionObservation {
        with_proxies(fixtures::rev(name, ready))
    }

    fn observed(revisions: Vec<RevisionObservation>) -> Observed {
        Observed {
            revisions,
            usage: Usage {
                synced: true,
                ..Default::default()
            },
            others: Vec::new(),
            rejected: None,
            remote_secrets: Vec::new(),
            ca: None,
        }
    }

    /// The rules of the control plane's Role the decision installs.
    fn role_rules(d: &Decision) -> Vec<serde_json::Value> {
        let role = d
            .install
            .as_ref()
            .expect("objects to install")
            .iter()
            .find(|m| m.kind == OwnedKind::Role)
            .expect("a Role");
        role.object["rules"].as_array().cloned().unwrap_or_default()
    }

    #[test]
    fn an_invalid_ca_stalls_and_writes_nothing_and_bundles_follow_the_mesh_namespaces() {
        let mi = mesh("version: 1.0.0", 1, None);
        let mut o = observed(vec![]);
        o.ca = Some(Err(Stall {
            reason: StallReason::InvalidCa,
            message: "plug-in CA Secret weft-system/cacerts: ca-key.pem is missing or empty".into(),
        }));
        let d = decide(&mi, &VersionTable::builtin(), &o, at(0));
        assert!(d.install.is_none() && d.ca.is_none(), "nothing is applied or written");
        let stalled = d.status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "InvalidCA")
        );

        let plan = new_ca(&mi);
        o.ca = Some(Ok(plan));
        o.usage.namespaces = [("m".to_string(), BTreeSet::from(["shop".to_string()]))].into();
        let d = decide(&mi, &VersionTable::builtin(), &o, at(0));
        let ca = d.ca.expect("the CA is written");
        assert!(ca.root.is_some() && ca.issuer.is_some());
        let bundled: BTreeSet<_> = ca
            .bundles
            .expect("usage is known")
            .iter()
            .filter_map(|m| m.namespace.clone())
            .collect();
        assert!(
            bundled.contains("shop") && bundled.contains(&mi.spec.namespace),
            "{bundled:?}"
        );
        assert_eq!(
            d.status.security.as_ref().map(|s| s.roots.len()),
            Some(1),
            "status shows the root"
        );
        o.usage.synced = false;
        let d = decide(&mi, &VersionTable::builtin(), &o, at(0));
        assert!(
            d.ca.unwrap().bundles.is_none(),
            "usage unknown: bundles left as they are"
        );
    }

    /// A new self-signed CA for `mi`, as planned with nothing stored yet.
    fn new_ca(mi: &MeshInstall) -> mesh_ca::Plan {
        mesh_ca::plan(
            &mi.spec.namespace,
            "cluster.local",
            &mesh_ca::Source::SelfSigned { root: None },
            None,
            0,
            &crate::identity::rotation::SETTLED,
            std::time::SystemTime::now(),
        )
        .unwrap()
    }

    #[test]
    fn a_rotation_step_due_soon_brings_the_next_look_forward() {
        let mi = mesh("version: 1.0.0", 1, None);
        let mut o = observed(vec![]);
        let mut plan = new_ca(&mi);
        plan.due = Some(Duration::from_secs(7));
        o.ca = Some(Ok(plan));
        let d = decide(&mi, &VersionTable::builtin(), &o, at(0));
        assert_eq!(d.requeue, Duration::from_secs(7));
    }

    #[test]
    fn the_control_plane_may_read_only_the_issuer_and_the_secrets_its_remoteclusters_name() {
        let mi = mesh("version: 1.0.0", 1, None);
        let none = decide(&mi, &VersionTable::builtin(), &observed(vec![]), at(0));
        let secrets = |rules: &[serde_json::Value]| -> Vec<serde_json::Value> {
            rules
                .iter()
                .filter(|r| {
                    r["resources"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == "secrets"))
                })
                .cloned()
                .collect()
        };
        let issuer_only = serde_json::json!([{
            "apiGroups": [""], "resources": ["secrets"], "resourceNames": ["weft-ca-issuer"], "verbs": ["get"]
        }]);
        assert_eq!(
            serde_json::Value::Array(secrets(&role_rules(&none))),
            issuer_only,
            "no RemoteCluster: the issuer by name, never the root"
        );
        let mut with = observed(vec![]);
        with.remote_secrets = vec!["weft-remote-b".into(), "weft-remote-c".into()];
        let d = decide(&mi, &VersionTable::builtin(), &with, at(0));
        let rules = secrets(&role_rules(&d));
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(
            rules[1]["resourceNames"],
            serde_json::json!(["weft-remote-b", "weft-remote-c"])
        );
        assert_eq!(rules[1]["verbs"], serde_json::json!(["get", "list", "watch"]));
    }

    #[test]
    fn a_new_mesh_installs_its_revision_and_says_so() {
        let mi = mesh("version: 1.0.0", 1, None);
        let d = decide(&mi, &VersionTable::builtin(), &observed(vec![]), at(0));
        assert_eq!(d.target, "m");
        let objects = d.install.expect("objects to apply");
        assert!(
            objects
                .iter()
                .any(|m| m.kind == OwnedKind::Deployment && m.name == "weft-cp-m")
        );
        assert!(d.prune.is_empty());
        assert_eq!(d.status.state.as_deref(), Some("Installing"));
        assert_eq!(d.requeue, RESYNC, "nothing falls due");
    }

    #[test]
    fn an_unsupported_version_stalls_and_touches_nothing() {
        let mi = mesh("version: 9.9.9", 1, None);
        let d = decide(&mi, &VersionTable::builtin(), &observed(vec![rev("m", true)]), at(0));
        assert!(d.install.is_none(), "nothing is applied");
        assert_eq!(d.status.state.as_deref(), Some("Stalled"));
        let stalled = d.status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(stalled.reason, "UnsupportedVersion");
        assert!(stalled.message.contains("9.9.9"), "{}", stalled.message);
        assert!(d.status.revisions[0].ready, "the running revision is still reported");
    }

    #[test]
    fn a_name_an_older_mesh_has_stalls_the_newer() {
        let mi = mesh(CANARY, 1, None);
        let older = Neighbour {
            name: "first".into(),
            revisions: BTreeSet::from(["first".to_string()]),
            tags: BTreeSet::from(["canary".to_string()]),
            older: true,
        };
        let mut o = observed(vec![]);
        o.others.push(older);
        let d = decide(&mi, &VersionTable::builtin(), &o, at(0));
        assert!(d.install.is_none());
        let stalled = d.status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(stalled.reason, "NameConflict");
        assert!(
            d.status.tags.is_empty(),
            "neither default nor the conflicting tag is published"
        );
    }

    /// The whole upgrade through decide: installed beside the old one, promoted, then the
    /// old one deleted after the grace period, with each step recorded once.
    #[test]
    fn an_upgrade_promotes_then_prunes_with_its_steps() {
        let old = mesh(&CANARY.replace("1.1.0", "1.0.0"), 1, None);
        let versions = VersionTable::builtin();
        let d = decide(&old, &versions, &observed(vec![rev("m-v1-0-0", true)]), at(0));
        let step = |status: MeshInstallStatus| mesh(CANARY, 1, Some(status));

        let mi = step(d.status);
        let both = vec![rev("m-v1-0-0", true), rev("m-v1-1-0", true)];
        let d = decide(&mi, &versions, &observed(both.clone()), at(10));
        let kinds: Vec<RevisionStep> = d.steps.iter().map(|t| t.step).collect();
        let moved = [RevisionStep::TagMoved, RevisionStep::TagMoved];
        assert_eq!(
            kinds,
            [&[RevisionStep::Created][..], &moved, &[RevisionStep::Promoted]].concat(),
            "created, canary and default moved, promoted"
        );
        assert_eq!(d.status.active_revision.as_deref(), Some("m-v1-1-0"));
        assert!(d.prune.is_empty(), "the grace period has only started");
        assert_eq!(d.requeue.as_secs(), 30);

        let mi = step(d.status);
        let d = decide(&mi, &versions, &observed(both), at(40));
        assert_eq!(d.prune, ["m-v1-0-0"]);
        assert_eq!(d.status.revisions.len(), 1, "the pruned revision leaves the status");
        assert_eq!(
            d.steps.iter().map(|t| t.step).collect::<Vec<_>>(),
            [RevisionStep::Pruned]
        );
    }

    #[test]
    fn an_unchanged_world_decides_the_same_status() {
        let mi = mesh("version: 1.0.0", 1, None);
        let versions = VersionTable::builtin();
        let d = decide(&mi, &versions, &observed(vec![rev("m", true)]), at(0));
        let mi = mesh("version: 1.0.0", 1, Some(d.status.clone()));
        let again = decide(&mi, &versions, &observed(vec![rev("m", true)]), at(100));
        assert_eq!(again.status, d.status, "no write");
        assert!(again.steps.is_empty());
    }

    #[test]
    fn a_tag_pinned_to_a_missing_revision_stalls_and_touches_nothing() {
        let spec = "version: 1.0.0\nrevisionTags: [{name: pinned, target: nope}]";
        let mi = mesh(spec, 1, None);
        let d = decide(&mi, &VersionTable::builtin(), &observed(vec![rev("m", true)]), at(0));
        assert!(d.install.is_none(), "nothing is applied");
        let stalled = d.status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "TagTargetNotFound")
        );
        assert!(
            stalled.message.contains("tag pinned targets revision nope"),
            "{}",
            stalled.message
        );
    }
}
