//! Rendering the Helm chart (`charts/sovereign`) with a real `helm` for tests: installed into
//! `.tools/bin` by `hack/install-helm.sh` (CI does), or found on PATH.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    root().join("charts/sovereign")
}

/// A values file under the chart's `ci/` (the chart-testing convention).
pub fn ci_values(name: &str) -> String {
    chart_dir()
        .join("ci")
        .join(format!("{name}-values.yaml"))
        .display()
        .to_string()
}

/// The helm binary, or None (after saying so on stderr) when there is none. Under CI
/// (`CI=true`) a missing helm is a failure, not a skip.
pub fn helm() -> Option<PathBuf> {
    let local = root().join(".tools/bin/helm");
    let found = if local.is_file() {
        Some(local)
    } else {
        Command::new("helm")
            .arg("version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from("helm"))
    };
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "helm is missing in CI: run hack/install-helm.sh"
        );
        eprintln!("SKIPPED: no helm (run hack/install-helm.sh to install it into .tools/bin)");
    }
    found
}

/// `helm template` of the chart in namespace `sovereign-system` with extra arguments; the
/// rendered objects, or helm's error text.
pub fn render(helm: &PathBuf, args: &[&str]) -> Result<Vec<Value>, String> {
    render_release(helm, "sov", args)
}

/// [`render`] as release `release` (selectors carry the release name).
pub fn render_release(helm: &PathBuf, release: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new(helm)
        .args(["template", release])
        .arg(chart_dir())
        .args(["--namespace", "sovereign-system"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).map_err(|e| e.to_string())?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

/// `helm lint --strict` with extra arguments; helm's output on failure.
pub fn lint(helm: &PathBuf, args: &[&str]) -> Result<(), String> {
    let out = Command::new(helm)
        .args(["lint", "--strict"])
        .arg(chart_dir())
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// The args of the first container of a workload.
pub fn container_args(workload: &Value) -> Vec<String> {
    workload["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a binary's CLI accepts `args`: `--help` last makes clap stop after checking them, so
/// nothing runs. The binary's stderr when it refuses.
pub fn cli_accepts(binary: &str, args: &[String]) -> Result<(), String> {
    let out = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
