//! The operator: leader election, then one controller per kind, all built on one toolkit.
//!
//! - Wiring (here): endpoints, the lease, the shared watches of our own kinds, and one line
//!   per controller. A new controller is a folder beside `mesh_install/` and `mesh_gateway/`
//!   exporting `controller(..) -> impl Future`, plus one line in [`controllers`].
//! - Toolkit (generic, no kind-specific logic): `controller` (triggers counted once,
//!   reconciles timed and traced, error policy, drain), `watch` (shared tolerant watches),
//!   `index` (owned objects), `apply` (server-side apply and pruning), `status` (status
//!   writer), `conditions` (kstatus), `health`, `events`, `queue`, `metrics`, `error`,
//!   `shared`.
//! - Controllers: `mesh_install` and `mesh_gateway`, each observe → decide (pure) → apply →
//!   write status; `remote_cluster`, observe (the remote API server) → decide → write status.

pub mod apply;
pub mod conditions;
pub mod controller;
pub mod error;
pub mod events;
pub mod failures;
pub mod health;
pub mod index;
pub mod leader;
pub mod memory;
pub mod mesh_gateway;
pub mod mesh_install;
pub mod metrics;
pub mod queue;
pub mod remote_cluster;
pub mod requests;
pub mod shared;
pub mod status;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future;
use kube::Client;
use tokio::sync::watch as signal_watch;
use tracing::info;

use crate::api::{MeshGateway, MeshInstall, RemoteCluster};
use crate::http::{Health, HttpState};
use crate::versions::VersionTable;
use controller::Shutdown;
use leader::{Lease, LeaseOptions};
use mesh_install::usage::UsageIndex;
use metrics::Metrics;
use shared::Shared;
use watch::SharedWatch;

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The Lease: where, its name, this process's identity and timings.
    pub lease: LeaseOptions,
    /// Address of `/metrics`.
    pub metrics_address: SocketAddr,
    /// Address of `/healthz` and `/readyz`.
    pub health_address: SocketAddr,
    /// Supported versions.
    pub versions: VersionTable,
    /// Reconciles that may run at once, per controller.
    pub concurrency: u16,
    /// How the RemoteCluster controller checks remote clusters.
    pub remote: remote_cluster::Settings,
    /// How long a trust bundle may take to reach every control plane and agent.
    pub bundle_propagation: Duration,
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
    /// The leader-election Lease's namespace does not exist (typical of a first run outside
    /// a cluster): one line saying what to do beats retrying API errors forever.
    #[error(
        "the leader-election namespace {0} does not exist in this cluster: create it (kubectl create namespace {0}) or name another with --leader-election-namespace"
    )]
    LeaseNamespaceMissing(String),
    /// The API client could not be built from the configuration.
    #[error("cannot build the API client: {0}")]
    Client(#[source] kube::Error),
}

/// Fails when the Lease's namespace is missing. Any other answer (such as an API server
/// that is not up yet) is left to leader election, which retries.
async fn check_lease_namespace(client: &Client, namespace: &str) -> Result<(), RunError> {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(None) => Err(RunError::LeaseNamespaceMissing(namespace.to_string())),
        _ => Ok(()),
    }
}

/// Runs until SIGTERM: reconciles only while this process holds the Lease. Every request
/// of its client, built from `config`, is counted in its metrics.
pub async fn run(config: kube::Config, opts: Options) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let client = requests::client(config, &metrics.requests).map_err(RunError::Client)?;
    check_lease_namespace(&client, &opts.lease.namespace).await?;
    let health = Arc::new(Health::checking(vec![
        Arc::new(metrics.watches.clone()),
        Arc::new(metrics.failures.clone()),
    ]));
    let (stop_tx, stop) = signal_watch::channel(false);
    tokio::spawn(async move {
        crate::signal::terminated().await;
        info!("termination signal received; shutting down");
        let _ = stop_tx.send(true);
    });
    let endpoints = serve_endpoints(&opts, &metrics, &health, &stop).await?;
    let trim = tokio::spawn(memory::trim_after_work(metrics.clone()));
    info!(identity = %opts.lease.identity, "operator starting");

    // Ready while the API server answers the election (leader or standby) and, while
    // leading, every watch flows.
    let flow = metrics.watches.track("Lease (leader election)");
    let mut lease = Lease::start(client.clone(), &opts.lease, metrics.clone(), flow);
    health.set_ready(true);
    let shared = Shared::new(
        client,
        metrics,
        opts.versions.clone(),
        opts.concurrency,
        &opts.lease.identity,
    );
    lease
        .lead(&stop, |shutdown| {
            controllers(shared.clone(), opts.remote.clone(), opts.bundle_propagation, shutdown)
        })
        .await;

    info!("controllers stopped; releasing the lease");
    lease.release().await;
    trim.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoints).await;
    info!("stopped");
    Ok(())
}

