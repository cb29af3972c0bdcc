//! The embedded xDS control plane: discovery's model, and its translation into Envoy
//! resources, served over ADS.

pub mod control_plane;
pub mod grpc;
pub mod metrics;
pub mod model;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod subscription;
pub mod translate;

#[cfg(test)]
mod server_tests;
