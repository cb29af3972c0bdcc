//! `weft remote-secret` against the test bed, which stands in for the remote cluster (and,
//! for `kubectl apply`, the primary): what it creates, what the printed credential may do,
//! and that it never prints the caller's own.

use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams};
use kube::config::KubeConfigOptions;
use kube::{Api, Client, Config, ResourceExt};
use serde_json::Value;
use weft_e2e::Bed;
use weft_e2e::operator::install_crds;

/// Runs `weft remote-secret` with the test bed's admin kubeconfig; its standard output.
fn remote_secret(bed: &Bed, args: &[&str]) -> String {
    weft_e2e::multicluster::remote_secret(&bed.kubeconfig, args)
}

/// The YAML documents of an output.
fn documents(text: &str) -> Vec<Value> {
    text.split("---\n")
        .map(|d| d.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n"))
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(&d).expect("a YAML document"))
        .collect()
}

/// Values of the secret fields of the admin kubeconfig (its client key, a token).
fn admin_secrets(bed: &Bed) -> Vec<String> {
    let text = std::fs::read_to_string(&bed.kubeconfig).expect("kubeconfig");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            matches!(k, "client-key-data" | "token").then(|| v.to_string())
        })
        .collect()
}

#[tokio::test]
async fn remote_secret_creates_a_read_only_identity_and_prints_only_its_credential() {
    let bed = Bed::connect().await;
    install_crds(&bed);
    let args = [
        "--name",
        "east",
        "--mesh",
        "rs-mesh",
        "--mesh-namespace",
        "weft-rs",
        "--namespace",
        "rs-remote",
        "--network",
        "net-east",
    ];
    let first = remote_secret(&bed, &args);
    for secret in admin_secrets(&bed) {
        // Any 32 characters of the caller's credentials would be a leak.
        assert!(
            !first.contains(&secret[..32.min(secret.len())]),
            "the caller's credential is printed"
        );
    }
    let docs = documents(&first);
    assert_eq!(docs.len(), 2, "a Secret and a RemoteCluster:\n{first}");
    assert_eq!(
        (docs[0]["kind"].as_str(), docs[1]["kind"].as_str()),
        (Some("Secret"), Some("RemoteCluster"))
    );
    assert_eq!(docs[1]["spec"]["network"], "net-east");
    let kubeconfig = docs[0]["stringData"]["kubeconfig"].as_str().expect("kubeconfig");
    let checked = weft::credentials::check(kubeconfig).expect("the printed kubeconfig passes the operator's check");

    // What the printed credential may do: read what discovery needs, and nothing else.
    let config = Config::from_custom_kubeconfig(checked.kubeconfig.clone(), &KubeConfigOptions::default())
        .await
        .expect("config");
    let remote = Client::try_from(config).expect("client");
    let lp = ListParams::default().limit(1);
    Api::<Service>::all(remote.clone())
        .list(&lp)
        .await
        .expect("may list Services");
    Api::<EndpointSlice>::all(remote.clone())
        .list(&lp)
        .await
        .expect("may list EndpointSlices");
    Api::<Namespace>::all(remote.clone())
        .list(&lp)
        .await
        .expect("may list Namespaces");
    match Api::<Secret>::all(remote.clone()).list(&lp).await {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("reading Secrets must be forbidden, got {other:?}"),
    }

    // Idempotent: run again, same identity, same token.
    let sa: Api<ServiceAccount> = Api::namespaced(bed.client.clone(), "rs-remote");
    let uid = sa.get("weft-remote-rs-mesh").await.expect("ServiceAccount").uid();
    let second = remote_secret(&bed, &args);
    assert_eq!(sa.get("weft-remote-rs-mesh").await.expect("ServiceAccount").uid(), uid);
    assert_eq!(
        documents(&second)[0]["stringData"],
        docs[0]["stringData"],
        "the same token"
    );

    // Ready for `kubectl apply -f -` on the primary.
    let _ = bed.kubectl(&["create", "namespace", "weft-rs"]);
    weft_e2e::remote::apply_yaml(&bed, &first);

    // --dry-run creates nothing.
    let dry = remote_secret(
        &bed,
        &[
            "--name",
            "west",
            "--mesh",
            "rs-dry",
            "--mesh-namespace",
            "x",
            "--dry-run",
        ],
    );
    assert!(dry.contains("weft-remote-rs-dry"), "{dry}");
    let all: Api<ServiceAccount> = Api::namespaced(bed.client.clone(), "weft-system");
    assert!(
        all.get_opt("weft-remote-rs-dry").await.expect("read").is_none(),
        "nothing created"
    );

    for ns in ["rs-remote", "weft-rs"] {
        let _ = Api::<Namespace>::all(bed.client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
    let _ = bed.kubectl(&["delete", "clusterrole,clusterrolebinding", "weft-remote-rs-mesh"]);
}
