//! What Envoy itself would refuse, or leave dangling, in the configuration one client is
//! served: the checks Envoy's listener, route and cluster managers make when an update
//! arrives, done on the decoded resources (no Envoy binary runs here). A finding names the
//! resource and the problem as an operator would want to read it. Constraints Envoy's
//! protos declare (`protoc-gen-validate` rules) are checked by go-control-plane's
//! validators in the end-to-end tests, not here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, address, config_source, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RouteConfiguration, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::xds::serve::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const FILE_ACCESS_LOG: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const ZIPKIN: &str = "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig";
const HTTP_PROTOCOL_OPTIONS: &str = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The one key Envoy reads `HTTP_PROTOCOL_OPTIONS` under.
const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Which kind of Envoy client the configuration is for: what it must hold besides being
/// consistent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role<'a> {
    /// A node proxy: its outbound listener and the readiness listener its DaemonSet probes.
    NodeProxy {
        /// The outbound (workload) port.
        outbound: u16,
        /// The readiness port, answering `ready_path` with 200.
        ready: u16,
        /// The readiness path.
        ready_path: &'a str,
    },
    /// A gateway (any type): at least one listener.
    Gateway,
}

/// Every resource one client holds, decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Served {
    /// LDS.
    pub listeners: Vec<Listener>,
    /// RDS.
    pub routes: Vec<RouteConfiguration>,
    /// CDS.
    pub clusters: Vec<Cluster>,
    /// EDS.
    pub endpoints: Vec<ClusterLoadAssignment>,
}

/// One thing Envoy would refuse or leave dangling.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// The resource's type: `lds`, `rds`, `cds` or `eds`.
    pub kind: &'static str,
    /// The resource's name.
    pub name: String,
    /// What is wrong, and what Envoy does about it.
    pub problem: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}", self.kind, self.name, self.problem)
    }
}

impl Served {
    /// Decodes resources of the four types; any other type, or one that does not decode, is
    /// a finding (Envoy would NACK it).
    pub fn decode<'a>(resources: impl IntoIterator<Item = &'a Any>) -> (Served, Vec<Finding>) {
        let mut served = Served::default();
        let mut findings = Vec::new();
        for any in resources {
            let bad = |e: prost::DecodeError| Finding {
                kind: "resource",
                name: any.type_url.clone(),
                problem: format!("does not decode: {e}"),
            };
            match any.type_url.as_str() {
                LISTENER => Listener::decode(&any.value[..]).map(|r| served.listeners.push(r)),
                ROUTE => RouteConfiguration::decode(&any.value[..]).map(|r| served.routes.push(r)),
                CLUSTER => Cluster::decode(&any.value[..]).map(|r| served.clusters.push(r)),
                ENDPOINT => ClusterLoadAssignment::decode(&any.value[..]).map(|r| served.endpoints.push(r)),
                other => {
                    findings.push(Finding {
                        kind: "resource",
                        name: other.to_string(),
                        problem: "is not a type Envoy subscribes to over ADS here".to_string(),
                    });
                    Ok(())
                }
            }
            .unwrap_or_else(|e| findings.push(bad(e)));
        }
        (served, findings)
    }

    /// The route configuration names the listeners ask for over RDS.
    pub fn rds_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for l in &self.listeners {
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.as_ref()) {
                for f in &chain.filters {
                    if let Some(hcm) = typed::<HttpConnectionManager>(f.config_type.as_ref(), HCM)
                        && let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier
                    {
                        names.insert(rds.route_config_name.clone());
                    }
                }
            }
        }
        names
    }

    /// The load assignment names the EDS clusters ask for.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters.iter().filter_map(eds_service_name).collect()
    }
}

/// A network filter's typed config, if it is of type `url` and decodes.
fn typed<M: Message + Default>(config: Option<&filter::ConfigType>, url: &str) -> Option<M> {
    match config {
        Some(filter::ConfigType::TypedConfig(any)) if any.type_url == url => M::decode(&any.value[..]).ok(),
        _ => None,
    }
}

/// The load assignment an EDS cluster waits for: its `service_name`, else its own name.
fn eds_service_name(c: &Cluster) -> Option<String> {
    let eds = matches!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32
    );
    eds.then(|| {
        let service = c
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.as_str())
            .unwrap_or("");
        if service.is_empty() {
            c.name.clone()
        } else {
            service.to_string()
        }
    })
}

