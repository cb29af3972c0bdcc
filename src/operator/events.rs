//! Events: one `publish` for any of our kinds. Recording an Event is best effort: a failure
//! is logged, never fatal, and every Event sent is counted as a write.

use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use super::shared::Shared;

/// An Event to record about the object being reconciled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub warning: bool,
    /// The reason (`Applied`, `Promoted`, a stall reason, …).
    pub reason: String,
    /// What the operator was doing (`Apply`, `Upgrade`, `Validate`, …).
    pub action: &'static str,
    /// What happened, for a person.
    pub message: String,
}

impl Note {
    /// A Normal Event.
    pub fn normal(reason: impl Into<String>, action: &'static str, message: impl Into<String>) -> Note {
        Note {
            warning: false,
            reason: reason.into(),
            action,
            message: message.into(),
        }
    }

    /// A Warning Event.
    pub fn warning(reason: impl Into<String>, action: &'static str, message: impl Into<String>) -> Note {
        Note {
            warning: true,
            ..Note::normal(reason, action, message)
        }
    }
}

/// Records `note` about `obj`.
pub async fn publish<K: Resource<DynamicType = ()>>(shared: &Shared, obj: &K, note: &Note) {
    let event = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.clone(),
        note: Some(note.message.chars().take(1000).collect()),
        action: note.action.to_string(),
        secondary: None,
    };
    match shared.recorder.publish(&event, &obj.object_ref(&())).await {
        Ok(()) => shared.metrics.write("Event", "create"),
        Err(error) => warn!(%error, "could not record an event"),
    }
}

/// Records every note, in order.
pub async fn publish_all<K: Resource<DynamicType = ()>>(shared: &Shared, obj: &K, notes: &[Note]) {
    for note in notes {
        publish(shared, obj, note).await;
    }
}

/// At most a few lines of changes for an Event note.
pub fn summarise(changes: &[String]) -> String {
    let mut note = changes.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    if changes.len() > 5 {
        note.push_str(&format!("; and {} more", changes.len() - 5));
    }
    note
}
