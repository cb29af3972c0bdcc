//! Root rotation on the test bed (`docs/security.md`, "Rotating the root"): raising
//! `rootRotation` moves a mesh to a new root with no failed handshake and no failed call.
//!
//! The parts are real: the operator, the control plane's certificate service and ADS over
//! mTLS, `weft agent` renewing on a 1-minute TTL and following its bundle file, and grpc-go
//! clients. Two stand-ins, since the bed has no kubelet: the test copies the namespace's
//! `weft-root-ca` ConfigMap into the agents' `--ca-file` (as a ConfigMap volume would), and
//! the data plane between two workloads is a rustls handshake with the agents' files (the
//! mTLS data plane of gRPC and Envoy is the next issue's).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use weft::api::MeshInstall;
use weft::api::security::SecurityStatus;
use weft::identity::{ca, mesh_ca};
use weft_e2e::grpc_clients::{call, echo_service, grpc_go_client, wait_reached};
use weft_e2e::identity::{
    Material, Process, label_namespace, mtls_handshake, secure_control_plane, service_account, token_file,
};
use weft_e2e::operator::{Operator, SERIAL, TIMEOUT, delete_and_wait, install_crds, mesh, mesh_events, wait_ready};
use weft_e2e::testhost::TestHost;
use weft_e2e::{Bed, wait_for, weft_bin};

/// The echo backend's address in the test host.
const BACKEND: &str = "198.51.100.31";
/// The phases the test sees, in order.
const PHASES: [&str; 4] = ["before", "Distributing", "Retiring", "after"];

/// What the handshake loop saw, per phase.
#[derive(Debug, Default)]
struct Handshakes {
    ok: [u32; 4],
    failed: Vec<String>,
    torn_reads: u32,
}

