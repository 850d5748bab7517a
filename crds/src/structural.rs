//! Makes derived schemas structural and checks them the way the API server does.
//!
//! schemars and kube's rewriter get close but not all the way: the int-or-string `anyOf`
//! branches lose their types, and Rust integer formats (`uint8`) are not Kubernetes formats.

use serde_json::{Map, Value, json};

/// Rewrites a derived openAPIV3Schema in place so the API server and JSON-schema tools agree.
pub fn finalize(schema: &mut Value) {
    let Value::Object(node) = schema else { return };
    if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        node.insert(
            "anyOf".into(),
            json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    if let Some(Value::String(text)) = node.get("description") {
        let joined = paragraphs(text);
        node.insert("description".into(), joined.into());
    }
    if let Some(Value::String(format)) = node.get("format") {
        match format.as_str() {
            "uint8" | "uint16" | "int8" | "int16" | "uint32" | "int32" => {
                node.insert("format".into(), "int32".into());
            }
            "uint64" | "int64" | "uint" | "int" => {
                node.insert("format".into(), "int64".into());
            }
            _ => {}
        }
    }
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(props)) = node.get_mut(key) {
            props.values_mut().for_each(finalize);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = node.get_mut(key) {
            finalize(child);
        }
    }
}

/// Joins doc-comment lines into paragraphs (kubectl explain wraps text itself; kept line breaks
/// cut sentences in the middle). Blank lines stay paragraph breaks.
pub fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|para| {
            para.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Keys that may not appear inside `anyOf`/`allOf`/`oneOf`/`not` of a structural schema.
const FORBIDDEN_IN_JUNCTORS: &[&str] = &[
    "description",
    "type",
    "default",
    "additionalProperties",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
];

/// Lists every place where `schema` breaks the rules of a structural schema
/// (<https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema>).
pub fn violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    check(schema, "", false, &mut out);
    out
}

fn check(schema: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    if node.contains_key("$ref") || node.contains_key("definitions") || node.contains_key("$defs") {
        out.push(format!("{path}: $ref/definitions are not allowed"));
    }
    let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if in_junctor {
        for key in FORBIDDEN_IN_JUNCTORS {
            if node.contains_key(*key) && !(*key == "type" && int_or_string_branch(node)) {
                out.push(format!(
                    "{path}: {key} is not allowed inside anyOf/allOf/oneOf/not"
                ));
            }
        }
    } else if !node.contains_key("type") && !int_or_string && !preserve {
        out.push(format!("{path}: type is missing"));
    }
    if node.get("type").and_then(Value::as_str) == Some("array") && !node.contains_key("items") {
        out.push(format!("{path}: array without items"));
    }
    if node.contains_key("properties") && node.contains_key("additionalProperties") {
        out.push(format!(
            "{path}: properties and additionalProperties are mutually exclusive"
        ));
    }
    if let Some(Value::Object(props)) = node.get("properties") {
        for (name, child) in props {
            check(child, &format!("{path}.{name}"), in_junctor, out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child @ Value::Object(_)) = node.get(key) {
            check(child, &format!("{path}[{key}]"), in_junctor, out);
        }
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        if let Some(Value::Array(branches)) = node.get(key) {
            if int_or_string && key == "anyOf" {
                continue;
            }
            for (i, b) in branches.iter().enumerate() {
                check(b, &format!("{path}.{key}[{i}]"), true, out);
            }
        }
    }
    if let Some(not) = node.get("not") {
        check(not, &format!("{path}.not"), true, out);
    }
}

fn int_or_string_branch(node: &Map<String, Value>) -> bool {
    node.len() == 1
        && matches!(
            node.get("type").and_then(Value::as_str),
            Some("integer" | "string")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalize_restores_int_or_string_branches_and_formats() {
        let mut s = json!({"type": "object", "properties": {
            "q": {"anyOf": [{}, {}], "x-kubernetes-int-or-string": true},
            "n": {"type": "integer", "format": "uint8"}
        }});
        finalize(&mut s);
        assert_eq!(
            s["properties"]["q"]["anyOf"],
            json!([{"type": "integer"}, {"type": "string"}])
        );
        assert_eq!(s["properties"]["n"]["format"], "int32");
        assert!(violations(&s).is_empty(), "{:?}", violations(&s));
    }

    #[test]
    fn detects_non_structural_shapes() {
        let s = json!({"type": "object", "properties": {
            "a": {"description": "no type"},
            "b": {"type": "string", "oneOf": [{"type": "string", "description": "x"}]},
            "c": {"type": "array"},
            "d": {"$ref": "#/definitions/D", "type": "object"}
        }});
        let v = violations(&s);
        assert!(
            v.iter().any(|m| m.starts_with(".a: type is missing")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|m| m.contains(".b.oneOf[0]: type is not allowed")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|m| m.contains(".b.oneOf[0]: description is not allowed")),
            "{v:?}"
        );
        assert!(
            v.iter().any(|m| m.starts_with(".c: array without items")),
            "{v:?}"
        );
        assert!(v.iter().any(|m| m.starts_with(".d: $ref")), "{v:?}");
    }
}
