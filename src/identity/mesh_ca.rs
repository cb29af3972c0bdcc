//! A mesh's CA as the operator keeps it (pure): from what its Secrets hold now, what they
//! must hold — a self-signed root made once and kept until `rootRotation` is raised, an
//! issuer made from it (renewed before it ages out), or a plug-in CA checked and copied,
//! any change of root going through [`super::rotation`] — and what the status shows.
//!
//! Two Secrets in the mesh namespace:
//! - [`ROOT_SECRET`] (self-signed only): the newest root and its key, and the
//!   `rootRotation` it was made for. Only the operator reads it. A rotation replaces it at
//!   once: the old issuer keeps signing until the switch, and only a new issuer needs a
//!   root key.
//! - [`ISSUER_SECRET`]: the issuer in Istio's `cacerts` layout, `root-cert.pem` being the
//!   trust set (every trusted root: the bundle), and while a rotation runs its record.
//!   Control planes read this one Secret, by name, and nothing else: a compromised control
//!   plane can sign workload certificates but cannot make a new root.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use x509_parser::prelude::FromDer;

use super::ca::{self, CA_CERT, CA_KEY, CERT_CHAIN, CaError, InvalidCa, KeyedCert, ROOT_CERT, SigningCa};
use super::rotation::{self, RECORD_KEY, Record, Rollout, Wanted};
use crate::api::security::{RootStatus, RotationStatus, SecurityStatus};

/// The Secret holding a self-signed mesh root (operator only).
pub const ROOT_SECRET: &str = "weft-ca-root";
/// The Secret the control planes sign with.
pub const ISSUER_SECRET: &str = "weft-ca-issuer";
/// The root key in [`ROOT_SECRET`] (its certificate is under `root-cert.pem`).
pub const ROOT_KEY: &str = "root-key.pem";
/// The `rootRotation` the root in [`ROOT_SECRET`] was made for.
pub const ROOT_GENERATION: &str = "rotation";
/// The trust-bundle ConfigMap in every namespace of the mesh.
pub const BUNDLE_CONFIG_MAP: &str = "weft-root-ca";
/// An issuer is renewed once less than this much of its life is left.
pub const ISSUER_RENEW_BEFORE: Duration = Duration::from_secs(180 * 24 * 3600);

/// A Secret's data. `Debug` shows its keys, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(pub BTreeMap<String, Vec<u8>>);

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Where the CA comes from, with what was read.
#[derive(Clone, Debug)]
pub enum Source<'a> {
    /// The operator's own root, from [`ROOT_SECRET`] when it exists.
    SelfSigned {
        /// [`ROOT_SECRET`]'s data, if the Secret exists.
        root: Option<&'a SecretData>,
    },
    /// A plug-in CA Secret.
    Plugin {
        /// Its name (in the mesh namespace).
        name: &'a str,
        /// Its data, `None` when the Secret does not exist.
        data: Option<&'a SecretData>,
    },
}

/// What the mesh's CA Secrets must hold, and what signs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// New content for [`ROOT_SECRET`] (`None`: keep it as it is).
    pub root: Option<SecretData>,
    /// New content for [`ISSUER_SECRET`] (`None`: keep it as it is).
    pub issuer: Option<SecretData>,
    /// What signs workload certificates; its roots are the whole trust set.
    pub signing: SigningCa,
    /// The rotation running after this step, if any.
    pub rotation: Option<Record>,
    /// What the issuer's new content does, for an Event.
    pub note: Option<String>,
    /// What the rotation's next step waits for.
    pub waiting: Option<String>,
    /// When to look again for the rotation's next step.
    pub due: Option<Duration>,
    /// Roots of other meshes the bundles also hold (`trustedRoots`), PEM.
    pub trusted_pem: String,
}

impl Plan {
    /// What every trust bundle holds: the mesh's trust set, then the other meshes' roots.
    pub fn bundle_pem(&self) -> String {
        bundle(&self.signing.roots_pem, &self.trusted_pem)
    }
}

/// The trust bundle of a mesh whose trust set is `roots_pem`, trusting `trusted_pem` too
/// (a root in both is written once).
pub fn bundle(roots_pem: &str, trusted_pem: &str) -> String {
    let own = ca::certificates(roots_pem).unwrap_or_default();
    let extra: String = pem::parse_many(trusted_pem)
        .unwrap_or_default()
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE" && !own.iter().any(|o| o.as_slice() == b.contents()))
        .map(|b| pem::encode_config(&b, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)))
        .collect();
    format!("{roots_pem}{extra}")
}

