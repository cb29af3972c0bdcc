//! Helpers for tests with several clusters: credentials made by `weft remote-secret`, a
//! primary's control plane as a process on the test host's address, the RemoteCluster
//! status entry it writes, and what its EDS says.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Node, address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;

use crate::testhost::HOST_ADDRESS;
use crate::{Bed, weft_bin};

/// The EDS type URL.
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Runs `weft remote-secret --kubeconfig <remote> ARGS`; its standard output (the Secret
/// and RemoteCluster for the primary).
pub fn remote_secret(remote: &Path, args: &[&str]) -> String {
    let out = Command::new(weft_bin())
        .arg("remote-secret")
        .arg("--kubeconfig")
        .arg(remote)
        .args(args)
        .output()
        .expect("run weft remote-secret");
    assert!(
        out.status.success(),
        "weft remote-secret failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A `weft control-plane` process whose ADS listens on the test host's address, killed
/// when dropped.
pub struct Primary {
    child: Child,
    /// Its ADS port on [`HOST_ADDRESS`].
    pub xds: u16,
    /// Its `/ready` and `/metrics` port on 127.0.0.1.
    pub monitoring: u16,
    /// Its log file.
    pub log: PathBuf,
}

impl Drop for Primary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(address: &str) -> u16 {
    std::net::TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Primary {
    /// Starts the control plane of `revision` on `bed` with mesh config `mesh_config` (the
    /// file's text) and extra `flags`, 50 ms debounce.
    pub fn start(bed: &Bed, revision: &str, mesh_config: &str, flags: &[&str]) -> Primary {
        let dir = bed.kubeconfig.parent().expect("cluster dir");
        let config = dir.join(format!("mesh-{revision}.yaml"));
        std::fs::write(&config, mesh_config).expect("write mesh config");
        let log = dir.join(format!("control-plane-{revision}.log"));
        let (xds, monitoring) = (free_port(HOST_ADDRESS), free_port("127.0.0.1"));
        let child = Command::new(weft_bin())
            .args(["control-plane", "--revision", revision, "--debounce-ms", "50"])
            .arg("--kubeconfig")
            .arg(&bed.kubeconfig)
            .arg("--mesh-config")
            .arg(&config)
            .args(["--xds-address", &format!("{HOST_ADDRESS}:{xds}")])
            .args(["--monitoring-address", &format!("127.0.0.1:{monitoring}")])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("open log"),
            )
            .spawn()
            .expect("start weft control-plane");
        Primary {
            child,
            xds,
            monitoring,
            log,
        }
    }

    /// Whether the process is still the one started (it has not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/ready`: 200, or what it answered.
    pub fn ready(&self) -> Result<(), String> {
        match crate::http_get(self.monitoring, "/ready")? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// The `/metrics` lines starting with `prefix`.
    pub fn metrics(&self, prefix: &str) -> Vec<String> {
        let (_, body) = crate::http_get(self.monitoring, "/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .map(String::from)
            .collect()
    }

    /// The endpoints of EDS cluster `cluster` as the control plane serves them now, by
    /// locality sub-zone: (sub_zone, address).
    pub async fn eds(&self, revision: &str, cluster: &str) -> Result<Vec<(String, String)>, String> {
        let url = format!("http://{HOST_ADDRESS}:{}", self.xds);
        let mut client = AggregatedDiscoveryServiceClient::connect(url)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(DiscoveryRequest {
            node: Some(node(revision)),
            type_url: EDS.into(),
            resource_names: vec![cluster.to_string()],
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut stream = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("stream: {e}"))?
            .into_inner();
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .map_err(|_| "no EDS response in 10 s".to_string())?
            .map_err(|e| format!("EDS: {e}"))?
            .ok_or("the stream ended")?;
        let mut out = Vec::new();
        for r in &response.resources {
            let cla = ClusterLoadAssignment::decode(r.value.as_slice()).map_err(|e| e.to_string())?;
            for group in &cla.endpoints {
                let sub_zone = group.locality.as_ref().map(|l| l.sub_zone.clone()).unwrap_or_default();
                for e in &group.lb_endpoints {
                    let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                        continue;
                    };
                    let ip = match ep.address.as_ref().and_then(|a| a.address.as_ref()) {
                        Some(address::Address::SocketAddress(sa)) => sa.address.clone(),
                        other => format!("{other:?}"),
                    };
                    out.push((sub_zone.clone(), ip));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A node naming its revision.
fn node(revision: &str) -> Node {
    Node {
        id: format!("e2e-mc-{revision}"),
        metadata: Some(Struct {
            fields: [(
                "REVISION".to_string(),
                Value {
                    kind: Some(Kind::StringValue(revision.into())),
                },
            )]
            .into(),
        }),
        ..Default::default()
    }
}

/// RemoteClusters, untyped (so a test sees exactly what the API server stores).
pub fn remote_clusters(bed: &Bed, namespace: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("weft.dev", "v1alpha1", "RemoteCluster"),
        "remoteclusters",
    );
    Api::namespaced_with(bed.client.clone(), namespace, &ar)
}

/// The `status.controlPlanes` entry of `revision` in RemoteCluster `name`, if any.
pub async fn status_entry(api: &Api<DynamicObject>, name: &str, revision: &str) -> Result<serde_json::Value, String> {
    let rc = api.get(name).await.map_err(|e| e.to_string())?;
    let entries = rc.data["status"]["controlPlanes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    entries
        .into_iter()
        .find(|e| e["revision"] == revision)
        .ok_or_else(|| format!("no entry for {revision}: status {}", rc.data["status"]))
}

/// The east-west gateway's Service as the operator renders it for MeshGateway `eastwest` of
/// `mesh` in `ns` (type eastwest, network `network`), without its owner (no MeshGateway
/// exists in these tests).
pub fn eastwest_service(ns: &str, mesh: &str, network: &str) -> Service {
    let gw: weft::api::MeshGateway = serde_json::from_value(serde_json::json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
        "metadata": {"name": "eastwest", "namespace": ns, "uid": "00000000-0000-0000-0000-0000000000ee"},
        "spec": {"mesh": mesh, "type": "eastwest", "network": network}
    }))
    .expect("a MeshGateway");
    let table = weft::versions::VersionTable::builtin();
    let objects = weft::render::render_gateway(&weft::render::GatewayInput {
        gateway: &gw,
        mesh,
        revision: mesh,
        control_plane_namespace: ns,
        external_control_plane: None,
        cluster: "e2e",
        version: table.get("1.0.0").expect("a supported version"),
        mesh_network: None,
    })
    .expect("the gateway renders");
    let m = objects
        .iter()
        .find(|m| m.kind == weft::render::OwnedKind::Service)
        .expect("a Service");
    let mut svc: Service = serde_json::from_value(m.object.clone()).expect("a Service");
    svc.metadata.owner_references = None;
    svc
}

/// Sets the load-balancer addresses (`status.loadBalancer.ingress`) of `<ns>/eastwest`.
pub async fn set_gateway_address(bed: &Bed, ns: &str, ingress: serde_json::Value) {
    let status = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
    Api::<Service>::namespaced(bed.client.clone(), ns)
        .patch_status("eastwest", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("write the gateway's load-balancer status");
}

/// Creates namespace `name` with `labels` (nothing when it exists).
pub async fn namespace(bed: &Bed, name: &str, labels: serde_json::Value) {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    match Api::<Namespace>::all(bed.client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// `<ns>/greeter` with one ready endpoint at `address`.
pub async fn greeter(bed: &Bed, ns: &str, address: &str) {
    namespace(bed, ns, serde_json::json!({})).await;
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "greeter"},
        "spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(bed.client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("service greeter");
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "greeter-1", "labels": {"kubernetes.io/service-name": "greeter"}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}, "zone": "zone-a"}]
    }))
    .unwrap();
    Api::<EndpointSlice>::namespaced(bed.client.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await
        .expect("endpointslice greeter-1");
}