/// Serves `/metrics` and the health endpoints until `stop`; resolves when both have ended.
async fn serve_endpoints(
    opts: &Options,
    metrics: &Metrics,
    health: &Arc<Health>,
    stop: &signal_watch::Receiver<bool>,
) -> Result<impl Future<Output = ()> + use<>, RunError> {
    let stopped = |mut rx: signal_watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let m = metrics.clone();
    let state = HttpState {
        health: health.clone(),
        metrics: Arc::new(move || m.encode()),
    };
    let mut tasks = Vec::new();
    for address in [opts.metrics_address, opts.health_address] {
        let (bound, task) = crate::http::serve(address, state.clone(), stopped(stop.clone()))
            .await
            .map_err(|source| RunError::Listen { address, source })?;
        info!(address = %bound, "serving");
        tasks.push(task);
    }
    Ok(async move {
        future::join_all(tasks).await;
    })
}

/// The operator's own kinds, each watched once and shared by the controllers, and the
/// usage index fed from them.
struct Watches {
    meshes: SharedWatch<MeshInstall>,
    gateways: SharedWatch<MeshGateway>,
    remotes: SharedWatch<RemoteCluster>,
    /// What the RemoteCluster controller learns from the drivers.
    remote_feed: remote_cluster::Feed,
    /// What the MeshInstall controller learns of RemoteClusters from the driver.
    remote_meshes: mesh_install::remotes::RemoteFeed,
    usage: UsageIndex,
}

/// Every controller, until `shutdown` (finishing the reconciles in flight).
async fn controllers(
    shared: Shared,
    remote: remote_cluster::Settings,
    bundle_propagation: Duration,
    shutdown: Shutdown,
) {
    let (remote_feed, fed) = remote_cluster::feed();
    let (remote_meshes, remote_news) = mesh_install::remotes::remote_feed();
    let w = Watches {
        meshes: SharedWatch::default(),
        gateways: SharedWatch::default(),
        remotes: SharedWatch::default(),
        remote_feed,
        remote_meshes,
        usage: UsageIndex::default(),
    };
    // Controllers subscribe to the shared watches as they are built, before those start.
    let run = future::join3(
        mesh_install::controller(
            &shared,
            &w.meshes,
            &w.usage,
            &w.remotes,
            remote_news,
            bundle_propagation,
            shutdown.clone(),
        ),
        mesh_gateway::controller(&shared, &w.gateways, &w.meshes, shutdown.clone()),
        remote_cluster::controller(&shared, &w.remotes, &w.meshes, fed, remote, shutdown),
    );
    tokio::select! {
        _ = run => {}
        _ = drive(&shared, w) => {}
    }
}

/// Polls the shared watches (and the usage index's own), for as long as the controllers
/// run: nothing moves in their stores or subscriptions otherwise.
async fn drive(shared: &Shared, w: Watches) {
    let (client, health) = (&shared.client, &shared.metrics.watches);
    let (meshes, gateways) = (w.meshes.start(client), w.gateways.start(client));
    let (remotes, feed) = (w.remotes.start(client), &w.remote_feed);
    let usage = &w.usage;
    future::join4(
        watch::drive(meshes, health.track("MeshInstall"), |e| feed.mesh_event(e)),
        watch::drive(gateways, health.track("MeshGateway"), |e| usage.gateway_event(e)),
        watch::drive(remotes, health.track("RemoteCluster"), |e| {
            feed.remote_event(e);
            w.remote_meshes.event(e);
        }),
        usage.watch_namespaces(client, health.track("Namespace (revision labels)")),
    )
    .await;
}
