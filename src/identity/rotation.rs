//! Root rotation (pure): how a mesh's trust set and signer move to a new root without a
//! moment in which a workload holds a certificate that a peer does not trust.
//!
//! One step per call, from what the issuer Secret holds (the signer, the trust set, and a
//! [`Record`] of the phase) towards what the mesh wants (a plug-in CA, or an issuer from
//! the newest self-signed root):
//! 1. **Distributing**: a wanted root is missing from the trust set → add it; signing
//!    stays as it is.
//! 2. Once every bundle holds the trust set, every revision is ready and the propagation
//!    time has passed since it was written (control planes and agents re-read within it)
//!    → sign with the new issuer. **Retiring**, if roots the mesh no longer wants remain.
//! 3. Once the longest workload certificate signed under the old root has expired (its
//!    TTL, plus the propagation time) → drop those roots. Done.
//!
//! A new signer under a root already trusted (an issuer renewed, a plug-in intermediate
//! swapped under the same root) switches at once: nothing new needs to be distributed.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::ca::{self, CaError, KeyedCert, SigningCa};

/// The issuer Secret's key holding the [`Record`] while a rotation runs.
pub const RECORD_KEY: &str = "rotation.json";

/// Where a rotation is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A new root is in the trust set; signing waits until everyone has it.
    Distributing,
    /// Signing moved to the new root; old roots stay trusted until what they signed expired.
    Retiring,
}

impl Phase {
    /// The name shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Distributing => "Distributing",
            Phase::Retiring => "Retiring",
        }
    }
}

/// The phase a rotation is in, since when, and the workload certificate lifetime then
/// (a TTL lowered meanwhile does not shorten what was already signed).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The phase.
    pub phase: Phase,
    /// Since when (Unix seconds).
    pub since: i64,
    /// The workload certificate TTL in force when the phase began, in seconds.
    pub cert_ttl_seconds: u64,
}

/// What the mesh wants to sign with.
#[derive(Clone, Copy, Debug)]
pub enum Wanted<'a> {
    /// A plug-in CA, as checked: its signer and its roots.
    Plugin(&'a SigningCa),
    /// An issuer made from the newest self-signed root (the root is the only wanted one).
    Root(&'a KeyedCert),
}

/// What the rest of the mesh has caught up with: the gate before signing switches.
#[derive(Clone, Copy, Debug)]
pub struct Rollout {
    /// Every namespace of the mesh has a bundle holding the stored trust set.
    pub bundles_current: bool,
    /// Every revision is ready (its control plane runs and re-reads the issuer).
    pub revisions_ready: bool,
    /// How long control planes and agents may take to see a written trust set.
    pub propagation: Duration,
    /// The mesh's workload certificate lifetime now.
    pub cert_ttl: Duration,
}

/// A mesh that has caught up, for tests: every gate open, the default times.
#[cfg(test)]
pub(crate) const SETTLED: Rollout = Rollout {
    bundles_current: true,
    revisions_ready: true,
    propagation: Duration::from_secs(180),
    cert_ttl: Duration::from_secs(24 * 3600),
};

/// The mesh's CA after this step.
#[derive(Clone, Debug)]
pub struct Step {
    /// What signs, with the whole trust set as its roots.
    pub signing: SigningCa,
    /// The rotation record to store (`None`: no rotation runs).
    pub record: Option<Record>,
    /// What this step did, for an Event (`None`: nothing changed).
    pub note: Option<String>,
    /// What the next step waits for, for status.
    pub waiting: Option<String>,
    /// When the next step is due, if it waits for time.
    pub due: Option<Duration>,
}

/// One root of a trust set: its DER (compared) and PEM (written).
#[derive(Clone, Debug)]
struct Root {
    der: Vec<u8>,
    pem: String,
}

fn roots(pem_text: &str) -> Vec<Root> {
    pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| Root {
            pem: pem::encode_config(&b, pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)),
            der: b.into_contents(),
        })
        .collect()
}

