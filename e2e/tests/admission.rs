//! Admission against the test bed's real API server: bad specs are refused with a message a
//! person understands, and good specs at every limit are accepted and render objects the
//! API server accepts too (server-side dry run), so an apply never fails halfway through;
//! generated specs end one of those ways or stall; the shipped admission policy constrains
//! image overrides.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use weft::api::{MeshGateway, MeshInstall};
use weft::operator::mesh_install::names::target_revision;
use weft::render::{GatewayInput, Manifest, RevisionInput, render_gateway, render_revision};
use weft::versions::VersionTable;
use weft_e2e::operator::install_crds;
use weft_e2e::{Bed, wait_for};

/// Where the MeshGateways of the tables live until a test puts them in its own namespace.
const NS: &str = "placeholder";

fn mesh_install(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshInstall", "metadata": {"name": name}, "spec": spec})
}

fn mesh_gateway(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "weft.dev/v1alpha1", "kind": "MeshGateway",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// An API for the object's kind (and namespace).
fn api_for(bed: &Bed, obj: &Value) -> Api<DynamicObject> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap_or_default().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            obj["apiVersion"].as_str().unwrap_or_default().to_string(),
        ),
    };
    let kind = obj["kind"].as_str().unwrap_or_default();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, kind));
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(bed.client.clone(), ns, &ar),
        None => Api::all_with(bed.client.clone(), &ar),
    }
}

