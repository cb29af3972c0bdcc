//! The image `make image` builds (deploy/image/build): an OCI image archive that skopeo
//! reads, that packing the same binary again reproduces byte for byte, that goes to a registry on 127.0.0.1 (the
//! distribution registry the test bed built) and comes back by digest, and whose `weft`
//! runs as a non-root user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use weft_e2e::{registry_path, repo_root, wait_for};

/// Where `make image` wrote the archive.
fn image_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("image")
}

/// Runs a command; its standard output, or a panic with what it printed.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The crate's version (the image's tag).
fn version() -> String {
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a version in Cargo.toml")
        .to_string()
}

/// A registry on 127.0.0.1, killed when dropped.
struct Registry {
    child: Child,
    port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(dir: &Path) -> Registry {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let config = dir.join("registry.yaml");
    let text = format!(
        "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("storage").display()
    );
    std::fs::write(&config, text).expect("write the registry's config");
    let child = Command::new(registry_path())
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", registry_path().display()));
    Registry { child, port }
}

#[tokio::test]
async fn the_image_is_reproducible_goes_through_a_registry_by_digest_and_runs_as_non_root() {
    let archive = image_dir().join("weft.oci.tar");
    assert!(archive.exists(), "{} is missing: run `make image`", archive.display());
    let digest = std::fs::read_to_string(image_dir().join("weft.oci.digest"))
        .expect("the digest file")
        .trim()
        .to_string();
    let source = format!("oci-archive:{}", archive.display());

    // What skopeo reads: labels, platform, user and entrypoint.
    let inspected: Value = serde_json::from_str(&run("skopeo", &["inspect", &source])).expect("JSON");
    let labels = &inspected["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        version().as_str(),
        "{inspected}"
    );
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://github.com/weft-dev/weft"
    );
    assert!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .is_some_and(|r| r.len() == 40)
    );
    assert_eq!(
        (inspected["Os"].as_str(), inspected["Architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    let config: Value = serde_json::from_str(&run("skopeo", &["inspect", "--config", &source])).expect("JSON");
    assert_eq!(config["config"]["User"], "65532:65532", "{config}");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/weft"]));

    // Same inputs, same bytes: packed again elsewhere, the same digest and archive.
    let work = tempdir("weft-image-test");
    let again = work.join("again");
    // The same binary packed again (IMAGE_BIN): the packing is what must be deterministic;
    // a cargo run from inside the test runner would rebuild weft for nothing (cargo gives
    // tests an environment of their own).
    let bin = image_dir()
        .with_file_name("x86_64-unknown-linux-gnu")
        .join("release/weft");
    let mut rebuild = Command::new(repo_root().join("deploy/image/build"));
    rebuild.env("IMAGE_OUT", &again).env("IMAGE_BIN", &bin);
    let built = rebuild.output().expect("run deploy/image/build");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let digest_again = std::fs::read_to_string(again.join("weft.oci.digest")).expect("digest");
    assert_eq!(digest_again.trim(), digest, "the rebuild's digest");
    assert!(
        std::fs::read(again.join("weft.oci.tar")).expect("archive") == std::fs::read(&archive).expect("archive"),
        "the rebuild's archive differs"
    );

    // Pushed to a registry on 127.0.0.1 and pulled back by digest.
    let registry = start_registry(&work);
    let reference = format!("127.0.0.1:{}/weft-dev/weft", registry.port);
    let tagged = format!("docker://{reference}:{}", version());
    wait_for("the registry to take the image", Duration::from_secs(30), || {
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", &source, &tagged])
            .output();
        async move {
            match out {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    let remote: Value =
        serde_json::from_str(&run("skopeo", &["inspect", "--tls-verify=false", &tagged])).expect("JSON");
    assert_eq!(
        remote["Digest"],
        digest.as_str(),
        "the registry serves the same manifest"
    );
    let pulled = work.join("pulled");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{reference}@{digest}"),
            &format!("oci:{}:pulled", pulled.display()),
        ],
    );

    // The one layer holds `weft`, which runs as user 65532.
    let layer = only_layer(&pulled);
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs).expect("rootfs dir");
    run("tar", &["-xf", layer.to_str().unwrap(), "-C", rootfs.to_str().unwrap()]);
    let weft = rootfs.join("weft");
    let out = run(
        "setpriv",
        &[
            "--reuid=65532",
            "--regid=65532",
            "--clear-groups",
            weft.to_str().unwrap(),
            "version",
        ],
    );
    assert_eq!(out.trim(), format!("weft {}", version()));
    let _ = std::fs::remove_dir_all(&work);
}

/// The file of the single layer of the image in OCI layout `dir`.
fn only_layer(dir: &Path) -> PathBuf {
    let blob = |digest: &str| dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index")).expect("JSON");
    let manifest = index["manifests"][0]["digest"].as_str().expect("a manifest");
    let manifest: Value = serde_json::from_slice(&std::fs::read(blob(manifest)).expect("manifest")).expect("JSON");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    blob(layers[0]["digest"].as_str().expect("a layer digest"))
}

/// A fresh directory under the system's temporary directory, readable by user 65532.
fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
