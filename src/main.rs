//! The `weft` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use weft::api::MeshInstall;
use weft::render::{RevisionInput, render_revision};
use weft::versions::{ImageRegistry, VersionTable, operator_image};

/// Weft: a service-mesh operator with an embedded xDS control plane.
#[derive(Parser)]
#[command(name = "weft", version = weft::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the operator's version.
    Version,
    /// Print the CustomResourceDefinitions (or write one file each into a directory).
    Crd {
        /// Write `<crd name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// List the mesh versions this operator can install, oldest first.
    Versions {
        /// Also list every image to mirror for an air-gapped install: the operator's and each
        /// version's, one per line as `role version image [mirrored image]`.
        #[arg(long)]
        images: bool,
        #[command(flatten)]
        catalogue: CatalogueArgs,
    },
    /// Print what the operator would apply for a MeshInstall, for review.
    Render {
        /// The MeshInstall manifest (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[command(flatten)]
        catalogue: CatalogueArgs,
    },
    /// Give a primary cluster read access to a remote cluster: create, in the remote cluster
    /// (the current kubeconfig's), a ServiceAccount that may only read what discovery needs
    /// and a token for it; print the Secret and RemoteCluster to apply on the primary.
    RemoteSecret(RemoteSecretArgs),
    /// Run the operator against the current kubeconfig (or in-cluster configuration).
    Operator(OperatorArgs),
    /// Run the xDS control plane of one revision.
    ControlPlane(ControlPlaneArgs),
    /// Show what a control plane serves one Envoy (a node proxy or gateway), subscribing as
    /// that Envoy would; with `--check`, what Envoy would refuse or leave dangling in it.
    ConfigDump(ConfigDumpArgs),
    /// Obtain a workload certificate from the control plane's certificate service and
    /// write it, its key, the trust bundle and a gRPC xDS bootstrap (mTLS to the control
    /// plane) into a directory; keep them renewed unless `--once`.
    Agent(AgentArgs),
    /// A mesh root kept offline, and from it a plug-in CA Secret per cluster, so that the
    /// clusters of one mesh trust each other's workloads.
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(clap::Subcommand)]
enum CaCommand {
    /// Make a root (ECDSA P-256, 10 years): writes DIR/root-cert.pem and DIR/root-key.pem
    /// (owner-only). Keep DIR offline.
    Root {
        /// Where to write the root.
        #[arg(long)]
        out: PathBuf,
        /// The mesh's trust domain (meshConfig.trustDomain).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Print, for one cluster, the plug-in CA Secret (Istio's cacerts layout: a new
    /// intermediate from the root, its chain and the root) to apply in that cluster's mesh
    /// namespace and name in spec.security.ca.secretRef.
    Intermediate {
        /// The directory `weft ca root` wrote.
        #[arg(long)]
        root: PathBuf,
        /// The cluster's name (meshConfig.clusterName), in the intermediate's name.
        #[arg(long)]
        cluster: String,
        /// The mesh namespace of that cluster.
        #[arg(long, default_value = "weft-system")]
        namespace: String,
        /// The Secret's name.
        #[arg(long, default_value = "cacerts")]
        name: String,
        /// The mesh's trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
}

fn ca(command: CaCommand) -> Result<()> {
    use weft::identity::offline;
    match command {
        CaCommand::Root { out, trust_domain } => {
            offline::write_root(&out, &trust_domain)?;
            eprintln!(
                "wrote {} and {} (keep the key offline)",
                out.join("root-cert.pem").display(),
                out.join("root-key.pem").display()
            );
        }
        CaCommand::Intermediate {
            root,
            cluster,
            namespace,
            name,
            trust_domain,
        } => {
            let root = offline::read_root(&root)?;
            let secret = offline::cluster_secret(&root, &trust_domain, &cluster, &name, &namespace)?;
            print!("{}", weft::yaml::document(&secret)?);
        }
    }
    Ok(())
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The control plane's TLS port, `host:port` (weft-cp-<revision>.<mesh ns>.svc:15012).
    #[arg(long)]
    control_plane: String,
    /// The name the control plane's certificate must carry (default: the host).
    #[arg(long)]
    server_name: Option<String>,
    /// A ServiceAccount token with audience weft-ca (a projected token volume).
    #[arg(long)]
    token_file: PathBuf,
    /// The trust bundle: `root-cert.pem` of ConfigMap weft-root-ca.
    #[arg(long)]
    ca_file: PathBuf,
    /// Where to write cert-chain.pem, key.pem, root-cert.pem and bootstrap.json.
    #[arg(long)]
    out: PathBuf,
    /// The node id in the bootstrap (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// Node metadata in the bootstrap, KEY=VALUE (NAMESPACE, REVISION, ROLE, …); repeat it.
    #[arg(long = "metadata", value_parser = key_value)]
    metadata: Vec<(String, String)>,
    /// Write once and exit.
    #[arg(long)]
    once: bool,
    /// Seconds between reads of the trust bundle (and the gRPC client's re-reads of the
    /// files, through the bootstrap).
    #[arg(long, default_value_t = weft::identity::agent::BUNDLE_REFRESH.as_secs(), value_parser = clap::value_parser!(u64).range(1..=300))]
    bundle_refresh_seconds: u64,
}

fn key_value(text: &str) -> std::result::Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn agent(args: AgentArgs) -> Result<()> {
    weft::telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let node_id = args.node_id.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "weft-agent".into())
    });
    let opts = weft::identity::agent::AgentOptions {
        control_plane: args.control_plane,
        server_name: args.server_name,
        token_file: args.token_file,
        ca_file: args.ca_file,
        out: args.out,
        node_id,
        metadata: args.metadata.into_iter().collect(),
        ttl: None,
        bundle_refresh: std::time::Duration::from_secs(args.bundle_refresh_seconds),
    };
    runtime.block_on(weft::identity::agent::run(opts, args.once))?;
    Ok(())
}

