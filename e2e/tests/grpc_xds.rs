//! Proven with clients we did not write: Python's grpcio, as a proxyless xDS client, gets
//! its configuration from `weft control-plane` reading the test bed, and calls real gRPC
//! backends; so do grpc-js and grpc-go (`e2e/grpc-go`, built by the test bed). Backends and
//! clients run in a test host (a network namespace on 198.51.100.0/24); the control plane
//! listens on the host side of its veth pair.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weft_e2e::control_plane::free_port_on as free_port;
use weft_e2e::grpc_clients::grpc_go_client;
use weft_e2e::testhost::{HOST_ADDRESS, Proc, TestHost};
use weft_e2e::{Bed, repo_root, wait_for, weft_bin};

const REVISION: &str = "grpc-test";

struct ControlPlane(Child);

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_control_plane(bed: &Bed, revision: &str, xds_port: u16, monitoring_port: u16) -> ControlPlane {
    let log = bed
        .kubeconfig
        .parent()
        .unwrap()
        .join(format!("control-plane-{revision}.log"));
    let child = Command::new(weft_bin())
        .args(["control-plane", "--revision", revision, "--debounce-ms", "50"])
        .arg("--kubeconfig")
        .arg(&bed.kubeconfig)
        .args(["--xds-address", &format!("{HOST_ADDRESS}:{xds_port}")])
        .args(["--monitoring-address", &format!("127.0.0.1:{monitoring_port}")])
        .stdout(Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .expect("start weft control-plane");
    ControlPlane(child)
}

fn ready(port: u16) -> Result<(), String> {
    match weft_e2e::http_get(port, "/ready")? {
        (200, _) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// One sample of the control plane's metrics (the line starting with `series`).
fn metric(port: u16, series: &str) -> f64 {
    let (_, body) = weft_e2e::http_get(port, "/metrics").expect("monitoring port");
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A short stable name for a bootstrap file.
fn fnv(text: &str) -> String {
    weft::render::fnv1a(text)
}

fn script(name: &str) -> String {
    repo_root().join("e2e/xds").join(name).display().to_string()
}

fn backend(host: &TestHost, address: &str, name: &str) -> Proc {
    let mut p = host.spawn("python3", &[&script("backend.py"), &format!("{address}:50051"), name]);
    assert_eq!(p.read_line().as_deref(), Some("ready"), "backend {name} did not start");
    p
}

/// A bootstrap for a client at `xds_port` with node `metadata` (REVISION, NAMESPACE, …).
fn bootstrap(bed: &Bed, xds_port: u16, metadata: Value) -> String {
    let id = format!("e2e-{xds_port}-{}", fnv(&metadata.to_string()));
    let path = bed.kubeconfig.parent().unwrap().join(format!("bootstrap-{id}.json"));
    let mut metadata = metadata;
    metadata["ROLE"] = json!("proxyless");
    let doc = json!({
        "xds_servers": [{"server_uri": format!("{HOST_ADDRESS}:{xds_port}"), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": id, "locality": {"zone": "zone-a"}, "metadata": metadata}
    });
    std::fs::write(&path, doc.to_string()).unwrap();
    path.display().to_string()
}

/// What `call N` answered.
struct Calls {
    counts: BTreeMap<String, u64>,
    errors: u64,
    last_error: String,
}

fn call(client: &mut Proc, n: u32) -> Calls {
    let line = client.ask(&format!("call {n}")).expect("the client answers");
    let v: Value = serde_json::from_str(&line).expect("JSON from the client");
    Calls {
        counts: v["counts"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .collect(),
        errors: v["errors"].as_u64().unwrap(),
        last_error: v["last_error"].as_str().unwrap_or_default().to_string(),
    }
}

fn slice(name: &str, service: &str, addresses: &[&str]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
        "endpoints": addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}, "zone": "zone-a"})).collect::<Vec<_>>()
    }))
    .unwrap()
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "grpc", "port": 50051, "appProtocol": "grpc"}]}})).unwrap()
}

fn route(ns: &str, main: u32, v2: u32) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "echo-split", "namespace": ns},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 50051}],
            "rules": [{"backendRefs": [{"name": "echo", "port": 50051, "weight": main}, {"name": "echo-v2", "port": 50051, "weight": v2}]}]
        }
    }))
    .unwrap()
}