/// Creates `obj` in a server-side dry run: admission runs in full, nothing is stored.
async fn dry_run_create(bed: &Bed, obj: &Value) -> Result<(), String> {
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api_for(bed, obj)
        .create(&params, &dynamic)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Server-side applies a rendered object in a dry run, as the operator would apply it.
async fn dry_run_apply(bed: &Bed, m: &Manifest) -> Result<(), String> {
    let params = PatchParams::apply("weft-operator").force().dry_run();
    let mut obj = m.object.clone();
    if let (Some(n), Some(spec)) = (m.initial_replicas, obj.get_mut("spec").and_then(Value::as_object_mut)) {
        spec.insert("replicas".into(), json!(n));
    }
    api_for(bed, &obj)
        .patch(&m.name, &params, &Patch::Apply(&obj))
        .await
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", m.describe()))
}

/// Each bad spec, and a fragment of the message admission must answer with.
#[rustfmt::skip]
fn bad_specs() -> Vec<(&'static str, Value, &'static str)> {
    let mi = mesh_install;
    let gw = mesh_gateway;
    let system = "namespace must not be default or a kube-* system namespace";
    let over_limit = "a request must not be greater than its limit";
    vec![
        ("request above limit",
         mi("bad", json!({"version": "1.0.0", "controlPlane": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}})),
         over_limit),
        ("memory request above limit",
         mi("bad", json!({"version": "1.0.0", "proxy": {"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}}}})),
         over_limit),
        ("gateway request above limit",
         gw("bad", json!({"mesh": "m", "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "100m"}}})),
         over_limit),
        ("malformed quantity",
         mi("bad", json!({"version": "1.0.0", "controlPlane": {"resources": {"requests": {"cpu": "lots"}}}})),
         "every request and limit must be a quantity"),
        ("negative quantity",
         mi("bad", json!({"version": "1.0.0", "proxy": {"resources": {"limits": {"memory": "-1Gi"}}}})),
         "every request and limit must be a quantity of 0 or more"),
        ("percentage above 100",
         mi("bad", json!({"version": "1.0.0", "controlPlane": {"podDisruptionBudget": {"minAvailable": "150%"}}})),
         "percentage from 0% to 100%"),
        ("a count that is not a percentage",
         gw("bad", json!({"mesh": "m", "podDisruptionBudget": {"maxUnavailable": "two"}})),
         "podDisruptionBudget.maxUnavailable must be a number of pods"),
        ("node proxies never replaced",
         mi("bad", json!({"version": "1.0.0", "proxy": {"updateStrategy": {"maxUnavailable": 0, "maxSurge": "0%"}}})),
         "with both 0 no node proxy could ever be replaced"),
        ("node proxies surging and taken down at once",
         mi("bad", json!({"version": "1.0.0", "proxy": {"updateStrategy": {"maxUnavailable": 1, "maxSurge": "10%"}}})),
         "one of maxSurge and maxUnavailable must be 0 and the other above 0"),
        ("a negative surge",
         mi("bad", json!({"version": "1.0.0", "proxy": {"updateStrategy": {"maxSurge": -1}}})),
         "proxy.updateStrategy.maxSurge must be a number from 0"),
        ("sampling above 100",
         mi("bad", json!({"version": "1.0.0", "meshConfig": {"tracing": {"samplingPercent": 150}}})),
         "should be less than or equal to 100"),
        ("bad label key",
         mi("bad", json!({"version": "1.0.0", "controlPlane": {"nodeSelector": {"-zone": "a"}}})),
         "nodeSelector: every key must be a label key"),
        ("bad label value",
         gw("bad", json!({"mesh": "m", "nodeSelector": {"zone": "a b"}})),
         "nodeSelector: every value must be a label value"),
        ("label value too long",
         mi("bad", json!({"version": "1.0.0", "proxy": {"nodeSelector": {"zone": "a".repeat(64)}}})),
         "Too long"),
        ("bad annotation key",
         gw("bad", json!({"mesh": "m", "service": {"annotations": {"example.com/bad key": "x"}}})),
         "service.annotations: every key must be an annotation key"),
        ("unknown selector operator",
         mi("bad", json!({"version": "1.0.0", "meshConfig": {"discoverySelectors": [
             {"matchExpressions": [{"key": "team", "operator": "Equals", "values": ["a"]}]}]}})),
         "operator must be In, NotIn, Exists or DoesNotExist"),
        ("In without values",
         mi("bad", json!({"version": "1.0.0", "meshConfig": {"discoverySelectors": [
             {"matchExpressions": [{"key": "team", "operator": "In"}]}]}})),
         "In and NotIn need at least one value"),
        ("Exists with values",
         mi("bad", json!({"version": "1.0.0", "meshConfig": {"discoverySelectors": [
             {"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]}]}})),
         "Exists and DoesNotExist take no values"),
        ("bad selector label",
         mi("bad", json!({"version": "1.0.0", "meshConfig": {"discoverySelectors": [{"matchLabels": {"team": "a/b"}}]}})),
         "discoverySelectors: keys must be label keys"),
        ("mesh not a DNS label",
         gw("bad", json!({"mesh": "My_Mesh"})),
         "mesh must name a MeshInstall: a DNS label"),
        ("mesh name too long",
         gw("bad", json!({"mesh": "a".repeat(31)})),
         "Too long"),
        ("MeshInstall name too long",
         mi(&"a".repeat(31), json!({"version": "1.0.0"})),
         "the MeshInstall name must be at most 30 characters"),
        ("version too long",
         mi("bad", json!({"version": "1.0.0-rc.1234567890abc"})),
         "Too long"),
        ("mesh in kube-system with an image override",
         mi("bad", json!({"version": "1.0.0", "namespace": "kube-system", "controlPlane": {"image": "example.com/any:latest"}})),
         system),
        ("mesh in kube-public", mi("bad", json!({"version": "1.0.0", "namespace": "kube-public"})), system),
        ("mesh in kube-node-lease", mi("bad", json!({"version": "1.0.0", "namespace": "kube-node-lease"})), system),
        ("mesh in default", mi("bad", json!({"version": "1.0.0", "namespace": "default"})), system),
        ("unknown toleration operator",
         mi("bad", json!({"version": "1.0.0", "controlPlane": {"tolerations": [{"key": "k", "operator": "Bogus"}]}})),
         "tolerations: operator must be Exists or Equal"),
        ("toleration Exists with a value",
         gw("bad", json!({"mesh": "m", "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]})),
         "a toleration with operator Exists takes no value"),
        ("toleration without key nor Exists",
         mi("bad", json!({"version": "1.0.0", "proxy": {"tolerations": [{"value": "v"}]}})),
         "one without a key must use operator Exists"),
        ("tolerationSeconds without NoExecute",
         mi("bad", json!({"version": "1.0.0", "proxy": {"tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]}})),
         "tolerationSeconds applies to effect NoExecute only"),
        ("image with a space",
         mi("bad", json!({"version": "1.0.0", "proxy": {"image": "registry.example.com/proxy: latest"}})),
         "image must be an image reference without spaces"),
        ("remote cluster of a mesh that is no DNS label",
         json!({"apiVersion": "weft.dev/v1alpha1", "kind": "RemoteCluster", "metadata": {"name": "bad", "namespace": NS},
                "spec": {"mesh": "Bad_Mesh", "clusterName": "west", "kubeconfigSecretRef": {"name": "west"}}}),
         "mesh must name a MeshInstall: a DNS label"),
        ("external control plane without a port",
         mi("bad", json!({"version": "1.0.0", "controlPlane": {"external": {"address": "eastwest.primary.example.com"}}})),
         "external.address must be host:port"),
        ("external control plane port out of range",
         mi("bad", json!({"version": "1.0.0", "controlPlane": {"external": {"address": "192.0.2.10:70000"}}})),
         "external.address must be host:port"),
        ("workload certificates for less than a minute",
         mi("bad", json!({"version": "1.0.0", "security": {"workloadCertTTL": "30s"}})),
         "workloadCertTTL must be from 1m to 168h"),
        ("plaintext xDS turned off for a control plane elsewhere",
         mi("bad", json!({"version": "1.0.0", "controlPlane": {"plaintextXds": false, "external": {"address": "eastwest.primary.example.com:15443"}}})),
         "controlPlane.plaintextXds concerns a control plane installed here"),
        ("root rotation of a plug-in CA",
         mi("bad", json!({"version": "1.0.0", "security": {"ca": {"secretRef": {"name": "cacerts"}}, "rootRotation": 1}})),
         "a plug-in CA (ca.secretRef) is rotated by changing its Secret"),
        ("bad priority class",
         mi("bad", json!({"version": "1.0.0", "controlPlane": {"priorityClassName": "High_Priority"}})),
         "priorityClassName must name a PriorityClass"),
    ]
}

#[tokio::test]
async fn bad_specs_are_refused_at_admission_with_a_message() {
    let bed = Bed::connect().await;
    install_crds(&bed);
    let ns = bed.namespace("e2e-refused").await;
    let mut wrong = Vec::new();
    for (case, mut obj, fragment) in bad_specs() {
        if obj["metadata"].get("namespace").is_some() {
            obj["metadata"]["namespace"] = json!(ns.name);
        }
        match dry_run_create(&bed, &obj).await {
            Ok(()) => wrong.push(format!("{case}: accepted")),
            Err(e) if e.contains(fragment) => {}
            Err(e) => wrong.push(format!("{case}: refused without {fragment:?}: {e}")),
        }
    }
    ns.delete().await;
    assert!(
        wrong.is_empty(),
        "admission did not answer as expected:\n{}",
        wrong.join("\n")
    );
}

/// Good MeshInstalls at the limits: (case, name, spec).
#[rustfmt::skip]
fn good_meshes() -> Vec<(&'static str, String, Value)> {
    let selectors = json!([
        {"matchLabels": {"example.com/team": "a".repeat(63)}},
        {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]},
                              {"key": "tier", "operator": "NotIn", "values": ["batch"]},
                              {"key": "weft.dev/mesh", "operator": "Exists"},
                              {"key": "legacy", "operator": "DoesNotExist"}]}]);
    vec![
        // 30 + "-v" + 20 = 52: the longest revision name, still a label value, and a DNS label
        // inside every owned object's name.
        ("longest revision name", "a".repeat(30),
         json!({"version": "1.0.0-rc.12345678901", "updateStrategy": {"type": "RevisionBased"}})),
        ("longest in-place name", format!("b{}", "0".repeat(29)), json!({"version": "1.0.0"})),
        ("one-character name, every kind of toleration", "c".into(),
         json!({"version": "1.0.0",
                "controlPlane": {"tolerations": [{"operator": "Exists"},
                                                 {"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"},
                                                 {"key": "example.com/k", "value": "v"},
                                                 {"key": "n", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]}})),
        ("earlier, lowercase enum spellings", "legacy".into(),
         json!({"version": "1.0.0", "profile": "minimal", "proxy": {"enabled": true, "logLevel": "warning"},
                "meshConfig": {"outboundTrafficPolicy": "REGISTRY_ONLY"}})),
        ("xDS over TLS only", "tls".into(),
         json!({"version": "1.0.0", "controlPlane": {"plaintextXds": false}, "security": {"rootRotation": 2}})),
        ("external control plane on IPv6", "ext".into(),
         json!({"version": "1.0.0", "controlPlane": {"external": {"address": "[2001:db8::10]:15443"}}})),
        ("selectors with every operator", "sel".into(),
         json!({"version": "1.0.0", "meshConfig": {"discoverySelectors": selectors}})),
        ("requests equal to limits, every percentage, autoscaled", "res".into(),
         json!({"version": "1.0.0", "profile": "HA",
                "controlPlane": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                               "limits": {"cpu": "1000m", "memory": "1024Mi"}},
                                 "podDisruptionBudget": {"maxUnavailable": "100%"},
                                 "nodeSelector": {"kubernetes.io/os": "linux", "topology.kubernetes.io/zone": "zone-a"},
                                 "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 5}},
                "proxy": {"updateStrategy": {"maxUnavailable": "100%"}, "resources": {"requests": {"cpu": 0}}}})),
    ]
}

/// Good MeshGateways at the limits: (case, name, spec).
#[rustfmt::skip]
fn good_gateways() -> Vec<(&'static str, String, Value)> {
    vec![
        ("longest gateway name", format!("g{}", "1".repeat(62)), json!({"mesh": "a".repeat(30)})),
        ("autoscaled, with annotations", "auto".into(),
         json!({"mesh": "m", "autoscaling": {"minReplicas": 2, "maxReplicas": 5},
                "podDisruptionBudget": {"minAvailable": "50%"},
                "service": {"type": "LoadBalancer",
                            "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}},
                "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "100m"}}})),
    ]
}

#[tokio::test]
async fn good_specs_at_the_limits_are_accepted_and_render_objects_the_api_server_accepts() {
    let bed = Bed::connect().await;
    install_crds(&bed);
    let ns = bed.namespace("e2e-accepted").await;
    let versions = VersionTable::builtin();
    let version = versions.get("1.0.0").expect("1.0.0 is supported");
    let mut wrong = Vec::new();
    for (case, name, spec) in good_meshes() {
        let obj = mesh_install(&name, spec);
        if let Err(e) = dry_run_create(&bed, &obj).await {
            wrong.push(format!("{case}: refused: {e}"));
            continue;
        }
        let mut mi: MeshInstall = serde_json::from_value(obj).expect("a MeshInstall");
        mi.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
        // The namespace must exist for a dry run of its objects; every case shares one.
        mi.spec.namespace = ns.name.clone();
        let revision = target_revision(&mi);
        let rendered = render_revision(&RevisionInput {
            mesh: &mi,
            revision: &revision,
            version,
            remote_secrets: &[],
        });
        match rendered {
            Ok(manifests) => {
                for m in &manifests {
                    if let Err(e) = dry_run_apply(&bed, m).await {
                        wrong.push(format!("{case} (revision {revision}): {e}"));
                    }
                }
            }
            Err(e) => wrong.push(format!("{case}: render failed: {e}")),
        }
    }
    for (case, name, spec) in good_gateways() {
        let mut obj = mesh_gateway(&name, spec);
        obj["metadata"]["namespace"] = json!(ns.name);
        if let Err(e) = dry_run_create(&bed, &obj).await {
            wrong.push(format!("{case}: refused: {e}"));
            continue;
        }
        let mut gw: MeshGateway = serde_json::from_value(obj).expect("a MeshGateway");
        gw.metadata.uid = Some("00000000-0000-0000-0000-000000000002".into());
        let revision = format!("{}-v1-0-0-rc-12345678901", "a".repeat(30));
        let input = GatewayInput {
            gateway: &gw,
            mesh: &gw.spec.mesh,
            revision: &revision,
            control_plane_namespace: &ns.name,
            external_control_plane: None,
            cluster: "Kubernetes",
            version,
            mesh_network: None,
        };
        match render_gateway(&input) {
            Ok(manifests) => {
                for m in &manifests {
                    if let Err(e) = dry_run_apply(&bed, m).await {
                        wrong.push(format!("{case}: {e}"));
                    }
                }
            }
            Err(e) => wrong.push(format!("{case}: render failed: {e}")),
        }
    }
    ns.delete().await;
    assert!(wrong.is_empty(), "good specs went wrong:\n{}", wrong.join("\n"));
}

/// A small deterministic generator (xorshift), so a failing case can be replayed from its
/// seed without a property-testing crate.
struct Gen(u64);

impl Gen {
    fn pick<T: Clone>(&mut self, options: &[T]) -> T {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        options[(self.0 % options.len() as u64) as usize].clone()
    }
}

impl Gen {
    /// One of `good`, or now and then (one time in ten) one of `bad`, so that most specs
    /// hold at most one mistake and every outcome is reached.
    fn field(&mut self, good: &[Value], bad: &[Value]) -> Value {
        if !bad.is_empty() && self.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]) == 0 {
            self.pick(bad)
        } else {
            self.pick(good)
        }
    }
}

/// A generated MeshInstall: every field good or, now and then, bad; null means not set.
#[rustfmt::skip]
fn generated_mesh(g: &mut Gen) -> Value {
    let name = g.field(&[json!("m"), json!("a".repeat(30)), json!(format!("x{}", "9".repeat(28)))],
                       &[json!("a".repeat(31)), json!("Upper")]);
    let mut spec = json!({
        "version": g.field(&[json!("1.0.0"), json!("1.1.0"), json!("1.0.0-rc.12345678901")],
                           &[json!("1.0.0-rc.123456789012"), json!("one")]),
        // CamelCase, and the lowercase spellings of earlier versions (still accepted).
        "profile": g.field(&[json!("Default"), json!("Minimal"), json!("Demo"), json!("HA"), json!("ha")],
                           &[json!("High-Availability")]),
        "namespace": g.field(&[json!("weft-gen")], &[json!("kube-system"), json!("default")]),
        "updateStrategy": {"type": g.field(&[json!("InPlace"), json!("RevisionBased")], &[])},
    });
    let cp = json!({
        "replicas": g.field(&[Value::Null, json!(0), json!(3)], &[]),
        "resources": g.field(&[Value::Null, json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}})],
                             &[json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}), json!({"requests": {"memory": "lots"}})]),
        "autoscaling": g.field(&[Value::Null, json!({"enabled": true, "minReplicas": 2, "maxReplicas": 5}), json!({"enabled": false})],
                               &[json!({"enabled": true, "minReplicas": 5, "maxReplicas": 2}), json!({"enabled": true, "minReplicas": 7})]),
        "podDisruptionBudget": g.field(&[Value::Null, json!({"minAvailable": "50%"}), json!({"maxUnavailable": 1}), json!({"enabled": true})],
                                       &[json!({"minAvailable": "150%"}), json!({"minAvailable": 1, "maxUnavailable": 1})]),
        "nodeSelector": g.field(&[Value::Null, json!({"topology.kubernetes.io/zone": "zone-a"})],
                                &[json!({"-x": "a"}), json!({"zone": "a b"})]),
        "tolerations": g.field(&[Value::Null, json!([{"operator": "Exists"}])], &[json!([{"key": "k", "operator": "Nope"}])]),
    });
    let proxy = json!({
        "updateStrategy": g.field(&[Value::Null, json!({"maxUnavailable": 1}), json!({"maxUnavailable": "10%"}),
                                    json!({"maxUnavailable": 0}), json!({"maxSurge": 0}), json!({"maxSurge": "100%", "maxUnavailable": 0})],
                                  &[json!({"maxUnavailable": 0, "maxSurge": 0}), json!({"maxUnavailable": 1, "maxSurge": 1}), json!({"maxUnavailable": -1})]),
        "concurrency": g.field(&[Value::Null, json!(2)], &[]),
    });
    let selectors = g.field(&[Value::Null, json!([{"matchLabels": {"mesh": "on"}}])],
                            &[json!([{"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}])]);
    spec["controlPlane"] = strip_nulls(cp);
    spec["proxy"] = strip_nulls(proxy);
    if !selectors.is_null() {
        spec["meshConfig"] = json!({"discoverySelectors": selectors});
    }
    mesh_install(name.as_str().unwrap_or_default(), spec)
}

/// A generated MeshGateway, the same way.
#[rustfmt::skip]
fn generated_gateway(g: &mut Gen) -> Value {
    let name = g.field(&[json!("gw"), json!(format!("g{}", "1".repeat(62)))],
                       &[json!(format!("g{}", "1".repeat(63))), json!("1gw")]);
    let spec = json!({
        "mesh": g.field(&[json!("m"), json!("a".repeat(30))], &[json!("a".repeat(31))]),
        "type": g.field(&[json!("Ingress"), json!("Egress"), json!("EastWest"), json!("eastwest")],
                        &[json!("East-West")]),
        "replicas": g.field(&[Value::Null, json!(0), json!(2)], &[]),
        "autoscaling": g.field(&[Value::Null, json!({"minReplicas": 2, "maxReplicas": 5})],
                               &[json!({"minReplicas": 6, "maxReplicas": 2})]),
        "podDisruptionBudget": g.field(&[Value::Null, json!({"minAvailable": "100%"})], &[json!({"maxUnavailable": "101%"})]),
        "service": g.field(&[Value::Null, json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}),
                             json!({"ports": [{"name": "http", "port": 80}, {"name": "alt", "port": 8080}]})],
                           &[json!({"ports": [{"name": "admin", "port": 15000}]}),
                             json!({"annotations": {"example.com/ok": "x", "bad key": "y"}})]),
        "resources": g.field(&[Value::Null, json!({"limits": {"cpu": "1"}})], &[json!({"requests": {"cpu": "-5"}})]),
    });
    mesh_gateway(name.as_str().unwrap_or_default(), strip_nulls(spec))
}

fn strip_nulls(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        obj.retain(|_, v| !v.is_null());
    }
    v
}

/// What became of one generated spec.
#[derive(Debug)]
enum Outcome {
    /// Refused at admission, with a message.
    Refused,
    /// Accepted; its objects passed a server-side dry run.
    Rendered,
    /// Accepted; the operator would stall, with a message.
    Stalled,
}

/// Judges one generated spec; `Err` says what went wrong.
async fn judge(bed: &Bed, ns: &str, mut obj: Value) -> Result<Outcome, String> {
    if obj["metadata"].get("namespace").is_some() {
        obj["metadata"]["namespace"] = json!(ns);
    }
    if let Err(e) = dry_run_create(bed, &obj).await {
        return match e.contains("422") || e.contains("Invalid") {
            true if e.len() > 40 => Ok(Outcome::Refused),
            _ => Err(format!("refused without a readable message: {e}")),
        };
    }
    let versions = VersionTable::builtin();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let rendered = if kind == "MeshInstall" {
        let mut mi: MeshInstall = serde_json::from_value(obj).map_err(|e| e.to_string())?;
        mi.metadata.uid = Some("00000000-0000-0000-0000-000000000003".into());
        mi.spec.namespace = ns.into();
        let Some(version) = versions.get(&mi.spec.version) else {
            // Stalled, reason UnsupportedVersion (decide's unit tests check its message).
            return Ok(Outcome::Stalled);
        };
        let revision = target_revision(&mi);
        render_revision(&RevisionInput {
            mesh: &mi,
            revision: &revision,
            version,
            remote_secrets: &[],
        })
    } else {
        let mut gw: MeshGateway = serde_json::from_value(obj).map_err(|e| e.to_string())?;
        gw.metadata.uid = Some("00000000-0000-0000-0000-000000000004".into());
        let revision = format!("{}-v1-0-0-rc-12345678901", gw.spec.mesh);
        let version = versions.get("1.0.0").ok_or("1.0.0 is supported")?;
        render_gateway(&GatewayInput {
            gateway: &gw,
            mesh: &gw.spec.mesh,
            revision: &revision,
            control_plane_namespace: ns,
            external_control_plane: None,
            cluster: "Kubernetes",
            version,
            mesh_network: None,
        })
    };
    match rendered {
        Err(e) if e.to_string().is_empty() => Err("stalled without a message".into()),
        Err(_) => Ok(Outcome::Stalled),
        Ok(manifests) => {
            for m in &manifests {
                dry_run_apply(bed, m).await?;
            }
            Ok(Outcome::Rendered)
        }
    }
}

/// Generated MeshInstalls and MeshGateways: each is refused at admission with a message,
/// or renders objects the API server accepts, or stalls with a message; never accepted and
/// then refused halfway through an apply.
#[tokio::test]
async fn generated_specs_are_refused_rendered_or_stalled_never_half_applied() {
    let bed = Bed::connect().await;
    install_crds(&bed);
    let ns = bed.namespace("e2e-generated").await;
    let seed = std::env::var("WEFT_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_u64);
    let mut g = Gen(seed);
    let mut counts = BTreeMap::new();
    let mut wrong = Vec::new();
    for i in 0..120 {
        let obj = if i % 2 == 0 {
            generated_mesh(&mut g)
        } else {
            generated_gateway(&mut g)
        };
        match judge(&bed, &ns.name, obj.clone()).await {
            Ok(outcome) => {
                let key = format!(
                    "{} {}",
                    obj["kind"].as_str().unwrap_or_default(),
                    match outcome {
                        Outcome::Refused => "refused",
                        Outcome::Rendered => "rendered",
                        Outcome::Stalled => "stalled",
                    }
                );
                *counts.entry(key).or_insert(0) += 1;
            }
            Err(e) => wrong.push(format!("case {i} (seed {seed:#x}): {e}\n  spec: {obj}")),
        }
    }
    ns.delete().await;
    println!("outcomes: {counts:?}");
    assert!(
        wrong.is_empty(),
        "{} generated specs went wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    for kind in ["MeshInstall", "MeshGateway"] {
        for what in ["refused", "rendered"] {
            assert!(
                counts.contains_key(&format!("{kind} {what}")),
                "the generator never produced a {kind} that was {what}: {counts:?}"
            );
        }
    }
}

/// The shipped ValidatingAdmissionPolicy (`config/policy`) lets a cluster admin constrain
/// image overrides: one from an allowed registry passes, another is refused with a message
/// that names the allowed prefixes, and a MeshInstall without overrides is never affected.
#[tokio::test]
async fn the_shipped_policy_constrains_image_overrides() {
    let bed = Bed::connect().await;
    install_crds(&bed);
    let _ = bed.kubectl(&["create", "namespace", "weft-system"]);
    let policy = weft_e2e::repo_root().join("config/policy");
    let policy = policy.to_str().expect("a UTF-8 path");
    bed.kubectl(&["apply", "-k", policy]).expect("apply the policy");
    let with_image = |image: &str| mesh_install("img", json!({"version": "1.0.0", "controlPlane": {"image": image}}));
    // The API server takes a moment to load a new policy: wait until it refuses.
    let refused = wait_for(
        "the policy to refuse an image from elsewhere",
        Duration::from_secs(30),
        || async {
            match dry_run_create(&bed, &with_image("evil.example.com/weft:1")).await {
                Err(e) => Ok(e),
                Ok(()) => Err("accepted"),
            }
        },
    )
    .await;
    let allowed = dry_run_create(&bed, &with_image("registry.example.com/weft/control-plane:1.0.0")).await;
    let plain = dry_run_create(&bed, &mesh_install("plain", json!({"version": "1.0.0"}))).await;
    let proxy = dry_run_create(
        &bed,
        &mesh_install(
            "px",
            json!({"version": "1.0.0", "proxy": {"image": "docker.io/someone/proxy:1"}}),
        ),
    )
    .await;
    let _ = bed.kubectl(&["delete", "-k", policy]);
    assert!(
        refused.contains("image overrides must start with an allowed prefix (registry.example.com/weft/")
            && refused.contains("refused: evil.example.com/weft:1"),
        "{refused}"
    );
    assert_eq!(allowed, Ok(()), "an image from the allowed registry");
    assert_eq!(plain, Ok(()), "a MeshInstall without overrides");
    assert!(
        proxy
            .as_ref()
            .is_err_and(|e| e.contains("refused: docker.io/someone/proxy:1")),
        "{proxy:?}"
    );
}

/// Every short name the cluster serves, with the resources (group/name) that carry it.
async fn short_names(bed: &Bed) -> Result<BTreeMap<String, Vec<String>>, kube::Error> {
    let client = &bed.client;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lists = vec![client.list_core_api_resources("v1").await?];
    for g in client.list_api_groups().await?.groups {
        if let Some(v) = g.preferred_version {
            lists.push(client.list_api_group_resources(&v.group_version).await?);
        }
    }
    for list in lists {
        for r in list.resources {
            for s in r.short_names.unwrap_or_default() {
                out.entry(s)
                    .or_default()
                    .push(format!("{}/{}", list.group_version, r.name));
            }
        }
    }
    Ok(out)
}

#[tokio::test]
async fn our_short_names_collide_with_nothing_the_cluster_serves() {
    let bed = Bed::connect().await;
    install_crds(&bed);
    let ours = [
        ("mi", "weft.dev/v1alpha1/meshinstalls"),
        ("mgw", "weft.dev/v1alpha1/meshgateways"),
        ("mrc", "weft.dev/v1alpha1/remoteclusters"),
    ];
    wait_for(
        "each of our short names to name only our kind",
        Duration::from_secs(30),
        || async {
            let names = short_names(&bed).await.map_err(|e| e.to_string())?;
            let seen: Vec<(&str, Option<&Vec<String>>)> = ours.iter().map(|(s, _)| (*s, names.get(*s))).collect();
            let unique = ours
                .iter()
                .all(|(s, r)| names.get(*s).is_some_and(|v| v.len() == 1 && v[0] == *r));
            // `rc` is ReplicationController's in every cluster: not ours.
            let rc = names
                .get("rc")
                .map(|v| v.iter().all(|r| r == "v1/replicationcontrollers"));
            if unique && rc == Some(true) {
                Ok(())
            } else {
                Err(format!("{seen:?}; rc: {:?}", names.get("rc")))
            }
        },
    )
    .await;
}
