//! End to end against the cluster in KUBECONFIG (kind, or any cluster with CEL validation):
//! CRDs accepted by a real API server, every valid sample accepted, every invalid sample refused
//! with its expected message and nothing created. Skips, saying so, when no cluster answers
//! (fails instead under `SOVEREIGN_E2E=required`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::Value;
use sovereign_operator::crds::{self, CrdState};
use sovereign_tests::e2e::cluster;
use sovereign_tests::samples::{invalid_samples, valid_objects};

/// True when every field of `expected` has the same value in `live` (which also carries the
/// defaults the API server filled in).
fn contains(live: &Value, expected: &Value) -> bool {
    match (live, expected) {
        (Value::Object(l), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|lv| contains(lv, v))),
        _ => live == expected,
    }
}

#[tokio::test]
async fn crds_and_samples_on_a_real_api_server() {
    let Some(cluster) = cluster("crds_and_samples_on_a_real_api_server").await else {
        return;
    };
    let client = cluster.client.clone();

    crds::install(&client, Duration::from_mins(1))
        .await
        .unwrap();
    for report in crds::check(&client).await.unwrap() {
        assert_eq!(report.state, CrdState::UpToDate, "{}", report.name);
    }

    for (path, obj) in valid_objects().unwrap() {
        if let Err(e) = cluster.apply(&obj).await {
            panic!(
                "{}: {} {} refused: {e}",
                path.display(),
                obj["kind"],
                obj["metadata"]["name"]
            );
        }
    }

    let mut failures = Vec::new();
    for s in invalid_samples().unwrap() {
        let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(before) = &s.before {
            cluster
                .apply(before)
                .await
                .unwrap_or_else(|e| panic!("{name}: stored object refused: {e}"));
        }
        match cluster.apply(&s.object).await {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(kube::Error::Api(status)) => {
                if !(status.message.contains(&s.expect_field)
                    && status.message.contains(&s.expect_message))
                {
                    failures.push(format!(
                        "{name}: expected `{}` and `{}` in: {}",
                        s.expect_field, s.expect_message, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: unexpected error {e}")),
        }
        // Nothing half-created: a refused create leaves no object; a refused update leaves the
        // stored spec as it was.
        let api = cluster.api_for(&s.object).await;
        let obj_name = s.object["metadata"]["name"].as_str().unwrap();
        let stored = api.get_opt(obj_name).await.unwrap();
        match (&s.before, stored) {
            (None, Some(_)) => failures.push(format!("{name}: the refused object was created")),
            (Some(before), Some(live)) => {
                if !contains(&live.data["spec"], &before["spec"]) {
                    failures.push(format!(
                        "{name}: the refused update changed the stored spec"
                    ));
                }
                delete_now(&api, obj_name).await;
            }
            (Some(_), None) => failures.push(format!("{name}: the stored object vanished")),
            (None, None) => {}
        }
    }
    // Leave the cluster as found: later e2e tests run controllers that would act on them.
    for (_, obj) in valid_objects().unwrap().iter().rev() {
        if obj["kind"] == "Namespace" {
            continue;
        }
        let api = cluster.api_for(obj).await;
        delete_now(&api, obj["metadata"]["name"].as_str().unwrap()).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Deletes a sample object at once: workloads get the operator's release finalizer on create
/// (the MutatingAdmissionPolicy), and no operator runs here to remove it.
async fn delete_now(api: &Api<DynamicObject>, name: &str) {
    let _ = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let _ = api.delete(name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn kubectl_explain_has_descriptions_and_category_lists_every_kind() {
    let Some(cluster) =
        cluster("kubectl_explain_has_descriptions_and_category_lists_every_kind").await
    else {
        return;
    };
    let client = cluster.client.clone();
    crds::install(&client, Duration::from_mins(1))
        .await
        .unwrap();

    // `kubectl get sovereign` resolves the category through discovery.
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in sovereign_crds::crds() {
        let live = crd_api
            .get(crd.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        let categories = live
            .status
            .and_then(|s| s.accepted_names)
            .and_then(|n| n.categories)
            .unwrap_or_default();
        assert!(
            categories.contains(&"sovereign".to_owned()),
            "{:?}",
            crd.metadata.name
        );
    }

    // `kubectl explain` reads the published OpenAPI v3 document.
    let req = http::Request::get("/openapi/v3/apis/sovereign.io/v1alpha1")
        .body(Vec::new())
        .unwrap();
    let doc: Value = serde_json::from_str(&client.request_text(req).await.unwrap()).unwrap();
    let schemas = &doc["components"]["schemas"];
    for (kind, path) in [
        ("Server", &["spec", "bmc"][..]),
        ("StorageVolume", &["spec"][..]),
    ] {
        let mut node = &schemas[format!("io.sovereign.v1alpha1.{kind}")];
        for p in path {
            node = &node["properties"][*p];
        }
        let props = node["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{kind}: no properties"));
        for (field, schema) in props {
            let description = schema["description"].as_str().unwrap_or_default();
            assert!(!description.is_empty(), "{kind}.{field}");
            // Paragraphs, not doc-comment line breaks in the middle of a sentence.
            assert!(
                !description.replace("\n\n", "").contains('\n'),
                "{kind}.{field}: {description:?}"
            );
        }
    }
}
