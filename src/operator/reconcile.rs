//! The MeshInstall reconcile, as a pipeline: dereference → validate → build (render) → apply
//! and prune → observe → status. Each step is small; the decisions are pure functions in
//! `render` and `status`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::apply::{self, Applied, ApplyError, FIELD_MANAGER};
use super::index::OwnedIndex;
use super::metrics::Metrics;
use super::queue::Queue;
use super::revisions::{self, Neighbour, PlanInput, Usage};
use super::status::{self, RevisionObservation, Stall, StatusInput};
use super::usage::UsageIndex;
use crate::api::common::condition::STALLED;
use crate::api::labels;
use crate::api::mesh_install::{MeshInstall, MeshInstallStatus};
use crate::render::revision::{control_plane_name, proxy_name};
use crate::render::{Manifest, OwnedKind, RenderError, RevisionInput, render_revision};
use crate::versions::VersionTable;

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "meshinstall";
/// The finalizer that removes cluster-scoped objects before a MeshInstall goes.
pub const FINALIZER: &str = "weft.dev/cleanup";
/// How often an unchanged MeshInstall is looked at again, to catch drift no watch reported.
const RESYNC: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Live owned objects.
    pub index: OwnedIndex,
    /// Supported versions.
    pub versions: VersionTable,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// Pending-work bookkeeping for `workqueue_depth`.
    pub queue: Queue,
    /// Every MeshInstall (tag and revision names are cluster-wide).
    pub meshes: Store<MeshInstall>,
    /// Who uses which revision.
    pub usage: UsageIndex,
}

