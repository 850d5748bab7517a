//! The Helm chart's node-agent DaemonSet passes arguments `sovereign-node` accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use sovereign_tests::chart::{self, ci_values, container_args, find};

#[test]
fn rendered_daemonset_arguments_parse() {
    let Some(helm) = chart::helm() else { return };
    let objects = chart::render(&helm, &["-f", &ci_values("default")]).unwrap();
    let ds = find(&objects, "DaemonSet", "sovereign-agent").unwrap();
    let image = ds["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default();
    assert!(image.contains("/sovereign-node:"), "{image}");
    let args = container_args(ds);
    assert!(args.len() > 3, "{args:?}");
    let bin = env!("CARGO_BIN_EXE_sovereign-node");
    chart::cli_accepts(bin, &args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let mut bad = args.clone();
    bad.push("--no-such-flag".into());
    assert!(chart::cli_accepts(bin, &bad).is_err());
}
