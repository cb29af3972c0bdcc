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
use super::events::{Note, publish};
use super::shared::Shared;
use crate::api::common::condition::{READY, STALLED};

/// Writes `new` as `obj`'s status unless it already is; returns whether it wrote.
pub async fn write<K>(shared: &Shared, obj: &K, new: &K::Status) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + HasStatus,
    K::Status: Serialize + PartialEq + Default + Clone + Conditioned,
{
    let old = obj.status().cloned().unwrap_or_default();
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
    for note in kstatus_notes(&old, new) {
        if note.warning {
            shared.metrics.stalled(&note.reason);
            warn!(reason = %note.reason, message = %note.message, "stalled");
        }
        publish(shared, obj, &note).await;
    }
    Ok(true)
}

/// The Events between two statuses: a warning when it became Stalled, and a note when it
/// became Ready (with the Ready condition's message).
pub fn kstatus_notes<S: Conditioned>(old: &S, new: &S) -> Vec<Note> {
    let mut notes = Vec::new();
    if let Some(c) = new.condition(STALLED).filter(|c| c.status == "True")
        && !old.is(STALLED)
    {
        notes.push(Note::warning(c.reason.clone(), "Validate", c.message.clone()));
    }
    if let Some(c) = new.condition(READY).filter(|c| c.status == "True")
        && !old.is(READY)
    {
        notes.push(Note::normal("Ready", "Reconcile", c.message.clone()));
    }
    notes
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
            kstatus_notes(&waiting, &ready),
            [Note::normal("Ready", "Reconcile", "2/2 replicas ready")]
        );
        assert!(kstatus_notes(&ready, &ready).is_empty(), "no flip, no event");
        assert_eq!(
            kstatus_notes(&ready, &stalled),
            [Note::warning("InvalidSpec", "Validate", "two ports on 8080")]
        );
        assert!(kstatus_notes(&stalled, &stalled).is_empty());
    }
}
