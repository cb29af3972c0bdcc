//! Revision-based canary upgrades end to end: `weft operator` as a process against the test
//! bed, with namespaces labelled by tag or revision, checked through what `kubectl get mi`
//! shows (status) and what exists in the cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use weft::api::MeshInstall;
use weft::api::mesh_install::MeshInstallStatus;
use weft_e2e::operator::{Operator, SERIAL, TIMEOUT, condition, delete_and_wait, install_crds, mesh, wait_ready};
use weft_e2e::{Bed, wait_for};

/// A RevisionBased MeshInstall with tags `stable` (Active) and `canary` (Latest).
fn revision_based(name: &str, min_ready: i64, deadline: i64, grace: i64) -> MeshInstall {
    mesh(
        name,
        &format!("e2e-{name}"),
        json!({
            "profile": "minimal",
            "updateStrategy": {
                "type": "RevisionBased",
                "inactiveRevisionDeletionGracePeriodSeconds": grace,
                "promotion": {"minReadySeconds": min_ready, "progressDeadlineSeconds": deadline}
            },
            "revisionTags": [{"name": format!("{name}-stable"), "target": "Active"}, {"name": format!("{name}-canary"), "target": "Latest"}]
        }),
    )
}

fn tags(s: &MeshInstallStatus) -> BTreeMap<String, String> {
    s.tags.iter().map(|t| (t.name.clone(), t.revision.clone())).collect()
}

async fn status_when<F>(api: &Api<MeshInstall>, name: &str, what: &str, op: &Operator, f: F) -> MeshInstallStatus
where
    F: Fn(&MeshInstall, &MeshInstallStatus) -> bool,
{
    wait_for(what, TIMEOUT, || async {
        let mi = api.get(name).await.map_err(|e| e.to_string())?;
        let s = mi.status.clone().unwrap_or_default();
        if f(&mi, &s) {
            Ok(s)
        } else {
            Err(format!("status: {s:?}\noperator log:\n{}", op.log_tail()))
        }
    })
    .await
}

async fn label_namespace(bed: &Bed, name: &str, value: &str) {
    let api: Api<Namespace> = Api::all(bed.client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"weft.dev/rev": value, "weft.dev/e2e": "true"}}});
    api.patch(name, &PatchParams::apply("weft-e2e").force(), &Patch::Apply(&ns))
        .await
        .expect("label namespace");
}

async fn set_version(api: &Api<MeshInstall>, name: &str, spec: serde_json::Value) {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&json!({ "spec": spec })))
        .await
        .expect("patch spec");
}

async fn deployment_uid(bed: &Bed, ns: &str, name: &str) -> Option<String> {
    let api: Api<Deployment> = Api::namespaced(bed.client.clone(), ns);
    api.get_opt(name).await.expect("read deployment").and_then(|d| d.uid())
}

