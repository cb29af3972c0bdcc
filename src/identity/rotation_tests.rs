use std::time::{Duration, SystemTime};

use super::*;
use crate::identity::ca::{CA_CERT, ROOT_CERT};
use crate::identity::mesh_ca::{self, Plan, SecretData, Source};

const NS: &str = "weft-system";
const TD: &str = "cluster.local";
const PROPAGATION: Duration = Duration::from_secs(180);
const TTL: Duration = Duration::from_secs(24 * 3600);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn root_count(data: &SecretData) -> usize {
    ca::certificates(std::str::from_utf8(&data.0[ROOT_CERT]).unwrap())
        .unwrap()
        .len()
}

/// A self-signed mesh at `generation`, planned at `at`, from the stored Secrets.
fn self_signed(root: &SecretData, issuer: &SecretData, generation: u32, rollout: &Rollout, at: SystemTime) -> Plan {
    mesh_ca::plan(
        NS,
        TD,
        &Source::SelfSigned { root: Some(root) },
        Some(issuer),
        generation,
        rollout,
        at,
    )
    .unwrap()
}

/// Every issuer of `signers` chains to a root of `bundle`: what it signed is trusted.
fn trusted_by(signers: &[&SigningCa], bundle: &SigningCa, at: SystemTime) -> bool {
    signers.iter().all(|s| chains_to(s, &bundle.roots_pem, at))
}

#[test]
fn a_self_signed_root_rotates_in_three_steps_and_every_certificate_stays_trusted() {
    let t0 = SystemTime::now();
    let made = mesh_ca::plan(NS, TD, &Source::SelfSigned { root: None }, None, 0, &SETTLED, t0).unwrap();
    let (root0, issuer0, signer0) = (made.root.unwrap(), made.issuer.unwrap(), made.signing);
    assert!(made.rotation.is_none());

    // Raised: a new root, trusted beside the old; signing stays.
    let p = self_signed(&root0, &issuer0, 1, &SETTLED, t0);
    let root1 = p.root.clone().expect("a new root");
    assert_ne!(root1.0[ROOT_CERT], root0.0[ROOT_CERT]);
    assert_eq!(root1.0[mesh_ca::ROOT_GENERATION], b"1");
    let issuer1 = p.issuer.clone().expect("the trust set grows");
    assert_eq!(issuer1.0[CA_CERT], issuer0.0[CA_CERT], "the same issuer signs");
    assert_eq!(root_count(&issuer1), 2);
    assert_eq!(p.rotation.map(|r| r.phase), Some(Phase::Distributing));
    assert_eq!(p.due, Some(PROPAGATION));
    assert!(
        p.note.as_deref().is_some_and(|n| n.contains("added root")),
        "{:?}",
        p.note
    );
    let status = mesh_ca::status(TD, &p);
    assert_eq!(status.roots.len(), 2);
    assert_eq!(status.rotation.as_ref().map(|r| r.phase.as_str()), Some("Distributing"));
    let distributing = p.signing.clone();
    assert!(trusted_by(&[&signer0], &distributing, t0));

    // Too early, or the mesh not caught up: nothing is written, and status says why.
    let early = self_signed(&root1, &issuer1, 1, &SETTLED, t0 + secs(60));
    assert!(early.root.is_none() && early.issuer.is_none());
    assert_eq!(early.due, Some(secs(120)));
    let until = ca::rfc3339(unix(t0) + 180);
    assert!(
        early
            .waiting
            .as_deref()
            .is_some_and(|w| w.contains(&format!("until {until}"))),
        "{:?}",
        early.waiting
    );
    let again = self_signed(&root1, &issuer1, 1, &SETTLED, t0 + secs(61));
    assert_eq!(
        again.waiting, early.waiting,
        "the same message while it waits: status is not rewritten"
    );
    let later = t0 + PROPAGATION + secs(1);
    let behind = Rollout {
        bundles_current: false,
        ..SETTLED
    };
    let p = self_signed(&root1, &issuer1, 1, &behind, later);
    assert!(p.issuer.is_none());
    assert!(p.waiting.as_deref().is_some_and(|w| w.contains("every namespace")));
    let unready = Rollout {
        revisions_ready: false,
        ..SETTLED
    };
    let p = self_signed(&root1, &issuer1, 1, &unready, later);
    assert!(p.issuer.is_none());
    assert!(p.waiting.as_deref().is_some_and(|w| w.contains("revision")));

    // Caught up: the new issuer signs; both roots stay trusted.
    let p = self_signed(&root1, &issuer1, 1, &SETTLED, later);
    let issuer2 = p.issuer.clone().expect("the signer switches");
    assert_ne!(issuer2.0[CA_CERT], issuer0.0[CA_CERT]);
    assert_eq!(root_count(&issuer2), 2);
    assert!(chains_to(
        &p.signing,
        std::str::from_utf8(&root1.0[ROOT_CERT]).unwrap(),
        later
    ));
    assert_eq!(p.rotation.map(|r| r.phase), Some(Phase::Retiring));
    assert_eq!(p.due, Some(TTL + PROPAGATION));
    let retiring = p.signing.clone();
    assert!(trusted_by(&[&signer0, &retiring], &distributing, later));
    assert!(trusted_by(&[&signer0, &retiring], &retiring, later));

    // The old root goes once what it signed has expired.
    let p = self_signed(&root1, &issuer2, 1, &SETTLED, later + TTL + PROPAGATION - secs(10));
    assert!(p.issuer.is_none());
    assert_eq!(p.due, Some(secs(10)));
    let end = later + TTL + PROPAGATION;
    let p = self_signed(&root1, &issuer2, 1, &SETTLED, end);
    let issuer3 = p.issuer.clone().expect("the old root is dropped");
    assert_eq!(root_count(&issuer3), 1);
    assert_eq!(issuer3.0[CA_CERT], issuer2.0[CA_CERT]);
    assert!(p.rotation.is_none() && !issuer3.0.contains_key(RECORD_KEY));
    assert!(p.note.as_deref().is_some_and(|n| n.contains("rotation complete")));
    assert!(trusted_by(&[&retiring], &p.signing, end));
    assert!(
        !trusted_by(&[&signer0], &p.signing, end),
        "the old root is trusted no more"
    );

    // Settled: nothing more is written.
    let p = self_signed(&root1, &issuer3, 1, &SETTLED, end + secs(60));
    assert!(p.root.is_none() && p.issuer.is_none() && p.rotation.is_none());
}