/// Checks a client's whole configuration as Envoy would take it, plus what `role` needs.
pub fn check(role: Role<'_>, served: &Served) -> Vec<Finding> {
    let mut c = Checker {
        served,
        clusters: served.clusters.iter().map(|c| c.name.as_str()).collect(),
        routes: served.routes.iter().map(|r| (r.name.as_str(), r)).collect(),
        findings: Vec::new(),
    };
    c.listeners();
    for r in &served.routes {
        c.route_configuration("rds", &r.name, r);
    }
    c.clusters();
    c.endpoints();
    c.role(role);
    c.findings.sort();
    c.findings.dedup();
    c.findings
}

struct Checker<'a> {
    served: &'a Served,
    clusters: BTreeSet<&'a str>,
    routes: BTreeMap<&'a str, &'a RouteConfiguration>,
    findings: Vec<Finding>,
}

impl Checker<'_> {
    fn find(&mut self, kind: &'static str, name: &str, problem: impl Into<String>) {
        self.findings.push(Finding {
            kind,
            name: name.to_string(),
            problem: problem.into(),
        });
    }

    fn listeners(&mut self) {
        let mut bound: BTreeMap<(String, u32), &str> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for l in &self.served.listeners {
            let name = l.name.as_str();
            if !names.insert(name) {
                self.find("lds", name, "two listeners have this name: Envoy rejects the update");
            }
            if l.api_listener.is_some() {
                self.find(
                    "lds",
                    name,
                    "is an api_listener: Envoy takes an api_listener only from its bootstrap and skips this one (\"can only be added via bootstrap configuration\")",
                );
                continue;
            }
            match socket(l.address.as_ref()) {
                Err(problem) if l.listener_specifier.is_none() => self.find("lds", name, problem),
                Err(_) => {}
                Ok(at) => {
                    let wildcard = (wildcard_of(&at.0), at.1);
                    let clash = bound
                        .get(&at)
                        .or_else(|| bound.get(&wildcard))
                        .or_else(|| {
                            // A wildcard address takes the port on every specific address.
                            at.0.parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| ip.is_unspecified())
                                .then(|| bound.iter().find(|((_, p), _)| *p == at.1).map(|(_, n)| n))
                                .flatten()
                        })
                        .copied();
                    if let Some(other) = clash {
                        self.find(
                            "lds",
                            name,
                            format!(
                                "binds {}:{} like listener {other:?}: Envoy refuses a listener on an address already taken",
                                at.0, at.1
                            ),
                        );
                    } else {
                        bound.insert(at, name);
                    }
                }
            }
            if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
                self.find("lds", name, "has no filter chains: Envoy refuses it");
            }
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.as_ref()) {
                self.filter_chain(name, &chain.filters);
            }
        }
    }

    fn filter_chain(&mut self, listener: &str, filters: &[envoy_types::pb::envoy::config::listener::v3::Filter]) {
        if filters.is_empty() {
            self.find(
                "lds",
                listener,
                "has a filter chain without filters: it would close every connection",
            );
        }
        for (i, f) in filters.iter().enumerate() {
            let last = i + 1 == filters.len();
            let any = match &f.config_type {
                Some(filter::ConfigType::TypedConfig(any)) => any,
                _ => {
                    self.find(
                        "lds",
                        listener,
                        format!("network filter {:?} has no typed_config", f.name),
                    );
                    continue;
                }
            };
            let terminal = match any.type_url.as_str() {
                HCM => {
                    match HttpConnectionManager::decode(&any.value[..]) {
                        Ok(hcm) => self.connection_manager(listener, &hcm),
                        Err(e) => self.find(
                            "lds",
                            listener,
                            format!("its HttpConnectionManager does not decode: {e}"),
                        ),
                    }
                    true
                }
                TCP_PROXY => {
                    match TcpProxy::decode(&any.value[..]) {
                        Ok(tcp) => self.tcp_proxy(listener, &tcp),
                        Err(e) => self.find("lds", listener, format!("its TcpProxy does not decode: {e}")),
                    }
                    true
                }
                other => {
                    self.find(
                        "lds",
                        listener,
                        format!(
                            "network filter {:?} has a type Envoy does not know here: {other}",
                            f.name
                        ),
                    );
                    continue;
                }
            };
            if terminal && !last {
                self.find(
                    "lds",
                    listener,
                    format!(
                        "terminal filter {:?} is not the last of its chain: Envoy refuses the listener",
                        f.name
                    ),
                );
            }
            if !terminal && last {
                self.find(
                    "lds",
                    listener,
                    format!("the last filter of a chain, {:?}, is not terminal", f.name),
                );
            }
        }
    }

    fn tcp_proxy(&mut self, listener: &str, tcp: &TcpProxy) {
        match &tcp.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => self.cluster_ref("lds", listener, c, "tcp_proxy"),
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                for c in &w.clusters {
                    self.cluster_ref("lds", listener, &c.name, "tcp_proxy");
                }
            }
            None => self.find("lds", listener, "tcp_proxy names no cluster"),
        }
    }

    fn cluster_ref(&mut self, kind: &'static str, name: &str, cluster: &str, what: &str) {
        if !self.clusters.contains(cluster) {
            self.find(
                kind,
                name,
                format!("{what} names cluster {cluster:?}, which CDS does not serve: Envoy answers 503 (no cluster)"),
            );
        }
    }

    fn connection_manager(&mut self, listener: &str, hcm: &HttpConnectionManager) {
        match &hcm.route_specifier {
            Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                let ads = rds
                    .config_source
                    .as_ref()
                    .and_then(|s| s.config_source_specifier.as_ref())
                    .is_some_and(|s| matches!(s, config_source::ConfigSourceSpecifier::Ads(_)));
                if !ads {
                    self.find(
                        "lds",
                        listener,
                        "its RDS config source is not ADS: the client has no other xDS server",
                    );
                }
                if !self.routes.contains_key(rds.route_config_name.as_str()) {
                    self.find(
                        "lds",
                        listener,
                        format!(
                            "asks RDS for {:?}, which no route configuration answers: Envoy keeps the listener warming and never serves it",
                            rds.route_config_name
                        ),
                    );
                }
            }
            Some(http_connection_manager::RouteSpecifier::RouteConfig(inline)) => {
                self.route_configuration("lds", listener, inline);
            }
            Some(_) => self.find("lds", listener, "uses scoped routes, which this mesh never serves"),
            None => self.find("lds", listener, "its HttpConnectionManager has no route configuration"),
        }
        if hcm.http_filters.is_empty() {
            self.find(
                "lds",
                listener,
                "its HttpConnectionManager has no HTTP filters: it needs the router last",
            );
        }
        for (i, f) in hcm.http_filters.iter().enumerate() {
            let last = i + 1 == hcm.http_filters.len();
            let url = match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(any)) => any.type_url.as_str(),
                _ => {
                    self.find("lds", listener, format!("HTTP filter {:?} has no typed_config", f.name));
                    continue;
                }
            };
            match url {
                ROUTER if !last => self.find(
                    "lds",
                    listener,
                    "the router is not the last HTTP filter: Envoy refuses the listener",
                ),
                ROUTER => {}
                RBAC if last => self.find(
                    "lds",
                    listener,
                    "the last HTTP filter is not the router: Envoy refuses the listener",
                ),
                RBAC => {
                    if let Some(Ok(rbac)) = decode_http_filter::<Rbac>(f) {
                        self.rbac(listener, &rbac);
                    }
                }
                other => self.find(
                    "lds",
                    listener,
                    format!("HTTP filter {:?} has a type Envoy does not know here: {other}", f.name),
                ),
            }
            if let Some(Err(e)) = decode_any_http_filter(f) {
                self.find(
                    "lds",
                    listener,
                    format!("HTTP filter {:?} does not decode: {e}", f.name),
                );
            }
        }
        for log in &hcm.access_log {
            let url = match &log.config_type {
                Some(envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(any)) => {
                    any.type_url.as_str()
                }
                _ => "",
            };
            if url != FILE_ACCESS_LOG {
                self.find(
                    "lds",
                    listener,
                    format!("access log {:?} has a type Envoy does not know here: {url:?}", log.name),
                );
            }
        }
        if let Some(provider) = hcm.tracing.as_ref().and_then(|t| t.provider.as_ref()) {
            use envoy_types::pb::envoy::config::trace::v3::{ZipkinConfig, tracing};
            match &provider.config_type {
                Some(tracing::http::ConfigType::TypedConfig(any)) if any.type_url == ZIPKIN => {
                    match ZipkinConfig::decode(&any.value[..]) {
                        Ok(z) => self.cluster_ref("lds", listener, &z.collector_cluster, "the Zipkin tracer"),
                        Err(e) => self.find("lds", listener, format!("the tracer does not decode: {e}")),
                    }
                }
                _ => self.find("lds", listener, "the tracer has a type Envoy does not know here"),
            }
        }
    }

    fn rbac(&mut self, listener: &str, rbac: &Rbac) {
        use envoy_types::pb::envoy::config::rbac::v3::permission;
        for policy in rbac.rules.iter().flat_map(|r| r.policies.values()) {
            for p in &policy.permissions {
                if let Some(permission::Rule::Header(h)) = &p.rule {
                    self.header_matcher("lds", listener, h);
                }
            }
        }
    }

    fn header_matcher(&mut self, kind: &'static str, name: &str, h: &HeaderMatcher) {
        if let Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(re)),
            ..
        })) = &h.header_match_specifier
        {
            self.regex(kind, name, re);
        }
    }

    fn regex(&mut self, kind: &'static str, name: &str, re: &RegexMatcher) {
        if let Err(e) = regex::Regex::new(&re.regex) {
            self.find(
                kind,
                name,
                format!("regular expression {:?} does not compile: {e}", re.regex),
            );
        }
    }

    fn route_configuration(&mut self, kind: &'static str, name: &str, rc: &RouteConfiguration) {
        let mut vhost_names = BTreeSet::new();
        let mut domains: BTreeMap<String, &str> = BTreeMap::new();
        for vh in &rc.virtual_hosts {
            if !vhost_names.insert(vh.name.as_str()) {
                self.find(
                    kind,
                    name,
                    format!(
                        "two virtual hosts are named {:?}: Envoy rejects the route configuration",
                        vh.name
                    ),
                );
            }
            if vh.domains.is_empty() {
                self.find(kind, name, format!("virtual host {:?} has no domains", vh.name));
            }
            for d in &vh.domains {
                let key = d.to_ascii_lowercase();
                if let Some(other) = domains.get(&key) {
                    self.find(
                        kind,
                        name,
                        format!("domain {d:?} is in virtual hosts {other:?} and {:?}: Envoy rejects the route configuration", vh.name),
                    );
                } else {
                    domains.insert(key, vh.name.as_str());
                }
                let stars = d.matches('*').count();
                if d != "*" && (stars > 1 || (stars == 1 && !d.starts_with('*') && !d.ends_with('*'))) {
                    self.find(
                        kind,
                        name,
                        format!("domain {d:?} has a wildcard Envoy does not accept (only a leading or trailing one)"),
                    );
                }
            }
            for r in &vh.routes {
                let what = format!("route {:?} of virtual host {:?}", r.name, vh.name);
                match &r.r#match {
                    Some(m) => {
                        if m.path_specifier.is_none() {
                            self.find(kind, name, format!("{what} matches no path"));
                        }
                        if let Some(route_match::PathSpecifier::SafeRegex(re)) = &m.path_specifier {
                            self.regex(kind, name, re);
                        }
                        for h in &m.headers {
                            self.header_matcher(kind, name, h);
                        }
                        let connect = matches!(m.path_specifier, Some(route_match::PathSpecifier::ConnectMatcher(_)));
                        if connect {
                            self.connect_route(kind, name, &what, r);
                        }
                    }
                    None => self.find(kind, name, format!("{what} has no match")),
                }
                match &r.action {
                    Some(route::Action::Route(action)) => match &action.cluster_specifier {
                        Some(route_action::ClusterSpecifier::Cluster(c)) => self.cluster_ref(kind, name, c, &what),
                        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                            let total: u64 = w
                                .clusters
                                .iter()
                                .map(|c| u64::from(c.weight.as_ref().map_or(0, |w| w.value)))
                                .sum();
                            if total == 0 {
                                self.find(kind, name, format!("{what} splits over weights that sum to 0"));
                            }
                            for c in &w.clusters {
                                self.cluster_ref(kind, name, &c.name, &what);
                            }
                        }
                        _ => self.find(
                            kind,
                            name,
                            format!("{what} names its cluster in a way this mesh never serves"),
                        ),
                    },
                    Some(route::Action::DirectResponse(d)) => {
                        if !(200..600).contains(&d.status) {
                            self.find(
                                kind,
                                name,
                                format!("{what} answers status {}, outside 200..599", d.status),
                            );
                        }
                    }
                    Some(_) => {}
                    None => self.find(kind, name, format!("{what} has no action")),
                }
            }
        }
    }

    /// A CONNECT route must terminate the tunnel (an upgrade config for CONNECT with a
    /// connect config) or Envoy forwards the CONNECT request upstream as it is.
    fn connect_route(
        &mut self,
        kind: &'static str,
        name: &str,
        what: &str,
        r: &envoy_types::pb::envoy::config::route::v3::Route,
    ) {
        let terminates = match &r.action {
            Some(route::Action::Route(a)) => a
                .upgrade_configs
                .iter()
                .any(|u| u.upgrade_type.eq_ignore_ascii_case("CONNECT") && u.connect_config.is_some()),
            _ => false,
        };
        if !terminates {
            self.find(
                kind,
                name,
                format!("{what} matches CONNECT but does not terminate it (no CONNECT upgrade with connect_config)"),
            );
        }
    }

    fn clusters(&mut self) {
        let served_eds: BTreeSet<&str> = self.served.endpoints.iter().map(|e| e.cluster_name.as_str()).collect();
        let mut names = BTreeSet::new();
        for c in &self.served.clusters {
            let name = c.name.as_str();
            if !names.insert(name) {
                self.find("cds", name, "two clusters have this name: Envoy rejects the update");
            }
            let kind = match c.cluster_discovery_type {
                Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(t).ok(),
                Some(cluster::ClusterDiscoveryType::ClusterType(_)) => {
                    self.find("cds", name, "is a custom cluster type Envoy does not know here");
                    continue;
                }
                None => Some(cluster::DiscoveryType::Static),
            };
            let provided = c.lb_policy == cluster::LbPolicy::ClusterProvided as i32;
            match kind {
                Some(cluster::DiscoveryType::Eds) => {
                    let service = eds_service_name(c).unwrap_or_default();
                    if c.eds_cluster_config
                        .as_ref()
                        .and_then(|e| e.eds_config.as_ref())
                        .is_none()
                    {
                        self.find("cds", name, "is an EDS cluster without an EDS config source");
                    }
                    if !served_eds.contains(service.as_str()) {
                        self.find(
                            "cds",
                            name,
                            format!("is an EDS cluster whose load assignment {service:?} is not served: Envoy keeps it warming and it has no endpoints"),
                        );
                    }
                    if provided {
                        self.find(
                            "cds",
                            name,
                            "has lb_policy CLUSTER_PROVIDED, which only an ORIGINAL_DST cluster may have",
                        );
                    }
                }
                Some(cluster::DiscoveryType::OriginalDst) => {
                    if !provided {
                        self.find(
                            "cds",
                            name,
                            "is an ORIGINAL_DST cluster: Envoy requires lb_policy CLUSTER_PROVIDED",
                        );
                    }
                    if c.load_assignment.is_some() {
                        self.find(
                            "cds",
                            name,
                            "is an ORIGINAL_DST cluster with a load assignment, which Envoy refuses",
                        );
                    }
                }
                Some(
                    cluster::DiscoveryType::Static
                    | cluster::DiscoveryType::StrictDns
                    | cluster::DiscoveryType::LogicalDns,
                ) => {
                    let empty = c
                        .load_assignment
                        .as_ref()
                        .is_none_or(|l| l.endpoints.iter().all(|e| e.lb_endpoints.is_empty()));
                    if empty {
                        self.find("cds", name, "has no endpoints in its load assignment");
                    }
                    if provided {
                        self.find(
                            "cds",
                            name,
                            "has lb_policy CLUSTER_PROVIDED, which only an ORIGINAL_DST cluster may have",
                        );
                    }
                }
                None => self.find("cds", name, "has an unknown discovery type"),
            }
            for (key, any) in &c.typed_extension_protocol_options {
                if key != HTTP_PROTOCOL_OPTIONS_KEY || any.type_url != HTTP_PROTOCOL_OPTIONS {
                    self.find(
                        "cds",
                        name,
                        format!(
                            "protocol options {key:?} of type {:?} are not known to Envoy here",
                            any.type_url
                        ),
                    );
                }
            }
            if c.connect_timeout
                .as_ref()
                .is_some_and(|d| d.seconds < 0 || (d.seconds == 0 && d.nanos <= 0))
            {
                self.find("cds", name, "has a connect timeout that is not positive");
            }
        }
    }

    fn endpoints(&mut self) {
        for cla in &self.served.endpoints {
            let name = cla.cluster_name.as_str();
            for locality in &cla.endpoints {
                for lb in &locality.lb_endpoints {
                    let address = match &lb.host_identifier {
                        Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e.address.as_ref(),
                        _ => None,
                    };
                    match socket(address) {
                        Ok((ip, _)) if ip.parse::<std::net::IpAddr>().is_err() => self.find(
                            "eds",
                            name,
                            format!("endpoint {ip:?} is not an IP address: Envoy refuses host names in EDS"),
                        ),
                        Ok(_) => {}
                        Err(problem) => self.find("eds", name, format!("an endpoint {problem}")),
                    }
                }
            }
        }
    }

    fn role(&mut self, role: Role<'_>) {
        let ports: BTreeMap<u32, &Listener> = self
            .served
            .listeners
            .iter()
            .filter_map(|l| socket(l.address.as_ref()).ok().map(|(_, p)| (p, l)))
            .collect();
        match role {
            Role::Gateway => {
                if ports.is_empty() {
                    self.find("lds", "", "a gateway is served no socket listener: it accepts nothing");
                }
            }
            Role::NodeProxy {
                outbound,
                ready,
                ready_path,
            } => {
                if !ports.contains_key(&u32::from(outbound)) {
                    self.find(
                        "lds",
                        "",
                        format!("no listener on the outbound port {outbound}: workloads' calls are refused"),
                    );
                }
                let answers = ports
                    .get(&u32::from(ready))
                    .is_some_and(|l| self.answers_ok(l, ready_path));
                if !answers {
                    self.find(
                        "lds",
                        "",
                        format!("nothing answers {ready_path} on port {ready} with 200: the DaemonSet's readiness probe would fail"),
                    );
                }
            }
        }
    }

    /// Whether a listener answers `GET path` with 200 by itself (a direct response).
    fn answers_ok(&self, l: &Listener, path: &str) -> bool {
        let configs: Vec<RouteConfiguration> = l
            .filter_chains
            .iter()
            .flat_map(|c| &c.filters)
            .filter_map(|f| typed::<HttpConnectionManager>(f.config_type.as_ref(), HCM))
            .filter_map(|hcm| match hcm.route_specifier {
                Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => Some(rc),
                Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                    self.routes.get(rds.route_config_name.as_str()).map(|r| (*r).clone())
                }
                _ => None,
            })
            .collect();
        configs
            .iter()
            .flat_map(|rc| &rc.virtual_hosts)
            .flat_map(|vh| &vh.routes)
            .any(|r| {
                let matches = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
                    Some(route_match::PathSpecifier::Path(p)) => p == path,
                    Some(route_match::PathSpecifier::Prefix(p)) => path.starts_with(p.as_str()),
                    _ => false,
                };
                matches && matches!(&r.action, Some(route::Action::DirectResponse(d)) if d.status == 200)
            })
    }
}

