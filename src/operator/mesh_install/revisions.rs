//! Revision planning (pure): given what is installed, who uses it and what the status
//! remembered, decide the active revision, where every tag points, whether the rollout has
//! failed, which revisions to delete and when to look again. `plan` runs the steps in
//! order: ready-since, rollout, active, failed, tags, users, prune. Nothing here talks to
//! the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::observe::{RevisionObservation, Usage};
use crate::api::common::StallReason;
use crate::api::mesh_install::{MeshInstall, MeshInstallStatus, Rollout, TagStatus};
use crate::operator::conditions::Stall;

/// How long a new revision may take to become Ready when the spec does not say (as for a
/// Deployment's `progressDeadlineSeconds`).
pub const DEFAULT_PROGRESS_DEADLINE: i64 = 600;
/// The deletion grace period when the spec does not say.
pub const DEFAULT_GRACE: i64 = 30;

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

/// What every step reads: the input, the status last written, and the spec's timings.
struct Frame<'a> {
    input: &'a PlanInput<'a>,
    prev: MeshInstallStatus,
    now: Timestamp,
    installed: BTreeMap<&'a str, &'a RevisionObservation>,
    /// `promotion.minReadySeconds`.
    min_ready: i64,
    /// `promotion.progressDeadlineSeconds`.
    deadline: i64,
    /// `inactiveRevisionDeletionGracePeriodSeconds`.
    grace: i64,
}

impl<'a> Frame<'a> {
    fn new(input: &'a PlanInput<'a>) -> Frame<'a> {
        let strategy = input.mesh.spec.update_strategy.clone().unwrap_or_default();
        let promotion = strategy.promotion.unwrap_or_default();
        Frame {
            input,
            prev: input.mesh.status.clone().unwrap_or_default(),
            now: seconds(input.now),
            installed: input.installed.iter().map(|r| (r.name.as_str(), r)).collect(),
            min_ready: promotion.min_ready_seconds.unwrap_or(0).max(0),
            deadline: promotion
                .progress_deadline_seconds
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
                .max(1),
            grace: strategy
                .inactive_revision_deletion_grace_period_seconds
                .unwrap_or(DEFAULT_GRACE)
                .max(0),
        }
    }

    fn ready(&self, revision: &str) -> bool {
        self.installed.get(revision).is_some_and(|o| o.ready())
    }

    fn target(&self) -> &'a str {
        self.input.target
    }

    fn remembered(&self, revision: &str) -> Option<&crate::api::mesh_install::RevisionStatus> {
        self.prev.revisions.iter().find(|s| s.name == revision)
    }
}

/// Makes the plan. Steps that find something due later add how many seconds to `due`.
pub fn plan(input: &PlanInput) -> Plan {
    let f = Frame::new(input);
    let mut due: Vec<i64> = Vec::new();
    let ready_since = ready_since(&f);
    let rollout = rollout(&f);
    let active = active(&f, &ready_since, &mut due);
    let failed = failed(&f, &active, &rollout, &mut due);
    let tags = tags(&f, &active);
    let users = users(&f, &tags);
    let Pruning { unused_since, prune } = prune(&f, &active, &users, &mut due);
    Plan {
        active,
        tags,
        rollout,
        failed,
        ready_since,
        unused_since,
        users,
        prune,
        requeue: requeue(due),
    }
}

/// Ready-since: per Ready revision, since when (remembered across reconciles).
fn ready_since(f: &Frame) -> BTreeMap<String, Time> {
    f.installed
        .keys()
        .filter(|r| f.ready(r))
        .map(|r| {
            let since = f
                .remembered(r)
                .and_then(|s| s.ready_since.clone())
                .unwrap_or(Time(f.now));
            (r.to_string(), since)
        })
        .collect()
}

/// Rollout: one (target, generation); a spec fix starts a new one, and a new deadline.
fn rollout(f: &Frame) -> Rollout {
    let generation = f.input.mesh.metadata.generation.unwrap_or(0);
    match &f.prev.rollout {
        Some(r) if r.revision == f.target() && r.generation == generation => r.clone(),
        _ => Rollout {
            revision: f.target().to_string(),
            generation,
            start_time: Time(f.now),
        },
    }
}

