//! `MeshInstall.spec.security` and `status.security`: the mesh's certificate authority and
//! the workload certificates it signs (see `docs/security.md`, "Identity").

// kube-derive attribute lists repeat keys such as `validation` by design.
#![allow(clippy::duplicated_attributes)]

use std::time::Duration;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The workload certificate lifetime unless `workloadCertTTL` says otherwise.
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest `workloadCertTTL` (short values are for tests).
pub const MIN_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(60);
/// The longest `workloadCertTTL`.
pub const MAX_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The mesh's identity: who signs workload certificates, and for how long they live. The
/// trust domain stays `meshConfig.trustDomain`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.rootRotation) || self.rootRotation == 0 || !has(self.ca) || !has(self.ca.secretRef)").message("security.rootRotation rotates a self-signed root; a plug-in CA (ca.secretRef) is rotated by changing its Secret"))]
pub struct Security {
    /// The certificate authority: `selfSigned` (the default) or a plug-in CA Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSource>,
    /// How long a workload certificate lives, as a duration such as `24h` or `90m`
    /// (from 1m to 168h; default 24h). Agents renew at about half of it.
    #[serde(default, rename = "workloadCertTTL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s))+$')").message("workloadCertTTL must be a duration of whole hours, minutes or seconds, such as 24h, 90m or 1h30m"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(h|m|s))+$') || (duration(self) >= duration('1m') && duration(self) <= duration('168h'))").message("workloadCertTTL must be from 1m to 168h (7 days)"))]
    pub workload_cert_ttl: Option<String>,
    /// Raise it to rotate a self-signed root: the operator makes a new root, trusts it
    /// beside the old one everywhere, then signs with it, then drops the old root once
    /// what it signed has expired (`status.security.rotation` shows each step). It can only
    /// be raised. A plug-in CA is rotated by changing its Secret instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("rootRotation can only be raised: a root, once replaced, is not brought back"))]
    pub root_rotation: Option<u32>,
    /// Roots of other meshes this mesh's workloads also trust ("trust between meshes"):
    /// each a ConfigMap in the mesh namespace holding PEM certificates (such as a copy of
    /// the other mesh's `weft-root-ca`). They join every trust bundle; they never sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub trusted_roots: Option<Vec<TrustedRoots>>,
}

/// A ConfigMap of roots to trust.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedRoots {
    /// The ConfigMap, in the mesh namespace.
    pub config_map_ref: ConfigMapKeyRef,
}

/// A key of a ConfigMap in the mesh namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct ConfigMapKeyRef {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("configMapRef.name must name a ConfigMap: a DNS subdomain (lower-case letters, digits, '-' and '.')"))]
    pub name: String,
    /// The key holding the PEM certificates (default `root-cert.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// Who signs workload certificates. At most one of the two (none means `selfSigned`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.selfSigned) && has(self.secretRef))").message("security.ca: set selfSigned or secretRef, not both"))]
pub struct CaSource {
    /// The operator makes the mesh's root (ECDSA P-256) and an intermediate issuer from it,
    /// and keeps both in the mesh namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSigned>,
    /// A plug-in CA: a Secret in the mesh namespace in Istio's `cacerts` layout
    /// (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`). Changing the
    /// Secret rotates the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<CaSecretRef>,
}

/// The operator keeps the mesh's root.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct SelfSigned {}

/// A Secret in the mesh namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct CaSecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("secretRef.name must name a Secret: a DNS subdomain (lower-case letters, digits, '-' and '.')"))]
    pub name: String,
}

impl Security {
    /// The workload certificate lifetime (the schema bounds it; a value it let through
    /// that does not parse falls back to the default).
    pub fn workload_cert_ttl(&self) -> Duration {
        self.workload_cert_ttl
            .as_deref()
            .and_then(parse_duration)
            .map_or(DEFAULT_WORKLOAD_CERT_TTL, |d| {
                d.clamp(MIN_WORKLOAD_CERT_TTL, MAX_WORKLOAD_CERT_TTL)
            })
    }

    /// The `rootRotation` asked for (0 when unset).
    pub fn root_rotation(&self) -> u32 {
        self.root_rotation.unwrap_or(0)
    }

    /// The plug-in CA Secret, if one is named.
    pub fn plugin_secret(&self) -> Option<&str> {
        self.ca.as_ref()?.secret_ref.as_ref().map(|r| r.name.as_str())
    }
}

/// Parses a duration of whole hours, minutes and seconds, such as `1h30m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: u64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(match c {
            'h' => n.checked_mul(3600)?,
            'm' => n.checked_mul(60)?,
            's' => n,
            _ => return None,
        })?;
    }
    (digits.is_empty() && !text.is_empty()).then_some(Duration::from_secs(total))
}

/// What the mesh's CA is, as observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityStatus {
    /// The trust domain of every workload identity (`spiffe://<trustDomain>/ns/…/sa/…`).
    pub trust_domain: String,
    /// Every root the mesh trusts (the trust bundle `weft-root-ca`), newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<RootStatus>,
    /// When the issuer that signs workload certificates expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_not_after: Option<String>,
    /// Roots of other meshes the bundle also holds (`trustedRoots`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_roots: Vec<RootStatus>,
    /// The ready revisions whose control planes read the current issuer and bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serving_revisions: Vec<String>,
    /// The root rotation under way, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,
}

/// A root rotation under way (`docs/security.md`, "Rotating the root").
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// `Distributing` (the new root is trusted beside the old; signing has not moved) or
    /// `Retiring` (signing moved; the old root stays trusted until what it signed expired).
    pub phase: String,
    /// When the phase began (RFC 3339).
    pub since: String,
    /// What the next step waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// One trusted root.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootStatus {
    /// SHA-256 of the certificate's DER, lower-case hex.
    pub fingerprint: String,
    /// Valid from (RFC 3339).
    pub not_before: String,
    /// Valid until (RFC 3339).
    pub not_after: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_the_schema_allows() {
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("24"), None);
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration(""), None);
        let s = |ttl: &str| Security {
            workload_cert_ttl: Some(ttl.to_string()),
            ..Default::default()
        };
        assert_eq!(s("10s").workload_cert_ttl(), MIN_WORKLOAD_CERT_TTL);
        assert_eq!(Security::default().workload_cert_ttl(), DEFAULT_WORKLOAD_CERT_TTL);
    }
}
