//! `make bench-ca`: the certificate service's figures on a release build, against the test
//! bed's real API server. 1000 callers at once, each with its own ServiceAccount token
//! (so the first round costs a TokenReview per caller, as a cluster's first start does), ask
//! `weft control-plane`'s TLS port for a certificate; then the same callers again (their
//! answers cached). Prints certificates per second, p50/p99 latency of each round, and the
//! control plane's resident memory. Then the cost of TLS for xDS: a fresh control plane each
//! time, 2000 ADS streams (20 connections of 100, CDS wildcard, 50 services) on the
//! plaintext port, then on the TLS port with a workload certificate (mTLS): RSS with them.
//!
//! Usage: bench-ca CLUSTER   (WEFT_BIN: the weft binary; WEFT_BENCH_CALLERS: 1000;
//! WEFT_BENCH_STREAMS: 2000)

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use weft::identity::csr::{CREATE_PATH, IstioCertificateRequest, IstioCertificateResponse};
use weft::identity::{agent, ca, mesh_ca};
use weft_e2e::control_plane::free_port;
use weft_e2e::{Bed, wait_for, weft_bin};

const REVISION: &str = "bench-ca";
/// HTTP/2 connections the callers share (each multiplexes many calls).
const CHANNELS: usize = 16;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// One round: every caller asks once, all at once. Returns (wall time, sorted latencies, failures).
async fn round(channels: &[Channel], requests: &Arc<Vec<(String, String)>>) -> (Duration, Vec<Duration>, usize) {
    let started = Instant::now();
    let calls = requests.iter().enumerate().map(|(i, (token, csr))| {
        let channel = channels[i % channels.len()].clone();
        let (token, csr) = (token.clone(), csr.clone());
        async move {
            let t = Instant::now();
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.map_err(|e| e.to_string())?;
            let mut req = tonic::Request::new(IstioCertificateRequest {
                csr,
                validity_duration: 0,
                metadata: None,
            });
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().map_err(|_| "token".to_string())?,
            );
            let codec = tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_PATH);
            grpc.unary(req, path, codec)
                .await
                .map_err(|s| s.message().to_string())?;
            Ok::<Duration, String>(t.elapsed())
        }
    });
    let results = join_all(calls).await;
    let wall = started.elapsed();
    let mut failures = 0;
    let mut latencies = Vec::new();
    for r in results {
        match r {
            Ok(d) => latencies.push(d),
            Err(e) => {
                if failures == 0 {
                    eprintln!("a call failed: {e}");
                }
                failures += 1;
            }
        }
    }
    latencies.sort();
    (wall, latencies, failures)
}

/// Creates ServiceAccount `name` and returns a token for it (audience `weft-ca`).
async fn account_token(accounts: &Api<ServiceAccount>, name: &str) -> String {
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &sa)
        .await
        .expect("create ServiceAccount");
    let tr = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["weft-ca".into()],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer: TokenRequest = accounts
        .create_subresource("token", name, &PostParams::default(), &tr)
        .await
        .expect("TokenRequest");
    answer.status.map(|s| s.token).unwrap_or_default()
}

/// Prints one round's figures.
fn report(label: &str, wall: Duration, latencies: &[Duration], failed: usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  {label}: {:.0} certs/s, p50 {:.1} ms, p99 {:.1} ms, {failed} failed",
        latencies.len() as f64 / wall.as_secs_f64(),
        ms(percentile(latencies, 0.5)),
        ms(percentile(latencies, 0.99)),
    );
}

