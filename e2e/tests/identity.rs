//! Mesh identity on the test bed (`docs/security.md`, "Identity"): the operator keeps a CA
//! per mesh and a trust bundle in each of its namespaces; a bad plug-in CA stalls the spec
//! and changes nothing; the control plane's TLS port signs certificates only for tokens of
//! the mesh's workloads (checked with the real TokenReview API), and serves xDS over mTLS
//! to clients whose node metadata matches their certificate.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use weft::api::MeshInstall;
use weft::identity::spiffe::WorkloadId;
use weft::identity::{ca, mesh_ca, rotation};
use weft_e2e::grpc_clients::{call, echo_service, grpc_go_client, script, wait_reached};
use weft_e2e::identity::{
    Material, agent_once, label_namespace, mtls_handshake, secure_control_plane, service_account, token_file,
};
use weft_e2e::operator::{Operator, SERIAL, TIMEOUT, delete_and_wait, install_crds, mesh, wait_ready, wait_stalled};
use weft_e2e::testhost::TestHost;
use weft_e2e::{Bed, wait_for};

/// The echo backend's address in the test host.
const BACKEND: &str = "198.51.100.30";

/// Whether ServiceAccount `sa` of `ns` may `get` Secret `name` in `secret_ns` (asked of the
/// API server's own authorizer).
async fn may_get_secret(bed: &Bed, ns: &str, sa: &str, secret_ns: &str, name: &str) -> bool {
    let api: Api<SubjectAccessReview> = Api::all(bed.client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{ns}:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(secret_ns.into()),
                verb: Some("get".into()),
                resource: Some("secrets".into()),
                name: Some(name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

fn secret_text(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_operator_keeps_a_ca_per_mesh_and_a_bundle_in_each_of_its_namespaces() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "identity", &[]);
    let mesh_ns = bed.namespace("idmesh").await;
    let app = bed.namespace("idapp").await;
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let name = "idm";
    api.create(&PostParams::default(), &mesh(name, &mesh_ns.name, json!({})))
        .await
        .expect("create MeshInstall");
    let mi = wait_ready(&api, name, &op).await;
    let rev = mi
        .status
        .as_ref()
        .and_then(|s| s.active_revision.clone())
        .expect("an active revision");

    // The root and the issuer, in the mesh namespace; status shows the root.
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), &mesh_ns.name);
    let root = secrets.get(mesh_ca::ROOT_SECRET).await.expect("the root Secret");
    let issuer = secrets.get(mesh_ca::ISSUER_SECRET).await.expect("the issuer Secret");
    assert!(
        issuer.data.as_ref().is_some_and(|d| !d.contains_key(mesh_ca::ROOT_KEY)),
        "the issuer Secret never holds the root key"
    );
    let root_pem = secret_text(&root, ca::ROOT_CERT);
    let fingerprint = ca::first_facts(&root_pem).expect("a root certificate").fingerprint;
    let security = wait_for("status.security to show the root", TIMEOUT, || async {
        let mi = api.get(name).await.map_err(|e| e.to_string())?;
        match mi.status.and_then(|s| s.security) {
            Some(s) if !s.serving_revisions.is_empty() => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(security.trust_domain, "cluster.local");
    assert_eq!(security.roots.len(), 1);
    assert_eq!(security.roots[0].fingerprint, fingerprint);
    assert!(security.issuer_not_after.is_some());
    assert_eq!(security.serving_revisions, vec![rev.clone()]);

    // The control plane may read the issuer, by name, and never the root.
    let cp = format!("weft-cp-{rev}");
    assert!(may_get_secret(&bed, &mesh_ns.name, &cp, &mesh_ns.name, mesh_ca::ISSUER_SECRET).await);
    assert!(!may_get_secret(&bed, &mesh_ns.name, &cp, &mesh_ns.name, mesh_ca::ROOT_SECRET).await);
    assert!(!may_get_secret(&bed, &mesh_ns.name, &cp, &mesh_ns.name, "anything-else").await);

    // A bundle in the mesh namespace, and in a namespace once it joins the mesh; gone when
    // it leaves.
    let bundle = |ns: &str| {
        let api: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
        async move { api.get_opt(mesh_ca::BUNDLE_CONFIG_MAP).await.map_err(|e| e.to_string()) }
    };
    let root_of = |cm: Option<ConfigMap>| cm.and_then(|c| c.data).and_then(|d| d.get(ca::ROOT_CERT).cloned());
    wait_for("the bundle in the mesh namespace", TIMEOUT, || async {
        match root_of(bundle(&mesh_ns.name).await?) {
            Some(r) if r == root_pem => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        bundle(&app.name).await.unwrap().is_none(),
        "not in the mesh yet: no bundle"
    );
    label_namespace(&bed, &app.name, Some(&rev)).await;
    wait_for("the bundle in a namespace that joined", TIMEOUT, || async {
        match root_of(bundle(&app.name).await?) {
            Some(r) if r == root_pem => Ok(()),
            other => Err(format!("{other:?}\noperator log:\n{}", op.log_tail())),
        }
    })
    .await;
    label_namespace(&bed, &app.name, None).await;
    wait_for("the bundle to leave with the namespace", TIMEOUT, || async {
        match bundle(&app.name).await? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;

    // A plug-in CA whose key is not its certificate's: Stalled, nothing changes.
    let other_root = ca::new_root("cluster.local", 0, std::time::SystemTime::now()).unwrap();
    let a = ca::new_issuer(&other_root, "cluster.local", std::time::SystemTime::now()).unwrap();
    let b = ca::new_issuer(&other_root, "cluster.local", std::time::SystemTime::now()).unwrap();
    let mut data = mesh_ca::issuer_data(&a).0;
    data.insert(ca::CA_KEY.into(), b.issuer.key_pem.clone().into_bytes());
    let plugin = Secret {
        metadata: ObjectMeta {
            name: Some("cacerts".into()),
            ..Default::default()
        },
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &plugin)
        .await
        .expect("create the plug-in Secret");
    let patch = json!({"spec": {"security": {"ca": {"secretRef": {"name": "cacerts"}}}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("point the mesh at the plug-in CA");
    let stalled = wait_stalled(&api, name, "InvalidCA").await;
    assert!(
        stalled.contains("cacerts") && stalled.contains("ca-key.pem is not the private key of ca-cert.pem"),
        "{stalled}"
    );
    assert!(!stalled.contains("PRIVATE KEY"));
    let after = secrets.get(mesh_ca::ISSUER_SECRET).await.unwrap();
    assert_eq!(after.data, issuer.data, "the running mesh keeps its issuer");
    assert!(
        !op.log_text().contains("PRIVATE KEY"),
        "no key material in the operator's log"
    );

    delete_and_wait(&bed, name).await;
}

// ---- The control plane's TLS port, with `weft agent` ----

#[tokio::test]
async fn the_certificate_service_signs_only_for_the_mesh_and_its_callers_identity() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let mesh_ns = bed.namespace("idcp").await;
    let shop = bed.namespace("idshop").await;
    let outside = bed.namespace("idout").await;
    let revision = "id-test";
    label_namespace(&bed, &shop.name, Some(revision)).await;
    for (ns, sa) in [(&shop.name, "cart"), (&outside.name, "intruder")] {
        service_account(&bed, ns, sa).await;
    }

    // The issuer Secret, as the operator would write it.
    let now = std::time::SystemTime::now();
    let root = ca::new_root("cluster.local", 0, now).unwrap();
    let signing = ca::new_issuer(&root, "cluster.local", now).unwrap();
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), &mesh_ns.name);
    let issuer = weft_e2e::identity::issuer_secret(&signing);
    secrets
        .create(&PostParams::default(), &issuer)
        .await
        .expect("create the issuer");

    let dir = bed.kubeconfig.parent().unwrap().join(format!("identity-{}", shop.name));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("root-cert.pem");
    std::fs::write(&ca_file, &root.cert_pem).unwrap();
    // The control plane listens on the host side of a test host, where the grpc-go client
    // runs; the agent reaches it there too.
    let host = TestHost::create();
    host.add_address(BACKEND);
    let cp = secure_control_plane(&bed, &dir, revision, &mesh_ns.name, &["--workload-cert-ttl", "10m"]);
    cp.wait_ready().await;
    let (address, monitoring, log) = (cp.address.clone(), cp.monitoring, cp.log.clone());
    let meta = BTreeMap::from([
        ("NAMESPACE", shop.name.as_str()),
        ("REVISION", revision),
        ("ROLE", "proxyless"),
    ]);

    // A mesh workload's token: a certificate for exactly its identity, and the files.
    let out = dir.join("cart");
    let token = token_file(&bed, &dir, &shop.name, "cart", "weft-ca");
    agent_once(&address, None, &token, &ca_file, &out, &meta).expect("the agent gets a certificate");
    let chain = std::fs::read_to_string(out.join("cert-chain.pem")).unwrap();
    let leaf = ca::certificates(&chain).unwrap().remove(0);
    assert_eq!(
        WorkloadId::of_certificate(&leaf).map(|i| i.uri()),
        Some(format!("spiffe://cluster.local/ns/{}/sa/cart", shop.name))
    );
    let facts = ca::facts(&leaf).unwrap();
    assert!(
        facts.not_after - facts.not_before <= 600 + 300,
        "the TTL the control plane was given"
    );
    let boot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("bootstrap.json")).unwrap()).unwrap();
    assert_eq!(boot["xds_servers"][0]["channel_creds"][0]["type"], "tls");
    assert_eq!(
        std::fs::read_to_string(out.join("root-cert.pem")).unwrap(),
        root.cert_pem
    );

    // A token for another audience proves nothing; a workload outside the mesh gets nothing.
    let wrong_audience = token_file(&bed, &dir, &shop.name, "cart", "somebody-else");
    let refused = agent_once(&address, None, &wrong_audience, &ca_file, &dir.join("wrong"), &meta).unwrap_err();
    assert!(refused.contains("Unauthenticated"), "{refused}");
    let intruder = token_file(&bed, &dir, &outside.name, "intruder", "weft-ca");
    let refused = agent_once(&address, None, &intruder, &ca_file, &dir.join("intruder"), &meta).unwrap_err();
    assert!(
        refused.contains("PermissionDenied") && refused.contains(&outside.name),
        "{refused}"
    );
    let (_, metrics) = weft_e2e::http_get(monitoring, "/metrics").unwrap();
    for result in ["signed", "unauthenticated", "permission_denied"] {
        assert!(
            metrics.contains(&format!("weft_ca_requests_total{{result=\"{result}\"}} 1")),
            "{result} counted once: {metrics}"
        );
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    let token_text = std::fs::read_to_string(&token).unwrap();
    assert!(!logged.contains(token_text.trim()), "tokens are never logged");

    // grpc-go, with the agent's bootstrap: xDS over mTLS, then calls to a real backend.
    let (_backend, target) = echo_service(&bed, &host, &shop.name, BACKEND).await;
    let go = grpc_go_client().display().to_string();
    let boot = out.join("bootstrap.json").display().to_string();
    let mut client = host.spawn(&go, &[&boot, &target]);
    wait_reached(&mut client, &["a"], "grpc-go to reach the backend with xDS over mTLS").await;
    // grpcio (gRPC C-core) takes the same bootstrap: `tls` channel credentials (gRFC A65).
    let mut python = host.spawn("python3", &[&script("client.py"), &boot, &target]);
    wait_reached(&mut python, &["a"], "grpcio to reach the backend with xDS over mTLS").await;
    let tls_streams = metric(monitoring, "weft_xds_streams{");
    assert!(tls_streams >= 1.0, "the client's ADS stream is open");

    // The same certificate with a forged namespace claim: refused, and counted.
    let forged_meta = BTreeMap::from([
        ("NAMESPACE", outside.name.as_str()),
        ("REVISION", revision),
        ("ROLE", "proxyless"),
    ]);
    let forged = dir.join("forged");
    agent_once(&address, None, &token, &ca_file, &forged, &forged_meta)
        .expect("the certificate is still the caller's own");
    let forged_boot = forged.join("bootstrap.json").display().to_string();
    let mut impostor = host.spawn(&go, &[&forged_boot, &target]);
    wait_for("the forged namespace claim to be refused", TIMEOUT, || {
        let calls = call(&mut impostor, 3);
        let refused = metric(monitoring, "weft_xds_refusals_total{reason=\"claim_mismatch\"}");
        async move {
            if calls.errors == 3 && refused >= 1.0 {
                Ok(())
            } else {
                Err(format!(
                    "calls {:?} errors {} ({}), claim_mismatch refusals {refused}",
                    calls.counts, calls.errors, calls.last_error
                ))
            }
        }
    })
    .await;
    // The honest client keeps working beside it.
    assert_eq!(call(&mut client, 10).errors, 0);
}

/// A control-plane metric, summed over its series that start with `series`.
fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = weft_e2e::http_get(port, "/metrics").expect("monitoring port");
    weft_e2e::operator::sum_metric(&body, series)
}

/// The CA is the mesh's, not a revision's: across a canary upgrade both revisions sign
/// with the same issuer, workloads of each trust the other's, and a client connected to
/// the old revision stays connected while new ones connect to the new.
#[tokio::test]
async fn a_canary_upgrade_keeps_every_client_connected_and_trusting() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "identity-canary", &[]);
    let mesh_ns = bed.namespace("idcmesh").await;
    let stable = bed.namespace("idcstable").await;
    let canary = bed.namespace("idccanary").await;
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let name = "idc";
    let spec = json!({"updateStrategy": {"type": "RevisionBased"}});
    api.create(&PostParams::default(), &mesh(name, &mesh_ns.name, spec))
        .await
        .expect("create MeshInstall");
    let old = wait_ready(&api, name, &op)
        .await
        .status
        .and_then(|s| s.active_revision)
        .expect("an active revision");
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), &mesh_ns.name);
    let issuer_before = secrets.get(mesh_ca::ISSUER_SECRET).await.expect("the issuer").data;

    let dir = bed
        .kubeconfig
        .parent()
        .unwrap()
        .join(format!("identity-{}", canary.name));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("root-cert.pem");
    let host = TestHost::create();
    host.add_address("198.51.100.32");
    let (_backend, target) = echo_service(&bed, &host, &stable.name, "198.51.100.32").await;
    let go = grpc_go_client().display().to_string();

    // A workload of the old revision, connected over mTLS.
    label_namespace(&bed, &stable.name, Some(&old)).await;
    service_account(&bed, &stable.name, "old").await;
    let bundle_text = wait_for("the bundle in the stable namespace", TIMEOUT, || async {
        let cms: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &stable.name);
        cms.get_opt(mesh_ca::BUNDLE_CONFIG_MAP)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|c| c.data?.remove(ca::ROOT_CERT))
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    std::fs::write(&bundle, &bundle_text).unwrap();
    let cp_old = secure_control_plane(&bed, &dir, &old, &mesh_ns.name, &[]);
    let old_address = cp_old.address.clone();
    let meta = |ns: &str, rev: &str| BTreeMap::from([("NAMESPACE", ns.to_string()), ("REVISION", rev.to_string())]);
    let agent = |address: &str, ns: &str, sa: &str, rev: &str| {
        let out = dir.join(sa);
        let token = token_file(&bed, &dir, ns, sa, "weft-ca");
        let m = meta(ns, rev);
        let m: BTreeMap<&str, &str> = m.iter().map(|(k, v)| (*k, v.as_str())).collect();
        wait_for_sync(&format!("a certificate for {ns}/{sa}"), || {
            agent_once(address, None, &token, &bundle, &out, &m)
        });
        out
    };
    let old_files = agent(&old_address, &stable.name, "old", &old);
    let old_boot = old_files.join("bootstrap.json").display().to_string();
    let mut steady = host.spawn(&go, &[&old_boot, &target]);
    wait_reached(&mut steady, &["a"], "a client of the old revision to connect").await;

    // The canary: a second revision, signing with the same issuer.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"version": "1.1.0"}})),
    )
    .await
    .expect("upgrade");
    let new = wait_for("the canary revision", TIMEOUT, || async {
        let mi = api.get(name).await.map_err(|e| e.to_string())?;
        let s = mi.status.unwrap_or_default();
        match s.revisions.iter().find(|r| r.name != old && r.ready) {
            Some(r) => Ok(r.name.clone()),
            None => Err(format!("{:?}", s.revisions)),
        }
    })
    .await;
    let issuer_after = secrets.get(mesh_ca::ISSUER_SECRET).await.expect("the issuer").data;
    assert_eq!(
        issuer_after, issuer_before,
        "a canary never changes who signs or what is trusted"
    );
    label_namespace(&bed, &canary.name, Some(&new)).await;
    service_account(&bed, &canary.name, "new").await;
    let cp_new = secure_control_plane(&bed, &dir, &new, &mesh_ns.name, &[]);
    let new_address = cp_new.address.clone();
    let new_files = agent(&new_address, &canary.name, "new", &new);

    // Each trusts the other: handshakes both ways with their files.
    let (o, n) = (Material::read(&old_files).unwrap(), Material::read(&new_files).unwrap());
    let id = |ns: &str, sa: &str| format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    mtls_handshake(&o, &n, &id(&canary.name, "new")).expect("old calls new");
    mtls_handshake(&n, &o, &id(&stable.name, "old")).expect("new calls old");
    // A new client of the canary connects to it; the old one never dropped.
    let new_boot = new_files.join("bootstrap.json").display().to_string();
    let mut fresh = host.spawn(&go, &[&new_boot, &target]);
    wait_reached(&mut fresh, &["a"], "a client of the canary to connect to it").await;
    assert_eq!(
        call(&mut steady, 20).errors,
        0,
        "the old revision's client kept working"
    );
    delete_and_wait(&bed, name).await;
}

