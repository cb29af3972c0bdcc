//! One Kubernetes object → its part of discovery's model: a Service with its
//! EndpointSlices, an HTTPRoute (read untyped, as users have it), a MeshGateway.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};
use serde::Deserialize;

use crate::api::MeshGateway;
use crate::xds::model::{
    Backend, Endpoint, Gateway, GatewayPort, HeaderMatch, HttpRoute, Origin, ParentKind, ParentRef, PathMatch,
    RouteMatch, RouteRule, Service, ServicePort,
};

/// A MeshGateway of mesh `mesh` (any mesh when `None`), or `None` when it belongs to
/// another mesh or does not decode.
pub(super) fn gateway_model(g: &DynamicObject, mesh: Option<&str>) -> Option<Gateway> {
    let gateway = match g.clone().try_parse::<MeshGateway>() {
        Ok(gateway) => gateway,
        Err(e) => {
            // Every retranslation meets it again: debug, not warn. The operator reports it.
            tracing::debug!(gateway = %g.name_any(), error = %e, "skipping a MeshGateway that does not decode");
            return None;
        }
    };
    let spec = &gateway.spec;
    if mesh.is_some_and(|m| m != spec.mesh) {
        return None;
    }
    let ports = spec
        .ports()
        .iter()
        .filter_map(|p| {
            Some(GatewayPort {
                name: p.name.clone(),
                port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                container_port: u16::try_from(p.container_port()).ok().filter(|p| *p != 0)?,
            })
        })
        .collect();
    Some(Gateway {
        name: gateway.name_any(),
        namespace: gateway.namespace().unwrap_or_default(),
        ports,
        eastwest: spec.type_ == crate::api::mesh_gateway::GatewayType::EastWest,
    })
}

pub(super) fn service_model(s: &K8sService, slices: &[Arc<EndpointSlice>], origin: &Origin) -> Service {
    let spec = s.spec.clone().unwrap_or_default();
    let ports = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| {
            let name = p.name.clone().unwrap_or_default();
            let app = p.app_protocol.clone().unwrap_or_default();
            let http2 = app == "grpc"
                || app == "kubernetes.io/h2c"
                || app == "http2"
                || name.starts_with("grpc")
                || name.starts_with("http2");
            ServicePort {
                name,
                port: u16::try_from(p.port).unwrap_or(0),
                http2,
            }
        })
        .filter(|p| p.port != 0)
        .collect();
    let mut endpoints = Vec::new();
    for slice in slices {
        let ports: BTreeMap<String, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        for e in &slice.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            for address in &e.addresses {
                endpoints.push(Endpoint {
                    address: address.clone(),
                    ports: ports.clone(),
                    zone: e.zone.clone(),
                    cluster: origin.cluster.clone(),
                    network: origin.network.clone(),
                    // Unset `ready` means ready (EndpointSlice API).
                    ready: c.ready.unwrap_or(true),
                    terminating: c.terminating.unwrap_or(false),
                });
            }
        }
    }
    Service {
        name: s.name_any(),
        namespace: s.namespace().unwrap_or_default(),
        ports,
        endpoints: Arc::new(endpoints),
    }
}

/// Our minimal HTTPRoute types (until the gateway-api crate follows kube 5).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RouteSpec {
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    parent_refs: Vec<RefSpec>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RefSpec {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    section_name: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RuleSpec {
    #[serde(default)]
    matches: Vec<MatchSpec>,
    #[serde(default)]
    backend_refs: Vec<RefSpec>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MatchSpec {
    #[serde(default)]
    path: Option<ValueMatch>,
    #[serde(default)]
    headers: Vec<HeaderSpec>,
}

#[derive(Deserialize, Default)]
struct ValueMatch {
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize, Default)]
struct HeaderSpec {
    #[serde(default, rename = "type")]
    type_: Option<String>,
    name: String,
    value: String,
}

/// A backendRef names a Service unless it says otherwise (group "" and kind Service are
/// the defaults for backends).
fn is_service(group: &Option<String>, kind: &Option<String>) -> bool {
    group.as_deref().unwrap_or("").is_empty() && kind.as_deref().unwrap_or("Service") == "Service"
}

/// What a parentRef names, if it is ours. Its defaults are a Gateway API Gateway, so a
/// Service or MeshGateway parent must give both group and kind.
fn parent_kind(p: &RefSpec) -> Option<ParentKind> {
    match (p.group.as_deref()?, p.kind.as_deref()?) {
        ("", "Service") => Some(ParentKind::Service),
        (group, "MeshGateway") if group == MeshGateway::group(&()) => Some(ParentKind::MeshGateway),
        _ => None,
    }
}

/// An HTTPRoute attached to Services (GAMMA) and/or MeshGateways, or `None` when it attaches
/// to neither.
pub(super) fn route_model(r: &DynamicObject) -> Option<HttpRoute> {
    let spec: RouteSpec = serde_json::from_value(r.data.get("spec")?.clone()).ok()?;
    let ns = r.namespace().unwrap_or_default();
    let parents: Vec<ParentRef> = spec
        .parent_refs
        .iter()
        .filter_map(|p| {
            Some(ParentRef {
                kind: parent_kind(p)?,
                name: p.name.clone(),
                namespace: p.namespace.clone().unwrap_or_else(|| ns.clone()),
                port: p.port,
                section_name: p.section_name.clone(),
            })
        })
        .collect();
    if parents.is_empty() {
        return None;
    }
    let rules = spec
        .rules
        .iter()
        .map(|rule| RouteRule {
            matches: rule
                .matches
                .iter()
                .map(|m| RouteMatch {
                    path: m.path.as_ref().map(|p| {
                        let value = p.value.clone().unwrap_or_else(|| "/".to_string());
                        match p.type_.as_deref().unwrap_or("PathPrefix") {
                            "Exact" => PathMatch::Exact(value),
                            "RegularExpression" => PathMatch::Regex(value),
                            _ => PathMatch::Prefix(value),
                        }
                    }),
                    headers: m
                        .headers
                        .iter()
                        .map(|h| HeaderMatch {
                            name: h.name.clone(),
                            value: h.value.clone(),
                            regex: h.type_.as_deref() == Some("RegularExpression"),
                        })
                        .collect(),
                })
                .collect(),
            backends: rule
                .backend_refs
                .iter()
                .filter(|b| is_service(&b.group, &b.kind))
                .filter_map(|b| {
                    Some(Backend {
                        name: b.name.clone(),
                        namespace: b.namespace.clone().unwrap_or_else(|| ns.clone()),
                        port: b.port?,
                        weight: b.weight.unwrap_or(1),
                    })
                })
                .collect(),
        })
        .collect();
    Some(HttpRoute {
        name: r.name_any(),
        namespace: ns,
        hostnames: spec.hostnames,
        parents,
        rules,
    })
}