#[tokio::main]
async fn main() {
    let cluster = std::env::args().nth(1).unwrap_or_else(|| "weft-bench".into());
    let callers: usize = std::env::var("WEFT_BENCH_CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let bed = Bed::connect_to(&cluster).await;
    let ns_api: Api<Namespace> = Api::all(bed.client.clone());
    let (mesh_ns, app_ns) = ("bench-ca-mesh", "bench-ca-apps");
    for (name, label) in [(mesh_ns, None), (app_ns, Some(REVISION))] {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: label.map(|l| [("weft.dev/rev".to_string(), l.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        ns_api
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }

    // The issuer, as the operator writes it.
    let now = std::time::SystemTime::now();
    let root = ca::new_root("cluster.local", 0, now).unwrap();
    let signing = ca::new_issuer(&root, "cluster.local", now).unwrap();
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), mesh_ns);
    let issuer = weft_e2e::identity::issuer_secret(&signing);
    secrets
        .create(&PostParams::default(), &issuer)
        .await
        .expect("create the issuer");

    // One ServiceAccount and token per caller, and a CSR each (made before the clock runs:
    // key generation is the caller's cost).
    let accounts: Api<ServiceAccount> = Api::namespaced(bed.client.clone(), app_ns);
    let prep = Instant::now();
    let mut requests = Vec::with_capacity(callers);
    for chunk in (0..callers).collect::<Vec<_>>().chunks(50) {
        let made = join_all(chunk.iter().map(|i| {
            let accounts = accounts.clone();
            async move {
                let token = account_token(&accounts, &format!("caller-{i}")).await;
                let (_, csr) = agent::new_csr().unwrap();
                (token, csr)
            }
        }))
        .await;
        requests.extend(made);
    }
    eprintln!(
        "prepared {callers} ServiceAccounts, tokens and CSRs in {:.1}s",
        prep.elapsed().as_secs_f64()
    );

    let (port, monitoring) = (free_port(), free_port());
    let log = bed.kubeconfig.with_file_name("control-plane-bench-ca.log");
    let mut cp = control_plane(&bed, mesh_ns, free_port(), port, monitoring, &log).await;
    let idle_rss = rss_kib(cp.id());

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&root.cert_pem))
        .domain_name("127.0.0.1");
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect to the TLS port");
        channels.push(channel);
    }
    let requests = Arc::new(requests);
    let (cold_wall, cold, cold_failed) = round(&channels, &requests).await;
    let cold_rss = rss_kib(cp.id());
    let (warm_wall, warm, warm_failed) = round(&channels, &requests).await;
    let warm_rss = rss_kib(cp.id());
    println!(
        "certificate service: {callers} callers at once, {callers} distinct tokens, {CHANNELS} TLS connections, release build, 2 cores"
    );
    report("first round (a TokenReview each)", cold_wall, &cold, cold_failed);
    report("second round (answers cached)   ", warm_wall, &warm, warm_failed);
    println!(
        "  control plane RSS: {} MiB ready, {} MiB after the first round, {} MiB after the second",
        idle_rss / 1024,
        cold_rss / 1024,
        warm_rss / 1024
    );
    // A workload certificate for the xDS streams over TLS, while this control plane runs
    // (an identity of its own: the callers' are rate-limited after two rounds).
    let token = account_token(&accounts, "bench-streams").await;
    let identity = workload_identity(&channels[0], &token).await;
    drop(channels);
    let _ = cp.kill();
    let _ = cp.wait();
    if cold_failed + warm_failed > 0 {
        std::process::exit(1);
    }

    // xDS streams, plaintext then TLS, each on a fresh control plane.
    let streams: usize = std::env::var("WEFT_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    services(&bed, app_ns, 50).await;
    let mut figures = Vec::new();
    for tls in [false, true] {
        let (plain_port, secure_port, monitoring) = (free_port(), free_port(), free_port());
        let mut cp = control_plane(&bed, mesh_ns, plain_port, secure_port, monitoring, &log).await;
        let ready = rss_kib(cp.id());
        let endpoint = if tls {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&root.cert_pem))
                .domain_name("127.0.0.1")
                .identity(Identity::from_pem(&identity.0, &identity.1));
            Endpoint::from_shared(format!("https://127.0.0.1:{secure_port}"))
                .unwrap()
                .tls_config(config)
                .unwrap()
        } else {
            Endpoint::from_shared(format!("http://127.0.0.1:{plain_port}")).unwrap()
        };
        let started = Instant::now();
        let held = open_streams(&endpoint, streams, app_ns).await;
        let opened = started.elapsed();
        let with = rss_kib(cp.id());
        figures.push((tls, ready, with, opened));
        drop(held);
        let _ = cp.kill();
        let _ = cp.wait();
    }
    println!(
        "xDS streams: {streams} ADS streams on {STREAM_CONNECTIONS} connections, CDS wildcard over 50 services, a fresh control plane each"
    );
    for (tls, ready, with, opened) in &figures {
        println!(
            "  {}: RSS {} MiB ready, {} MiB with the streams (all answered in {:.1}s)",
            if *tls {
                "TLS (mTLS, workload certificate)"
            } else {
                "plaintext                       "
            },
            ready / 1024,
            with / 1024,
            opened.as_secs_f64()
        );
    }
    if let [(_, _, plain, _), (_, _, tls, _)] = figures.as_slice() {
        println!(
            "  TLS over plaintext: {:+.0} %",
            (*tls as f64 / *plain as f64 - 1.0) * 100.0
        );
    }
}

