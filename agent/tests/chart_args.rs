//! The Helm chart's collector arguments are ones this binary accepts (the node agent's are
//! checked in `sovereign-node-agent`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use sovereign_tests::chart::{self, ci_values, container_args, find};

fn accepted(args: &[String]) -> Result<(), String> {
    chart::cli_accepts(env!("CARGO_BIN_EXE_sovereign-agent"), args)
}

#[test]
fn rendered_arguments_parse() {
    let Some(helm) = chart::helm() else { return };
    let objects = chart::render(
        &helm,
        &[
            "-f",
            &ci_values("default"),
            "--set",
            "collector.selector=sovereign.io/site=hn1",
        ],
    )
    .unwrap();
    let args = container_args(find(&objects, "Deployment", "sovereign-collector").unwrap());
    assert!(args.len() > 3, "{args:?}");
    accepted(&args).unwrap_or_else(|e| panic!("collector {args:?}: {e}"));
    // The check can fail: an unknown flag is refused.
    let mut bad = args.clone();
    bad.push("--no-such-flag".into());
    assert!(accepted(&bad).is_err());
}
