//! Writes the CRD YAML under `crds/`, or with `--check` fails when the committed files drift.

use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = sovereign_crds::crd_dir();
    let check = std::env::args().any(|a| a == "--check");
    let result = if check {
        sovereign_crds::drift(&dir).map(|drifted| {
            for name in &drifted {
                eprintln!("drift: crds/{name} differs from the generated CRD; run `cargo run -p sovereign-crds --bin crdgen`");
            }
            drifted.is_empty()
        })
    } else {
        sovereign_crds::write_all(&dir).map(|paths| {
            for p in paths {
                println!("wrote {}", p.display());
            }
            true
        })
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}