/// Handshakes between two workloads, with their agents' current files, until `stop`.
fn handshake_loop(
    client_dir: &Path,
    server_dir: &Path,
    server_id: String,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Handshakes>>,
) -> std::thread::JoinHandle<()> {
    let (client_dir, server_dir) = (client_dir.to_path_buf(), server_dir.to_path_buf());
    std::thread::spawn(move || {
        let (mut client, mut server) = (None, None);
        while !stop.load(Ordering::Relaxed) {
            // As a file watcher: keep the last good material through a torn read.
            for (dir, slot) in [(&client_dir, &mut client), (&server_dir, &mut server)] {
                match Material::read(dir) {
                    Ok(m) => *slot = Some(m),
                    Err(e) if e.starts_with("torn read") => seen.lock().unwrap().torn_reads += 1,
                    Err(_) => {}
                }
            }
            if let (Some(c), Some(s)) = (&client, &server) {
                let at = phase.load(Ordering::Relaxed);
                let result = mtls_handshake(c, s, &server_id);
                let mut seen = seen.lock().unwrap();
                match result {
                    Ok(()) => seen.ok[at] += 1,
                    Err(e) => seen.failed.push(format!("{}: {e}", PHASES[at])),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Copies the bundle of `ns` into `file` whenever it changes, until `stop` (the kubelet's
/// part for a ConfigMap volume).
fn copy_bundle(bed: &Bed, ns: &str, file: &Path, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let api: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    let file = file.to_path_buf();
    tokio::spawn(async move {
        let mut last = String::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(Some(cm)) = api.get_opt(mesh_ca::BUNDLE_CONFIG_MAP).await {
                let roots = cm.data.and_then(|d| d.get(ca::ROOT_CERT).cloned()).unwrap_or_default();
                if roots != last {
                    let tmp = file.with_extension("tmp");
                    std::fs::write(&tmp, &roots).unwrap();
                    std::fs::rename(&tmp, &file).unwrap();
                    last = roots;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Runs `weft agent` (renewing, following its bundle every second) for `sa` of `ns`.
fn agent(bed: &Bed, dir: &Path, address: &str, ns: &str, sa: &str, revision: &str, ca_file: &Path) -> Process {
    let token = token_file(bed, dir, ns, sa, "weft-ca");
    let log = std::fs::File::create(dir.join(format!("agent-{sa}.log"))).unwrap();
    Process(
        Command::new(weft_bin())
            .args(["agent", "--control-plane", address, "--node-id", sa])
            .args(["--bundle-refresh-seconds", "1"])
            .arg("--token-file")
            .arg(&token)
            .arg("--ca-file")
            .arg(ca_file)
            .arg("--out")
            .arg(dir.join(sa))
            .args(["--metadata", &format!("NAMESPACE={ns}")])
            .args(["--metadata", &format!("REVISION={revision}")])
            .args(["--metadata", "ROLE=proxyless"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weft agent"),
    )
}

async fn security(api: &Api<MeshInstall>, name: &str) -> Result<SecurityStatus, String> {
    let mi = api.get(name).await.map_err(|e| e.to_string())?;
    mi.status
        .and_then(|s| s.security)
        .ok_or_else(|| "no status.security".to_string())
}

#[tokio::test]
async fn raising_root_rotation_moves_the_mesh_to_a_new_root_without_a_failed_handshake() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "rotation", &["--bundle-propagation-seconds", "20"]);
    let mesh_ns = bed.namespace("rotmesh").await;
    let app = bed.namespace("rotapp").await;
    let api: Api<MeshInstall> = Api::all(bed.client.clone());
    let name = "rot";
    let spec = json!({"security": {"workloadCertTTL": "1m"}});
    api.create(&PostParams::default(), &mesh(name, &mesh_ns.name, spec))
        .await
        .expect("create MeshInstall");
    let mi = wait_ready(&api, name, &op).await;
    let rev = mi.status.and_then(|s| s.active_revision).expect("an active revision");
    label_namespace(&bed, &app.name, Some(&rev)).await;
    for sa in ["client", "server"] {
        service_account(&bed, &app.name, sa).await;
    }

    // The kubelet's part: the namespace's bundle, copied into the agents' CA file.
    let dir = bed.kubeconfig.parent().unwrap().join(format!("rotation-{}", app.name));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("root-cert.pem");
    let stop = Arc::new(AtomicBool::new(false));
    let copier = copy_bundle(&bed, &app.name, &ca_file, stop.clone());
    wait_for("the bundle in the workloads' namespace", TIMEOUT, || async {
        std::fs::metadata(&ca_file).map(|_| ()).map_err(|e| e.to_string())
    })
    .await;

    // The revision's control plane, as a process on the host side of a test host, reading
    // the issuer the operator keeps.
    let host = TestHost::create();
    host.add_address(BACKEND);
    let cp = secure_control_plane(&bed, &dir, &rev, &mesh_ns.name, &["--workload-cert-ttl", "1m"]);
    let (address, log) = (cp.address.clone(), cp.log.clone());
    let _agents = ["client", "server"].map(|sa| agent(&bed, &dir, &address, &app.name, sa, &rev, &ca_file));
    let (client_dir, server_dir) = (dir.join("client"), dir.join("server"));
    wait_for("both agents to write their files", TIMEOUT, || async {
        Material::read(&client_dir)
            .and(Material::read(&server_dir))
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "{e}\ncontrol plane:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
    })
    .await;

    // Handshakes all along; grpc-go clients over xDS with mTLS: one for the whole test, and
    // a new one (new handshakes) in every phase.
    let phase = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Handshakes::default()));
    let server_id = format!("spiffe://cluster.local/ns/{}/sa/server", app.name);
    let looping = handshake_loop(
        &client_dir,
        &server_dir,
        server_id,
        phase.clone(),
        stop.clone(),
        seen.clone(),
    );
    let (_backend, target) = echo_service(&bed, &host, &app.name, BACKEND).await;
    let (go, boot) = (
        grpc_go_client().display().to_string(),
        client_dir.join("bootstrap.json").display().to_string(),
    );
    let mut steady = host.spawn(&go, &[&boot, &target]);
    wait_reached(&mut steady, &["a"], "grpc-go to reach the backend with xDS over mTLS").await;
    let before = security(&api, name).await.expect("status.security");
    assert_eq!(before.roots.len(), 1);
    let old_root = before.roots[0].fingerprint.clone();

    // Raise rootRotation; lowering it again is refused at admission.
    let raise = |n: u32| json!({"spec": {"security": {"workloadCertTTL": "1m", "rootRotation": n}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&raise(1)))
        .await
        .expect("raise rootRotation");
    let lowered = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&raise(0)))
        .await
        .expect_err("lowering rootRotation is refused");
    assert!(
        lowered.to_string().contains("rootRotation can only be raised"),
        "{lowered}"
    );

    // Each phase in turn, as status shows it; a new grpc-go client must connect in each.
    let mut shown = Vec::new();
    for (i, wanted) in PHASES.iter().enumerate().skip(1) {
        let s = wait_for(
            &format!("rotation phase {wanted}"),
            Duration::from_secs(180),
            || async {
                let s = security(&api, name).await?;
                let at = s.rotation.as_ref().map_or("after", |r| r.phase.as_str());
                let done = s.rotation.is_none() && s.roots.iter().all(|r| r.fingerprint != old_root);
                if at == *wanted && (i < 3 || done) {
                    Ok(s)
                } else {
                    Err(format!("{s:?}\noperator log:\n{}", op.log_tail()))
                }
            },
        )
        .await;
        phase.store(i, Ordering::Relaxed);
        shown.push((wanted.to_string(), s.roots.len()));
        let mut fresh = host.spawn(&go, &[&boot, &target]);
        wait_reached(
            &mut fresh,
            &["a"],
            &format!("a new grpc-go client to connect while {wanted}"),
        )
        .await;
        assert_eq!(call(&mut steady, 10).errors, 0, "the steady client while {wanted}");
    }
    assert_eq!(
        shown,
        vec![
            ("Distributing".to_string(), 2),
            ("Retiring".to_string(), 2),
            ("after".to_string(), 1)
        ],
        "roots trusted in each phase"
    );

    // The workloads moved to the new root: a few more handshakes with it alone.
    let issuer_pem = {
        let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), &mesh_ns.name);
        let s = secrets.get(mesh_ca::ISSUER_SECRET).await.unwrap();
        String::from_utf8(s.data.unwrap()[ca::CA_CERT].0.clone()).unwrap()
    };
    let new_issuer = ca::certificates(&issuer_pem).unwrap().remove(0);
    wait_for(
        "both workloads to hold certificates of the new issuer",
        TIMEOUT,
        || async {
            let chain = |d: &Path| std::fs::read_to_string(d.join("cert-chain.pem")).unwrap_or_default();
            let moved = |d: &Path| ca::certificates(&chain(d)).is_ok_and(|c| c.get(1) == Some(&new_issuer));
            let ok = seen.lock().unwrap().ok[3];
            if moved(&client_dir) && moved(&server_dir) && ok >= 5 {
                Ok(())
            } else {
                Err(format!("handshakes after: {ok}"))
            }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    looping.join().unwrap();
    copier.await.unwrap();
    {
        let seen = seen.lock().unwrap();
        assert!(seen.failed.is_empty(), "failed handshakes: {:?}", seen.failed);
        assert!(seen.ok.iter().all(|n| *n >= 3), "handshakes in every phase: {seen:?}");
        println!("handshakes per phase {:?}, torn reads {}", seen.ok, seen.torn_reads);
    }

    // Each step is an Event.
    let steps: Vec<String> = mesh_events(&bed, name)
        .await
        .into_iter()
        .filter(|(reason, m)| reason == "CAUpdated" && m.contains("rotation"))
        .map(|(_, m)| m)
        .collect();
    for fragment in ["added root", "now signing with the new issuer", "rotation complete"] {
        assert!(steps.iter().any(|m| m.contains(fragment)), "{fragment}: {steps:?}");
    }
    let logged = op.log_text();
    assert!(!logged.contains("PRIVATE KEY"), "no key material in the operator's log");
    delete_and_wait(&bed, name).await;
}