/// A request as Envoy's router sees it, for [`route_for`].
#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    /// `:authority` (or `Host`), with the port when the client sent one.
    pub authority: &'a str,
    /// `CONNECT`: only `connect_matcher` routes match, and no path is matched.
    pub connect: bool,
    /// `:path` (ignored for CONNECT).
    pub path: &'a str,
    /// Request headers, lowercase names.
    pub headers: &'a [(&'a str, &'a str)],
}

/// The route Envoy's router picks for `req` in `rc`: the virtual host whose domain matches
/// best (exact, then the longest `*.suffix`, then the longest `prefix*`, then `*`), then its
/// first route that matches.
pub fn route_for<'r>(
    rc: &'r RouteConfiguration,
    req: &Request,
) -> Option<&'r envoy_types::pb::envoy::config::route::v3::Route> {
    let host = req.authority.to_ascii_lowercase();
    let mut best: Option<(u8, usize, &envoy_types::pb::envoy::config::route::v3::VirtualHost)> = None;
    for vh in &rc.virtual_hosts {
        for d in &vh.domains {
            let d = d.to_ascii_lowercase();
            let rank = if d == host {
                Some((3, d.len()))
            } else if d == "*" {
                Some((0, 0))
            } else if let Some(suffix) = d.strip_prefix('*') {
                (host.ends_with(suffix) && host.len() > suffix.len()).then_some((2, suffix.len()))
            } else if let Some(prefix) = d.strip_suffix('*') {
                (host.starts_with(prefix) && host.len() > prefix.len()).then_some((1, prefix.len()))
            } else {
                None
            };
            if let Some((r, len)) = rank
                && best.is_none_or(|(br, bl, _)| (r, len) > (br, bl))
            {
                best = Some((r, len, vh));
            }
        }
    }
    let (_, _, vh) = best?;
    vh.routes.iter().find(|r| {
        let Some(m) = &r.r#match else { return false };
        let path = match (&m.path_specifier, req.connect) {
            (Some(route_match::PathSpecifier::ConnectMatcher(_)), connect) => connect,
            (_, true) => false,
            (Some(route_match::PathSpecifier::Prefix(p)), _) => req.path.starts_with(p.as_str()),
            (Some(route_match::PathSpecifier::Path(p)), _) => req.path == p,
            (Some(route_match::PathSpecifier::SafeRegex(re)), _) => {
                regex::Regex::new(&format!("^(?:{})$", re.regex)).is_ok_and(|re| re.is_match(req.path))
            }
            _ => false,
        };
        path && m.headers.iter().all(|h| {
            let value = req.headers.iter().find(|(n, _)| *n == h.name).map(|(_, v)| *v);
            match (&h.header_match_specifier, value) {
                (Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)), Some(v)) => match &sm.match_pattern {
                    Some(string_matcher::MatchPattern::Exact(e)) => v == e,
                    Some(string_matcher::MatchPattern::SafeRegex(re)) => {
                        regex::Regex::new(&format!("^(?:{})$", re.regex)).is_ok_and(|re| re.is_match(v))
                    }
                    Some(string_matcher::MatchPattern::Prefix(p)) => v.starts_with(p.as_str()),
                    _ => false,
                },
                (None, Some(_)) => true,
                _ => false,
            }
        })
    })
}

