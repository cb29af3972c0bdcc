//! Load assignments, and split-horizon EDS for multi-network meshes (pure).
//!
//! An endpoint on the client's network is sent as it is. One on another network M cannot be
//! dialled directly: it is replaced by M's east-west gateways, one entry per gateway, each
//! weighted by the number of M's endpoints of that service port in the cluster behind it,
//! in a locality per remote cluster (zone `""`, sub_zone = cluster), so the locality weights
//! still say how many endpoints each side holds. A network without a gateway cannot be
//! reached from elsewhere: its endpoints are left out for clients on other networks, and
//! [`endpoints_without_gateway`] counts them so the metric and status can say why.
//!
//! East-west gateway pods get the `Local` horizon: only their own network's endpoints,
//! never another network's gateways (no gateway-to-gateway loops).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, Locality, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use crate::xds::model::{self, NetworkGateway, Service, ServicePort};

/// The key of the EDS set for clients on a network no endpoint or gateway is on: every
/// endpoint is elsewhere for them. (Label values cannot hold `*`, so no network is named so.)
pub const OTHER_NETWORKS: &str = "*";

/// Which endpoints a client may dial, and how the others are reached.
#[derive(Clone, Copy, Debug)]
pub enum Horizon<'a> {
    /// One network: every endpoint as it is.
    All,
    /// A client on `network`: other networks' endpoints through their gateways.
    Client {
        /// The client's network.
        network: &'a str,
        /// The control plane's own network (what an endpoint without one is on).
        own: &'a str,
        /// East-west gateways by network.
        gateways: &'a BTreeMap<&'a str, Vec<&'a NetworkGateway>>,
    },
    /// An east-west gateway on `network`: that network's endpoints only.
    Local {
        /// The gateway's network.
        network: &'a str,
        /// The control plane's own network.
        own: &'a str,
    },
}

/// An endpoint's network: its own, else the control plane's.
pub fn network_of<'a>(e: &'a model::Endpoint, own: &'a str) -> &'a str {
    if e.network.is_empty() { own } else { &e.network }
}

/// Ready, non-terminating endpoints of one service port, with their target port, each
/// (cluster, address, port) once, sorted.
pub(super) fn usable<'a>(svc: &'a Service, port: &ServicePort) -> Vec<(&'a model::Endpoint, u16)> {
    let mut usable: Vec<(&model::Endpoint, u16)> = svc
        .endpoints
        .iter()
        .filter(|e| e.ready && !e.terminating)
        .filter_map(|e| e.ports.get(&port.name).map(|p| (e, *p)))
        .collect();
    usable.sort_by(|a, b| (&a.0.cluster, &a.0.address, a.1).cmp(&(&b.0.cluster, &b.0.address, b.1)));
    usable.dedup_by(|a, b| a.0.cluster == b.0.cluster && a.0.address == b.0.address && a.1 == b.1);
    usable
}

/// One locality's entries and its weight (the endpoints it stands for).
type Localities = BTreeMap<(String, String), (Vec<LbEndpoint>, u32)>;

