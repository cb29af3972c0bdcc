//! The mesh CA's two steps that talk to the API server: read its Secrets (and the plug-in
//! CA's) before deciding, and write the Secrets the decision changed. What they must hold
//! is decided by `identity::mesh_ca` (pure). Secret data is never logged.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::BTreeMap;
use std::time::SystemTime;
use tracing::info;

use super::Context;
use super::decide::{CaWrites, mesh_namespaces};
use super::names::Neighbours;
use super::observe::Observed;
use crate::api::common::StallReason;
use crate::api::labels;
use crate::api::mesh_install::MeshInstall;
use crate::identity::ca::ROOT_CERT;
use crate::identity::mesh_ca::{
    self, BUNDLE_CONFIG_MAP, CaProblem, ISSUER_SECRET, Plan, ROOT_SECRET, SecretData, Source,
};
use crate::identity::rotation::Rollout;
use crate::operator::apply::FIELD_MANAGER;
use crate::operator::conditions::Stall;
use crate::operator::controller::Ref;
use crate::operator::error::{Error, kube_err};
use crate::operator::events::Note;
use crate::operator::watch::Guarded;
use crate::render::OwnedKind;

/// The `weft.dev/component` of the CA Secrets.
pub const COMPONENT: &str = "ca";

/// Reads the CA Secrets of `mi` and plans them: what they must hold, or why the CA
/// cannot be used (a bad plug-in CA stalls the spec; nothing is written). A rotation's
/// gate is checked against `observed` (revisions ready) and the owned bundles.
pub async fn read(ctx: &Context, mi: &MeshInstall, observed: &Observed) -> Result<Result<Plan, Stall>, Error> {
    let ns = &mi.spec.namespace;
    let api: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), ns);
    let get = |name: String| {
        let api = api.clone();
        async move {
            api.get_opt(&name)
                .await
                .map(|s| s.map(|s| data(&s)))
                .map_err(kube_err(format!("read Secret {ns}/{name}")))
        }
    };
    let security = mi.spec.security.clone().unwrap_or_default();
    let issuer = get(ISSUER_SECRET.to_string()).await?;
    let plugin_name = security.plugin_secret().map(str::to_string);
    let stored = match &plugin_name {
        Some(name) => get(name.clone()).await?,
        None => get(ROOT_SECRET.to_string()).await?,
    };
    let source = match &plugin_name {
        Some(name) => Source::Plugin {
            name,
            data: stored.as_ref(),
        },
        None => Source::SelfSigned { root: stored.as_ref() },
    };
    let trusted = match trusted_roots(ctx, mi).await? {
        Ok(t) => t,
        Err(stall) => return Ok(Err(stall)),
    };
    let rollout = Rollout {
        bundles_current: bundles_current(ctx, mi, observed, issuer.as_ref(), &trusted),
        revisions_ready: !observed.revisions.is_empty() && observed.revisions.iter().all(|r| r.ready()),
        propagation: ctx.bundle_propagation,
        cert_ttl: security.workload_cert_ttl(),
    };
    let planned = mesh_ca::plan(
        ns,
        &mi.spec.trust_domain(),
        &source,
        issuer.as_ref(),
        security.root_rotation(),
        &rollout,
        SystemTime::now(),
    );
    Ok(planned
        .map(|plan| Plan {
            trusted_pem: trusted,
            ..plan
        })
        .map_err(|e| match e {
            CaProblem::Plugin { .. } => Stall {
                reason: StallReason::InvalidCa,
                message: format!("{e}; nothing was changed, the running mesh keeps its CA"),
            },
            CaProblem::Generate(_) => Stall {
                reason: StallReason::RenderFailed,
                message: e.to_string(),
            },
        }))
}

/// The roots of other meshes `spec.security.trustedRoots` names, checked; or why they
/// cannot be used (the spec stalls, and nothing is written).
async fn trusted_roots(ctx: &Context, mi: &MeshInstall) -> Result<Result<String, Stall>, Error> {
    let ns = &mi.spec.namespace;
    let api: Api<ConfigMap> = Api::namespaced(ctx.shared.client.clone(), ns);
    let refs = mi
        .spec
        .security
        .as_ref()
        .and_then(|s| s.trusted_roots.clone())
        .unwrap_or_default();
    let mut out = String::new();
    for (i, r) in refs.iter().enumerate() {
        let name = &r.config_map_ref.name;
        let key = r.config_map_ref.key.as_deref().unwrap_or(ROOT_CERT);
        let found = api
            .get_opt(name)
            .await
            .map_err(kube_err(format!("read ConfigMap {ns}/{name}")))?;
        let text = found.and_then(|c| c.data).and_then(|mut d| d.remove(key));
        let checked = match text {
            None => Err(format!("ConfigMap {ns}/{name} has no key {key}")),
            Some(t) => mesh_ca::trusted_roots(&t, SystemTime::now())
                .map_err(|e| format!("ConfigMap {ns}/{name} key {key} {e}")),
        };
        match checked {
            Ok(pem) => out.push_str(&pem),
            Err(problem) => {
                return Ok(Err(Stall {
                    reason: StallReason::InvalidCa,
                    message: format!(
                        "security.trustedRoots[{i}]: {problem}; nothing was changed, the running mesh keeps its bundles"
                    ),
                }));
            }
        }
    }
    Ok(Ok(out))
}

