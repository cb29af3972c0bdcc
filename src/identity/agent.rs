//! `weft agent`: the workload side of the mesh identity, the way istio-agent serves
//! proxyless gRPC. It makes a key (which never leaves it), asks the control plane's
//! certificate service to sign it with the workload's ServiceAccount token, and writes
//! into one directory, each file atomically (written aside, then renamed):
//! `cert-chain.pem`, `key.pem`, `root-cert.pem` and a gRPC xDS bootstrap `bootstrap.json`
//! whose xDS channel is mTLS with those files (gRFC A65), with a `file_watcher`
//! certificate provider for the data plane (gRFC A29) and the server listener template
//! xDS-enabled servers need (gRFC A36); and for Envoy, the same as SDS files
//! (`sds-cert.json`, `sds-root.json`) its `path_config_source` watches. Without `--once` it renews at half the lifetime
//! and copies bundle changes within `--bundle-refresh-seconds` ([`BUNDLE_REFRESH`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tracing::{info, warn};

use super::ca;
use super::csr::{CREATE_PATH, IstioCertificateRequest, IstioCertificateResponse};

/// How often the agent re-reads the trust bundle (its `--ca-file`) unless told otherwise,
/// and how often the gRPC client re-reads the agent's files (the bootstrap's
/// `refresh_interval`). A root rotation waits for both (the operator's
/// `--bundle-propagation-seconds`).
pub const BUNDLE_REFRESH: Duration = Duration::from_secs(30);
/// The files the agent writes.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The private key.
pub const KEY: &str = "key.pem";
/// The trust bundle.
pub const ROOT_CERT: &str = "root-cert.pem";
/// The gRPC xDS bootstrap.
pub const BOOTSTRAP: &str = "bootstrap.json";
/// The certificate and key as an Envoy SDS file (Secret `default`), for Envoy's
/// `path_config_source`: one file, so Envoy never sees a key without its certificate.
pub const SDS_CERT: &str = "sds-cert.json";
/// The trust bundle as an Envoy SDS file (Secret `ROOTCA`).
pub const SDS_ROOT: &str = "sds-root.json";
/// The SDS Secret names in those files (Istio's).
pub const SDS_CERT_NAME: &str = "default";
/// The SDS validation context's name.
pub const SDS_ROOT_NAME: &str = "ROOTCA";
const SDS_SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// What the agent needs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The control plane's TLS port, `host:port`.
    pub control_plane: String,
    /// The name the control plane's certificate is checked against (default: the host).
    pub server_name: Option<String>,
    /// The ServiceAccount token (re-read for every request: the kubelet rotates it).
    pub token_file: PathBuf,
    /// The trust bundle (the `weft-root-ca` ConfigMap's `root-cert.pem`).
    pub ca_file: PathBuf,
    /// Where the files go.
    pub out: PathBuf,
    /// The bootstrap's node id.
    pub node_id: String,
    /// The bootstrap's node metadata (`NAMESPACE`, `REVISION`, …).
    pub metadata: BTreeMap<String, String>,
    /// The lifetime asked for (the control plane gives at most the mesh's).
    pub ttl: Option<Duration>,
    /// How often the bundle is re-read, and the gRPC client re-reads the files.
    pub bundle_refresh: Duration,
}

/// Why the agent could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key or CSR could not be made.
    #[error("cannot make the key: {0}")]
    Key(#[from] rcgen::Error),
    /// The control plane could not be reached.
    #[error("cannot reach the control plane at {address}: {message}")]
    Connect {
        /// `host:port`.
        address: String,
        /// Why.
        message: String,
    },
    /// The control plane refused.
    #[error("the control plane refused the certificate request: {0}")]
    Refused(String),
}

fn read(path: &Path) -> Result<String, AgentError> {
    std::fs::read_to_string(path).map_err(|source| AgentError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `content` to `dir/name` atomically (a reader sees the old or the new file).
/// `private`: readable by the owner only.
fn write_atomic(dir: &Path, name: &str, content: &[u8], private: bool) -> Result<(), AgentError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |source| AgentError::File {
        path: path.clone(),
        source,
    };
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        let mut f = options.open(&tmp).map_err(err)?;
        f.write_all(content).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)
}

