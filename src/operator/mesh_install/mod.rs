//! The MeshInstall controller. Each reconcile is a pipeline:
//! observe (indexes → [`observe::Observed`], and the CA Secrets) → decide (pure, [`decide::decide`]) →
//! apply (namespace, target revision, pruning) → write status → record the upgrade steps.
//! A finalizer removes cluster-scoped objects on deletion.

pub mod apply;
pub mod ca;
pub mod decide;
#[cfg(test)]
mod fixtures;
pub mod names;
pub mod observe;
pub mod remotes;
pub mod revisions;
pub mod status;
pub mod steps;
pub mod usage;

use std::future::Future;
use std::sync::Arc;

use futures::{StreamExt, stream};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use super::controller::{Shutdown, Triggers};
use super::error::Error;
use super::index::{OwnedIndex, OwnedWatch, controller_owner};
use super::shared::Shared;
use super::status::write as write_status;
use super::watch::{Guarded, SharedWatch};
use crate::api::RemoteCluster;
use crate::api::labels;
use crate::api::mesh_install::MeshInstall;
use crate::render::OwnedKind;
use steps::Transition;
use usage::UsageIndex;

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "meshinstall";
/// The finalizer that removes cluster-scoped objects before a MeshInstall goes.
pub const FINALIZER: &str = "weft.dev/cleanup";

/// What every MeshInstall reconcile reads.
pub struct Context {
    /// What every controller shares.
    pub shared: Shared,
    /// Live objects MeshInstalls own.
    pub index: OwnedIndex,
    /// Every MeshInstall (tag and revision names are cluster-wide).
    pub meshes: Store<Guarded<MeshInstall>>,
    /// Who uses which revision.
    pub usage: UsageIndex,
    /// Every RemoteCluster (their Secrets are what a control plane may read).
    pub remotes: Store<Guarded<RemoteCluster>>,
    /// True once the RemoteClusters are listed.
    pub remotes_listed: tokio::sync::watch::Receiver<bool>,
    /// How long a written trust bundle may take to reach every control plane and agent
    /// (a root rotation waits this long before signing with the new root).
    pub bundle_propagation: std::time::Duration,
}

