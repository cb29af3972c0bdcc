//! Events: one `publish` for any of our kinds. Recording an Event is best effort: a failure
//! is logged, never fatal, and every Event sent is counted as a write.
//!
//! The recorder is our own: kube-runtime's keys repeats on the reason alone, so a second
//! `RevisionCreated` for another revision showed the first one's note with count 2. Here an
//! occurrence repeats an Event only when its message is the same too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

/// How long an Event is remembered for counting repeats (as kube-runtime does).
const REPEAT_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// What makes two occurrences the same Event: everything a person reads, the note included.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    action: &'static str,
    note: String,
    regarding: (Option<String>, Option<String>, Option<String>, Option<String>),
}

/// Records Events (events.k8s.io/v1) as one reporting controller and instance.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Arc<Mutex<HashMap<Key, K8sEvent>>>,
}

impl Recorder {
    /// A recorder reporting as `controller`, from the process `instance`.
    pub fn new(client: Client, controller: &str, instance: &str) -> Recorder {
        Recorder {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            recent: Arc::default(),
        }
    }

    /// Records `note` about the object `regarding`: a new Event, or the next occurrence of
    /// the same one (same reason, action and message) seen in the last few minutes.
    pub async fn publish(&self, note: &Note, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let key = key(note, regarding);
        let now = Timestamp::now();
        let (event, repeat) = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            next(&mut recent, &key, now, || self.fresh(note, regarding, now))
        };
        let ns = regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &ns);
        let name = event.metadata.name.clone().unwrap_or_default();
        if repeat {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&event)).await?;
        } else {
            api.create(&PostParams::default(), &event).await?;
        }
        Ok(())
    }

    fn fresh(&self, note: &Note, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let object = regarding.name.clone().unwrap_or_else(|| self.controller.clone());
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            action: Some(note.action.to_string()),
            reason: Some(note.reason.clone()),
            note: Some(note.message.chars().take(1000).collect()),
            type_: Some(if note.warning { "Warning" } else { "Normal" }.to_string()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }
}

fn key(note: &Note, regarding: &ObjectReference) -> Key {
    Key {
        warning: note.warning,
        reason: note.reason.clone(),
        action: note.action,
        note: note.message.clone(),
        regarding: (
            regarding.kind.clone(),
            regarding.namespace.clone(),
            regarding.name.clone(),
            regarding.uid.clone(),
        ),
    }
}

/// The Event to write for `key` at `now`, and whether it repeats a remembered one (then
/// its series count goes up). Forgets what is older than the repeat window.
fn next(
    recent: &mut HashMap<Key, K8sEvent>,
    key: &Key,
    now: Timestamp,
    fresh: impl FnOnce() -> K8sEvent,
) -> (K8sEvent, bool) {
    let last_seen = |e: &K8sEvent| {
        e.series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
    };
    recent.retain(|_, e| last_seen(e).is_some_and(|t| t + REPEAT_WINDOW > now));
    let (event, repeat) = match recent.get(key) {
        Some(e) => {
            let mut event = e.clone();
            let count = e.series.as_ref().map_or(2, |s| s.count + 1);
            event.series = Some(EventSeries {
                count,
                last_observed_time: MicroTime(now),
            });
            (event, true)
        }
        None => (fresh(), false),
    };
    recent.insert(key.clone(), event.clone());
    (event, repeat)
}

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

/// At most a few lines of changes for an Event note.
pub fn summarise(changes: &[String]) -> String {
    let mut note = changes.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    if changes.len() > 5 {
        note.push_str(&format!("; and {} more", changes.len() - 5));
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, now: Timestamp) -> K8sEvent {
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            ..Default::default()
        }
    }

    fn note_key(message: &str) -> Key {
        let regarding = ObjectReference {
            kind: Some("MeshInstall".into()),
            name: Some("m".into()),
            ..Default::default()
        };
        key(&Note::normal("RevisionCreated", "Upgrade", message), &regarding)
    }

    #[test]
    fn each_message_of_one_reason_is_an_event_of_its_own() {
        let mut recent = HashMap::new();
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let (first, repeat) = next(&mut recent, &note_key("created m-v1-0-0"), t, || event("a", t));
        assert!(!repeat);
        let (second, repeat) = next(&mut recent, &note_key("created m-v1-1-0"), t, || event("b", t));
        assert!(!repeat, "another message is another Event");
        assert_ne!(first.metadata.name, second.metadata.name);
        assert!(second.series.is_none());

        let later = t + SignedDuration::from_secs(10);
        let (again, repeat) = next(&mut recent, &note_key("created m-v1-1-0"), later, || event("c", later));
        assert!(repeat, "the same message repeats its Event");
        assert_eq!(again.metadata.name.as_deref(), Some("b"));
        assert_eq!(again.series.as_ref().map(|s| s.count), Some(2));
    }

    #[test]
    fn old_events_are_forgotten() {
        let mut recent = HashMap::new();
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        next(&mut recent, &note_key("x"), t, || event("a", t));
        let later = t + REPEAT_WINDOW + SignedDuration::from_secs(1);
        let (e, repeat) = next(&mut recent, &note_key("x"), later, || event("b", later));
        assert!(!repeat);
        assert_eq!(e.metadata.name.as_deref(), Some("b"));
        assert_eq!(recent.len(), 1);
    }
}
