//! The RemoteCluster controller. Each reconcile is a pipeline: observe (its MeshInstall and
//! the other RemoteClusters, from stores; then, unless the spec is stalled, its Secret and
//! what the remote API server answers) → decide (pure, [`decide`]) → write status (Events on
//! becoming Stalled or Ready). It owns no objects.
//!
//! Re-checked when the RemoteCluster, its Secret, its MeshInstall or another RemoteCluster of
//! the mesh changes, and every `recheck` period (so fixing RBAC in the remote cluster needs no
//! edit here); an unreachable API server is retried with back-off from 5 s up to that period.
//! The remote's answer is remembered until the next check is due, so the triggers in
//! between (a control plane writing its `controlPlanes` entry, our own status write) cost
//! no connection.

pub mod decide;
pub mod probe;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::controller::{Ref, Shutdown, Triggers};
use super::error::{Error, kube_err};
use super::shared::Shared;
use super::status::write as write_status;
use super::watch::{self, Guarded, SharedWatch};
use crate::api::mesh_install::MeshInstall;
use crate::api::remote_cluster::RemoteCluster;
use decide::{Credential, Probe};

/// The controller's name in metrics and logs.
pub const CONTROLLER: &str = "remotecluster";
/// The default re-check period.
pub const RECHECK: Duration = Duration::from_secs(60);
/// The first retry after the API server could not be reached (doubling up to the period).
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often each remote API server is asked again.
    pub recheck: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { recheck: RECHECK }
    }
}

/// What every reconcile reads.
pub struct Context {
    /// What every controller shares.
    pub shared: Shared,
    /// Every RemoteCluster (for name conflicts).
    pub remotes: Store<Guarded<RemoteCluster>>,
    /// Every MeshInstall.
    pub meshes: Store<Guarded<MeshInstall>>,
    /// Periods.
    pub settings: Settings,
    /// True once the MeshInstalls are listed: before, every mesh would seem missing.
    meshes_listed: tokio::sync::watch::Receiver<bool>,
    /// The last answer of each remote, by RemoteCluster uid.
    answers: Mutex<HashMap<String, Answer>>,
}

/// A remote's answer, valid for the Secret version it was got with until the next check.
#[derive(Clone, Debug)]
struct Answer {
    secret: (String, String, String),
    credential: Credential,
    until: Instant,
    unreachable_in_a_row: u32,
}

/// What the driver of the shared watches tells this controller that their subscriptions
/// do not: which RemoteClusters were deleted (the others of the mesh look again, as a name
/// conflict may be gone), and when the MeshInstalls are listed (before, every mesh would
/// seem missing; a store's own `wait_until_ready` wakes only one of several waiters, and
/// the MeshInstall controller waits on that store).
#[derive(Clone)]
pub struct Feed {
    deleted: mpsc::UnboundedSender<(String, String)>,
    meshes_listed: Arc<tokio::sync::watch::Sender<bool>>,
}

/// The receiving end of a [`Feed`], for the controller.
pub struct Fed {
    deleted: mpsc::UnboundedReceiver<(String, String)>,
    meshes_listed: tokio::sync::watch::Receiver<bool>,
}

/// A feed and its receiving end.
pub fn feed() -> (Feed, Fed) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (listed_tx, listed_rx) = tokio::sync::watch::channel(false);
    let feed = Feed {
        deleted: tx,
        meshes_listed: Arc::new(listed_tx),
    };
    let fed = Fed {
        deleted: rx,
        meshes_listed: listed_rx,
    };
    (feed, fed)
}

impl Feed {
    /// Notes a deleted RemoteCluster.
    pub fn remote_event(&self, event: &watcher::Event<Guarded<RemoteCluster>>) {
        if let watcher::Event::Delete(g) = event
            && let Ok(rc) = &g.0
        {
            // The receiver lives as long as the controller; after it, nobody needs this.
            let _ = self
                .deleted
                .send((rc.namespace().unwrap_or_default(), rc.spec.mesh.clone()));
        }
    }

    /// Notes that the MeshInstalls are listed (the store holds the list when its driver
    /// sees the end of it).
    pub fn mesh_event(&self, event: &watcher::Event<Guarded<MeshInstall>>) {
        if matches!(event, watcher::Event::InitDone) {
            self.meshes_listed.send_replace(true);
        }
    }
}

