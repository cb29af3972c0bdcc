//! Revision planning (pure): given what is installed, who uses it and what the status
//! remembered, decide the active revision, where every tag points, whether the rollout has
//! failed, which revisions to delete and when to look again. The reconcile applies the
//! plan; nothing here talks to the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::status::{RevisionObservation, Stall};
use crate::api::mesh_install::{MeshInstall, MeshInstallStatus, Rollout, TagStatus, UpdateStrategyType};

/// How long a new revision may take to become Ready when the spec does not say (as for a
/// Deployment's `progressDeadlineSeconds`).
pub const DEFAULT_PROGRESS_DEADLINE: i64 = 600;
/// The deletion grace period when the spec does not say.
pub const DEFAULT_GRACE: i64 = 30;

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

/// Who uses the revisions, looked up in the usage index for just the label values that
/// matter (this mesh's tags and revision names).
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Whether the index has listed everything once. Until then usage is unknown, and an
    /// unknown usage never deletes anything.
    pub synced: bool,
    /// Namespaces by their `weft.dev/rev` value.
    pub namespaces: BTreeMap<String, BTreeSet<String>>,
    /// Gateways (`namespace/name`) of this mesh by the tag or revision they follow.
    pub gateways: BTreeMap<String, BTreeSet<String>>,
}

/// Who uses one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    /// Namespaces whose label resolves to it.
    pub namespaces: BTreeSet<String>,
    /// Gateways that resolve to it.
    pub gateways: BTreeSet<String>,
    /// Tags that resolve to it.
    pub tags: BTreeSet<String>,
}

impl Users {
    /// Anything at all.
    pub fn any(&self) -> bool {
        !(self.namespaces.is_empty() && self.gateways.is_empty() && self.tags.is_empty())
    }
}

/// Everything a plan is made from.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// The MeshInstall, with the status last written.
    pub mesh: &'a MeshInstall,
    /// The revision the spec asks for.
    pub target: &'a str,
    /// Installed revisions.
    pub installed: &'a [RevisionObservation],
    /// Who uses what.
    pub usage: &'a Usage,
    /// Whether this MeshInstall owns the implicit `default` tag (it is the oldest).
    pub owns_default: bool,
    /// Names older MeshInstalls already use: tags of these names are not published.
    pub taken: &'a BTreeSet<String>,
    /// Now.
    pub now: Timestamp,
}

/// What the reconcile should do and report.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The active revision (what `default` and `Active` tags resolve to).
    pub active: String,
    /// Where each tag points, sorted by name.
    pub tags: Vec<TagStatus>,
    /// The rollout of the target, as remembered in status.
    pub rollout: Rollout,
    /// Set when the target missed its progress deadline.
    pub failed: Option<Stall>,
    /// Per installed revision: since when Ready.
    pub ready_since: BTreeMap<String, Time>,
    /// Per installed revision: since when unused.
    pub unused_since: BTreeMap<String, Time>,
    /// Per installed revision: who uses it.
    pub users: BTreeMap<String, Users>,
    /// Revisions to delete now.
    pub prune: Vec<String>,
    /// When something falls due (promotion, deadline or deletion), if anything does.
    pub requeue: Option<Duration>,
}

/// Whole seconds: status times are written at that precision, so remembered times must
/// compare equal after a round trip.
fn seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn elapsed(since: &Time, now: Timestamp) -> i64 {
    now.as_second() - since.0.as_second()
}

