//! Multi-network (split-horizon EDS), one cluster: `weft control-plane` on network net-a
//! serves a grpcio client on net-a the backend's own address, and a client claiming
//! NETWORK=net-b the address of net-a's east-west gateway instead. No Envoy runs here: a
//! stand-in "gateway" (a backend answering with its own name) listens on the gateway's
//! load-balancer address, so a call that lands there says so. Without the gateway's
//! load-balancer address, net-b gets no endpoints and the control plane's metric says how
//! many endpoints net-a has that other networks cannot reach.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weft::api::mesh_gateway::MeshGateway;
use weft::render::{GatewayInput, OwnedKind, render_gateway};
use weft::versions::VersionTable;
use weft_e2e::testhost::{HOST_ADDRESS, Proc, TestHost};
use weft_e2e::{Bed, repo_root, wait_for, weft_bin};

const REVISION: &str = "mn-test";
const BACKEND: &str = "198.51.100.10";
const GATEWAY: &str = "198.51.100.30";

struct ControlPlane(Child);

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(address: &str) -> u16 {
    std::net::TcpListener::bind((address, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the control plane on the test host's side of its veth, with a mesh config that
/// puts it in cluster `a` on network `net-a` and limits the mesh to namespace `ns`.
fn start_control_plane(bed: &Bed, ns: &str, xds_port: u16, monitoring_port: u16) -> ControlPlane {
    let dir = bed.kubeconfig.parent().unwrap();
    let config = dir.join(format!("mesh-{REVISION}.yaml"));
    let text = format!(
        "mesh: m\nclusterName: a\nnetwork: net-a\ndiscoverySelectors:\n- matchLabels: {{kubernetes.io/metadata.name: {ns}}}\n"
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.join(format!("control-plane-{REVISION}.log"));
    let child = Command::new(weft_bin())
        .args(["control-plane", "--revision", REVISION, "--debounce-ms", "50"])
        .arg("--kubeconfig")
        .arg(&bed.kubeconfig)
        .arg("--mesh-config")
        .arg(&config)
        .args(["--xds-address", &format!("{HOST_ADDRESS}:{xds_port}")])
        .args(["--monitoring-address", &format!("127.0.0.1:{monitoring_port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .expect("start weft control-plane");
    ControlPlane(child)
}

fn script(name: &str) -> String {
    repo_root().join("e2e/xds").join(name).display().to_string()
}

/// A gRPC server on `address` answering with `name`.
fn backend(host: &TestHost, address: &str, name: &str) -> Proc {
    let mut p = host.spawn("python3", &[&script("backend.py"), address, name]);
    assert_eq!(p.read_line().as_deref(), Some("ready"), "{name} did not start");
    p
}

/// A grpcio xDS client of greeter whose node metadata says `extra` (e.g. NETWORK).
fn client(bed: &Bed, host: &TestHost, xds_port: u16, ns: &str, id: &str, extra: Value) -> Proc {
    let mut metadata = json!({"REVISION": REVISION, "NAMESPACE": ns, "ROLE": "proxyless"});
    for (k, v) in extra.as_object().unwrap() {
        metadata[k] = v.clone();
    }
    let doc = json!({
        "xds_servers": [{"server_uri": format!("{HOST_ADDRESS}:{xds_port}"), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": id, "locality": {"zone": "zone-a"}, "metadata": metadata}
    });
    let path = bed.kubeconfig.parent().unwrap().join(format!("bootstrap-mn-{id}.json"));
    std::fs::write(&path, doc.to_string()).unwrap();
    let target = format!("xds:///greeter.{ns}.svc.cluster.local:50051");
    host.spawn("python3", &[&script("client.py"), &path.display().to_string(), &target])
}

/// `call N`: answers by responder name, and errors.
fn call(client: &mut Proc, n: u32) -> (BTreeMap<String, u64>, u64, String) {
    let line = client.ask(&format!("call {n}")).expect("the client answers");
    let v: Value = serde_json::from_str(&line).expect("JSON from the client");
    let counts = v["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect();
    let errors = v["errors"].as_u64().unwrap();
    (counts, errors, v["last_error"].as_str().unwrap_or_default().to_string())
}

/// The addresses the client holds for greeter's cluster (from its own CSDS view).
fn eds(client: &mut Proc, ns: &str) -> Option<Vec<String>> {
    let line = client.ask("eds").expect("the client answers");
    let v: Value = serde_json::from_str(&line).expect("JSON from the client");
    let cluster = format!("outbound|50051||greeter.{ns}.svc.cluster.local");
    let addresses = v["assignments"].get(&cluster)?.as_array()?;
    Some(
        addresses
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
    )
}

/// One sample of the control plane's metrics (0 when the series is absent).
fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = weft_e2e::http_get(port, "/metrics").expect("monitoring port");
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The east-west gateway's Service as the operator renders it for MeshGateway `eastwest`
/// (type eastwest, network net-a), without its owner (no MeshGateway exists here).
fn eastwest_service(ns: &str) -> Service {
    let gw: MeshGateway = serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
        "metadata": {"name": "eastwest", "namespace": ns, "uid": "00000000-0000-0000-0000-0000000000ee"},
        "spec": {"mesh": "m", "type": "eastwest", "network": "net-a"}
    }))
    .unwrap();
    let table = VersionTable::builtin();
    let version = table.get("1.0.0").expect("a supported version");
    let objects = render_gateway(&GatewayInput {
        gateway: &gw,
        mesh: "m",
        revision: REVISION,
        control_plane_namespace: ns,
        external_control_plane: None,
        cluster: "a",
        version,
        mesh_network: None,
    })
    .unwrap();
    let m = objects.iter().find(|m| m.kind == OwnedKind::Service).unwrap();
    let mut svc: Service = serde_json::from_value(m.object.clone()).unwrap();
    svc.metadata.owner_references = None;
    svc
}

async fn set_gateway_address(services: &Api<Service>, ingress: Value) {
    let status = json!({"status": {"loadBalancer": {"ingress": ingress}}});
    services
        .patch_status("eastwest", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("write the gateway's load-balancer status");
}

#[tokio::test]
async fn other_networks_reach_endpoints_through_the_east_west_gateway() {
    let bed = Bed::connect().await;
    let ns = bed.namespace("mn").await;
    let host = TestHost::create();
    host.add_address(BACKEND);
    host.add_address(GATEWAY);
    let (xds_port, monitoring) = (free_port(HOST_ADDRESS), free_port("127.0.0.1"));
    let _cp = start_control_plane(&bed, &ns.name, xds_port, monitoring);
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
        .create(&PostParams::default(), &eastwest_service(&ns.name))
        .await
        .expect("create the east-west gateway's Service");
    set_gateway_address(&services, json!([{"ip": GATEWAY}])).await;

    // A client that names no network is on the control plane's (net-a): direct.
    let mut local = client(&bed, &host, xds_port, &ns.name, "local", json!({}));
    let direct = wait_for("the net-a client to reach the backend", Duration::from_secs(30), || {
        let (counts, errors, last) = call(&mut local, 10);
        async move {
            if counts.get("a") == Some(&10) {
                Ok(counts)
            } else {
                Err(format!("counts {counts:?}, {errors} errors ({last})"))
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
            let (counts, errors, last) = call(&mut remote, 10);
            async move {
                if counts.get("gateway") == Some(&10) {
                    Ok(())
                } else {
                    Err(format!("counts {counts:?}, {errors} errors ({last})"))
                }
            }
        },
    )
    .await;
    assert_eq!(eds(&mut remote, &ns.name), Some(vec![format!("{GATEWAY}:15443")]));
    let series = "weft_endpoints_without_gateway{network=\"net-a\"}";
    assert_eq!(metric(monitoring, series), 0.0, "net-a has a gateway");

    // The gateway loses its address: net-b cannot reach net-a, and the metric says so.
    set_gateway_address(&services, json!([])).await;
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
    let (counts, errors, _) = call(&mut remote, 3);
    assert!(counts.is_empty() && errors == 3, "{counts:?}");
    assert_eq!(metric(monitoring, series), 1.0);
    // net-a's own client is untouched.
    assert_eq!(call(&mut local, 10).0.get("a"), Some(&10));
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
