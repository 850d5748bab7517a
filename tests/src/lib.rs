//! A model of how kube-apiserver admits Sovereign custom resources, without a cluster.
//!
//! Steps follow the API server's order for custom resources: strict unknown-field check (as
//! `kubectl apply --server-side` does), schema defaulting, OpenAPI v3 validation (here with the
//! `jsonschema` crate), `x-kubernetes-list-type` invariants, then CEL `x-kubernetes-validations`
//! (here with `kube-cel`), which the API server skips when a type error makes them unsafe.
//! Messages are rendered in the API server's words so a sample's expected message can be checked
//! here and against a real cluster alike.

pub mod bench;
pub mod chart;
pub mod e2e;
pub mod fakeapi;
pub mod samples;

use std::collections::HashMap;
use std::fmt;

use serde_json::{Value, json};
use thiserror::Error;

/// One refused field, as the API server reports it (`spec.tier: Unsupported value: ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// A type error: the API server does not evaluate CEL rules after one.
    pub blocking: bool,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Problems building the model itself (not problems of the objects it checks).
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("CRD {0} has no openAPIV3Schema")]
    NoSchema(String),
    #[error("CRD {kind}: schema does not compile as JSON schema: {message}")]
    Schema { kind: String, message: String },
    #[error("CRD {kind}: CEL rule does not compile: {message}")]
    Cel { kind: String, message: String },
}

struct KindModel {
    namespaced: bool,
    raw: Value,
    json_schema: jsonschema::Validator,
    cel: kube_cel::CompiledSchema,
}

/// The Sovereign kinds as the API server would serve them.
pub struct ApiServerModel {
    kinds: HashMap<(String, String), KindModel>,
    cel: kube_cel::Validator,
}

impl fmt::Debug for ApiServerModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiServerModel")
            .field("kinds", &self.kinds.len())
            .finish_non_exhaustive()
    }
}

/// Converts an OpenAPI v3 (Kubernetes flavour) schema into plain JSON schema: `nullable: true`
/// becomes a `null` member of `type`.
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                match k.as_str() {
                    "nullable" => {}
                    "properties" | "patternProperties" => {
                        let props = v
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(n, s)| (n.clone(), to_json_schema(s)))
                                    .collect()
                            })
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    "items" | "additionalProperties" | "not" => {
                        out.insert(k.clone(), to_json_schema(v));
                    }
                    "anyOf" | "allOf" | "oneOf" => {
                        let arr = v
                            .as_array()
                            .map(|a| a.iter().map(to_json_schema).collect())
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Array(arr));
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = out.get("type").cloned()
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

