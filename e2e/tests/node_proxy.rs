//! What a live control plane serves each Envoy role, judged as Envoy would take it: a node
//! proxy started from the bootstrap ConfigMap the operator renders, an ingress and an
//! east-west gateway from theirs. Each subscribes the way Envoy does (LDS and CDS wildcard,
//! then RDS and EDS by name, ACKing), through `weft config-dump`'s client; what it holds
//! must pass `weft::envoy_check` (Envoy's listener, route and cluster managers) and
//! go-control-plane's protoc-gen-validate checks. No Envoy binary runs here: this is the
//! configuration Envoy would receive, decoded and checked.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use weft::api::MeshInstall;
use weft::api::mesh_gateway::MeshGateway;
use weft::config_dump::{self, Dump};
use weft::envoy_check::{self, Role};
use weft::identity::mesh_ca;
use weft::xds::translate::node_proxy;
use weft_e2e::control_plane::{ControlPlane, free_port};
use weft_e2e::identity::{agent_once, token_file};
use weft_e2e::operator::{Operator, SERIAL, TIMEOUT, delete_and_wait, install_crds, mesh, wait_ready};
use weft_e2e::{Bed, envoy_validate, multicluster, wait_for, weft_bin};

const NODE_PROXY: Role<'static> = Role::NodeProxy {
    outbound: node_proxy::OUTBOUND_PORT,
    ready: node_proxy::READY_PORT,
    ready_path: node_proxy::READY_PATH,
};

/// `data[key]` of ConfigMap `ns/name`, once it exists.
async fn config_map(bed: &Bed, ns: &str, name: &str, key: &str) -> String {
    let api: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    wait_for(&format!("ConfigMap {ns}/{name}"), TIMEOUT, || async {
        let cm = api.get_opt(name).await.map_err(|e| e.to_string())?;
        cm.and_then(|c| c.data?.remove(key))
            .ok_or_else(|| format!("no ConfigMap {name} with {key} yet"))
    })
    .await
}

/// What the Envoy with this bootstrap's node holds from `cp`'s plaintext port, once it
/// holds `want` (the control plane may not have seen every object yet).
async fn dump_when(cp: &ControlPlane, bootstrap: &str, what: &str, want: impl Fn(&Dump) -> bool) -> Dump {
    let address = format!("http://127.0.0.1:{}", cp.xds);
    dump_over(&address, None, bootstrap, what, want).await
}

