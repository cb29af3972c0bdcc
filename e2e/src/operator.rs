//! Runs `weft operator` as a process against a test-bed cluster, as a user would, and reads
//! its metrics endpoint.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{Bed, weft_bin};

/// Operator tests share one cluster and so one leader: they take this lock to run one at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running `weft operator` process.
pub struct Operator {
    child: Child,
    /// Its identity in the Lease.
    pub identity: String,
    /// Its metrics port on 127.0.0.1.
    pub metrics_port: u16,
    /// Its health port on 127.0.0.1.
    pub health_port: u16,
    /// Where its log goes.
    pub log: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Operator {
    /// Starts an operator with a short lease (so failover tests are quick) and `extra` flags.
    pub fn start(bed: &Bed, identity: &str, extra: &[&str]) -> Operator {
        let metrics_port = free_port();
        let health_port = free_port();
        let log = bed
            .kubeconfig
            .parent()
            .expect("cluster dir")
            .join(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).expect("create operator log");
        let child = Command::new(weft_bin())
            .arg("operator")
            .arg("--kubeconfig")
            .arg(&bed.kubeconfig)
            .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")])
            .args(["--health-address", &format!("127.0.0.1:{health_port}")])
            .args(["--identity", identity, "--lease-duration", "4", "--lease-grace", "1"])
            .args(["--leader-election-namespace", "default"])
            .args(extra)
            .env("RUST_LOG", "info,weft=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with `cargo build`)",
                    weft_bin().display()
                )
            });
        Operator {
            child,
            identity: identity.to_string(),
            metrics_port,
            health_port,
            log,
        }
    }

    /// GET a path of one of its endpoints; `Err` while it is not answering.
    pub fn get(&self, port: u16, path: &str) -> Result<(u16, String), String> {
        crate::http_get(port, path)
    }

    /// The metrics text.
    pub fn metrics(&self) -> Result<String, String> {
        self.get(self.metrics_port, "/metrics").map(|(_, body)| body)
    }

    /// The sum of every sample of a metric whose line starts with `prefix` (a name, or a
    /// name with some labels), e.g. `weft_api_writes_total`.
    pub fn metric_sum(&self, prefix: &str) -> Result<f64, String> {
        let text = self.metrics()?;
        Ok(sum_metric(&text, prefix))
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks it to stop (SIGTERM) and waits for it to exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for the operator")
    }

    /// Kills it without warning (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sums the samples of lines starting with `prefix` in Prometheus text.
pub fn sum_metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter(|l| {
            // `prefix` must end at a name or label boundary: `foo` must not match `foo_bar`.
            let rest = &l[prefix.len()..];
            rest.starts_with(' ')
                || rest.starts_with('{')
                || rest.starts_with(',')
                || prefix.ends_with(',')
                || prefix.ends_with('{')
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
