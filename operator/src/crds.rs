//! Installing and checking the Sovereign CRDs in a cluster.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::{Error, FIELD_MANAGER};

/// State of one CRD in the cluster compared with the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrdState {
    UpToDate,
    /// Differs, but serves everything the operator reads and writes: a newer chart's CRD
    /// (more fields) during an upgrade, or other printer columns.
    Compatible(&'static str),
    Missing,
    /// Present but its schema, names or columns differ (the named part).
    Outdated(&'static str),
}

/// One CRD and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdReport {
    pub name: String,
    pub state: CrdState,
}

fn name_of(crd: &CustomResourceDefinition) -> String {
    crd.metadata.name.clone().unwrap_or_default()
}

/// Compares a CRD read from the cluster with the generated one (the parts the API server does
/// not default: names, scope, versions' schema and printer columns). A live CRD that has every
/// field the code has (and perhaps more) is `Compatible`; one that lacks any is `Outdated`.
pub fn compare(wanted: &CustomResourceDefinition, live: &CustomResourceDefinition) -> CrdState {
    let (w, l) = (&wanted.spec, &live.spec);
    if w.names.kind != l.names.kind || w.names.plural != l.names.plural {
        return CrdState::Outdated("names");
    }
    if w.scope != l.scope {
        return CrdState::Outdated("scope");
    }
    let mut differs = None;
    if w.names.short_names != l.names.short_names || w.names.categories != l.names.categories {
        differs = Some("short names");
    }
    if w.versions.len() != l.versions.len() {
        differs = Some("versions");
    }
    for wv in &w.versions {
        let Some(lv) = l.versions.iter().find(|lv| lv.name == wv.name) else {
            return CrdState::Outdated("versions");
        };
        if wv.served && !lv.served {
            return CrdState::Outdated("versions");
        }
        if wv.storage != lv.storage {
            differs = Some("versions");
        }
        if wv.schema != lv.schema {
            let as_json = |v: &Option<_>| serde_json::to_value(v).unwrap_or_default();
            if !covers(&as_json(&lv.schema), &as_json(&wv.schema)) {
                return CrdState::Outdated("schema");
            }
            differs = Some("schema");
        }
        if wv.additional_printer_columns != lv.additional_printer_columns {
            differs = Some("printer columns");
        }
    }
    differs.map_or(CrdState::UpToDate, CrdState::Compatible)
}

/// Whether the live schema has every property of the wanted one, of the same type and
/// admitting every value of its enum, at every depth (other validations and descriptions may
/// differ).
fn covers(live: &serde_json::Value, wanted: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (live, wanted) {
        (Value::Object(l), Value::Object(w)) => {
            if w.get("type").is_some() && l.get("type") != w.get("type") {
                return false;
            }
            if let (Some(Value::Array(we)), Some(Value::Array(le))) = (w.get("enum"), l.get("enum"))
                && !we.iter().all(|v| le.contains(v))
            {
                return false;
            }
            [
                "properties",
                "openAPIV3Schema",
                "additionalProperties",
                "items",
            ]
            .iter()
            .filter_map(|key| w.get(*key).map(|wv| (key, wv)))
            .all(|(key, wv)| match (key, l.get(*key)) {
                (&"properties", Some(Value::Object(lp))) => wv.as_object().is_some_and(|wp| {
                    wp.iter()
                        .all(|(name, ws)| lp.get(name).is_some_and(|ls| covers(ls, ws)))
                }),
                (_, Some(lv)) => covers(lv, wv),
                (_, None) => wv == &Value::Bool(false),
            })
        }
        (l, w) => l == w,
    }
}

/// Reports each Sovereign CRD's state in the cluster.
pub async fn check(client: &kube::Client) -> Result<Vec<CrdReport>, Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut out = Vec::new();
    for wanted in sovereign_crds::crds() {
        let name = name_of(&wanted);
        let live = api.get_opt(&name).await.map_err(|source| Error::Api {
            context: format!("get CRD {name}"),
            source,
        })?;
        let state = live.map_or(CrdState::Missing, |live| compare(&wanted, &live));
        out.push(CrdReport { name, state });
    }
    Ok(out)
}

/// Waits up to `timeout` until every CRD is installed and serves what the operator needs
/// (a chart upgrade may apply the CRDs a moment after the new operator starts); fails then.
pub async fn require_current(client: &kube::Client, timeout: Duration) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let reports = check(client).await?;
        for r in &reports {
            if let CrdState::Compatible(part) = r.state {
                tracing::info!(crd = %r.name, differs = part, "CRD differs from this operator's but serves all it needs");
            }
        }
        let bad: Vec<String> = reports
            .into_iter()
            .filter(|r| !matches!(r.state, CrdState::UpToDate | CrdState::Compatible(_)))
            .map(|r| format!("{} ({:?})", r.name, r.state))
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::CrdsOutOfDate(bad.join(", ")));
        }
        tracing::warn!(crds = %bad.join(", "), "waiting for the CRDs this operator needs");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Applies every CRD with server-side apply and waits until each is Established.
