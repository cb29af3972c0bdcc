//! The embedded xDS control plane: discovery's model, and its translation into Envoy
//! resources, served over ADS.
//!
//! - Data flows `sources` (Kubernetes watches) → `model` (plain data) → `translate` (Envoy
//!   resources) → `snapshot` (encoded and versioned, shared by every stream) → `server`
//!   (ADS streams).
//! - `server` keeps a `subscription` per stream and type (what that stream is owed) and
//!   hands the bytes to `grpc` (the framing, which knows nothing of ADS).
//! - `network` finds the east-west gateways (by their Services) for split-horizon EDS.
//! - `conn` checks each accepted connection (HTTP/2 only, idle timeout) before `grpc`.
//! - `remote` watches the mesh's RemoteClusters and, through their credentials, the remote
//!   clusters' Services, EndpointSlices and Namespaces, whose stores `sources` merges;
//!   `remote_status` reports each in its RemoteCluster's status and in metrics.
//! - `control_plane` (`weft control-plane`) wires them together, with `metrics`.
//!
//! No two modules depend on each other (no import cycles).

pub mod conn;
pub mod control_plane;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod network;
pub mod remote;
pub mod remote_status;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod subscription;
pub mod translate;

#[cfg(test)]
mod refusal_tests;
#[cfg(test)]
mod server_tests;
