//! kstatus conditions: every kind reports `Ready`, `Reconciling` and `Stalled`, each with
//! the generation it describes, and a condition keeps its `lastTransitionTime` unless its
//! status flips. `Stalled` and `Reconciling` are never both true.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::common::StallReason;
use crate::api::common::condition::{READY, RECONCILING, STALLED};
use crate::render::RenderError;

/// An error that will not fix itself: the object is `Stalled` and nothing that runs is
/// touched until the spec changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// Why.
    pub reason: StallReason,
    /// What a person should know, and do.
    pub message: String,
}

impl From<RenderError> for Stall {
    fn from(e: RenderError) -> Stall {
        Stall {
            reason: match e {
                RenderError::Invalid(_) => StallReason::InvalidSpec,
                RenderError::Encode { .. } => StallReason::RenderFailed,
            },
            message: e.to_string(),
        }
    }
}

/// A status that carries kstatus conditions.
pub trait Conditioned {
    /// The conditions.
    fn conditions(&self) -> &[Condition];

    /// Whether condition `type_` is True.
    fn is(&self, type_: &str) -> bool {
        self.conditions().iter().any(|c| c.type_ == type_ && c.status == "True")
    }

    /// Condition `type_`, if present.
    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions().iter().find(|c| c.type_ == type_)
    }

    /// The conditions, to change.
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;

    /// The part of the status the operator writes: without the fields other field managers
    /// own (a RemoteCluster's `controlPlanes`), so a status write neither claims nor clears
    /// them, and a change of theirs alone is no reason to write.
    fn operator_owned(&self) -> Self
    where
        Self: Clone,
    {
        self.clone()
    }
}

/// The reason of `Reconciling=True` while reconciles fail and are retried.
pub const RETRYING: &str = "RetryingAfterError";

/// `status` saying that reconciles keep failing and are retried: `Reconciling=True`,
/// reason [`RETRYING`], with the error. The other conditions are left as they are (what
/// runs may still be fine; the spec's generation is not claimed as observed), and a
/// `Stalled` status stays as it is (the two are never both true). `None` when nothing
/// changes.
pub fn retrying<S: Conditioned + Clone>(status: &S, error: &str, now: &Time) -> Option<S> {
    if status.is(STALLED) {
        return None;
    }
    let previous = status.condition(RECONCILING);
    let message = format!("the last reconciles failed and are retried with back-off: {error}");
    if previous.is_some_and(|c| c.status == "True" && c.reason == RETRYING && c.message == message) {
        return None;
    }
    let generation = previous.and_then(|c| c.observed_generation);
    let c = condition(
        status.conditions(),
        RECONCILING,
        true,
        RETRYING,
        message,
        generation,
        now,
    );
    let mut out = status.clone();
    let conditions = out.conditions_mut();
    match conditions.iter_mut().find(|x| x.type_ == RECONCILING) {
        Some(slot) => *slot = c,
        None => conditions.push(c),
    }
    Some(out)
}

/// One condition's wanted state, before times and generations are stamped on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// True or False.
    pub status: bool,
    /// The reason.
    pub reason: String,
    /// The message.
    pub message: String,
}

impl Wanted {
    /// A condition of this status, reason and message.
    pub fn new(status: bool, reason: &str, message: String) -> Wanted {
        Wanted {
            status,
            reason: reason.to_string(),
            message,
        }
    }
}

/// The three kstatus conditions of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conditions {
    /// `Ready`.
    pub ready: Wanted,
    /// `Reconciling`.
    pub reconciling: Wanted,
    /// `Stalled`.
    pub stalled: Wanted,
}

impl Conditions {
    /// Everything owned is healthy.
    pub fn ready(reason: &str, message: String) -> Conditions {
        Conditions {
            ready: Wanted::new(true, reason, message),
            reconciling: Wanted::new(false, reason, String::new()),
            stalled: Wanted::new(false, reason, String::new()),
        }
    }

    /// Work is under way (or awaited); `message` says what.
    pub fn progressing(reason: &str, message: String) -> Conditions {
        Conditions {
            ready: Wanted::new(false, reason, message.clone()),
            reconciling: Wanted::new(true, reason, message),
            stalled: Wanted::new(false, reason, String::new()),
        }
    }

