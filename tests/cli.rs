//! The `weft` command line, run as a user runs it.

use std::process::Command;

fn weft(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("run weft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn versions_are_listed_oldest_first() {
    let (ok, out, _) = weft(&["versions"]);
    assert!(ok);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["1.0.0", "1.1.0"]);
}

#[test]
fn versions_list_every_image_to_mirror_and_its_name_in_the_mirror() {
    let (ok, out, err) = weft(&["versions", "--images"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("operator {v} ghcr.io/weft-dev/weft:{v}", v = env!("CARGO_PKG_VERSION")).as_str())
    );
    assert!(
        lines.contains(&"control-plane 1.1.0 ghcr.io/weft-dev/weft:1.1.0"),
        "{out}"
    );
    assert_eq!(lines.len(), 5, "{out}");

    let (ok, out, err) = weft(&["versions", "--images", "--image-registry", "mirror.example:5000/weft/"]);
    assert!(ok, "{err}");
    for line in out.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (upstream, mirrored) = (fields[2], fields[3]);
        let path = upstream.split_once('/').unwrap().1;
        assert_eq!(mirrored, format!("mirror.example:5000/weft/{path}"), "{line}");
    }

    // The operator renders the mirror's names: what `render` prints is what it applies.
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/samples/weft_v1alpha1_meshinstall.yaml"
    );
    let (ok, out, err) = weft(&["render", "-f", sample, "--image-registry", "mirror.example:5000"]);
    assert!(ok, "{err}");
    let images: Vec<&str> = out.lines().filter_map(|l| l.trim().strip_prefix("image: ")).collect();
    assert!(images.len() >= 2, "{out}");
    assert!(
        images.iter().all(|i| i.starts_with("mirror.example:5000/")),
        "{images:?}"
    );

    let (ok, _, err) = weft(&["versions", "--image-registry", "https://mirror.example"]);
    assert!(!ok);
    assert!(err.contains("is not an image registry"), "{err}");
}

#[test]
fn render_prints_what_the_operator_applies_for_the_sample() {
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/samples/weft_v1alpha1_meshinstall.yaml"
    );
    let (ok, out, err) = weft(&["render", "-f", sample]);
    assert!(ok, "{err}");
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Deployment",
        "DaemonSet",
    ] {
        assert!(out.contains(&format!("\nkind: {kind}\n")), "no {kind} in:\n{out}");
    }
    assert!(out.contains("name: weft-cp-default") && out.contains("namespace: weft-system"));
    assert!(
        !out.contains("kind: HorizontalPodAutoscaler"),
        "the default profile has no HPA"
    );
}

#[test]
fn render_refuses_an_unsupported_version_clearly() {
    let dir = std::env::temp_dir().join(format!("weft-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mi.yaml");
    std::fs::write(
        &file,
        "apiVersion: weft.dev/v1alpha1\nkind: MeshInstall\nmetadata: {name: x}\nspec: {version: 9.9.9}\n",
    )
    .unwrap();
    let (ok, _, err) = weft(&["render", "-f", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("version 9.9.9 is not supported (supported: 1.0.0, 1.1.0)"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn crd_prints_the_checked_in_crds() {
    let (ok, out, _) = weft(&["crd"]);
    assert!(ok);
    let mut on_disk = String::new();
    for name in [
        "meshgateways.weft.dev.yaml",
        "meshinstalls.weft.dev.yaml",
        "remoteclusters.weft.dev.yaml",
    ] {
        on_disk.push_str(&std::fs::read_to_string(format!("{}/crds/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap());
    }
    assert_eq!(out, on_disk);
}