/// The canary path of the issue: stable follows Active, canary follows Latest, a namespace
/// pinned to the old revision keeps it alive; unpinned, it is deleted after the grace period.
#[tokio::test]
async fn canary_upgrade_moves_latest_then_active_and_prunes_the_old_revision_once_unpinned() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "upgrade", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "canary").await;
    api.create(&PostParams::default(), &revision_based("canary", 6, 120, 3))
        .await
        .expect("create");
    let s = wait_ready(&api, "canary", &op).await.status.unwrap();
    let (old, new) = ("canary-v1-0-0", "canary-v1-1-0");
    assert_eq!(s.active_revision.as_deref(), Some(old));
    assert_eq!(
        tags(&s),
        BTreeMap::from([
            ("canary-canary".to_string(), old.to_string()),
            ("canary-stable".to_string(), old.to_string()),
            ("default".to_string(), old.to_string()),
        ])
    );
    label_namespace(&bed, "e2e-canary-stable", "canary-stable").await;
    label_namespace(&bed, "e2e-canary-canary", "canary-canary").await;
    label_namespace(&bed, "e2e-canary-pinned", old).await;
    status_when(&api, "canary", "namespaces to show as users", &op, |_, s| {
        s.revisions.iter().any(|r| {
            r.name == old
                && r.namespaces == ["e2e-canary-canary", "e2e-canary-pinned", "e2e-canary-stable"].map(String::from)
        })
    })
    .await;

    // Upgrade. The canary tag moves when the new revision is Ready; stable does not yet.
    set_version(&api, "canary", json!({"version": "1.1.0"})).await;
    let s = status_when(
        &api,
        "canary",
        "the canary tag to move to the new revision",
        &op,
        |_, s| tags(s).get("canary-canary").map(String::as_str) == Some(new),
    )
    .await;
    let canary_moved = Instant::now();
    assert_eq!(tags(&s)["canary-stable"], old, "stable waits for minReadySeconds");
    assert_eq!(s.active_revision.as_deref(), Some(old));
    assert_eq!(condition_of(&s, "Reconciling").0, "True");
    assert!(
        s.revisions.iter().any(|r| r.name == old && r.ready),
        "the old revision keeps serving"
    );

    // After minReadySeconds: promoted; default and stable move.
    let s = status_when(&api, "canary", "the new revision to be promoted", &op, |mi, s| {
        s.active_revision.as_deref() == Some(new) && condition(mi, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert!(
        canary_moved.elapsed() >= Duration::from_secs(4),
        "promoted only after the revision stayed Ready (minReadySeconds 6, whole-second times): {:?}",
        canary_moved.elapsed()
    );
    assert_eq!(tags(&s)["canary-stable"], new);
    assert_eq!(tags(&s)["default"], new);
    let old_status = s.revisions.iter().find(|r| r.name == old).expect("old revision kept");
    assert!(old_status.in_use);
    assert_eq!(old_status.namespaces, ["e2e-canary-pinned"]);

    // Pinned: the old revision outlives its grace period (3 s) for as long as we look.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        assert!(
            deployment_uid(&bed, "e2e-canary", &format!("weft-cp-{old}"))
                .await
                .is_some(),
            "a pinned revision must not be deleted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Unpinned: deleted after the grace period.
    label_namespace(&bed, "e2e-canary-pinned", "canary-stable").await;
    wait_for("the unpinned old revision to be deleted", TIMEOUT, || async {
        match deployment_uid(&bed, "e2e-canary", &format!("weft-cp-{old}")).await {
            None => Ok(()),
            Some(_) => Err(op.log_tail()),
        }
    })
    .await;
    let s = status_when(&api, "canary", "status to list only the new revision", &op, |_, s| {
        s.revisions.len() == 1
    })
    .await;
    assert_eq!(s.revisions[0].name, new);
    // Events are recorded after the status write they follow: wait for them.
    let events = wait_for("the upgrade's Events", TIMEOUT, || async {
        let events = weft_e2e::operator::mesh_events(&bed, "canary").await;
        let missing: Vec<&str> = ["RevisionCreated", "TagMoved", "Promoted", "RevisionPruned"]
            .into_iter()
            .filter(|r| !events.iter().any(|(x, _)| x == r))
            .collect();
        if missing.is_empty() {
            Ok(events)
        } else {
            Err(format!("events {missing:?} missing: {events:?}"))
        }
    })
    .await;
    // Each occurrence of one reason keeps its own message (not the first one's, counted).
    for rev in [old, new] {
        let created = format!("revision {rev} (version");
        assert!(
            events
                .iter()
                .any(|(r, m)| r == "RevisionCreated" && m.contains(&created)),
            "no RevisionCreated Event names {rev}: {events:?}"
        );
    }
    let metrics = op.metrics().unwrap();
    for step in ["created", "tag_moved", "promoted", "pruned"] {
        assert!(
            weft_e2e::operator::sum_metric(&metrics, &format!("weft_revision_steps_total{{step=\"{step}\"}}")) >= 1.0,
            "metric for {step} missing"
        );
    }
    for ns in ["e2e-canary-stable", "e2e-canary-canary", "e2e-canary-pinned"] {
        let _ = Api::<Namespace>::all(bed.client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
    delete_and_wait(&bed, "canary").await;
    op.stop();
}

fn condition_of(s: &MeshInstallStatus, t: &str) -> (String, String, String) {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

/// A new revision that can never be Ready is held after its deadline, nothing moves and
/// the old revision is untouched; fixing the spec recovers; setting the old version again
/// rolls back onto the old revision's own objects.
#[tokio::test]
async fn failed_upgrade_is_held_then_fixed_then_rolled_back() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "upgrade", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "held").await;
    api.create(&PostParams::default(), &revision_based("held", 0, 4, 600))
        .await
        .expect("create");
    let before = wait_ready(&api, "held", &op).await.status.unwrap();
    let (old, new) = ("held-v1-0-0", "held-v1-1-0");
    let old_uid = deployment_uid(&bed, "e2e-held", &format!("weft-cp-{old}")).await;
    let cp: Api<Deployment> = Api::namespaced(bed.client.clone(), "e2e-held");
    let old_rv = cp.get(&format!("weft-cp-{old}")).await.unwrap().resource_version();

    // No node has this label: the new control plane's pod can never be scheduled.
    set_version(
        &api,
        "held",
        json!({"version": "1.1.0", "controlPlane": {"nodeSelector": {"weft.dev/e2e-no-such-node": "x"}}}),
    )
    .await;
    let s = status_when(&api, "held", "Stalled RevisionFailed", &op, |_, s| {
        condition_of(s, "Stalled").1 == "RevisionFailed"
    })
    .await;
    assert_eq!(condition_of(&s, "Stalled").0, "True");
    assert!(
        condition_of(&s, "Stalled").2.contains(new),
        "{:?}",
        condition_of(&s, "Stalled")
    );
    assert_eq!(condition_of(&s, "Reconciling").0, "False");
    assert_eq!(tags(&s), tags(&before), "no tag moved");
    assert_eq!(s.active_revision.as_deref(), Some(old));
    assert!(
        s.revisions.iter().any(|r| r.name == old && r.ready),
        "old revision Ready"
    );
    assert_eq!(
        cp.get(&format!("weft-cp-{old}")).await.unwrap().resource_version(),
        old_rv,
        "the serving revision was not touched by the bad spec"
    );

    // Fixed: the new revision becomes Ready and is promoted.
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"controlPlane": {"nodeSelector": null}}})),
    )
    .await
    .expect("fix");
    let s = status_when(&api, "held", "the fixed revision to be promoted", &op, |mi, s| {
        s.active_revision.as_deref() == Some(new) && condition(mi, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(tags(&s)["held-stable"], new);

    // Rollback: the old revision (kept: grace period 600 s) becomes active again, reusing
    // its own Deployment.
    set_version(&api, "held", json!({"version": "1.0.0"})).await;
    let s = status_when(&api, "held", "the rollback to complete", &op, |mi, s| {
        s.active_revision.as_deref() == Some(old) && condition(mi, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(tags(&s)["held-stable"], old);
    assert_eq!(tags(&s)["held-canary"], old);
    assert_eq!(
        deployment_uid(&bed, "e2e-held", &format!("weft-cp-{old}")).await,
        old_uid,
        "the old revision was reused, not recreated"
    );
    delete_and_wait(&bed, "held").await;
    op.stop();
}

/// The operator dies between the new revision becoming Ready and its promotion; a new one
/// picks up from status: promotion still waits for minReadySeconds counted from when the
/// revision became Ready, not from the restart.
#[tokio::test]
async fn an_operator_killed_mid_upgrade_resumes_from_status() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let first = Operator::start(&bed, "upgrade-a", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "resume").await;
    api.create(&PostParams::default(), &revision_based("resume", 8, 120, 2))
        .await
        .expect("create");
    wait_ready(&api, "resume", &first).await;
    set_version(&api, "resume", json!({"version": "1.1.0"})).await;
    let s = status_when(
        &api,
        "resume",
        "the new revision to be Ready, not yet promoted",
        &first,
        |_, s| tags(s).get("resume-canary").map(String::as_str) == Some("resume-v1-1-0"),
    )
    .await;
    let ready_since = s
        .revisions
        .iter()
        .find(|r| r.name == "resume-v1-1-0")
        .and_then(|r| r.ready_since.clone())
        .expect("readySince recorded");
    first.kill();

    let second = Operator::start(&bed, "upgrade-b", &[]);
    let s = status_when(&api, "resume", "the restarted operator to promote", &second, |mi, s| {
        s.active_revision.as_deref() == Some("resume-v1-1-0") && condition(mi, "Ready").is_some_and(|c| c.0 == "True")
    })
    .await;
    let r = s.revisions.iter().find(|r| r.name == "resume-v1-1-0").unwrap();
    assert_eq!(
        r.ready_since.as_ref(),
        Some(&ready_since),
        "readySince survived the restart"
    );
    wait_for("the old revision to be pruned", TIMEOUT, || async {
        match deployment_uid(&bed, "e2e-resume", "weft-cp-resume-v1-0-0").await {
            None => Ok(()),
            Some(_) => Err(second.log_tail()),
        }
    })
    .await;
    delete_and_wait(&bed, "resume").await;
    second.stop();
}

/// InPlace → RevisionBased → InPlace: at every moment some Ready revision is active and its
/// Active tag resolves to it; the revision left behind goes after the grace period.
#[tokio::test]
async fn switching_update_strategy_both_ways_keeps_a_ready_revision_active() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "upgrade", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "switch").await;
    api.create(
        &PostParams::default(),
        &mesh(
            "switch",
            "e2e-switch",
            json!({"profile": "minimal", "revisionTags": [{"name": "switch-stable"}]}),
        ),
    )
    .await
    .expect("create");
    wait_ready(&api, "switch", &op).await;

    let steps = [
        (
            json!({"updateStrategy": {"type": "RevisionBased", "inactiveRevisionDeletionGracePeriodSeconds": 1}}),
            "switch-v1-0-0",
            "switch",
        ),
        (
            json!({"updateStrategy": {"type": "InPlace"}}),
            "switch",
            "switch-v1-0-0",
        ),
    ];
    for (spec, to, from) in steps {
        set_version(&api, "switch", spec).await;
        // Sample status until the switch is complete; every sample must have a Ready active
        // revision that the default tag names.
        status_when(
            &api,
            "switch",
            &format!("the switch to {to} to complete"),
            &op,
            |mi, s| {
                let active = s.active_revision.clone().unwrap_or_default();
                let active_ready = s.revisions.iter().any(|r| r.name == active && r.ready);
                assert!(active_ready, "no Ready active revision during the switch: {s:?}");
                assert_eq!(tags(s).get("switch-stable"), Some(&active), "{s:?}");
                active == to
                    && s.revisions.iter().all(|r| r.name != from)
                    && condition(mi, "Ready").is_some_and(|c| c.0 == "True")
            },
        )
        .await;
        assert_eq!(
            deployment_uid(&bed, "e2e-switch", &format!("weft-cp-{from}")).await,
            None,
            "{from} was deleted"
        );
    }
    delete_and_wait(&bed, "switch").await;
    op.stop();
}

/// Tag names are cluster-wide: the newer MeshInstall that reuses one stalls; the older one
/// keeps its tag.
#[tokio::test]
async fn a_tag_name_used_by_an_older_mesh_stalls_the_newer_one() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "upgrade", &[]);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "first").await;
    delete_and_wait(&bed, "second").await;
    let with_tag = |name: &str| {
        mesh(
            name,
            &format!("e2e-{name}"),
            json!({"profile": "minimal", "revisionTags": [{"name": "shared"}]}),
        )
    };
    api.create(&PostParams::default(), &with_tag("first"))
        .await
        .expect("create first");
    wait_ready(&api, "first", &op).await;
    api.create(&PostParams::default(), &with_tag("second"))
        .await
        .expect("create second");
    let s = status_when(
        &api,
        "second",
        "the newer mesh to stall with NameConflict",
        &op,
        |_, s| condition_of(s, "Stalled").1 == "NameConflict",
    )
    .await;
    assert!(
        condition_of(&s, "Stalled").2.contains("first"),
        "{:?}",
        condition_of(&s, "Stalled")
    );
    assert!(
        s.tags.is_empty(),
        "the newer mesh publishes neither `shared` nor `default`: {:?}",
        s.tags
    );
    assert_eq!(
        deployment_uid(&bed, "e2e-second", "weft-cp-second").await,
        None,
        "nothing installed"
    );
    let first = wait_ready(&api, "first", &op).await.status.unwrap();
    assert_eq!(tags(&first).get("shared").map(String::as_str), Some("first"));
    delete_and_wait(&bed, "second").await;
    delete_and_wait(&bed, "first").await;
    op.stop();
}