/// Builds the controller over the shared RemoteCluster watch; it runs until `shutdown`.
pub fn controller(
    shared: &Shared,
    remotes: &SharedWatch<RemoteCluster>,
    meshes: &SharedWatch<MeshInstall>,
    fed: Fed,
    settings: Settings,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + use<> {
    let ctx = Arc::new(Context {
        shared: shared.clone(),
        remotes: remotes.store(),
        meshes: meshes.store(),
        settings,
        meshes_listed: fed.meshes_listed,
        answers: Mutex::default(),
    });
    let (by_mesh, by_sibling, by_secret, by_deletion) =
        (remotes.store(), remotes.store(), remotes.store(), remotes.store());
    let deletions = stream::unfold(fed.deleted, |mut rx| async move { rx.recv().await.map(|d| (d, rx)) })
        .flat_map(move |(ns, mesh)| stream::iter(of_mesh(&by_deletion, Some(&ns), &mesh)));
    let seen = MeshesSeen::default();
    Triggers::new(CONTROLLER, shared, remotes.store(), remotes.subscribe())
        // The mesh appeared, was replaced, changed its spec (its cluster's name) or is being
        // deleted; not every status change of a rollout.
        .watches(meshes.subscribe(), move |g| match seen.changed(g) {
            true => of_mesh(&by_mesh, None, &g.name_any()),
            false => Vec::new(),
        })
        // Another RemoteCluster of the mesh took or released a clusterName.
        .watches(remotes.subscribe(), move |g| match &g.0 {
            Ok(rc) => of_mesh(&by_sibling, rc.namespace().as_deref(), &rc.spec.mesh),
            Err(_) => Vec::new(),
        })
        .watches(
            watch::secret_changes(shared, "Secret (RemoteCluster credentials)"),
            move |s| using_secret(&by_secret, s),
        )
        .on(deletions)
        .run(ctx, reconcile, shutdown)
}

/// What a RemoteCluster depends on of each MeshInstall last seen: uid, generation and
/// whether it is being deleted.
#[derive(Default)]
struct MeshesSeen(Mutex<HashMap<String, MeshVersion>>);

/// A MeshInstall's uid, generation and whether it is being deleted.
type MeshVersion = (Option<String>, Option<i64>, bool);

impl MeshesSeen {
    /// Whether `mesh` differs, in what matters here, from when it was last seen.
    fn changed(&self, mesh: &Guarded<MeshInstall>) -> bool {
        let meta = mesh.meta();
        let now = (meta.uid.clone(), meta.generation, meta.deletion_timestamp.is_some());
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(mesh.name_any(), now.clone()) != Some(now)
    }
}

/// The RemoteClusters of mesh `mesh` (in namespace `ns`, when given).
fn of_mesh(store: &Store<Guarded<RemoteCluster>>, ns: Option<&str>, mesh: &str) -> Vec<Ref<RemoteCluster>> {
    store
        .state()
        .iter()
        .filter(|g| {
            g.0.as_ref()
                .is_ok_and(|rc| rc.spec.mesh == mesh && ns.is_none_or(|ns| rc.namespace().as_deref() == Some(ns)))
        })
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// The RemoteClusters whose credential is Secret `s`.
fn using_secret(store: &Store<Guarded<RemoteCluster>>, s: &PartialObjectMeta<Secret>) -> Vec<Ref<RemoteCluster>> {
    let (ns, name) = (s.namespace(), s.name_any());
    store
        .state()
        .iter()
        .filter(|g| {
            g.0.as_ref()
                .is_ok_and(|rc| rc.namespace() == ns && rc.spec.kubeconfig_secret_ref.name == name)
        })
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// Reconciles one RemoteCluster: observe → decide → write status (→ Events).
async fn reconcile(rc: Arc<RemoteCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut listed = ctx.meshes_listed.clone();
    if rc.metadata.deletion_timestamp.is_some() || listed.wait_for(|l| *l).await.is_err() {
        return Ok(Action::await_change());
    }
    let mesh = watch::get(&ctx.meshes, &rc.spec.mesh, None);
    let stall = decide::spec_stall(&rc, mesh.as_ref(), &watch::valid(&ctx.remotes));
    let (credential, wait) = match &stall {
        Some(_) => (None, ctx.settings.recheck),
        None => {
            let (c, wait) = ctx.credential(&rc).await?;
            (Some(c), wait)
        }
    };
    debug!(outcome = outcome(stall.is_some(), credential.as_ref()), next_check = ?wait, "checked");
    let status = decide::status(&rc, stall.as_ref(), credential.as_ref(), &Time(Timestamp::now()));
    write_status(&ctx.shared, rc.as_ref(), &status).await?;
    Ok(Action::requeue(wait))
}

/// A word for the log.
fn outcome(stalled: bool, c: Option<&Credential>) -> &'static str {
    match (stalled, c) {
        (true, _) | (false, None) => "spec",
        (false, Some(Credential::NoSecret | Credential::NoKey(_) | Credential::Refused { .. })) => {
            "invalid-credentials"
        }
        (false, Some(Credential::Checked { probe, .. })) => match probe {
            Probe::Answered { missing, .. } if missing.is_empty() => "ready",
            Probe::Answered { .. } | Probe::CannotReview(_) => "forbidden",
            Probe::Refused(_) => "refused",
            Probe::Unreachable(_) => "unreachable",
        },
    }
}

impl Context {
    /// The credential as far as it gets, and when to check again. The remote is asked only
    /// when its last answer is due again or the Secret changed.
    async fn credential(&self, rc: &RemoteCluster) -> Result<(Credential, Duration), Error> {
        let (ns, r) = (rc.namespace().unwrap_or_default(), &rc.spec.kubeconfig_secret_ref);
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), &ns);
        let secret = api
            .get_opt(&r.name)
            .await
            .map_err(kube_err(format!("read Secret {ns}/{}", r.name)))?;
        let period = self.settings.recheck;
        let checked = match probe::kubeconfig_text(secret.as_ref(), &r.key).and_then(|t| probe::check(&t)) {
            Ok(checked) => checked,
            Err(refused) => return Ok((refused, period)),
        };
        let meta = secret.map(|s| s.metadata).unwrap_or_default();
        let version = (
            meta.uid.unwrap_or_default(),
            meta.resource_version.unwrap_or_default(),
            r.key.clone(),
        );
        let uid = rc.uid().unwrap_or_default();
        if let Some(hit) = self.recall(&uid, &version) {
            return Ok(hit);
        }
        let credential = probe::connect(checked).await;
        Ok(self.remember(uid, version, credential))
    }

    /// The last answer, while it is valid: the same Secret, and its next check not yet due.
    fn recall(&self, uid: &str, secret: &(String, String, String)) -> Option<(Credential, Duration)> {
        let answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let a = answers.get(uid).filter(|a| &a.secret == secret)?;
        let left = a.until.checked_duration_since(Instant::now())?;
        Some((a.credential.clone(), left.max(Duration::from_secs(1))))
    }

    /// Keeps an answer until its next check, and returns when that is.
    fn remember(
        &self,
        uid: String,
        secret: (String, String, String),
        credential: Credential,
    ) -> (Credential, Duration) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        // Forget RemoteClusters that are gone.
        let live: Vec<String> = watch::valid(&self.remotes).iter().filter_map(|r| r.uid()).collect();
        answers.retain(|k, _| live.contains(k));
        let before = answers.get(&uid).map_or(0, |a| a.unreachable_in_a_row);
        let unreachable = matches!(
            credential,
            Credential::Checked {
                probe: Probe::Unreachable(_),
                ..
            }
        );
        let in_a_row = if unreachable { before + 1 } else { 0 };
        let wait = next_check(in_a_row, self.settings.recheck);
        let answer = Answer {
            secret,
            credential: credential.clone(),
            until: Instant::now() + wait,
            unreachable_in_a_row: in_a_row,
        };
        answers.insert(uid, answer);
        (credential, wait)
    }
}

