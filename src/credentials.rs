//! Remote-cluster credentials, checked before anything uses them: the one place the
//! operator and the control plane decide whether a RemoteCluster's kubeconfig is safe.
//!
//! A kubeconfig can do more than name a server and a token: an `exec` plugin or an
//! `auth-provider` runs a command, and a file path (token, client certificate or key, CA)
//! reads a file — in the operator's and the control plane's containers, with their
//! identity. Whoever may write a Secret in the mesh namespace must not gain that, so such a
//! kubeconfig is refused with the field named (Istio refuses these by default for the same
//! reason). What is accepted: a server, inline CA data (or a system CA), and a bearer token
//! or an inline client certificate and key. Messages never include a credential.

use kube::config::{AuthInfo, Cluster, Kubeconfig};

/// Why a kubeconfig is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// Not a kubeconfig.
    #[error("the kubeconfig does not parse: {0}")]
    Parse(String),
    /// No context to use, or it names a cluster or user that is not there.
    #[error("the kubeconfig has no usable current context: {0}")]
    NoContext(String),
    /// A field that runs a command or reads a file.
    #[error(
        "{entry}: `{field}` is not allowed: it would {why} in the operator's and control plane's containers; use an inline token or certificate (`weft remote-secret` makes one)"
    )]
    Refused {
        /// Which entry, e.g. `user "remote"`.
        entry: String,
        /// The field, as written in a kubeconfig.
        field: &'static str,
        /// What it would do.
        why: &'static str,
    },
    /// The cluster entry names no server.
    #[error("{entry}: no `server`")]
    NoServer {
        /// Which entry.
        entry: String,
    },
    /// The user entry carries no credential.
    #[error("{entry}: no credential: set `token`, or `client-certificate-data` and `client-key-data`")]
    NoCredential {
        /// Which entry.
        entry: String,
    },
}

/// A kubeconfig that passed [`check`]: the current context's cluster and user.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The whole kubeconfig (every entry checked), to build a client from.
    pub kubeconfig: Kubeconfig,
    /// The API server's address.
    pub server: String,
}

/// Parses `text` and refuses anything that could run a command or read a file, in any
/// entry (not only the current context's: a client library may pick another).
pub fn check(text: &str) -> Result<Checked, CredentialError> {
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| CredentialError::Parse(without_secrets(&e)))?;
    for named in &kubeconfig.auth_infos {
        if let Some(user) = &named.auth_info {
            check_user(&format!("user {:?}", named.name), user)?;
        }
    }
    for named in &kubeconfig.clusters {
        if let Some(cluster) = &named.cluster {
            check_cluster(&format!("cluster {:?}", named.name), cluster)?;
        }
    }
    let server = current(&kubeconfig)?;
    Ok(Checked { kubeconfig, server })
}

/// The server of the current context, once its cluster and user are known to exist and to
/// carry a server and a credential.
fn current(k: &Kubeconfig) -> Result<String, CredentialError> {
    let name = k
        .current_context
        .clone()
        .or_else(|| (k.contexts.len() == 1).then(|| k.contexts[0].name.clone()))
        .ok_or_else(|| CredentialError::NoContext("no `current-context`".into()))?;
    let context = k
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| CredentialError::NoContext(format!("context {name:?} is not defined")))?;
    let user_name = context.user.clone().unwrap_or_default();
    let user = k
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.clone())
        .ok_or_else(|| CredentialError::NoContext(format!("user {user_name:?} is not defined")))?;
    let has_token = user.token.is_some();
    let has_cert = user.client_certificate_data.is_some() && user.client_key_data.is_some();
    if !has_token && !has_cert {
        return Err(CredentialError::NoCredential {
            entry: format!("user {user_name:?}"),
        });
    }
    let cluster_name = &context.cluster;
    let cluster = k
        .clusters
        .iter()
        .find(|c| &c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| CredentialError::NoContext(format!("cluster {cluster_name:?} is not defined")))?;
    cluster
        .server
        .filter(|s| !s.is_empty())
        .ok_or(CredentialError::NoServer {
            entry: format!("cluster {cluster_name:?}"),
        })
}

/// What a user entry may not hold.
fn check_user(entry: &str, u: &AuthInfo) -> Result<(), CredentialError> {
    let refused = |field, why| {
        Err(CredentialError::Refused {
            entry: entry.to_string(),
            field,
            why,
        })
    };
    if u.exec.is_some() {
        return refused("exec", "run a command");
    }
    if u.auth_provider.is_some() {
        return refused("auth-provider", "run a plugin that may run commands or read files");
    }
    if u.token_file.is_some() {
        return refused("tokenFile", "read a file");
    }
    if u.client_certificate.is_some() {
        return refused("client-certificate", "read a file");
    }
    if u.client_key.is_some() {
        return refused("client-key", "read a file");
    }
    Ok(())
}