/// Retries `attempt` (a blocking call) until it succeeds or [`TIMEOUT`] passes.
fn wait_for_sync(what: &str, mut attempt: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match attempt() {
            Ok(()) => return,
            Err(e) if std::time::Instant::now() >= deadline => panic!("timed out waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// Two meshes keep their own roots; one trusts the other's when it lists them
/// (`trustedRoots`), and a ConfigMap that holds no usable root stalls it, changing nothing.
#[tokio::test]
async fn a_mesh_trusts_another_meshs_roots_only_when_it_lists_them() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "identity-trust", &[]);
    let (a_ns, b_ns) = (bed.namespace("idta").await, bed.namespace("idtb").await);
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    for (name, ns) in [("idta", &a_ns.name), ("idtb", &b_ns.name)] {
        api.create(&PostParams::default(), &mesh(name, ns, json!({})))
            .await
            .expect("create MeshInstall");
        wait_ready(&api, name, &op).await;
    }
    let bundle = |ns: String| {
        let cms: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &ns);
        async move {
            cms.get_opt(mesh_ca::BUNDLE_CONFIG_MAP)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|c| c.data?.remove(ca::ROOT_CERT))
                .ok_or_else(|| format!("no bundle in {ns} yet"))
        }
    };
    let issuer = |ns: String| {
        let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), &ns);
        async move {
            let s = secrets.get(mesh_ca::ISSUER_SECRET).await.expect("the issuer");
            let data = s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
            ca::plugin_ca(&data, std::time::SystemTime::now()).expect("an issuer that signs")
        }
    };
    let a_bundle = wait_for("mesh A's bundle", TIMEOUT, || bundle(a_ns.name.clone())).await;
    let b_bundle = wait_for("mesh B's bundle", TIMEOUT, || bundle(b_ns.name.clone())).await;
    let (a_issuer, b_issuer) = (issuer(a_ns.name.clone()).await, issuer(b_ns.name.clone()).await);
    assert!(
        !rotation::chains_to(&a_issuer, &b_bundle, std::time::SystemTime::now()),
        "different roots: B does not trust A"
    );

    // B lists A's roots (a copy of A's bundle in B's namespace).
    let cms: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &b_ns.name);
    let roots = |text: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": "mesh-a-roots"}, "data": {"root-cert.pem": text}})).unwrap()
    };
    cms.create(&PostParams::default(), &roots(&a_bundle))
        .await
        .expect("create the ConfigMap");
    let trust = json!({"spec": {"security": {"trustedRoots": [{"configMapRef": {"name": "mesh-a-roots"}}]}}});
    api.patch("idtb", &PatchParams::default(), &Patch::Merge(&trust))
        .await
        .expect("trust A's roots");
    let trusting = wait_for("B's bundle to hold A's root too", TIMEOUT, || async {
        let b = bundle(b_ns.name.clone()).await?;
        if ca::certificates(&b).map_err(|e| e.to_string())?.len() == 2 {
            Ok(b)
        } else {
            Err(format!(
                "{} roots\noperator log:\n{}",
                ca::certificates(&b).map_or(0, |c| c.len()),
                op.log_tail()
            ))
        }
    })
    .await;
    let now = std::time::SystemTime::now();
    assert!(
        rotation::chains_to(&a_issuer, &trusting, now),
        "B's workloads now trust A's"
    );
    assert!(rotation::chains_to(&b_issuer, &trusting, now), "and still their own");
    assert!(
        !rotation::chains_to(&b_issuer, &bundle(a_ns.name.clone()).await.unwrap(), now),
        "trust goes one way: A did not list B"
    );
    let a_root = ca::first_facts(&a_bundle).unwrap().fingerprint;
    let shown = api.get("idtb").await.unwrap().status.and_then(|s| s.security).unwrap();
    assert_eq!(
        shown
            .trusted_roots
            .iter()
            .map(|r| r.fingerprint.clone())
            .collect::<Vec<_>>(),
        vec![a_root]
    );
    assert_eq!(shown.roots.len(), 1, "B's own roots are still one");

    // The ConfigMap no longer holds a root: Stalled, and the bundles stay as they were.
    cms.replace("mesh-a-roots", &PostParams::default(), &roots("not a certificate"))
        .await
        .expect("break the ConfigMap");
    let stalled = wait_stalled(&api, "idtb", "InvalidCA").await;
    assert!(
        stalled.contains("security.trustedRoots[0]") && stalled.contains("mesh-a-roots"),
        "{stalled}"
    );
    assert_eq!(
        bundle(b_ns.name.clone()).await.unwrap(),
        trusting,
        "the running mesh keeps its bundles"
    );
    for name in ["idta", "idtb"] {
        delete_and_wait(&bed, name).await;
    }
}

