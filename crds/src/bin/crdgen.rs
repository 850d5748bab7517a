//! Writes the CRD YAML under `crds/` and the chart's `templates/crds.yaml`, and the admission
//! policies (`crds/admission/`, the chart's templates), or with `--check` fails when the committed files
//! drift.

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let mut ok = true;
    for dir in sovereign_crds::crd_dirs() {
        let result = if check {
            sovereign_crds::drift(&dir).map(|drifted| {
                for name in &drifted {
                    eprintln!(
                        "drift: {} differs from the generated CRD; run hack/crdgen.sh",
                        dir.join(name).display()
                    );
                }
                drifted.is_empty()
            })
        } else {
            std::fs::create_dir_all(&dir)
                .map_err(|source| sovereign_crds::CrdError::Write {
                    path: dir.clone(),
                    source,
                })
                .and_then(|()| sovereign_crds::write_all(&dir))
                .map(|paths| {
                    for p in paths {
                        println!("wrote {}", p.display());
                    }
                    true
                })
        };
        match result {
            Ok(good) => ok &= good,
            Err(e) => {
                eprintln!("crdgen: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let files = match sovereign_crds::admission_files()
        .map_err(|e| e.to_string())
        .and_then(|mut files| {
            let chart = sovereign_crds::chart_crds().map_err(|e| e.to_string())?;
            files.push((sovereign_crds::chart_crds_file(), chart));
            Ok(files)
        }) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (path, policies) in files {
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(policies.as_str()) {
                eprintln!(
                    "drift: {} differs from what crdgen generates; run hack/crdgen.sh",
                    path.display()
                );
                ok = false;
            }
        } else {
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, &policies));
            if let Err(e) = written {
                eprintln!("crdgen: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", path.display());
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