    /// Stalled: not ready, not reconciling until the spec is fixed.
    pub fn stalled(stall: &Stall) -> Conditions {
        let reason = stall.reason.as_str();
        Conditions {
            ready: Wanted::new(false, reason, stall.message.clone()),
            reconciling: Wanted::new(false, reason, "waiting for the spec to be fixed".to_string()),
            stalled: Wanted::new(true, reason, stall.message.clone()),
        }
    }

    /// The same, with another reason on the `Stalled=False` condition.
    pub fn with_stalled_reason(mut self, reason: &str) -> Conditions {
        self.stalled.reason = reason.to_string();
        self
    }

    /// The same, with another `Reconciling` reason and message.
    pub fn with_reconciling(mut self, reason: &str, message: String) -> Conditions {
        self.reconciling.reason = reason.to_string();
        self.reconciling.message = message;
        self
    }

    /// The conditions to write: stamped with `generation`, and keeping the transition time
    /// of every condition in `previous` whose status did not flip.
    pub fn build(self, previous: &[Condition], generation: Option<i64>, now: &Time) -> Vec<Condition> {
        [
            (READY, self.ready),
            (RECONCILING, self.reconciling),
            (STALLED, self.stalled),
        ]
        .into_iter()
        .map(|(type_, w)| condition(previous, type_, w.status, &w.reason, w.message, generation, now))
        .collect()
    }
}

/// A condition, keeping its last transition time while its status stays the same.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn a_failing_reconcile_says_so_once_and_never_beside_stalled() {
        use crate::api::mesh_gateway::MeshGatewayStatus;
        let ready = MeshGatewayStatus {
            conditions: Conditions::ready("Ready", "2/2".into()).build(&[], Some(3), &at(10)),
            ..Default::default()
        };
        let failing = retrying(&ready, "apply ConfigMap: 403 exceeded quota", &at(20)).expect("a change");
        let reconciling = failing.condition(RECONCILING).expect("Reconciling");
        assert_eq!(
            (reconciling.status.as_str(), reconciling.reason.as_str()),
            ("True", RETRYING)
        );
        assert!(
            reconciling.message.ends_with("403 exceeded quota"),
            "{}",
            reconciling.message
        );
        assert_eq!(reconciling.last_transition_time, at(20));
        assert!(failing.is(READY), "what runs may still be fine");
        assert_eq!(failing.conditions.len(), 3, "replaced in place");
        assert!(
            retrying(&failing, "apply ConfigMap: 403 exceeded quota", &at(30)).is_none(),
            "no write"
        );
        let stalled = MeshGatewayStatus {
            conditions: Conditions::stalled(&Stall {
                reason: StallReason::InvalidSpec,
                message: "bad".into(),
            })
            .build(&[], Some(3), &at(10)),
            ..Default::default()
        };
        assert!(retrying(&stalled, "anything", &at(30)).is_none());
    }

    #[test]
    fn a_condition_keeps_its_time_until_it_flips() {
        let first = Conditions::progressing("Installing", "wait".into()).build(&[], Some(1), &at(10));
        let again = Conditions::progressing("RollingOut", "still".into()).build(&first, Some(2), &at(20));
        assert!(again.iter().all(|c| c.last_transition_time == at(10)));
        assert!(again.iter().all(|c| c.observed_generation == Some(2)));
        let ready = Conditions::ready("Ready", "ok".into()).build(&again, Some(2), &at(30));
        let time = |cs: &[Condition], t: &str| cs.iter().find(|c| c.type_ == t).unwrap().last_transition_time.clone();
        assert_eq!(time(&ready, READY), at(30));
        assert_eq!(time(&ready, RECONCILING), at(30));
        assert_eq!(time(&ready, STALLED), at(10), "Stalled stayed False");
    }

    #[test]
    fn stalled_is_never_reconciling() {
        let stall = Stall {
            reason: StallReason::InvalidSpec,
            message: "bad".into(),
        };
        let c = Conditions::stalled(&stall).build(&[], None, &at(1));
        let get = |t: &str| c.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(
            (get(STALLED).status.as_str(), get(STALLED).reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert_eq!(get(RECONCILING).status, "False");
        assert_eq!(get(READY).status, "False");
    }
}
