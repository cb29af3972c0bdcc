//! Apply (the write step): carry out a decision — the control plane's namespace, the
//! mesh CA's Secrets and trust bundles, the target revision's objects, the deletion of
//! revisions past their grace period — and, on
//! deletion of the MeshInstall, the removal of what it owns.

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::info;

use super::decide::Decision;
use super::{Context, ca};
use crate::api::mesh_install::MeshInstall;
use crate::operator::apply::{self, FIELD_MANAGER, Scope};
use crate::operator::error::{Error, kube_err};
use crate::operator::events::{Note, summarise};
use crate::render::trust_bundle;

/// Applies the target revision (when the spec allows) and deletes the revisions due.
pub async fn apply(ctx: &Context, mi: &MeshInstall, d: &Decision) -> Result<(), Error> {
    // Only the target revision is applied: other revisions keep what they were installed
    // with (a bad new spec must not reach the revision that is serving).
    if let Some(manifests) = &d.install {
        ensure_namespace(ctx, &mi.spec.namespace).await?;
        // The CA first: a new revision's control plane starts by reading its issuer.
        if let Some(writes) = &d.ca {
            ca::write(ctx, mi, writes).await?;
        }
        apply::converge(&ctx.shared, &ctx.index, mi, Scope::Revision(&d.target), manifests).await?;
        if let Some(bundles) = d.ca.as_ref().and_then(|w| w.bundles.as_deref()) {
            apply::converge(
                &ctx.shared,
                &ctx.index,
                mi,
                Scope::Component(trust_bundle::COMPONENT),
                bundles,
            )
            .await?;
        }
    }
    let uid = mi.uid().unwrap_or_default();
    for r in &d.prune {
        let removed = apply::prune(
            &ctx.shared.client,
            &ctx.index,
            &ctx.shared.metrics,
            &uid,
            Scope::Revision(r),
            &[],
        )
        .await?;
        info!(revision = %r, removed = ?removed, "pruned an unused revision");
    }
    Ok(())
}

/// Cleanup on deletion: cluster-scoped objects first (namespaced ones go with the owner
/// references when the MeshInstall is gone).
pub async fn cleanup(ctx: &Context, mi: &MeshInstall) -> Result<(), Error> {
    let uid = mi.uid().unwrap_or_default();
    // Pruning against an empty wanted set removes every owned object, cluster-scoped included.
    let removed = apply::prune(
        &ctx.shared.client,
        &ctx.index,
        &ctx.shared.metrics,
        &uid,
        Scope::All,
        &[],
    )
    .await?;
    if !removed.is_empty() {
        info!(removed = ?removed, "cleaned up");
        ctx.shared
            .publish(mi, &Note::normal("Deleted", "Cleanup", summarise(&removed)))
            .await;
    }
    Ok(())
}

/// Creates the control plane's namespace if it is absent. It is never owned or deleted: it
/// may hold things that are not ours.
async fn ensure_namespace(ctx: &Context, ns: &str) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(ctx.shared.client.clone());
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
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    match api.create(&params, &obj).await {
        Ok(_) => {
            ctx.shared.metrics.write("Namespace", "create");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(source) => Err(kube_err(format!("create namespace {ns}"))(source)),
    }
}