/// Reconcile failures (retried with a delay).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying or pruning an owned object failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Another API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was attempted.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// Wraps an API error with what was attempted.
pub(super) fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Reconciles one MeshInstall.
#[instrument(skip_all, fields(meshinstall = %mi.name_any()))]
pub async fn reconcile(mi: Arc<MeshInstall>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    ctx.queue.started(&mi.name_any());
    tracing::debug!("reconcile started");
    // Until every owned kind is listed, a missing object might only be not yet seen.
    ctx.index.ready().await;
    tracing::debug!("index ready");
    let api: Api<MeshInstall> = Api::all(ctx.client.clone());
    if !mi.finalizers().iter().any(|f| f == FINALIZER) && mi.metadata.deletion_timestamp.is_none() {
        ctx.metrics.write("MeshInstall", "finalizer");
    }
    let result = finalizer(&api, FINALIZER, mi, |event| async {
        match event {
            finalizer::Event::Apply(mi) => apply_mesh(&mi, &ctx).await,
            finalizer::Event::Cleanup(mi) => cleanup(&mi, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .reconcile_result(CONTROLLER, if result.is_ok() { "success" } else { "error" });
    result
}

/// After a failure: log it and try again shortly.
pub fn error_policy(mi: Arc<MeshInstall>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(meshinstall = %mi.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Validate: what must hold before anything is touched. `Err` stalls the MeshInstall.
fn validate<'v>(mi: &MeshInstall, versions: &'v VersionTable) -> Result<&'v crate::versions::MeshVersion, Stall> {
    versions.get(&mi.spec.version).ok_or_else(|| Stall {
        reason: "UnsupportedVersion",
        message: format!(
            "version {} is not supported by this operator (supported: {}); the running mesh is left as it is",
            mi.spec.version,
            versions.list()
        ),
    })
}

/// Tag and revision names are cluster-wide: what the other MeshInstalls claim, whether
/// this one conflicts with an older one, and whether it owns the `default` tag.
fn neighbours(ctx: &Context, mi: &MeshInstall) -> (Option<Stall>, BTreeSet<String>, bool) {
    let key = |m: &MeshInstall| (m.creation_timestamp().map(|t| t.0), m.name_any());
    let mine = key(mi);
    let others: Vec<Neighbour> = ctx
        .meshes
        .state()
        .iter()
        .filter(|m| m.name_any() != mi.name_any())
        .map(|m| Neighbour::of(m, key(m) < mine))
        .collect();
    let conflict = revisions::name_conflict(&Neighbour::of(mi, false), &others);
    let taken = others
        .iter()
        .filter(|o| o.older)
        .flat_map(|o| o.revisions.iter().chain(&o.tags).cloned())
        .collect();
    let owns_default = !others.iter().any(|o| o.older);
    (conflict, taken, owns_default)
}

/// Who uses this mesh's revisions: index lookups for the label values that can name them.
fn usage(ctx: &Context, mi: &MeshInstall, installed: &[RevisionObservation]) -> Usage {
    let mut values: BTreeSet<String> = installed.iter().map(|r| r.name.clone()).collect();
    values.insert("default".to_string());
    values.extend(mi.spec.revision_tags.iter().flatten().map(|t| t.name.clone()));
    let mesh = mi.name_any();
    Usage {
        synced: ctx.usage.synced(),
        namespaces: values.iter().map(|v| (v.clone(), ctx.usage.namespaces(v))).collect(),
        gateways: values
            .iter()
            .map(|v| (v.clone(), ctx.usage.gateways(&mesh, v)))
            .collect(),
    }
}

async fn apply_mesh(mi: &MeshInstall, ctx: &Context) -> Result<Action, Error> {
    let uid = mi.uid().unwrap_or_default();
    let target = revisions::target_revision(mi);
    let (conflict, taken, owns_default) = neighbours(ctx, mi);

    // Validate and build; a spec problem stalls without touching anything that runs.
    let built: Result<Vec<Manifest>, Stall> = match conflict {
        Some(stall) => Err(stall),
        None => validate(mi, &ctx.versions).and_then(|version| {
            render_revision(&RevisionInput {
                mesh: mi,
                revision: &target,
                version,
            })
            .map_err(|e| Stall {
                reason: match e {
                    RenderError::Invalid(_) => "InvalidSpec",
                    RenderError::Encode { .. } => "RenderFailed",
                },
                message: e.to_string(),
            })
        }),
    };

    // Apply the target revision only: other revisions keep what they were installed with
    // (a bad new spec must not reach the revision that is serving).
    let mut changes = Vec::new();
    if let Ok(manifests) = &built {
        ensure_namespace(ctx, &mi.spec.namespace).await?;
        for m in manifests {
            match apply::apply(&ctx.client, &ctx.index, &ctx.metrics, m).await? {
                Applied::Unchanged => {}
                Applied::Created => changes.push(format!("created {}", m.describe())),
                Applied::Updated => changes.push(format!("updated {}", m.describe())),
            }
        }
        for pruned in apply::prune(&ctx.client, &ctx.index, &ctx.metrics, &uid, Some(&target), manifests).await? {
            changes.push(format!("pruned {pruned}"));
        }
    }
    if !changes.is_empty() {
        info!(changes = ?changes, "applied");
        publish(ctx, mi, EventType::Normal, "Applied", "Apply", &summarise(&changes)).await;
    }

    let proxy_wanted = match &built {
        Ok(manifests) => manifests.iter().any(|m| m.kind == OwnedKind::DaemonSet),
        Err(_) => true,
    };
    let mut observed = observe(ctx, &uid, &target, proxy_wanted);
    let usage = usage(ctx, mi, &observed);
    let now = Timestamp::now();
    let plan = revisions::plan(&PlanInput {
        mesh: mi,
        target: &target,
        installed: &observed,
        usage: &usage,
        owns_default,
        taken: &taken,
        now,
    });

    // Delete revisions past their grace period, unless the spec is stalled (then nothing
    // that runs is touched).
    let mut pruned = Vec::new();
    if built.is_ok() {
        for r in &plan.prune {
            let removed = apply::prune(&ctx.client, &ctx.index, &ctx.metrics, &uid, Some(r), &[]).await?;
            info!(revision = %r, removed = ?removed, "pruned an unused revision");
            pruned.push(r.clone());
        }
        observed.retain(|o| !pruned.contains(&o.name));
    }

    let stall = built.err().or_else(|| plan.failed.clone());
    let new_status = status::compute(&StatusInput {
        mesh: mi,
        target: &target,
        revisions: observed,
        plan: &plan,
        stall,
        now: Time(now),
    });
    let old_status = mi.status.clone().unwrap_or_default();
    for step in revisions::transitions(&old_status, &new_status, &pruned) {
        ctx.metrics.revision_step(step.kind);
        info!(step = step.kind, "{}", step.message);
        let (type_, reason) = match step.kind {
            "created" => (EventType::Normal, "RevisionCreated"),
            "tag_moved" => (EventType::Normal, "TagMoved"),
            "promoted" => (EventType::Normal, "Promoted"),
            "held" => (EventType::Warning, "UpgradeHeld"),
            _ => (EventType::Normal, "RevisionPruned"),
        };
        publish(ctx, mi, type_, reason, "Upgrade", &step.message).await;
    }
    write_status(ctx, mi, new_status).await?;
    Ok(Action::requeue(plan.requeue.map_or(RESYNC, |d| d.min(RESYNC))))
}

/// At most a few lines for an Event note.
pub(super) fn summarise(changes: &[String]) -> String {
    let mut note = changes.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    if changes.len() > 5 {
        note.push_str(&format!("; and {} more", changes.len() - 5));
    }
    note
}

/// Creates the control plane's namespace if it is absent. It is never owned or deleted: it
/// may hold things that are not ours.
async fn ensure_namespace(ctx: &Context, ns: &str) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    if api
        .get_opt(ns)
        .await
        .map_err(kube_err(format!("read namespace {ns}")))?
        .is_some()
    {
        return Ok(());
    }
    let obj = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            },
            &obj,
        )
        .await
    {
        Ok(_) => {
            ctx.metrics.write("Namespace", "create");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("create namespace {ns}"),
            source,
        }),
    }
}

