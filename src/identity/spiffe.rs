//! SPIFFE workload identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`,
//! the only identity a workload certificate carries.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// One workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    /// The trust domain.
    pub trust_domain: String,
    /// The Kubernetes namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub service_account: String,
}

impl WorkloadId {
    /// The identity of ServiceAccount `service_account` in `namespace`.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> WorkloadId {
        WorkloadId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// The SPIFFE ID.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// Parses a SPIFFE ID of Kubernetes form.
    pub fn parse(uri: &str) -> Option<WorkloadId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if !td.is_empty() && !ns.is_empty() && !sa.is_empty() =>
            {
                Some(WorkloadId::new(td, ns, sa))
            }
            _ => None,
        }
    }

    /// The identity a certificate (DER) carries in its URI SAN, if it has exactly one.
    pub fn of_certificate(der: &[u8]) -> Option<WorkloadId> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut uris = san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        let first = uris.next()?;
        if uris.next().is_some() {
            return None;
        }
        WorkloadId::parse(first)
    }
}

impl std::fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_odd_ones_are_refused() {
        let id = WorkloadId::new("cluster.local", "shop", "cart");
        assert_eq!(id.uri(), "spiffe://cluster.local/ns/shop/sa/cart");
        assert_eq!(WorkloadId::parse(&id.uri()), Some(id));
        for bad in [
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/cart/extra",
            "spiffe:///ns/shop/sa/cart",
            "https://cluster.local/ns/shop/sa/cart",
            "spiffe://cluster.local/ns//sa/cart",
        ] {
            assert_eq!(WorkloadId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_signed_certificate_carries_the_identity_it_was_signed_for() {
        use crate::identity::ca;
        let now = std::time::SystemTime::now();
        let root = ca::new_root("cluster.local", 0, now).unwrap();
        let issuer = ca::new_issuer(&root, "cluster.local", now).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(vec!["evil.example".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let id = WorkloadId::new("cluster.local", "shop", "cart");
        let chain = ca::sign_workload(&issuer, csr.der(), &id.uri(), std::time::Duration::from_secs(600), now).unwrap();
        let leaf = ca::certificates(&chain).unwrap().remove(0);
        assert_eq!(WorkloadId::of_certificate(&leaf), Some(id));
    }
}
