//! The Helm chart's operator arguments are ones this binary accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::process::Command;

use sovereign_tests::chart::{self, ci_values, container_args, find};

/// Parses `args` with the real CLI: `--help` last makes clap stop after checking them.
fn accepted(args: &[String]) -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_sovereign-operator"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
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
