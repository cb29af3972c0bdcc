//! `weft control-plane`: sources → debounced translation → snapshot → ADS, plus `/metrics`
//! and `/ready` (ready once every source has synced and the first snapshot is out).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use serde::Deserialize;
use tracing::info;

use super::grpc::AdsService;
use super::metrics::{TypeLabels, XdsMetrics};
use super::model::Telemetry;
use super::server::{Admission, AdsServer};
use super::snapshot::{Cache, Snapshot};
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
    /// The mesh config could not be read.
    #[error("mesh config {path}: {message}")]
    MeshConfig {
        /// The file.
        path: String,
        /// What went wrong.
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
    let err = |message: String| Error::MeshConfig {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    parse_mesh_config(&text).map_err(err)
}

fn parse_mesh_config(text: &str) -> Result<MeshConfig, String> {
    let file: MeshConfigFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let access_log = file
        .access_log
        .filter(|a| a.enabled.unwrap_or(false))
        .map(|a| (a.path.unwrap_or_else(|| "/dev/stdout".to_string()), a.format));
    let zipkin = file
        .tracing
        .and_then(|t| Some((t.zipkin?.address, t.sampling_percent.unwrap_or(1.0))));
    Ok(MeshConfig {
        mesh: file.mesh.filter(|m| !m.is_empty()),
        selectors: file.discovery_selectors,
        telemetry: Telemetry { access_log, zipkin },
    })
}

/// Runs until SIGTERM.
pub async fn run(client: Client, opts: Options) -> Result<(), Error> {
    let MeshConfig {
        mesh,
        selectors,
        telemetry,
    } = read_mesh_config(&opts.mesh_config)?;
    let sources = Sources::start(&client);
    let cache = Cache::new();
    let metrics = XdsMetrics::new();
    let health = Arc::new(Health::default());

    let revision = opts.revision.clone();
    let resolver = sources.clone();
    let admission: Admission = Arc::new(move |c| {
        // What the client names, else its namespace's label, else the default tag.
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
    });

    // Translation: after sync, then after every burst of changes has been quiet for
    // `debounce` (at most ten times that, so a constant trickle still gets through).
    let (cache_t, metrics_t, health_t, sources_t, rev_t) = (
        cache.clone(),
        metrics.clone(),
        health.clone(),
        sources.clone(),
        opts.revision.clone(),
    );
    let debounce = opts.debounce;
    tokio::spawn(async move {
        let _ = sources_t.synced.clone().wait_for(|s| *s).await;
        let mut version = 0u64;
        let mut changed_at = Instant::now();
        loop {
            let (services, routes) = sources_t.model(&rev_t, &selectors);
            // Every gateway of the mesh, whichever revision it follows: during a gateway's
            // rollout its old pods stay connected here and still need their listeners.
            let gateways = sources_t.gateways(mesh.as_deref());
            let resources = translate_all(&services, &gateways, &routes, &telemetry);
            let snap = Snapshot::new(version + 1, changed_at, &resources);
            drop(resources);
            // Compared by content hash with what is published: no second copy is kept.
            if version == 0 || !snap.same_content(&cache_t.current()) {
                version += 1;
                for (t, count) in snap.counts() {
                    let labels = TypeLabels {
                        r#type: super::snapshot::short(t).to_string(),
                    };
                    metrics_t.resources.get_or_create(&labels).set(count as i64);
                }
                cache_t.publish(snap);
            } else {
                drop(snap);
            }
            release_free_memory();
            health_t.set_ready(true);
            sources_t.changed.notified().await;
            changed_at = Instant::now();
            let deadline = tokio::time::Instant::now() + debounce * 10;
            loop {
                tokio::select! {
                    _ = sources_t.changed.notified() => {}
                    _ = tokio::time::sleep(debounce) => break,
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop_tx.send(true);
    });
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let stopped = {
        let mut rx = stop_rx.clone();
        async move {
            #[cfg(unix)]
            if let Some(t) = term.as_mut() {
                tokio::select! { _ = t.recv() => {}, _ = rx.wait_for(|s| *s) => {} }
                return;
            }
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let stopped = futures::FutureExt::shared(Box::pin(stopped));

    let m = metrics.clone();
    let state = HttpState {
        health,
        metrics: Arc::new(move || m.encode()),
    };
    let (maddr, _) = crate::http::serve(opts.monitoring_address, state, stopped.clone())
        .await
        .map_err(|source| Error::Listen {
            address: opts.monitoring_address,
            source,
        })?;
    let listener = tokio::net::TcpListener::bind(opts.xds_address)
        .await
        .map_err(|source| Error::Listen {
            address: opts.xds_address,
            source,
        })?;
    let xaddr = listener.local_addr().map_err(|source| Error::Listen {
        address: opts.xds_address,
        source,
    })?;
    info!(revision = %opts.revision, xds = %xaddr, monitoring = %maddr, "control plane starting");
    let server = AdsServer::new(cache, admission, metrics);
    tonic::transport::Server::builder()
        .add_service(AdsService::new(server))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), stopped)
        .await?;
    info!("stopped");
    Ok(())
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
}