/// What a cluster entry may not hold.
fn check_cluster(entry: &str, c: &Cluster) -> Result<(), CredentialError> {
    if c.certificate_authority.is_some() {
        return Err(CredentialError::Refused {
            entry: entry.to_string(),
            field: "certificate-authority",
            why: "read a file",
        });
    }
    Ok(())
}

/// A parse error's text, which may quote the input: only its first line, and nothing after
/// a quoted value, so no credential reaches a message.
fn without_secrets(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first
        .split(['"', '`', '\''])
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cr3t-token-value";

    fn kubeconfig(user: &str, cluster: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: remote\n\
             contexts:\n- name: remote\n  context: {{cluster: b, user: remote}}\n\
             clusters:\n- name: b\n  cluster:\n    server: https://127.0.0.1:6443\n{cluster}\
             users:\n- name: remote\n  user:\n{user}"
        )
    }

    fn refused(text: &str) -> CredentialError {
        let err = check(text).expect_err("refused");
        assert!(!err.to_string().contains(TOKEN), "no credential in {err}");
        err
    }

    #[test]
    fn an_inline_token_and_ca_are_accepted() {
        let ok = check(&kubeconfig(
            &format!("    token: {TOKEN}\n"),
            "    certificate-authority-data: Zm9v\n",
        ))
        .expect("accepted");
        assert_eq!(ok.server, "https://127.0.0.1:6443");
        let cert = kubeconfig("    client-certificate-data: Zm9v\n    client-key-data: YmFy\n", "");
        assert!(check(&cert).is_ok());
    }

    #[test]
    fn commands_plugins_and_files_are_refused_naming_the_field() {
        let token = format!("    token: {TOKEN}\n");
        let cases = [
            (
                kubeconfig(
                    &format!(
                        "{token}    exec:\n      command: /bin/sh\n      apiVersion: client.authentication.k8s.io/v1\n"
                    ),
                    "",
                ),
                "exec",
            ),
            (
                kubeconfig(&format!("{token}    auth-provider:\n      name: gcp\n"), ""),
                "auth-provider",
            ),
            (kubeconfig("    tokenFile: /var/run/secrets/token\n", ""), "tokenFile"),
            (
                kubeconfig("    client-certificate: /etc/c.crt\n    client-key-data: YmFy\n", ""),
                "client-certificate",
            ),
            (
                kubeconfig("    client-certificate-data: Zm9v\n    client-key: /etc/c.key\n", ""),
                "client-key",
            ),
            (
                kubeconfig(&token, "    certificate-authority: /etc/ca.crt\n"),
                "certificate-authority",
            ),
        ];
        for (text, field) in cases {
            let err = refused(&text);
            assert!(
                matches!(&err, CredentialError::Refused { field: f, .. } if *f == field),
                "{field}: {err}"
            );
            assert!(err.to_string().contains(&format!("`{field}` is not allowed")), "{err}");
        }
    }

    #[test]
    fn every_entry_is_checked_not_only_the_current_one() {
        let text = format!(
            "{}- name: other\n  user:\n    exec:\n      command: curl\n      apiVersion: client.authentication.k8s.io/v1\n",
            kubeconfig(&format!("    token: {TOKEN}\n"), "")
        );
        assert!(matches!(refused(&text), CredentialError::Refused { field: "exec", .. }));
    }

    #[test]
    fn a_kubeconfig_without_credential_server_or_context_says_what_is_missing() {
        assert!(matches!(
            refused(&kubeconfig("    username: x\n", "")),
            CredentialError::NoCredential { .. }
        ));
        let no_server = kubeconfig(
            &format!("    token: {TOKEN}\n"),
            "    insecure-skip-tls-verify: false\n",
        )
        .replace("    server: https://127.0.0.1:6443\n", "");
        assert!(
            matches!(refused(&no_server), CredentialError::NoServer { .. }),
            "{no_server}"
        );
        let no_context = kubeconfig(&format!("    token: {TOKEN}\n"), "")
            .replace("current-context: remote", "current-context: gone");
        assert!(matches!(refused(&no_context), CredentialError::NoContext(_)));
        assert!(matches!(
            refused(&format!("token: {TOKEN}: [")),
            CredentialError::Parse(_)
        ));
    }
}