/// Clusters of one mesh share a root: `weft ca` makes one offline and an intermediate per
/// cluster, each applied as that cluster's plug-in CA; a workload certificate issued in
/// cluster B is trusted by cluster A's workloads (with A's bundle), and the reverse.
#[tokio::test]
async fn two_clusters_with_intermediates_of_one_root_trust_each_others_workloads() {
    let _serial = SERIAL.lock().await;
    let a = Bed::connect().await;
    let (_b_cluster, b) = weft_e2e::OwnCluster::up("weft-id-b").await;
    let dir = a.kubeconfig.parent().unwrap().join("identity-two-clusters");
    std::fs::create_dir_all(&dir).unwrap();
    let weft = |args: &[&str]| {
        let out = std::process::Command::new(weft_e2e::weft_bin())
            .args(args)
            .output()
            .expect("run weft");
        assert!(
            out.status.success(),
            "weft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    weft(&["ca", "root", "--out", root.to_str().unwrap()]);
    let _host = TestHost::create();
    let mut files = Vec::new();
    for (bed, cluster) in [(&a, "east"), (&b, "west")] {
        install_crds(bed);
        let op = Operator::start(bed, &format!("identity-{cluster}"), &[]);
        let mesh_ns = bed.namespace(&format!("id2{cluster}")).await;
        let app = bed.namespace(&format!("id2{cluster}app")).await;
        let secret = weft(&[
            "ca",
            "intermediate",
            "--root",
            root.to_str().unwrap(),
            "--cluster",
            cluster,
            "--namespace",
            &mesh_ns.name,
        ]);
        let file = dir.join(format!("cacerts-{cluster}.yaml"));
        std::fs::write(&file, secret).unwrap();
        bed.kubectl(&["apply", "-f", file.to_str().unwrap()])
            .expect("apply the printed Secret");
        let api: Api<MeshInstall> = Api::all(bed.client.clone());
        let name = format!("id2{cluster}");
        let spec =
            json!({"security": {"ca": {"secretRef": {"name": "cacerts"}}}, "meshConfig": {"clusterName": cluster}});
        api.create(&PostParams::default(), &mesh(&name, &mesh_ns.name, spec))
            .await
            .expect("create MeshInstall");
        let rev = wait_ready(&api, &name, &op)
            .await
            .status
            .and_then(|s| s.active_revision)
            .expect("an active revision");
        label_namespace(bed, &app.name, Some(&rev)).await;
        service_account(bed, &app.name, "w").await;
        let bundle = dir.join(format!("bundle-{cluster}.pem"));
        let cms: Api<ConfigMap> = Api::namespaced(bed.client.clone(), &app.name);
        let text = wait_for(&format!("the bundle in {cluster}"), TIMEOUT, || async {
            cms.get_opt(mesh_ca::BUNDLE_CONFIG_MAP)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|c| c.data?.remove(ca::ROOT_CERT))
                .ok_or_else(|| "not yet".to_string())
        })
        .await;
        std::fs::write(&bundle, text).unwrap();
        let cp = secure_control_plane(bed, &dir, &rev, &mesh_ns.name, &[]);
        cp.wait_ready().await;
        let out = dir.join(format!("w-{cluster}"));
        let token = token_file(bed, &dir, &app.name, "w", "weft-ca");
        let meta = BTreeMap::from([("NAMESPACE", app.name.as_str())]);
        agent_once(&cp.address, None, &token, &bundle, &out, &meta)
            .unwrap_or_else(|e| panic!("a certificate in {cluster}: {e}"));
        files.push((Material::read(&out).expect("the agent's files"), app.name.clone()));
        delete_and_wait(bed, &name).await;
        drop(op);
    }
    let id = |ns: &str| format!("spiffe://cluster.local/ns/{ns}/sa/w");
    let ((east, east_ns), (west, west_ns)) = (&files[0], &files[1]);
    mtls_handshake(east, west, &id(west_ns)).expect("east calls west: west's certificate verifies with east's bundle");
    mtls_handshake(west, east, &id(east_ns)).expect("west calls east, and the reverse");
    // A workload of a mesh with another root is trusted by neither.
    let stranger_root = ca::new_root("cluster.local", 0, std::time::SystemTime::now()).unwrap();
    assert!(
        !rotation::chains_to(
            &ca::new_issuer(&stranger_root, "cluster.local", std::time::SystemTime::now()).unwrap(),
            &std::fs::read_to_string(dir.join("bundle-east.pem")).unwrap(),
            std::time::SystemTime::now()
        ),
        "another root is not in east's bundle"
    );
}
