//! `weft config-dump`: what a control plane serves one Envoy, fetched the way Envoy itself
//! subscribes (LDS and CDS wildcard, then RDS and EDS by the names those ask for, ACKing
//! every response), and with `--check` judged by [`crate::envoy_check`]. The client says
//! who it is with the node of an Envoy bootstrap (the node proxies' ConfigMap, a gateway's)
//! or with flags; over the TLS port it connects as the bootstrap does, with the agent's
//! SDS files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::envoy_check::{Finding, Served};
use crate::xds::serve::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// Why a dump could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bootstrap could not be read.
    #[error("cannot read the bootstrap {path}: {message}")]
    Bootstrap {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// No connection.
    #[error("cannot connect to the control plane at {address}: {source}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The control plane refused or ended the stream.
    #[error("the control plane ended the stream: {0}")]
    Stream(tonic::Status),
    /// Nothing came in time.
    #[error("the control plane sent no {0} within the timeout")]
    Timeout(&'static str),
}

/// The node of an Envoy bootstrap (JSON): its id and string metadata.
pub fn node_from_bootstrap(path: &str, text: &str) -> Result<Node, Error> {
    let bad = |message: String| Error::Bootstrap {
        path: path.to_string(),
        message,
    };
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let node = doc.get("node").ok_or_else(|| bad("it has no node".to_string()))?;
    let metadata: BTreeMap<String, String> = node
        .get("metadata")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let id = node.get("id").and_then(|v| v.as_str()).unwrap_or("weft-config-dump");
    Ok(node_of(id, &metadata))
}

/// A node with this id and string metadata.
pub fn node_of(id: &str, metadata: &BTreeMap<String, String>) -> Node {
    Node {
        id: id.to_string(),
        metadata: Some(Struct {
            fields: metadata
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value {
                            kind: Some(Kind::StringValue(v.clone())),
                        },
                    )
                })
                .collect(),
        }),
        ..Default::default()
    }
}

/// What one client was served, as received.
#[derive(Clone, Debug, Default)]
pub struct Dump {
    /// Every resource by type URL and name.
    pub resources: BTreeMap<&'static str, BTreeMap<String, Any>>,
}

impl Dump {
    /// Every resource, decoded, and what did not decode.
    pub fn served(&self) -> (Served, Vec<Finding>) {
        Served::decode(self.resources.values().flat_map(|m| m.values()))
    }

    /// Every resource, in type order.
    pub fn all(&self) -> impl Iterator<Item = &Any> {
        self.resources.values().flat_map(|m| m.values())
    }
}