/// Builds the controller over the shared MeshInstall watch; it runs until `shutdown`.
/// `news` names the mesh of each RemoteCluster that changed or went (its Secret is in, or
/// leaves, the control plane's Role).
pub fn controller(
    shared: &Shared,
    meshes: &SharedWatch<MeshInstall>,
    usage: &UsageIndex,
    remotes: &SharedWatch<RemoteCluster>,
    news: remotes::RemoteNews,
    bundle_propagation: std::time::Duration,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + use<> {
    let (remote_changes, remotes_listed) = news.split();
    // Everything Weft manages except what gateways own (their controller indexes that).
    let selector = format!(
        "{}={},{}!={}",
        labels::MANAGED_BY,
        labels::MANAGER,
        labels::COMPONENT,
        labels::GATEWAY_COMPONENT
    );
    let OwnedWatch { index, streams } = OwnedIndex::start(shared, CONTROLLER, &selector, &OwnedKind::ALL);
    let ctx = Arc::new(Context {
        shared: shared.clone(),
        index,
        meshes: meshes.store(),
        usage: usage.clone(),
        remotes: remotes.store(),
        remotes_listed,
        bundle_propagation,
    });
    // A namespace label or gateway changed: usage may have moved between revisions. A
    // gateway concerns its own mesh; a namespace label any mesh, and there are few
    // MeshInstalls, so each looks again (a reconcile that changes nothing writes nothing).
    let all = meshes.store();
    let ca_meshes = meshes.store();
    let trusting_meshes = meshes.store();
    let usage_changed = usage.changes().flat_map(move |concerns| {
        let refs: Vec<_> = match concerns {
            usage::Concerns::Meshes(names) => names.iter().map(|n| ObjectRef::new(n)).collect(),
            usage::Concerns::All => all.state().iter().map(|m| ObjectRef::from_obj(m.as_ref())).collect(),
            usage::Concerns::Nothing => Vec::new(),
        };
        stream::iter(refs)
    });
    Triggers::new(CONTROLLER, shared, meshes.store(), meshes.subscribe())
        // Owned objects name their MeshInstall as controller owner (the built-in `owns`
        // assumes owner and child share a namespace; a MeshInstall is cluster-scoped).
        .owns(streams, |o| {
            controller_owner(o, "MeshInstall").map(|n| ObjectRef::new(&n))
        })
        .on(usage_changed)
        // The CA Secrets and a plug-in CA: a change (or a deletion) is looked at at once.
        .watches(super::watch::secret_changes(shared, "Secret (mesh CA)"), move |s| {
            ca::concerned(&ca_meshes, s)
        })
        // A ConfigMap of another mesh's roots that a spec trusts.
        .watches(
            super::watch::metadata_changes(shared, "ConfigMap (trusted roots)"),
            move |c| ca::trusting(&trusting_meshes, c),
        )
        .on(remote_changes.map(|mesh| ObjectRef::new(&mesh)))
        .run(ctx, reconcile, shutdown)
}

/// Reconciles one MeshInstall, under its finalizer.
async fn reconcile(mi: Arc<MeshInstall>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Until every owned kind is listed, a missing object might only be not yet seen; until
    // the RemoteClusters are, a Role would be rendered without their Secrets.
    ctx.index.ready().await;
    let _ = ctx.remotes_listed.clone().wait_for(|listed| *listed).await;
    let api: Api<MeshInstall> = Api::all(ctx.shared.client.clone());
    if !mi.finalizers().iter().any(|f| f == FINALIZER) && mi.metadata.deletion_timestamp.is_none() {
        ctx.shared.metrics.write("MeshInstall", "finalizer");
    }
    finalizer(&api, FINALIZER, mi, |event| async {
        match event {
            finalizer::Event::Apply(mi) => converge(&ctx, &mi).await,
            finalizer::Event::Cleanup(mi) => apply::cleanup(&ctx, &mi).await.map(|()| Action::await_change()),
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// observe → decide → apply → write status → record the steps. An object the API server
/// refuses makes the spec Stalled (decided again with the refusal observed), not an error
/// retried in a loop: the same spec would be refused again.
async fn converge(ctx: &Context, mi: &MeshInstall) -> Result<Action, Error> {
    let mut observed = observe::observe(ctx, mi);
    observed.ca = Some(ca::read(ctx, mi, &observed).await?);
    let now = Timestamp::now();
    let mut decision = decide::decide(mi, &ctx.shared.versions, &observed, now);
    if let Err(e) = apply::apply(ctx, mi, &decision).await {
        observed.rejected = Some(e.rejection().ok_or(e)?);
        decision = decide::decide(mi, &ctx.shared.versions, &observed, now);
    }
    let written = match write_status(&ctx.shared, mi, &decision.status).await {
        // The CRD predates status.security (the operator was upgraded before its CRDs):
        // the rest of the status is still written, and the log says what to do.
        Err(e) if e.undeclared_field() && decision.status.security.is_some() => {
            warn!(
                "the MeshInstall CRD has no status.security: apply this operator's CRDs (crds/ or the chart's crds/) to see the mesh CA in status"
            );
            let mut older = decision.status.clone();
            older.security = None;
            write_status(&ctx.shared, mi, &older).await?
        }
        other => other?,
    };
    if written {
        record(ctx, mi, &decision.steps).await;
    }
    Ok(Action::requeue(decision.requeue))
}

/// Logs, counts and records each upgrade step as an Event.
async fn record(ctx: &Context, mi: &MeshInstall, steps: &[Transition]) {
    for t in steps {
        ctx.shared.metrics.revision_step(t.step.label());
        info!(step = t.step.label(), "{}", t.message);
        ctx.shared.publish(mi, &t.note()).await;
    }
}
