//! Apply: server-side apply of rendered objects with one field manager, skipping objects that
//! already hold what we want (so a steady-state reconcile writes nothing), and pruning owned
//! objects that are no longer wanted.

use std::collections::HashSet;
use std::sync::Arc;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::Value;
use tracing::info;

use super::events::{Note, summarise};
use super::index::OwnedIndex;
use super::metrics::Metrics;
use super::shared::Shared;
use crate::api::labels;
use crate::render::{Manifest, OwnedKind};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "weft-operator";

/// Why an apply or prune failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {object}: {source}")]
pub struct ApplyError {
    /// What was attempted.
    pub action: &'static str,
    /// The object.
    pub object: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// True when every field of `want` is present in `live` with the same value: maps may
/// hold more keys (server defaults, other managers), and lists more elements, as long as
/// ours are there in our order. Another actor's additions (a webhook's env var, sidecar or
/// toleration) survive our server-side apply anyway, so re-applying over them would be a
/// write on every reconcile that changes nothing. What we stopped wanting is caught by
/// the applied hash instead.
pub fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w.iter().all(|(k, wv)| l.get(k).is_some_and(|lv| contains(lv, wv))),
        (Value::Array(l), Value::Array(w)) => {
            // In order: the earliest match for each of ours leaves the most room for the rest.
            let mut rest = l.iter();
            w.iter().all(|wv| rest.any(|lv| contains(lv, wv)))
        }
        (Value::Number(l), Value::Number(w)) => l.as_f64() == w.as_f64(),
        (l, w) => l == w,
    }
}

/// The annotation holding a hash of what was last applied. Containment alone cannot see a
/// field we stopped wanting (the live object still has it); a changed hash can.
pub const APPLIED_HASH: &str = "weft.dev/applied-hash";

/// `want` with its own hash in the `APPLIED_HASH` annotation.
pub fn with_hash(want: &Value) -> Value {
    let hash = crate::render::fnv1a(&want.to_string());
    let mut out = want.clone();
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_HASH.to_string(), Value::String(hash));
        }
    }
    out
}

/// Whether the live object already holds every field we want (`want` as sent, with its
/// hash). `apiVersion` and `kind` are left out: objects in list responses lack them.
pub fn up_to_date(live: &DynamicObject, want: &Value) -> bool {
    let live = serde_json::to_value(live).unwrap_or(Value::Null);
    match want {
        Value::Object(fields) => fields
            .iter()
            .filter(|(k, _)| *k != "apiVersion" && *k != "kind")
            .all(|(k, v)| live.get(k).is_some_and(|l| contains(l, v))),
        _ => false,
    }
}

fn api_for(client: &Client, kind: OwnedKind, namespace: Option<&str>) -> Api<DynamicObject> {
    let ar = kind.api_resource();
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// The manifests whose live copy (looked up once, returned with them) is missing or lacks
/// what we want.
fn changed<'m>(index: &OwnedIndex, manifests: &'m [Manifest]) -> Vec<(&'m Manifest, Option<Arc<DynamicObject>>)> {
    manifests
        .iter()
        .map(|m| (m, index.get(m.kind, m.namespace.as_deref(), &m.name)))
        .filter(|(m, live)| !live.as_ref().is_some_and(|l| up_to_date(l, &with_hash(&m.object))))
        .collect()
}

/// Server-side applies `m` (with its initial replicas when it is new, `exists` false), for
/// real or as a dry run.
async fn patch(client: &Client, m: &Manifest, exists: bool, dry_run: bool) -> Result<(), ApplyError> {
    let mut sent = with_hash(&m.object);
    if let (Some(n), false) = (m.initial_replicas, exists)
        && let Some(spec) = sent.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("replicas".to_string(), Value::from(n));
    }
    let api = api_for(client, m.kind, m.namespace.as_deref());
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    api.patch(&m.name, &params, &Patch::Apply(&sent))
        .await
        .map(|_| ())
        .map_err(|source| ApplyError {
            action: if dry_run { "validate" } else { "apply" },
            object: m.describe(),
            source,
        })
}

/// The field manager that holds `spec.replicas` of an autoscaled Deployment until its
/// autoscaler first changes it. Our own applies leave the field out (so they never undo the
/// autoscaler), and a field no manager holds any more would fall back to 1 replica.
pub const REPLICAS_MANAGER: &str = "weft-operator-initial-replicas";