/// When to ask again: after `period`; after the `n`th unreachable answer in a row, 5 s
/// doubling up to `period`.
pub fn next_check(unreachable_in_a_row: u32, period: Duration) -> Duration {
    if unreachable_in_a_row == 0 {
        return period;
    }
    let doublings = (unreachable_in_a_row - 1).min(16);
    (FIRST_RETRY.min(period) * 2u32.pow(doublings)).min(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_triggers_its_remote_clusters_only_when_what_they_read_changes() {
        let mesh = |uid: &str, generation: i64, status: &str| -> Guarded<MeshInstall> {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "weft.dev/v1alpha1", "kind": "MeshInstall",
                "metadata": {"name": "m", "uid": uid, "generation": generation},
                "spec": {"version": "1.0.0"}, "status": {"observedGeneration": status.len()}
            }))
            .unwrap()
        };
        let seen = MeshesSeen::default();
        assert!(seen.changed(&mesh("u1", 1, "")), "first seen");
        assert!(!seen.changed(&mesh("u1", 1, "rolling")), "a status change");
        assert!(seen.changed(&mesh("u1", 2, "rolling")), "a spec change");
        assert!(seen.changed(&mesh("u2", 2, "rolling")), "replaced");
        let mut deleting = mesh("u2", 2, "rolling");
        deleting.meta_mut().deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
        ));
        assert!(seen.changed(&deleting), "being deleted");
    }

    #[test]
    fn unreachable_is_retried_with_back_off_up_to_the_period() {
        let minute = Duration::from_secs(60);
        let waits: Vec<u64> = (0..7).map(|n| next_check(n, minute).as_secs()).collect();
        assert_eq!(waits, [60, 5, 10, 20, 40, 60, 60]);
        assert_eq!(next_check(40, minute), minute, "no overflow");
        let short = Duration::from_secs(2);
        assert_eq!(next_check(1, short), short, "never beyond a short period");
        assert_eq!(next_check(0, short), short);
    }
}
