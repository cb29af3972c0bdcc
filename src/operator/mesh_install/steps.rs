//! The steps of an upgrade (pure): what changed between the status written before and the
//! status about to be written, as typed steps with the one place that names them for
//! metrics and Events.

use super::status::is_revision_failed;
use crate::api::mesh_install::MeshInstallStatus;
use crate::operator::events::Note;

/// One kind of upgrade step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionStep {
    /// A revision was installed.
    Created,
    /// A tag now resolves to another revision.
    TagMoved,
    /// Another revision became active.
    Promoted,
    /// The target missed its progress deadline; nothing moves.
    Held,
    /// An unused revision was deleted.
    Pruned,
}

impl RevisionStep {
    /// The `step` label of `weft_revision_steps_total`.
    pub fn label(self) -> &'static str {
        match self {
            RevisionStep::Created => "created",
            RevisionStep::TagMoved => "tag_moved",
            RevisionStep::Promoted => "promoted",
            RevisionStep::Held => "held",
            RevisionStep::Pruned => "pruned",
        }
    }

    /// The Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            RevisionStep::Created => "RevisionCreated",
            RevisionStep::TagMoved => "TagMoved",
            RevisionStep::Promoted => "Promoted",
            RevisionStep::Held => "UpgradeHeld",
            RevisionStep::Pruned => "RevisionPruned",
        }
    }
}

/// One step of an upgrade, for Events and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Which step.
    pub step: RevisionStep,
    /// What happened, for a person.
    pub message: String,
}

impl Transition {
    fn new(step: RevisionStep, message: String) -> Transition {
        Transition { step, message }
    }

    /// The Event that records it (a held upgrade is a warning).
    pub fn note(&self) -> Note {
        let reason = self.step.reason();
        match self.step {
            RevisionStep::Held => Note::warning(reason, "Upgrade", self.message.clone()),
            _ => Note::normal(reason, "Upgrade", self.message.clone()),
        }
    }
}

/// The steps between the status written before and the status about to be written.
pub fn transitions(prev: &MeshInstallStatus, new: &MeshInstallStatus, pruned: &[String]) -> Vec<Transition> {
    let mut out = Vec::new();
    for r in new
        .revisions
        .iter()
        .filter(|r| !prev.revisions.iter().any(|p| p.name == r.name))
    {
        let message = format!("revision {} (version {}) installed", r.name, r.version);
        out.push(Transition::new(RevisionStep::Created, message));
    }
    for t in &new.tags {
        if let Some(p) = prev.tags.iter().find(|p| p.name == t.name && p.revision != t.revision) {
            let message = format!("tag {} moved from {} to {}", t.name, p.revision, t.revision);
            out.push(Transition::new(RevisionStep::TagMoved, message));
        }
    }
    if let (Some(a), Some(b)) = (&prev.active_revision, &new.active_revision)
        && a != b
    {
        let message = format!("revision {b} is now active (was {a})");
        out.push(Transition::new(RevisionStep::Promoted, message));
    }
    if is_revision_failed(new) && !is_revision_failed(prev) {
        let target = new.target_revision.clone().unwrap_or_default();
        let message = format!("upgrade to {target} held: it did not become Ready in time");
        out.push(Transition::new(RevisionStep::Held, message));
    }
    for r in pruned {
        let message = format!("revision {r} deleted: not active, not targeted and unused for the grace period");
        out.push(Transition::new(RevisionStep::Pruned, message));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mesh_install::{RevisionStatus, TagStatus};

    #[test]
    fn transitions_name_every_step() {
        let s = |active: &str, canary: &str, revs: &[&str]| MeshInstallStatus {
            active_revision: Some(active.into()),
            tags: vec![TagStatus {
                name: "canary".into(),
                revision: canary.into(),
            }],
            revisions: revs
                .iter()
                .map(|r| RevisionStatus {
                    name: r.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let kinds = |t: Vec<Transition>| t.into_iter().map(|t| t.step.label()).collect::<Vec<_>>();
        assert_eq!(
            kinds(transitions(&s("a", "a", &["a"]), &s("a", "a", &["a"]), &[])),
            Vec::<&str>::new()
        );
        assert_eq!(
            kinds(transitions(&s("a", "a", &["a"]), &s("a", "a", &["a", "b"]), &[])),
            ["created"]
        );
        assert_eq!(
            kinds(transitions(&s("a", "a", &["a", "b"]), &s("b", "b", &["a", "b"]), &[])),
            ["tag_moved", "promoted"]
        );
        assert_eq!(
            kinds(transitions(
                &s("b", "b", &["a", "b"]),
                &s("b", "b", &["b"]),
                &["a".into()]
            )),
            ["pruned"]
        );
    }

    #[test]
    fn every_step_has_its_api_names() {
        let steps = [
            RevisionStep::Created,
            RevisionStep::TagMoved,
            RevisionStep::Promoted,
            RevisionStep::Held,
            RevisionStep::Pruned,
        ];
        let reasons: Vec<&str> = steps.iter().map(|s| s.reason()).collect();
        assert_eq!(
            reasons,
            [
                "RevisionCreated",
                "TagMoved",
                "Promoted",
                "UpgradeHeld",
                "RevisionPruned"
            ]
        );
        let held = Transition::new(RevisionStep::Held, "held".into()).note();
        assert!(held.warning);
    }
}
