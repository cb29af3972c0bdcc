//! Test fixtures shared by the MeshInstall controller's unit tests.

use k8s_openapi::jiff::Timestamp;
use kube::core::ObjectMeta;

use super::observe::RevisionObservation;
use crate::api::mesh_install::{MeshInstall, MeshInstallSpec, MeshInstallStatus, ReplicaCounts};
use crate::operator::health::Health;

/// MeshInstall `m` with this spec (YAML), generation and status.
pub fn mesh(spec: &str, generation: i64, status: Option<MeshInstallStatus>) -> MeshInstall {
    MeshInstall {
        metadata: ObjectMeta {
            name: Some("m".into()),
            uid: Some("uid-m".into()),
            generation: Some(generation),
            ..Default::default()
        },
        spec: serde_saphyr::from_str::<MeshInstallSpec>(spec).unwrap(),
        status,
    }
}

/// An installed revision with one control-plane replica, ready or not, and no node proxies.
pub fn rev(name: &str, ready: bool) -> RevisionObservation {
    RevisionObservation {
        name: name.into(),
        version: "1.0.0".into(),
        control_plane: Some(Health {
            counts: ReplicaCounts {
                desired: 1,
                ready: ready as i32,
            },
            ready,
        }),
        proxy: None,
        proxy_wanted: false,
        external: None,
    }
}

/// The same revision with three ready node proxies, which it wants.
pub fn with_proxies(r: RevisionObservation) -> RevisionObservation {
    RevisionObservation {
        proxy: Some(Health {
            counts: ReplicaCounts { desired: 3, ready: 3 },
            ready: true,
        }),
        proxy_wanted: true,
        ..r
    }
}

/// `secs` seconds after a fixed instant.
pub fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}