/// The load assignment of one service port as a client behind `horizon` sees it: localities
/// by zone and mesh cluster (`sub_zone`; gRPC refuses an EDS response naming a locality
/// twice), each weighted by the endpoints it stands for (gRPC ignores unweighted ones).
pub fn load_assignment(name: &str, svc: &Service, port: &ServicePort, horizon: Horizon) -> ClusterLoadAssignment {
    let mut localities: Localities = BTreeMap::new();
    // Endpoints on another network, by (network, cluster): reached through gateways.
    let mut remote: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for (e, target) in usable(svc, port) {
        let direct = match horizon {
            Horizon::All => true,
            Horizon::Local { network, own } => {
                if network_of(e, own) != network {
                    continue;
                }
                true
            }
            Horizon::Client { network, own, .. } => network_of(e, own) == network,
        };
        if direct {
            let entry = localities
                .entry((e.zone.clone().unwrap_or_default(), e.cluster.clone()))
                .or_default();
            entry.0.push(lb_endpoint_for(&e.address, u32::from(target)));
            entry.1 += 1;
        } else if let Horizon::Client { own, .. } = horizon {
            *remote.entry((network_of(e, own), e.cluster.as_str())).or_default() += 1;
        }
    }
    if let Horizon::Client { gateways, .. } = horizon {
        add_gateways(&mut localities, &remote, gateways);
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: localities
            .into_iter()
            .map(|((zone, cluster), (lb_endpoints, weight))| LocalityLbEndpoints {
                locality: Some(Locality {
                    zone,
                    sub_zone: cluster,
                    ..Default::default()
                }),
                load_balancing_weight: Some(UInt32Value { value: weight }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Adds, for each remote (network, cluster) with `count` endpoints, that network's gateways
/// (the cluster's own when it has some, else every gateway of the network: they all reach
/// the network's endpoints), each weighted `count`, in locality ("", cluster).
fn add_gateways(
    localities: &mut Localities,
    remote: &BTreeMap<(&str, &str), u32>,
    gateways: &BTreeMap<&str, Vec<&NetworkGateway>>,
) {
    for ((network, cluster), count) in remote {
        let Some(all) = gateways.get(network).filter(|g| !g.is_empty()) else {
            continue;
        };
        let own_cluster: Vec<&&NetworkGateway> = all.iter().filter(|g| g.cluster == *cluster).collect();
        let chosen: Vec<&&NetworkGateway> = if own_cluster.is_empty() {
            all.iter().collect()
        } else {
            own_cluster
        };
        let entry = localities.entry((String::new(), cluster.to_string())).or_default();
        for g in chosen {
            let mut lb = lb_endpoint_for(&g.address, u32::from(g.port));
            lb.load_balancing_weight = Some(UInt32Value { value: *count });
            entry.0.push(lb);
        }
        entry.1 += count;
    }
}

/// Usable endpoints (each once per service) on networks without an east-west gateway, by
/// network: clients on other networks cannot reach them.
pub fn endpoints_without_gateway(
    services: &[Service],
    gateways: &[NetworkGateway],
    own: &str,
) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for svc in services {
        let mut seen = std::collections::BTreeSet::new();
        for e in svc.endpoints.iter().filter(|e| e.ready && !e.terminating) {
            let network = network_of(e, own);
            if gateways.iter().any(|g| g.network == network) {
                continue;
            }
            if seen.insert((&e.cluster, &e.address)) {
                *out.entry(network.to_string()).or_default() += 1;
            }
        }
    }
    out
}

/// Why `count` endpoints on `network` are left out for other networks, for a status
/// message (e.g. a RemoteCluster's).
pub fn without_gateway_message(network: &str, count: usize) -> String {
    let endpoints = if count == 1 { "endpoint" } else { "endpoints" };
    format!(
        "{count} {endpoints} on network {network} cannot be reached from other networks: the network has no east-west gateway with a load-balancer address (a MeshGateway of type eastwest for network {network}, whose Service carries the label {}={network})",
        crate::xds::discovery::network::NETWORK_LABEL
    )
}

/// EDS for every network of a multi-network mesh.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetworkEndpoints {
    /// What clients on the control plane's own network see (replaces the shared EDS set).
    pub own: BTreeMap<String, ClusterLoadAssignment>,
    /// What clients on each other network see; [`OTHER_NETWORKS`] for networks no endpoint
    /// or gateway is on.
    pub by_network: BTreeMap<String, BTreeMap<String, ClusterLoadAssignment>>,
    /// What east-west gateways on each network see, where that differs from what a client
    /// there sees (that is, where some endpoint is on another network).
    pub local: BTreeMap<String, BTreeMap<String, ClusterLoadAssignment>>,
    /// Usable endpoints on networks without a gateway, by network.
    pub without_gateway: BTreeMap<String, usize>,
}

/// Whether the mesh spans networks: the control plane names its network, or an endpoint or
/// gateway names one. A mesh that does not keeps its one shared EDS set.
pub fn multi_network(services: &[Service], gateways: &[NetworkGateway], own: &str) -> bool {
    !own.is_empty()
        || !gateways.is_empty()
        || services
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .any(|e| !e.network.is_empty())
}

/// Split-horizon EDS for every network (`None` for a single-network mesh).
pub fn translate(services: &[Service], gateways: &[NetworkGateway], own: &str) -> Option<NetworkEndpoints> {
    if !multi_network(services, gateways, own) {
        return None;
    }
    let mut by_gw_network: BTreeMap<&str, Vec<&NetworkGateway>> = BTreeMap::new();
    for g in gateways {
        by_gw_network.entry(g.network.as_str()).or_default().push(g);
    }
    let mut networks: std::collections::BTreeSet<&str> = by_gw_network.keys().copied().collect();
    networks.insert(own);
    networks.extend(
        services
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| network_of(e, own)),
    );
    let assignments = |horizon: Horizon| {
        let mut out = BTreeMap::new();
        for svc in services {
            for port in &svc.ports {
                let name = model::cluster_name(&svc.name, &svc.namespace, port.port);
                let cla = load_assignment(&name, svc, port, horizon);
                out.insert(name, cla);
            }
        }
        out
    };
    let client = |network| Horizon::Client {
        network,
        own,
        gateways: &by_gw_network,
    };
    let mut out = NetworkEndpoints {
        own: assignments(client(own)),
        without_gateway: endpoints_without_gateway(services, gateways, own),
        ..Default::default()
    };
    for n in networks.iter().copied().filter(|n| *n != own).chain([OTHER_NETWORKS]) {
        out.by_network.insert(n.to_string(), assignments(client(n)));
    }
    let usable_networks: std::collections::BTreeSet<&str> = services
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.ready && !e.terminating)
        .map(|e| network_of(e, own))
        .collect();
    for n in networks {
        if usable_networks.iter().any(|u| *u != n) {
            out.local
                .insert(n.to_string(), assignments(Horizon::Local { network: n, own }));
        }
    }
    Some(out)
}

/// One endpoint entry: `address:port`, healthy.
pub(super) fn lb_endpoint_for(address: &str, port: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: address.to_string(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        ..Default::default()
    }
}