#[derive(clap::Args)]
struct ConfigDumpArgs {
    /// The control plane's xDS address (`host:port`).
    #[arg(long)]
    xds: String,
    /// An Envoy bootstrap (JSON) whose node to be: the node proxies' `bootstrap.json` from
    /// ConfigMap `weft-proxy-<rev>`, or a gateway's.
    #[arg(long, conflicts_with_all = ["role", "namespace"])]
    bootstrap: Option<PathBuf>,
    /// Connect over TLS as the bootstrap's xDS cluster does (`--xds` then names the TLS
    /// port, 15012), with the agent's SDS files from this directory (a `weft agent --once`
    /// output). Without it the connection is plaintext (port 15010).
    #[arg(long, requires = "bootstrap")]
    identity_dir: Option<PathBuf>,
    /// The role to claim without a bootstrap: `node-proxy` or `gateway`.
    #[arg(long, requires = "namespace")]
    role: Option<String>,
    /// The namespace to claim (a gateway's own).
    #[arg(long)]
    namespace: Option<String>,
    /// The revision or tag to ask for.
    #[arg(long)]
    revision: Option<String>,
    /// The MeshGateway, with `--role gateway`.
    #[arg(long)]
    gateway: Option<String>,
    /// The network the client is on.
    #[arg(long)]
    network: Option<String>,
    /// Report what Envoy would refuse or leave dangling; exit 1 when anything is found.
    #[arg(long)]
    check: bool,
    /// Output: `table` or `json`.
    #[arg(short = 'o', long, default_value = "table")]
    output: String,
    /// Seconds to wait for every subscribed type to answer.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// Where the mesh versions and their images come from.
#[derive(clap::Args)]
struct CatalogueArgs {
    /// A YAML file of extra mesh versions and images: a list of {version, images: {controlPlane, proxy}}.
    #[arg(long, env = "WEFT_VERSIONS_FILE")]
    versions_file: Option<PathBuf>,
    /// Pull every mesh image from this mirror (`host[:port][/path]`) instead of its own
    /// registry, keeping each image's repository path.
    #[arg(long, env = "WEFT_IMAGE_REGISTRY")]
    image_registry: Option<String>,
}

impl CatalogueArgs {
    /// The mirror, checked.
    fn registry(&self) -> Result<Option<ImageRegistry>> {
        Ok(self.image_registry.as_deref().map(ImageRegistry::parse).transpose()?)
    }