/// The clusters a route sends to (one, or a weighted split).
pub fn route_clusters(r: &envoy_types::pb::envoy::config::route::v3::Route) -> Vec<(String, u32)> {
    match &r.action {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
                .collect(),
            _ => vec![],
        },
        _ => vec![],
    }
}

fn decode_http_filter<M: Message + Default + Name>(
    f: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
) -> Option<Result<M, prost::DecodeError>> {
    match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(any)) => Some(M::decode(&any.value[..])),
        _ => None,
    }
}

/// Decodes a known HTTP filter's config, to tell a broken one.
fn decode_any_http_filter(
    f: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
) -> Option<Result<(), prost::DecodeError>> {
    use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return None;
    };
    match any.type_url.as_str() {
        ROUTER => Some(Router::decode(&any.value[..]).map(|_| ())),
        RBAC => Some(Rbac::decode(&any.value[..]).map(|_| ())),
        _ => None,
    }
}

/// A socket address as (ip or host, port), or what is wrong with it.
fn socket(address: Option<&Address>) -> Result<(String, u32), String> {
    let Some(address::Address::SocketAddress(sa)) = address.and_then(|a| a.address.as_ref()) else {
        return Err("has no socket address: Envoy refuses a listener or endpoint without one".to_string());
    };
    let port = match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) if (1..=65535).contains(&p) => p,
        Some(socket_address::PortSpecifier::PortValue(p)) => {
            return Err(format!("has port {p}, outside 1..65535"));
        }
        _ => return Err("has no port".to_string()),
    };
    if sa.address.is_empty() {
        return Err("has an empty address".to_string());
    }
    Ok((sa.address.clone(), port))
}

/// The wildcard address of `ip`'s family.
fn wildcard_of(ip: &str) -> String {
    if ip.contains(':') { "::" } else { "0.0.0.0" }.to_string()
}

#[cfg(test)]
#[path = "envoy_check_tests.rs"]
mod tests;
