//! The operator: leader election, the MeshInstall and MeshGateway controllers and their
//! owned-object indexes, health and metrics endpoints, and graceful shutdown.

pub mod apply;
pub mod gateway;
pub mod gateway_status;
pub mod index;
pub mod metrics;
pub mod queue;
pub mod reconcile;
pub mod revisions;
pub mod status;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, future};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::{MeshGateway, MeshInstall, labels};
use crate::http::{Health, HttpState};
use crate::versions::VersionTable;
use gateway::GatewayContext;
use index::OwnedIndex;
use metrics::{Metrics, NameLabels};
use queue::Queue;
use reconcile::{CONTROLLER, Context};
use usage::UsageIndex;

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the Lease lives.
    pub lease_namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// This process's identity in the Lease.
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub lease_duration: u64,
    /// Seconds before expiry that the holder renews.
    pub lease_grace: u64,
    /// Address of `/metrics`.
    pub metrics_address: SocketAddr,
    /// Address of `/healthz` and `/readyz`.
    pub health_address: SocketAddr,
    /// Supported versions.
    pub versions: VersionTable,
    /// Reconciles that may run at once.
    pub concurrency: u16,
}

/// Errors that stop the operator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An endpoint could not listen.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Leader election could not start or failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs until SIGTERM: reconciles only while this process holds the Lease.
pub async fn run(client: Client, opts: Options) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        info!("termination signal received; shutting down");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let m = metrics.clone();
    let state = HttpState {
        health: health.clone(),
        metrics: Arc::new(move || m.encode()),
    };
    let (maddr, metrics_task) = crate::http::serve(opts.metrics_address, state.clone(), stopped(stop_rx.clone()))
        .await
        .map_err(|source| RunError::Listen {
            address: opts.metrics_address,
            source,
        })?;
    let (haddr, health_task) = crate::http::serve(opts.health_address, state, stopped(stop_rx.clone()))
        .await
        .map_err(|source| RunError::Listen {
            address: opts.health_address,
            source,
        })?;
    info!(metrics = %maddr, health = %haddr, identity = %opts.identity, "operator starting");

    let lease = LeaseManagerBuilder::new(client.clone(), &opts.lease_name)
        .with_namespace(&opts.lease_namespace)
        .with_identity(&opts.identity)
        .with_duration(opts.lease_duration)
        .with_grace(opts.lease_grace)
        .with_field_manager(format!("weft-operator-lease-{}", opts.identity))
        .build()
        .await?;
    let (mut leading, lease_task) = lease.watch().await;
    // The API server answered: the process is healthy whether it leads or stands by.
    health.set_ready(true);
    let lease_labels = NameLabels {
        name: opts.lease_name.clone(),
    };
    metrics.leader.get_or_create(&lease_labels).set(0);

    let mut stop = stop_rx.clone();
    loop {
        if *stop.borrow() {
            break;
        }
        if *leading.borrow_and_update() {
            info!("acquired the lease; reconciling");
            metrics.leader.get_or_create(&lease_labels).set(1);
            let mut lost = leading.clone();
            let mut stop_c = stop_rx.clone();
            let shutdown = async move {
                tokio::select! {
                    _ = lost.wait_for(|l| !*l) => warn!("lost the lease; stopping the controller"),
                    _ = stop_c.wait_for(|s| *s) => {}
                }
            };
            run_controller(client.clone(), &opts, metrics.clone(), shutdown).await;
            metrics.leader.get_or_create(&lease_labels).set(0);
            continue;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() { error!("leader election stopped"); break; },
            _ = stop.wait_for(|s| *s) => break,
        }
    }

    info!("controller stopped; releasing the lease");
    // Give the lease up at once so a standby takes over without waiting for it to expire.
    drop(leading);
    match lease_task.await {
        Ok(Ok(manager)) => {
            if let Err(e) = manager.release().await {
                warn!(error = %e, "could not release the lease");
            }
        }
        Ok(Err(e)) => warn!(error = %e, "leader election ended with an error"),
        Err(e) => warn!(error = %e, "leader election task failed"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), future::join(metrics_task, health_task)).await;
    info!("stopped");
    Ok(())
}

