//! Mesh-identity helpers shared by the identity tests and `bench-ca`: the issuer Secret,
//! ServiceAccounts and their tokens, and workload TLS with the files `weft agent` writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme,
};
use serde_json::json;
use weft::identity::ca::SigningCa;
use weft::identity::mesh_ca;
use weft::identity::spiffe::WorkloadId;

use crate::control_plane::free_port_on;
use crate::testhost::HOST_ADDRESS;
use crate::{Bed, wait_for, weft_bin};

/// The issuer Secret `weft-ca-issuer` holding `signing`, as the operator writes it.
pub fn issuer_secret(signing: &SigningCa) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(mesh_ca::ISSUER_SECRET.into()),
            ..Default::default()
        },
        data: Some(
            mesh_ca::issuer_data(signing)
                .0
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Default::default()
    }
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Labels namespace `ns` for revision `rev` (`None`: removes the label).
pub async fn label_namespace(bed: &Bed, ns: &str, rev: Option<&str>) {
    let api: Api<Namespace> = Api::all(bed.client.clone());
    let patch = json!({"metadata": {"labels": {"weft.dev/rev": rev}}});
    api.patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label the namespace");
}

/// A token for ServiceAccount `sa` of `ns` with `audience`, written to a file.
pub fn token_file(bed: &Bed, dir: &Path, ns: &str, sa: &str, audience: &str) -> PathBuf {
    let token = bed
        .kubectl(&[
            "create",
            "token",
            sa,
            "-n",
            ns,
            "--audience",
            audience,
            "--duration",
            "10m",
        ])
        .expect("kubectl create token");
    let path = dir.join(format!("token-{ns}-{sa}-{audience}"));
    std::fs::write(&path, token.trim()).expect("write the token");
    path
}

/// Creates ServiceAccount `name` in `ns`.
pub async fn service_account(bed: &Bed, ns: &str, name: &str) {
    let api: Api<ServiceAccount> = Api::namespaced(bed.client.clone(), ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
}

/// A workload's TLS material as `weft agent` wrote it into a directory: its chain (leaf
/// first), its key, and the roots it trusts. Read as a file watcher reads: a key that does
/// not (yet) match the chain is a torn read, and the last good material stays in use.
#[derive(Clone)]
pub struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn rustls::sign::SigningKey>,
    roots: Arc<RootCertStore>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Material {
    /// Reads `dir`: `Err` names what is missing or does not parse or pair up.
    pub fn read(dir: &Path) -> Result<Material, String> {
        let text = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
        let (chain_pem, key_pem, roots_pem) = (text("cert-chain.pem")?, text("key.pem")?, text("root-cert.pem")?);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cert-chain.pem: {e}"))?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("key.pem: {e}"))?;
        let key = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| format!("key.pem: {e}"))?;
        rustls::sign::CertifiedKey::new(chain.clone(), key.clone())
            .keys_match()
            .map_err(|e| format!("torn read: {e}"))?;
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(&roots_pem) {
            roots
                .add(der.map_err(|e| format!("root-cert.pem: {e}"))?)
                .map_err(|e| format!("root-cert.pem: {e}"))?;
        }
        Ok(Material {
            chain,
            key,
            roots: Arc::new(roots),
        })
    }
}

/// Checks a server's chain against the roots and its SPIFFE ID against the one expected:
/// workload certificates carry a URI SAN only, which rustls's name check does not know.
#[derive(Debug)]
struct SpiffeServer {
    chain: Arc<rustls::client::WebPkiServerVerifier>,
    expected: String,
}

