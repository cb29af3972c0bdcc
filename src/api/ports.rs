//! The ports the rendered pods and the xDS configuration they are served agree on: the
//! renderer declares them on containers, Services and probes; translation binds Envoy's
//! listeners to them.

/// The node proxy's outbound port: workloads send their mesh traffic here.
pub const NODE_PROXY_OUTBOUND: u16 = 15001;
/// The node proxy's inbound port: tunnels (HTTP `CONNECT`) to a pod on its node.
pub const NODE_PROXY_INBOUND: u16 = 15008;
/// The node proxy's readiness port.
pub const NODE_PROXY_READY: u16 = 15021;
/// The readiness path on [`NODE_PROXY_READY`]: 200 once Envoy holds its listeners.
pub const NODE_PROXY_READY_PATH: &str = "/healthz/ready";
/// The control plane's TLS port: the certificate service and authenticated xDS.
pub const SECURE_XDS: u16 = 15012;
