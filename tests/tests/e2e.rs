//! End to end against the cluster in KUBECONFIG (kind, or any cluster with CEL validation):
//! CRDs accepted by a real API server, every valid sample accepted, every invalid sample refused
//! with its expected message and nothing created. Skips, saying so, when no cluster answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde_json::Value;
use sovereign_operator::crds::{self, CrdState};
use sovereign_tests::samples::{invalid_samples, valid_objects};

const MANAGER: &str = "sovereign-e2e";

/// Says a test was skipped where people see it: straight to stderr, past the harness capture.
fn skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: no cluster reachable through KUBECONFIG ({why})"
    );
}

async fn cluster(test: &str) -> Option<kube::Client> {
    match tokio::time::timeout(Duration::from_secs(15), sovereign_operator::connect()).await {
        Ok(Ok(client)) => Some(client),
        Ok(Err(e)) => {
            skipped(test, &e.to_string());
            None
        }
        Err(_) => {
            skipped(test, "the API server did not answer within 15 s");
            None
        }
    }
}

async fn api_for(client: &kube::Client, obj: &Value) -> Api<DynamicObject> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (
            String::new(),
            obj["apiVersion"].as_str().unwrap().to_owned(),
        ),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, obj["kind"].as_str().unwrap());
    let (resource, caps) = pinned_kind(client, &gvk).await.unwrap();
    match caps.scope {
        Scope::Namespaced => {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    }
}

async fn apply(client: &kube::Client, obj: &Value) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, obj).await;
    let name = obj["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

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
    let Some(client) = cluster("crds_and_samples_on_a_real_api_server").await else {
        return;
    };

    crds::install(&client, Duration::from_mins(1))
        .await
        .unwrap();
    for report in crds::check(&client).await.unwrap() {
        assert_eq!(report.state, CrdState::UpToDate, "{}", report.name);
    }

    for (path, obj) in valid_objects().unwrap() {
        if let Err(e) = apply(&client, &obj).await {
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
            apply(&client, before)
                .await
                .unwrap_or_else(|e| panic!("{name}: stored object refused: {e}"));
        }
        match apply(&client, &s.object).await {
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
        let api = api_for(&client, &s.object).await;
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
                api.delete(obj_name, &DeleteParams::default())
                    .await
                    .unwrap();
            }
            (Some(_), None) => failures.push(format!("{name}: the stored object vanished")),
            (None, None) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn kubectl_explain_has_descriptions_and_category_lists_every_kind() {
    let Some(client) =
        cluster("kubectl_explain_has_descriptions_and_category_lists_every_kind").await
    else {
        return;
    };
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
            assert!(
                schema["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{kind}.{field}"
            );
        }
    }
}