/// Starts `weft control-plane` for the mesh in `mesh_ns` (plaintext xDS, TLS port and
/// monitoring on those loopback ports) and waits until it is ready.
async fn control_plane(
    bed: &Bed,
    mesh_ns: &str,
    plain: u16,
    secure: u16,
    monitoring: u16,
    log: &std::path::Path,
) -> std::process::Child {
    let cp = Command::new(weft_bin())
        .args(["control-plane", "--revision", REVISION, "--mesh-namespace", mesh_ns])
        .arg("--kubeconfig")
        .arg(&bed.kubeconfig)
        .args(["--xds-address", &format!("127.0.0.1:{plain}")])
        .args(["--monitoring-address", &format!("127.0.0.1:{monitoring}")])
        .args(["--ca-secret", mesh_ca::ISSUER_SECRET])
        .args(["--secure-address", &format!("127.0.0.1:{secure}")])
        .args(["--tls-server-name", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("the control plane's log"))
        .spawn()
        .expect("start weft control-plane");
    wait_for("the control plane to be ready", Duration::from_secs(60), || async {
        match weft_e2e::http_get(monitoring, "/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    cp
}

/// Connections the xDS streams share.
const STREAM_CONNECTIONS: usize = 20;

/// `n` Services of `ns` with an endpoint each, for the streams to be served.
async fn services(bed: &Bed, ns: &str, n: usize) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let (svcs, slices): (Api<Service>, Api<EndpointSlice>) = (
        Api::namespaced(bed.client.clone(), ns),
        Api::namespaced(bed.client.clone(), ns),
    );
    for i in 0..n {
        let name = format!("svc-{i}");
        let svc = serde_json::json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "grpc", "port": 8080}]}});
        svcs.create(&PostParams::default(), &serde_json::from_value(svc).unwrap())
            .await
            .expect("create Service");
        let slice = serde_json::json!({
            "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [format!("10.0.{}.{}", i / 250, i % 250 + 1)], "conditions": {"ready": true}}]
        });
        slices
            .create(&PostParams::default(), &serde_json::from_value(slice).unwrap())
            .await
            .expect("create EndpointSlice");
    }
}

/// A workload certificate for the first caller: (chain, key).
async fn workload_identity(channel: &Channel, token: &str) -> (String, String) {
    let (key, csr) = agent::new_csr().unwrap();
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the certificate service");
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 0,
        metadata: None,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let codec = tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_PATH);
    let answer = grpc.unary(req, path, codec).await.expect("a certificate");
    (answer.into_inner().cert_chain.concat(), key)
}

/// Opens `n` ADS streams at `endpoint` as clients of namespace `ns`, each subscribing to
/// every cluster, and returns them once each has its first answer.
async fn open_streams(endpoint: &Endpoint, n: usize, ns: &str) -> Vec<impl Send> {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let mut connections = Vec::new();
    for _ in 0..STREAM_CONNECTIONS {
        connections.push(endpoint.connect().await.expect("connect for xDS"));
    }
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    join_all((0..n).map(|i| {
        let channel = connections[i % connections.len()].clone();
        let node = Node {
            id: format!("bench-{i}"),
            metadata: Some(Struct {
                fields: [
                    ("NAMESPACE".to_string(), text(ns)),
                    ("REVISION".to_string(), text(REVISION)),
                ]
                .into(),
            }),
            ..Default::default()
        };
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(DiscoveryRequest {
                node: Some(node),
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                ..Default::default()
            })
            .await
            .expect("queue the request");
            let mut client = AggregatedDiscoveryServiceClient::new(channel);
            let mut stream = client
                .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("open an ADS stream")
                .into_inner();
            let first = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await
                .expect("an answer in time")
                .expect("an answer, not an error")
                .expect("the stream open");
            assert!(!first.resources.is_empty(), "the clusters");
            (tx, stream)
        }
    }))
    .await
}