/// Like [`dump_when`], at `address`, over TLS when `tls` says so.
async fn dump_over(
    address: &str,
    tls: Option<&config_dump::Tls>,
    bootstrap: &str,
    what: &str,
    want: impl Fn(&Dump) -> bool,
) -> Dump {
    let node = config_dump::node_from_bootstrap("bootstrap.json", bootstrap).expect("a bootstrap with a node");
    wait_for(what, Duration::from_secs(30), || async {
        let dump = config_dump::fetch_complete_over(address, tls, node.clone(), Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        if want(&dump) {
            Ok(dump)
        } else {
            Err(format!("holds {:?}", names(&dump)))
        }
    })
    .await
}

fn names(dump: &Dump) -> BTreeMap<String, Vec<String>> {
    dump.resources
        .iter()
        .map(|(t, items)| {
            (
                t.rsplit('.').next().unwrap_or(t).to_string(),
                items.keys().cloned().collect(),
            )
        })
        .collect()
}

fn holds(dump: &Dump, short: &str, name: &str) -> bool {
    dump.resources
        .iter()
        .any(|(t, items)| t.ends_with(short) && items.contains_key(name))
}

/// The node-proxy ports the operator rendered: the node-local Service's outbound target
/// port (after checking it keeps traffic on the node), and the DaemonSet's readiness probe.
async fn rendered_node_proxy(bed: &Bed, ns: &str, name: &str) -> (u16, u16, String) {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let svc = Api::<Service>::namespaced(bed.client.clone(), ns)
        .get(name)
        .await
        .expect("the node-local Service");
    let spec = svc.spec.expect("a Service spec");
    assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Local"), "{spec:?}");
    let port = |p: &Option<IntOrString>| match p {
        Some(IntOrString::Int(n)) => u16::try_from(*n).expect("a port"),
        other => panic!("a numbered port: {other:?}"),
    };
    let outbound = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http-outbound"))
        .map(|p| port(&p.target_port))
        .expect("an outbound port");
    let ds = Api::<DaemonSet>::namespaced(bed.client.clone(), ns)
        .get(name)
        .await
        .expect("the node-proxy DaemonSet");
    let pod = ds.spec.expect("a spec").template.spec.expect("a pod spec");
    let probe = pod.containers[0]
        .readiness_probe
        .clone()
        .and_then(|p| p.http_get)
        .expect("an HTTP readiness probe");
    (outbound, port(&Some(probe.port)), probe.path.unwrap_or_default())
}

/// Both checks over what one client holds: nothing Envoy would refuse or leave dangling.
fn assert_envoy_takes(role: Role<'_>, dump: &Dump, who: &str) {
    let (served, mut findings) = dump.served();
    findings.extend(envoy_check::check(role, &served));
    assert!(
        findings.is_empty(),
        "{who}: Envoy would refuse or leave dangling:\n{findings:#?}"
    );
    let all: Vec<Any> = dump.all().cloned().collect();
    let violations = envoy_validate::validate(&all);
    assert!(violations.is_empty(), "{who}: protoc-gen-validate:\n{violations:#?}");
}

#[tokio::test]
async fn node_proxies_and_gateways_are_served_what_envoy_accepts() {
    let _serial = SERIAL.lock().await;
    let bed = Bed::connect().await;
    install_crds(&bed);
    let op = Operator::start(&bed, "node-proxy", &[]);
    let meshes: Api<MeshInstall> = Api::all(bed.client.clone());
    delete_and_wait(&bed, "np").await;
    let mesh_ns = "e2e-np-mesh";
    meshes
        .create(
            &PostParams::default(),
            &mesh("np", mesh_ns, json!({"meshConfig": {"network": "net-a"}})),
        )
        .await
        .expect("create mesh");
    wait_ready(&meshes, "np", &op).await;

    // A mesh service with an endpoint, and two gateways of the mesh.
    let shop = "e2e-np-shop";
    multicluster::greeter(&bed, shop, "198.51.100.20").await;
    let edge = bed.namespace("e2e-np-edge").await;
    let gateways: Api<MeshGateway> = Api::namespaced(bed.client.clone(), &edge.name);
    for (name, spec) in [
        ("ingress", json!({"mesh": "np"})),
        (
            "eastwest",
            json!({"mesh": "np", "type": "EastWest", "network": "net-a"}),
        ),
    ] {
        let gw: MeshGateway = serde_json::from_value(json!({
            "apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
            "metadata": {"name": name, "namespace": edge.name}, "spec": spec
        }))
        .unwrap();
        gateways
            .create(&PostParams::default(), &gw)
            .await
            .expect("create gateway");
    }

    // The revision's control plane, with the mesh config the operator rendered for it.
    let mesh_config = config_map(&bed, mesh_ns, "weft-cp-np", "mesh.yaml").await;
    let file = bed.kubeconfig.parent().unwrap().join("np-mesh.yaml");
    std::fs::write(&file, &mesh_config).unwrap();
    // Its TLS port too, signing with the issuer the operator keeps for the mesh.
    let secure = free_port();
    let secure_address = format!("127.0.0.1:{secure}");
    let cp = ControlPlane::start_with(
        &bed,
        "np",
        &[
            "--mesh-config",
            file.to_str().unwrap(),
            "--mesh-namespace",
            mesh_ns,
            "--ca-secret",
            mesh_ca::ISSUER_SECRET,
            "--secure-address",
            &secure_address,
        ],
    );
    cp.wait_ready().await;

    // Node proxies and gateways connect to the TLS port with the certificate `weft agent`
    // gets for their ServiceAccount, read from its SDS files as the bootstrap says.
    let work = bed.kubeconfig.parent().unwrap().join("np-identity");
    std::fs::create_dir_all(&work).unwrap();
    let bundle = work.join("root-cert.pem");
    std::fs::write(
        &bundle,
        config_map(&bed, mesh_ns, mesh_ca::BUNDLE_CONFIG_MAP, "root-cert.pem").await,
    )
    .unwrap();
    let identity_of = |ns: &str, sa: &str| {
        let out = work.join(sa);
        let token = token_file(&bed, &work, ns, sa, "weft-ca");
        agent_once(
            &secure_address,
            Some(&format!("weft-cp-np.{mesh_ns}.svc")),
            &token,
            &bundle,
            &out,
            &BTreeMap::new(),
        )
        .unwrap_or_else(|e| panic!("a certificate for {ns}/{sa}: {e}"));
        for file in ["sds-cert.json", "sds-root.json"] {
            let text = std::fs::read_to_string(out.join(file)).unwrap();
            let findings = envoy_validate::validate_json_response(&text);
            assert!(findings.is_empty(), "{sa}'s {file}: {findings:#?}");
        }
        out
    };
    let tls_of = |bootstrap: &str, dir: &std::path::Path| {
        let findings = envoy_validate::validate_bootstrap(bootstrap);
        assert!(findings.is_empty(), "the bootstrap as Envoy parses it: {findings:#?}");
        config_dump::tls_from_bootstrap("bootstrap.json", bootstrap, Some(dir))
            .expect("the bootstrap's TLS")
            .expect("the xds cluster uses TLS")
    };
    let tls_address = format!("https://{secure_address}");

    let greeter = "outbound|50051||greeter.e2e-np-shop.svc.cluster.local";
    let proxy_bootstrap = config_map(&bed, mesh_ns, "weft-proxy-np", "bootstrap.json").await;
    let proxy_identity = identity_of(mesh_ns, "weft-proxy-np");
    let proxy_tls = tls_of(&proxy_bootstrap, &proxy_identity);
    let dump = dump_over(
        &tls_address,
        Some(&proxy_tls),
        &proxy_bootstrap,
        "the node proxy to hold greeter over TLS",
        |d| holds(d, "ClusterLoadAssignment", greeter),
    )
    .await;
    // What the node proxy must serve, from the objects the operator applied: the port its
    // node-local Service sends workloads to, and the port and path its DaemonSet probes.
    let (outbound, ready, ready_path) = rendered_node_proxy(&bed, mesh_ns, "weft-proxy-np").await;
    let role = Role::NodeProxy {
        outbound,
        ready,
        ready_path: &ready_path,
    };
    assert_eq!(role, NODE_PROXY, "what the operator renders is what translation binds");
    assert_envoy_takes(role, &dump, "node proxy");
    // It routes the service by its full and namespaced names, with and without the port.
    let (served, _) = dump.served();
    let outbound = served
        .routes
        .iter()
        .find(|r| r.name == node_proxy::OUTBOUND)
        .expect("outbound routes");
    let vhost = outbound
        .virtual_hosts
        .iter()
        .find(|v| {
            v.domains
                .iter()
                .any(|d| d == "greeter.e2e-np-shop.svc.cluster.local:50051")
        })
        .unwrap_or_else(|| panic!("no virtual host for greeter: {outbound:?}"));
    for d in ["greeter.e2e-np-shop", "greeter.e2e-np-shop:50051"] {
        assert!(
            vhost.domains.iter().any(|x| x == d),
            "{d} missing from {:?}",
            vhost.domains
        );
    }
    assert!(
        served
            .listeners
            .iter()
            .all(|l| l.api_listener.is_none() && l.address.is_some())
    );

    for gw in ["ingress", "eastwest"] {
        let bootstrap = config_map(&bed, &edge.name, &format!("{gw}-bootstrap"), "bootstrap.json").await;
        let tls = tls_of(&bootstrap, &identity_of(&edge.name, gw));
        let dump = dump_over(
            &tls_address,
            Some(&tls),
            &bootstrap,
            &format!("gateway {gw} to hold its listeners over TLS"),
            |d| {
                let (served, _) = d.served();
                !served.listeners.is_empty() && holds(d, "ClusterLoadAssignment", greeter)
            },
        )
        .await;
        assert_envoy_takes(Role::Gateway, &dump, gw);
    }

    // The same, as a user runs it, through the CLI.
    let file = bed.kubeconfig.parent().unwrap().join("np-bootstrap.json");
    std::fs::write(&file, &proxy_bootstrap).unwrap();
    let out = std::process::Command::new(weft_bin())
        .args(["config-dump", "--xds", &secure_address, "--check", "-o", "json"])
        .arg("--bootstrap")
        .arg(&file)
        .arg("--identity-dir")
        .arg(&proxy_identity)
        .output()
        .expect("run weft config-dump");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["findings"], json!([]), "{text}");
    assert!(text.contains(greeter), "{text}");

    // Another workload's certificate cannot be the node proxy: the claim is refused.
    let gateway_identity = work.join("ingress");
    let forged = config_dump::tls_from_bootstrap("bootstrap.json", &proxy_bootstrap, Some(&gateway_identity))
        .unwrap()
        .unwrap();
    let node = config_dump::node_from_bootstrap("bootstrap.json", &proxy_bootstrap).unwrap();
    let refused = config_dump::fetch_complete_over(&tls_address, Some(&forged), node, Duration::from_secs(5))
        .await
        .expect_err("a gateway's certificate is not the node proxy's");
    assert!(
        refused.to_string().contains("sa/ingress") && refused.to_string().contains("may only claim"),
        "{refused}"
    );

    // The proxyless view (what node proxies were served before) fails the same check,
    // live: the check catches what Envoy would skip.
    let proxyless = proxy_bootstrap.replace("\"node-proxy\"", "\"proxyless\"");
    let dump = dump_when(&cp, &proxyless, "the proxyless view", |d| {
        holds(d, "Listener", "greeter.e2e-np-shop.svc.cluster.local:50051")
    })
    .await;
    let (served, _) = dump.served();
    let findings = envoy_check::check(NODE_PROXY, &served);
    assert!(
        findings.iter().any(|f| f.problem.contains("api_listener")),
        "the check must refuse api_listeners: {findings:#?}"
    );

    edge.delete().await;
    delete_and_wait(&bed, "np").await;
}

