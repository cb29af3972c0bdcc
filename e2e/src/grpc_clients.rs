//! Real gRPC parts in a test host: backends that answer with their own name
//! (`e2e/xds/backend.py`) and Python grpcio proxyless xDS clients (`e2e/xds/client.py`),
//! talked to line by line: how many calls reached which backend, and what EDS the client
//! holds (from its own CSDS view). The grpc-go client (`e2e/grpc-go`, built by the test bed)
//! speaks the same lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::testhost::{Proc, TestHost};
use crate::{cache_dir, pinned, repo_root, wait_for};

/// The grpc-go proxyless xDS client (`e2e/grpc-go`) the test bed built:
/// `weft-grpc-go-client BOOTSTRAP TARGET`, driven like `client.py`.
pub fn grpc_go_client() -> PathBuf {
    cache_dir().join(format!(
        "grpc-go-client-{}/bin/weft-grpc-go-client",
        pinned("GRPC_GO_VERSION")
    ))
}

/// A script of `e2e/xds/`.
pub fn script(name: &str) -> String {
    repo_root().join("e2e/xds").join(name).display().to_string()
}

/// A gRPC server on `address` (`ip:port`) answering with `name`.
pub fn backend(host: &TestHost, address: &str, name: &str) -> Proc {
    let mut p = host.spawn("python3", &[&script("backend.py"), address, name]);
    assert_eq!(p.read_line().as_deref(), Some("ready"), "backend {name} did not start");
    p
}

/// A grpcio client of `target` (`xds:///host:port`) whose bootstrap (written to
/// `dir/bootstrap-<id>.json`) names xDS server `server` (`host:port`) and node `id` with
/// `metadata`.
pub fn client(host: &TestHost, dir: &Path, server: &str, id: &str, metadata: Value, target: &str) -> Proc {
    let doc = json!({
        "xds_servers": [{"server_uri": server, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": id, "locality": {"zone": "zone-a"}, "metadata": metadata}
    });
    let path = dir.join(format!("bootstrap-{id}.json"));
    std::fs::write(&path, doc.to_string()).expect("write the client's bootstrap");
    host.spawn("python3", &[&script("client.py"), &path.display().to_string(), target])
}

/// What `n` calls did.
#[derive(Debug)]
pub struct Calls {
    /// Answers by backend name.
    pub counts: BTreeMap<String, u64>,
    /// Calls that failed.
    pub errors: u64,
    /// The last failure's message.
    pub last_error: String,
}

impl Calls {
    /// The backends that answered at least once, in name order.
    pub fn reached(&self) -> Vec<&str> {
        self.counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// Makes `n` calls.
pub fn call(client: &mut Proc, n: u32) -> Calls {
    let line = client.ask(&format!("call {n}")).expect("the client answers");
    let v: Value = serde_json::from_str(&line).expect("JSON from the client");
    Calls {
        counts: v["counts"]
            .as_object()
            .map(|o| o.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
            .unwrap_or_default(),
        errors: v["errors"].as_u64().unwrap_or(0),
        last_error: v["last_error"].as_str().unwrap_or_default().to_string(),
    }
}

/// Waits until 30 calls reach exactly the backends `want` (each at least once), without errors.
pub async fn wait_reached(client: &mut Proc, want: &[&str], what: &str) {
    wait_for(what, Duration::from_secs(45), || {
        let calls = call(client, 30);
        let ok = calls.errors == 0 && calls.reached() == want;
        async move { if ok { Ok(()) } else { Err(format!("{calls:?}")) } }
    })
    .await;
}

/// The addresses (`ip:port`) the client holds for EDS cluster `cluster`, if it has it.
pub fn eds(client: &mut Proc, cluster: &str) -> Option<Vec<String>> {
    let line = client.ask("eds").expect("the client answers");
    let v: Value = serde_json::from_str(&line).expect("JSON from the client");
    let addresses = v["assignments"].get(cluster)?.as_array()?;
    Some(
        addresses
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect(),
    )
}

/// A backend named `a` on `address` (an address of `host`) behind Service `echo` of `ns`
/// (port 50051, with its EndpointSlice); returns the backend and the xDS target of it.
pub async fn echo_service(bed: &crate::Bed, host: &TestHost, ns: &str, address: &str) -> (Proc, String) {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, PostParams};
    let proc = backend(host, &format!("{address}:50051"), "a");
    let services: Api<Service> = Api::namespaced(bed.client.clone(), ns);
    let svc = json!({"metadata": {"name": "echo"}, "spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}});
    services
        .create(&PostParams::default(), &serde_json::from_value(svc).expect("a Service"))
        .await
        .expect("create Service echo");
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), ns);
    let slice = json!({
        "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}]
    });
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(slice).expect("an EndpointSlice"),
        )
        .await
        .expect("create EndpointSlice echo-1");
    (proc, format!("xds:///echo.{ns}.svc.cluster.local:50051"))
}