#[test]
fn a_ttl_lowered_during_retirement_does_not_shorten_it() {
    let t0 = SystemTime::now();
    let made = mesh_ca::plan(NS, TD, &Source::SelfSigned { root: None }, None, 0, &SETTLED, t0).unwrap();
    let (root0, issuer0) = (made.root.unwrap(), made.issuer.unwrap());
    let p = self_signed(&root0, &issuer0, 1, &SETTLED, t0);
    let (root1, issuer1) = (p.root.unwrap(), p.issuer.unwrap());
    let switched = t0 + PROPAGATION;
    let issuer2 = self_signed(&root1, &issuer1, 1, &SETTLED, switched).issuer.unwrap();
    let short = Rollout {
        cert_ttl: secs(60),
        ..SETTLED
    };
    let p = self_signed(&root1, &issuer2, 1, &short, switched + secs(60) + PROPAGATION);
    assert!(
        p.issuer.is_none(),
        "certificates signed with the longer TTL may still live"
    );
}

#[test]
fn a_lost_root_secret_rotates_instead_of_breaking_trust() {
    let t0 = SystemTime::now();
    let made = mesh_ca::plan(NS, TD, &Source::SelfSigned { root: None }, None, 0, &SETTLED, t0).unwrap();
    let issuer0 = made.issuer.unwrap();
    let p = mesh_ca::plan(
        NS,
        TD,
        &Source::SelfSigned { root: None },
        Some(&issuer0),
        0,
        &SETTLED,
        t0,
    )
    .unwrap();
    assert!(p.root.is_some(), "a new root");
    let issuer1 = p.issuer.unwrap();
    assert_eq!(
        issuer1.0[CA_CERT], issuer0.0[CA_CERT],
        "signing stays until it is trusted"
    );
    assert_eq!(root_count(&issuer1), 2);
}

fn plugin(root: &KeyedCert, t: SystemTime) -> (SigningCa, SecretData) {
    let signing = ca::new_issuer(root, TD, t).unwrap();
    let data = mesh_ca::issuer_data(&signing);
    (signing, data)
}

fn plug(data: &SecretData, issuer: Option<&SecretData>, rollout: &Rollout, at: SystemTime) -> Plan {
    mesh_ca::plan(
        NS,
        TD,
        &Source::Plugin {
            name: "cacerts",
            data: Some(data),
        },
        issuer,
        0,
        rollout,
        at,
    )
    .unwrap()
}

#[test]
fn a_plugin_ca_replaced_by_one_from_another_root_goes_through_the_same_overlap() {
    let t0 = SystemTime::now();
    let (root_a, root_b) = (ca::new_root(TD, 0, t0).unwrap(), ca::new_root(TD, 0, t0).unwrap());
    let (_, a) = plugin(&root_a, t0);
    let first = plug(&a, None, &SETTLED, t0).issuer.unwrap();
    assert_eq!(first, a, "the first plug-in CA is copied as it is");

    let (_, b) = plugin(&root_b, t0);
    let p = plug(&b, Some(&first), &SETTLED, t0);
    let distributing = p.issuer.unwrap();
    assert_eq!(
        distributing.0[CA_CERT], a.0[CA_CERT],
        "A signs until B's root is everywhere"
    );
    assert_eq!(root_count(&distributing), 2);

    let later = t0 + PROPAGATION;
    let p = plug(&b, Some(&distributing), &SETTLED, later);
    let switched = p.issuer.unwrap();
    assert_eq!(switched.0[CA_CERT], b.0[CA_CERT]);
    assert_eq!(root_count(&switched), 2, "A's root stays while its certificates live");
    assert_eq!(p.rotation.map(|r| r.phase), Some(Phase::Retiring));

    let p = plug(&b, Some(&switched), &SETTLED, later + TTL + PROPAGATION);
    let done = p.issuer.unwrap();
    assert_eq!(done.0[ROOT_CERT], b.0[ROOT_CERT]);
    assert!(
        plug(&b, Some(&done), &SETTLED, later + TTL + PROPAGATION)
            .issuer
            .is_none()
    );
}

#[test]
fn a_new_intermediate_under_the_same_root_signs_at_once() {
    let t0 = SystemTime::now();
    let root = ca::new_root(TD, 0, t0).unwrap();
    let (_, a) = plugin(&root, t0);
    let (_, a2) = plugin(&root, t0);
    let p = plug(&a2, Some(&a), &SETTLED, t0);
    assert_eq!(p.issuer, Some(a2), "nothing new to distribute: no wait");
    assert!(p.rotation.is_none());
}
