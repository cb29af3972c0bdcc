//! The embedded xDS control plane. Its data flows through four rooms, each depending only
//! on the ones before it:
//!
//! - `discovery`: Kubernetes watches (`sources`; remote clusters in `remote`, reported in
//!   `remote_status`; east-west gateways in `network`) → discovery's model.
//! - `model`: plain data — services, routes, gateways, telemetry.
//! - `translate`: pure, model → Envoy resources (mesh, node proxies, gateways, EDS),
//!   encoded once (`translate::encoded`), incrementally where it pays.
//! - `serve`: encoded, versioned snapshots (`snapshot`) and ADS streams (`server`, one
//!   `subscription` per stream and type), over our own gRPC framing (`grpc`) on checked
//!   connections (`conn`).
//!
//! `control_plane` (`weft control-plane`) wires them together; `metrics` is shared by all.
//! No two modules depend on each other (no import cycles), and no room on a later one.

pub mod control_plane;
pub mod discovery;
pub mod metrics;
pub mod model;
pub mod serve;
pub mod translate;