/// Makes the plan.
pub fn plan(input: &PlanInput) -> Plan {
    let mi = input.mesh;
    let prev: MeshInstallStatus = mi.status.clone().unwrap_or_default();
    let now = seconds(input.now);
    let strategy = mi.spec.update_strategy.clone().unwrap_or_default();
    let min_ready = strategy
        .promotion
        .as_ref()
        .and_then(|p| p.min_ready_seconds)
        .unwrap_or(0)
        .max(0);
    let deadline = strategy
        .promotion
        .as_ref()
        .and_then(|p| p.progress_deadline_seconds)
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
        .max(1);
    let grace = strategy
        .inactive_revision_deletion_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE)
        .max(0);
    let installed: BTreeMap<&str, &RevisionObservation> =
        input.installed.iter().map(|r| (r.name.as_str(), r)).collect();
    let ready = |r: &str| installed.get(r).is_some_and(|o| o.ready());
    let prev_rev = |r: &str| prev.revisions.iter().find(|s| s.name == r);
    let mut due: Vec<i64> = Vec::new();

    let ready_since: BTreeMap<String, Time> = installed
        .keys()
        .filter(|r| ready(r))
        .map(|r| {
            let since = prev_rev(r).and_then(|s| s.ready_since.clone()).unwrap_or(Time(now));
            (r.to_string(), since)
        })
        .collect();

    // A rollout is one (target, generation); a spec fix starts a new one, and a new deadline.
    let generation = mi.metadata.generation.unwrap_or(0);
    let rollout = match &prev.rollout {
        Some(r) if r.revision == input.target && r.generation == generation => r.clone(),
        _ => Rollout {
            revision: input.target.to_string(),
            generation,
            start_time: Time(now),
        },
    };

    // The active revision moves to the target once it has stayed Ready long enough. With
    // nothing active yet (a new install, or the active revision gone) the target is active.
    let prev_active = prev
        .active_revision
        .clone()
        .filter(|a| installed.contains_key(a.as_str()));
    let active = match prev_active {
        Some(a) if a != input.target => match ready_since.get(input.target) {
            Some(since) if elapsed(since, now) >= min_ready => input.target.to_string(),
            Some(since) => {
                due.push(min_ready - elapsed(since, now));
                a
            }
            None => a,
        },
        _ => input.target.to_string(),
    };

    let failed = if active != input.target && !ready(input.target) {
        let waited = elapsed(&rollout.start_time, now);
        if waited >= deadline {
            let progress = installed
                .get(input.target)
                .map_or_else(|| "its objects do not exist".to_string(), |o| o.progress());
            Some(Stall {
                reason: "RevisionFailed",
                message: format!(
                    "revision {} did not become Ready within {deadline}s ({progress}); nothing was promoted, \
                     every tag stays where it was and revision {active} keeps serving. Fix the spec, or set \
                     version back to roll back",
                    input.target
                ),
            })
        } else {
            due.push(deadline - waited);
            None
        }
    } else {
        None
    };

    // Tags: `Latest` follows the target once it is Ready and otherwise stays where it was.
    let prev_tag = |name: &str| {
        prev.tags
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.revision.clone())
            .filter(|r| installed.contains_key(r.as_str()))
    };
    let mut tags: Vec<TagStatus> = Vec::new();
    if input.owns_default {
        tags.push(TagStatus {
            name: "default".to_string(),
            revision: active.clone(),
        });
    }
    for tag in mi.spec.revision_tags.iter().flatten().filter(|t| t.name != "default") {
        let revision = match tag.target.as_deref().unwrap_or("Active") {
            "Active" => Some(active.clone()),
            "Latest" if ready(input.target) => Some(input.target.to_string()),
            "Latest" => prev_tag(&tag.name).or_else(|| Some(active.clone())),
            pinned => installed.contains_key(pinned).then(|| pinned.to_string()),
        };
        if let Some(revision) = revision {
            tags.push(TagStatus {
                name: tag.name.clone(),
                revision,
            });
        }
    }
    tags.retain(|t| !input.taken.contains(&t.name));
    tags.sort_by(|a, b| a.name.cmp(&b.name));

    // Who uses what: a label value is a tag first, then a revision name.
    let mut users: BTreeMap<String, Users> = installed.keys().map(|r| (r.to_string(), Users::default())).collect();
    let mut values: Vec<(String, String)> = tags.iter().map(|t| (t.name.clone(), t.revision.clone())).collect();
    for r in installed.keys() {
        if !tags.iter().any(|t| t.name == *r) {
            values.push((r.to_string(), r.to_string()));
        }
    }
    for (value, revision) in values {
        let Some(u) = users.get_mut(&revision) else { continue };
        if tags.iter().any(|t| t.name == value) {
            u.tags.insert(value.clone());
        }
        u.namespaces
            .extend(input.usage.namespaces.get(&value).into_iter().flatten().cloned());
        u.gateways
            .extend(input.usage.gateways.get(&value).into_iter().flatten().cloned());
    }

    // Deletion: neither active nor target, unused for the grace period, and usage known.
    let mut unused_since = BTreeMap::new();
    let mut prune = Vec::new();
    for r in installed.keys().filter(|r| **r != active && **r != input.target) {
        let remembered = prev_rev(r).and_then(|s| s.unused_since.clone());
        if !input.usage.synced {
            if let Some(since) = remembered {
                unused_since.insert(r.to_string(), since);
            }
            continue;
        }
        if users.get(*r).is_some_and(Users::any) {
            continue;
        }
        let since = remembered.unwrap_or(Time(now));
        let waited = elapsed(&since, now);
        if waited >= grace {
            prune.push(r.to_string());
        } else {
            due.push(grace - waited);
        }
        unused_since.insert(r.to_string(), since);
    }

    // Times are whole seconds; a little extra makes sure the next look is past the mark.
    let requeue = due
        .into_iter()
        .filter(|d| *d >= 0)
        .min()
        .map(|d| Duration::from_secs(d as u64) + Duration::from_millis(200));
    Plan {
        active,
        tags,
        rollout,
        failed,
        ready_since,
        unused_since,
        users,
        prune,
        requeue,
    }
}

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
                reason: "NameConflict",
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

