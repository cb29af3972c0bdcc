//! The MeshGateway controller. Each reconcile is a pipeline: observe (its MeshInstall and
//! its live Deployment and Service, from stores) → decide (pure, [`decide::decide`]) →
//! apply and prune → write status → record Events. Owned objects carry an owner reference
//! to the gateway in its own namespace, so deleting the gateway lets the garbage collector
//! remove them; no finalizer is needed.

pub mod decide;
#[cfg(test)]
mod fixtures;
pub mod resolve;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};

use super::apply;
use super::controller::{RESYNC, Ref, Shutdown, Triggers};
use super::error::Error;
use super::index::{OwnedIndex, OwnedWatch, controller_owner};
use super::shared::Shared;
use super::status::write as write_status;
use super::watch::{self, Guarded, SharedWatch};
use crate::api::labels;
use crate::api::mesh_gateway::MeshGateway;
use crate::api::mesh_install::MeshInstall;
use crate::render::OwnedKind;
use decide::Observed;
use futures::StreamExt;
use resolve::MeshView;

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

/// What every gateway reconcile reads.
pub struct Context {
    /// What every controller shares.
    pub shared: Shared,
    /// Live objects that gateways own.
    pub index: OwnedIndex,
    /// Every MeshInstall (a gateway follows a tag in one of them).
    pub meshes: Store<Guarded<MeshInstall>>,
}

/// Builds the controller over the shared MeshGateway watch; it runs until `shutdown`.
pub fn controller(
    shared: &Shared,
    gateways: &SharedWatch<MeshGateway>,
    meshes: &SharedWatch<MeshInstall>,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + use<> {
    let selector = format!(
        "{}={},{}={}",
        labels::MANAGED_BY,
        labels::MANAGER,
        labels::COMPONENT,
        labels::GATEWAY_COMPONENT
    );
    let OwnedWatch { index, streams } = OwnedIndex::start(shared, CONTROLLER, &selector, &OWNED_KINDS);
    let ctx = Arc::new(Context {
        shared: shared.clone(),
        index,
        meshes: meshes.store(),
    });
    let all = gateways.store();
    // Only what gateways read of a MeshInstall: each gateway joining changes the mesh's
    // status (who uses which revision), which must not send every other gateway round again.
    let seen = std::sync::Mutex::new(std::collections::HashMap::<String, Option<MeshView>>::new());
    let mesh_news = meshes.subscribe().filter(move |mi| {
        let view = mi.0.as_ref().ok().map(MeshView::of);
        let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let news = seen.get(&mi.name_any()) != Some(&view);
        if news {
            seen.insert(mi.name_any(), view);
        }
        futures::future::ready(news)
    });
    Triggers::new(CONTROLLER, shared, gateways.store(), gateways.subscribe())
        .owns(streams, |o| {
            let ns = o.namespace()?;
            controller_owner(o, "MeshGateway").map(|n| ObjectRef::new(&n).within(&ns))
        })
        // A MeshInstall changed (a tag moved, a revision appeared or became ready): its
        // gateways look again.
        .watches(mesh_news, move |mi| of_mesh(&all, &mi.name_any()))
        .run(ctx, reconcile, shutdown)
}

/// The gateways of mesh `mesh`.
fn of_mesh(gateways: &Store<Guarded<MeshGateway>>, mesh: &str) -> Vec<Ref<MeshGateway>> {
    gateways
        .state()
        .iter()
        .filter(|g| g.0.as_ref().is_ok_and(|g| g.spec.mesh == mesh))
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// Reconciles one MeshGateway: observe → decide → apply → write status → Events.
async fn reconcile(gw: Arc<MeshGateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Until every owned kind is listed, a missing object might only be not yet seen.
    ctx.index.ready().await;
    if gw.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes what the gateway owned.
        return Ok(Action::await_change());
    }
    let (mut observed, now) = (observe(&ctx, &gw), Timestamp::now());
    let mut decision = decide::decide(&gw, &ctx.shared.versions, &observed, now);
    // Waiting or stalled: what runs is left alone (a gateway keeps serving from its last
    // revision until its tag resolves again). A refused object stalls the gateway rather
    // than failing the reconcile: the same spec would be refused again.
    if let Some(manifests) = &decision.install
        && let Err(e) = apply::converge(&ctx.shared, &ctx.index, gw.as_ref(), apply::Scope::All, manifests).await
    {
        let e = Error::from(e);
        observed.rejected = Some(e.rejection().ok_or(e)?);
        decision = decide::decide(&gw, &ctx.shared.versions, &observed, now);
    }
    if write_status(&ctx.shared, gw.as_ref(), &decision.status).await? {
        ctx.shared.publish_all(gw.as_ref(), &decision.notes).await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Observe: the gateway's MeshInstall and its live Deployment and Service.
fn observe(ctx: &Context, gw: &MeshGateway) -> Observed {
    let (name, ns) = (gw.name_any(), gw.namespace().unwrap_or_default());
    Observed {
        mesh: watch::get(&ctx.meshes, &gw.spec.mesh, None),
        deployment: ctx.index.get_typed(OwnedKind::Deployment, Some(&ns), &name),
        service: ctx.index.get_typed(OwnedKind::Service, Some(&ns), &name),
        rejected: None,
    }
}