/// Active: moves to the target once it has stayed Ready long enough. With nothing active
/// yet (a new install, or the active revision gone) the target is active.
fn active(f: &Frame, ready_since: &BTreeMap<String, Time>, due: &mut Vec<i64>) -> String {
    let prev_active = f
        .prev
        .active_revision
        .clone()
        .filter(|a| f.installed.contains_key(a.as_str()));
    match prev_active {
        Some(a) if a != f.target() => match ready_since.get(f.target()) {
            Some(since) if elapsed(since, f.now) >= f.min_ready => f.target().to_string(),
            Some(since) => {
                due.push(f.min_ready - elapsed(since, f.now));
                a
            }
            None => a,
        },
        _ => f.target().to_string(),
    }
}

/// Failed: the target is not active, not Ready, and its deadline has passed.
fn failed(f: &Frame, active: &str, rollout: &Rollout, due: &mut Vec<i64>) -> Option<Stall> {
    if active == f.target() || f.ready(f.target()) {
        return None;
    }
    let waited = elapsed(&rollout.start_time, f.now);
    if waited < f.deadline {
        due.push(f.deadline - waited);
        return None;
    }
    let progress = f
        .installed
        .get(f.target())
        .map_or_else(|| "its objects do not exist".to_string(), |o| o.progress());
    Some(Stall {
        reason: StallReason::RevisionFailed,
        message: format!(
            "revision {} did not become Ready within {}s ({progress}); nothing was promoted, \
             every tag stays where it was and revision {active} keeps serving. Fix the spec, or set \
             version back to roll back",
            f.target(),
            f.deadline
        ),
    })
}

/// Tags: `default` and `Active` follow the active revision; `Latest` follows the target
/// once it is Ready and otherwise stays where it was; a pinned tag resolves only to an
/// installed revision. Names an older MeshInstall has are not published.
fn tags(f: &Frame, active: &str) -> Vec<TagStatus> {
    let prev_tag = |name: &str| {
        f.prev
            .tags
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.revision.clone())
            .filter(|r| f.installed.contains_key(r.as_str()))
    };
    let mut tags: Vec<TagStatus> = Vec::new();
    if f.input.owns_default {
        tags.push(TagStatus {
            name: "default".to_string(),
            revision: active.to_string(),
        });
    }
    let spec_tags = f.input.mesh.spec.revision_tags.iter().flatten();
    for tag in spec_tags.filter(|t| t.name != "default") {
        let revision = match tag.target.as_deref().unwrap_or("Active") {
            "Active" => Some(active.to_string()),
            "Latest" if f.ready(f.target()) => Some(f.target().to_string()),
            "Latest" => prev_tag(&tag.name).or_else(|| Some(active.to_string())),
            pinned => f.installed.contains_key(pinned).then(|| pinned.to_string()),
        };
        if let Some(revision) = revision {
            tags.push(TagStatus {
                name: tag.name.clone(),
                revision,
            });
        }
    }
    tags.retain(|t| !f.input.taken.contains(&t.name));
    tags.sort_by(|a, b| a.name.cmp(&b.name));
    tags
}

/// Users: who uses each installed revision. A label value is a tag first, then a revision.
fn users(f: &Frame, tags: &[TagStatus]) -> BTreeMap<String, Users> {
    let mut users: BTreeMap<String, Users> = f.installed.keys().map(|r| (r.to_string(), Users::default())).collect();
    let mut values: Vec<(String, String)> = tags.iter().map(|t| (t.name.clone(), t.revision.clone())).collect();
    for r in f.installed.keys() {
        if !tags.iter().any(|t| t.name == *r) {
            values.push((r.to_string(), r.to_string()));
        }
    }
    let usage = f.input.usage;
    for (value, revision) in values {
        let Some(u) = users.get_mut(&revision) else { continue };
        if tags.iter().any(|t| t.name == value) {
            u.tags.insert(value.clone());
        }
        u.namespaces
            .extend(usage.namespaces.get(&value).into_iter().flatten().cloned());
        u.gateways
            .extend(usage.gateways.get(&value).into_iter().flatten().cloned());
    }
    users
}

