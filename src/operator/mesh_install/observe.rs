//! Observe (the read step): what is installed, who uses it and what the other MeshInstalls
//! claim, all from the indexes (no API calls). The decide step gets this and nothing else.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::ResourceExt;

use super::Context;
use super::names::Neighbour;
use crate::api::labels;
use crate::api::mesh_install::MeshInstall;
use crate::identity::mesh_ca;
use crate::operator::conditions::Stall;
use crate::operator::health::{Health, daemon_set_health, deployment_health};
use crate::operator::watch;
use crate::render::OwnedKind;
use crate::render::revision::{control_plane_name, proxy_name};

/// Everything a MeshInstall's decision is made from, besides its own spec and status.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Installed revisions, by name.
    pub revisions: Vec<RevisionObservation>,
    /// Who uses them.
    pub usage: Usage,
    /// The other MeshInstalls (tag and revision names are cluster-wide), oldest first.
    pub others: Vec<Neighbour>,
    /// Set when the API server refused an object of the target revision just now.
    pub rejected: Option<Stall>,
    /// The Secrets this mesh's RemoteClusters name, sorted: its control plane may read
    /// those and no other.
    pub remote_secrets: Vec<String>,
    /// The mesh CA as planned from its Secrets (read by the reconcile before deciding,
    /// since a new root is made only once), or why it cannot be used. `None`: not read.
    pub ca: Option<Result<mesh_ca::Plan, Stall>>,
}

/// Who uses the revisions, looked up in the usage index for just the label values that
/// matter (this mesh's tags and revision names).
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Whether the index has listed everything once. Until then usage is unknown, and an
    /// unknown usage never deletes anything.
    pub synced: bool,
    /// Namespaces by their `weft.dev/rev` value.
    pub namespaces: BTreeMap<String, BTreeSet<String>>,
    /// Gateways (`namespace/name`) of this mesh by the tag or revision they follow.
    pub gateways: BTreeMap<String, BTreeSet<String>>,
}

/// What was observed of one installed revision.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionObservation {
    /// The revision's name.
    pub name: String,
    /// The version its objects are labelled with.
    pub version: String,
    /// The control-plane Deployment, if it exists.
    pub control_plane: Option<Health>,
    /// The node-proxy DaemonSet, if it exists.
    pub proxy: Option<Health>,
    /// Whether node proxies are wanted (so a missing DaemonSet means not ready).
    pub proxy_wanted: bool,
    /// The address of the control plane it uses when that runs in another cluster
    /// (primary-remote): then no control plane is installed here.
    pub external: Option<String>,
}

impl RevisionObservation {
    /// Control plane rolled out (or external), and node proxies too when wanted.
    pub fn ready(&self) -> bool {
        (self.external.is_some() || self.control_plane.as_ref().is_some_and(|h| h.ready))
            && (!self.proxy_wanted || self.proxy.as_ref().is_some_and(|h| h.ready))
    }

    /// Replica progress, for condition messages.
    pub fn progress(&self) -> String {
        let part = |what: &str, h: &Option<Health>| match h {
            Some(h) => format!("{what} {}/{} ready", h.counts.ready, h.counts.desired),
            None => format!("{what} not created yet"),
        };
        let mut s = match &self.external {
            Some(address) => format!("control plane external at {address}"),
            None => part("control plane", &self.control_plane),
        };
        if self.proxy_wanted {
            s.push_str("; ");
            s.push_str(&part("node proxies", &self.proxy));
        }
        s
    }
}

/// Reads the world of `mi` from the indexes.
pub fn observe(ctx: &Context, mi: &MeshInstall) -> Observed {
    let revisions = installed(ctx, &mi.uid().unwrap_or_default());
    let usage = usage(ctx, mi, &revisions);
    Observed {
        others: others(ctx, mi),
        revisions,
        usage,
        rejected: None,
        remote_secrets: remote_secrets(ctx, mi),
        ca: None,
    }
}

