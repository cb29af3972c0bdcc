//! The MeshGateway reconcile, as a pipeline: dereference (its MeshInstall and the revision
//! its tag resolves to) → validate and build (render) → apply and prune → observe → status.
//! Owned objects carry an owner reference to the gateway in its own namespace, so deleting
//! the gateway lets the garbage collector remove them; no finalizer is needed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use super::apply::{self, Applied, FIELD_MANAGER};
use super::gateway_status::{self, GatewayObservation, Resolution};
use super::index::OwnedIndex;
use super::metrics::Metrics;
use super::queue::Queue;
use super::reconcile::{Error, kube_err, summarise};
use super::status::Stall;
use crate::api::common::condition::{READY, STALLED};
use crate::api::labels;
use crate::api::mesh_gateway::{MeshGateway, MeshGatewayStatus};
use crate::api::mesh_install::MeshInstall;
use crate::render::gateway::selector_string;
use crate::render::{GatewayInput, Manifest, OwnedKind, RenderError, render_gateway};
use crate::versions::VersionTable;

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "meshgateway";
/// The kinds a MeshGateway owns.
pub const OWNED_KINDS: [OwnedKind; 6] = [
    OwnedKind::ServiceAccount,
    OwnedKind::ConfigMap,
    OwnedKind::Service,
    OwnedKind::Deployment,
    OwnedKind::HorizontalPodAutoscaler,
    OwnedKind::PodDisruptionBudget,
];
/// How often an unchanged gateway is looked at again, to catch drift no watch reported.
const RESYNC: Duration = Duration::from_secs(300);

/// What every gateway reconcile shares.
pub struct GatewayContext {
    /// API client.
    pub client: Client,
    /// Live objects that gateways own.
    pub index: OwnedIndex,
    /// Supported versions.
    pub versions: VersionTable,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// Pending-work bookkeeping for `workqueue_depth`.
    pub queue: Queue,
    /// Every MeshInstall (a gateway follows a tag in one of them).
    pub meshes: Store<MeshInstall>,
}

/// `namespace/name`, the gateway's key in logs and the queue.
pub fn key(gw: &MeshGateway) -> String {
    format!("{}/{}", gw.namespace().unwrap_or_default(), gw.name_any())
}

/// Reconciles one MeshGateway.
#[instrument(skip_all, fields(meshgateway = %key(&gw)))]
pub async fn reconcile(gw: Arc<MeshGateway>, ctx: Arc<GatewayContext>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started(CONTROLLER);
    ctx.queue.started(&key(&gw));
    // Until every owned kind is listed, a missing object might only be not yet seen.
    ctx.index.ready().await;
    let result = if gw.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes what the gateway owned.
        Ok(Action::await_change())
    } else {
        apply_gateway(&gw, &ctx).await
    };
    ctx.metrics
        .reconcile_result(CONTROLLER, if result.is_ok() { "success" } else { "error" });
    result
}