/// The gRPC xDS bootstrap pointing at the TLS port with the agent's files.
pub fn bootstrap(opts: &AgentOptions) -> Value {
    let file = |name: &str| opts.out.join(name).display().to_string();
    // Both the xDS channel and the data plane re-read the files (grpc-go's channel default
    // is 10 minutes, longer than a rotation waits).
    let files = json!({
        "ca_certificate_file": file(ROOT_CERT),
        "certificate_file": file(CERT_CHAIN),
        "private_key_file": file(KEY),
        "refresh_interval": format!("{}s", opts.bundle_refresh.as_secs().max(1)),
    });
    let provider = files.clone();
    json!({
        "xds_servers": [{
            "server_uri": opts.control_plane,
            "channel_creds": [{"type": "tls", "config": files}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": opts.node_id, "metadata": opts.metadata},
        "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": provider}},
        "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
    })
}

/// The Envoy SDS file holding the workload's certificate chain and key.
pub fn sds_cert(chain_pem: &str, key_pem: &str) -> Value {
    json!({"resources": [{
        "@type": SDS_SECRET_TYPE,
        "name": SDS_CERT_NAME,
        "tls_certificate": {
            "certificate_chain": {"inline_string": chain_pem},
            "private_key": {"inline_string": key_pem},
        },
    }]})
}

/// The Envoy SDS file holding the trust bundle.
pub fn sds_root(roots_pem: &str) -> Value {
    json!({"resources": [{
        "@type": SDS_SECRET_TYPE,
        "name": SDS_ROOT_NAME,
        "validation_context": {"trusted_ca": {"inline_string": roots_pem}},
    }]})
}

/// Writes the trust bundle: for gRPC and for Envoy.
fn write_roots(out: &Path, roots: &str) -> Result<(), AgentError> {
    write_atomic(out, ROOT_CERT, roots.as_bytes(), false)?;
    let sds = serde_json::to_vec_pretty(&sds_root(roots)).unwrap_or_default();
    write_atomic(out, SDS_ROOT, &sds, false)
}

/// When the certificate already in `out` was issued and expires, if it is whole (its key
/// beside it) and less than half its life has gone: a restarted agent keeps it.
fn kept_certificate(out: &Path, now: SystemTime) -> Option<(SystemTime, SystemTime)> {
    let chain = std::fs::read_to_string(out.join(CERT_CHAIN)).ok()?;
    let key = std::fs::read_to_string(out.join(KEY)).ok()?;
    KeyPair::from_pem(&key).ok()?;
    std::fs::metadata(out.join(SDS_CERT)).ok()?;
    let facts = ca::first_facts(&chain)?;
    let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    // Certificates start before they are made (clock skew): count from when it was made.
    let until = at(facts.not_after);
    let from = (at(facts.not_before) + ca::BACKDATE).min(until);
    let half = from + until.duration_since(from).ok()? / 2;
    (now < half).then_some((from, until))
}

/// A new key (ECDSA P-256) and a CSR for it, both PEM. The CSR asks for nothing: the
/// certificate service decides the identity.
pub fn new_csr() -> Result<(String, String), AgentError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::default().serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

/// Asks for one certificate for a new key; returns the key PEM and the chain (leaf first).
pub async fn request(opts: &AgentOptions, roots_pem: &str) -> Result<(String, Vec<String>), AgentError> {
    let (key_pem, csr) = new_csr()?;
    let token = read(&opts.token_file)?.trim().to_string();
    let host = opts
        .control_plane
        .rsplit_once(':')
        .map_or(opts.control_plane.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let connect = |message: String| AgentError::Connect {
        address: opts.control_plane.clone(),
        message,
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots_pem))
        .domain_name(opts.server_name.clone().unwrap_or(host));
    let channel = Endpoint::from_shared(format!("https://{}", opts.control_plane))
        .map_err(|e| connect(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .tls_config(tls)
        .map_err(|e| connect(e.to_string()))?
        .connect()
        .await
        .map_err(|e| {
            connect(format!(
                "{e}: {}",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            ))
        })?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| connect(e.to_string()))?;
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: opts.ttl.map_or(0, |t| t.as_secs() as i64),
        metadata: None,
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| AgentError::Refused("the token file holds characters a header cannot".to_string()))?;
    req.metadata_mut().insert("authorization", bearer);
    let codec = tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_PATH);
    let answer = grpc
        .unary(req, path, codec)
        .await
        .map_err(|s| AgentError::Refused(format!("{:?}: {}", s.code(), s.message())))?;
    Ok((key_pem, answer.into_inner().cert_chain))
}

