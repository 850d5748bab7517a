//! The Helm chart's operator arguments are ones this binary accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use sovereign_tests::chart::{self, ci_values, container_args, find};

fn accepted(args: &[String]) -> Result<(), String> {
    chart::cli_accepts(env!("CARGO_BIN_EXE_sovereign-operator"), args)
}

#[test]
fn rendered_arguments_parse() {
    let Some(helm) = chart::helm() else { return };
    for values in ["default", "plaintext"] {
        let objects = chart::render(&helm, &["-f", &ci_values(values)]).unwrap();
        let args = container_args(find(&objects, "Deployment", "sovereign-operator").unwrap());
        accepted(&args).unwrap_or_else(|e| panic!("{values} {args:?}: {e}"));
        let mut bad = args.clone();
        bad.push("--no-such-flag".into());
        assert!(accepted(&bad).is_err());
    }
}