/// Everything a scenario needs: a namespace with two services and their endpoints, three
/// backends in a test host, and a control plane on the host side.
struct Scenario {
    bed: Bed,
    ns: weft_e2e::TestNamespace,
    host: TestHost,
    xds_port: u16,
    monitoring: u16,
    slices: Api<EndpointSlice>,
    routes: Api<DynamicObject>,
    _backends: Vec<Proc>,
}

/// Test hosts share 198.51.100.0/24: scenarios run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scenario() -> (Scenario, ControlPlane) {
    let bed = Bed::connect().await;
    let ns = bed.namespace("grpc").await;
    let host = TestHost::create();
    for a in ["198.51.100.10", "198.51.100.11", "198.51.100.20"] {
        host.add_address(a);
    }
    let xds_port = free_port(HOST_ADDRESS);
    let monitoring = free_port("127.0.0.1");
    let cp = start_control_plane(&bed, REVISION, xds_port, monitoring);
    wait_for("the control plane to be ready", Duration::from_secs(30), || async {
        ready(monitoring)
    })
    .await;
    let backends = vec![
        backend(&host, "198.51.100.10", "a"),
        backend(&host, "198.51.100.11", "b"),
        backend(&host, "198.51.100.20", "v2"),
    ];
    let svcs: Api<Service> = Api::namespaced(bed.client.clone(), &ns.name);
    svcs.create(&PostParams::default(), &service("echo")).await.unwrap();
    svcs.create(&PostParams::default(), &service("echo-v2")).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(bed.client.clone(), &ns.name);
    slices
        .create(
            &PostParams::default(),
            &slice("echo-1", "echo", &["198.51.100.10", "198.51.100.11"]),
        )
        .await
        .unwrap();
    slices
        .create(
            &PostParams::default(),
            &slice("echo-v2-1", "echo-v2", &["198.51.100.20"]),
        )
        .await
        .unwrap();
    let routes: Api<DynamicObject> = Api::namespaced_with(
        bed.client.clone(),
        &ns.name,
        &weft::xds::discovery::sources::httproute_resource(),
    );
    let s = Scenario {
        bed,
        ns,
        host,
        xds_port,
        monitoring,
        slices,
        routes,
        _backends: backends,
    };
    (s, cp)
}

impl Scenario {
    fn target(&self) -> String {
        format!("xds:///echo.{}.svc.cluster.local:50051", self.ns.name)
    }

    /// Starts a client: `python3 client.py`, `node client.js` or `go` (grpc-go's).
    fn client(&self, program: &str, revision: &str) -> Proc {
        self.client_of(
            program,
            self.xds_port,
            json!({"REVISION": revision, "NAMESPACE": self.ns.name}),
        )
    }

    /// Starts a client of the control plane at `xds_port` with node `metadata`.
    fn client_of(&self, program: &str, xds_port: u16, metadata: Value) -> Proc {
        let boot = bootstrap(&self.bed, xds_port, metadata);
        let target = self.target();
        if program == "go" {
            // A binary of its own, not a script: the test bed builds it with the cluster.
            let bin = grpc_go_client();
            assert!(
                bin.exists(),
                "{} is missing: `e2e/cluster build` builds it",
                bin.display()
            );
            return self.host.spawn(&bin.display().to_string(), &[&boot, &target]);
        }
        let script = match program {
            "node" => repo_root().join("e2e/xds/node/client.js").display().to_string(),
            _ => script("client.py"),
        };
        self.host.spawn(program, &[&script, &boot, &target])
    }
}

/// Calls until both `a` and `b` answered, then checks the spread.
async fn assert_balanced(client: &mut Proc) {
    let balanced = wait_for("calls to reach both backends", Duration::from_secs(30), || {
        let c = call(client, 60);
        async move {
            if c.counts.get("a").copied().unwrap_or(0) > 0
                && c.counts.get("b").copied().unwrap_or(0) > 0
                && c.errors == 0
            {
                Ok(c)
            } else {
                Err(format!("counts {:?} errors {} ({})", c.counts, c.errors, c.last_error))
            }
        }
    })
    .await;
    assert!(
        balanced.counts["a"] >= 15 && balanced.counts["b"] >= 15,
        "round robin: {:?}",
        balanced.counts
    );
}

