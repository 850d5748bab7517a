//! Every valid sample is admitted and every invalid one is refused with its expected message,
//! by the OpenAPI schema (jsonschema) and the CEL rules (kube-cel) of the generated CRDs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sovereign_tests::ApiServerModel;
use sovereign_tests::samples::{invalid_samples, valid_objects};

fn model() -> ApiServerModel {
    ApiServerModel::new().expect("the generated CRDs compile as JSON schema and CEL")
}

#[test]
fn every_valid_sample_is_admitted() {
    let model = model();
    let objects = valid_objects().unwrap();
    let mut sovereign = 0;
    for (path, obj) in &objects {
        let (api_version, kind) = (
            obj["apiVersion"].as_str().unwrap(),
            obj["kind"].as_str().unwrap(),
        );
        if model.serves(api_version, kind) {
            sovereign += 1;
            if let Err(errors) = model.admit(obj, None) {
                panic!(
                    "{} ({kind} {}) refused: {errors:#?}",
                    path.display(),
                    obj["metadata"]["name"]
                );
            }
        } else {
            assert!(
                matches!((api_version, kind), ("v1", "Namespace" | "Secret")),
                "{}: unexpected kind {api_version} {kind}",
                path.display()
            );
        }
    }
    assert_eq!(
        sovereign, 27,
        "2 sites, 4 racks, 12 servers, 3 tenants, 3 volumes, 3 instances"
    );
}

fn names_of<'a>(objects: &'a [(std::path::PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| o["kind"] == kind)
        .collect()
}