/// Whether every namespace of the mesh has a trust bundle holding the stored trust set
/// (the issuer Secret's `root-cert.pem`, with the other meshes' roots), as the owned-object
/// index sees them.
fn bundles_current(
    ctx: &Context,
    mi: &MeshInstall,
    observed: &Observed,
    issuer: Option<&SecretData>,
    trusted: &str,
) -> bool {
    let Some(trust) = issuer
        .and_then(|d| d.0.get(ROOT_CERT))
        .map(|t| mesh_ca::bundle(&String::from_utf8_lossy(t), trusted))
    else {
        return false;
    };
    if !observed.usage.synced {
        return false;
    }
    let owns_default = Neighbours::of(mi, &observed.others).owns_default;
    mesh_namespaces(mi, &observed.usage, owns_default).iter().all(|ns| {
        ctx.index
            .get(OwnedKind::ConfigMap, Some(ns), BUNDLE_CONFIG_MAP)
            .is_some_and(|cm| cm.data["data"][ROOT_CERT].as_str() == Some(trust.as_str()))
    })
}

fn data(s: &Secret) -> SecretData {
    SecretData(s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect())
}

/// Writes the CA Secrets the decision changed (server-side apply; each is owned by the
/// MeshInstall, so it goes with it).
pub async fn write(ctx: &Context, mi: &MeshInstall, writes: &CaWrites) -> Result<(), Error> {
    for (name, content) in [(ROOT_SECRET, &writes.root), (ISSUER_SECRET, &writes.issuer)] {
        let Some(content) = content else { continue };
        let secret = secret(mi, name, content);
        let api: Api<Secret> = Api::namespaced(ctx.shared.client.clone(), &mi.spec.namespace);
        api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret))
            .await
            .map_err(kube_err(format!("write Secret {}/{name}", mi.spec.namespace)))?;
        ctx.shared.metrics.write("Secret", "apply");
        let what = if name == ROOT_SECRET {
            "made the mesh root"
        } else {
            writes
                .note
                .as_deref()
                .unwrap_or("wrote the issuer control planes sign with")
        };
        info!(secret = name, "{what}");
        let message = format!("{what} (Secret {}/{name})", mi.spec.namespace);
        ctx.shared
            .publish(mi, &Note::normal("CAUpdated", "Identity", message))
            .await;
    }
    Ok(())
}

fn secret(mi: &MeshInstall, name: &str, content: &SecretData) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(mi.spec.namespace.clone()),
            labels: Some(BTreeMap::from([
                (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
                (labels::MESH.to_string(), mi.name_any()),
                (labels::COMPONENT.to_string(), COMPONENT.to_string()),
            ])),
            owner_references: Some(vec![crate::render::mesh_owner(mi)]),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(
            content
                .0
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The meshes whose `trustedRoots` name ConfigMap `c` (in their mesh namespace).
pub fn trusting(meshes: &Store<Guarded<MeshInstall>>, c: &PartialObjectMeta<ConfigMap>) -> Vec<Ref<MeshInstall>> {
    let name = c.name_any();
    in_mesh_namespace(meshes, &c.namespace().unwrap_or_default(), |m| {
        m.spec
            .security
            .as_ref()
            .and_then(|s| s.trusted_roots.as_ref())
            .is_some_and(|t| t.iter().any(|r| r.config_map_ref.name == name))
    })
}

/// The meshes whose CA Secret `s` is: ours by name, or the plug-in CA a spec names, in the
/// mesh namespace.
pub fn concerned(meshes: &Store<Guarded<MeshInstall>>, s: &PartialObjectMeta<Secret>) -> Vec<Ref<MeshInstall>> {
    let name = s.name_any();
    in_mesh_namespace(meshes, &s.namespace().unwrap_or_default(), |m| {
        name == ROOT_SECRET
            || name == ISSUER_SECRET
            || m.spec.security.as_ref().and_then(|s| s.plugin_secret()) == Some(name.as_str())
    })
}

/// The meshes whose mesh namespace is `ns` and for which `wants` holds.
fn in_mesh_namespace(
    meshes: &Store<Guarded<MeshInstall>>,
    ns: &str,
    wants: impl Fn(&MeshInstall) -> bool,
) -> Vec<Ref<MeshInstall>> {
    meshes
        .state()
        .iter()
        .filter(|g| g.0.as_ref().is_ok_and(|m| m.spec.namespace == ns && wants(m)))
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}
