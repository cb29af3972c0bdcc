//! The mesh's certificate authority, pure: a self-signed root and the intermediate issuer
//! made from it, a plug-in CA in Istio's `cacerts` layout checked before it is trusted, and
//! workload certificates whose only identity is the SPIFFE ID given, whatever the CSR asks.
//! Keys are ECDSA P-256 (rcgen on ring); certificates are parsed with x509-parser. Nothing
//! here logs, and no error carries key material.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::digest::{SHA256, digest};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a self-signed root lives.
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an issuer lives; it is renewed well before (see `issuer_due`).
pub const ISSUER_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Clock skew allowed for: certificates start this long before they are made.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The four keys of a plug-in CA Secret (Istio's `cacerts` layout).
pub const CA_CERT: &str = "ca-cert.pem";
/// The issuer's private key.
pub const CA_KEY: &str = "ca-key.pem";
/// The root (or roots) the chain ends at.
pub const ROOT_CERT: &str = "root-cert.pem";
/// The issuer's chain up to the root.
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// Why a CA cannot be used. Messages name the Secret key and the problem, never content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCa {
    /// A key of the Secret is missing or empty.
    #[error("{0} is missing or empty")]
    Missing(&'static str),
    /// A key does not hold what it should.
    #[error("{key} does not parse: {problem}")]
    Unreadable {
        /// The Secret key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// `ca-key.pem` is not the key of `ca-cert.pem`.
    #[error("ca-key.pem is not the private key of ca-cert.pem")]
    KeyMismatch,
    /// A certificate that must sign others is not a CA.
    #[error("{0} is not a CA certificate (basicConstraints CA:TRUE is missing)")]
    NotCa(&'static str),
    /// A certificate is outside its validity.
    #[error("{key} is not valid now: valid from {not_before} until {not_after}")]
    NotValidNow {
        /// The Secret key.
        key: &'static str,
        /// Its notBefore (RFC 3339).
        not_before: String,
        /// Its notAfter (RFC 3339).
        not_after: String,
    },
    /// The chain does not lead from `ca-cert.pem` to a root in `root-cert.pem`.
    #[error("the chain does not end at root-cert.pem: {0}")]
    BrokenChain(String),
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused (never with key material in the message).
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The CSR does not parse, or its signature does not verify.
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(rcgen::Error),
    /// A PEM block does not decode.
    #[error("not PEM: {0}")]
    Pem(String),
}

/// A certificate and its private key, as PEM. The key is never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What signs workload certificates: the issuer, its chain up to the root, and the roots
/// it chains to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningCa {
    /// The issuer certificate and key.
    pub issuer: KeyedCert,
    /// Certificates from the issuer up to (and including) the root, PEM, issuer first.
    pub chain_pem: String,
    /// The roots (`root-cert.pem`).
    pub roots_pem: String,
}

/// Facts of one certificate, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix(t)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// `secs` (Unix) as RFC 3339.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// A random 16-byte serial (positive: the top bit clear).
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn ca_params(common_name: &str, trust_domain: &str, now: SystemTime, ttl: Duration, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(now + ttl);
    params.serial_number = Some(serial());
    params.use_authority_key_identifier_extension = true;
    params
}

/// A new self-signed root for `trust_domain` (ECDSA P-256, [`ROOT_TTL`]), generation
/// `generation` (raised by a rotation, so each root's name says which it is).
pub fn new_root(trust_domain: &str, generation: u32, now: SystemTime) -> Result<KeyedCert, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let params = ca_params(&format!("Weft root CA {generation}"), trust_domain, now, ROOT_TTL, 1);
    let cert = params.self_signed(&key)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new intermediate issuer signed by `root` ([`ISSUER_TTL`], never past the root's own
/// end), and what it signs with.
pub fn new_issuer(root: &KeyedCert, trust_domain: &str, now: SystemTime) -> Result<SigningCa, CaError> {
    new_intermediate(root, trust_domain, "Weft issuer", now)
}

/// A new intermediate named `common_name` signed by `root` (as [`new_issuer`]): one per
/// cluster of a mesh whose clusters share a root (`weft ca intermediate`).
pub fn new_intermediate(
    root: &KeyedCert,
    trust_domain: &str,
    common_name: &str,
    now: SystemTime,
) -> Result<SigningCa, CaError> {
    let root_key = KeyPair::from_pem(&root.key_pem)?;
    let root_issuer = Issuer::from_ca_cert_pem(&root.cert_pem, &root_key)?;
    let root_end = first_facts(&root.cert_pem).map(|f| f.not_after).unwrap_or(i64::MAX);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(common_name, trust_domain, now, ISSUER_TTL, 0);
    if unix(now + ISSUER_TTL) > root_end {
        params.not_after = time::OffsetDateTime::from_unix_timestamp(root_end).unwrap_or(params.not_after);
    }
    let cert = params.signed_by(&key, &root_issuer)?;
    let cert_pem = cert.pem();
    Ok(SigningCa {
        chain_pem: format!("{cert_pem}{}", root.cert_pem),
        issuer: KeyedCert {
            cert_pem,
            key_pem: key.serialize_pem(),
        },
        roots_pem: root.cert_pem.clone(),
    })
}

/// Signs a workload certificate for `spiffe_id` with the key of `csr_der` (whose signature
/// proves the caller holds it). Nothing the CSR asks for is kept but its public key: no
/// subject, no SAN, no extension. Valid `ttl` from now (never past the issuer's end); the
/// leaf PEM followed by the chain to the root.
pub fn sign_workload(
    ca: &SigningCa,
    csr_der: &[u8],
    spiffe_id: &str,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, CaError> {
    let csr = CertificateSigningRequestParams::from_der(&csr_der.into()).map_err(CaError::BadCsr)?;
    let key = KeyPair::from_pem(&ca.issuer.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.issuer.cert_pem, &key)?;
    let issuer_end = first_facts(&ca.issuer.cert_pem)
        .map(|f| f.not_after)
        .unwrap_or(i64::MAX);
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().map_err(CaError::Generate)?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(now + ttl)
        .min(time::OffsetDateTime::from_unix_timestamp(issuer_end).unwrap_or(time::OffsetDateTime::UNIX_EPOCH));
    params.serial_number = Some(serial());
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&csr.public_key, &issuer)?;
    Ok(format!("{}{}", cert.pem(), ca.chain_pem))
}

/// A serving certificate for `names` (DNS names or IP addresses) with a new key, signed by
/// `ca`, valid `ttl` from now (never past the issuer's end): the key and the leaf followed
/// by the chain to the root.
pub fn sign_server(ca: &SigningCa, names: &[String], ttl: Duration, now: SystemTime) -> Result<KeyedCert, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let issuer_key = KeyPair::from_pem(&ca.issuer.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.issuer.cert_pem, &issuer_key)?;
    let issuer_end = first_facts(&ca.issuer.cert_pem)
        .map(|f| f.not_after)
        .unwrap_or(i64::MAX);
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = offset(now - BACKDATE);
    params.not_after = offset(now + ttl)
        .min(time::OffsetDateTime::from_unix_timestamp(issuer_end).unwrap_or(time::OffsetDateTime::UNIX_EPOCH));
    params.serial_number = Some(serial());
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(KeyedCert {
        cert_pem: format!("{}{}", cert.pem(), ca.chain_pem),
        key_pem: key.serialize_pem(),
    })
}

/// The DER of every `CERTIFICATE` block in `pem`, in order.
pub fn certificates(pem_text: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let blocks = pem::parse_many(pem_text).map_err(|e| CaError::Pem(e.to_string()))?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect())
}

/// Fingerprint and validity of one certificate (DER).
pub fn facts(der: &[u8]) -> Option<CertFacts> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(CertFacts {
        fingerprint: hex(digest(&SHA256, der).as_ref()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Facts of the first certificate in `pem_text`.
pub fn first_facts(pem_text: &str) -> Option<CertFacts> {
    certificates(pem_text).ok()?.first().and_then(|d| facts(d))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a plug-in CA Secret's data (Istio's `cacerts`: `ca-cert.pem`, `ca-key.pem`,
/// `root-cert.pem`, `cert-chain.pem`) and returns what signs with it. Refused: a missing or
/// empty key; a certificate or key that does not parse; a key that is not the
/// certificate's; an issuer or root that is not a CA or is not valid at `now`; a chain
/// that does not lead, signature by signature, from `ca-cert.pem` to a root of
/// `root-cert.pem`.
pub fn plugin_ca(data: &BTreeMap<String, Vec<u8>>, now: SystemTime) -> Result<SigningCa, InvalidCa> {
    let text = |key: &'static str| -> Result<String, InvalidCa> {
        let bytes = data.get(key).filter(|b| !b.is_empty()).ok_or(InvalidCa::Missing(key))?;
        String::from_utf8(bytes.clone()).map_err(|_| InvalidCa::Unreadable {
            key,
            problem: "not UTF-8 text".to_string(),
        })
    };
    let (cert_pem, key_pem, root_pem, chain_pem) = (text(CA_CERT)?, text(CA_KEY)?, text(ROOT_CERT)?, text(CERT_CHAIN)?);
    let ders = |key: &'static str, pem_text: &str| -> Result<Vec<Vec<u8>>, InvalidCa> {
        let found = certificates(pem_text).map_err(|e| InvalidCa::Unreadable {
            key,
            problem: e.to_string(),
        })?;
        if found.is_empty() {
            return Err(InvalidCa::Unreadable {
                key,
                problem: "no CERTIFICATE block".to_string(),
            });
        }
        Ok(found)
    };
    let issuer_der = ders(CA_CERT, &cert_pem)?.remove(0);
    let roots = ders(ROOT_CERT, &root_pem)?;
    let chain = ders(CERT_CHAIN, &chain_pem)?;
    let parse = |key: &'static str, der: &[u8]| -> Result<(), InvalidCa> {
        X509Certificate::from_der(der)
            .map(|_| ())
            .map_err(|e| InvalidCa::Unreadable {
                key,
                problem: e.to_string(),
            })
    };
    parse(CA_CERT, &issuer_der)?;
    for r in &roots {
        parse(ROOT_CERT, r)?;
    }
    for c in &chain {
        parse(CERT_CHAIN, c)?;
    }
    let (_, issuer) = X509Certificate::from_der(&issuer_der).map_err(|e| InvalidCa::Unreadable {
        key: CA_CERT,
        problem: e.to_string(),
    })?;
    // The key must be the certificate's.
    let key = KeyPair::from_pem(&key_pem).map_err(|e| InvalidCa::Unreadable {
        key: CA_KEY,
        problem: e.to_string(),
    })?;
    if key.public_key_raw() != issuer.public_key().subject_public_key.data.as_ref() {
        return Err(InvalidCa::KeyMismatch);
    }
    let when = unix(now);
    let usable = |key: &'static str, c: &X509Certificate| -> Result<(), InvalidCa> {
        if !c.is_ca() {
            return Err(InvalidCa::NotCa(key));
        }
        let (nb, na) = (c.validity().not_before.timestamp(), c.validity().not_after.timestamp());
        if when < nb || when > na {
            return Err(InvalidCa::NotValidNow {
                key,
                not_before: rfc3339(nb),
                not_after: rfc3339(na),
            });
        }
        Ok(())
    };
    usable(CA_CERT, &issuer)?;
    let root_certs: Vec<X509Certificate> = roots
        .iter()
        .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
        .collect();
    for r in &root_certs {
        usable(ROOT_CERT, r)?;
    }
    // Walk up: the issuer, then the chain's certificates after it, each signed by the next,
    // until a certificate a root signed (or that is a root).
    let mut path: Vec<X509Certificate> = vec![issuer];
    for der in chain.iter().filter(|d| **d != issuer_der) {
        if let Ok((_, c)) = X509Certificate::from_der(der) {
            path.push(c);
        }
    }
    let mut current = 0;
    loop {
        let c = &path[current];
        // Signed by a root, or a root itself (a chain may end with its root): done.
        let signed_by_root = root_certs
            .iter()
            .any(|r| r.subject() == c.issuer() && c.verify_signature(Some(r.public_key())).is_ok());
        let is_root = root_certs
            .iter()
            .any(|r| r.tbs_certificate.as_ref() == c.tbs_certificate.as_ref());
        if signed_by_root || is_root {
            break;
        }
        let Some(next) = path
            .iter()
            .position(|p| p.subject() == c.issuer() && p.subject() != c.subject())
        else {
            return Err(InvalidCa::BrokenChain(format!(
                "nothing in cert-chain.pem or root-cert.pem issued \"{}\" (its issuer is \"{}\")",
                c.subject(),
                c.issuer()
            )));
        };
        if c.verify_signature(Some(path[next].public_key())).is_err() {
            return Err(InvalidCa::BrokenChain(format!(
                "the signature of \"{}\" does not verify with \"{}\"'s key",
                c.subject(),
                path[next].subject()
            )));
        }
        usable(CERT_CHAIN, &path[next])?;
        if next <= current {
            return Err(InvalidCa::BrokenChain("the chain loops".to_string()));
        }
        current = next;
    }
    Ok(SigningCa {
        issuer: KeyedCert { cert_pem, key_pem },
        chain_pem,
        roots_pem: root_pem,
    })
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
