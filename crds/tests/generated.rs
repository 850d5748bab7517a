//! Properties of the generated CRDs that the API server and kubectl users depend on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use serde_json::Value;
use sovereign_crds::{crds, drift, openapi_schema, structural};

#[test]
fn committed_yaml_matches_the_code() {
    for dir in sovereign_crds::crd_dirs() {
        let drifted = drift(&dir).unwrap();
        assert!(
            drifted.is_empty(),
            "CRD YAML in {} drifted from the Rust types: {drifted:?}; run hack/crdgen.sh",
            dir.display()
        );
    }
}

#[test]
fn every_schema_is_structural() {
    for crd in crds() {
        let schema = openapi_schema(&crd).unwrap();
        let v = structural::violations(&schema);
        assert!(
            v.is_empty(),
            "{} is not structural: {v:#?}",
            crd.spec.names.kind
        );
    }
}

fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            let p = format!("{path}.{name}");
            let described = child
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                out.push(p.clone());
            }
            undocumented(child, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_field_has_a_description_for_kubectl_explain() {
    for crd in crds() {
        let schema = openapi_schema(&crd).unwrap();
        let mut missing = Vec::new();
        undocumented(&schema, &crd.spec.names.kind, &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:#?}"
        );
    }
}

#[test]
fn names_scope_and_columns() {
    let expected = [
        ("Site", "site", "Cluster"),
        ("Rack", "rack", "Cluster"),
        ("Server", "srv", "Cluster"),
        ("Tenant", "tnt", "Cluster"),
        ("StorageVolume", "svol", "Namespaced"),
        ("ComputeInstance", "sci", "Namespaced"),
    ];
    let all = crds();
    assert_eq!(all.len(), expected.len());
    for (crd, (kind, short, scope)) in all.iter().zip(expected) {
        assert_eq!(crd.spec.group, "sovereign.io");
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.scope, scope, "{kind}");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.to_owned()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["sovereign".to_owned()][..]),
            "{kind}"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        let subresources = version.subresources.as_ref().unwrap();
        assert!(
            subresources.status.is_some(),
            "{kind} needs a status subresource"
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns.last(), Some(&"Age"), "{kind}: {columns:?}");
    }
    let server = &all[2].spec.versions[0];
    let columns: Vec<&str> = server
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    for wanted in ["Rack", "Power", "Health", "Watts", "Inlet °C", "Age"] {
        assert!(
            columns.contains(&wanted),
            "kubectl get srv lacks {wanted}: {columns:?}"
        );
    }
}

#[test]
fn conditions_are_list_maps_keyed_by_type() {
    for crd in crds() {
        let schema = openapi_schema(&crd).unwrap();
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(
            conditions["x-kubernetes-list-type"], "map",
            "{}",
            crd.spec.names.kind
        );
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        let required = conditions["items"]["required"].as_array().unwrap();
        for field in ["type", "status", "reason", "lastTransitionTime"] {
            assert!(
                required.iter().any(|r| r == field),
                "condition.{field} must be required"
            );
        }
        assert!(conditions["items"]["properties"]["observedGeneration"].is_object());
    }
}

#[test]
fn quantities_accept_integers_and_strings() {
    let vol: sovereign_crds::StorageVolumeSpec =
        serde_json::from_value(serde_json::json!({"size": 100, "tier": "nvme"})).unwrap();
    assert_eq!(vol.size.0, "100");
    assert_eq!(vol.replicas, 1, "replicas defaults to 1");
    assert!(vol.encrypted, "volumes are encrypted by default");
    let vol: sovereign_crds::StorageVolumeSpec =
        serde_json::from_value(serde_json::json!({"size": "1.5Ti", "tier": "ssd"})).unwrap();
    assert_eq!(vol.size.parse().unwrap().to_units().unwrap(), 3 << 39);
    assert_eq!(serde_json::to_value(&vol).unwrap()["size"], "1.5Ti");
}