/// Applies a 90/10 split and measures it over 1000 calls.
async fn assert_split_90_10(s: &Scenario, client: &mut Proc) {
    let route = route(&s.ns.name, 90, 10);
    s.routes
        .patch(
            "echo-split",
            &PatchParams::apply("weft-e2e").force(),
            &Patch::Apply(&route),
        )
        .await
        .expect("apply HTTPRoute");
    wait_for("the split to take effect", Duration::from_secs(30), || {
        let c = call(client, 100);
        async move {
            if c.counts.contains_key("v2") {
                Ok(())
            } else {
                Err(format!("{:?}", c.counts))
            }
        }
    })
    .await;
    let split = call(client, 1000);
    let v2 = split.counts.get("v2").copied().unwrap_or(0) as f64 / 1000.0;
    assert_eq!(split.errors, 0, "{}", split.last_error);
    assert!(
        (0.06..=0.14).contains(&v2),
        "90/10 split measured {v2:.3} to v2 (tolerance 0.06..0.14): {:?}",
        split.counts
    );
}

/// A route the client cannot accept (an invalid RE2 regex) is NACKed: CSDS shows it, the
/// client keeps its last good configuration, and the control plane does not resend it.
async fn assert_nacked_and_kept(s: &Scenario, client: &mut Proc) {
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "echo-split", "namespace": s.ns.name},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 50051}],
            "rules": [{
                "matches": [{"path": {"type": "RegularExpression", "value": "/echo(["}}],
                "backendRefs": [{"name": "echo-v2", "port": 50051}]
            }]
        }
    }))
    .unwrap();
    s.routes
        .patch(
            "echo-split",
            &PatchParams::apply("weft-e2e").force(),
            &Patch::Apply(&bad),
        )
        .await
        .unwrap();
    let listener = format!("echo.{}.svc.cluster.local:50051", s.ns.name);
    wait_for(
        "the client to NACK the route (seen through CSDS)",
        Duration::from_secs(30),
        || {
            let line = client.ask("csds").expect("csds answer");
            let listener = listener.clone();
            async move {
                let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
                let nacked = v["resources"].as_array().into_iter().flatten().any(|r| {
                    r["type"].as_str().is_some_and(|t| t.ends_with("RouteConfiguration"))
                        && r["name"] == listener.as_str()
                        && r["status"] == "NACKED"
                        && !r["error"].as_str().unwrap_or_default().is_empty()
                });
                if nacked { Ok(()) } else { Err(line) }
            }
        },
    )
    .await;
    let nacks = metric(s.monitoring, "weft_xds_nacks_total{type=\"rds\"}");
    assert!(nacks >= 1.0, "the control plane counted the NACK");
    let rds_pushes = metric(s.monitoring, "weft_xds_pushes_total{type=\"rds\"}");
    let kept = call(client, 100);
    assert_eq!(
        kept.errors, 0,
        "the client keeps its last good configuration: {}",
        kept.last_error
    );
    assert_eq!(
        metric(s.monitoring, "weft_xds_pushes_total{type=\"rds\"}"),
        rds_pushes,
        "the NACKed route was sent again"
    );
}

#[tokio::test]
async fn grpc_js_xds_resolves_balances_and_splits() {
    let _serial = SERIAL.lock().await;
    let (s, cp) = scenario().await;
    let mut client = s.client("node", REVISION);
    assert_balanced(&mut client).await;
    assert_split_90_10(&s, &mut client).await;
    drop(client);
    drop(cp);
    s.ns.delete().await;
}

/// grpc-go, proven as grpc-js is, and its NACK seen through its own CSDS view (grpc-go's
/// CSDS server, asked in process).
#[tokio::test]
async fn grpc_go_xds_resolves_balances_splits_and_nacks() {
    let _serial = SERIAL.lock().await;
    let (s, cp) = scenario().await;
    let mut client = s.client("go", REVISION);
    assert_balanced(&mut client).await;
    assert_split_90_10(&s, &mut client).await;
    assert_nacked_and_kept(&s, &mut client).await;
    drop(client);
    drop(cp);
    s.ns.delete().await;
}