/// Obtains a certificate and writes every file; returns when the certificate expires.
pub async fn refresh(opts: &AgentOptions) -> Result<SystemTime, AgentError> {
    let roots = read(&opts.ca_file)?;
    let (key, chain) = request(opts, &roots).await?;
    let leaf_end = chain
        .first()
        .and_then(|c| ca::first_facts(c))
        .map(|f| SystemTime::UNIX_EPOCH + Duration::from_secs(f.not_after.max(0) as u64))
        .unwrap_or_else(SystemTime::now);
    std::fs::create_dir_all(&opts.out).map_err(|source| AgentError::File {
        path: opts.out.clone(),
        source,
    })?;
    // The key before the chain: a watcher that sees a new chain finds its key in place.
    write_atomic(&opts.out, KEY, key.as_bytes(), true)?;
    // The chain without the root: peers hold the root in their bundle.
    let without_root = if chain.len() > 1 {
        &chain[..chain.len() - 1]
    } else {
        &chain[..]
    };
    write_atomic(&opts.out, CERT_CHAIN, without_root.concat().as_bytes(), false)?;
    let sds = serde_json::to_vec_pretty(&sds_cert(&without_root.concat(), &key)).unwrap_or_default();
    write_atomic(&opts.out, SDS_CERT, &sds, true)?;
    write_roots(&opts.out, &roots)?;
    let boot = serde_json::to_vec_pretty(&bootstrap(opts)).unwrap_or_default();
    write_atomic(&opts.out, BOOTSTRAP, &boot, false)?;
    Ok(leaf_end)
}

/// The delays between tries of a failed certificate request: from 1 s, doubling, at most
/// a minute apart, with jitter (many agents restart together when a node does).
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
}

/// Tries of the first request before the agent gives up (about five minutes: the control
/// plane may still be starting, as when a mesh is installed).
const FIRST_TRIES: usize = 10;