    /// The version table as published: built in, plus the file.
    fn upstream(&self) -> Result<VersionTable> {
        Ok(match &self.versions_file {
            Some(f) => VersionTable::with_file(f)?,
            None => VersionTable::builtin(),
        })
    }

    /// The version table the operator uses: [`Self::upstream`], pulled from the mirror.
    fn table(&self) -> Result<VersionTable> {
        let table = self.upstream()?;
        Ok(match self.registry()? {
            Some(registry) => table.mirrored(&registry),
            None => table,
        })
    }
}

#[derive(clap::Args)]
struct RemoteSecretArgs {
    /// The remote cluster's kubeconfig (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The remote cluster's name in the mesh.
    #[arg(long)]
    name: String,
    /// The MeshInstall it joins.
    #[arg(long)]
    mesh: String,
    /// The mesh's namespace on the primary, where the Secret and RemoteCluster go.
    #[arg(long)]
    mesh_namespace: String,
    /// The remote cluster's network, when it is not the mesh's.
    #[arg(long)]
    network: Option<String>,
    /// The address the primary reaches the remote API server at (default: the kubeconfig's).
    #[arg(long)]
    server: Option<String>,
    /// The remote namespace for the ServiceAccount and its token.
    #[arg(long, default_value = "weft-system")]
    namespace: String,
    /// Print what would be created in the remote cluster, and create nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct ControlPlaneArgs {
    /// The revision this control plane serves.
    #[arg(long)]
    revision: String,
    /// A kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Where plaintext ADS listens.
    #[arg(long, default_value = "0.0.0.0:15010")]
    xds_address: SocketAddr,
    /// Serve no plaintext ADS: only the TLS port, where every client is authenticated
    /// (`controlPlane.plaintextXds: false`).
    #[arg(long, requires = "ca_secret")]
    no_plaintext_xds: bool,
    /// Where `/metrics` and `/ready` listen.
    #[arg(long, default_value = "0.0.0.0:15014")]
    monitoring_address: SocketAddr,
    /// The mesh config file (the operator mounts it at /etc/weft/mesh.yaml).
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// Milliseconds of quiet that end a burst of changes before a push. A change that comes
    /// at least this long after the last push is pushed at once (it starts no burst).
    #[arg(long, default_value_t = 10)]
    debounce_ms: u64,
    /// Longest wait, in milliseconds, from a change that came during a burst to its push.
    #[arg(long, default_value_t = 100)]
    debounce_max_ms: u64,
    /// Largest xDS request accepted, in bytes (its encoded size).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    xds_max_request_bytes: usize,
    /// Response bytes one stream may have queued that its client has not read (one
    /// message is always accepted, however large).
    #[arg(long, default_value_t = 64 * 1024)]
    xds_max_queued_bytes: usize,
    /// Seconds a response may wait for that queue to drain before the stream is closed.
    #[arg(long, default_value_t = 30)]
    xds_send_timeout: u64,
    /// Resource names one stream may subscribe to, over all types.
    #[arg(long, default_value_t = 20_000)]
    xds_max_resource_names: usize,
    /// Streams one client identity (node id) may have open at once.
    #[arg(long, default_value_t = 16)]
    xds_max_streams_per_client: usize,
    /// HTTP/2 concurrent streams per connection.
    #[arg(long, default_value_t = 100)]
    xds_max_streams_per_connection: u32,
    /// Seconds between HTTP/2 keepalive pings.
    #[arg(long, default_value_t = 30)]
    xds_keepalive_interval: u64,
    /// Seconds a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, default_value_t = 10)]
    xds_keepalive_timeout: u64,
    /// Seconds a connection may stay open without a stream (0: forever).
    #[arg(long, default_value_t = 300)]
    xds_idle_timeout: u64,
    /// The mesh namespace, where the mesh's RemoteClusters and their Secrets are.
    #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system")]
    mesh_namespace: String,
    /// Seconds the first snapshot waits for the remote clusters known at start to list
    /// (then it goes on without them, and they join when they list).
    #[arg(long, default_value_t = 30)]
    remote_sync_timeout_seconds: u64,
    /// The issuer Secret (in the mesh namespace) to sign workload certificates with. With
    /// it the TLS port serves the certificate service and authenticated xDS.
    #[arg(long)]
    ca_secret: Option<String>,
    /// Where the TLS port listens (with --ca-secret).
    #[arg(long, default_value = "0.0.0.0:15012")]
    secure_address: SocketAddr,
    /// A name or address the TLS port's certificate is also for, beyond the revision's
    /// Service names (repeat it for several).
    #[arg(long = "tls-server-name")]
    tls_server_names: Vec<String>,
    /// The longest workload certificate lifetime, such as 24h or 90m.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    workload_cert_ttl: std::time::Duration,
}

/// A duration of hours, minutes and seconds, within the bounds `workloadCertTTL` has.
fn parse_ttl(text: &str) -> std::result::Result<std::time::Duration, String> {
    use weft::api::security::{MAX_WORKLOAD_CERT_TTL, MIN_WORKLOAD_CERT_TTL, parse_duration};
    let d = parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration such as 24h, 90m or 1h30m"))?;
    if d < MIN_WORKLOAD_CERT_TTL || d > MAX_WORKLOAD_CERT_TTL {
        return Err(format!("{text} is outside 1m..168h"));
    }
    Ok(d)
}

impl ControlPlaneArgs {
    /// The TLS port's settings, when there is a CA to sign with: the serving certificate is
    /// for the revision's Service names and any names given.
    fn secure(&self) -> Option<weft::xds::control_plane::SecureOptions> {
        let secret = self.ca_secret.clone()?;
        let service = weft::render::revision::control_plane_name(&self.revision);
        let ns = &self.mesh_namespace;
        let mut names = vec![
            format!("{service}.{ns}.svc"),
            format!("{service}.{ns}.svc.cluster.local"),
            format!("{service}.{ns}"),
            service,
        ];
        names.extend(self.tls_server_names.iter().cloned());
        Some(weft::xds::control_plane::SecureOptions {
            address: self.secure_address,
            ca_secret: secret,
            server_names: names,
            workload_cert_ttl: self.workload_cert_ttl,
        })
    }
    /// The xDS limits the flags set.
    fn limits(&self) -> weft::xds::control_plane::Limits {
        use std::time::Duration;
        weft::xds::control_plane::Limits {
            frame: weft::xds::serve::grpc::FrameLimits {
                max_request_bytes: self.xds_max_request_bytes,
                max_queued_bytes: self.xds_max_queued_bytes,
                send_timeout: Duration::from_secs(self.xds_send_timeout),
            },
            stream: weft::xds::serve::server::StreamLimits {
                max_names: self.xds_max_resource_names,
                max_streams_per_client: self.xds_max_streams_per_client,
            },
            max_streams_per_connection: self.xds_max_streams_per_connection,
            keepalive_interval: Duration::from_secs(self.xds_keepalive_interval),
            keepalive_timeout: Duration::from_secs(self.xds_keepalive_timeout),
            idle_timeout: (self.xds_idle_timeout > 0).then(|| Duration::from_secs(self.xds_idle_timeout)),
        }
    }
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// A kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Where `/metrics` listens.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
    /// Where `/healthz` and `/readyz` listen.
    #[arg(long, default_value = "0.0.0.0:8081")]
    health_address: SocketAddr,
    /// The namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system")]
    leader_election_namespace: String,
    /// The leader-election Lease's name.
    #[arg(long, default_value = "weft-operator")]
    lease_name: String,
    /// Seconds a lease is valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Seconds before others may take the lease over that a holder which cannot renew it
    /// steps down (it renews every (duration - grace) / 4 seconds).
    #[arg(long, default_value_t = 5)]
    lease_grace: u64,
    /// This process's identity in the Lease (default: pod name or host name, and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[command(flatten)]
    catalogue: CatalogueArgs,
    /// Reconciles that may run at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Seconds between checks of each remote cluster's API server and credential (an
    /// unreachable one is retried sooner, from 5 s, doubling up to this).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    remote_recheck_seconds: u64,
    /// Seconds a written trust bundle may take to reach every control plane and agent
    /// (the kubelet's ConfigMap refresh plus the agents' re-read): a root rotation trusts
    /// a new root for at least this long before signing with it (at least 20).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(20..))]
    bundle_propagation_seconds: u64,
}

/// The operator's runtime worker threads.
const OPERATOR_WORKERS: usize = 2;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("weft {}", weft::VERSION);
            Ok(())
        }
        Command::Crd { out_dir } => crd(out_dir.as_deref()),
        Command::Versions { images, catalogue } => versions(images, &catalogue),
        Command::Render { file, catalogue } => render(&file, &catalogue),
        Command::RemoteSecret(args) => remote_secret(args),
        Command::Operator(args) => operator(args),
        Command::ControlPlane(args) => control_plane(args),
        Command::ConfigDump(args) => config_dump(args),
        Command::Agent(args) => agent(args),
        Command::Ca(command) => ca(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_dump(args: ConfigDumpArgs) -> Result<()> {
    use weft::config_dump;
    use weft::envoy_check::{self, Role};
    use weft::xds::translate::node_proxy;
    if args.output != "table" && args.output != "json" {
        return Err(format!("-o {}: choose table or json", args.output).into());
    }
    let mut tls = None;
    let node = match &args.bootstrap {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let shown = path.display().to_string();
            if let Some(dir) = &args.identity_dir {
                tls = config_dump::tls_from_bootstrap(&shown, &text, Some(dir))?;
                if tls.is_none() {
                    return Err(format!("{shown}: its xds cluster does not use TLS; leave out --identity-dir").into());
                }
            }
            config_dump::node_from_bootstrap(&shown, &text)?
        }
        None => {
            let role = args
                .role
                .clone()
                .ok_or("name the client: --bootstrap FILE, or --role and --namespace")?;
            let mut metadata = std::collections::BTreeMap::from([("ROLE".to_string(), role)]);
            for (key, value) in [
                ("NAMESPACE", &args.namespace),
                ("REVISION", &args.revision),
                ("GATEWAY", &args.gateway),
                ("NETWORK", &args.network),
            ] {
                if let Some(v) = value {
                    metadata.insert(key.to_string(), v.clone());
                }
            }
            config_dump::node_of("weft-config-dump", &metadata)
        }
    };
    let role = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("ROLE"))
        .and_then(|v| match &v.kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let role = match role.as_str() {
        "node-proxy" => Role::NodeProxy {
            outbound: node_proxy::OUTBOUND_PORT,
            ready: node_proxy::READY_PORT,
            ready_path: node_proxy::READY_PATH,
        },
        "gateway" => Role::Gateway,
        other => return Err(format!("ROLE {other:?}: config-dump is for Envoy clients, node-proxy or gateway").into()),
    };
    let address = if args.xds.contains("://") {
        args.xds.clone()
    } else if tls.is_some() {
        format!("https://{}", args.xds)
    } else {
        format!("http://{}", args.xds)
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let dump = runtime.block_on(config_dump::fetch_complete_over(
        &address,
        tls.as_ref(),
        node,
        std::time::Duration::from_secs(args.timeout),
    ))?;
    let (served, mut findings) = dump.served();
    if args.check {
        findings.extend(envoy_check::check(role, &served));
    }
    if args.output == "json" {
        let resources: serde_json::Map<String, serde_json::Value> = dump
            .resources
            .iter()
            .map(|(t, items)| {
                let list = items
                    .iter()
                    .map(|(name, any)| serde_json::json!({"name": name, "bytes": any.value.len()}))
                    .collect();
                (
                    t.rsplit('.').next().unwrap_or(t).to_string(),
                    serde_json::Value::Array(list),
                )
            })
            .collect();
        let findings: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| serde_json::json!({"type": f.kind, "name": f.name, "problem": f.problem}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"resources": resources, "findings": findings}))?
        );
    } else {
        println!("{:<22} {:>8}  NAME", "TYPE", "BYTES");
        for (t, items) in &dump.resources {
            for (name, any) in items {
                println!(
                    "{:<22} {:>8}  {name}",
                    t.rsplit('.').next().unwrap_or(t),
                    any.value.len()
                );
            }
        }
        if args.check {
            if findings.is_empty() {
                println!("check: nothing Envoy would refuse or leave dangling");
            }
            for f in &findings {
                println!("check: {f}");
            }
        }
    }
    if args.check && !findings.is_empty() {
        return Err(format!("{} problems Envoy would refuse or leave dangling", findings.len()).into());
    }
    Ok(())
}

