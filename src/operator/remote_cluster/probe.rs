//! Observe the credential: the Secret's kubeconfig, checked by `credentials::check` before
//! anything connects; then the remote API server's version and, with
//! SelfSubjectAccessReviews (cluster-wide), whether the credential may get, list and watch
//! what discovery needs. Nothing here logs or returns the kubeconfig or its token.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::decide::{Credential, Missing, Probe};
use crate::credentials::{self, Checked};

/// How long connecting to a remote API server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one answer may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the whole check may take (version and every review).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What discovery reads, cluster-wide: (API group, resource).
pub const NEEDED: [(&str, &str); 3] = [
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "namespaces"),
];
/// The verbs it uses on each.
pub const VERBS: [&str; 3] = ["get", "list", "watch"];

/// The kubeconfig in `key` of `secret`, or the credential saying why there is none.
pub fn kubeconfig_text(secret: Option<&Secret>, key: &str) -> Result<String, Credential> {
    let Some(secret) = secret else {
        return Err(Credential::NoSecret);
    };
    let data = secret.data.clone().unwrap_or_default();
    let Some(bytes) = data.get(key) else {
        return Err(Credential::NoKey(data.keys().cloned().collect()));
    };
    String::from_utf8(bytes.0.clone()).map_err(|_| Credential::Refused {
        server: None,
        error: "it is not UTF-8 text".into(),
    })
}

/// Checks the kubeconfig (no connection): the checked kubeconfig, or why it is refused.
pub fn check(text: &str) -> Result<Checked, Credential> {
    credentials::check(text).map_err(|e| Credential::Refused {
        server: server_of(text),
        error: e.to_string(),
    })
}

/// The server a kubeconfig's current context names, if it parses that far (for status
/// only, when the kubeconfig is refused).
fn server_of(text: &str) -> Option<String> {
    let k = Kubeconfig::from_yaml(text).ok()?;
    let context = match &k.current_context {
        Some(name) => k.contexts.iter().find(|c| &c.name == name)?,
        None => k.contexts.first().filter(|_| k.contexts.len() == 1)?,
    };
    let cluster = &context.context.as_ref()?.cluster;
    let server = k
        .clusters
        .iter()
        .find(|c| &c.name == cluster)?
        .cluster
        .as_ref()?
        .server
        .clone()?;
    Some(redact(&server))
}

/// A server address without user information (`https://user:pass@host` → `https://host`).
pub fn redact(server: &str) -> String {
    let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    if scheme.is_empty() {
        rest.to_string()
    } else {
        format!("{scheme}://{rest}")
    }
}

/// Connects with the checked kubeconfig and asks what the credential may do.
pub async fn connect(checked: Checked) -> Credential {
    let server = redact(&checked.server);
    let mut config = match Config::from_custom_kubeconfig(checked.kubeconfig, &KubeConfigOptions::default()).await {
        Ok(c) => c,
        Err(e) => {
            return Credential::Refused {
                server: Some(server),
                error: format!("it cannot be used: {}", chain(&e)),
            };
        }
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.write_timeout = Some(READ_TIMEOUT);
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            return Credential::Refused {
                server: Some(server),
                error: format!("no client can be built from it: {}", chain(&e)),
            };
        }
    };
    let probe = tokio::time::timeout(PROBE_TIMEOUT, ask(&client))
        .await
        .unwrap_or_else(|_| Probe::Unreachable(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())));
    Credential::Checked { server, probe }
}

