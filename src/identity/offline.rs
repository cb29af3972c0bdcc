//! `weft ca`: a root kept offline, and from it one intermediate per cluster, printed as the
//! plug-in CA Secret (Istio's `cacerts` layout) to apply in that cluster's mesh namespace.
//! Clusters whose CAs come from one root trust each other's workloads (multi-primary,
//! primary-remote).

use std::path::Path;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;

use super::ca::{self, CA_CERT, CA_KEY, CERT_CHAIN, CaError, KeyedCert, ROOT_CERT};
use super::mesh_ca::ROOT_KEY;

/// Why `weft ca` could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A root or intermediate could not be made.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The root directory does not hold a usable root.
    #[error("{0}")]
    BadRoot(String),
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> OfflineError + '_ {
    move |source| OfflineError::File {
        path: path.display().to_string(),
        source,
    }
}

/// Makes a root and writes `dir/root-cert.pem` and `dir/root-key.pem` (owner-only); refuses
/// to overwrite an existing root.
pub fn write_root(dir: &Path, trust_domain: &str) -> Result<KeyedCert, OfflineError> {
    let key_path = dir.join(ROOT_KEY);
    if key_path.exists() {
        return Err(OfflineError::BadRoot(format!(
            "{} exists: a root is made once (move it away to make another)",
            key_path.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(file_error(dir))?;
    let root = ca::new_root(trust_domain, 0, SystemTime::now())?;
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&key_path).map_err(file_error(&key_path))?;
        f.write_all(root.key_pem.as_bytes()).map_err(file_error(&key_path))?;
    }
    let cert_path = dir.join(ROOT_CERT);
    std::fs::write(&cert_path, &root.cert_pem).map_err(file_error(&cert_path))?;
    Ok(root)
}

/// Reads the root written by [`write_root`].
pub fn read_root(dir: &Path) -> Result<KeyedCert, OfflineError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(file_error(&path))
    };
    let root = KeyedCert {
        cert_pem: read(ROOT_CERT)?,
        key_pem: read(ROOT_KEY)?,
    };
    if ca::first_facts(&root.cert_pem).is_none() {
        return Err(OfflineError::BadRoot(format!(
            "{} holds no certificate",
            dir.join(ROOT_CERT).display()
        )));
    }
    Ok(root)
}

/// The plug-in CA Secret for cluster `cluster`: a new intermediate from `root`, its chain
/// and the root, named `name` in `namespace`.
pub fn cluster_secret(
    root: &KeyedCert,
    trust_domain: &str,
    cluster: &str,
    name: &str,
    namespace: &str,
) -> Result<Secret, OfflineError> {
    let signing = ca::new_intermediate(root, trust_domain, &format!("Weft issuer {cluster}"), SystemTime::now())?;
    let data = [
        (CA_CERT, signing.issuer.cert_pem),
        (CA_KEY, signing.issuer.key_pem),
        (CERT_CHAIN, signing.chain_pem),
        (ROOT_CERT, signing.roots_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some([("weft.dev/cluster".to_string(), cluster.to_string())].into()),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        string_data: Some(data),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::spiffe::WorkloadId;

    fn data(s: &Secret) -> std::collections::BTreeMap<String, Vec<u8>> {
        s.string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect()
    }

    #[test]
    fn clusters_from_one_root_trust_each_others_workloads() {
        let dir = std::env::temp_dir().join(format!("weft-ca-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = write_root(&dir, "cluster.local").unwrap();
        assert!(
            write_root(&dir, "cluster.local").is_err(),
            "a root is never overwritten"
        );
        let root = read_root(&dir).unwrap();
        assert_eq!(root, made);
        let now = SystemTime::now();
        let (a, b) = (
            cluster_secret(&root, "cluster.local", "east", "cacerts", "weft-system").unwrap(),
            cluster_secret(&root, "cluster.local", "west", "cacerts", "weft-system").unwrap(),
        );
        let (ca_a, ca_b) = (
            ca::plugin_ca(&data(&a), now).unwrap(),
            ca::plugin_ca(&data(&b), now).unwrap(),
        );
        assert_ne!(
            ca_a.issuer.cert_pem, ca_b.issuer.cert_pem,
            "an intermediate per cluster"
        );
        assert_eq!(ca_a.roots_pem, ca_b.roots_pem, "one root");
        // A workload of west, checked against east's bundle, by the verifier rustls uses.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default().serialize_request(&key).unwrap();
        let id = WorkloadId::new("cluster.local", "shop", "cart");
        let chain = ca::sign_workload(&ca_b, csr.der(), &id.uri(), std::time::Duration::from_secs(600), now).unwrap();
        let ders = ca::certificates(&chain).unwrap();
        let anchors: Vec<_> = ca::certificates(&ca_a.roots_pem)
            .unwrap()
            .into_iter()
            .map(rustls_pki_types::CertificateDer::from)
            .collect();
        let anchors: Vec<_> = anchors
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
            .collect();
        let leaf = rustls_pki_types::CertificateDer::from(ders[0].clone());
        let leaf = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let intermediates: Vec<_> = ders[1..]
            .iter()
            .map(|d| rustls_pki_types::CertificateDer::from(d.clone()))
            .collect();
        let at = rustls_pki_types::UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            at,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .expect("west's workload verifies against east's bundle");
        // Another mesh's root is not trusted.
        let other = ca::new_root("cluster.local", 0, now).unwrap();
        let other_anchor = rustls_pki_types::CertificateDer::from(ca::certificates(&other.cert_pem).unwrap().remove(0));
        let other_anchors = [webpki::anchor_from_trusted_cert(&other_anchor).unwrap().to_owned()];
        assert!(
            leaf.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &other_anchors,
                &intermediates,
                at,
                webpki::KeyUsage::client_auth(),
                None,
                None
            )
            .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
