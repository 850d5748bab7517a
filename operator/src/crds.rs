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
/// not default: names, scope, versions' schema and printer columns).
pub fn compare(wanted: &CustomResourceDefinition, live: &CustomResourceDefinition) -> CrdState {
    let (w, l) = (&wanted.spec, &live.spec);
    if w.names.kind != l.names.kind
        || w.names.plural != l.names.plural
        || w.names.short_names != l.names.short_names
        || w.names.categories != l.names.categories
    {
        return CrdState::Outdated("names");
    }
    if w.scope != l.scope {
        return CrdState::Outdated("scope");
    }
    if w.versions.len() != l.versions.len() {
        return CrdState::Outdated("versions");
    }
    for (wv, lv) in w.versions.iter().zip(&l.versions) {
        if wv.name != lv.name || wv.served != lv.served || wv.storage != lv.storage {
            return CrdState::Outdated("versions");
        }
        if wv.schema != lv.schema {
            return CrdState::Outdated("schema");
        }
        if wv.additional_printer_columns != lv.additional_printer_columns {
            return CrdState::Outdated("printer columns");
        }
    }
    CrdState::UpToDate
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

/// Fails unless every CRD is installed and up to date.
pub async fn require_current(client: &kube::Client) -> Result<(), Error> {
    let bad: Vec<String> = check(client)
        .await?
        .into_iter()
        .filter(|r| r.state != CrdState::UpToDate)
        .map(|r| format!("{} ({:?})", r.name, r.state))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::CrdsOutOfDate(bad.join(", ")))
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
        live.spec.names.short_names = None;
        assert_eq!(compare(wanted, &live), CrdState::Outdated("names"));

        let mut live = wanted.clone();
        live.spec.versions[0].schema = None;
        assert_eq!(compare(wanted, &live), CrdState::Outdated("schema"));

        let mut live = wanted.clone();
        live.spec.versions[0].additional_printer_columns = None;
        assert_eq!(
            compare(wanted, &live),
            CrdState::Outdated("printer columns")
        );

        // What the API server adds on its own (status, conversion defaults) is not drift.
        let mut live = wanted.clone();
        live.status = Some(
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionStatus::default(),
        );
        live.metadata.resource_version = Some("42".into());
        assert_eq!(compare(wanted, &live), CrdState::UpToDate);
    }
}
