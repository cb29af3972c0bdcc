//! A Git repository served over Git's smart HTTP protocol on 127.0.0.1, for GitOps tests:
//! `git http-backend` run as a CGI program behind a small HTTP/1.1 server, and commits
//! made straight into the served bare repository.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The largest request body accepted (Git's negotiation requests are a few KiB).
const MAX_BODY: usize = 16 << 20;

/// A bare repository `<name>.git` served at `http://127.0.0.1:<port>/<name>.git`; the
/// server stops when this is dropped.
pub struct GitServer {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The served bare repository.
    pub repo: PathBuf,
    name: String,
    work: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GitServer {
    /// Creates an empty repository `name` (branch `main`) under `dir` and serves it; each
    /// request is logged to `log`.
    pub fn start(dir: &Path, name: &str, log: &Path) -> GitServer {
        let root = dir.join("git");
        let repo = root.join(format!("{name}.git"));
        let work = dir.join(format!("{name}-work"));
        let _ = std::fs::remove_dir_all(&repo);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).expect("create the work tree");
        std::fs::create_dir_all(&root).expect("create the served directory");
        git(
            &root,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                repo.to_str().unwrap(),
            ],
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port for the Git server");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(std::sync::Mutex::new(
            std::fs::File::create(log).expect("create the Git server log"),
        ));
        let thread = {
            let (stop, root) = (stop.clone(), root.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (root, log) = (root.clone(), log.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = serve(conn, &root, &log) {
                            record(&log, &format!("error: {e}"));
                        }
                    });
                }
            })
        };
        GitServer {
            port,
            repo,
            name: name.to_string(),
            work,
            stop,
            thread: Some(thread),
        }
    }

    /// The repository's clone URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/{}.git", self.port, self.name)
    }

    /// Commits to `main`: each `(path, Some(content))` is written, each `(path, None)`
    /// removed. Returns the new commit's id.
    pub fn commit(&self, files: &[(&str, Option<&str>)], message: &str) -> String {
        for (path, content) in files {
            let file = self.work.join(path);
            match content {
                Some(text) => {
                    std::fs::create_dir_all(file.parent().expect("a file has a parent")).expect("create directory");
                    std::fs::write(&file, text).expect("write file");
                }
                None => std::fs::remove_file(&file).expect("remove file"),
            }
        }
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.head()
    }

    /// Reverts the commit `id` on `main` and returns the new commit's id.
    pub fn revert(&self, id: &str) -> String {
        self.git(&["revert", "--quiet", "--no-edit", id]);
        self.head()
    }

    /// The commit `main` points at.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "main"]).trim().to_string()
    }

    fn git(&self, args: &[&str]) -> String {
        let mut all = vec![
            "--git-dir",
            self.repo.to_str().unwrap(),
            "--work-tree",
            self.work.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        git(&self.work, &all)
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs git in `dir` with a fixed identity; panics with its output when it fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Weft e2e",
            "-c",
            "user.email=e2e@weft.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run git (install the git package): {e}"));
    assert!(
        out.status.success(),
        "git {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP request as read from the connection.
struct Request {
    method: String,
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

type Log = std::sync::Mutex<std::fs::File>;

fn record(log: &Log, line: &str) {
    if let Ok(mut f) = log.lock() {
        let _ = writeln!(f, "{line}");
    }
}

/// Answers one request (one per connection: the response closes it), logged before the
/// response is sent, so a client that got it finds it in the log.
fn serve(conn: TcpStream, root: &Path, log: &Log) -> Result<(), String> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let req = read_request(&mut reader)?;
    let (status, headers, body) = if req.path.contains("..") {
        ("400 Bad Request".to_string(), Vec::new(), b"bad path\n".to_vec())
    } else {
        http_backend(&req, root)?
    };
    let (method, path, query, len) = (&req.method, &req.path, &req.query, body.len());
    record(log, &format!("{method} {path}?{query} -> {status} ({len} bytes)"));
    let mut out = conn;
    write!(out, "HTTP/1.1 {status}\r\n").map_err(|e| e.to_string())?;
    for (k, v) in &headers {
        write!(out, "{k}: {v}\r\n").map_err(|e| e.to_string())?;
    }
    write!(out, "Content-Length: {len}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    out.write_all(&body).map_err(|e| e.to_string())
}

/// Reads the request line, the headers and the body (by length, or chunked).
fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Request, String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!("bad request line {line:?}"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).map_err(|e| e.to_string())?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        read_chunked(reader)?
    } else {
        let len: usize = headers
            .get("content-length")
            .map(|l| l.parse().map_err(|_| format!("bad Content-Length {l:?}")))
            .transpose()?
            .unwrap_or(0);
        if len > MAX_BODY {
            return Err(format!("request body of {len} bytes is too large"));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).map_err(|e| e.to_string())?;
        body
    };
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
    })
}

/// Reads a chunked body up to its last (empty) chunk and the blank line after it.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).map_err(|e| e.to_string())?;
        let size = size.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        if body.len() + size > MAX_BODY {
            return Err("request body is too large".into());
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).map_err(|e| e.to_string())?;
        let mut crlf = String::new();
        reader.read_line(&mut crlf).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(body);
        }
    }
}

type Response = (String, Vec<(String, String)>, Vec<u8>);

/// Runs `git http-backend` for the request (CGI) and splits its output into status, headers
/// and body.
fn http_backend(req: &Request, root: &Path) -> Result<Response, String> {
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &req.path)
        .env("QUERY_STRING", &req.query)
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = req.headers.get("content-type") {
        cmd.env("CONTENT_TYPE", t);
    }
    // Every header as HTTP_*: http-backend reads Git-Protocol and Content-Encoding there.
    for (k, v) in &req.headers {
        cmd.env(format!("HTTP_{}", k.to_ascii_uppercase().replace('-', "_")), v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run git http-backend: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let body = req.body.clone();
    // Written from another thread: the backend may start answering before it read all input.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .ok_or_else(|| {
            format!(
                "git http-backend gave no headers: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
    let mut status = "200 OK".to_string();
    let mut headers = Vec::new();
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        if k.eq_ignore_ascii_case("status") {
            status = v.trim().to_string();
        } else {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((status, headers, out.stdout[split.0 + split.1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real git client clones over smart HTTP, then fetches a later commit and a revert.
    #[test]
    fn git_clones_and_fetches_over_smart_http() {
        let dir = std::env::temp_dir().join(format!("weft-githttp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let server = GitServer::start(&dir, "repo", &dir.join("server.log"));
        let first = server.commit(&[("a/file.yaml", Some("one\n"))], "one");
        let clone = dir.join("clone");
        git(
            &dir,
            &[
                "-c",
                "protocol.version=2",
                "clone",
                "--quiet",
                &server.url(),
                clone.to_str().unwrap(),
            ],
        );
        assert_eq!(std::fs::read_to_string(clone.join("a/file.yaml")).unwrap(), "one\n");
        assert_eq!(git(&clone, &["rev-parse", "HEAD"]).trim(), first);

        let second = server.commit(&[("a/file.yaml", None), ("b.yaml", Some("two\n"))], "two");
        let reverted = server.revert(&second);
        git(&clone, &["pull", "--quiet", "--ff-only"]);
        assert_eq!(git(&clone, &["rev-parse", "HEAD"]).trim(), reverted);
        assert_eq!(std::fs::read_to_string(clone.join("a/file.yaml")).unwrap(), "one\n");
        assert!(!clone.join("b.yaml").exists());
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
        assert!(log.contains("POST /repo.git/git-upload-pack? -> 200 OK"), "{log}");
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
