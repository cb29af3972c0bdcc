//! Discovery: what the cluster (and the mesh's remote clusters) holds, watched and kept in
//! reflector stores, and turned into discovery's model.
//!
//! - `sources`: the watches and stores; `Sources::model` builds the model, merging remote
//!   clusters by namespace sameness.
//! - `objects`: one Kubernetes object → its model (Services with their EndpointSlices,
//!   HTTPRoutes, MeshGateways).
//! - `selectors`: the mesh's `discoverySelectors`.
//! - `network`: east-west gateways (by their Services) for split-horizon EDS.
//! - `remote`: the mesh's RemoteClusters and, through their credentials, the remote
//!   clusters' watches, whose stores `sources` merges; `remote_status` reports each in its
//!   RemoteCluster's status and in metrics.

pub mod network;
pub mod objects;
pub mod remote;
pub mod remote_status;
pub mod selectors;
pub mod sources;
