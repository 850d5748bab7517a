//! Publishes the CA that signs the operator's certificate as a ConfigMap, for agents to trust.
//! With cert-manager the Secret carries `ca.crt` but nothing puts it where node agents may
//! read it (they must never read the Secret: it holds the operator's key); the operator reads
//! the mounted `ca.crt` and applies it as the ConfigMap, again when it changes (a CA renewed).

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

/// How often the mounted CA is read again.
const EVERY: Duration = Duration::from_mins(1);

/// Where the CA comes from and where it goes.
#[derive(Clone, Debug)]
pub struct CaPublish {
    pub ca_file: PathBuf,
    pub namespace: String,
    pub configmap: String,
}

/// The ConfigMap holding `pem` as `ca.crt`, or None when `pem` holds no certificate.
pub fn configmap(target: &CaPublish, pem: &str) -> Option<ConfigMap> {
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return None;
    }
    Some(ConfigMap {
        metadata: ObjectMeta {
            name: Some(target.configmap.clone()),
            namespace: Some(target.namespace.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "sovereign-operator".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        data: Some([("ca.crt".to_owned(), pem.to_owned())].into()),
        ..ConfigMap::default()
    })
}

/// Applies the ConfigMap now and whenever the file changes, until the process ends. Failures
/// are logged and tried again: agents already running keep the CA they read.
pub async fn run(client: kube::Client, target: CaPublish) {
    let api: Api<ConfigMap> = Api::namespaced(client, &target.namespace);
    let mut published: Option<String> = None;
    loop {
        match std::fs::read_to_string(&target.ca_file) {
            Ok(pem) if published.as_deref() != Some(pem.as_str()) => {
                if publish(&api, &target, &pem).await {
                    published = Some(pem);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = %target.ca_file.display(), error = %e, "operator CA not readable");
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// One apply of the ConfigMap; whether it landed.
async fn publish(api: &Api<ConfigMap>, target: &CaPublish, pem: &str) -> bool {
    let Some(cm) = configmap(target, pem) else {
        tracing::warn!(file = %target.ca_file.display(), "no CA certificate to publish (does the issuer set ca.crt?)");
        return false;
    };
    let params = PatchParams::apply(crate::FIELD_MANAGER).force();
    match api
        .patch(&target.configmap, &params, &Patch::Apply(&cm))
        .await
    {
        Ok(_) => {
            tracing::info!(configmap = %target.configmap, "operator CA published for the agents");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, configmap = %target.configmap, "publishing the operator CA failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> CaPublish {
        CaPublish {
            ca_file: "/etc/sovereign/tls/ca.crt".into(),
            namespace: "sovereign-system".into(),
            configmap: "sovereign-operator-ca".into(),
        }
    }

    #[test]
    fn the_ca_goes_out_as_ca_crt_and_nothing_else_does() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let cm = configmap(&target(), pem).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("sovereign-operator-ca"));
        assert_eq!(cm.data.unwrap()["ca.crt"], pem);
        // A key or an empty file is never published.
        assert!(configmap(&target(), "-----BEGIN PRIVATE KEY-----\nMIIE\n").is_none());
        assert!(configmap(&target(), "").is_none());
    }
}
