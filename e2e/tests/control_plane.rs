//! `weft control-plane` against the test bed: what it serves follows the cluster. (Our own
//! ADS client reads the configuration here; nothing connects to the endpoint addresses.)

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_e2e::{Bed, http_get, wait_for, weft_bin};

const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

struct ControlPlane {
    child: Child,
    xds: u16,
    monitoring: u16,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(bed: &Bed, revision: &str) -> ControlPlane {
    let (xds, monitoring) = (free_port(), free_port());
    let log = bed
        .kubeconfig
        .parent()
        .unwrap()
        .join(format!("control-plane-{revision}.log"));
    let child = Command::new(weft_bin())
        .args(["control-plane", "--revision", revision, "--debounce-ms", "50"])
        .arg("--kubeconfig")
        .arg(&bed.kubeconfig)
        .args(["--xds-address", &format!("127.0.0.1:{xds}")])
        .args(["--monitoring-address", &format!("127.0.0.1:{monitoring}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start weft control-plane");
    ControlPlane { child, xds, monitoring }
}

fn node(revision: &str) -> Node {
    Node {
        id: "e2e".into(),
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

async fn stream(port: u16) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let s = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, s)
}

async fn next(rx: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(20), rx.message())
        .await
        .expect("a response in time")
        .unwrap()
        .unwrap()
}

fn addresses(resp: &DiscoveryResponse) -> Vec<String> {
    let mut out = Vec::new();
    for r in &resp.resources {
        let cla = ClusterLoadAssignment::decode(r.value.as_slice()).unwrap();
        let text = format!("{cla:?}");
        for a in ["198.51.100.10", "198.51.100.11", "198.51.100.12"] {
            if text.contains(a) {
                out.push(a.to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn serves_services_and_endpoints_from_the_cluster_and_follows_changes() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("xds").await;
    let cp = start(&bed, "cp-test");
    wait_for("the control plane to be ready", Duration::from_secs(30), || async {
        match http_get(cp.monitoring, "/ready") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let svcs: Api<Service> = Api::namespaced(bed.client.clone(), &ns.name);
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "echo"},
        "spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.expect("create service");
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), &ns.name);
    let slice = |addrs: &[(&str, bool)]| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
            "endpoints": addrs.iter().map(|(a, ready)| json!({"addresses": [a], "conditions": {"ready": ready}, "zone": "zone-a"})).collect::<Vec<_>>()
        }))
        .unwrap()
    };
    slices
        .create(
            &PostParams::default(),
            &slice(&[
                ("198.51.100.10", true),
                ("198.51.100.11", true),
                ("198.51.100.12", false),
            ]),
        )
        .await
        .expect("create endpointslice");

    let listener = format!("echo.{}.svc.cluster.local:50051", ns.name);
    let cluster = format!("outbound|50051||echo.{}.svc.cluster.local", ns.name);
    let (tx, mut rx) = stream(cp.xds).await;
    tx.send(DiscoveryRequest {
        node: Some(node("cp-test")),
        type_url: LDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The first answer may predate the Service; wait until the listener is served.
    let mut lds = next(&mut rx).await;
    loop {
        let names: Vec<String> = lds
            .resources
            .iter()
            .map(|a| {
                envoy_types::pb::envoy::config::listener::v3::Listener::decode(a.value.as_slice())
                    .unwrap()
                    .name
            })
            .collect();
        tx.send(DiscoveryRequest {
            type_url: LDS.into(),
            version_info: lds.version_info.clone(),
            response_nonce: lds.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        if names.contains(&listener) {
            break;
        }
        lds = next(&mut rx).await;
    }

    tx.send(DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec![cluster.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut eds = next(&mut rx).await;
    while eds.type_url != EDS || addresses(&eds).is_empty() {
        eds = next(&mut rx).await;
    }
    assert_eq!(
        addresses(&eds),
        ["198.51.100.10", "198.51.100.11"],
        "ready endpoints only"
    );
    tx.send(DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec![cluster.clone()],
        version_info: eds.version_info.clone(),
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // An endpoint goes away: the change is pushed.
    slices
        .patch(
            "echo-1",
            &PatchParams::apply("weft-e2e").force(),
            &Patch::Apply(&slice(&[("198.51.100.10", true)])),
        )
        .await
        .expect("update endpointslice");
    let mut update = next(&mut rx).await;
    while update.type_url != EDS {
        update = next(&mut rx).await;
    }
    assert_eq!(addresses(&update), ["198.51.100.10"]);

    // A client of another revision is refused.
    let (tx2, mut rx2) = stream(cp.xds).await;
    tx2.send(DiscoveryRequest {
        node: Some(node("some-other-rev")),
        type_url: LDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), rx2.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("serves revision cp-test"), "{}", err.message());

    let (_, metrics) = http_get(cp.monitoring, "/metrics").unwrap();
    for name in [
        "weft_xds_streams",
        "weft_xds_pushes_total",
        "weft_xds_push_latency_seconds",
        "weft_xds_resources",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    ns.delete().await;
}