/// The MeshInstall and MeshGateway controllers, until `shutdown` resolves (finishing
/// in-flight reconciles).
async fn run_controller(
    client: Client,
    opts: &Options,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // Two disjoint label-filtered indexes: what MeshInstalls own, and what gateways own.
    let managed = format!("{}={}", labels::MANAGED_BY, labels::MANAGER);
    let (index, owned) = OwnedIndex::start(
        &client,
        &format!("{managed},{}!={}", labels::COMPONENT, labels::GATEWAY_COMPONENT),
        &crate::render::OwnedKind::ALL,
    );
    let (gw_index, gw_owned) = OwnedIndex::start(
        &client,
        &format!("{managed},{}={}", labels::COMPONENT, labels::GATEWAY_COMPONENT),
        &gateway::OWNED_KINDS,
    );
    let (usage, usage_changes) = UsageIndex::start(&client);
    let queue = Queue::new(CONTROLLER, metrics.clone());
    let gw_queue = Queue::new(gateway::CONTROLLER, metrics.clone());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "weft-operator".into(),
            instance: Some(opts.identity.clone()),
        },
    );
    let (reader, writer) = reflector::store();
    let (gw_reader, gw_writer) = reflector::store::<MeshGateway>();
    let ctx = Arc::new(Context {
        client: client.clone(),
        index,
        versions: opts.versions.clone(),
        metrics: metrics.clone(),
        recorder: recorder.clone(),
        queue: queue.clone(),
        meshes: reader.clone(),
        usage,
    });
    let gw_ctx = Arc::new(GatewayContext {
        client: client.clone(),
        index: gw_index,
        versions: opts.versions.clone(),
        metrics: metrics.clone(),
        recorder,
        queue: gw_queue.clone(),
        meshes: reader.clone(),
    });

    // A MeshInstall changed (a tag moved, a revision appeared or became ready): its
    // gateways look again.
    let (mesh_tx, mesh_rx) = futures::channel::mpsc::unbounded::<String>();
    // Watched untyped and decoded one by one, so one malformed object cannot block the list.
    let ar = ApiResource::erase::<MeshInstall>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let q = queue.clone();
    let main = watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(|e| future::ready(e.map(decode::<MeshInstall>).transpose()))
        .reflect(writer)
        .applied_objects()
        .inspect(move |r| match r {
            Ok(mi) => {
                q.added(&mi.name_any());
                let _ = mesh_tx.unbounded_send(mi.name_any());
            }
            Err(e) => warn!(error = %e, "MeshInstall watch error"),
        });
    let mut controller =
        Controller::for_stream(main, reader).with_config(ControllerConfig::default().concurrency(opts.concurrency));
    // Owned objects map to their MeshInstall through the controller owner reference. (The
    // built-in `owns` mapping assumes owner and child share a namespace; a MeshInstall is
    // cluster-scoped, so it is done here.)
    for (kind, stream) in owned {
        let q = queue.clone();
        let owner = move |o: DynamicObject| {
            controller_owner(&o, "MeshInstall").map(|name| {
                q.added(&name);
                ObjectRef::<MeshInstall>::new(&name)
            })
        };
        controller = controller.watches_stream_with(stream, owner, kind.api_resource());
    }
    // A namespace label or gateway changed: usage may have moved between revisions. There
    // are few MeshInstalls, so each looks again (a reconcile that changes nothing writes
    // nothing).
    controller = controller.reconcile_all_on(usage_changes);

    let gw_ar = ApiResource::erase::<MeshGateway>(&());
    let gw_api: Api<DynamicObject> = Api::all_with(client.clone(), &gw_ar);
    let q = gw_queue.clone();
    let gateways = watcher(gw_api, watcher::Config::default())
        .default_backoff()
        .filter_map(|e| future::ready(e.map(decode::<MeshGateway>).transpose()))
        .reflect(gw_writer)
        .applied_objects()
        .inspect(move |r| match r {
            Ok(gw) => q.added(&gateway::key(gw)),
            Err(e) => warn!(error = %e, "MeshGateway watch error"),
        });
    let mut gw_controller = Controller::for_stream(gateways, gw_reader.clone())
        .with_config(ControllerConfig::default().concurrency(opts.concurrency));
    for (kind, stream) in gw_owned {
        let q = gw_queue.clone();
        let owner = move |o: DynamicObject| {
            let ns = o.namespace()?;
            controller_owner(&o, "MeshGateway").map(|name| {
                q.added(&format!("{ns}/{name}"));
                ObjectRef::<MeshGateway>::new(&name).within(&ns)
            })
        };
        gw_controller = gw_controller.watches_stream_with(stream, owner, kind.api_resource());
    }
    let q = gw_queue.clone();
    let by_mesh = mesh_rx.flat_map(move |mesh| {
        let refs: Vec<ObjectRef<MeshGateway>> = gw_reader
            .state()
            .iter()
            .filter(|g| g.spec.mesh == mesh)
            .map(|g| {
                q.added(&gateway::key(g));
                ObjectRef::from_obj(g.as_ref())
            })
            .collect();
        futures::stream::iter(refs)
    });
    gw_controller = gw_controller.reconcile_on(by_mesh);

    // The controllers never end by themselves while requeues are scheduled, so once
    // shutdown is asked for, wait only for the reconciles in flight (at most ten seconds),
    // then stop.
    let shutdown = shutdown.shared();
    let run = controller
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(log_result);
    let run_gateways = gw_controller
        .graceful_shutdown_on(shutdown.clone())
        .run(gateway::reconcile, gateway::error_policy, gw_ctx)
        .for_each(log_result);
    let drained = async {
        shutdown.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (metrics.active_reconciles(CONTROLLER) > 0 || metrics.active_reconciles(gateway::CONTROLLER) > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = future::join(run, run_gateways) => {}
        _ = drained => {}
    }
}

/// Logs what a controller reports, except objects deleted before their reconcile ran.
fn log_result<T, E1, E2>(result: Result<T, kube::runtime::controller::Error<E1, E2>>) -> future::Ready<()>
where
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    match result {
        Ok(_) | Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
        Err(other) => warn!(error = %other, "controller"),
    }
    future::ready(())
}

/// The name of an object's controller owner of `kind` (group `weft.dev`), if any.
fn controller_owner(o: &DynamicObject, kind: &str) -> Option<String> {
    o.owner_references()
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == kind && r.api_version.starts_with("weft.dev/"))
        .map(|r| r.name.clone())
}

/// Decodes a watched object as `K`; a malformed one is logged and skipped (the rest of the
/// list is unaffected), never a crash.
fn decode<K>(event: watcher::Event<DynamicObject>) -> Option<watcher::Event<K>>
where
    K: kube::Resource + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let convert = |o: DynamicObject| {
        let name = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
        match o.try_parse::<K>() {
            Ok(obj) => Some(obj),
            Err(error) => {
                warn!(kind = %K::kind(&K::DynamicType::default()), object = %name, %error, "skipping an object that does not decode");
                None
            }
        }
    };
    Some(match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(convert(o)?),
        watcher::Event::Delete(o) => watcher::Event::Delete(convert(o)?),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(convert(o)?),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    })
}
