//! The embedded xDS control plane: discovery's model, and its translation into Envoy
//! resources. (The ADS server and the Kubernetes sources come next; see issue 4.)

pub mod metrics;
pub mod model;
pub mod server;
pub mod snapshot;
pub mod translate;

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;
