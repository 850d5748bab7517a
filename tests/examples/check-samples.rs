//! Prints what the API-server model answers for every sample: `cargo run -p sovereign-tests --example check-samples`.

use sovereign_tests::ApiServerModel;
use sovereign_tests::samples::{invalid_samples, valid_objects};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = ApiServerModel::new()?;
    for (path, obj) in valid_objects()? {
        if model.serves(
            obj["apiVersion"].as_str().unwrap_or_default(),
            obj["kind"].as_str().unwrap_or_default(),
        ) {
            let verdict = match model.admit(&obj, None) {
                Ok(()) => "admitted".to_owned(),
                Err(e) => format!("REFUSED {e:?}"),
            };
            println!(
                "{} {} {}: {verdict}",
                path.display(),
                obj["kind"],
                obj["metadata"]["name"]
            );
        }
    }
    for s in invalid_samples()? {
        let name = s
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match model.admit(&s.object, s.before.as_ref()) {
            Ok(()) => println!("{name}: ADMITTED (expected refusal)"),
            Err(errors) => {
                for e in errors {
                    println!("{name}: {e}");
                }
            }
        }
    }
    Ok(())
}
