//! The Dockerfile builds every binary the chart runs into a distroless, non-root image without
//! a shell, and the chart's image names match what `hack/build-images.sh` tags. (No Docker on
//! the CI machine: the Dockerfile is checked by reading it.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::collections::BTreeMap;
use std::path::Path;

use sovereign_tests::chart::{self, ci_values, find};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Final stages: target name → (base image, instructions).
fn stages(dockerfile: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    // Join continuation lines first.
    let joined = dockerfile.replace("\\\n", " ");
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let op = words.next().unwrap_or_default().to_ascii_uppercase();
        if op == "FROM" {
            let rest: Vec<&str> = words.collect();
            let base = rest.first().copied().unwrap_or_default().to_owned();
            let name = rest
                .iter()
                .position(|w| w.eq_ignore_ascii_case("AS"))
                .and_then(|i| rest.get(i + 1))
                .map(|s| (*s).to_owned())
                .unwrap_or_default();
            out.insert(name.clone(), (base, Vec::new()));
            current = Some(name);
        } else if let Some(stage) = current.as_ref().and_then(|c| out.get_mut(c)) {
            stage.1.push(line.to_owned());
        }
    }
    out
}

#[test]
fn every_binary_has_a_distroless_non_root_image_without_a_shell() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let stages = stages(&dockerfile);
    for (target, binary) in [
        ("operator", "sovereign-operator"),
        ("agent", "sovereign-agent"),
        ("node", "sovereign-node"),
        ("kubectl-sovereign", "kubectl-sovereign"),
    ] {
        let (base, lines) = stages
            .get(target)
            .unwrap_or_else(|| panic!("no target {target}: {:?}", stages.keys()));
        assert!(
            base.starts_with("gcr.io/distroless/") && base.ends_with(":nonroot"),
            "{target}: {base}"
        );
        assert!(
            lines
                .iter()
                .all(|l| !l.to_ascii_uppercase().starts_with("RUN")),
            "{target}: a runtime stage runs nothing (there is no shell): {lines:?}"
        );
        assert!(
            lines.contains(&"USER 65532:65532".to_owned()),
            "{target}: {lines:?}"
        );
        assert!(
            lines.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "{target}: exec-form entrypoint to {binary}: {lines:?}"
        );
        // The binary comes from the build stage, which builds it.
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("COPY --from=build") && l.contains(binary)),
            "{target}: {lines:?}"
        );
        let build = &stages["build"].1.join(" ");
        assert!(
            build.contains(&format!("--bin {binary}")),
            "build stage builds {binary}"
        );
    }
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
    for (kind, name, target) in [
        ("Deployment", "sovereign-operator", "operator"),
        ("Deployment", "sovereign-collector", "agent"),
        ("DaemonSet", "sovereign-agent", "node"),
    ] {
        let img = image(kind, name);
        let repo_name = img
            .rsplit_once(':')
            .map(|(r, _)| r)
            .and_then(|r| r.rsplit('/').next())
            .unwrap();
        assert!(
            script.contains(&format!("{target}:{repo_name}")),
            "{kind}/{name} runs {img}; build-images.sh must build target {target} as {repo_name}"
        );
    }
}