/// Why a mesh's CA cannot be used. Messages never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum CaProblem {
    /// The plug-in CA Secret is missing or unusable.
    #[error("plug-in CA Secret {namespace}/{name}: {problem}")]
    Plugin {
        /// The mesh namespace.
        namespace: String,
        /// The Secret.
        name: String,
        /// What is wrong (names the key).
        problem: String,
    },
    /// A root or issuer could not be made.
    #[error("cannot make the mesh CA: {0}")]
    Generate(#[from] CaError),
}

/// Decides the content of the CA Secrets. `issuer` is [`ISSUER_SECRET`]'s data if it
/// exists; `generation` is `spec.security.rootRotation` (a self-signed root older than it
/// is replaced, through the rotation of [`super::rotation`]).
pub fn plan(
    namespace: &str,
    trust_domain: &str,
    source: &Source<'_>,
    issuer: Option<&SecretData>,
    generation: u32,
    rollout: &Rollout,
    now: SystemTime,
) -> Result<Plan, CaProblem> {
    let current = issuer.and_then(|d| ca::plugin_ca(&d.0, now).ok());
    let record = issuer.and_then(stored_record);
    let at_current = current.as_ref().map(|c| (c, record.as_ref()));
    let (step, root) = match source {
        Source::Plugin { name, data } => {
            let problem = |problem: String| CaProblem::Plugin {
                namespace: namespace.to_string(),
                name: name.to_string(),
                problem,
            };
            let data = data.ok_or_else(|| problem("the Secret does not exist".to_string()))?;
            let wanted = ca::plugin_ca(&data.0, now).map_err(|e: InvalidCa| problem(e.to_string()))?;
            let step = rotation::step(at_current, Wanted::Plugin(&wanted), false, trust_domain, rollout, now)?;
            (step, None)
        }
        Source::SelfSigned { root } => {
            let kept = root
                .and_then(|r| stored_root(r, now))
                .filter(|(_, made_for)| *made_for >= generation);
            let (root_cert, new_root) = match kept {
                Some((kept, _)) => (kept, None),
                None => {
                    let made = ca::new_root(trust_domain, generation, now)?;
                    let data = root_data(&made, generation);
                    (made, Some(data))
                }
            };
            let renew = current.as_ref().is_some_and(|c| ages_out(&c.issuer.cert_pem, now));
            let step = rotation::step(at_current, Wanted::Root(&root_cert), renew, trust_domain, rollout, now)?;
            (step, new_root)
        }
    };
    let wanted = issuer_data_with(&step.signing, step.record.as_ref());
    Ok(Plan {
        root,
        issuer: (issuer != Some(&wanted)).then_some(wanted),
        signing: step.signing,
        rotation: step.record,
        note: step.note,
        waiting: step.waiting,
        due: step.due,
        trusted_pem: String::new(),
    })
}

/// The rotation record stored with the issuer, if any.
fn stored_record(data: &SecretData) -> Option<Record> {
    serde_json::from_slice(data.0.get(RECORD_KEY)?).ok()
}

/// The root kept in `data`, if it is whole and valid now, with the `rootRotation` it was
/// made for.
fn stored_root(data: &SecretData, now: SystemTime) -> Option<(KeyedCert, u32)> {
    let text = |k: &str| data.0.get(k).and_then(|b| String::from_utf8(b.clone()).ok());
    let root = KeyedCert {
        cert_pem: text(ROOT_CERT)?,
        key_pem: text(ROOT_KEY)?,
    };
    let facts = ca::first_facts(&root.cert_pem)?;
    let at = unix(now);
    let made_for = text(ROOT_GENERATION).and_then(|g| g.trim().parse().ok()).unwrap_or(0);
    (facts.not_before <= at && at < facts.not_after && rcgen::KeyPair::from_pem(&root.key_pem).is_ok())
        .then_some((root, made_for))
}