/// The version, then one review per resource and verb.
async fn ask(client: &Client) -> Probe {
    let version = match client.apiserver_version().await {
        Ok(info) => Some(info.git_version),
        // `/version` may be closed to this identity; the reviews still say what it may do.
        Err(e) => match classify(&e) {
            Failure::Forbidden(_) => None,
            Failure::Refused(why) => return Probe::Refused(why),
            Failure::Unreachable(why) => return Probe::Unreachable(why),
        },
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut answers = Vec::new();
    for (group, resource) in NEEDED {
        for verb in VERBS {
            match review(&api, group, resource, verb).await {
                Ok(allowed) => answers.push((group, resource, verb, allowed)),
                Err(e) => {
                    return match classify(&e) {
                        Failure::Refused(why) => Probe::Refused(why),
                        Failure::Forbidden(why) => Probe::CannotReview(why),
                        Failure::Unreachable(why) => Probe::Unreachable(why),
                    };
                }
            }
        }
    }
    Probe::Answered {
        version,
        missing: missing(&answers),
    }
}

/// Whether the credential may `verb` `resource` in every namespace.
async fn review(
    api: &Api<SelfSubjectAccessReview>,
    group: &str,
    resource: &str,
    verb: &str,
) -> Result<bool, kube::Error> {
    let ask = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_string()),
                resource: Some(resource.to_string()),
                verb: Some(verb.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api.create(&PostParams::default(), &ask).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The verbs refused, grouped by resource in the order asked.
pub fn missing(answers: &[(&str, &str, &str, bool)]) -> Vec<Missing> {
    let mut out: Vec<Missing> = Vec::new();
    for &(group, resource, verb, allowed) in answers {
        if allowed {
            continue;
        }
        let name = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        match out.iter_mut().find(|m| m.resource == name) {
            Some(m) => m.verbs.push(verb.to_string()),
            None => out.push(Missing {
                resource: name,
                verbs: vec![verb.to_string()],
            }),
        }
    }
    out
}

/// How a request to the remote API server failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 401: the credential is not accepted.
    Refused(String),
    /// 403.
    Forbidden(String),
    /// Anything else: no connection, a timeout, a 5xx; retried.
    Unreachable(String),
}

/// The reason kube gives a non-2xx answer whose body is not a Kubernetes `Status`.
const NOT_A_STATUS: &str = "Failed to parse error data";
/// The most of a remote's error message that status shows.
const MESSAGE_MAX: usize = 200;

/// Sorts an error of the remote API server (or of reaching it). What the remote answered is
/// quoted only when it is a Kubernetes `Status`, and shortened: the kubeconfig may name any
/// address, and status must not become a way to read what another server returns.
pub fn classify(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) => {
            let parsed = s.reason != NOT_A_STATUS;
            let text = match (parsed, s.reason.is_empty()) {
                (false, _) => s.code.to_string(),
                (true, true) => format!("{} {}", s.code, shorten(&s.message)),
                (true, false) => format!("{} {}", s.code, shorten(&s.reason)),
            };
            match s.code {
                401 => Failure::Refused(text),
                403 => Failure::Forbidden(text),
                code if parsed => Failure::Unreachable(format!("it answered {code}: {}", shorten(&s.message))),
                code => Failure::Unreachable(format!(
                    "it answered {code} with a body that is not a Kubernetes Status: is this a Kubernetes API server?"
                )),
            }
        }
        kube::Error::SerdeError(_) | kube::Error::FromUtf8(_) => {
            Failure::Unreachable("its answer is not a Kubernetes API server's".into())
        }
        other => Failure::Unreachable(chain(other)),
    }
}