fn fingerprints(roots: &[Root]) -> String {
    roots
        .iter()
        .filter_map(|r| ca::facts(&r.der))
        .map(|f| f.fingerprint[..16].to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whether `signing`'s issuer chains to `root` (and nothing else is needed to trust it).
pub fn chains_to(signing: &SigningCa, root_pem: &str, now: SystemTime) -> bool {
    let data = std::collections::BTreeMap::from([
        (ca::CA_CERT.to_string(), signing.issuer.cert_pem.as_bytes().to_vec()),
        (ca::CA_KEY.to_string(), signing.issuer.key_pem.as_bytes().to_vec()),
        (ca::CERT_CHAIN.to_string(), signing.chain_pem.as_bytes().to_vec()),
        (ca::ROOT_CERT.to_string(), root_pem.as_bytes().to_vec()),
    ]);
    ca::plugin_ca(&data, now).is_ok()
}

/// The next step from `current` (the stored signer, its roots being the trust set, and
/// the stored record) towards `wanted`. `renew`: the self-signed issuer must be renewed
/// (it ages out). Without a usable current signer, the wanted one is taken at once.
pub fn step(
    current: Option<(&SigningCa, Option<&Record>)>,
    wanted: Wanted<'_>,
    renew: bool,
    trust_domain: &str,
    rollout: &Rollout,
    now: SystemTime,
) -> Result<Step, CaError> {
    let fresh = |note: &str| -> Result<Step, CaError> {
        let signing = match wanted {
            Wanted::Plugin(p) => p.clone(),
            Wanted::Root(r) => ca::new_issuer(r, trust_domain, now)?,
        };
        Ok(Step {
            signing,
            record: None,
            note: Some(note.to_string()),
            waiting: None,
            due: None,
        })
    };
    let Some((current, record)) = current else {
        return fresh("wrote the issuer control planes sign with");
    };
    let trust = roots(&current.roots_pem);
    let wanted_roots = match wanted {
        Wanted::Plugin(p) => roots(&p.roots_pem),
        Wanted::Root(r) => roots(&r.cert_pem),
    };
    let at = unix(now);
    let ttl = rollout.cert_ttl.as_secs();
    let record_now = |phase| Record {
        phase,
        since: at,
        cert_ttl_seconds: ttl,
    };
    let unchanged = Step {
        signing: current.clone(),
        record: record.copied(),
        note: None,
        waiting: None,
        due: None,
    };

    // 1. A wanted root not yet trusted: trust it first (newest first), signing unchanged.
    let missing: Vec<Root> = wanted_roots
        .iter()
        .filter(|w| !trust.iter().any(|t| t.der == w.der))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let bundle: String = missing.iter().chain(&trust).map(|r| r.pem.as_str()).collect();
        return Ok(Step {
            signing: SigningCa {
                roots_pem: bundle,
                ..current.clone()
            },
            record: Some(record_now(Phase::Distributing)),
            note: Some(format!(
                "rotation: added root {} to the trust bundle; signing stays with the current issuer until every namespace and control plane has it",
                fingerprints(&missing)
            )),
            waiting: Some("the new trust bundle to reach every namespace and control plane".to_string()),
            due: Some(rollout.propagation),
        });
    }

    // 2. The signer is not what the mesh wants: switch, after the gate if a root was just
    // distributed.
    let signer_ok = match wanted {
        Wanted::Plugin(p) => current.issuer == p.issuer && current.chain_pem == p.chain_pem,
        Wanted::Root(r) => !renew && chains_to(current, &r.cert_pem, now),
    };
    let extras: Vec<Root> = trust
        .iter()
        .filter(|t| !wanted_roots.iter().any(|w| w.der == t.der))
        .cloned()
        .collect();
    if !signer_ok {
        if let Some(r) = record.filter(|r| r.phase == Phase::Distributing) {
            let left = (r.since + rollout.propagation.as_secs() as i64 - at).max(0) as u64;
            // Absolute times: a message that changed every second would change the
            // status, and so wake the reconcile, every second.
            let waiting = if left > 0 {
                Some(format!(
                    "until {} for control planes and agents to re-read the trust bundle",
                    ca::rfc3339(at + left as i64)
                ))
            } else if !rollout.bundles_current {
                Some("the new trust bundle to be written in every namespace of the mesh".to_string())
            } else if !rollout.revisions_ready {
                Some("every revision to be ready (its control plane must load the new bundle)".to_string())
            } else {
                None
            };
            if let Some(waiting) = waiting {
                return Ok(Step {
                    waiting: Some(waiting),
                    due: (left > 0).then(|| Duration::from_secs(left)),
                    ..unchanged
                });
            }
        }
        let signer = match wanted {
            Wanted::Plugin(p) => p.clone(),
            Wanted::Root(r) => ca::new_issuer(r, trust_domain, now)?,
        };
        let retiring = !extras.is_empty();
        return Ok(Step {
            signing: SigningCa {
                roots_pem: current.roots_pem.clone(),
                ..signer
            },
            record: retiring.then(|| record_now(Phase::Retiring)),
            note: Some(if retiring {
                format!(
                    "rotation: now signing with the new issuer; root {} stays trusted until what it signed has expired",
                    fingerprints(&extras)
                )
            } else {
                "wrote the issuer control planes sign with".to_string()
            }),
            waiting: retiring.then(|| "workload certificates signed by the old root to expire".to_string()),
            due: retiring.then(|| rollout.cert_ttl + rollout.propagation),
        });
    }

    // 3. Roots the mesh no longer wants: drop them once what they signed has expired.
    if !extras.is_empty() {
        let Some(r) = record.filter(|r| r.phase == Phase::Retiring) else {
            return Ok(Step {
                record: Some(record_now(Phase::Retiring)),
                note: Some(format!(
                    "rotation: root {} is no longer wanted; it stays trusted until what it signed has expired",
                    fingerprints(&extras)
                )),
                waiting: Some("workload certificates signed by the old root to expire".to_string()),
                due: Some(rollout.cert_ttl + rollout.propagation),
                ..unchanged
            });
        };
        let wait = r.cert_ttl_seconds.max(ttl) + rollout.propagation.as_secs();
        let left = (r.since + wait as i64 - at).max(0) as u64;
        if left > 0 {
            return Ok(Step {
                waiting: Some(format!(
                    "until {} for workload certificates signed by the old root to expire",
                    ca::rfc3339(at + left as i64)
                )),
                due: Some(Duration::from_secs(left)),
                ..unchanged
            });
        }
        let kept: String = trust
            .iter()
            .filter(|t| !extras.iter().any(|e| e.der == t.der))
            .map(|t| t.pem.as_str())
            .collect();
        return Ok(Step {
            signing: SigningCa {
                roots_pem: kept,
                ..current.clone()
            },
            record: None,
            note: Some(format!(
                "rotation complete: removed root {} from the trust bundle",
                fingerprints(&extras)
            )),
            ..unchanged
        });
    }

    // Nothing to do; a record left over (a rotation undone half-way) is cleared.
    Ok(Step {
        record: None,
        note: record.is_some().then(|| "rotation complete".to_string()),
        ..unchanged
    })
}

#[cfg(test)]
#[path = "rotation_tests.rs"]
mod tests;