/// A resource's name, read as Envoy would for these four types.
fn name_of(any: &Any) -> String {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use prost::Message;
    let v = &any.value[..];
    match any.type_url.as_str() {
        LISTENER => Listener::decode(v).map(|r| r.name).unwrap_or_default(),
        ROUTE => RouteConfiguration::decode(v).map(|r| r.name).unwrap_or_default(),
        CLUSTER => Cluster::decode(v).map(|r| r.name).unwrap_or_default(),
        ENDPOINT => ClusterLoadAssignment::decode(v)
            .map(|r| r.cluster_name)
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Subscribes at `address` (`http://host:port`) as an Envoy with `node` would and returns
/// what it holds once every subscribed type has answered (or `timeout` has passed, so a
/// name the control plane never answers shows up as dangling).
pub async fn fetch(address: &str, node: Node, timeout: Duration) -> Result<Dump, Error> {
    fetch_over(address, None, node, timeout).await
}

/// The TLS an Envoy bootstrap's `xds` cluster uses: the name the control plane's
/// certificate must carry, and the certificate, key and roots of the SDS files it names.
#[derive(Clone)]
pub struct Tls {
    /// The SNI and the name checked in the control plane's certificate.
    pub server_name: String,
    /// The client certificate chain (PEM).
    pub cert_pem: String,
    /// Its key (PEM). Never shown.
    pub key_pem: String,
    /// The roots the control plane's certificate must chain to (PEM).
    pub roots_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The TLS of the bootstrap's `xds` cluster, read from the SDS files its
/// `path_config_source`s name (from `identity_dir` instead of their own directory, when
/// given: the agent's output outside the pod). `None`: the cluster is plaintext.
pub fn tls_from_bootstrap(path: &str, text: &str, identity_dir: Option<&Path>) -> Result<Option<Tls>, Error> {
    let bad = |message: String| Error::Bootstrap {
        path: path.to_string(),
        message,
    };
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let xds = doc["static_resources"]["clusters"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "xds"))
        .ok_or_else(|| bad("it has no xds cluster".to_string()))?;
    let Some(socket) = xds.get("transport_socket") else {
        return Ok(None);
    };
    let tls = &socket["typed_config"];
    let context = &tls["common_tls_context"];
    let sds_file = |config: &serde_json::Value| -> Result<serde_json::Value, Error> {
        let named = config["sds_config"]["path_config_source"]["path"]
            .as_str()
            .ok_or_else(|| bad("an SDS config without path_config_source.path".to_string()))?;
        let file = match identity_dir {
            Some(dir) => dir.join(Path::new(named).file_name().unwrap_or_default()),
            None => PathBuf::from(named),
        };
        let text = std::fs::read_to_string(&file).map_err(|e| bad(format!("{}: {e}", file.display())))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", file.display())))?;
        Ok(doc["resources"][0].clone())
    };
    let cert = sds_file(&context["tls_certificate_sds_secret_configs"][0])?;
    let roots = sds_file(&context["combined_validation_context"]["validation_context_sds_secret_config"])?;
    let text = |v: &serde_json::Value, what: &str| {
        v["inline_string"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| bad(format!("the SDS file has no inline {what}")))
    };
    Ok(Some(Tls {
        server_name: tls["sni"].as_str().unwrap_or_default().to_string(),
        cert_pem: text(&cert["tls_certificate"]["certificate_chain"], "certificate_chain")?,
        key_pem: text(&cert["tls_certificate"]["private_key"], "private_key")?,
        roots_pem: text(&roots["validation_context"]["trusted_ca"], "trusted_ca")?,
    }))
}

/// Like [`fetch`], over TLS when `tls` says so (`address` is then `https://host:port`).
pub async fn fetch_over(address: &str, tls: Option<&Tls>, node: Node, timeout: Duration) -> Result<Dump, Error> {
    let connect = |source| Error::Connect {
        address: address.to_string(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(address.to_string()).map_err(connect)?;
    if let Some(tls) = tls {
        let config = ClientTlsConfig::new()
            .domain_name(tls.server_name.clone())
            .ca_certificate(Certificate::from_pem(&tls.roots_pem))
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        endpoint = endpoint.tls_config(config).map_err(connect)?;
    }
    let channel = endpoint.connect().await.map_err(connect)?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let request = |type_url: &str, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names: names,
        version_info: version,
        response_nonce: nonce,
        ..Default::default()
    };
    let first = DiscoveryRequest {
        node: Some(node),
        ..request(LISTENER, vec![], String::new(), String::new())
    };
    // The channel holds 16 and at most 4 requests wait at once: sends never block here.
    let _ = tx.send(first).await;
    let _ = tx.send(request(CLUSTER, vec![], String::new(), String::new())).await;
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(Error::Stream)?
        .into_inner();
    let mut dump = Dump::default();
    // Per type: the names asked for (None: wildcard) and whether the answer to the latest
    // request has come.
    let mut asked: BTreeMap<&'static str, (Option<BTreeSet<String>>, bool)> =
        BTreeMap::from([(LISTENER, (None, false)), (CLUSTER, (None, false))]);
    let mut nonces: BTreeMap<&'static str, (String, String)> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if asked.values().all(|(_, answered)| *answered) {
            return Ok(dump);
        }
        let next = tokio::time::timeout_at(deadline, stream.message()).await;
        let response = match next {
            Err(_) => return Ok(dump),
            Ok(Err(status)) => return Err(Error::Stream(status)),
            Ok(Ok(None)) => return Err(Error::Stream(tonic::Status::unavailable("the stream closed"))),
            Ok(Ok(Some(r))) => r,
        };
        let Some(type_url) = [LISTENER, CLUSTER, ROUTE, ENDPOINT]
            .into_iter()
            .find(|t| *t == response.type_url)
        else {
            continue;
        };
        let items: BTreeMap<String, Any> = response.resources.into_iter().map(|a| (name_of(&a), a)).collect();
        dump.resources.insert(type_url, items);
        nonces.insert(type_url, (response.version_info.clone(), response.nonce.clone()));
        let names = asked.get(type_url).and_then(|(n, _)| n.clone());
        if let Some(entry) = asked.get_mut(type_url) {
            entry.1 = true;
        }
        // ACK, for the same names.
        let ack = request(
            type_url,
            names.map(|n| n.into_iter().collect()).unwrap_or_default(),
            response.version_info,
            response.nonce,
        );
        let _ = tx.send(ack).await;
        // Follow what the listeners and clusters ask for, as Envoy does: only the type that
        // just arrived can change that, so only it is decoded.
        let (served, _) = Served::decode(dump.resources.get(type_url).into_iter().flat_map(|m| m.values()));
        let follow = match type_url {
            LISTENER => Some((ROUTE, served.rds_names())),
            CLUSTER => Some((ENDPOINT, served.eds_names())),
            _ => None,
        };
        if let Some((dependent, wanted)) = follow {
            let current = asked.get(dependent).and_then(|(n, _)| n.clone());
            if current.as_ref() != Some(&wanted) {
                if wanted.is_empty() && current.is_none() {
                    // Nothing to ask for.
                    continue;
                }
                let (version, nonce) = nonces.get(dependent).cloned().unwrap_or_default();
                let _ = tx
                    .send(request(dependent, wanted.iter().cloned().collect(), version, nonce))
                    .await;
                let answered = wanted.is_empty();
                asked.insert(dependent, (Some(wanted), answered));
            }
        }
    }
}

/// Fetches like [`fetch`] and fails with [`Error::Timeout`] when LDS or CDS never came.
pub async fn fetch_complete(address: &str, node: Node, timeout: Duration) -> Result<Dump, Error> {
    fetch_complete_over(address, None, node, timeout).await
}

/// Like [`fetch_complete`], over TLS when `tls` says so.
pub async fn fetch_complete_over(
    address: &str,
    tls: Option<&Tls>,
    node: Node,
    timeout: Duration,
) -> Result<Dump, Error> {
    let dump = fetch_over(address, tls, node, timeout).await?;
    for (t, what) in [(LISTENER, "listeners"), (CLUSTER, "clusters")] {
        if !dump.resources.contains_key(t) {
            return Err(Error::Timeout(what));
        }
    }
    Ok(dump)
}
