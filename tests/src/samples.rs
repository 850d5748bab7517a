//! Loading the sample manifests under `crds/samples/`.
//!
//! `valid/` holds a realistic inventory that must be accepted as a whole. Each file in
//! `invalid/` holds one object the API server must refuse, with its expectation in header
//! comments (`# expect-field:` and `# expect-message:`). A file with two documents is an update:
//! the first document is created, then the second must be refused.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// Problems reading samples.
#[derive(Debug, Error)]
pub enum SampleError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

/// One object that must be refused.
#[derive(Debug, Clone)]
pub struct InvalidSample {
    pub path: PathBuf,
    /// The stored object for an update; None for a create.
    pub before: Option<Value>,
    pub object: Value,
    pub expect_field: String,
    pub expect_message: String,
}

/// Root of the samples: `crds/samples`.
pub fn samples_dir() -> PathBuf {
    sovereign_crds::crd_dir().join("samples")
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, SampleError> {
    let io = |source| SampleError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every document in a YAML file, as JSON values (empty documents skipped).
pub fn documents(path: &Path) -> Result<Vec<Value>, SampleError> {
    let text = std::fs::read_to_string(path).map_err(|source| SampleError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = Value::deserialize(de).map_err(|source| SampleError::Yaml {
            path: path.to_owned(),
            source,
        })?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// All objects of the valid sample set, with the file each came from.
pub fn valid_objects() -> Result<Vec<(PathBuf, Value)>, SampleError> {
    let mut out = Vec::new();
    for path in yaml_files(&samples_dir().join("valid"))? {
        for doc in documents(&path)? {
            out.push((path.clone(), doc));
        }
    }
    Ok(out)
}

fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#') || l.trim().is_empty())
        .find_map(|l| {
            l.strip_prefix('#')
                .map(str::trim)
                .and_then(|l| l.strip_prefix(key))
        })
        .map(|v| v.trim().to_owned())
}

/// All invalid samples.
pub fn invalid_samples() -> Result<Vec<InvalidSample>, SampleError> {
    let mut out = Vec::new();
    for path in yaml_files(&samples_dir().join("invalid"))? {
        let text = std::fs::read_to_string(&path).map_err(|source| SampleError::Io {
            path: path.clone(),
            source,
        })?;
        let malformed = |reason: &str| SampleError::Malformed {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let expect_field = header(&text, "expect-field:")
            .ok_or_else(|| malformed("no `# expect-field:` header"))?;
        let expect_message = header(&text, "expect-message:")
            .ok_or_else(|| malformed("no `# expect-message:` header"))?;
        let mut docs = documents(&path)?;
        let (before, object) = match docs.len() {
            1 => (None, docs.remove(0)),
            2 => {
                let object = docs.remove(1);
                (Some(docs.remove(0)), object)
            }
            _ => return Err(malformed("expected one document, or two for an update")),
        };
        out.push(InvalidSample {
            path,
            before,
            object,
            expect_field,
            expect_message,
        });
    }
    Ok(out)
}