fn ages_out(cert_pem: &str, now: SystemTime) -> bool {
    ca::first_facts(cert_pem).is_none_or(|f| f.not_after - unix(now) < ISSUER_RENEW_BEFORE.as_secs() as i64)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn root_data(root: &KeyedCert, generation: u32) -> SecretData {
    SecretData(BTreeMap::from([
        (ROOT_CERT.to_string(), root.cert_pem.clone().into_bytes()),
        (ROOT_KEY.to_string(), root.key_pem.clone().into_bytes()),
        (ROOT_GENERATION.to_string(), generation.to_string().into_bytes()),
    ]))
}

/// The issuer Secret's data: Istio's `cacerts` layout.
pub fn issuer_data(s: &SigningCa) -> SecretData {
    SecretData(BTreeMap::from([
        (CA_CERT.to_string(), s.issuer.cert_pem.clone().into_bytes()),
        (CA_KEY.to_string(), s.issuer.key_pem.clone().into_bytes()),
        (CERT_CHAIN.to_string(), s.chain_pem.clone().into_bytes()),
        (ROOT_CERT.to_string(), s.roots_pem.clone().into_bytes()),
    ]))
}

/// [`issuer_data`] with the rotation record, while a rotation runs.
fn issuer_data_with(s: &SigningCa, record: Option<&Record>) -> SecretData {
    let mut data = issuer_data(s);
    if let Some(r) = record.and_then(|r| serde_json::to_vec(r).ok()) {
        data.0.insert(RECORD_KEY.to_string(), r);
    }
    data
}

fn root_statuses(pem_text: &str) -> Vec<RootStatus> {
    ca::certificates(pem_text)
        .unwrap_or_default()
        .iter()
        .filter_map(|d| ca::facts(d))
        .map(|f| RootStatus {
            fingerprint: f.fingerprint,
            not_before: ca::rfc3339(f.not_before),
            not_after: ca::rfc3339(f.not_after),
        })
        .collect()
}

/// Checks roots of another mesh (`trustedRoots`): PEM certificates, each a CA valid now.
/// Returns them as PEM, or what is wrong (never their content).
pub fn trusted_roots(pem_text: &str, now: SystemTime) -> Result<String, String> {
    let ders = ca::certificates(pem_text).map_err(|e| e.to_string())?;
    if ders.is_empty() {
        return Err("holds no CERTIFICATE block".to_string());
    }
    let at = unix(now);
    for (i, der) in ders.iter().enumerate() {
        let (_, cert) = x509_parser::prelude::X509Certificate::from_der(der)
            .map_err(|e| format!("certificate {} does not parse: {e}", i + 1))?;
        if !cert.is_ca() {
            return Err(format!("certificate {} is not a CA", i + 1));
        }
        let (nb, na) = (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        );
        if at < nb || at > na {
            return Err(format!(
                "certificate {} is not valid now (from {} until {})",
                i + 1,
                ca::rfc3339(nb),
                ca::rfc3339(na)
            ));
        }
    }
    Ok(bundle("", pem_text))
}

/// What `status.security` shows of `plan` (serving revisions are the caller's).
pub fn status(trust_domain: &str, plan: &Plan) -> SecurityStatus {
    let signing = &plan.signing;
    let roots = root_statuses(&signing.roots_pem);
    SecurityStatus {
        trust_domain: trust_domain.to_string(),
        roots,
        issuer_not_after: ca::first_facts(&signing.issuer.cert_pem).map(|f| ca::rfc3339(f.not_after)),
        serving_revisions: Vec::new(),
        trusted_roots: root_statuses(&plan.trusted_pem),
        rotation: plan.rotation.map(|r| RotationStatus {
            phase: r.phase.as_str().to_string(),
            since: ca::rfc3339(r.since),
            waiting_for: plan.waiting.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::rotation::SETTLED;

    const NS: &str = "weft-system";
    const TD: &str = "cluster.local";

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn a_self_signed_ca_is_made_once_and_then_kept() {
        let first = plan(NS, TD, &Source::SelfSigned { root: None }, None, 0, &SETTLED, now()).unwrap();
        let root = first.root.clone().expect("a new root is written");
        let issuer = first.issuer.clone().expect("a new issuer is written");
        assert!(
            !issuer.0.contains_key(ROOT_KEY),
            "the issuer Secret never holds the root key"
        );
        let again = plan(
            NS,
            TD,
            &Source::SelfSigned { root: Some(&root) },
            Some(&issuer),
            0,
            &SETTLED,
            now(),
        )
        .unwrap();
        assert!(again.root.is_none() && again.issuer.is_none(), "nothing is rewritten");
        assert_eq!(again.signing, first.signing);
        let st = status(TD, &again);
        assert_eq!(st.roots.len(), 1);
        assert_eq!(st.roots[0].fingerprint.len(), 64);
        assert!(st.issuer_not_after.is_some());
    }

    #[test]
    fn a_lost_issuer_is_made_again_from_the_same_root() {
        let first = plan(NS, TD, &Source::SelfSigned { root: None }, None, 0, &SETTLED, now()).unwrap();
        let root = first.root.unwrap();
        let again = plan(
            NS,
            TD,
            &Source::SelfSigned { root: Some(&root) },
            None,
            0,
            &SETTLED,
            now(),
        )
        .unwrap();
        assert!(again.root.is_none(), "the root is kept");
        let issuer = again.issuer.expect("a new issuer");
        assert_eq!(issuer.0[ROOT_CERT], root.0[ROOT_CERT], "the same trust bundle");
    }

    #[test]
    fn an_issuer_near_its_end_is_renewed() {
        let made = plan(NS, TD, &Source::SelfSigned { root: None }, None, 0, &SETTLED, now()).unwrap();
        let (root, issuer) = (made.root.unwrap(), made.issuer.unwrap());
        let later = now() + ca::ISSUER_TTL - Duration::from_secs(24 * 3600);
        let renewed = plan(
            NS,
            TD,
            &Source::SelfSigned { root: Some(&root) },
            Some(&issuer),
            0,
            &SETTLED,
            later,
        )
        .unwrap();
        assert!(renewed.root.is_none());
        assert!(renewed.issuer.is_some_and(|i| i.0[CA_CERT] != issuer.0[CA_CERT]));
    }

    #[test]
    fn another_meshs_roots_join_the_bundle_once_and_only_if_they_are_cas_valid_now() {
        let mine = ca::new_root(TD, 0, now()).unwrap();
        let theirs = ca::new_root("other.mesh", 0, now()).unwrap();
        let trusted = trusted_roots(&theirs.cert_pem, now()).expect("a CA valid now");
        let b = bundle(&mine.cert_pem, &format!("{trusted}{}", mine.cert_pem));
        assert_eq!(ca::certificates(&b).unwrap().len(), 2, "mine once, theirs once");
        assert!(b.starts_with(&mine.cert_pem), "the mesh's own roots first");
        let issuer = ca::new_issuer(&theirs, "other.mesh", now()).unwrap();
        let leaf = ca::sign_server(&issuer, &["x".to_string()], Duration::from_secs(60), now()).unwrap();
        let leaf_only = ca::certificates(&leaf.cert_pem).unwrap().remove(0);
        let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf_only));
        assert_eq!(
            trusted_roots(&leaf_pem, now()).unwrap_err(),
            "certificate 1 is not a CA"
        );
        assert_eq!(trusted_roots("", now()).unwrap_err(), "holds no CERTIFICATE block");
        let later = now() + ca::ROOT_TTL + Duration::from_secs(3600);
        assert!(
            trusted_roots(&theirs.cert_pem, later)
                .unwrap_err()
                .contains("not valid now")
        );
    }

    #[test]
    fn secret_data_never_shows_its_values() {
        let made = plan(NS, TD, &Source::SelfSigned { root: None }, None, 0, &SETTLED, now()).unwrap();
        let shown = format!("{made:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }

    #[test]
    fn a_plugin_ca_is_checked_and_copied() {
        let missing = plan(
            NS,
            TD,
            &Source::Plugin {
                name: "cacerts",
                data: None,
            },
            None,
            0,
            &SETTLED,
            now(),
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "plug-in CA Secret weft-system/cacerts: the Secret does not exist"
        );
        let root = ca::new_root(TD, 0, now()).unwrap();
        let signing = ca::new_issuer(&root, TD, now()).unwrap();
        let mut data = issuer_data(&signing);
        let ok = plan(
            NS,
            TD,
            &Source::Plugin {
                name: "cacerts",
                data: Some(&data),
            },
            None,
            0,
            &SETTLED,
            now(),
        )
        .unwrap();
        assert_eq!(ok.issuer.as_ref(), Some(&data));
        let same = plan(
            NS,
            TD,
            &Source::Plugin {
                name: "cacerts",
                data: Some(&data),
            },
            Some(&data),
            0,
            &SETTLED,
            now(),
        )
        .unwrap();
        assert!(same.issuer.is_none(), "unchanged: not written");
        data.0.remove(CA_KEY);
        let bad = plan(
            NS,
            TD,
            &Source::Plugin {
                name: "cacerts",
                data: Some(&data),
            },
            None,
            0,
            &SETTLED,
            now(),
        )
        .unwrap_err();
        assert_eq!(
            bad.to_string(),
            "plug-in CA Secret weft-system/cacerts: ca-key.pem is missing or empty"
        );
    }
}
