//! `weft control-plane`: sources → debounced translation → snapshot → ADS, plus `/metrics`
//! and `/ready` (ready once every source has synced and the first snapshot is out, and
//! while every watch flows). `run` wires the steps: the admission check, the translation
//! loop (`Translator`), and serving until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use super::grpc::AdsService;
use super::metrics::{TypeLabels, XdsMetrics};
use super::model::{FileLog, MeshModel, Telemetry, Zipkin};
use super::server::{Admission, AdsServer};
use super::snapshot::{Cache, Snapshot, short};
use super::sources::Sources;
use super::translate::translate_all;
use crate::http::{Health, HttpState};

/// How the control plane runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The revision it serves.
    pub revision: String,
    /// Where ADS listens.
    pub xds_address: SocketAddr,
    /// Where `/metrics` and `/ready` listen.
    pub monitoring_address: SocketAddr,
    /// The mesh config file the operator mounts.
    pub mesh_config: Option<PathBuf>,
    /// Quiet time that ends a burst of changes.
    pub debounce: Duration,
}

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
    access_log: Option<AccessLogFile>,
    #[serde(default)]
    tracing: Option<TracingFile>,
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
struct MeshConfig {
    /// The MeshInstall whose gateways are served (every gateway when unknown).
    mesh: Option<String>,
    /// Namespaces in the mesh (all when empty).
    selectors: Vec<LabelSelector>,
    /// Access log and tracing.
    telemetry: Telemetry,
}

fn read_mesh_config(path: &Option<PathBuf>) -> Result<MeshConfig, Error> {
    let Some(path) = path else {
        return Ok(MeshConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadMeshConfig {
        path: path.clone(),
        source,
    })?;
    parse_mesh_config(&text).map_err(|source| Error::ParseMeshConfig {
        path: path.clone(),
        source: Box::new(source),
    })
}

fn parse_mesh_config(text: &str) -> Result<MeshConfig, serde_saphyr::Error> {
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
        telemetry: Telemetry { access_log, zipkin },
    })
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(client: Client, opts: Options) -> Result<(), Error> {
    let config = read_mesh_config(&opts.mesh_config)?;
    let metrics = XdsMetrics::new();
    let sources = Sources::start(&client, &metrics.watches);
    let cache = Cache::new();
    let health = Arc::new(Health::watching(metrics.watches.clone()));
    let admission = admission(opts.revision.clone(), sources.clone());
    let translator = Translator {
        sources,
        cache: cache.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        revision: opts.revision.clone(),
        config,
        debounce: opts.debounce,
    };
    tokio::spawn(translator.run());
    let server = AdsServer::new(cache, admission, metrics.clone());
    serve(&opts, server, metrics, health).await
}

/// Admits the clients whose revision resolves to `revision`: the one they name, else their
/// namespace's label, else the default tag.
fn admission(revision: String, resolver: Sources) -> Admission {
    Arc::new(move |c| {
        let (asked, how) = match (
            &c.revision,
            c.namespace.as_deref().and_then(|ns| resolver.namespace_label(ns)),
        ) {
            (Some(r), _) => (r.clone(), "REVISION".to_string()),
            (None, Some(label)) => (
                label,
                format!("namespace {}'s label", c.namespace.as_deref().unwrap_or_default()),
            ),
            (None, None) => ("default".to_string(), "default tag".to_string()),
        };
        match resolver.resolve(&asked) {
            Some(r) if r == revision => Ok(()),
            Some(r) => Err(format!(
                "this control plane serves revision {revision}; the client's {how} {asked:?} resolves to {r:?}: connect to weft-cp-{r}"
            )),
            None => Err(format!(
                "this control plane serves revision {revision}; the client's {how} {asked:?} is unknown"
            )),
        }
    })
}

/// Turns the sources into snapshots: once they have synced, then after every burst of
/// changes.
struct Translator {
    sources: Sources,
    cache: Cache,
    metrics: XdsMetrics,
    health: Arc<Health>,
    /// The revision served.
    revision: String,
    config: MeshConfig,
    /// Quiet time that ends a burst.
    debounce: Duration,
}

impl Translator {
    /// Runs until the process ends. Ready once the first snapshot is out.
    async fn run(self) {
        let _ = self.sources.synced.clone().wait_for(|s| *s).await;
        let mut version = 0u64;
        let mut changed_at = Instant::now();
        loop {
            let snap = self.snapshot(version + 1, changed_at);
            // Compared by content hash with what is published: no second copy is kept.
            if version == 0 || !snap.same_content(&self.cache.current()) {
                version += 1;
                self.publish(snap);
            } else {
                drop(snap);
            }
            release_free_memory();
            self.health.set_ready(true);
            self.sources.changed.notified().await;
            changed_at = Instant::now();
            quiet(&self.sources.changed, self.debounce).await;
        }
    }

    /// Translates the sources as they are now into snapshot `version`.
    fn snapshot(&self, version: u64, changed_at: Instant) -> Snapshot {
        let MeshConfig {
            mesh,
            selectors,
            telemetry,
        } = &self.config;
        let MeshModel { services, routes } = self.sources.model(&self.revision, selectors);
        // Every gateway of the mesh, whichever revision it follows: during a gateway's
        // rollout its old pods stay connected here and still need their listeners.
        let gateways = self.sources.gateways(mesh.as_deref());
        let resources = translate_all(&services, &gateways, &routes, telemetry);
        Snapshot::new(version, changed_at, &resources)
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

/// Waits until `changed` has been quiet for `debounce`, but at most ten times that, so a
/// constant trickle of changes still gets through.
async fn quiet(changed: &Notify, debounce: Duration) {
    let deadline = tokio::time::Instant::now() + debounce * 10;
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(debounce) => break,
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

/// Serves `/metrics` and `/ready`, and ADS, until the process is asked to stop.
async fn serve(opts: &Options, server: AdsServer, metrics: XdsMetrics, health: Arc<Health>) -> Result<(), Error> {
    let stopped = stop_signal();
    let state = HttpState {
        health,
        metrics: Arc::new(move || metrics.encode()),
    };
    let (maddr, _) = crate::http::serve(opts.monitoring_address, state, stopped.clone())
        .await
        .map_err(listen_error(opts.monitoring_address))?;
    let listener = tokio::net::TcpListener::bind(opts.xds_address)
        .await
        .map_err(listen_error(opts.xds_address))?;
    let xaddr = listener.local_addr().map_err(listen_error(opts.xds_address))?;
    info!(revision = %opts.revision, xds = %xaddr, monitoring = %maddr, "control plane starting");
    tonic::transport::Server::builder()
        .add_service(AdsService::new(server))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped)
        .await?;
    info!("stopped");
    Ok(())
}

/// Turns a failure to listen on `address` into an [`Error`].
fn listen_error(address: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Listen { address, source }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// On paused (virtual) time: exact bounds, no real waiting.
    #[tokio::test(start_paused = true)]
    async fn a_burst_ends_when_quiet_or_after_ten_times_the_debounce() {
        let changed = Arc::new(Notify::new());
        let debounce = Duration::from_millis(50);
        let started = tokio::time::Instant::now();
        quiet(&changed, debounce).await;
        assert_eq!(started.elapsed(), debounce, "quiet for the debounce");

        // A change every 5 ms never leaves 50 ms of quiet: the cap ends the burst.
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
        assert!(took >= debounce * 10 && took < debounce * 11, "{took:?}");
    }
}