#[tokio::test]
async fn grpcio_balances_follows_endpoints_and_weights_and_reconnects() {
    let _serial = SERIAL.lock().await;
    let (s, mut cp) = scenario().await;
    let mut client = s.client("python3", REVISION);

    // Balanced across both backends.
    assert_balanced(&mut client).await;

    // An endpoint leaves: its traffic stops.
    let one = slice("echo-1", "echo", &["198.51.100.10"]);
    s.slices
        .patch("echo-1", &PatchParams::apply("weft-e2e").force(), &Patch::Apply(&one))
        .await
        .unwrap();
    wait_for("traffic to stop going to b", Duration::from_secs(30), || {
        let c = call(&mut client, 20);
        async move {
            if c.counts.keys().all(|k| k == "a") && c.errors == 0 {
                Ok(())
            } else {
                Err(format!("{:?}", c.counts))
            }
        }
    })
    .await;
    let after = call(&mut client, 50);
    assert_eq!(
        (after.counts.get("a").copied(), after.errors),
        (Some(50), 0),
        "{:?}",
        after.counts
    );

    // An HTTPRoute splits 90/10.
    assert_split_90_10(&s, &mut client).await;

    // 50/50, without call errors on the way.
    let even_route = route(&s.ns.name, 50, 50);
    s.routes
        .patch(
            "echo-split",
            &PatchParams::apply("weft-e2e").force(),
            &Patch::Apply(&even_route),
        )
        .await
        .unwrap();
    let mut errors = 0;
    wait_for("the 50/50 split to take effect", Duration::from_secs(30), || {
        let c = call(&mut client, 100);
        errors += c.errors;
        async move {
            let v2 = c.counts.get("v2").copied().unwrap_or(0);
            if v2 >= 35 {
                Ok(())
            } else {
                Err(format!("{:?}", c.counts))
            }
        }
    })
    .await;
    let even = call(&mut client, 1000);
    errors += even.errors;
    let v2 = even.counts.get("v2").copied().unwrap_or(0) as f64 / 1000.0;
    assert_eq!(errors, 0, "calls failed during the weight change: {}", even.last_error);
    assert!(
        (0.44..=0.56).contains(&v2),
        "50/50 split measured {v2:.3} (tolerance 0.44..0.56): {:?}",
        even.counts
    );

    assert_nacked_and_kept(&s, &mut client).await;
    s.routes
        .patch(
            "echo-split",
            &PatchParams::apply("weft-e2e").force(),
            &Patch::Apply(&route(&s.ns.name, 50, 50)),
        )
        .await
        .unwrap();

    // A client of another revision is refused.
    let mut stranger = s.client("python3", "someone-else");
    let refused = call(&mut stranger, 1);
    assert_eq!(
        refused.errors, 1,
        "a client of another revision must not be served: {:?}",
        refused.counts
    );
    assert!(
        refused.last_error.contains("serves revision grpc-test"),
        "the refusal says why: {}",
        refused.last_error
    );

    // The control plane restarts: the client reconnects and resumes.
    drop(cp);
    cp = start_control_plane(&s.bed, REVISION, s.xds_port, s.monitoring);
    wait_for(
        "the restarted control plane to be ready",
        Duration::from_secs(30),
        || async { ready(s.monitoring) },
    )
    .await;
    wait_for("calls to succeed after the restart", Duration::from_secs(30), || {
        let c = call(&mut client, 20);
        async move {
            if c.errors == 0 && c.counts.values().sum::<u64>() == 20 {
                Ok(())
            } else {
                Err(format!("{:?} {}", c.counts, c.last_error))
            }
        }
    })
    .await;
    drop(cp);
    drop(client);
    drop(stranger);
    s.ns.delete().await;
}

/// Calls until they succeed (a refused client's xDS stream retries with backoff, and a
/// control plane sees a tag move through its MeshInstall watch a moment later).
async fn assert_served(s: &Scenario, xds_port: u16, namespace: &str, who: &str) {
    let mut client = s.client_of("python3", xds_port, json!({"NAMESPACE": namespace}));
    wait_for(who, Duration::from_secs(30), || {
        let c = call(&mut client, 10);
        async move {
            if c.errors == 0 {
                Ok(())
            } else {
                Err(format!("{} errors: {}", c.errors, c.last_error))
            }
        }
    })
    .await;
}

/// A fresh client is refused, and told which revision its namespace resolves to.
async fn assert_refused(s: &Scenario, xds_port: u16, namespace: &str, resolves_to: &str) {
    let expected = format!("resolves to \"{resolves_to}\"");
    wait_for(
        &format!("a client in {namespace} to be refused"),
        Duration::from_secs(30),
        || {
            let mut client = s.client_of("python3", xds_port, json!({"NAMESPACE": namespace}));
            let c = call(&mut client, 1);
            let expected = expected.clone();
            async move {
                if c.errors == 1 && c.last_error.contains(&expected) {
                    Ok(())
                } else {
                    Err(format!("counts {:?}, error {:?}", c.counts, c.last_error))
                }
            }
        },
    )
    .await;
}

