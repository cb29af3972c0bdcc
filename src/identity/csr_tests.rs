use std::time::SystemTime;

use tokio::sync::watch;

use super::*;

/// Tokens `ns/sa` prove `ns/sa`; anything else is refused.
struct FakeTokens;

impl TokenCheck for FakeTokens {
    fn check<'a>(
        &'a self,
        token: &'a str,
        trust_domain: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<WorkloadId, AuthError>> + Send + 'a>> {
        Box::pin(async move {
            let (ns, sa) = token
                .split_once('/')
                .ok_or_else(|| AuthError::Unauthenticated("unknown token".into()))?;
            Ok(WorkloadId::new(trust_domain, ns, sa))
        })
    }
}

fn service() -> CertificateService {
    let now = SystemTime::now();
    let root = ca::new_root("cluster.local", 0, now).unwrap();
    let issuer = ca::new_issuer(&root, "cluster.local", now).unwrap();
    let (_tx, rx) = watch::channel(Some(Arc::new(issuer)));
    // Keep the sender alive for the test's length: a closed channel still reads.
    std::mem::forget(_tx);
    CertificateService::new(Signer {
        issuer: rx,
        tokens: Arc::new(FakeTokens),
        membership: Arc::new(|id: &WorkloadId| {
            if id.namespace == "shop" {
                Ok(())
            } else {
                Err(format!("namespace {} is not in the mesh", id.namespace))
            }
        }),
        trust_domain: "cluster.local".into(),
        ttl: Duration::from_secs(3600),
        rate: RateLimit {
            burst: 2.0,
            per_second: 0.001,
        },
        metrics: IdentityMetrics::default(),
    })
}

fn request(token: Option<&str>, sans: &[&str]) -> Request<IstioCertificateRequest> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut req = Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 7 * 24 * 3600,
        metadata: None,
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

#[tokio::test]
async fn the_certificate_names_the_token_identity_whatever_the_csr_asks() {
    let svc = service();
    let answer = svc
        .create(request(
            Some("shop/cart"),
            &["spiffe://cluster.local/ns/kube-system/sa/admin"],
        ))
        .await
        .expect("signed");
    assert_eq!(answer.cert_chain.len(), 3, "leaf, issuer, root");
    let leaf = ca::certificates(&answer.cert_chain[0]).unwrap().remove(0);
    assert_eq!(
        WorkloadId::of_certificate(&leaf).map(|i| i.uri()).as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/cart")
    );
    let facts = ca::facts(&leaf).unwrap();
    assert!(
        facts.not_after - facts.not_before <= 3600 + 300,
        "at most the mesh TTL (plus the backdating), not the week asked for"
    );
}

#[tokio::test]
async fn callers_without_a_good_token_or_outside_the_mesh_are_refused() {
    let svc = service();
    let none = svc.create(request(None, &[])).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated);
    let bad = svc.create(request(Some("garbage"), &[])).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Unauthenticated);
    let outside = svc.create(request(Some("other/app"), &[])).await.unwrap_err();
    assert_eq!(outside.code(), tonic::Code::PermissionDenied);
    assert!(outside.message().contains("namespace other"), "{}", outside.message());
}

#[tokio::test]
async fn each_identity_is_rate_limited_on_its_own() {
    let svc = service();
    for _ in 0..2 {
        svc.create(request(Some("shop/cart"), &[]))
            .await
            .expect("within the burst");
    }
    let over = svc.create(request(Some("shop/cart"), &[])).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted);
    svc.create(request(Some("shop/other"), &[]))
        .await
        .expect("another identity has its own bucket");
}
