//! `hack/build-images.sh` builds every binary the chart runs into an OCI image pulling nothing
//! (hack/oci-image.py): non-root, no shell, the binary's own libraries and the CA roots only;
//! and the chart's image names are the ones the script tags.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sovereign_tests::chart::{self, ci_values, find};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Builds an image of `binary` with the project's script and unpacks it into a fresh directory.
fn build(binary: &str, dir: &Path) -> PathBuf {
    let archive = dir.join("image.tar");
    let out = Command::new("python3")
        .arg(repo().join("hack/oci-image.py"))
        .args([
            "--ref",
            "sovereign.local/test:1",
            "--binary",
            binary,
            "--out",
        ])
        .arg(&archive)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unpacked = dir.join("oci");
    std::fs::create_dir_all(&unpacked).unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    unpacked
}

fn blob(oci: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        oci.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

/// Every path in the image's layers.
fn paths(oci: &Path, manifest: &Value, dir: &Path) -> Vec<String> {
    let mut all = Vec::new();
    for (i, layer) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        let file = dir.join(format!("layer{i}.tar"));
        std::fs::write(&file, blob(oci, layer["digest"].as_str().unwrap())).unwrap();
        let out = Command::new("tar").arg("-tf").arg(&file).output().unwrap();
        all.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    all
}

#[test]
fn an_image_is_non_root_shell_less_and_carries_its_libraries() {
    let dir = std::env::temp_dir().join(format!("sovereign-image-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Any dynamically linked binary shows what the script does with one of ours.
    let oci = build("/usr/bin/env", &dir);
    let index: Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        "sovereign.local/test:1"
    );
    let manifest: Value =
        serde_json::from_slice(&blob(&oci, entry["digest"].as_str().unwrap())).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(&oci, manifest["config"]["digest"].as_str().unwrap()))
            .unwrap();
    assert_eq!(config["config"]["User"], "65532:65532", "non-root");
    assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/env");
    let files = paths(&oci, &manifest, &dir);
    assert!(files.iter().any(|f| f == "usr/local/bin/env"), "{files:?}");
    assert!(
        files.iter().any(|f| f.ends_with("libc.so.6")),
        "its libc: {files:?}"
    );
    assert!(
        files.iter().any(|f| f.starts_with("lib64/ld-linux")),
        "its loader: {files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f == "etc/ssl/certs/ca-certificates.crt"),
        "{files:?}"
    );
    for shell in ["bin/sh", "bin/bash", "bin/busybox", "usr/bin/sh"] {
        assert!(
            !files.iter().any(|f| f == shell),
            "no shell: {shell} in {files:?}"
        );
    }
    assert!(
        files
            .iter()
            .all(|f| !f.starts_with("usr/bin") && !f.starts_with("bin/")),
        "nothing but the binary: {files:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_chart_runs_the_images_the_script_builds() {
    let script = std::fs::read_to_string(repo().join("hack/build-images.sh")).unwrap();
    let Some(helm) = chart::helm() else { return };
    let objects = chart::render(&helm, &["-f", &ci_values("default")]).unwrap();
    let image = |kind: &str, name: &str| -> String {
        find(&objects, kind, name).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (kind, name, binary) in [
        ("Deployment", "sovereign-operator", "sovereign-operator"),
        ("Deployment", "sovereign-collector", "sovereign-agent"),
        ("DaemonSet", "sovereign-agent", "sovereign-node"),
    ] {
        let img = image(kind, name);
        let repo_name = img
            .rsplit_once(':')
            .map(|(r, _)| r)
            .and_then(|r| r.rsplit('/').next())
            .unwrap();
        assert!(
            script.contains(&format!("{binary}:{repo_name}")),
            "{kind}/{name} runs {img}; build-images.sh must build {binary} as {repo_name}"
        );
    }
}
