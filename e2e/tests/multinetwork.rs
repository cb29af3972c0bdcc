//! Multi-network (split-horizon EDS), one cluster: `weft control-plane` on network net-a
//! serves a grpcio client on net-a the backend's own address, and a client claiming
//! NETWORK=net-b the address of net-a's east-west gateway instead. No Envoy runs here: a
//! stand-in "gateway" (a backend answering with its own name) listens on the gateway's
//! load-balancer address, so a call that lands there says so. Without the gateway's
//! load-balancer address, net-b gets no endpoints and the control plane's metric says how
//! many endpoints net-a has that other networks cannot reach.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use weft::api::mesh_gateway::MeshGateway;
use weft_e2e::grpc_clients::{self, backend, call};
use weft_e2e::multicluster::{Primary, eastwest_service, set_gateway_address};
use weft_e2e::testhost::{HOST_ADDRESS, Proc, TestHost};
use weft_e2e::{Bed, wait_for};

const REVISION: &str = "mn-test";
const BACKEND: &str = "198.51.100.10";
const GATEWAY: &str = "198.51.100.30";

/// A grpcio xDS client of greeter whose node metadata says `extra` (e.g. NETWORK).
fn client(bed: &Bed, host: &TestHost, xds_port: u16, ns: &str, id: &str, extra: Value) -> Proc {
    let mut metadata = json!({"REVISION": REVISION, "NAMESPACE": ns, "ROLE": "proxyless"});
    for (k, v) in extra.as_object().unwrap() {
        metadata[k] = v.clone();
    }
    grpc_clients::client(
        host,
        bed.kubeconfig.parent().unwrap(),
        &format!("{HOST_ADDRESS}:{xds_port}"),
        &format!("mn-{id}"),
        metadata,
        &format!("xds:///greeter.{ns}.svc.cluster.local:50051"),
    )
}

/// The addresses the client holds for greeter's cluster (from its own CSDS view).
fn eds(client: &mut Proc, ns: &str) -> Option<Vec<String>> {
    grpc_clients::eds(client, &format!("outbound|50051||greeter.{ns}.svc.cluster.local"))
}

/// One sample of the control plane's metrics (0 when the series is absent).
fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = weft_e2e::http_get(port, "/metrics").expect("monitoring port");
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn other_networks_reach_endpoints_through_the_east_west_gateway() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("mn").await;
    let host = TestHost::create();
    host.add_address(BACKEND);
    host.add_address(GATEWAY);
    // Cluster `a` on network `net-a`; the mesh is namespace `ns` alone.
    let config = format!(
        "mesh: m\nclusterName: a\nnetwork: net-a\ndiscoverySelectors:\n- matchLabels: {{kubernetes.io/metadata.name: {}}}\n",
        ns.name
    );
    let cp = Primary::start(&bed, REVISION, &config, &[]);
    let (xds_port, monitoring) = (cp.xds, cp.monitoring);
    wait_for("the control plane to be ready", Duration::from_secs(30), || async {
        match weft_e2e::http_get(monitoring, "/ready")? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let _backend = backend(&host, &format!("{BACKEND}:50051"), "a");
    let _gateway = backend(&host, &format!("{GATEWAY}:15443"), "gateway");

    let services: Api<Service> = Api::namespaced(bed.client.clone(), &ns.name);
    let greeter: Service = serde_json::from_value(json!({
        "metadata": {"name": "greeter"},
        "spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &greeter).await.unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "greeter-1", "labels": {"kubernetes.io/service-name": "greeter"}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
        "endpoints": [{"addresses": [BACKEND], "conditions": {"ready": true}, "zone": "zone-a"}]
    }))
    .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), &ns.name);
    slices.create(&PostParams::default(), &slice).await.unwrap();
    services
        .create(&PostParams::default(), &eastwest_service(&ns.name, "m", "net-a"))
        .await
        .expect("create the east-west gateway's Service");
    set_gateway_address(&bed, &ns.name, json!([{"ip": GATEWAY}])).await;

    // A client that names no network is on the control plane's (net-a): direct.
    let mut local = client(&bed, &host, xds_port, &ns.name, "local", json!({}));
    let direct = wait_for("the net-a client to reach the backend", Duration::from_secs(30), || {
        let calls = call(&mut local, 10);
        async move {
            if calls.counts.get("a") == Some(&10) {
                Ok(calls.counts)
            } else {
                Err(format!("{calls:?}"))
            }
        }
    })
    .await;
    assert_eq!(direct.len(), 1, "{direct:?}");
    assert_eq!(eds(&mut local, &ns.name), Some(vec![format!("{BACKEND}:50051")]));

    // A client on net-b: greeter's endpoint is behind net-a's east-west gateway.
    let mut remote = client(&bed, &host, xds_port, &ns.name, "remote", json!({"NETWORK": "net-b"}));
    wait_for(
        "the net-b client's calls to land on the gateway",
        Duration::from_secs(30),
        || {
            let calls = call(&mut remote, 10);
            async move {
                if calls.counts.get("gateway") == Some(&10) {
                    Ok(())
                } else {
                    Err(format!("{calls:?}"))
                }
            }
        },
    )
    .await;
    assert_eq!(eds(&mut remote, &ns.name), Some(vec![format!("{GATEWAY}:15443")]));
    let series = "weft_endpoints_without_gateway{network=\"net-a\"}";
    assert_eq!(metric(monitoring, series), 0.0, "net-a has a gateway");

    // The gateway loses its address: net-b cannot reach net-a, and the metric says so.
    set_gateway_address(&bed, &ns.name, json!([])).await;
    wait_for(
        "net-b's endpoints of greeter to be empty",
        Duration::from_secs(30),
        || {
            let seen = eds(&mut remote, &ns.name);
            async move {
                match &seen {
                    Some(a) if a.is_empty() => Ok(()),
                    _ => Err(format!("{seen:?}")),
                }
            }
        },
    )
    .await;
    let calls = call(&mut remote, 3);
    assert!(calls.counts.is_empty() && calls.errors == 3, "{calls:?}");
    assert_eq!(metric(monitoring, series), 1.0);
    // net-a's own client is untouched.
    assert_eq!(call(&mut local, 10).counts.get("a"), Some(&10));
    drop((local, remote));
    ns.delete().await;
}

/// Admission: an east-west gateway's network becomes a label value on its Service, so
/// anything else is refused with a message.
#[tokio::test]
async fn an_east_west_network_that_is_no_label_value_is_refused() {
    let bed = Bed::connect().await;
    weft_e2e::operator::install_crds(&bed);
    let ns = bed.namespace("mn-admission").await;
    let api: Api<MeshGateway> = Api::namespaced(bed.client.clone(), &ns.name);
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut results = Vec::new();
    for network in ["net-a", "net b", "-net", &"n".repeat(64)] {
        let gw: MeshGateway = serde_json::from_value(json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
            "metadata": {"name": "eastwest"},
            "spec": {"mesh": "m", "type": "eastwest", "network": network}
        }))
        .unwrap();
        let outcome = api.create(&params, &gw).await.map(|_| ()).map_err(|e| e.to_string());
        results.push((network.len(), outcome));
    }
    ns.delete().await;
    assert!(results[0].1.is_ok(), "{:?}", results[0]);
    assert!(
        results[1..3]
            .iter()
            .all(|(_, r)| r.as_ref().is_err_and(|e| e.contains("network must be a label value"))),
        "{results:?}"
    );
    assert!(
        results[3].1.as_ref().is_err_and(|e| e.contains("63")),
        "{:?}",
        results[3]
    );
}
