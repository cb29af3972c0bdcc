//! Test hosts: a network namespace with no default route, joined to this host by a veth
//! pair on 198.51.100.0/24 (TEST-NET-2). Backends and clients run inside it, the control
//! plane under test listens on the host side (198.51.100.1), and no packet can leave the
//! machine. Removed on drop, also when a test fails.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The host side of the veth pair: where a control plane under test listens.
pub const HOST_ADDRESS: &str = "198.51.100.1";

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A network namespace joined to the host by a veth pair.
pub struct TestHost {
    /// The namespace's name.
    pub netns: String,
    host_if: String,
    /// Held while the host exists: every test host uses the same subnet, so test processes
    /// running at once (two test files, two worktrees) take turns.
    _machine_lock: std::fs::File,
}

impl TestHost {
    /// Creates the namespace, waiting for any other test host on this machine to go first.
    /// Refuses when 198.51.100.0/24 overlaps a route this machine has.
    pub fn create() -> TestHost {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("weft-testhost.lock"))
            .expect("open the test-host lock file");
        lock.lock().expect("take the test-host lock");
        let routes = ip(&["route"]).expect("read routes");
        assert!(
            !routes.contains("198.51.100."),
            "refusing to create a test host: 198.51.100.0/24 overlaps an existing route:\n{routes}"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        let host = TestHost {
            netns: format!("weft-th-{tag}"),
            host_if: format!("wth{tag}"),
            _machine_lock: lock,
        };
        let peer = format!("wtp{tag}");
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &host.netns],
            vec!["link", "add", &host.host_if, "type", "veth", "peer", "name", &peer],
            vec!["link", "set", &peer, "netns", &host.netns],
            vec!["addr", "add", "198.51.100.1/24", "dev", &host.host_if],
            vec!["link", "set", &host.host_if, "up"],
            vec!["-n", &host.netns, "addr", "add", "198.51.100.2/24", "dev", &peer],
            vec!["-n", &host.netns, "link", "set", &peer, "up"],
            vec!["-n", &host.netns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = ip(&step) {
                drop(host);
                panic!("cannot create the test host: {e}");
            }
        }
        host
    }

    /// Adds an address (from 198.51.100.0/24) inside the namespace, for one more backend.
    pub fn add_address(&self, address: &str) {
        let peer = self.host_if.replacen("wth", "wtp", 1);
        ip(&["-n", &self.netns, "addr", "add", &format!("{address}/32"), "dev", &peer]).expect("add address");
    }

    /// Runs a command inside the namespace with piped stdin and stdout.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Proc {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run in the test host");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Proc { child, stdin, stdout }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer, which deletes the pair.
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// A process in a test host, talked to line by line. Killed on drop.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// Reads one line of its output (blocking); `None` at end of output.
    pub fn read_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.as_mut()?.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_string()),
        }
    }

    /// Sends one line and reads the answer.
    pub fn ask(&mut self, line: &str) -> Option<String> {
        let stdin = self.stdin.as_mut()?;
        writeln!(stdin, "{line}").ok()?;
        stdin.flush().ok()?;
        self.read_line()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