fn crd(out_dir: Option<&Path>) -> Result<()> {
    for crd in weft::api::crds() {
        let doc = weft::yaml::document(&crd)?;
        match out_dir {
            Some(dir) => std::fs::write(dir.join(weft::api::crd_file_name(&crd)), doc)?,
            None => print!("{doc}"),
        }
    }
    Ok(())
}

fn versions(images: bool, catalogue: &CatalogueArgs) -> Result<()> {
    if !images {
        let table = catalogue.table()?;
        for v in table.all() {
            println!("{}", v.version);
        }
        return Ok(());
    }
    // The upstream names, and beside them the mirror's: the pairs to copy (README, "Air-gapped
    // install").
    let upstream = catalogue.upstream()?;
    let registry = catalogue.registry()?;
    let line = |role: &str, version: &str, image: &str| match &registry {
        Some(r) => println!("{role} {version} {image} {}", r.mirror(image)),
        None => println!("{role} {version} {image}"),
    };
    line("operator", weft::VERSION, &operator_image());
    for v in upstream.all() {
        let version = v.version.to_string();
        line("control-plane", &version, &v.images.control_plane);
        line("proxy", &version, &v.images.proxy);
    }
    Ok(())
}

fn render(file: &Path, catalogue: &CatalogueArgs) -> Result<()> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    let mi: MeshInstall =
        serde_saphyr::from_str(&text).map_err(|e| format!("{} is not a MeshInstall: {e}", file.display()))?;
    let table = catalogue.table()?;
    let version = table.get(&mi.spec.version).ok_or_else(|| {
        format!(
            "version {} is not supported (supported: {})",
            mi.spec.version,
            table.list()
        )
    })?;
    let name = mi.metadata.name.clone().ok_or("the MeshInstall has no metadata.name")?;
    if mi.metadata.uid.is_none() {
        println!("# ownerReferences carry the MeshInstall's uid once the API server has assigned one.");
    }
    println!(
        "# Namespace {} is created if absent and never deleted.",
        mi.spec.namespace
    );
    for m in render_revision(&RevisionInput {
        mesh: &mi,
        revision: &name,
        version,
        remote_secrets: &[],
    })? {
        print!("{}", weft::yaml::document(&m.object)?);
    }
    Ok(())
}