/// Runs the agent: once, or forever (renewing at half the lifetime, retrying failures with
/// backoff, and copying bundle changes).
pub async fn run(opts: AgentOptions, once: bool) -> Result<(), AgentError> {
    // A restarted agent (or one started after `--once` wrote the files, as an init
    // container does) keeps a certificate with most of its life left.
    let kept = (!once)
        .then(|| kept_certificate(&opts.out, SystemTime::now()))
        .flatten();
    let (mut issued, mut expires) = match kept {
        Some(kept) => {
            info!(out = %opts.out.display(), "keeping the workload certificate already there");
            kept
        }
        None => {
            let expires = (|| refresh(&opts))
                .retry(backoff().with_max_times(FIRST_TRIES))
                // Only an unreachable control plane is worth waiting for: a refusal is an
                // answer, and says what to fix.
                .when(|e| matches!(e, AgentError::Connect { .. }))
                .notify(|e, d| warn!("cannot get a certificate yet, retrying in {}s: {e}", d.as_secs()))
                .await?;
            info!(out = %opts.out.display(), "wrote the workload certificate and bootstrap");
            (SystemTime::now(), expires)
        }
    };
    if once {
        return Ok(());
    }
    let mut retries = backoff().without_max_times().build();
    loop {
        let half = expires.duration_since(issued).unwrap_or_default() / 2;
        let renew_at = issued + half;
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(opts.bundle_refresh);
        tokio::time::sleep(wait).await;
        // The bundle may have changed (a rotation adds a root): copy it.
        match read(&opts.ca_file) {
            Ok(roots) => {
                let current = std::fs::read_to_string(opts.out.join(ROOT_CERT)).unwrap_or_default();
                if roots != current {
                    write_roots(&opts.out, &roots)?;
                    info!("the trust bundle changed; copied it");
                }
            }
            Err(e) => warn!("cannot read the trust bundle: {e}"),
        }
        if SystemTime::now() < renew_at {
            continue;
        }
        match refresh(&opts).await {
            Ok(end) => {
                (issued, expires) = (SystemTime::now(), end);
                retries = backoff().without_max_times().build();
                info!("renewed the workload certificate");
            }
            Err(e) => {
                let delay = retries.next().unwrap_or(Duration::from_secs(60));
                warn!("renewal failed, retrying in {}s: {e}", delay.as_secs());
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_uses_tls_with_the_agent_files() {
        let opts = AgentOptions {
            control_plane: "weft-cp-r.weft-system.svc:15012".into(),
            server_name: None,
            token_file: "/var/run/secrets/weft/token".into(),
            ca_file: "/etc/weft/root-cert.pem".into(),
            out: "/var/run/weft".into(),
            node_id: "n".into(),
            metadata: BTreeMap::from([("NAMESPACE".to_string(), "shop".to_string())]),
            ttl: None,
            bundle_refresh: BUNDLE_REFRESH,
        };
        let b = bootstrap(&opts);
        let server = &b["xds_servers"][0];
        assert_eq!(server["server_uri"], "weft-cp-r.weft-system.svc:15012");
        assert_eq!(server["channel_creds"][0]["type"], "tls");
        assert_eq!(
            server["channel_creds"][0]["config"]["private_key_file"],
            "/var/run/weft/key.pem"
        );
        assert_eq!(b["certificate_providers"]["default"]["plugin_name"], "file_watcher");
        assert_eq!(
            server["channel_creds"][0]["config"]["refresh_interval"], "30s",
            "the xDS channel follows a rotation as quickly as the data plane"
        );
        assert_eq!(
            b["certificate_providers"]["default"]["config"]["refresh_interval"],
            "30s"
        );
        assert_eq!(b["node"]["metadata"]["NAMESPACE"], "shop");
        assert!(
            b["server_listener_resource_name_template"]
                .as_str()
                .is_some_and(|t| t.contains("%s"))
        );
    }

    #[test]
    fn a_restarted_agent_keeps_a_certificate_with_most_of_its_life_left() {
        let dir = std::env::temp_dir().join(format!("weft-agent-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let now = SystemTime::now();
        let root = ca::new_root("cluster.local", 0, now).unwrap();
        let issuer = ca::new_issuer(&root, "cluster.local", now).unwrap();
        let (key, csr) = new_csr().unwrap();
        let csr_der = pem::parse(&csr).unwrap().into_contents();
        let ttl = Duration::from_secs(3600);
        let chain = ca::sign_workload(&issuer, &csr_der, "spiffe://cluster.local/ns/a/sa/b", ttl, now).unwrap();
        assert!(kept_certificate(&dir, now).is_none(), "nothing there yet");
        write_atomic(&dir, KEY, key.as_bytes(), true).unwrap();
        write_atomic(&dir, CERT_CHAIN, chain.as_bytes(), false).unwrap();
        let sds = serde_json::to_vec(&sds_cert(&chain, &key)).unwrap();
        write_atomic(&dir, SDS_CERT, &sds, true).unwrap();
        let (from, until) = kept_certificate(&dir, now).expect("kept");
        assert!(
            until.duration_since(from).unwrap() <= ttl + Duration::from_secs(1),
            "counted from issue, not from the backdated start"
        );
        assert!(
            kept_certificate(&dir, now + ttl / 2 + Duration::from_secs(5)).is_none(),
            "past half its life: renewed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn envoy_gets_the_certificate_and_its_key_in_one_file() {
        let v = sds_cert("CHAIN", "KEY");
        let secret = &v["resources"][0];
        assert_eq!(secret["name"], SDS_CERT_NAME);
        assert_eq!(secret["tls_certificate"]["certificate_chain"]["inline_string"], "CHAIN");
        assert_eq!(secret["tls_certificate"]["private_key"]["inline_string"], "KEY");
        assert_eq!(
            sds_root("ROOTS")["resources"][0]["validation_context"]["trusted_ca"]["inline_string"],
            "ROOTS"
        );
    }

    #[test]
    fn files_are_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("weft-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_atomic(&dir, KEY, b"one", true).unwrap();
        write_atomic(&dir, KEY, b"two", true).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(KEY)).unwrap(), "two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the key is the owner's alone");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
