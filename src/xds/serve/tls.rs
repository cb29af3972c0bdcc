//! The control plane's TLS port: the certificate service and ADS, behind a server
//! certificate for the revision's Service names signed by the mesh CA. A client may
//! present a workload certificate of this mesh (mTLS: ADS takes its identity from it) or
//! none (the certificate service, and ADS with a ServiceAccount token, authenticate by
//! token). The server certificate, and the roots client certificates are checked against,
//! follow the issuer: each new connection gets the newest.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::conn::{Conn, Peer};
use crate::identity::ca::{self, SigningCa};
use crate::identity::issuer::IssuerWatch;
use crate::identity::spiffe::WorkloadId;
use crate::xds::metrics::XdsMetrics;

/// How long a server certificate lives; a new one is made at half of it.
pub const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The serving certificate could not be signed.
    #[error("cannot sign the serving certificate: {0}")]
    Sign(#[from] ca::CaError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// A server configuration for `names`, signed by `signing`, trusting client certificates
/// that chain to its roots (and accepting clients without one).
pub fn server_config(signing: &SigningCa, names: &[String], now: SystemTime) -> Result<Arc<ServerConfig>, TlsError> {
    let keyed = ca::sign_server(signing, names, SERVER_CERT_TTL, now)?;
    let rustls_err = |e: &dyn std::fmt::Display| TlsError::Rustls(e.to_string());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(keyed.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| rustls_err(&e))?;
    let key = PrivateKeyDer::from_pem_slice(keyed.key_pem.as_bytes()).map_err(|e| rustls_err(&e))?;
    let mut roots = RootCertStore::empty();
    for der in ca::certificates(&signing.roots_pem).map_err(TlsError::Sign)? {
        roots.add(CertificateDer::from(der)).map_err(|e| rustls_err(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls_err(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| rustls_err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| rustls_err(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Keeps a server configuration for the current issuer: made again when the issuer
/// changes and when the serving certificate is half way through its life.
pub fn follow_issuer(mut issuer: IssuerWatch, names: Vec<String>) -> watch::Receiver<Option<Arc<ServerConfig>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let current = issuer.borrow_and_update().clone();
            if let Some(signing) = current {
                match server_config(&signing, &names, SystemTime::now()) {
                    Ok(config) => {
                        let _ = tx.send(Some(config));
                    }
                    Err(e) => warn!("cannot serve TLS with the current issuer: {e}"),
                }
            }
            tokio::select! {
                changed = issuer.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(SERVER_CERT_TTL / 2) => {}
            }
        }
    });
    rx
}

/// Accepts TLS connections on `listener` with the newest configuration, each handshake in
/// its own task (a slow client holds up no other); hands on the connections that completed.
pub fn accept(
    listener: TcpListener,
    configs: watch::Receiver<Option<Arc<ServerConfig>>>,
    metrics: XdsMetrics,
    idle: Option<Duration>,
) -> mpsc::Receiver<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!("accept failed: {e}");
                    continue;
                }
            };
            let Some(config) = configs.borrow().clone() else {
                // No issuer yet: nothing to serve with.
                continue;
            };
            let (tx, metrics) = (tx.clone(), metrics.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let handshake = TlsAcceptor::from(config).accept(tcp);
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        debug!("TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| WorkloadId::of_certificate(leaf));
                let _ = tx.send(Ok(Conn::tls(tls, Peer::Tls(peer), metrics, idle))).await;
            });
        }
    });
    rx
}
