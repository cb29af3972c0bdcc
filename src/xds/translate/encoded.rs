//! A translated resource, encoded once: packed as the `Any` every stream sends, and
//! versioned by a hash of its bytes, so streams can tell exactly what changed.

use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::render::fnv1a_bytes;

/// One encoded resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// The resource, packed; shared by the snapshots and the incremental translation's
    /// memory of it, so an unchanged resource is held once.
    pub any: Arc<Any>,
    /// Its version: a hash of its encoding.
    pub version: String,
}

/// Encodes a resource and versions it by the hash of its bytes.
pub fn encode<M: Message + Name>(m: &M) -> Encoded {
    let bytes = m.encode_to_vec();
    let version = fnv1a_bytes(&bytes);
    Encoded {
        any: Arc::new(Any {
            type_url: M::type_url(),
            value: bytes,
        }),
        version,
    }
}
