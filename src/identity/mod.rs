//! Mesh identity: each mesh's certificate authority (a root and an intermediate issuer,
//! or a plug-in CA), and the workload certificates it signs for SPIFFE identities.
//!
//! - `ca`: pure — make a root and an issuer, check a plug-in CA in Istio's `cacerts`
//!   layout, sign a workload certificate from a CSR.
//! - `mesh_ca`: pure — what a mesh's CA Secrets must hold (root kept, issuer renewed,
//!   plug-in CA checked) and what `status.security` shows.
//! - `rotation`: pure — the steps from one root to another (distribute, switch, retire).
//!
//! The trust bundle, the CSR service and `weft agent` build on it (see
//! `docs/security.md`, "Identity").

pub mod agent;
pub mod ca;
pub mod csr;
pub mod issuer;
pub mod mesh_ca;
pub mod metrics;
pub mod offline;
pub mod rotation;
pub mod spiffe;
pub mod tokens;
