//! Runs `weft control-plane` as a process against a test-bed cluster, and a minimal ADS
//! client (envoy-types over tonic) to read what it serves.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::{Bed, http_get, wait_for, weft_bin};

/// A running `weft control-plane` process, killed when dropped.
pub struct ControlPlane {
    child: Child,
    /// The revision it serves.
    pub revision: String,
    /// Its ADS port on 127.0.0.1.
    pub xds: u16,
    /// Its `/ready` and `/metrics` port on 127.0.0.1.
    pub monitoring: u16,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free now.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port free now on `address` (loopback, or a test host's side of its veth pair).
pub fn free_port_on(address: &str) -> u16 {
    std::net::TcpListener::bind((address, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl ControlPlane {
    /// Starts the control plane of `revision` (50 ms debounce), logging beside the
    /// cluster's kubeconfig.
    pub fn start(bed: &Bed, revision: &str) -> ControlPlane {
        ControlPlane::start_with(bed, revision, &[])
    }

    /// Like [`ControlPlane::start`], with extra flags.
    pub fn start_with(bed: &Bed, revision: &str, flags: &[&str]) -> ControlPlane {
        let (xds, monitoring) = (free_port(), free_port());
        ControlPlane {
            child: spawn(bed, revision, xds, monitoring, flags),
            revision: revision.to_string(),
            xds,
            monitoring,
        }
    }

    /// Kills the process (SIGKILL, as a crash or an evicted pod would) and starts a new one
    /// on the same ports.
    pub fn restart(&mut self, bed: &Bed, flags: &[&str]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(bed, &self.revision, self.xds, self.monitoring, flags);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/ready`: its status code and body.
    pub fn ready(&self) -> Result<(u16, String), String> {
        http_get(self.monitoring, "/ready")
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        wait_for("the control plane to be ready", Duration::from_secs(30), || async {
            match self.ready() {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
}

/// Starts `weft control-plane` for `revision` on the given ports, appending to its log.
fn spawn(bed: &Bed, revision: &str, xds: u16, monitoring: u16, flags: &[&str]) -> Child {
    let log = bed
        .kubeconfig
        .parent()
        .expect("cluster dir")
        .join(format!("control-plane-{revision}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open control-plane log");
    Command::new(weft_bin())
        .args(["control-plane", "--revision", revision, "--debounce-ms", "50"])
        .arg("--kubeconfig")
        .arg(&bed.kubeconfig)
        .args(["--xds-address", &format!("127.0.0.1:{xds}")])
        .args(["--monitoring-address", &format!("127.0.0.1:{monitoring}")])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start weft control-plane")
}

/// A node that names its revision in the metadata.
pub fn node(revision: &str) -> Node {
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

/// Opens an ADS stream: the sender of requests and the responses.
pub async fn stream(port: u16) -> (mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>) {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to ADS");
    let (tx, rx) = mpsc::channel(8);
    let s = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open an ADS stream")
        .into_inner();
    (tx, s)
}

/// The next response, within 20 s.
pub async fn next(rx: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(20), rx.message())
        .await
        .expect("a response in time")
        .expect("a response, not an error")
        .expect("the stream is open")
}