impl ApiServerModel {
    /// Builds the model from the CRDs the code generates.
    pub fn new() -> Result<Self, ModelError> {
        let mut kinds = HashMap::new();
        for crd in sovereign_crds::crds() {
            let kind = crd.spec.names.kind.clone();
            let raw = sovereign_crds::openapi_schema(&crd)
                .ok_or_else(|| ModelError::NoSchema(kind.clone()))?;
            let json_schema = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft4)
                .should_validate_formats(false)
                .build(&to_json_schema(&raw))
                .map_err(|e| ModelError::Schema {
                    kind: kind.clone(),
                    message: e.to_string(),
                })?;
            let cel = kube_cel::compile_schema(&raw);
            if let Some(e) = cel.compilation_errors().first() {
                return Err(ModelError::Cel {
                    kind,
                    message: e.to_string(),
                });
            }
            let api_version = format!("{}/{}", crd.spec.group, crd.spec.versions[0].name);
            let namespaced = crd.spec.scope == "Namespaced";
            kinds.insert(
                (api_version, kind),
                KindModel {
                    namespaced,
                    raw,
                    json_schema,
                    cel,
                },
            );
        }
        Ok(Self {
            kinds,
            cel: kube_cel::Validator::new(),
        })
    }

    /// True when the model serves this apiVersion and kind.
    pub fn serves(&self, api_version: &str, kind: &str) -> bool {
        self.kinds
            .contains_key(&(api_version.to_owned(), kind.to_owned()))
    }

    /// The raw openAPIV3Schema of a kind (for analysis in tests).
    pub fn schema(&self, kind: &str) -> Option<&Value> {
        self.kinds
            .iter()
            .find(|((_, k), _)| k == kind)
            .map(|(_, m)| &m.raw)
    }

    /// Admits `obj` (an update of `old` when given) or returns every error the API server would.
    pub fn admit(&self, obj: &Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let Some(model) = self.kinds.get(&(api_version.to_owned(), kind.to_owned())) else {
            return Err(vec![FieldError {
                field: "kind".into(),
                message: format!("no matches for kind \"{kind}\" in version \"{api_version}\""),
                blocking: true,
            }]);
        };
        let mut errors = Vec::new();
        check_metadata(obj, model.namespaced, &mut errors);

        // The schema covers spec and status; metadata, apiVersion and kind are the server's.
        let body = strip_envelope(obj);
        unknown_fields(&model.raw, &body, "", &mut errors);
        if !errors.is_empty() {
            // Server-side apply refuses the whole patch before any other validation.
            return Err(errors);
        }
        let defaulted = kube_cel::apply_defaults(&model.raw, &body);
        for e in model.json_schema.iter_errors(&defaulted) {
            errors.push(openapi_error(&e, &model.raw));
        }
        list_invariants(&model.raw, &defaulted, "", &mut errors);
        if !errors.iter().any(|e| e.blocking) {
            let old_body = old.map(strip_envelope);
            if let Err(cel_errors) =
                self.cel
                    .validate_compiled(&model.cel, &body, old_body.as_ref())
            {
                for e in &cel_errors {
                    let value = lookup(&defaulted, &e.field_path);
                    errors.push(FieldError {
                        field: e.field_path.clone(),
                        message: format!(
                            "Invalid value: \"{}\": {}",
                            go_type_name(value),
                            e.message
                        ),
                        blocking: false,
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn strip_envelope(obj: &Value) -> Value {
    let mut body = serde_json::Map::new();
    for key in ["spec", "status"] {
        if let Some(v) = obj.get(key) {
            body.insert(key.into(), v.clone());
        }
    }
    Value::Object(body)
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn check_metadata(obj: &Value, namespaced: bool, errors: &mut Vec<FieldError>) {
    match obj["metadata"]["name"].as_str() {
        None => errors.push(FieldError {
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
            blocking: true,
        }),
        Some(name) if !is_dns_subdomain(name) => errors.push(FieldError {
            field: "metadata.name".into(),
            message: format!("Invalid value: \"{name}\": {DNS1123_SUBDOMAIN_MSG}"),
            blocking: true,
        }),
        Some(_) => {}
    }
    if !namespaced
        && obj["metadata"]
            .get("namespace")
            .is_some_and(|n| !n.is_null())
    {
        // kubectl strips it for cluster-scoped kinds; flag it so samples stay honest.
        errors.push(FieldError {
            field: "metadata.namespace".into(),
            message: "Forbidden: not allowed on this type".into(),
            blocking: true,
        });
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Fields that the schema does not declare; server-side apply refuses them.
fn unknown_fields(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (k, v) in map {
                let child = join(path, k);
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    unknown_fields(s, v, &child, errors);
                } else if let Some(s @ Value::Object(_)) = additional {
                    unknown_fields(s, v, &child, errors);
                } else if props.is_some() || additional.is_none() {
                    errors.push(FieldError {
                        field: format!(".{child}"),
                        message: "field not declared in schema".into(),
                        blocking: true,
                    });
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    unknown_fields(s, v, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// `x-kubernetes-list-type: set|map` uniqueness, which JSON schema has no word for.
fn list_invariants(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in map {
                    if let Some(s) = props.get(k) {
                        list_invariants(s, v, &join(path, k), errors);
                    }
                }
            }
        }
        Value::Array(items) => {
            let keys: Vec<Value> =
                match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
                    Some("set") => items.clone(),
                    Some("map") => {
                        let map_keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        items
                            .iter()
                            .map(|it| json!(map_keys.iter().map(|k| &it[*k]).collect::<Vec<_>>()))
                            .collect()
                    }
                    _ => Vec::new(),
                };
            for (i, key) in keys.iter().enumerate() {
                if keys[..i].contains(key) {
                    errors.push(FieldError {
                        field: format!("{path}[{i}]"),
                        message: format!("Duplicate value: {}", go_value(&items[i])),
                        blocking: false,
                    });
                }
            }
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    list_invariants(s, v, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// JSON pointer (`/spec/residency/jurisdictions/0`) to the API server's field path.
fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

fn lookup<'a>(root: &'a Value, path: &str) -> &'a Value {
    let mut cur = root;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, idx) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = &cur[name];
        if let Some(i) = idx {
            cur = &cur[i];
        }
    }
    cur
}

/// The type name the API server prints in `Invalid value: "object"`.
fn go_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as Go's `%#v` prints it in field errors.
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) | Value::Array(_) => format!("\"{}\"", go_type_name(v)),
        other => other.to_string(),
    }
}

fn number(v: &Value) -> String {
    // The API server prints float bounds without a trailing ".0".
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        _ => v.to_string(),
    }
}

fn openapi_error(e: &jsonschema::ValidationError<'_>, raw_schema: &Value) -> FieldError {
    use jsonschema::error::ValidationErrorKind as K;
    let field = field_path(e.instance_path().as_str());
    let value = e.instance();
    let invalid = |detail: String| {
        format!(
            "Invalid value: {}: {field} in body {detail}",
            go_value(value)
        )
    };
    let (field, message, blocking) = match e.kind() {
        K::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            (join(&field, name), "Required value".to_owned(), true)
        }
        K::Enum { options } => {
            let supported = options
                .as_array()
                .map(|o| o.iter().map(go_value).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            let msg = format!(
                "Unsupported value: {}: supported values: {supported}",
                go_value(value)
            );
            (field, msg, false)
        }
        K::Type { kind } => {
            let expected = match kind {
                jsonschema::error::TypeKind::Single(t) => t.to_string(),
                jsonschema::error::TypeKind::Multiple(ts) => ts
                    .iter()
                    .map(|t| t.to_string())
                    .filter(|t| t != "null")
                    .collect::<Vec<_>>()
                    .join(","),
            };
            let got = go_type_name(value);
            let msg = format!(
                "Invalid value: \"{got}\": {field} in body must be of type {expected}: \"{got}\""
            );
            (field, msg, true)
        }
        K::AnyOf { .. }
            if lookup(raw_schema, &schema_pointer_for(&field))["x-kubernetes-int-or-string"]
                == true =>
        {
            let got = go_type_name(value);
            let msg = format!(
                "Invalid value: \"{got}\": {field} in body must be of type integer,string: \"{got}\""
            );
            (field, msg, true)
        }
        K::Maximum { limit } => {
            let msg = invalid(format!("should be less than or equal to {}", number(limit)));
            (field, msg, false)
        }
        K::Minimum { limit } => {
            let msg = invalid(format!(
                "should be greater than or equal to {}",
                number(limit)
            ));
            (field, msg, false)
        }
        K::MaxLength { limit } => (
            field,
            format!("Too long: may not be more than {limit} bytes"),
            false,
        ),
        K::MinLength { limit } => (
            field.clone(),
            invalid(format!("should be at least {limit} chars long")),
            false,
        ),
        K::Pattern { pattern } => (
            field.clone(),
            invalid(format!("should match '{pattern}'")),
            false,
        ),
        K::MaxItems { limit } => {
            let n = value.as_array().map_or(0, Vec::len);
            (
                field,
                format!("Too many: {n}: must have at most {limit} items"),
                false,
            )
        }
        K::MinItems { limit } => (
            field.clone(),
            invalid(format!("should have at least {limit} items")),
            false,
        ),
        _ => (
            field.clone(),
            format!("Invalid value: {}: {e}", go_value(value)),
            false,
        ),
    };
    FieldError {
        field,
        message,
        blocking,
    }
}

/// Path inside the schema for a field path (only used to recognise int-or-string nodes).
fn schema_pointer_for(field: &str) -> String {
    field
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| format!("properties.{}", p.split('[').next().unwrap_or(p)))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_become_api_server_field_paths() {
        assert_eq!(
            field_path("/spec/residency/jurisdictions/1"),
            "spec.residency.jurisdictions[1]"
        );
        assert_eq!(
            field_path("/spec/admins/0/namespace"),
            "spec.admins[0].namespace"
        );
        assert_eq!(field_path(""), "");
    }

    #[test]
    fn values_print_like_go() {
        assert_eq!(go_value(&json!("vn")), "\"vn\"");
        assert_eq!(go_value(&json!(7)), "7");
        assert_eq!(go_value(&json!({"a": 1})), "\"object\"");
        assert_eq!(number(&json!(5.0)), "5");
        assert_eq!(number(&json!(0.5)), "0.5");
    }

    #[test]
    fn nullable_becomes_a_null_type() {
        let s = to_json_schema(
            &json!({"type": "object", "properties": {"a": {"type": "string", "nullable": true}}}),
        );
        assert_eq!(s["properties"]["a"], json!({"type": ["string", "null"]}));
    }

    #[test]
    fn type_errors_block_cel_like_the_api_server() {
        let model = ApiServerModel::new().unwrap();
        let vol = json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
                         "metadata": {"name": "v", "namespace": "t"},
                         "spec": {"size": "1Gi", "tier": "ssd", "replicas": "three", "spread": "Rack"}});
        let err = model.admit(&vol, None).unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(
            err[0].to_string(),
            "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""
        );
        assert!(err[0].blocking);
    }

    #[test]
    fn unknown_kinds_and_bad_names_are_refused() {
        let model = ApiServerModel::new().unwrap();
        let err = model
            .admit(
                &json!({"apiVersion": "sovereign.io/v1", "kind": "Site"}),
                None,
            )
            .unwrap_err();
        assert!(err[0].message.starts_with("no matches for kind \"Site\""));
        let site = json!({"apiVersion": "sovereign.io/v1alpha1", "kind": "Site", "metadata": {"name": "a.b-"},
                          "spec": {"jurisdiction": "VN", "region": "x", "securityTier": 1}});
        let err = model.admit(&site, None).unwrap_err();
        assert_eq!(err[0].field, "metadata.name");
    }
}
