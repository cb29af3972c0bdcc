//! `weft control-plane`: sources → debounced translation → snapshot → ADS, plus `/metrics`
//! and `/ready` (ready once every source has synced and the first snapshot is out, and
//! while every watch flows). `run` wires the steps: the admission check, the translation
//! loop (`Translator`), and serving until SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use super::discovery::remote;
use super::discovery::selectors::check_selector;
use super::discovery::sources::Sources;
use super::metrics::{TypeLabels, XdsMetrics};
use super::model::{FileLog, MeshModel, Origin, Telemetry, Zipkin};
use super::serve::claims::Authenticator;
use super::serve::conn::Conn;
use super::serve::grpc::{AdsService, FrameLimits};
use super::serve::server::{Admission, AdsServer, ClientInfo, StreamLimits, clip};
use super::serve::snapshot::{Cache, Snapshot, short};
use super::serve::tls;
use super::translate::incremental::Incremental;
use super::translate::{split_horizon, translate_gateways};
use crate::http::{Health, HttpState};
use crate::identity::csr::{CertificateService, Membership, RateLimit, Signer};
use crate::identity::issuer::{IssuerWatch, watch_issuer};
use crate::identity::spiffe::WorkloadId;
use crate::identity::tokens::TokenReviewer;

/// How the control plane runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The revision it serves.
    pub revision: String,
    /// Where plaintext ADS listens (`None`: it does not; only the TLS port serves).
    pub xds_address: Option<SocketAddr>,
    /// Where `/metrics` and `/ready` listen.
    pub monitoring_address: SocketAddr,
    /// The mesh config file the operator mounts.
    pub mesh_config: Option<PathBuf>,
    /// When changes are pushed.
    pub debounce: Debounce,
    /// What each client may hold.
    pub limits: Limits,
    /// The mesh namespace: where the mesh's RemoteClusters and their Secrets are.
    pub mesh_namespace: String,
    /// How long the first snapshot waits for the remote clusters known at start to list.
    pub remote_sync_timeout: Duration,
    /// The TLS port, when the control plane has a CA to sign with.
    pub secure: Option<SecureOptions>,
}

/// The TLS port: the certificate service and authenticated ADS.
#[derive(Clone, Debug)]
pub struct SecureOptions {
    /// Where it listens.
    pub address: SocketAddr,
    /// The issuer Secret (in the mesh namespace).
    pub ca_secret: String,
    /// The names the serving certificate is for (the revision's Service names, and any
    /// other name or address clients dial).
    pub server_names: Vec<String>,
    /// The longest workload certificate lifetime.
    pub workload_cert_ttl: Duration,
}

/// The limits every xDS client is held to (see docs/xds-limits.md for the defaults' reasons).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request size, and what a stream may leave unread.
    pub frame: FrameLimits,
    /// Subscribed names per stream, streams per client identity.
    pub stream: StreamLimits,
    /// HTTP/2 concurrent streams per connection.
    pub max_streams_per_connection: u32,
    /// How often an HTTP/2 ping checks a connection.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long a connection may stay open without a stream (`None`: forever).
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame: FrameLimits::default(),
            stream: StreamLimits::default(),
            max_streams_per_connection: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

/// How long the sources must be quiet before freed memory is handed back.
const TRIM_AFTER: Duration = Duration::from_millis(500);

