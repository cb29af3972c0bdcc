//! Mesh identity: each mesh's certificate authority (a root and an intermediate issuer,
//! or a plug-in CA), and the workload certificates it signs for SPIFFE identities.
//!
//! - `ca`: pure — make a root and an issuer, check a plug-in CA in Istio's `cacerts`
//!   layout, sign a workload certificate from a CSR.
//!
//! The trust bundle, the CSR service and `weft agent` build on it (see
//! `docs/security.md`, "Identity").

pub mod ca;
