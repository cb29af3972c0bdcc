//! On the TLS port a client's node metadata is checked against who it proved to be (pure):
//! the namespace it claims must be its identity's, a gateway must run as its gateway's
//! ServiceAccount, and a node proxy as a node proxy of this mesh.

use std::sync::Arc;

use crate::identity::spiffe::WorkloadId;
use crate::identity::tokens::TokenCheck;

/// The `ROLE` of a gateway's pods.
pub const GATEWAY_ROLE: &str = "gateway";
/// The `ROLE` of node proxies.
pub const NODE_PROXY_ROLE: &str = "node-proxy";

/// What a client's node metadata claims.
#[derive(Clone, Copy, Debug, Default)]
pub struct Claims<'a> {
    /// `NAMESPACE`.
    pub namespace: Option<&'a str>,
    /// `ROLE`.
    pub role: Option<&'a str>,
    /// `GATEWAY`.
    pub gateway: Option<&'a str>,
}

/// What the TLS port checks clients against.
#[derive(Clone)]
pub struct Authenticator {
    /// Checks ServiceAccount tokens (clients without a certificate).
    pub tokens: Arc<dyn TokenCheck>,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The mesh namespace, where node proxies run.
    pub mesh_namespace: String,
}

/// The ServiceAccounts of node proxies start with this (`weft-proxy-<revision>`).
pub const NODE_PROXY_ACCOUNT_PREFIX: &str = "weft-proxy-";

/// Checks what `info` claims against `id`; `Err` says which claim failed.
pub fn check(info: &Claims<'_>, id: &WorkloadId, auth: &Authenticator) -> Result<(), String> {
    if id.trust_domain != auth.trust_domain {
        return Err(format!(
            "the client's identity {id} is of trust domain {}, this mesh's is {}",
            id.trust_domain, auth.trust_domain
        ));
    }
    let Some(ns) = info.namespace else {
        return Err(format!(
            "the node metadata names no NAMESPACE; on this port it must be the client's own ({})",
            id.namespace
        ));
    };
    if ns != id.namespace {
        return Err(format!(
            "the node metadata claims NAMESPACE {ns:?}, but the client is {id}: a client may only claim its own namespace"
        ));
    }
    let gateway = info.gateway.unwrap_or_default();
    let proxy_account =
        id.namespace == auth.mesh_namespace && id.service_account.starts_with(NODE_PROXY_ACCOUNT_PREFIX);
    match info.role {
        Some(GATEWAY_ROLE) if id.service_account != gateway => Err(format!(
            "the node metadata claims GATEWAY {gateway:?}, but the client is {id}: a gateway's pods run as the ServiceAccount named after it"
        )),
        Some(NODE_PROXY_ROLE) if !proxy_account => Err(format!(
            "the node metadata claims ROLE node-proxy, but the client is {id}: node proxies run as {NODE_PROXY_ACCOUNT_PREFIX}<revision> in {}",
            auth.mesh_namespace
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use super::*;
    use crate::identity::tokens::AuthError;

    struct NoTokens;

    impl TokenCheck for NoTokens {
        fn check<'a>(
            &'a self,
            _token: &'a str,
            _trust_domain: &'a str,
        ) -> Pin<Box<dyn Future<Output = Result<WorkloadId, AuthError>> + Send + 'a>> {
            Box::pin(async { Err(AuthError::Unauthenticated("no".into())) })
        }
    }

    fn auth() -> Authenticator {
        Authenticator {
            tokens: Arc::new(NoTokens),
            trust_domain: "cluster.local".into(),
            mesh_namespace: "weft-system".into(),
        }
    }

    fn info<'a>(namespace: Option<&'a str>, role: Option<&'a str>, gateway: Option<&'a str>) -> Claims<'a> {
        Claims {
            namespace,
            role,
            gateway,
        }
    }

    #[test]
    fn a_client_may_claim_only_its_own_namespace_and_role() {
        let cart = WorkloadId::new("cluster.local", "shop", "cart");
        assert_eq!(check(&info(Some("shop"), None, None), &cart, &auth()), Ok(()));
        let forged = check(&info(Some("bank"), None, None), &cart, &auth()).unwrap_err();
        assert!(forged.contains("claims NAMESPACE \"bank\""), "{forged}");
        assert!(check(&info(None, None, None), &cart, &auth()).is_err());
        let other_domain = WorkloadId::new("evil.example", "shop", "cart");
        assert!(check(&info(Some("shop"), None, None), &other_domain, &auth()).is_err());

        let gw = WorkloadId::new("cluster.local", "edge", "ingress");
        assert_eq!(
            check(&info(Some("edge"), Some("gateway"), Some("ingress")), &gw, &auth()),
            Ok(())
        );
        let stolen = check(&info(Some("edge"), Some("gateway"), Some("admin")), &gw, &auth()).unwrap_err();
        assert!(stolen.contains("GATEWAY \"admin\""), "{stolen}");

        let proxy = WorkloadId::new("cluster.local", "weft-system", "weft-proxy-m-v1");
        assert_eq!(
            check(&info(Some("weft-system"), Some("node-proxy"), None), &proxy, &auth()),
            Ok(())
        );
        let app_as_proxy = check(&info(Some("shop"), Some("node-proxy"), None), &cart, &auth()).unwrap_err();
        assert!(app_as_proxy.contains("ROLE node-proxy"), "{app_as_proxy}");
    }
}
