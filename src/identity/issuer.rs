//! The issuer a control plane signs with: the one Secret the operator keeps for its mesh
//! (Istio's `cacerts` layout), read by name every [`POLL`] and checked before use. A
//! Secret that goes bad leaves the last good issuer in use, and says so in the log.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use tokio::sync::watch;
use tracing::{info, warn};

use super::ca::{self, SigningCa};
use super::metrics::IdentityMetrics;

/// How often the issuer Secret is read. Agents re-read their bundle within
/// [`crate::identity::agent::BUNDLE_REFRESH`]; a rotation waits for both (the operator's
/// `--bundle-propagation-seconds` is at least twice this).
pub const POLL: Duration = Duration::from_secs(10);

/// The current issuer (`None` until one was read).
pub type IssuerWatch = watch::Receiver<Option<Arc<SigningCa>>>;

/// Reads Secret `name` in `namespace` now and every [`POLL`], until the process ends.
pub fn watch_issuer(client: Client, namespace: &str, name: &str, metrics: IdentityMetrics) -> IssuerWatch {
    let (tx, rx) = watch::channel(None);
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let (namespace, name) = (namespace.to_string(), name.to_string());
    tokio::spawn(async move {
        let mut last_problem = String::new();
        loop {
            let problem = match api.get_opt(&name).await {
                Ok(Some(secret)) => {
                    let data = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    match ca::plugin_ca(&data, SystemTime::now()) {
                        Ok(signing) => {
                            let changed = tx.borrow().as_deref() != Some(&signing);
                            if changed {
                                info!(secret = %format!("{namespace}/{name}"), "loaded the issuer");
                                metrics.issuer_loaded.set(1);
                                let _ = tx.send(Some(Arc::new(signing)));
                            }
                            String::new()
                        }
                        Err(e) => format!("Secret {namespace}/{name} cannot sign: {e}"),
                    }
                }
                Ok(None) => format!("Secret {namespace}/{name} does not exist yet"),
                Err(e) => format!("cannot read Secret {namespace}/{name}: {e}"),
            };
            if !problem.is_empty() && problem != last_problem {
                warn!("{problem}; certificates are signed with the last good issuer, if any");
            }
            last_problem = problem;
            tokio::time::sleep(POLL).await;
        }
    });
    rx
}