pub async fn install(client: &kube::Client, timeout: Duration) -> Result<Vec<String>, Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in sovereign_crds::crds() {
        let name = name_of(&crd);
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| Error::Api {
                context: format!("apply CRD {name}"),
                source,
            })?;
        tracing::info!(crd = %name, "applied");
        names.push(name);
    }
    for name in &names {
        let established = await_condition(api.clone(), name, conditions::is_crd_established());
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => tracing::info!(crd = %name, "established"),
            Ok(Err(e)) => {
                return Err(Error::Api {
                    context: format!("wait for CRD {name}"),
                    source: kube::Error::Service(Box::new(e)),
                });
            }
            Err(_) => {
                return Err(Error::NotEstablished {
                    name: name.clone(),
                    seconds: timeout.as_secs(),
                });
            }
        }
    }
    install_admission(client).await?;
    Ok(names)
}

/// Applies the admission policies and their bindings (after the CRDs: the tenant-uniqueness
/// policy takes Tenants as parameters).
pub async fn install_admission(client: &kube::Client) -> Result<(), Error> {
    use kube::api::DynamicObject;
    use kube::core::GroupVersionKind;
    use kube::discovery::ApiResource;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for obj in sovereign_crds::admission::policies() {
        let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", &kind);
        let lower = kind.to_ascii_lowercase();
        // ValidatingAdmissionPolicy → validatingadmissionpolicies; …Binding → …bindings.
        let plural = match lower.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{lower}s"),
        };
        let api: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &ApiResource::from_gvk_with_plural(&gvk, &plural),
        );
        api.patch(&name, &params, &Patch::Apply(&obj))
            .await
            .map_err(|source| Error::Api {
                context: format!("apply {kind} {name}"),
                source,
            })?;
        tracing::info!(kind = %kind, name = %name, "applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_detects_what_changed() {
        let crds = sovereign_crds::crds();
        let wanted = &crds[0];
        assert_eq!(compare(wanted, wanted), CrdState::UpToDate);

        let mut live = wanted.clone();
        live.spec.names.kind = "Other".into();
        assert_eq!(compare(wanted, &live), CrdState::Outdated("names"));
        let mut live = wanted.clone();
        live.spec.names.short_names = None;
        assert_eq!(compare(wanted, &live), CrdState::Compatible("short names"));

        let mut live = wanted.clone();
        live.spec.versions[0].schema = None;
        assert_eq!(compare(wanted, &live), CrdState::Outdated("schema"));

        let mut live = wanted.clone();
        live.spec.versions[0].additional_printer_columns = None;
        assert_eq!(
            compare(wanted, &live),
            CrdState::Compatible("printer columns")
        );

        // What the API server adds on its own (status, conversion defaults) is not drift.
        let mut live = wanted.clone();
        live.status = Some(
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionStatus::default(),
        );
        live.metadata.resource_version = Some("42".into());
        assert_eq!(compare(wanted, &live), CrdState::UpToDate);
    }

    fn spec_properties(
        crd: &mut CustomResourceDefinition,
    ) -> &mut std::collections::BTreeMap<
        String,
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
    > {
        let root = crd.spec.versions[0]
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
            .and_then(|s| s.properties.as_mut());
        root.expect("a spec with properties")
    }

    #[test]
    fn a_newer_crd_with_one_more_field_serves_this_operator_and_an_older_one_does_not() {
        let crds = sovereign_crds::crds();
        let wanted = &crds[0];
        // A later chart's CRD (the upgrade) has a field this operator does not know.
        let mut newer = wanted.clone();
        spec_properties(&mut newer).insert(
            "futureField".into(),
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps {
                type_: Some("string".into()),
                ..Default::default()
            },
        );
        assert_eq!(compare(wanted, &newer), CrdState::Compatible("schema"));
        // An older CRD lacks one this operator writes: its status would be pruned.
        let mut older = wanted.clone();
        let first = spec_properties(&mut older).keys().next().cloned().unwrap();
        spec_properties(&mut older).remove(&first);
        assert_eq!(compare(wanted, &older), CrdState::Outdated("schema"));
        // A field of another type is not the same field.
        let mut retyped = wanted.clone();
        if let Some(p) = spec_properties(&mut retyped).values_mut().next() {
            p.type_ = Some("boolean".into());
        }
        assert_eq!(compare(wanted, &retyped), CrdState::Outdated("schema"));
    }

    #[test]
    fn an_enum_read_as_booleans_is_not_the_operator_s_enum() {
        // YAML 1.1 turned the Server CRD's power states `On`/`Off` into true/false once.
        let servers = sovereign_crds::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == "Server")
            .unwrap();
        let mut json = serde_json::to_value(&servers).unwrap();
        let text = json.to_string().replace(r#""On","Off""#, "true,false");
        assert_ne!(text, json.to_string(), "the CRD has the power-state enum");
        json = serde_json::from_str(&text).unwrap();
        let live: CustomResourceDefinition = serde_json::from_value(json).unwrap();
        assert_eq!(compare(&servers, &live), CrdState::Outdated("schema"));
    }
}