/// How often freed memory is handed back while the sources stay quiet.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Hands freed heap memory back to the system. A translation allocates and frees many
/// small objects; glibc keeps freed chunks in its arenas, so without this the resident size
/// ratchets up with every change although nothing is live.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no inputs.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Errors that stop the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mesh config file could not be read.
    #[error("mesh config {path}: {source}")]
    ReadMeshConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The mesh config file does not parse.
    #[error("mesh config {path}: {source}")]
    ParseMeshConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<serde_saphyr::Error>,
    },
    /// A discovery selector would match nothing: refusing to start beats serving an empty
    /// mesh (the revision already running keeps serving).
    #[error(
        "mesh config {path}: discoverySelectors[{index}]: {message}; not starting rather than serving a mesh with no namespaces"
    )]
    InvalidSelector {
        /// The file.
        path: PathBuf,
        /// Which selector.
        index: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A listener could not bind.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("xDS server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The parts of the mesh config file the control plane uses.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MeshConfigFile {
    /// The MeshInstall's name: gateways of that mesh are served.
    #[serde(default)]
    mesh: Option<String>,
    #[serde(default)]
    discovery_selectors: Vec<LabelSelector>,
    #[serde(default)]
    cluster_name: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    access_log: Option<AccessLogFile>,
    #[serde(default)]
    tracing: Option<TracingFile>,
    #[serde(default)]
    trust_domain: Option<String>,
}

#[derive(Deserialize, Default)]
struct AccessLogFile {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TracingFile {
    #[serde(default)]
    zipkin: Option<ZipkinFile>,
    #[serde(default)]
    sampling_percent: Option<f64>,
}

#[derive(Deserialize, Default)]
struct ZipkinFile {
    address: String,
}

/// What the control plane takes from the mesh config file.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct MeshConfig {
    /// The MeshInstall whose gateways are served (every gateway when unknown).
    mesh: Option<String>,
    /// Namespaces in the mesh (all when empty).
    selectors: Vec<LabelSelector>,
    /// This cluster's name in the mesh and its network.
    origin: Origin,
    /// Access log and tracing.
    pub(crate) telemetry: Telemetry,
    /// The trust domain of workload identities.
    trust_domain: String,
}

impl MeshConfig {
    /// The trust domain (Istio's default when the file names none, or there is no file).
    fn trust_domain(&self) -> String {
        if self.trust_domain.is_empty() {
            crate::api::mesh_install::DEFAULT_TRUST_DOMAIN.to_string()
        } else {
            self.trust_domain.clone()
        }
    }
}

fn read_mesh_config(path: &Option<PathBuf>) -> Result<MeshConfig, Error> {
    let Some(path) = path else {
        return Ok(MeshConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadMeshConfig {
        path: path.clone(),
        source,
    })?;
    let config = parse_mesh_config(&text).map_err(|source| Error::ParseMeshConfig {
        path: path.clone(),
        source: Box::new(source),
    })?;
    for (index, s) in config.selectors.iter().enumerate() {
        check_selector(s).map_err(|message| Error::InvalidSelector {
            path: path.clone(),
            index,
            message,
        })?;
    }
    Ok(config)
}

pub(crate) fn parse_mesh_config(text: &str) -> Result<MeshConfig, serde_saphyr::Error> {
    let file: MeshConfigFile = serde_saphyr::from_str(text)?;
    let access_log = file.access_log.filter(|a| a.enabled.unwrap_or(false)).map(|a| FileLog {
        path: a.path.unwrap_or_else(|| "/dev/stdout".to_string()),
        format: a.format,
    });
    let zipkin = file.tracing.and_then(|t| {
        Some(Zipkin {
            address: t.zipkin?.address,
            sampling_percent: t.sampling_percent.unwrap_or(1.0),
        })
    });
    Ok(MeshConfig {
        mesh: file.mesh.filter(|m| !m.is_empty()),
        selectors: file.discovery_selectors,
        origin: Origin {
            cluster: file
                .cluster_name
                .unwrap_or_else(|| crate::api::mesh_install::DEFAULT_CLUSTER_NAME.to_string()),
            network: file.network.unwrap_or_default(),
        },
        telemetry: Telemetry { access_log, zipkin },
        trust_domain: file.trust_domain.unwrap_or_default(),
    })
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(client: Client, opts: Options) -> Result<(), Error> {
    let config = read_mesh_config(&opts.mesh_config)?;
    let metrics = XdsMetrics::new();
    let sources = Sources::start(&client, &metrics.watches);
    let settings = remote::Settings {
        namespace: opts.mesh_namespace.clone(),
        mesh: config.mesh.clone(),
        revision: opts.revision.clone(),
        local: config.origin.clone(),
        selectors: config.selectors.clone(),
    };
    let (remotes, remotes_synced) = remote::start(&client, settings, sources.changed.clone(), &metrics);
    let sources = sources.with_remotes(remotes);
    let cache = Cache::new();
    // Remote clusters are not checked: one being down must not take the local mesh down.
    let mut checks: Vec<Arc<dyn crate::http::Check>> = vec![Arc::new(metrics.watches.clone())];
    if opts.secure.is_some() {
        checks.push(Arc::new(metrics.identity.clone()));
    }
    let health = Arc::new(Health::checking(checks));
    let directory = MeshDirectory {
        sources: sources.clone(),
        local: config.origin.cluster.clone(),
    };
    let admission = admission(opts.revision.clone(), directory);
    let identity = opts.secure.as_ref().map(|secure| {
        let issuer = watch_issuer(
            client.clone(),
            &opts.mesh_namespace,
            &secure.ca_secret,
            metrics.identity.clone(),
        );
        let auth = Authenticator {
            tokens: TokenReviewer::new(client.clone()),
            trust_domain: config.trust_domain(),
            mesh_namespace: opts.mesh_namespace.clone(),
        };
        let signer = Signer {
            issuer: issuer.clone(),
            tokens: auth.tokens.clone(),
            membership: membership(
                sources.clone(),
                opts.revision.clone(),
                config.mesh.clone(),
                opts.mesh_namespace.clone(),
            ),
            trust_domain: config.trust_domain(),
            ttl: secure.workload_cert_ttl,
            rate: RateLimit::default(),
            metrics: metrics.identity.clone(),
        };
        (issuer, auth, CertificateService::new(signer))
    });
    let translator = Translator {
        remotes_synced,
        remote_sync_timeout: opts.remote_sync_timeout,
        sources,
        cache: cache.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        revision: opts.revision.clone(),
        config,
        debounce: opts.debounce,
        incremental: Incremental::default(),
    };
    tokio::spawn(translator.run());
    let server = AdsServer::new(cache, admission, metrics.clone(), opts.limits.stream);
    serve(&opts, server, identity, metrics, health).await
}

/// Whether a workload identity belongs to the mesh (and may get a certificate): the mesh
/// namespace (node proxies), namespaces labelled for one of its revisions or tags (this
/// control plane's own revision among them, known before any MeshInstall reports it), and the
/// ServiceAccount of each of its MeshGateways in the gateway's namespace.
pub fn membership(sources: Sources, revision: String, mesh: Option<String>, mesh_namespace: String) -> Membership {
    Arc::new(move |id: &WorkloadId| {
        if id.namespace == mesh_namespace {
            return Ok(());
        }
        let mut labels = sources.mesh_labels(mesh.as_deref());
        if !labels.contains(&revision) {
            labels.push(revision.clone());
        }
        if sources
            .namespace_label(&id.namespace)
            .is_some_and(|l| labels.contains(&l))
        {
            return Ok(());
        }
        if sources
            .gateways(mesh.as_deref())
            .iter()
            .any(|g| g.namespace == id.namespace && g.name == id.service_account)
        {
            return Ok(());
        }
        Err(format!(
            "{id} belongs to none of this mesh's workloads: namespace {} is not labelled {}=<one of {}>, and no MeshGateway of this mesh there runs as {}",
            id.namespace,
            crate::api::labels::REVISION,
            if labels.is_empty() {
                "none yet".to_string()
            } else {
                labels.join(", ")
            },
            id.service_account
        ))
    })
}

/// What admission knows of the clusters of the mesh.
pub trait Directory: Send + Sync + 'static {
    /// The `weft.dev/rev` label of a namespace of the local cluster, if it has one.
    fn namespace_label(&self, namespace: &str) -> Option<String>;
    /// The `weft.dev/rev` label of a namespace of the cluster a client names in `CLUSTER`
    /// (`None`: the local cluster). A directory of one cluster knows only its own.
    fn cluster_namespace_label(&self, cluster: Option<&str>, namespace: &str) -> Option<String> {
        let _ = cluster;
        self.namespace_label(namespace)
    }
    /// The revisions MeshInstalls report, and their tags with the revision each names.
    fn known_revisions(&self) -> (Vec<String>, Vec<(String, String)>);
}

impl Directory for Sources {
    fn namespace_label(&self, namespace: &str) -> Option<String> {
        Sources::namespace_label(self, namespace)
    }

    fn known_revisions(&self) -> (Vec<String>, Vec<(String, String)>) {
        Sources::known_revisions(self)
    }
}

/// The sources, knowing which cluster is the local one: a client naming another cluster
/// (primary-remote) has its namespace looked up in that cluster.
struct MeshDirectory {
    sources: Sources,
    /// The local cluster's name.
    local: String,
}

impl Directory for MeshDirectory {
    fn namespace_label(&self, namespace: &str) -> Option<String> {
        self.sources.namespace_label(namespace)
    }

    fn cluster_namespace_label(&self, cluster: Option<&str>, namespace: &str) -> Option<String> {
        match cluster {
            Some(c) if c != self.local => self.sources.remote_namespace_label(c, namespace),
            _ => self.sources.namespace_label(namespace),
        }
    }

    fn known_revisions(&self) -> (Vec<String>, Vec<(String, String)>) {
        self.sources.known_revisions()
    }
}

/// Admits the clients whose revision resolves to `revision` (see [`admit`]).
pub fn admission(revision: String, directory: impl Directory) -> Admission {
    Arc::new(move |c| admit(&revision, &directory, c))
}

/// Admits a client whose revision resolves to `revision`: the one it names, else its
/// namespace's label, else the default tag. A tag resolves to its revision; a name that
/// is neither a tag nor a known revision is refused with what is known.
pub fn admit(revision: &str, directory: &dyn Directory, c: &ClientInfo) -> Result<(), String> {
    let ns = c.namespace.as_deref().unwrap_or_default();
    // Looked up only when the client names no revision.
    let label = || directory.cluster_namespace_label(c.cluster.as_deref(), ns);
    let ns = match &c.cluster {
        Some(cluster) => format!("{} (cluster {})", clip(ns, 200), clip(cluster, 100)),
        None => clip(ns, 200),
    };
    let (asked, how) = match &c.revision {
        Some(r) => (clip(r, 200), "REVISION".to_string()),
        None => match label() {
            Some(label) => (label, format!("namespace {ns}'s label")),
            None => ("default".to_string(), format!("namespace {ns} has no label, so its")),
        },
    };
    let (mut revisions, tags) = directory.known_revisions();
    if !revisions.iter().any(|r| r == revision) {
        revisions.push(revision.to_string());
        revisions.sort();
    }
    let resolved = match tags.iter().find(|(t, _)| *t == asked) {
        Some((_, r)) => Some(r.clone()),
        None => revisions.contains(&asked).then(|| asked.clone()),
    };
    match resolved {
        Some(r) if r == revision => Ok(()),
        Some(r) => Err(format!(
            "this control plane serves revision {revision}; the client's {how} {asked:?} resolves to {r:?}: connect to weft-cp-{r}"
        )),
        None => {
            let tags: Vec<String> = tags.iter().map(|(t, r)| format!("{t} -> {r}")).collect();
            Err(format!(
                "this control plane serves revision {revision}; the client's {how} {asked:?} is neither a revision nor a tag; revisions: {}; tags: {}",
                revisions.join(", "),
                if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.join(", ")
                }
            ))
        }
    }
}

/// Turns the sources into snapshots: once they have synced, then after every burst of
/// changes.
struct Translator {
    sources: Sources,
    /// True once the remote clusters known at start have listed.
    remotes_synced: watch::Receiver<bool>,
    /// How long the first snapshot waits for that.
    remote_sync_timeout: Duration,
    cache: Cache,
    metrics: XdsMetrics,
    health: Arc<Health>,
    /// The revision served.
    revision: String,
    config: MeshConfig,
    /// When changes are pushed.
    debounce: Debounce,
    /// What the last snapshot's mesh services were translated from.
    incremental: Incremental,
}

impl Translator {
    /// Runs until the process ends. Ready once the first snapshot is out.
    async fn run(mut self) {
        let _ = self.sources.synced.clone().wait_for(|s| *s).await;
        self.wait_for_remotes().await;
        let mut version = 0u64;
        let mut changed_at = Instant::now();
        loop {
            let started = Instant::now();
            let snap = self.snapshot(version + 1, changed_at);
            self.metrics.translated(started.elapsed());
            // Compared by content hash with what is published: no second copy is kept.
            if version == 0 || !snap.same_content(&self.cache.current()) {
                version += 1;
                self.publish(snap);
            } else {
                drop(snap);
            }
            self.health.set_ready(true);
            let published = Instant::now();
            // Freed memory goes back to the system once changes pause, not between a
            // snapshot and its pushes (trimming walks the allocator's arenas under their
            // locks while the streams allocate their responses); and again every few
            // seconds while quiet, since streams that connect and go quiet free memory too.
            let mut wait = TRIM_AFTER;
            while tokio::time::timeout(wait, self.sources.changed.notified())
                .await
                .is_err()
            {
                release_free_memory();
                wait = TRIM_EVERY;
            }
            changed_at = Instant::now();
            // Leading edge: a change after a quiet spell is translated at once; one that
            // came while the last snapshot was being built, or just after it went out, waits
            // for its burst to end (at most the debounce's maximum).
            if !self.debounce.leading_edge(published.elapsed()) {
                quiet(&self.sources.changed, self.debounce).await;
            }
        }
    }

    /// Waits, at most the remote sync timeout, for the remote clusters known at start to
    /// list, so the first snapshot does not serve a mesh without them (Istio's
    /// PILOT_REMOTE_CLUSTER_TIMEOUT); after it, they join when they list.
    async fn wait_for_remotes(&self) {
        let mut synced = self.remotes_synced.clone();
        let timeout = self.remote_sync_timeout;
        if tokio::time::timeout(timeout, synced.wait_for(|s| *s)).await.is_err() {
            tracing::warn!(
                timeout_seconds = timeout.as_secs(),
                "remote clusters have not all listed in time; serving without them until they do"
            );
        }
    }

    /// Translates the sources as they are now into snapshot `version`.
    fn snapshot(&mut self, version: u64, changed_at: Instant) -> Snapshot {
        let MeshConfig {
            mesh,
            selectors,
            origin,
            telemetry,
            trust_domain: _,
        } = &self.config;
        let MeshModel {
            services,
            routes,
            network_gateways,
        } = self.sources.model(&self.revision, selectors, origin);
        // Every gateway of the mesh, whichever revision it follows: during a gateway's
        // rollout its old pods stay connected here and still need their listeners.
        let gateways = self.sources.gateways(mesh.as_deref());
        // Mesh services incrementally (only what changed is translated and encoded again);
        // the few gateways, and split-horizon EDS, in full.
        let encoded = self.incremental.translate(&services, &routes, telemetry);
        let mut rest = translate_gateways(&services, &gateways, &routes, telemetry);
        let without_gateway = split_horizon(&mut rest, &services, &network_gateways, &origin.network);
        self.metrics.set_endpoints_without_gateway(&without_gateway);
        Snapshot::assemble(version, changed_at, encoded, &rest, &self.cache.current())
    }

    /// Publishes a snapshot to every stream, and counts its resources.
    fn publish(&self, snap: Snapshot) {
        for (t, count) in snap.counts() {
            let labels = TypeLabels {
                r#type: short(t).to_string(),
            };
            self.metrics.resources.get_or_create(&labels).set(count as i64);
        }
        self.cache.publish(snap);
    }
}

/// When a change is pushed. A change that comes at least `after` since the last snapshot
/// went out is pushed at once (the leading edge: a lone change waits for nothing); one that
/// comes sooner, during a burst, waits until the sources have been quiet for `after`, but at
/// most `max` after it (Istio's PILOT_DEBOUNCE_AFTER and PILOT_DEBOUNCE_MAX), so a burst is
/// translated a few times, not once per change, and a constant trickle still gets through,
/// at most one push per `after` plus translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    /// Quiet time that ends a burst.
    pub after: Duration,
    /// Longest wait after the first change of a burst.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            after: Duration::from_millis(10),
            max: Duration::from_millis(100),
        }
    }
}