/// Applies one object that differs from its `live` copy (if any). An autoscaled Deployment
/// is created with its initial replicas, which are then handed to `REPLICAS_MANAGER`.
async fn apply(
    client: &Client,
    metrics: &Metrics,
    m: &Manifest,
    live: Option<&Arc<DynamicObject>>,
) -> Result<(), ApplyError> {
    let api = api_for(client, m.kind, m.namespace.as_deref());
    let live_replicas = live
        .as_ref()
        .and_then(|l| l.data.pointer("/spec/replicas"))
        .and_then(Value::as_i64);
    let handover = match (m.initial_replicas, &live) {
        (Some(n), None) => Some(i64::from(n)),
        // Share the current count before our apply lets go of it (it may be ours from a
        // time without autoscaling).
        (Some(_), Some(_)) => live_replicas,
        (None, _) => None,
    };
    if let (Some(n), Some(_)) = (handover, live) {
        hand_over_replicas(&api, metrics, m, n).await?;
    }
    patch(client, m, live.is_some(), false).await?;
    metrics.write(m.kind.name(), "apply");
    if let (Some(n), None) = (handover, live) {
        hand_over_replicas(&api, metrics, m, n).await?;
    }
    Ok(())
}

/// Lets `REPLICAS_MANAGER` share `spec.replicas` at its current value `n`. Never forced: if
/// another manager (the autoscaler) holds another value, it keeps it, which is the goal.
async fn hand_over_replicas(
    api: &Api<DynamicObject>,
    metrics: &Metrics,
    m: &Manifest,
    n: i64,
) -> Result<(), ApplyError> {
    let mut meta = serde_json::Map::new();
    meta.insert("name".into(), Value::from(m.name.clone()));
    if let Some(ns) = &m.namespace {
        meta.insert("namespace".into(), Value::from(ns.clone()));
    }
    let body = serde_json::json!({
        "apiVersion": m.object.get("apiVersion"),
        "kind": m.object.get("kind"),
        "metadata": meta,
        "spec": {"replicas": n},
    });
    match api
        .patch(&m.name, &PatchParams::apply(REPLICAS_MANAGER), &Patch::Apply(&body))
        .await
    {
        Ok(_) => {
            metrics.write(m.kind.name(), "apply");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(ApplyError {
            action: "hand over replicas of",
            object: m.describe(),
            source,
        }),
    }
}

/// Which of an owner's objects a converge or prune concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every object the owner has.
    All,
    /// Only objects labelled with this revision.
    Revision(&'a str),
    /// Only objects labelled with this component (mesh-wide objects such as trust bundles).
    Component(&'a str),
}

impl Scope<'_> {
    fn contains(&self, obj: &DynamicObject) -> bool {
        let label = |key: &str| obj.labels().get(key).map(String::as_str);
        match self {
            Scope::All => true,
            Scope::Revision(r) => label(labels::REVISION) == Some(r),
            Scope::Component(c) => label(labels::COMPONENT) == Some(c),
        }
    }
}

/// Applies every manifest, then prunes what `owner` has and no longer wants (only objects
/// in `scope`); what changed is logged and recorded as one Event. Every
/// object that would change but the first is first applied as a server-side dry run (all
/// at once), and the first is applied before the others, so an object the API server
/// refuses stops the whole apply before anything is written: never half a revision. (The
/// first needs no dry run: its own apply is the first write.)
pub async fn converge<K: Resource<DynamicType = ()>>(
    shared: &Shared,
    index: &OwnedIndex,
    owner: &K,
    scope: Scope<'_>,
    manifests: &[Manifest],
) -> Result<(), ApplyError> {
    let (client, metrics) = (&shared.client, &shared.metrics);
    let changed = changed(index, manifests);
    let checks = changed
        .iter()
        .skip(1)
        .filter(|(m, _)| !binds_a_role_not_yet_created(index, manifests, m))
        .map(|(m, live)| patch(client, m, live.is_some(), true));
    futures::future::try_join_all(checks).await?;
    let mut changes = Vec::new();
    for (m, live) in &changed {
        apply(client, metrics, m, live.as_ref()).await?;
        let what = if live.is_some() { "updated" } else { "created" };
        changes.push(format!("{what} {}", m.describe()));
    }
    let uid = owner.meta().uid.clone().unwrap_or_default();
    for pruned in prune(client, index, metrics, &uid, scope, manifests).await? {
        changes.push(format!("pruned {pruned}"));
    }
    if !changes.is_empty() {
        info!(changes = ?changes, "applied");
        shared
            .publish(owner, &Note::normal("Applied", "Apply", summarise(&changes)))
            .await;
    }
    Ok(())
}

/// Whether `m` is a binding whose role is in `manifests` but not yet live. Without escalate
/// and bind (the operator has neither), RBAC checks a binding against its role's rules, so
/// its dry run fails with NotFound until the role exists; the real apply, after the role's,
/// is checked in full.
fn binds_a_role_not_yet_created(index: &OwnedIndex, manifests: &[Manifest], m: &Manifest) -> bool {
    let role_kind = match m.kind {
        OwnedKind::ClusterRoleBinding => OwnedKind::ClusterRole,
        OwnedKind::RoleBinding => OwnedKind::Role,
        _ => return false,
    };
    let Some(role) = m.object.pointer("/roleRef/name").and_then(Value::as_str) else {
        return false;
    };
    let ns = m.namespace.as_deref();
    manifests
        .iter()
        .any(|r| r.kind == role_kind && r.name == role && r.namespace.as_deref() == ns)
        && index.get(role_kind, ns, role).is_none()
}

/// Deletes every object whose controller is the owner with `owner_uid` that is not in
/// `wanted`, of those in `scope` (others are left as they are).
/// Returns what was deleted, as `Kind namespace/name`.
pub async fn prune(
    client: &Client,
    index: &OwnedIndex,
    metrics: &Metrics,
    owner_uid: &str,
    scope: Scope<'_>,
    wanted: &[Manifest],
) -> Result<Vec<String>, ApplyError> {
    let keep: HashSet<(OwnedKind, Option<&str>, &str)> = wanted
        .iter()
        .map(|m| (m.kind, m.namespace.as_deref(), m.name.as_str()))
        .collect();
    let mut pruned = Vec::new();
    for kind in OwnedKind::ALL.iter().rev() {
        for obj in index.owned_by(*kind, owner_uid) {
            let name = obj.name_any();
            let ns = obj.namespace();
            if !scope.contains(&obj)
                || keep.contains(&(*kind, ns.as_deref(), name.as_str()))
                || obj.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let what = match &ns {
                Some(ns) => format!("{} {ns}/{name}", kind.name()),
                None => format!("{} {name}", kind.name()),
            };
            match api_for(client, *kind, ns.as_deref())
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                // Already gone: the goal is reached.
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(source) => {
                    return Err(ApplyError {
                        action: "prune",
                        object: what,
                        source,
                    });
                }
            }
            metrics.write(kind.name(), "delete");
            pruned.push(what);
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::{contains, up_to_date, with_hash};
    use serde_json::json;

    #[test]
    fn live_objects_may_hold_more_than_we_want() {
        let live = json!({"metadata": {"name": "a", "uid": "1", "labels": {"x": "1", "y": "2"}}, "spec": {"replicas": 1, "paused": false}});
        assert!(contains(
            &live,
            &json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 1}})
        ));
        assert!(!contains(&live, &json!({"spec": {"replicas": 2}})));
        assert!(!contains(&live, &json!({"spec": {"strategy": {}}})));
    }

    #[test]
    fn a_field_no_longer_wanted_changes_the_hash() {
        let before = json!({"metadata": {"name": "a"}, "spec": {"nodeSelector": {"x": "1"}, "replicas": 1}});
        let after = json!({"metadata": {"name": "a"}, "spec": {"replicas": 1}});
        let live: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "X", "metadata": {"name": "a", "annotations": {"other": "kept"}},
            "spec": {"nodeSelector": {"x": "1"}, "replicas": 1}
        }))
        .unwrap();
        let mut live_json = serde_json::to_value(&live).unwrap();
        live_json["metadata"]["annotations"][super::APPLIED_HASH] =
            with_hash(&before)["metadata"]["annotations"][super::APPLIED_HASH].clone();
        let live: kube::api::DynamicObject = serde_json::from_value(live_json).unwrap();
        assert!(up_to_date(&live, &with_hash(&before)));
        assert!(
            contains(&serde_json::to_value(&live).unwrap(), &after),
            "containment alone misses the removal"
        );
        assert!(!up_to_date(&live, &with_hash(&after)), "the hash does not");
    }

    #[test]
    fn lists_hold_ours_in_order_and_may_hold_others() {
        let live = json!({"ports": [{"port": 1, "protocol": "TCP"}, {"port": 2, "protocol": "TCP"}]});
        assert!(contains(&live, &json!({"ports": [{"port": 1}, {"port": 2}]})));
        assert!(!contains(&live, &json!({"ports": [{"port": 2}, {"port": 1}]})));
        assert!(!contains(&live, &json!({"ports": [{"port": 1}, {"port": 3}]})));
        // A webhook injected an env var between ours: nothing of ours is missing.
        let env = json!({"env": [{"name": "A", "value": "1"}, {"name": "INJECTED", "value": "x"}, {"name": "B", "value": "2"}]});
        assert!(contains(
            &env,
            &json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]})
        ));
        assert!(!contains(&env, &json!({"env": [{"name": "A", "value": "2"}]})));
    }

    #[test]
    fn an_element_we_no_longer_want_is_caught_by_the_hash() {
        let before = json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 1}, {"port": 2}]}});
        let after = json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 1}]}});
        let live: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "X",
            "metadata": {"name": "a", "annotations": {super::APPLIED_HASH: with_hash(&before)["metadata"]["annotations"][super::APPLIED_HASH].clone()}},
            "spec": {"ports": [{"port": 1}, {"port": 2}]}
        }))
        .unwrap();
        assert!(up_to_date(&live, &with_hash(&before)));
        assert!(!up_to_date(&live, &with_hash(&after)), "a removed port must be applied");
    }
}