impl ServerCertVerifier for SpiffeServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name mismatch means the chain verified.
        match self
            .chain
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => match WorkloadId::of_certificate(end_entity.as_ref()).map(|i| i.uri()) {
                Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
                other => Err(rustls::Error::General(format!(
                    "the server is {other:?}, not {}",
                    self.expected
                ))),
            },
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// One mutual-TLS handshake between two workloads, in memory (no socket): `client` and
/// `server` each present their certificate and check the other's against their own roots,
/// as a data plane does; the client also checks the server is `server_id`.
pub fn mtls_handshake(client: &Material, server: &Material, server_id: &str) -> Result<(), String> {
    let p = provider();
    fn e(what: &'static str) -> impl Fn(rustls::Error) -> String {
        move |err| format!("{what}: {err}")
    }
    let client_verifier = WebPkiClientVerifier::builder_with_provider(server.roots.clone(), p.clone())
        .build()
        .map_err(|err| format!("server roots: {err}"))?;
    let server_config = ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(e("server"))?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            rustls::sign::CertifiedKey::new(server.chain.clone(), server.key.clone()),
        )));
    let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(client.roots.clone(), p.clone())
        .build()
        .map_err(|err| format!("client roots: {err}"))?;
    let client_config = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()
        .map_err(e("client"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServer {
            chain,
            expected: server_id.to_string(),
        }))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            rustls::sign::CertifiedKey::new(client.chain.clone(), client.key.clone()),
        )));
    let name = ServerName::try_from("workload").map_err(|err| err.to_string())?;
    let mut c = ClientConnection::new(Arc::new(client_config), name).map_err(e("client"))?;
    let mut s = ServerConnection::new(Arc::new(server_config)).map_err(e("server"))?;
    // Pump bytes both ways until both sides are done (a refusal surfaces as an error on
    // the side that checks, or as the alert it sends).
    for _ in 0..16 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).map_err(|err| err.to_string())?;
        }
        if !wire.is_empty() {
            s.read_tls(&mut wire.as_slice()).map_err(|err| err.to_string())?;
            s.process_new_packets().map_err(e("the server refused the client"))?;
        }
        let mut back = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut back).map_err(|err| err.to_string())?;
        }
        if !back.is_empty() {
            c.read_tls(&mut back.as_slice()).map_err(|err| err.to_string())?;
            c.process_new_packets().map_err(e("the client refused the server"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() && wire.is_empty() && back.is_empty() {
            return Ok(());
        }
    }
    Err("the handshake did not finish".to_string())
}

/// Runs `weft agent --once` against `address` (checking the control plane's certificate
/// for `server_name`, default the host); its stderr on failure.
pub fn agent_once(
    address: &str,
    server_name: Option<&str>,
    token: &Path,
    ca_file: &Path,
    out: &Path,
    metadata: &BTreeMap<&str, &str>,
) -> Result<(), String> {
    let mut cmd = Command::new(weft_bin());
    cmd.args(["agent", "--once", "--control-plane", address, "--node-id", "e2e"])
        .arg("--token-file")
        .arg(token)
        .arg("--ca-file")
        .arg(ca_file)
        .arg("--out")
        .arg(out);
    if let Some(name) = server_name {
        cmd.args(["--server-name", name]);
    }
    for (k, v) in metadata {
        cmd.args(["--metadata", &format!("{k}={v}")]);
    }
    let output = cmd.output().expect("run weft agent");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A `weft control-plane` whose TLS port signs with the issuer Secret the operator keeps
/// (or a test wrote) in its mesh namespace, listening on the host side of a test host (where
/// grpc-go clients in the test host reach it, and so do agents run by the test).
pub struct SecureControlPlane {
    /// The process.
    pub process: Process,
    /// The TLS port, `host:port`.
    pub address: String,
    /// Its `/ready` and `/metrics` port on 127.0.0.1.
    pub monitoring: u16,
    /// Its log.
    pub log: PathBuf,
}

/// Starts the control plane of `revision` for the mesh in `mesh_ns`, logging into `dir`,
/// with `extra` flags; its certificate also names [`HOST_ADDRESS`].
pub fn secure_control_plane(
    bed: &Bed,
    dir: &Path,
    revision: &str,
    mesh_ns: &str,
    extra: &[&str],
) -> SecureControlPlane {
    let (xds_port, secure_port, monitoring) = (
        free_port_on(HOST_ADDRESS),
        free_port_on(HOST_ADDRESS),
        free_port_on("127.0.0.1"),
    );
    let log = dir.join(format!("control-plane-{revision}.log"));
    let process = Process(
        Command::new(weft_bin())
            .args(["control-plane", "--revision", revision, "--debounce-ms", "20"])
            .arg("--kubeconfig")
            .arg(&bed.kubeconfig)
            .args(["--mesh-namespace", mesh_ns])
            .args(["--xds-address", &format!("{HOST_ADDRESS}:{xds_port}")])
            .args(["--monitoring-address", &format!("127.0.0.1:{monitoring}")])
            .args(["--ca-secret", mesh_ca::ISSUER_SECRET])
            .args(["--secure-address", &format!("{HOST_ADDRESS}:{secure_port}")])
            .args(["--tls-server-name", HOST_ADDRESS])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the control plane's log"))
            .spawn()
            .expect("start weft control-plane"),
    );
    SecureControlPlane {
        process,
        address: format!("{HOST_ADDRESS}:{secure_port}"),
        monitoring,
        log,
    }
}

impl SecureControlPlane {
    /// Waits until it is ready (its issuer loaded).
    pub async fn wait_ready(&self) {
        wait_for(
            "the control plane to be ready (issuer loaded)",
            crate::operator::TIMEOUT,
            || async {
                match crate::http_get(self.monitoring, "/ready") {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!(
                        "{other:?}\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    )),
                }
            },
        )
        .await;
    }
}
