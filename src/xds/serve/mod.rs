//! Serving: snapshots of the translated resources, and the ADS streams that read them.
//!
//! - `snapshot`: an immutable, encoded, versioned set of every resource, per client view,
//!   and the `Cache` streams watch.
//! - `server`: ADS, state of the world and delta; admission of each client.
//! - `subscription`: one stream's subscription to one type (pure).
//! - `grpc`: hand-written gRPC framing that shares snapshot bytes across streams.
//! - `conn`: accepted connections (HTTP/2 preface check, idle timeout), before `grpc`.
//! - `tls`: the TLS port (server certificate from the mesh CA, optional client
//!   certificates) where the certificate service and authenticated ADS are served.
//! - `claims`: on the TLS port, what a client's node metadata may claim (pure).

pub mod claims;
pub mod conn;
pub mod grpc;
pub mod server;
pub mod snapshot;
pub mod subscription;
pub mod tls;

#[cfg(test)]
mod assembly_tests;
#[cfg(test)]
mod refusal_tests;
#[cfg(test)]
mod server_tests;
