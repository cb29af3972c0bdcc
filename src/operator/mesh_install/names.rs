//! Tag and revision names are cluster-wide (pure): what other MeshInstalls claim, whether
//! this one conflicts with an older one (then it stalls with `NameConflict` and changes
//! nothing), which names it may not publish, and whether it owns the `default` tag.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::revisions::target_revision;
use crate::api::common::StallReason;
use crate::api::mesh_install::MeshInstall;
use crate::operator::conditions::Stall;

/// A MeshInstall's view of another, for name conflicts.
#[derive(Clone, Debug)]
pub struct Neighbour {
    /// Its name.
    pub name: String,
    /// Revision names it has or asks for.
    pub revisions: BTreeSet<String>,
    /// Tag names it defines.
    pub tags: BTreeSet<String>,
    /// Whether it is older than the MeshInstall being reconciled (it then wins).
    pub older: bool,
}

impl Neighbour {
    /// What `mi` claims: its target and installed revisions and its tags.
    pub fn of(mi: &MeshInstall, older: bool) -> Neighbour {
        let mut revisions: BTreeSet<String> = mi
            .status
            .iter()
            .flat_map(|s| s.revisions.iter().map(|r| r.name.clone()))
            .collect();
        revisions.insert(target_revision(mi));
        let tags = mi
            .spec
            .revision_tags
            .iter()
            .flatten()
            .filter(|t| t.name != "default")
            .map(|t| t.name.clone())
            .collect();
        Neighbour {
            name: mi.name_any(),
            revisions,
            tags,
            older,
        }
    }
}

/// Tags and revision names are cluster-wide: a name this MeshInstall wants that an older
/// one already has is a conflict, and the newer one stalls.
pub fn name_conflict(me: &Neighbour, others: &[Neighbour]) -> Option<Stall> {
    for other in others.iter().filter(|o| o.older) {
        let theirs: BTreeSet<&String> = other.revisions.iter().chain(&other.tags).collect();
        let clash = me
            .revisions
            .iter()
            .map(|r| ("revision", r))
            .chain(me.tags.iter().map(|t| ("tag", t)))
            .find(|(_, n)| theirs.contains(n));
        if let Some((what, n)) = clash {
            return Some(Stall {
                reason: StallReason::NameConflict,
                message: format!(
                    "{what} name {n} is already used by the older MeshInstall {}; tag and revision names are \
                     cluster-wide. Rename the tag or the MeshInstall; nothing of this one was changed",
                    other.name
                ),
            });
        }
    }
    None
}

/// What the other MeshInstalls mean for this one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Neighbours {
    /// Set when a name this one wants is an older one's.
    pub conflict: Option<Stall>,
    /// Names older MeshInstalls use: tags of these names are not published.
    pub taken: BTreeSet<String>,
    /// Whether this one owns the implicit `default` tag (it is the oldest).
    pub owns_default: bool,
}

impl Neighbours {
    /// Judges `me` against `others` (each marked older or not).
    pub fn of(me: &MeshInstall, others: &[Neighbour]) -> Neighbours {
        Neighbours {
            conflict: name_conflict(&Neighbour::of(me, false), others),
            taken: others
                .iter()
                .filter(|o| o.older)
                .flat_map(|o| o.revisions.iter().chain(&o.tags).cloned())
                .collect(),
            owns_default: !others.iter().any(|o| o.older),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::mesh_install::fixtures::mesh;

    const SPEC: &str = "version: 1.1.0\nupdateStrategy: {type: RevisionBased}\n\
                        revisionTags: [{name: stable, target: Active}, {name: canary, target: Latest}]";

    #[test]
    fn names_clash_only_with_older_meshes() {
        let mine = Neighbour::of(&mesh(SPEC, 1, None), false);
        let other = |older, tags: &[&str]| Neighbour {
            name: "other".into(),
            revisions: BTreeSet::from(["other".to_string()]),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            older,
        };
        assert_eq!(name_conflict(&mine, &[other(true, &["prod"])]), None);
        let stall = name_conflict(&mine, &[other(true, &["canary"])]).unwrap();
        assert_eq!(stall.reason, StallReason::NameConflict);
        assert!(stall.message.contains("tag name canary"), "{}", stall.message);
        assert_eq!(
            name_conflict(&mine, &[other(false, &["canary"])]),
            None,
            "the older one keeps working"
        );
    }

    #[test]
    fn the_oldest_owns_default_and_older_names_are_taken() {
        let older = Neighbour {
            name: "old".into(),
            revisions: BTreeSet::from(["old".to_string()]),
            tags: BTreeSet::from(["prod".to_string()]),
            older: true,
        };
        let n = Neighbours::of(&mesh(SPEC, 1, None), std::slice::from_ref(&older));
        assert!(!n.owns_default);
        assert_eq!(n.taken, BTreeSet::from(["old".to_string(), "prod".to_string()]));
        assert_eq!(n.conflict, None);
        let newer = Neighbour { older: false, ..older };
        assert!(Neighbours::of(&mesh(SPEC, 1, None), &[newer]).owns_default);
    }
}