impl Debounce {
    /// Whether a change seen `since_push` after the last snapshot went out is pushed at once
    /// rather than coalesced with the changes that follow it.
    pub fn leading_edge(&self, since_push: Duration) -> bool {
        since_push >= self.after
    }
}

/// Waits until `changed` has been quiet for `debounce.after`, but at most `debounce.max`.
async fn quiet(changed: &Notify, debounce: Debounce) {
    let deadline = tokio::time::Instant::now() + debounce.max;
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(debounce.after) => break,
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
}

/// A future that resolves, in every clone, once the process is asked to stop.
fn stop_signal() -> Shared<BoxFuture<'static, ()>> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::signal::terminated().await;
        let _ = stop_tx.send(true);
    });
    async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }
    .boxed()
    .shared()
}

/// The TLS port's parts: the issuer, how callers are authenticated, the certificate service.
type Identity = (IssuerWatch, Authenticator, CertificateService);

/// Serves `/metrics` and `/ready`, ADS, and (with a CA) the TLS port, until the process is
/// asked to stop.
async fn serve(
    opts: &Options,
    server: AdsServer,
    identity: Option<Identity>,
    metrics: XdsMetrics,
    health: Arc<Health>,
) -> Result<(), Error> {
    let stopped = stop_signal();
    let encoder = metrics.clone();
    let state = HttpState {
        health,
        metrics: Arc::new(move || encoder.encode()),
    };
    let (maddr, _) = crate::http::serve(opts.monitoring_address, state, stopped.clone())
        .await
        .map_err(listen_error(opts.monitoring_address))?;
    let plaintext = match opts.xds_address {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(listen_error(address))?;
            let bound = listener.local_addr().map_err(listen_error(address))?;
            Some((listener, bound))
        }
        None => None,
    };
    let secure = match (&opts.secure, identity) {
        (Some(secure), Some((issuer, auth, certificates))) => {
            let tls = tokio::net::TcpListener::bind(secure.address)
                .await
                .map_err(listen_error(secure.address))?;
            let taddr = tls.local_addr().map_err(listen_error(secure.address))?;
            info!(secure = %taddr, "serving certificates and authenticated xDS over TLS");
            let configs = tls::follow_issuer(issuer, secure.server_names.clone());
            let ads = server.authenticating(auth);
            let (limits, m, stop) = (opts.limits.clone(), metrics.clone(), stopped.clone());
            Some(tokio::spawn(serve_tls(
                tls,
                configs,
                ads,
                certificates,
                limits,
                m,
                stop,
            )))
        }
        _ => None,
    };
    let xds = plaintext.as_ref().map_or("off".to_string(), |(_, a)| a.to_string());
    info!(revision = %opts.revision, xds = %xds, monitoring = %maddr, limits = ?opts.limits, "control plane starting");
    // Without plaintext xDS (the command line then requires a CA) the TLS port alone runs.
    if let Some((listener, _)) = plaintext {
        serve_xds(listener, server, opts.limits.clone(), metrics, stopped).await?;
    }
    if let Some(task) = secure
        && let Ok(Err(e)) = task.await
    {
        return Err(e.into());
    }
    info!("stopped");
    Ok(())
}

