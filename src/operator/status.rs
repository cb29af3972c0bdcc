//! Writing status, for any of our kinds: one server-side apply of the status subresource,
//! sent only when the status changed (a reconcile that changes nothing writes nothing), and
//! the Events a kstatus change deserves: becoming Stalled, becoming Ready.

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use tracing::warn;

use super::apply::FIELD_MANAGER;
use super::conditions::Conditioned;
use super::error::{Error, kube_err};
use super::events::Note;
use super::shared::Shared;
use crate::api::common::condition::{READY, STALLED};

/// Writes `new` as `obj`'s status unless it already is; returns whether it wrote. Only the
/// operator's part is compared and written ([`Conditioned::operator_owned`]): fields other
/// managers own are left to them.
pub async fn write<K>(shared: &Shared, obj: &K, new: &K::Status) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + HasStatus,
    K::Status: Serialize + PartialEq + Default + Clone + Conditioned,
{
    let old = obj.status().cloned().unwrap_or_default().operator_owned();
    let new = &new.operator_owned();
    if old == *new {
        return Ok(false);
    }
    let ar = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = match obj.namespace() {
        Some(ns) => Api::namespaced_with(shared.client.clone(), &ns, &ar),
        None => Api::all_with(shared.client.clone(), &ar),
    };
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err("write status"))?;
    shared.metrics.write(&K::kind(&()), "status");
    let flips = Flips::between(&old, new);
    if let Some(note) = &flips.stalled {
        shared.metrics.stalled(&note.reason);
        warn!(reason = %note.reason, message = %note.message, "stalled");
        shared.publish(obj, note).await;
    }
    if let Some(note) = &flips.ready {
        shared.publish(obj, note).await;
    }
    Ok(true)
}

/// The kstatus flips between two statuses, as the Events that record them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flips {
    /// It became Stalled: a warning with the reason and message.
    pub stalled: Option<Note>,
    /// It became Ready: a note with the Ready condition's message.
    pub ready: Option<Note>,
}

impl Flips {
    /// What flipped from `old` to `new`.
    pub fn between<S: Conditioned>(old: &S, new: &S) -> Flips {
        let became = |t: &str| new.condition(t).filter(|c| c.status == "True" && !old.is(t));
        Flips {
            stalled: became(STALLED).map(|c| Note::warning(c.reason.clone(), "Validate", c.message.clone())),
            ready: became(READY).map(|c| Note::normal("Ready", "Reconcile", c.message.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::StallReason;
    use crate::api::mesh_gateway::MeshGatewayStatus;
    use crate::operator::conditions::{Conditions, Stall};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn status(c: Conditions) -> MeshGatewayStatus {
        MeshGatewayStatus {
            conditions: c.build(&[], Some(1), &Time(Timestamp::from_second(1).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn events_mark_becoming_stalled_and_becoming_ready_once() {
        let waiting = status(Conditions::progressing("RollingOut", "1/2".into()));
        let ready = status(Conditions::ready("Ready", "2/2 replicas ready".into()));
        let stall = Stall {
            reason: StallReason::InvalidSpec,
            message: "two ports on 8080".into(),
        };
        let stalled = status(Conditions::stalled(&stall));
        assert_eq!(
            Flips::between(&waiting, &ready),
            Flips {
                stalled: None,
                ready: Some(Note::normal("Ready", "Reconcile", "2/2 replicas ready")),
            }
        );
        assert_eq!(Flips::between(&ready, &ready), Flips::default(), "no flip, no event");
        assert_eq!(
            Flips::between(&ready, &stalled),
            Flips {
                stalled: Some(Note::warning("InvalidSpec", "Validate", "two ports on 8080")),
                ready: None,
            }
        );
        assert_eq!(Flips::between(&stalled, &stalled), Flips::default());
    }
}