#[test]
fn valid_set_is_a_consistent_inventory() {
    let objects = valid_objects().unwrap();
    let sites = names_of(&objects, "Site");
    let racks = names_of(&objects, "Rack");
    let servers = names_of(&objects, "Server");
    let secrets = names_of(&objects, "Secret");
    let tenants = names_of(&objects, "Tenant");
    let namespaces: BTreeSet<&str> = names_of(&objects, "Namespace")
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(sites.len(), 2);
    assert!(sites.iter().all(|s| s["spec"]["jurisdiction"] == "VN"));
    assert_eq!(racks.len(), 4);
    assert_eq!(servers.len(), 12);
    assert_eq!(tenants.len(), 3);
    assert!(!names_of(&objects, "StorageVolume").is_empty());
    assert!(!names_of(&objects, "ComputeInstance").is_empty());

    let classifications: BTreeSet<&str> = tenants
        .iter()
        .map(|t| t["spec"]["classification"].as_str().unwrap())
        .collect();
    assert_eq!(
        classifications.len(),
        3,
        "tenants of three different classifications"
    );

    let site_names: BTreeSet<&str> = sites
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    let rack_site: BTreeMap<&str, &str> = racks
        .iter()
        .map(|r| {
            (
                r["metadata"]["name"].as_str().unwrap(),
                r["spec"]["site"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        rack_site.values().all(|s| site_names.contains(s)),
        "every rack's site exists"
    );
    let secret_keys: BTreeSet<(&str, &str)> = secrets
        .iter()
        .map(|s| {
            (
                s["metadata"]["namespace"].as_str().unwrap(),
                s["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    for s in &secrets {
        assert!(s["stringData"]["username"].is_string() && s["stringData"]["password"].is_string());
    }
    for srv in &servers {
        let name = srv["metadata"]["name"].as_str().unwrap();
        assert!(
            rack_site.contains_key(srv["spec"]["rack"].as_str().unwrap()),
            "{name}: rack exists"
        );
        let r = &srv["spec"]["bmc"]["credentialsSecretRef"];
        let key = (
            r["namespace"].as_str().unwrap(),
            r["name"].as_str().unwrap(),
        );
        assert!(
            secret_keys.contains(&key),
            "{name}: BMC secret {key:?} exists"
        );
        assert!(
            namespaces.contains(key.0),
            "{name}: secret namespace exists"
        );
    }
    for t in &tenants {
        if let Some(allowed) = t["spec"]["residency"]["sites"].as_array() {
            assert!(
                allowed
                    .iter()
                    .all(|s| site_names.contains(s.as_str().unwrap()))
            );
        }
        for ns in t["spec"]["namespaces"].as_array().into_iter().flatten() {
            assert!(
                namespaces.contains(ns.as_str().unwrap()),
                "tenant namespace {ns} exists"
            );
        }
    }
    for kind in ["StorageVolume", "ComputeInstance"] {
        for w in names_of(&objects, kind) {
            let ns = w["metadata"]["namespace"].as_str().unwrap();
            assert!(namespaces.contains(ns), "{kind} namespace {ns} exists");
        }
    }
}

#[test]
fn every_invalid_sample_is_refused_with_its_message() {
    let model = model();
    let samples = invalid_samples().unwrap();
    assert!(
        samples.len() >= 30,
        "only {} invalid samples",
        samples.len()
    );
    let mut failures = Vec::new();
    for s in &samples {
        let name = s.path.file_name().unwrap().to_string_lossy();
        if let Some(before) = &s.before
            && let Err(e) = model.admit(before, None)
        {
            failures.push(format!(
                "{name}: the stored object of the update is itself refused: {e:?}"
            ));
            continue;
        }
        match model.admit(&s.object, s.before.as_ref()) {
            Ok(()) => failures.push(format!(
                "{name}: admitted, expected {}: {}",
                s.expect_field, s.expect_message
            )),
            Err(errors) => {
                let hit = errors
                    .iter()
                    .any(|e| e.field == s.expect_field && e.message.contains(&s.expect_message));
                if !hit {
                    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    failures.push(format!(
                        "{name}: expected `{}: ...{}...`, got {got:#?}",
                        s.expect_field, s.expect_message
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_kind_has_invalid_samples() {
    let kinds: BTreeSet<String> = invalid_samples()
        .unwrap()
        .iter()
        .map(|s| s.object["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "Site",
        "Rack",
        "Server",
        "Tenant",
        "StorageVolume",
        "ComputeInstance",
    ] {
        assert!(kinds.contains(kind), "no invalid sample for {kind}");
    }
}

/// Collects (path, rule) for every CEL rule in a schema.
fn rules(schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    for r in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push((path.to_owned(), r["rule"].as_str().unwrap().to_owned()));
    }
    for (k, v) in schema["properties"].as_object().into_iter().flatten() {
        rules(v, &format!("{path}.{k}"), out);
    }
    if schema["items"].is_object() {
        rules(&schema["items"], &format!("{path}[]"), out);
    }
}

#[test]
fn cel_rules_use_only_crd_variables_and_stay_within_cost_budget() {
    let model = model();
    for kind in [
        "Site",
        "Rack",
        "Server",
        "Tenant",
        "StorageVolume",
        "ComputeInstance",
    ] {
        let schema = model.schema(kind).unwrap();
        let compiled = kube_cel::compile_schema(schema);
        let mut found = Vec::new();
        rules(schema, kind, &mut found);
        assert!(!found.is_empty(), "{kind} has no CEL rules");
        for (path, rule) in found {
            let warnings =
                kube_cel::analyze_rule(&rule, &compiled, kube_cel::ScopeContext::CrdValidation);
            let blocking: Vec<_> = warnings
                .iter()
                .filter(|w| {
                    matches!(
                        w.kind,
                        kube_cel::WarningKind::WrongScope | kube_cel::WarningKind::CostExceeded
                    )
                })
                .collect();
            assert!(blocking.is_empty(), "{path}: {rule}: {blocking:#?}");
        }
    }
}

#[test]
fn model_refuses_what_it_should_and_reports_api_server_wording() {
    // Guards the model itself: a mutated valid object must be refused in the API server's words.
    let model = model();
    let (_, volume) = valid_objects()
        .unwrap()
        .into_iter()
        .find(|(_, o)| o["kind"] == "StorageVolume")
        .unwrap();
    let mut bad = volume.clone();
    bad["spec"]["replicas"] = 9.into();
    let errors = model.admit(&bad, None).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "spec.replicas: Invalid value: 9: spec.replicas in body should be less than or equal to 5"
    );
    let mut bad = volume;
    bad["spec"]["tier"] = "tape".into();
    let errors = model.admit(&bad, None).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "spec.tier: Unsupported value: \"tape\": supported values: \"nvme\", \"ssd\", \"hdd\""
    );
}
