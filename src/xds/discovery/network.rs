//! East-west gateways as discovery sees them (pure): the operator labels the Service of every
//! `eastwest` MeshGateway with the network it leads into ([`NETWORK_LABEL`]); the Service's
//! load-balancer status gives the address clients on other networks dial.

use k8s_openapi::api::core::v1::Service;

use crate::api::labels;
use crate::xds::model::NetworkGateway;

pub use crate::render::gateway::NETWORK_LABEL;

/// The port name of an east-west gateway's default port.
const TLS_PORT_NAME: &str = "tls";

/// The network gateways one Service stands for: one per load-balancer address. None when it
/// is not an east-west gateway's Service (no network label, or not a gateway's), or while
/// it has no load-balancer address yet.
pub fn network_gateways_of(svc: &Service, cluster: &str) -> Vec<NetworkGateway> {
    let meta_labels = svc.metadata.labels.as_ref();
    let network = meta_labels.and_then(|l| l.get(NETWORK_LABEL)).filter(|n| !n.is_empty());
    let is_gateway =
        meta_labels.and_then(|l| l.get(labels::COMPONENT)).map(String::as_str) == Some(labels::GATEWAY_COMPONENT);
    let (Some(network), true) = (network, is_gateway) else {
        return Vec::new();
    };
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(TLS_PORT_NAME))
        .or_else(|| ports.first())
        .and_then(|p| u16::try_from(p.port).ok())
        .filter(|p| *p != 0);
    let Some(port) = port else {
        return Vec::new();
    };
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    ingress
        .iter()
        .filter_map(|i| {
            i.ip.clone()
                .filter(|a| !a.is_empty())
                .or_else(|| i.hostname.clone().filter(|h| !h.is_empty()))
        })
        .map(|address| NetworkGateway {
            network: network.clone(),
            cluster: cluster.to_string(),
            address,
            port,
        })
        .collect()
}

/// The network gateways among `services` (of mesh cluster `cluster`), sorted and distinct.
pub fn network_gateways<'a>(services: impl IntoIterator<Item = &'a Service>, cluster: &str) -> Vec<NetworkGateway> {
    let mut out: Vec<NetworkGateway> = services
        .into_iter()
        .flat_map(|s| network_gateways_of(s, cluster))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(labels: serde_json::Value, ports: serde_json::Value, status: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "eastwest", "namespace": "weft-system", "labels": labels},
            "spec": {"ports": ports},
            "status": status,
        }))
        .unwrap()
    }

    fn gw_labels(network: &str) -> serde_json::Value {
        serde_json::json!({labels::COMPONENT: labels::GATEWAY_COMPONENT, NETWORK_LABEL: network})
    }

    #[test]
    fn addresses_come_from_ip_else_hostname_and_the_tls_port() {
        let s = svc(
            gw_labels("net-b"),
            serde_json::json!([{"name": "status", "port": 15021}, {"name": "tls", "port": 15443}]),
            serde_json::json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}, {}]}}),
        );
        let gws = network_gateways_of(&s, "b");
        let seen: Vec<(&str, &str, &str, u16)> = gws
            .iter()
            .map(|g| (g.network.as_str(), g.cluster.as_str(), g.address.as_str(), g.port))
            .collect();
        assert_eq!(
            seen,
            [
                ("net-b", "b", "203.0.113.7", 15443),
                ("net-b", "b", "lb.example.com", 15443)
            ]
        );
    }

    #[test]
    fn without_a_tls_port_the_first_port_counts() {
        let s = svc(
            gw_labels("net-b"),
            serde_json::json!([{"name": "x", "port": 8443}, {"name": "y", "port": 9443}]),
            serde_json::json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}),
        );
        assert_eq!(network_gateways_of(&s, "b")[0].port, 8443);
    }

    #[test]
    fn no_load_balancer_status_or_no_label_means_no_gateway() {
        let ports = serde_json::json!([{"name": "tls", "port": 15443}]);
        let pending = svc(
            gw_labels("net-b"),
            ports.clone(),
            serde_json::json!({"loadBalancer": {}}),
        );
        assert!(network_gateways_of(&pending, "b").is_empty());
        let no_status = svc(gw_labels("net-b"), ports.clone(), serde_json::Value::Null);
        assert!(network_gateways_of(&no_status, "b").is_empty());
        let lb = serde_json::json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}});
        let plain = svc(
            serde_json::json!({labels::COMPONENT: labels::GATEWAY_COMPONENT}),
            ports.clone(),
            lb.clone(),
        );
        assert!(network_gateways_of(&plain, "b").is_empty());
        let not_a_gateway = svc(serde_json::json!({NETWORK_LABEL: "net-b"}), ports, lb);
        assert!(network_gateways_of(&not_a_gateway, "b").is_empty());
    }

    #[test]
    fn gateways_are_sorted_and_distinct() {
        let lb = |ip: &str| serde_json::json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        let ports = serde_json::json!([{"name": "tls", "port": 15443}]);
        let a = svc(gw_labels("net-b"), ports.clone(), lb("203.0.113.9"));
        let b = svc(gw_labels("net-b"), ports, lb("203.0.113.1"));
        let all = network_gateways([&a, &b, &a], "b");
        let addresses: Vec<&str> = all.iter().map(|g| g.address.as_str()).collect();
        assert_eq!(addresses, ["203.0.113.1", "203.0.113.9"]);
    }
}