/// On the wire, during a canary upgrade run by the operator: a proxyless client in the
/// namespace labelled with the Latest tag is served by the new revision's control plane,
/// one in the namespace labelled with the Active tag by the old, until promotion.
#[tokio::test]
async fn canary_namespaces_are_served_by_the_new_revision_until_promotion() {
    use weft_e2e::operator::{Operator, condition, delete_and_wait, install_crds, mesh, wait_ready};
    let _serial = SERIAL.lock().await;
    let _operators = weft_e2e::operator::SERIAL.lock().await;
    let (s, scenario_cp) = scenario().await;
    drop(scenario_cp);
    install_crds(&s.bed);
    let op = Operator::start(&s.bed, "wire", &[]);
    let meshes: Api<weft::api::MeshInstall> = Api::all(s.bed.client.clone());
    delete_and_wait(&s.bed, "wire").await;
    let mi = mesh(
        "wire",
        "e2e-wire",
        json!({
            "profile": "minimal",
            "updateStrategy": {"type": "RevisionBased", "inactiveRevisionDeletionGracePeriodSeconds": 1,
                               "promotion": {"minReadySeconds": 20, "progressDeadlineSeconds": 120}},
            "revisionTags": [{"name": "wire-stable", "target": "Active"}, {"name": "wire-canary", "target": "Latest"}]
        }),
    );
    meshes
        .create(&PostParams::default(), &mi)
        .await
        .expect("create MeshInstall");
    wait_ready(&meshes, "wire", &op).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(s.bed.client.clone());
    for (ns, tag) in [("e2e-wire-stable", "wire-stable"), ("e2e-wire-canary", "wire-canary")] {
        let obj =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"weft.dev/rev": tag}}});
        namespaces
            .patch(ns, &PatchParams::apply("weft-e2e").force(), &Patch::Apply(&obj))
            .await
            .expect("label namespace");
    }

    // One control plane per revision, as the operator's Deployments would run them.
    let (old, new) = ("wire-v1-0-0", "wire-v1-1-0");
    let (old_port, new_port) = (free_port(HOST_ADDRESS), free_port(HOST_ADDRESS));
    let (old_mon, new_mon) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let _old_cp = start_control_plane(&s.bed, old, old_port, old_mon);
    let _new_cp = start_control_plane(&s.bed, new, new_port, new_mon);
    for port in [old_mon, new_mon] {
        wait_for("both control planes to be ready", Duration::from_secs(30), || async {
            ready(port)
        })
        .await;
    }

    meshes
        .patch(
            "wire",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"version": "1.1.0"}})),
        )
        .await
        .expect("upgrade");
    wait_for("the canary tag to move", Duration::from_secs(60), || async {
        let mi = meshes.get("wire").await.map_err(|e| e.to_string())?;
        let tags = mi.status.clone().unwrap_or_default().tags;
        let at = |t: &str| tags.iter().find(|x| x.name == t).map(|x| x.revision.clone());
        if at("wire-canary").as_deref() == Some(new) && at("wire-stable").as_deref() == Some(old) {
            Ok(())
        } else {
            Err(format!("{tags:?}\n{}", op.log_tail()))
        }
    })
    .await;

    // Canary: the new revision serves it, the old refuses it; stable: the other way round.
    assert_served(
        &s,
        new_port,
        "e2e-wire-canary",
        "the new revision to serve the canary namespace",
    )
    .await;
    assert_refused(&s, old_port, "e2e-wire-canary", new).await;
    assert_served(
        &s,
        old_port,
        "e2e-wire-stable",
        "the old revision to serve the stable namespace",
    )
    .await;
    assert_refused(&s, new_port, "e2e-wire-stable", old).await;
    let mi = meshes.get("wire").await.unwrap();
    assert_eq!(
        mi.status.unwrap().active_revision.as_deref(),
        Some(old),
        "the checks above ran before promotion"
    );

    // Promoted: stable moves to the new revision.
    wait_for("promotion", Duration::from_secs(60), || async {
        let mi = meshes.get("wire").await.map_err(|e| e.to_string())?;
        let active = mi.status.as_ref().and_then(|s| s.active_revision.clone());
        match (active.as_deref(), condition(&mi, "Ready")) {
            (Some(a), Some((r, _, _))) if a == new && r == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_served(
        &s,
        new_port,
        "e2e-wire-stable",
        "the new revision to serve the stable namespace",
    )
    .await;
    assert_refused(&s, old_port, "e2e-wire-stable", new).await;

    for ns in ["e2e-wire-stable", "e2e-wire-canary"] {
        let _ = namespaces.delete(ns, &kube::api::DeleteParams::default()).await;
    }
    delete_and_wait(&s.bed, "wire").await;
    op.stop();
    s.ns.delete().await;
}