/// After a failure: log it and try again shortly.
pub fn error_policy(gw: Arc<MeshGateway>, error: &Error, _ctx: Arc<GatewayContext>) -> Action {
    warn!(meshgateway = %key(&gw), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Validate and build: the objects the gateway consists of, or why it cannot run.
fn build(gw: &MeshGateway, ctx: &GatewayContext, resolution: &Resolution) -> Option<Result<Vec<Manifest>, Stall>> {
    let Resolution::Resolved {
        revision,
        version,
        namespace,
        ..
    } = resolution
    else {
        return None;
    };
    let Some(version) = ctx.versions.get(version) else {
        return Some(Err(Stall {
            reason: "UnsupportedVersion",
            message: format!(
                "revision {revision} runs version {version}, which this operator does not support (supported: {}); the running gateway is left as it is",
                ctx.versions.list()
            ),
        }));
    };
    Some(
        render_gateway(&GatewayInput {
            gateway: gw,
            mesh: &gw.spec.mesh,
            revision,
            control_plane_namespace: namespace,
            version,
        })
        .map_err(|e| Stall {
            reason: match e {
                RenderError::Invalid(_) => "InvalidSpec",
                RenderError::Encode { .. } => "RenderFailed",
            },
            message: e.to_string(),
        }),
    )
}

async fn apply_gateway(gw: &MeshGateway, ctx: &GatewayContext) -> Result<Action, Error> {
    let name = gw.name_any();
    let ns = gw.namespace().unwrap_or_default();
    let uid = gw.uid().unwrap_or_default();
    let mesh = ctx.meshes.get(&ObjectRef::new(&gw.spec.mesh));
    let resolution = gateway_status::resolve(gw, mesh.as_deref());

    // Waiting or stalled: what runs is left alone (a gateway keeps serving from its last
    // revision until its tag resolves again).
    let built = build(gw, ctx, &resolution);
    let mut changes = Vec::new();
    if let Some(Ok(manifests)) = &built {
        for m in manifests {
            match apply::apply(&ctx.client, &ctx.index, &ctx.metrics, m).await? {
                Applied::Unchanged => {}
                Applied::Created => changes.push(format!("created {}", m.describe())),
                Applied::Updated => changes.push(format!("updated {}", m.describe())),
            }
        }
        for pruned in apply::prune(&ctx.client, &ctx.index, &ctx.metrics, &uid, None, manifests).await? {
            changes.push(format!("pruned {pruned}"));
        }
    }
    if !changes.is_empty() {
        info!(changes = ?changes, "applied");
        publish(ctx, gw, EventType::Normal, "Applied", "Apply", &summarise(&changes)).await;
    }

    let new_status = gateway_status::compute(&GatewayObservation {
        gateway: gw,
        resolution: &resolution,
        stall: built.and_then(Result::err),
        deployment: live(ctx, OwnedKind::Deployment, &ns, &name),
        service: live(ctx, OwnedKind::Service, &ns, &name),
        selector: selector_string(&name),
        now: Time(Timestamp::now()),
    });
    write_status(ctx, gw, new_status).await?;
    Ok(Action::requeue(RESYNC))
}

/// A live owned object from the index, typed.
fn live<K: DeserializeOwned>(ctx: &GatewayContext, kind: OwnedKind, ns: &str, name: &str) -> Option<K> {
    let obj = ctx.index.get(kind, Some(ns), name)?;
    // Only what carries our labels counts as ours.
    if obj.labels().get(labels::COMPONENT).map(String::as_str) != Some(labels::GATEWAY_COMPONENT) {
        return None;
    }
    serde_json::to_value(obj.as_ref()).and_then(serde_json::from_value).ok()
}

/// Status: written only when it changed, with server-side apply of the status subresource.
async fn write_status(ctx: &GatewayContext, gw: &MeshGateway, new: MeshGatewayStatus) -> Result<(), Error> {
    let old = gw.status.clone().unwrap_or_default();
    if old == new {
        return Ok(());
    }
    let is = |s: &MeshGatewayStatus, t: &str| s.conditions.iter().any(|c| c.type_ == t && c.status == "True");
    let stalled = new
        .conditions
        .iter()
        .find(|c| c.type_ == STALLED && c.status == "True")
        .cloned();
    let became_ready = is(&new, READY) && !is(&old, READY);
    let api: Api<MeshGateway> = Api::namespaced(ctx.client.clone(), &gw.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": "weft.dev/v1alpha1",
        "kind": "MeshGateway",
        "status": new,
    });
    api.patch_status(
        &gw.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err("write status"))?;
    ctx.metrics.write("MeshGateway", "status");
    if let (Some(c), false) = (&stalled, is(&old, STALLED)) {
        ctx.metrics.stalled(&c.reason);
        warn!(reason = %c.reason, message = %c.message, "stalled");
        publish(ctx, gw, EventType::Warning, &c.reason, "Validate", &c.message).await;
    }
    if let (Some(from), Some(to)) = (&old.revision, &new.revision)
        && from != to
    {
        let note = format!(
            "{} moved: the gateway follows it from revision {from} to {to}",
            gw.spec.revision
        );
        info!("{note}");
        publish(ctx, gw, EventType::Normal, "RevisionChanged", "Upgrade", &note).await;
    }
    if became_ready {
        let note = new
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        publish(ctx, gw, EventType::Normal, "Ready", "Reconcile", &note).await;
    }
    Ok(())
}

/// Publishes an Event; a failure to record one is logged, never fatal.
async fn publish(ctx: &GatewayContext, gw: &MeshGateway, type_: EventType, reason: &str, action: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &gw.object_ref(&())).await {
        Ok(()) => ctx.metrics.write("Event", "create"),
        Err(error) => warn!(%error, "could not record an event"),
    }
}