/// One step of an upgrade, for Events and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Metric label and Event reason: `created`, `tag_moved`, `promoted`, `held`, `pruned`.
    pub kind: &'static str,
    /// What happened, for a person.
    pub message: String,
}

/// The steps between the status written before and the status about to be written.
pub fn transitions(prev: &MeshInstallStatus, new: &MeshInstallStatus, pruned: &[String]) -> Vec<Transition> {
    let mut out = Vec::new();
    for r in &new.revisions {
        if !prev.revisions.iter().any(|p| p.name == r.name) {
            out.push(Transition {
                kind: "created",
                message: format!("revision {} (version {}) installed", r.name, r.version),
            });
        }
    }
    for t in &new.tags {
        match prev.tags.iter().find(|p| p.name == t.name) {
            Some(p) if p.revision != t.revision => out.push(Transition {
                kind: "tag_moved",
                message: format!("tag {} moved from {} to {}", t.name, p.revision, t.revision),
            }),
            _ => {}
        }
    }
    if let (Some(a), Some(b)) = (&prev.active_revision, &new.active_revision)
        && a != b
    {
        out.push(Transition {
            kind: "promoted",
            message: format!("revision {b} is now active (was {a})"),
        });
    }
    let failed = |s: &MeshInstallStatus| {
        s.conditions.iter().any(|c| {
            c.type_ == crate::api::common::condition::STALLED && c.status == "True" && c.reason == "RevisionFailed"
        })
    };
    if failed(new) && !failed(prev) {
        out.push(Transition {
            kind: "held",
            message: format!(
                "upgrade to {} held: it did not become Ready in time",
                new.target_revision.clone().unwrap_or_default()
            ),
        });
    }
    for r in pruned {
        out.push(Transition {
            kind: "pruned",
            message: format!("revision {r} deleted: not active, not targeted and unused for the grace period"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mesh_install::{MeshInstallSpec, ReplicaCounts, RevisionStatus};
    use crate::operator::status::Health;
    use kube::core::ObjectMeta;

    const SPEC: &str = "version: 1.1.0\nupdateStrategy: {type: RevisionBased, inactiveRevisionDeletionGracePeriodSeconds: 30, \
                        promotion: {minReadySeconds: 20, progressDeadlineSeconds: 60}}\n\
                        revisionTags: [{name: stable, target: Active}, {name: canary, target: Latest}, {name: pin, target: m-v1-0-0}]";

    fn mesh(spec: &str, generation: i64, status: Option<MeshInstallStatus>) -> MeshInstall {
        MeshInstall {
            metadata: ObjectMeta {
                name: Some("m".into()),
                generation: Some(generation),
                ..Default::default()
            },
            spec: serde_saphyr::from_str::<MeshInstallSpec>(spec).unwrap(),
            status,
        }
    }

    fn rev(name: &str, ready: bool) -> RevisionObservation {
        let health = Health {
            counts: ReplicaCounts {
                desired: 1,
                ready: ready as i32,
            },
            ready,
        };
        RevisionObservation {
            name: name.into(),
            version: "x".into(),
            control_plane: Some(health),
            proxy: None,
            proxy_wanted: false,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn synced() -> Usage {
        Usage {
            synced: true,
            ..Default::default()
        }
    }

    /// Plans, then returns the plan and the MeshInstall carrying the status the reconcile
    /// would write, for the next step.
    fn step(mi: &MeshInstall, installed: &[RevisionObservation], usage: &Usage, now: i64) -> (Plan, MeshInstall) {
        let target = target_revision(mi);
        let p = plan(&PlanInput {
            mesh: mi,
            target: &target,
            installed,
            usage,
            owns_default: true,
            taken: &BTreeSet::new(),
            now: at(now),
        });
        let status = MeshInstallStatus {
            active_revision: Some(p.active.clone()),
            tags: p.tags.clone(),
            rollout: Some(p.rollout.clone()),
            revisions: installed
                .iter()
                .map(|r| RevisionStatus {
                    name: r.name.clone(),
                    ready_since: p.ready_since.get(&r.name).cloned(),
                    unused_since: p.unused_since.get(&r.name).cloned(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let next = MeshInstall {
            status: Some(status),
            ..mi.clone()
        };
        (p, next)
    }

    fn tag(p: &Plan, name: &str) -> Option<String> {
        p.tags.iter().find(|t| t.name == name).map(|t| t.revision.clone())
    }

    #[test]
    fn revision_names_carry_the_version() {
        assert_eq!(target_revision(&mesh(SPEC, 1, None)), "m-v1-1-0");
        assert_eq!(target_revision(&mesh("version: 1.1.0", 1, None)), "m");
    }

    #[test]
    fn a_new_install_is_active_at_once() {
        let (p, _) = step(&mesh(SPEC, 1, None), &[rev("m-v1-1-0", false)], &synced(), 0);
        assert_eq!(p.active, "m-v1-1-0");
        assert_eq!(tag(&p, "default").as_deref(), Some("m-v1-1-0"));
        assert_eq!(tag(&p, "stable").as_deref(), Some("m-v1-1-0"));
        assert_eq!(
            tag(&p, "pin"),
            None,
            "a pin to a revision that is not installed resolves nowhere"
        );
        assert!(p.failed.is_none());
    }

    /// The whole canary: Latest moves when the new revision is Ready, Active after
    /// minReadySeconds, the old revision is kept while pinned and deleted after the grace
    /// period once unpinned.
    #[test]
    fn canary_upgrade_promotes_in_steps_and_prunes_after_the_grace_period() {
        let old_spec = SPEC.replace("1.1.0", "1.0.0");
        let (_, mi) = step(&mesh(&old_spec, 1, None), &[rev("m-v1-0-0", true)], &synced(), 0);
        let mi = mesh(SPEC, 2, mi.status);
        let pinned = Usage {
            synced: true,
            namespaces: BTreeMap::from([("pin".to_string(), BTreeSet::from(["legacy".to_string()]))]),
            ..Default::default()
        };

        // The new revision is installing: nothing moves, the deadline is the next look.
        let both = |new_ready| [rev("m-v1-0-0", true), rev("m-v1-1-0", new_ready)];
        let (p, mi) = step(&mi, &both(false), &pinned, 100);
        assert_eq!(p.active, "m-v1-0-0");
        assert_eq!(tag(&p, "canary").as_deref(), Some("m-v1-0-0"));
        assert_eq!(p.requeue.map(|d| d.as_secs()), Some(60));
        assert!(p.prune.is_empty());

        // Ready: canary (Latest) moves, stable waits for minReadySeconds.
        let (p, mi) = step(&mi, &both(true), &pinned, 110);
        assert_eq!(tag(&p, "canary").as_deref(), Some("m-v1-1-0"));
        assert_eq!(tag(&p, "stable").as_deref(), Some("m-v1-0-0"));
        assert_eq!(p.active, "m-v1-0-0");
        assert_eq!(
            p.requeue.map(|d| d.as_secs()),
            Some(20),
            "looked at again exactly when due"
        );
        let (p, mi) = step(&mi, &both(true), &pinned, 129);
        assert_eq!(p.active, "m-v1-0-0", "19 s is not enough");

        // Promoted: Active tags and default move; the pinned namespace keeps the old one.
        let (p, mi) = step(&mi, &both(true), &pinned, 130);
        assert_eq!(p.active, "m-v1-1-0");
        assert_eq!(tag(&p, "default").as_deref(), Some("m-v1-1-0"));
        assert_eq!(tag(&p, "stable").as_deref(), Some("m-v1-1-0"));
        assert_eq!(tag(&p, "pin").as_deref(), Some("m-v1-0-0"));
        let users = &p.users["m-v1-0-0"];
        assert_eq!(users.namespaces, BTreeSet::from(["legacy".to_string()]));
        assert_eq!(users.tags, BTreeSet::from(["pin".to_string()]));
        let (p, mi) = step(&mi, &both(true), &pinned, 1000);
        assert!(p.prune.is_empty(), "in use: never deleted");

        // Unpinned (the tag removed from the spec, the namespace relabelled): deleted after
        // the grace period, not before.
        let mi = mesh(&SPEC.replace(", {name: pin, target: m-v1-0-0}", ""), 3, mi.status);
        let (p, mi) = step(&mi, &both(true), &synced(), 1010);
        assert!(p.prune.is_empty());
        assert_eq!(p.unused_since["m-v1-0-0"].0, at(1010));
        assert_eq!(p.requeue.map(|d| d.as_secs()), Some(30));
        let (p, mi) = step(&mi, &both(true), &synced(), 1039);
        assert!(p.prune.is_empty());
        let (p, _) = step(&mi, &both(true), &synced(), 1040);
        assert_eq!(p.prune, ["m-v1-0-0"]);
    }

    #[test]
    fn a_revision_that_misses_its_deadline_holds_everything_until_the_spec_is_fixed() {
        let old_spec = SPEC.replace("1.1.0", "1.0.0");
        let (_, mi) = step(&mesh(&old_spec, 1, None), &[rev("m-v1-0-0", true)], &synced(), 0);
        let before = mi.status.clone().unwrap().tags;
        let mi = mesh(SPEC, 2, mi.status);
        let both = |new_ready| [rev("m-v1-0-0", true), rev("m-v1-1-0", new_ready)];
        let (p, mi) = step(&mi, &both(false), &synced(), 10);
        assert!(p.failed.is_none());
        let (p, mi) = step(&mi, &both(false), &synced(), 70);
        let failed = p.failed.clone().expect("failed after the deadline");
        assert_eq!(failed.reason, "RevisionFailed");
        assert!(failed.message.contains("m-v1-0-0 keeps serving"), "{}", failed.message);
        assert_eq!(p.tags, before, "no tag moved");
        assert_eq!(p.active, "m-v1-0-0");
        assert!(p.prune.is_empty());

        // A spec fix (new generation) is a new rollout with a fresh deadline.
        let mi = mesh(SPEC, 3, mi.status);
        let (p, _) = step(&mi, &both(false), &synced(), 80);
        assert!(p.failed.is_none());
        assert_eq!(p.rollout.start_time.0, at(80));

        // Rolling back targets the old revision, which is active and Ready: nothing failed,
        // and the failed one is unused and will be deleted.
        let (p, _) = step(&mesh(&old_spec, 4, mi.status), &both(false), &synced(), 90);
        assert!(p.failed.is_none());
        assert_eq!(p.active, "m-v1-0-0");
        assert!(p.unused_since.contains_key("m-v1-1-0"));
    }

    #[test]
    fn unknown_usage_never_deletes() {
        let old_spec = SPEC
            .replace("1.1.0", "1.0.0")
            .replace(", {name: pin, target: m-v1-0-0}", "");
        let (_, mi) = step(&mesh(&old_spec, 1, None), &[rev("m-v1-0-0", true)], &synced(), 0);
        let mi = mesh(&SPEC.replace(", {name: pin, target: m-v1-0-0}", ""), 2, mi.status);
        let both = [rev("m-v1-0-0", true), rev("m-v1-1-0", true)];
        let (_, mi) = step(&mi, &both, &synced(), 10);
        let (p, mi) = step(&mi, &both, &synced(), 30);
        assert_eq!(p.active, "m-v1-1-0");
        let (p, _) = step(&mi, &both, &Usage::default(), 1000);
        assert!(p.prune.is_empty(), "the usage index has not synced");
    }

    #[test]
    fn switching_from_in_place_keeps_the_old_revision_until_the_new_one_is_promoted() {
        let (_, mi) = step(&mesh("version: 1.0.0", 1, None), &[rev("m", true)], &synced(), 0);
        let mi = mesh(&SPEC.replace("1.1.0", "1.0.0"), 2, mi.status);
        let (p, mi) = step(&mi, &[rev("m", true), rev("m-v1-0-0", false)], &synced(), 5);
        assert_eq!(p.active, "m");
        assert_eq!(tag(&p, "default").as_deref(), Some("m"));
        let (_, mi) = step(&mi, &[rev("m", true), rev("m-v1-0-0", true)], &synced(), 6);
        let (p, _) = step(&mi, &[rev("m", true), rev("m-v1-0-0", true)], &synced(), 26);
        assert_eq!(p.active, "m-v1-0-0");
        assert!(
            p.unused_since.contains_key("m"),
            "the in-place revision is deleted after the grace period"
        );
    }

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
        assert_eq!(stall.reason, "NameConflict");
        assert!(stall.message.contains("tag name canary"), "{}", stall.message);
        assert_eq!(
            name_conflict(&mine, &[other(false, &["canary"])]),
            None,
            "the older one keeps working"
        );
    }

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
        let kinds = |t: Vec<Transition>| t.into_iter().map(|t| t.kind).collect::<Vec<_>>();
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
}