/// What the prune step decided.
struct Pruning {
    unused_since: BTreeMap<String, Time>,
    prune: Vec<String>,
}

/// Prune: a revision neither active nor target, unused for the grace period, is deleted;
/// while usage is not known (the index has not synced) nothing is.
fn prune(f: &Frame, active: &str, users: &BTreeMap<String, Users>, due: &mut Vec<i64>) -> Pruning {
    let mut out = Pruning {
        unused_since: BTreeMap::new(),
        prune: Vec::new(),
    };
    for r in f.installed.keys().filter(|r| **r != active && **r != f.target()) {
        let remembered = f.remembered(r).and_then(|s| s.unused_since.clone());
        if !f.input.usage.synced {
            if let Some(since) = remembered {
                out.unused_since.insert(r.to_string(), since);
            }
            continue;
        }
        if users.get(*r).is_some_and(Users::any) {
            continue;
        }
        let since = remembered.unwrap_or(Time(f.now));
        let waited = elapsed(&since, f.now);
        if waited >= f.grace {
            out.prune.push(r.to_string());
        } else {
            due.push(f.grace - waited);
        }
        out.unused_since.insert(r.to_string(), since);
    }
    out
}

/// When to look again: the soonest thing due. Times are whole seconds; a little extra
/// makes sure the next look is past the mark.
fn requeue(due: Vec<i64>) -> Option<Duration> {
    due.into_iter()
        .filter(|d| *d >= 0)
        .min()
        .map(|d| Duration::from_secs(d as u64) + Duration::from_millis(200))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mesh_install::RevisionStatus;
    use crate::operator::mesh_install::fixtures::{at, mesh, rev};
    use crate::operator::mesh_install::names::target_revision;

    const SPEC: &str = "version: 1.1.0\nupdateStrategy: {type: RevisionBased, inactiveRevisionDeletionGracePeriodSeconds: 30, \
                        promotion: {minReadySeconds: 20, progressDeadlineSeconds: 60}}\n\
                        revisionTags: [{name: stable, target: Active}, {name: canary, target: Latest}, {name: pin, target: m-v1-0-0}]";

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
        assert_eq!(failed.reason, StallReason::RevisionFailed);
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

    /// The admission limits (name ≤ 30, version ≤ 20) keep every revision name a label
    /// value and every owned object's name a DNS label; the CRD holds the same numbers.
    #[test]
    fn revision_names_at_the_admission_limits_fit() {
        use crate::api::mesh_install::{MAX_MESH_NAME, MAX_REVISION_NAME, MAX_VERSION};
        use crate::render::revision::{control_plane_name, proxy_name};
        assert_eq!(MAX_MESH_NAME + "-v".len() + MAX_VERSION, MAX_REVISION_NAME);
        let version = "1.0.0-rc.12345678901";
        assert_eq!(version.len(), MAX_VERSION);
        let mut mi = mesh(
            &format!("version: {version}\nupdateStrategy: {{type: RevisionBased}}"),
            1,
            None,
        );
        mi.metadata.name = Some("a".repeat(MAX_MESH_NAME));
        let revision = target_revision(&mi);
        assert_eq!(revision.len(), MAX_REVISION_NAME);
        assert!(is_dns_label(&revision), "{revision} is not a DNS label");
        for name in [control_plane_name(&revision), proxy_name(&revision)] {
            assert!(name.len() <= 63 && is_dns_label(&name), "{name}");
        }
        let crd = serde_json::to_value(<MeshInstall as kube::CustomResourceExt>::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_eq!(
            schema["properties"]["spec"]["properties"]["version"]["maxLength"],
            MAX_VERSION
        );
        let rules = schema["x-kubernetes-validations"].to_string();
        assert!(
            rules.contains(&format!("size(self.metadata.name) <= {MAX_MESH_NAME}")),
            "{rules}"
        );
    }

    /// A DNS label (RFC 1123), without a regex crate.
    fn is_dns_label(s: &str) -> bool {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        s.len() <= 63 && s.starts_with(ok) && s.ends_with(ok) && s.chars().all(|c| ok(c) || c == '-')
    }
}
