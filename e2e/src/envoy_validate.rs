//! go-control-plane's protoc-gen-validate checks (`e2e/envoy-validate`, built by the test
//! bed) over xDS resources, Envoy bootstraps and SDS files: every constraint Envoy's protos
//! declare.

use std::path::PathBuf;
use std::process::Command;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::{cache_dir, pinned};

/// The validator the test bed built.
pub fn path() -> PathBuf {
    cache_dir().join(format!(
        "envoy-validate-{}/bin/weft-envoy-validate",
        pinned("GO_CONTROL_PLANE_ENVOY_VERSION")
    ))
}

/// What the validator finds in `resources`: one line per violated constraint (empty when
/// Envoy's protos allow every resource).
pub fn validate(resources: &[Any]) -> Vec<String> {
    let file = tempfile_path();
    let response = DiscoveryResponse {
        resources: resources.to_vec(),
        ..Default::default()
    };
    std::fs::write(&file, response.encode_to_vec()).expect("write the resources");
    let out = Command::new(path())
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path().display()));
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) | Some(1) => {}
        other => panic!("the validator failed ({other:?}): {stderr}"),
    }
    assert!(
        stderr.contains(&format!("checked {} resources", resources.len())),
        "{stderr}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// What the validator finds in an Envoy bootstrap (JSON), parsed as Envoy parses its
/// config file: an unknown field or a value of the wrong type is one finding, every
/// violated constraint (typed configs included) another.
pub fn validate_bootstrap(text: &str) -> Vec<String> {
    run_json("-bootstrap", text)
}

/// What the validator finds in a JSON DiscoveryResponse such as an SDS file Envoy's
/// `path_config_source` reads.
pub fn validate_json_response(text: &str) -> Vec<String> {
    run_json("-json", text)
}

fn run_json(mode: &str, text: &str) -> Vec<String> {
    let file = tempfile_path();
    std::fs::write(&file, text).expect("write the file");
    let out = Command::new(path())
        .arg(mode)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path().display()));
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) | Some(1) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        // Envoy would not even parse it.
        _ => vec![stderr],
    }
}

fn tempfile_path() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("weft-envoy-validate-{}-{n}.pb", std::process::id()))
}