/// go-control-plane's validators refuse what Envoy's protos forbid, inside typed configs
/// too: a virtual host without a name or domains, a connection manager without a stat
/// prefix; and take what the translation serves.
#[test]
fn the_proto_validator_refuses_fixtures_that_break_envoys_constraints() {
    let route = RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![VirtualHost::default()],
        ..Default::default()
    };
    let listener = Listener {
        name: "l".into(),
        filter_chains: vec![envoy_types::pb::envoy::config::listener::v3::FilterChain {
            filters: vec![envoy_types::pb::envoy::config::listener::v3::Filter {
                name: "hcm".into(),
                config_type: Some(
                    envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(pack_any(
                        HttpConnectionManager::default(),
                    )),
                ),
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let found = envoy_validate::validate(&[pack_any(route), pack_any(listener)]);
    let text = found.join("\n");
    assert!(
        text.contains("VirtualHost.Name") || text.contains("VirtualHostValidationError"),
        "{text}"
    );
    assert!(text.contains("Domains"), "{text}");
    assert!(text.contains("StatPrefix"), "{text}");
    let unknown = Any {
        type_url: "type.googleapis.com/example.Unknown".into(),
        value: vec![],
    };
    assert_eq!(envoy_validate::validate(&[unknown]).len(), 1);
}

/// Every resource the translation makes for a mesh with routes, telemetry and each gateway
/// type, through go-control-plane's validators (the live test above sees only what one
/// bed's objects make).
#[test]
fn every_translated_resource_meets_envoys_proto_constraints() {
    use std::collections::BTreeMap as Map;
    use std::sync::Arc;
    use weft::xds::model::*;
    let endpoint = |address: &str| Endpoint {
        address: address.into(),
        ports: Map::from([("grpc".to_string(), 8080), ("http".to_string(), 8081)]),
        zone: Some("zone-a".into()),
        cluster: "local".into(),
        network: String::new(),
        ready: true,
        terminating: false,
    };
    let service = |name: &str| Service {
        name: name.into(),
        namespace: "shop".into(),
        ports: vec![
            ServicePort {
                name: "grpc".into(),
                port: 50051,
                http2: true,
            },
            ServicePort {
                name: "http".into(),
                port: 80,
                http2: false,
            },
        ],
        endpoints: Arc::new(vec![endpoint("198.51.100.10"), endpoint("198.51.100.11")]),
    };
    let services = vec![service("cart"), service("cart-v2")];
    let route = HttpRoute {
        name: "split".into(),
        namespace: "shop".into(),
        hostnames: vec!["shop.example.com".into()],
        parents: vec![
            ParentRef {
                kind: ParentKind::Service,
                name: "cart".into(),
                namespace: "shop".into(),
                port: Some(50051),
                section_name: None,
            },
            ParentRef {
                kind: ParentKind::MeshGateway,
                name: "ingress".into(),
                namespace: "edge".into(),
                port: None,
                section_name: None,
            },
        ],
        rules: vec![RouteRule {
            matches: vec![RouteMatch {
                path: Some(PathMatch::Regex("/cart\\.v[12]/.*".into())),
                headers: vec![HeaderMatch {
                    name: "x-canary".into(),
                    value: "yes".into(),
                    regex: false,
                }],
            }],
            backends: vec![
                Backend {
                    name: "cart".into(),
                    namespace: "shop".into(),
                    port: 50051,
                    weight: 90,
                },
                Backend {
                    name: "cart-v2".into(),
                    namespace: "shop".into(),
                    port: 50051,
                    weight: 10,
                },
            ],
        }],
    };
    let gateway = |name: &str, eastwest: bool| Gateway {
        name: name.into(),
        namespace: "edge".into(),
        ports: vec![GatewayPort {
            name: "http".into(),
            port: 80,
            container_port: 8080,
        }],
        eastwest,
    };
    let telemetry = Telemetry {
        access_log: Some(FileLog {
            path: "/dev/stdout".into(),
            format: Some("%START_TIME% %REQ(:AUTHORITY)%\n".into()),
        }),
        zipkin: Some(Zipkin {
            address: "zipkin.tracing:9411".into(),
            sampling_percent: 5.0,
        }),
    };
    for telemetry in [Telemetry::default(), telemetry] {
        let r = weft::xds::translate::translate_all(
            &services,
            &[gateway("ingress", false), gateway("eastwest", true)],
            std::slice::from_ref(&route),
            &telemetry,
        );
        let mut all: Vec<Any> = Vec::new();
        all.extend(r.listeners.values().map(|l| pack_any(l.clone())));
        all.extend(r.node_proxy_listeners.values().map(|l| pack_any(l.clone())));
        all.extend(
            r.gateway_listeners
                .values()
                .flat_map(|g| g.values())
                .map(|l| pack_any(l.clone())),
        );
        all.extend(r.routes.values().map(|x| pack_any(x.clone())));
        all.extend(r.clusters.values().map(|x| pack_any(x.clone())));
        all.extend(r.endpoints.values().map(|x| pack_any(x.clone())));
        let found = envoy_validate::validate(&all);
        assert!(found.is_empty(), "{telemetry:?}:\n{}", found.join("\n"));
    }
}