/// Serves ADS on `listener` within `limits` until `stop` resolves.
pub async fn serve_xds(
    listener: tokio::net::TcpListener,
    server: AdsServer,
    limits: Limits,
    metrics: XdsMetrics,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let idle = limits.idle_timeout;
    let accepted = TcpListenerStream::new(listener).map_ok(move |io| Conn::new(io, metrics.clone(), idle));
    grpc_server(&limits)
        .add_service(AdsService::new(server, limits.frame))
        .serve_with_incoming_shutdown(accepted, stop)
        .await
}

/// Serves the certificate service and authenticated ADS over TLS on `listener` until
/// `stop` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    configs: tokio::sync::watch::Receiver<Option<Arc<rustls::ServerConfig>>>,
    server: AdsServer,
    certificates: CertificateService,
    limits: Limits,
    metrics: XdsMetrics,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let accepted =
        tokio_stream::wrappers::ReceiverStream::new(tls::accept(listener, configs, metrics, limits.idle_timeout));
    grpc_server(&limits)
        .add_service(AdsService::new(server, limits.frame))
        .add_service(certificates)
        .serve_with_incoming_shutdown(accepted, stop)
        .await
}

/// A gRPC server with the HTTP/2 limits of `limits`.
fn grpc_server(limits: &Limits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        // Bounds what a client's headers may make the server buffer (h2's default is 16 MiB).
        .http2_max_header_list_size(64 * 1024)
}

