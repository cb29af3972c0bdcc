//! Weft: a Kubernetes operator that installs, upgrades and runs a service mesh, with its own
//! embedded xDS control plane. `docs/architecture.md` describes the architecture.

pub mod api;
pub mod config_dump;
pub mod credentials;
pub mod envoy_check;
pub mod http;
pub mod identity;
pub mod operator;
pub mod remote_secret;
pub mod render;
pub mod signal;
pub mod telemetry;
pub mod versions;
pub mod watch_health;
pub mod xds;
pub mod yaml;

/// The operator's own version, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
