//! Tag and revision names are cluster-wide (pure): what other MeshInstalls claim, whether
//! this one conflicts with an older one (then it stalls with `NameConflict` and changes
//! nothing), which names it may not publish, and whether it owns the `default` tag.

use std::collections::BTreeSet;

use kube::ResourceExt;

use crate::api::common::StallReason;
use crate::api::mesh_install::{MeshInstall, UpdateStrategyType};
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

/// The implicit tag every namespace label falls back to; it belongs to the oldest MeshInstall.
pub const DEFAULT_TAG: &str = "default";

/// Tags and revision names are cluster-wide: a name this MeshInstall wants that an older
/// one already has is a conflict, and the newer one stalls. The implicit `default` tag is
/// the oldest one's (the first older one in `others`, which come oldest first), so a newer
/// MeshInstall may not have a revision of that name either.
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
            return Some(conflict(format!(
                "{what} name {n} is already used by the older MeshInstall {}; tag and revision names are \
                 cluster-wide. Rename the tag or the MeshInstall; nothing of this one was changed",
                other.name
            )));
        }
        if me.revisions.contains(DEFAULT_TAG) {
            return Some(conflict(format!(
                "revision name {DEFAULT_TAG} is the implicit tag {DEFAULT_TAG}, which belongs to the oldest \
                 MeshInstall, {}: namespaces labelled weft.dev/rev={DEFAULT_TAG} would never reach this revision. \
                 Give this MeshInstall another name; nothing of this one was changed",
                other.name
            )));
        }
    }
    own_conflict(me)
}

/// A tag named like one of this MeshInstall's own revisions would silently take over the
/// namespaces pinned to that revision (a label value is looked up as a tag first).
fn own_conflict(me: &Neighbour) -> Option<Stall> {
    let n = me.tags.iter().find(|t| me.revisions.contains(*t))?;
    Some(conflict(format!(
        "tag {n} has the name of a revision of this MeshInstall: namespaces labelled weft.dev/rev={n} to pin that \
         revision would follow the tag instead. Rename the tag; nothing of this one was changed"
    )))
}

fn conflict(message: String) -> Stall {
    Stall {
        reason: StallReason::NameConflict,
        message,
    }
}

/// A tag pinned to a revision that is neither installed nor about to be (the target) would
/// be left out of the tag map, and namespaces using it would get no configuration.
pub fn missing_tag_target(mi: &MeshInstall, installed: &BTreeSet<String>, target: &str) -> Option<Stall> {
    let tags = mi.spec.revision_tags.iter().flatten();
    let (tag, pinned) = tags
        .filter_map(|t| t.target.as_deref().map(|p| (t.name.as_str(), p)))
        .filter(|(_, p)| *p != "Active" && *p != "Latest")
        .find(|(_, p)| *p != target && !installed.contains(*p))?;
    let known: Vec<&str> = installed.iter().map(String::as_str).collect();
    Some(Stall {
        reason: StallReason::TagTargetNotFound,
        message: format!(
            "tag {tag} targets revision {pinned}, which this MeshInstall does not have (installed: {}; target: \
             {target}), so namespaces labelled weft.dev/rev={tag} would get no configuration. Target Active, \
             Latest or an installed revision; nothing of this one was changed",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    })
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

/// The revision a spec asks for: the MeshInstall's name in place, else
/// `<name>-v<major>-<minor>-<patch>`.
pub fn target_revision(mi: &MeshInstall) -> String {
    let strategy = mi.spec.update_strategy.as_ref().map(|s| s.type_).unwrap_or_default();
    match strategy {
        UpdateStrategyType::InPlace => mi.name_any(),
        UpdateStrategyType::RevisionBased => {
            // Dots (and anything else a DNS label cannot hold) become dashes.
            let version: String = mi
                .spec
                .version
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("{}-v{version}", mi.name_any())
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

    fn older(name: &str, revisions: &[&str]) -> Neighbour {
        Neighbour {
            name: name.into(),
            revisions: revisions.iter().map(|r| r.to_string()).collect(),
            tags: BTreeSet::new(),
            older: true,
        }
    }

    fn named(name: &str, spec: &str) -> MeshInstall {
        let mut mi = mesh(spec, 1, None);
        mi.metadata.name = Some(name.into());
        mi
    }

    #[test]
    fn a_newer_mesh_named_default_conflicts_with_the_implicit_tag() {
        let newer = Neighbour::of(&named("default", "version: 1.1.0"), false);
        // Others come oldest first: the first older one owns the tag and is named.
        let others = [older("first", &["first"]), older("second", &["second"])];
        let stall = name_conflict(&newer, &others).expect("a conflict");
        assert_eq!(stall.reason, StallReason::NameConflict);
        assert!(
            stall.message.contains(
                "revision name default is the implicit tag default, which belongs to the oldest MeshInstall, first:"
            ),
            "{}",
            stall.message
        );
        assert_eq!(
            name_conflict(&newer, &[]),
            None,
            "the oldest may be named default: the tag is its own"
        );
        let revision_based = Neighbour::of(&named("default", SPEC), false);
        assert_eq!(
            name_conflict(&revision_based, &[older("first", &["first"])]),
            None,
            "its revisions are default-v1-1-0, not default"
        );
    }

    #[test]
    fn a_tag_named_like_an_own_revision_conflicts() {
        let spec =
            "version: 1.1.0\nupdateStrategy: {type: RevisionBased}\nrevisionTags: [{name: m-v1-1-0, target: Latest}]";
        let stall = name_conflict(&Neighbour::of(&mesh(spec, 1, None), false), &[]).expect("a conflict");
        assert_eq!(stall.reason, StallReason::NameConflict);
        assert!(
            stall.message.contains("tag m-v1-1-0 has the name of a revision"),
            "{}",
            stall.message
        );
        let in_place = "version: 1.1.0\nrevisionTags: [{name: m}]";
        assert!(name_conflict(&Neighbour::of(&mesh(in_place, 1, None), false), &[]).is_some());
        assert_eq!(name_conflict(&Neighbour::of(&mesh(SPEC, 1, None), false), &[]), None);
    }

    #[test]
    fn a_tag_pinned_to_a_missing_revision_is_reported() {
        let spec =
            "version: 1.1.0\nupdateStrategy: {type: RevisionBased}\nrevisionTags: [{name: old, target: m-v1-0-0}]";
        let mi = mesh(spec, 1, None);
        let none = BTreeSet::new();
        let stall = missing_tag_target(&mi, &none, "m-v1-1-0").expect("reported");
        assert_eq!(stall.reason, StallReason::TagTargetNotFound);
        assert!(
            stall.message.contains("tag old targets revision m-v1-0-0") && stall.message.contains("installed: none"),
            "{}",
            stall.message
        );
        let installed = BTreeSet::from(["m-v1-0-0".to_string()]);
        assert_eq!(missing_tag_target(&mi, &installed, "m-v1-1-0"), None);
        assert_eq!(
            missing_tag_target(&mi, &none, "m-v1-0-0"),
            None,
            "the target is on its way"
        );
        assert_eq!(
            missing_tag_target(&mesh(SPEC, 1, None), &none, "m-v1-1-0"),
            None,
            "Active and Latest always resolve"
        );
    }
}