/// At most [`MESSAGE_MAX`] characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// An error and its sources, each once: "client error (Connect): tcp connect error: …".
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    const TOKEN: &str = "s3cr3t-token-value";

    fn secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn kubeconfig(user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: b\ncontexts:\n- name: b\n  context: {{cluster: b, user: b}}\n\
             clusters:\n- name: b\n  cluster: {{server: 'https://u:p@127.0.0.1:7/x'}}\nusers:\n- name: b\n  user:\n{user}"
        )
    }

    #[test]
    fn the_secret_must_hold_the_key() {
        assert_eq!(kubeconfig_text(None, "kubeconfig"), Err(Credential::NoSecret));
        let s = secret(&[("config", "x"), ("other", "y")]);
        assert_eq!(
            kubeconfig_text(Some(&s), "kubeconfig"),
            Err(Credential::NoKey(vec!["config".into(), "other".into()]))
        );
        assert_eq!(kubeconfig_text(Some(&s), "config").as_deref(), Ok("x"));
        let mut binary = secret(&[]);
        binary.data = Some([("kubeconfig".to_string(), ByteString(vec![0xff, 0xfe]))].into());
        assert!(matches!(
            kubeconfig_text(Some(&binary), "kubeconfig"),
            Err(Credential::Refused { error, .. }) if error == "it is not UTF-8 text"
        ));
    }

    #[test]
    fn a_refused_kubeconfig_names_the_field_and_the_server_without_secrets() {
        let text = kubeconfig(&format!(
            "    token: {TOKEN}\n    exec: {{command: /bin/sh, apiVersion: client.authentication.k8s.io/v1}}\n"
        ));
        let Err(Credential::Refused { server, error }) = check(&text) else {
            panic!("refused")
        };
        assert_eq!(
            server.as_deref(),
            Some("https://127.0.0.1:7/x"),
            "without user information"
        );
        assert!(error.contains("`exec` is not allowed"), "{error}");
        assert!(!error.contains(TOKEN));
        let file = kubeconfig("    tokenFile: /var/run/secrets/token\n");
        let Err(Credential::Refused { error, .. }) = check(&file) else {
            panic!("refused")
        };
        assert!(error.contains("`tokenFile` is not allowed"), "{error}");
        assert!(check(&kubeconfig(&format!("    token: {TOKEN}\n"))).is_ok());
    }

    #[test]
    fn server_addresses_lose_user_information() {
        assert_eq!(redact("https://10.0.0.1:6443"), "https://10.0.0.1:6443");
        assert_eq!(redact("https://a:b@10.0.0.1:6443/p@x"), "https://10.0.0.1:6443/p@x");
        assert_eq!(redact("host:443"), "host:443");
    }

    #[test]
    fn refused_verbs_are_grouped_by_resource() {
        let answers = [
            ("", "services", "get", true),
            ("", "services", "list", true),
            ("discovery.k8s.io", "endpointslices", "list", false),
            ("discovery.k8s.io", "endpointslices", "watch", false),
            ("", "namespaces", "get", false),
        ];
        assert_eq!(
            missing(&answers),
            [
                Missing {
                    resource: "endpointslices.discovery.k8s.io".into(),
                    verbs: vec!["list".into(), "watch".into()]
                },
                Missing {
                    resource: "namespaces".into(),
                    verbs: vec!["get".into()]
                }
            ]
        );
        assert!(missing(&answers[..2]).is_empty());
    }

    #[test]
    fn errors_are_sorted_by_what_they_mean() {
        let api = |code: u16, reason: &str| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                message: "m".into(),
                ..Default::default()
            }))
        };
        assert_eq!(
            classify(&api(401, "Unauthorized")),
            Failure::Refused("401 Unauthorized".into())
        );
        assert_eq!(
            classify(&api(403, "Forbidden")),
            Failure::Forbidden("403 Forbidden".into())
        );
        assert_eq!(
            classify(&api(503, "ServiceUnavailable")),
            Failure::Unreachable("it answered 503: m".into())
        );
        // Another kind of server: its body is not quoted.
        let body = "<html>internal page with data</html>";
        let foreign = kube::Error::Api(Box::new(kube::core::Status::failure(body, NOT_A_STATUS).with_code(404)));
        let Failure::Unreachable(why) = classify(&foreign) else {
            panic!("unreachable")
        };
        assert!(!why.contains("internal page") && why.contains("404"), "{why}");
        let json = serde_json::from_str::<u8>("\"private value\"").unwrap_err();
        let Failure::Unreachable(why) = classify(&kube::Error::SerdeError(json)) else {
            panic!("unreachable")
        };
        assert!(!why.contains("private"), "{why}");
        let long = "x".repeat(500);
        let long = kube::Error::Api(Box::new(
            kube::core::Status::failure(&long, "InternalError").with_code(500),
        ));
        let Failure::Unreachable(why) = classify(&long) else {
            panic!("unreachable")
        };
        assert!(why.chars().count() < 250, "{why}");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = kube::Error::ReadEvents(io);
        assert_eq!(
            classify(&e),
            Failure::Unreachable("Error reading events stream: connection refused".into())
        );
    }
}