/// Turns a failure to listen on `address` into an [`Error`].
fn listen_error(address: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Listen { address, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admission through the real directory: namespace `shop` is labelled `rev-a` in the
    /// local cluster `a` and `rev-b` in remote cluster `b`.
    fn two_cluster_directory() -> MeshDirectory {
        use super::super::discovery::sources::Remotes;
        use super::super::discovery::sources::tests::{k8s_namespace, remote};
        let sources = Sources::from_objects(
            vec![],
            vec![],
            vec![k8s_namespace("shop", &[("weft.dev/rev", "rev-a")])],
        );
        let remotes = Remotes::default();
        let b = remote(
            "b",
            "",
            vec![],
            vec![],
            vec![k8s_namespace("shop", &[("weft.dev/rev", "rev-b")])],
        );
        remotes.publish(vec![b]);
        MeshDirectory {
            sources: sources.with_remotes(remotes),
            local: "a".into(),
        }
    }

    fn client(cluster: Option<&str>) -> ClientInfo {
        ClientInfo {
            id: "c".into(),
            namespace: Some("shop".into()),
            cluster: cluster.map(String::from),
            ..Default::default()
        }
    }

    #[test]
    fn a_client_of_another_cluster_has_its_namespace_looked_up_in_that_cluster() {
        let d = two_cluster_directory();
        // Unknown revisions resolve to themselves only when known: rev-a is served here.
        assert_eq!(admit("rev-a", &d, &client(None)), Ok(()));
        assert_eq!(
            admit("rev-a", &d, &client(Some("a"))),
            Ok(()),
            "the local cluster by name"
        );
        let refused = admit("rev-a", &d, &client(Some("b"))).unwrap_err();
        assert!(
            refused.contains("namespace shop (cluster b)'s label \"rev-b\""),
            "{refused}"
        );
        assert_eq!(admit("rev-b", &d, &client(Some("b"))), Ok(()));
        // A cluster the control plane does not watch: no label known, so the default tag.
        let unknown = admit("rev-a", &d, &client(Some("z"))).unwrap_err();
        assert!(unknown.contains("has no label"), "{unknown}");
    }

    #[test]
    fn the_mesh_name_comes_from_the_top_level_mesh_key() {
        let c = parse_mesh_config("mesh: prod\ndiscoverySelectors: []\n").unwrap();
        assert_eq!(c.mesh.as_deref(), Some("prod"));
        let c = parse_mesh_config("discoverySelectors: []\n").unwrap();
        assert_eq!(c.mesh, None, "no key: every gateway is served");
    }

    #[test]
    fn mesh_config_errors_name_the_file() {
        let missing = read_mesh_config(&Some(PathBuf::from("/nonexistent/mesh.yaml"))).unwrap_err();
        assert!(matches!(missing, Error::ReadMeshConfig { .. }), "{missing:?}");
        assert!(
            missing.to_string().starts_with("mesh config /nonexistent/mesh.yaml: "),
            "{missing}"
        );
        assert!(parse_mesh_config("discoverySelectors: 7\n").is_err());
        assert_eq!(read_mesh_config(&None).unwrap(), MeshConfig::default());
    }

    #[test]
    fn a_selector_that_would_match_nothing_stops_the_start_and_says_which() {
        let path = std::env::temp_dir().join(format!("weft-mesh-{}.yaml", std::process::id()));
        let text = "discoverySelectors:\n- matchLabels: {team: a}\n- matchExpressions:\n  - {key: team, operator: Equals, values: [a]}\n";
        std::fs::write(&path, text).unwrap();
        let err = read_mesh_config(&Some(path.clone())).unwrap_err();
        let _ = std::fs::remove_file(&path);
        let message = err.to_string();
        assert!(matches!(err, Error::InvalidSelector { index: 1, .. }), "{err:?}");
        assert!(
            message.contains("discoverySelectors[1]: matchExpressions[0] (team)"),
            "{message}"
        );
        assert!(message.contains("\"Equals\" is not an operator"), "{message}");
    }

    #[test]
    fn a_change_after_a_quiet_spell_is_pushed_at_once_and_one_during_a_burst_waits() {
        let d = Debounce::default();
        assert!(d.leading_edge(Duration::from_secs(5)), "after a quiet spell");
        assert!(d.leading_edge(d.after), "quiet for exactly the window");
        assert!(!d.leading_edge(Duration::ZERO), "a change that came while translating");
        assert!(!d.leading_edge(d.after - Duration::from_millis(1)));
    }

    /// On paused (virtual) time: exact bounds, no real waiting.
    #[tokio::test(start_paused = true)]
    async fn a_burst_ends_when_quiet_or_at_the_maximum_delay() {
        let changed = Arc::new(Notify::new());
        let debounce = Debounce {
            after: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        assert_eq!(debounce, Debounce::default(), "the documented defaults");
        let started = tokio::time::Instant::now();
        quiet(&changed, debounce).await;
        assert_eq!(
            started.elapsed(),
            debounce.after,
            "a lone change waits only the quiet time"
        );

        // A change every 5 ms never leaves 10 ms of quiet: the maximum ends the burst.
        let trickle = changed.clone();
        let pinger = tokio::spawn(async move {
            loop {
                trickle.notify_one();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let started = tokio::time::Instant::now();
        quiet(&changed, debounce).await;
        pinger.abort();
        let took = started.elapsed();
        assert!(took >= debounce.max && took < debounce.max + debounce.after, "{took:?}");
    }
}