fn remote_secret(args: RemoteSecretArgs) -> Result<()> {
    let opts = weft::remote_secret::Options {
        cluster_name: args.name,
        mesh: args.mesh,
        mesh_namespace: args.mesh_namespace,
        network: args.network,
        server: args.server,
        namespace: args.namespace,
    };
    if args.dry_run {
        print!("{}", weft::remote_secret::dry_run(&opts)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let out = runtime.block_on(async {
        let config = match args.kubeconfig.as_deref() {
            Some(path) => {
                Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &KubeConfigOptions::default()).await?
            }
            None => Config::infer().await?,
        };
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config)?;
        Ok::<_, Box<dyn std::error::Error>>(
            weft::remote_secret::run(&client, &opts, server.trim_end_matches('/')).await?,
        )
    })?;
    print!("{out}");
    Ok(())
}

/// The client configuration for the kubeconfig given, or the usual defaults.
async fn config(kubeconfig: Option<&Path>) -> Result<Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        }
        None => Config::infer().await?,
    })
}

/// A client for the kubeconfig given, or the usual defaults.
async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    Ok(Client::try_from(config(kubeconfig).await?)?)
}

fn control_plane(args: ControlPlaneArgs) -> Result<()> {
    weft::telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = client(args.kubeconfig.as_deref()).await?;
        let limits = args.limits();
        let secure = args.secure();
        weft::xds::control_plane::run(
            client,
            weft::xds::control_plane::Options {
                revision: args.revision,
                xds_address: (!args.no_plaintext_xds).then_some(args.xds_address),
                monitoring_address: args.monitoring_address,
                mesh_config: args.mesh_config,
                debounce: weft::xds::control_plane::Debounce {
                    after: std::time::Duration::from_millis(args.debounce_ms),
                    max: std::time::Duration::from_millis(args.debounce_max_ms.max(args.debounce_ms)),
                },
                limits,
                mesh_namespace: args.mesh_namespace,
                remote_sync_timeout: std::time::Duration::from_secs(args.remote_sync_timeout_seconds),
                secure,
            },
        )
        .await?;
        Ok(())
    })
}