/// The Secrets named by the RemoteClusters of `mi` (in its namespace), sorted and distinct.
fn remote_secrets(ctx: &Context, mi: &MeshInstall) -> Vec<String> {
    let mut names: Vec<String> = watch::valid(&ctx.remotes)
        .into_iter()
        .filter(|rc| rc.spec.mesh == mi.name_any() && rc.namespace().as_deref() == Some(mi.spec.namespace.as_str()))
        .map(|rc| rc.spec.kubeconfig_secret_ref.name)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The revisions the owner with `uid` has installed: one per control-plane Deployment, or,
/// with an external control plane, per node-proxy bootstrap ConfigMap that names it.
/// Node proxies count as wanted where a DaemonSet exists (decide knows better for the target).
fn installed(ctx: &Context, uid: &str) -> Vec<RevisionObservation> {
    let mut revisions: BTreeMap<String, RevisionObservation> = BTreeMap::new();
    for d in ctx.index.owned_by(OwnedKind::Deployment, uid) {
        let Some(rev) = d.labels().get(labels::REVISION).cloned() else {
            continue;
        };
        if d.name_any() != control_plane_name(&rev) {
            continue;
        }
        let ns = d.namespace();
        let observation = RevisionObservation {
            name: rev.clone(),
            version: d.labels().get(labels::VERSION).cloned().unwrap_or_default(),
            control_plane: d
                .as_ref()
                .clone()
                .try_parse::<Deployment>()
                .ok()
                .map(|d| deployment_health(&d, floor(ctx, ns.as_deref(), &rev))),
            ..proxies(ctx, ns.as_deref(), &rev)
        };
        revisions.insert(rev, observation);
    }
    for c in ctx.index.owned_by(OwnedKind::ConfigMap, uid) {
        let (Some(rev), Some(address)) = (
            c.labels().get(labels::REVISION).cloned(),
            c.annotations().get(labels::EXTERNAL_CONTROL_PLANE).cloned(),
        ) else {
            continue;
        };
        if c.name_any() != proxy_name(&rev) || revisions.contains_key(&rev) {
            continue;
        }
        let observation = RevisionObservation {
            version: c.labels().get(labels::VERSION).cloned().unwrap_or_default(),
            external: Some(address),
            ..proxies(ctx, c.namespace().as_deref(), &rev)
        };
        revisions.insert(rev, observation);
    }
    revisions.into_values().collect()
}

/// A revision's node proxies as observed (the rest of the observation left empty).
fn proxies(ctx: &Context, ns: Option<&str>, rev: &str) -> RevisionObservation {
    let proxy = ctx
        .index
        .get_typed::<DaemonSet>(OwnedKind::DaemonSet, ns, &proxy_name(rev))
        .map(|ds| daemon_set_health(&ds));
    RevisionObservation {
        name: rev.to_string(),
        version: String::new(),
        control_plane: None,
        proxy_wanted: proxy.is_some(),
        proxy,
        external: None,
    }
}

/// The fewest control-plane pods a revision must have to be Ready: its autoscaler's
/// `minReplicas` (each revision keeps the spec it was installed with), else 0.
fn floor(ctx: &Context, ns: Option<&str>, revision: &str) -> i32 {
    ctx.index
        .get_typed::<HorizontalPodAutoscaler>(OwnedKind::HorizontalPodAutoscaler, ns, &control_plane_name(revision))
        .and_then(|h| h.spec)
        .map_or(0, |s| s.min_replicas.unwrap_or(1))
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

/// The other MeshInstalls, oldest first (the first older one owns the `default` tag), each
/// marked older (it wins a name) or not.
fn others(ctx: &Context, mi: &MeshInstall) -> Vec<Neighbour> {
    let age = |m: &MeshInstall| (m.creation_timestamp().map(|t| t.0), m.name_any());
    let mine = age(mi);
    let mut others: Vec<_> = watch::valid(&ctx.meshes)
        .iter()
        .filter(|m| m.name_any() != mi.name_any())
        .map(|m| (age(m), m.clone()))
        .collect();
    others.sort_by(|a, b| a.0.cmp(&b.0));
    others.into_iter().map(|(a, m)| Neighbour::of(&m, a < mine)).collect()
}
