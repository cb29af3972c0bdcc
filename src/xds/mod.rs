//! The embedded xDS control plane: discovery's model, and its translation into Envoy
//! resources. (The ADS server and the Kubernetes sources come next; see issue 4.)

pub mod model;
pub mod translate;

#[cfg(test)]
mod tests;