fn operator(args: OperatorArgs) -> Result<()> {
    weft::telemetry::init();
    let table = args.catalogue.table()?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "weft".into());
        format!("{}-{}", host.trim(), std::process::id())
    });
    weft::operator::memory::limit_arenas();
    // Reconciles mostly wait for the API server: two workers keep up with thousands of
    // objects, and each further worker would hold its own share of freed memory.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(OPERATOR_WORKERS)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = config(args.kubeconfig.as_deref()).await?;
        weft::operator::run(
            config,
            weft::operator::Options {
                lease: weft::operator::leader::LeaseOptions {
                    namespace: args.leader_election_namespace,
                    name: args.lease_name,
                    identity,
                    duration: args.lease_duration,
                    grace: args.lease_grace,
                },
                metrics_address: args.metrics_address,
                health_address: args.health_address,
                versions: table,
                concurrency: args.concurrency,
                bundle_propagation: std::time::Duration::from_secs(args.bundle_propagation_seconds),
                remote: weft::operator::remote_cluster::Settings {
                    recheck: std::time::Duration::from_secs(args.remote_recheck_seconds),
                },
            },
        )
        .await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn control_plane_flag_defaults_are_the_documented_limits() {
        let cli = Cli::try_parse_from(["weft", "control-plane", "--revision", "r"]).unwrap();
        let Command::ControlPlane(args) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!(args.limits(), weft::xds::control_plane::Limits::default());
        let cli = Cli::try_parse_from(["weft", "control-plane", "--revision", "r", "--xds-idle-timeout", "0"]).unwrap();
        let Command::ControlPlane(args) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!(args.limits().idle_timeout, None, "0 turns the idle timeout off");
    }
}