/// Observe: the installed revisions of this MeshInstall, from the index.
fn observe(ctx: &Context, uid: &str, target: &str, proxy_wanted: bool) -> Vec<RevisionObservation> {
    let mut revisions: BTreeMap<String, RevisionObservation> = BTreeMap::new();
    for d in ctx.index.owned_by(OwnedKind::Deployment, uid) {
        let Some(rev) = d.labels().get(labels::REVISION).cloned() else {
            continue;
        };
        if d.name_any() != control_plane_name(&rev) {
            continue;
        }
        let version = d.labels().get(labels::VERSION).cloned().unwrap_or_default();
        let health = serde_json::to_value(d.as_ref())
            .and_then(serde_json::from_value::<Deployment>)
            .ok()
            .map(|d| status::deployment_health(&d));
        let proxy = ctx
            .index
            .get(OwnedKind::DaemonSet, d.namespace().as_deref(), &proxy_name(&rev))
            .and_then(|ds| {
                serde_json::to_value(ds.as_ref())
                    .and_then(serde_json::from_value::<DaemonSet>)
                    .ok()
            })
            .map(|ds| status::daemon_set_health(&ds));
        let wanted = if rev == target { proxy_wanted } else { proxy.is_some() };
        revisions.insert(
            rev.clone(),
            RevisionObservation {
                name: rev,
                version,
                control_plane: health,
                proxy,
                proxy_wanted: wanted,
            },
        );
    }
    revisions.into_values().collect()
}

/// Status: written only when it changed, with server-side apply of the status subresource.
async fn write_status(ctx: &Context, mi: &MeshInstall, new: MeshInstallStatus) -> Result<(), Error> {
    let old = mi.status.clone().unwrap_or_default();
    if old == new {
        return Ok(());
    }
    let was_stalled = old.conditions.iter().any(|c| c.type_ == STALLED && c.status == "True");
    let stalled = new
        .conditions
        .iter()
        .find(|c| c.type_ == STALLED && c.status == "True")
        .cloned();
    let became_ready = new.state.as_deref() == Some("Healthy") && old.state.as_deref() != Some("Healthy");
    let api: Api<MeshInstall> = Api::all(ctx.client.clone());
    let body = serde_json::json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "MeshInstall",
        "status": new,
    });
    api.patch_status(
        &mi.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err("write status"))?;
    ctx.metrics.write("MeshInstall", "status");
    if let (Some(c), false) = (&stalled, was_stalled) {
        ctx.metrics.stalled(&c.reason);
        warn!(reason = %c.reason, message = %c.message, "stalled");
        publish(ctx, mi, EventType::Warning, &c.reason, "Validate", &c.message).await;
    }
    if became_ready {
        publish(
            ctx,
            mi,
            EventType::Normal,
            "Ready",
            "Reconcile",
            "every revision is ready",
        )
        .await;
    }
    Ok(())
}

/// Cleanup on deletion: cluster-scoped objects first (namespaced ones go with the owner
/// references when the MeshInstall is gone).
async fn cleanup(mi: &MeshInstall, ctx: &Context) -> Result<Action, Error> {
    let uid = mi.uid().unwrap_or_default();
    // Pruning against an empty wanted set removes every owned object, cluster-scoped included.
    let removed = apply::prune(&ctx.client, &ctx.index, &ctx.metrics, &uid, None, &[]).await?;
    if !removed.is_empty() {
        info!(removed = ?removed, "cleaned up");
        publish(ctx, mi, EventType::Normal, "Deleted", "Cleanup", &summarise(&removed)).await;
    }
    Ok(Action::await_change())
}

/// Publishes an Event; a failure to record one is logged, never fatal.
async fn publish(ctx: &Context, mi: &MeshInstall, type_: EventType, reason: &str, action: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &mi.object_ref(&())).await {
        Ok(()) => ctx.metrics.write("Event", "create"),
        Err(error) => warn!(%error, "could not record an event"),
    }
}
