//! The bmc role's targets from the cluster: Server objects (`spec.bmc`) and the credential
//! Secrets they name, as metal3's baremetal-operator does. Servers are watched; Secrets are
//! read one by one with `get` (no list/watch of Secrets: the collector's Role grants `get` in
//! its credentials namespace only) and cached for a while, so a rotated password is picked up
//! within that time and the API server is not asked a thousand times a minute.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use sovereign_crds::Server;
use sovereign_telemetry_api::watch::mirror;

use crate::poller::Target;
use crate::redfish::Endpoint;

/// How long a Secret read is trusted.
pub const SECRET_TTL: Duration = Duration::from_mins(10);

/// Builds a Server's endpoint from its spec and its credential Secret (None: not found).
/// Only Secrets in `namespace` are used, whatever the Server says (a Server must not make the
/// collector read another namespace's Secrets).
pub fn endpoint_for(
    server: &Server,
    secret: Option<&Secret>,
    namespace: &str,
    timeout: Duration,
) -> Result<Endpoint, String> {
    let bmc = &server.spec.bmc;
    let r = &bmc.credentials_secret_ref;
    if r.namespace != namespace {
        return Err(format!(
            "credentials Secret {}/{} is outside the collector's namespace {namespace}",
            r.namespace, r.name
        ));
    }
    let secret =
        secret.ok_or_else(|| format!("credentials Secret {}/{} not found", r.namespace, r.name))?;
    let key = |k: &str| -> Result<String, String> {
        let data = secret.data.as_ref().and_then(|d| d.get(k));
        let value = data.ok_or_else(|| {
            format!(
                "credentials Secret {}/{} has no {k:?} key",
                r.namespace, r.name
            )
        })?;
        String::from_utf8(value.0.clone())
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|_| {
                format!(
                    "credentials Secret {}/{} key {k:?} is not UTF-8",
                    r.namespace, r.name
                )
            })
    };
    Ok(Endpoint {
        address: bmc.address.clone(),
        username: key("username")?,
        password: key("password")?,
        ca_bundle_pem: bmc.ca_bundle.clone(),
        insecure_skip_verify: bmc.insecure_skip_verify,
        timeout,
    })
}

/// Watches Servers and reads their Secrets.
pub struct Discovery {
    servers: Store<Server>,
    secrets: Api<Secret>,
    namespace: String,
    timeout: Duration,
    cache: HashMap<String, (Instant, Option<Secret>)>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("namespace", &self.namespace)
            .field("servers", &self.servers.len())
            .field("cached_secrets", &self.cache.len())
            .finish_non_exhaustive()
    }
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("the Server watch ended before its first list")]
    NotReady,
}

impl Discovery {
    /// Starts watching Servers matching `selector` (all when None); waits for the first list.
    pub async fn start(
        client: kube::Client,
        namespace: &str,
        selector: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, DiscoveryError> {
        let mut config = watcher::Config::default();
        if let Some(s) = selector {
            config = config.labels(s);
        }
        let servers = mirror(Api::<Server>::all(client.clone()), config, "Server");
        servers
            .wait_until_ready()
            .await
            .map_err(|_| DiscoveryError::NotReady)?;
        Ok(Self {
            servers,
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            timeout,
            cache: HashMap::new(),
        })
    }

    /// The current targets, sorted by server name. A Secret that cannot be read makes that
    /// server's target an error; an API failure keeps the last good read.
    pub async fn targets(&mut self) -> Vec<Target> {
        let now = Instant::now();
        let mut servers = self.servers.state();
        servers.sort_by_key(|s| s.name_any());
        let mut wanted = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(servers.len());
        for server in servers {
            let r = &server.spec.bmc.credentials_secret_ref;
            if r.namespace == self.namespace {
                wanted.insert(r.name.clone());
                let fresh = self
                    .cache
                    .get(&r.name)
                    .is_some_and(|(at, _)| now.duration_since(*at) < SECRET_TTL);
                if !fresh {
                    match self.secrets.get_opt(&r.name).await {
                        Ok(secret) => {
                            self.cache.insert(r.name.clone(), (now, secret));
                        }
                        Err(e) => {
                            // Keep the last good read; never log the Secret itself.
                            tracing::warn!(secret = %r.name, error = %e, "reading BMC credentials");
                        }
                    }
                }
            }
            let secret = self.cache.get(&r.name).and_then(|(_, s)| s.as_ref());
            out.push(Target {
                name: server.name_any(),
                endpoint: endpoint_for(&server, secret, &self.namespace, self.timeout),
                interval: Some(Duration::from_secs(u64::from(
                    server.spec.bmc.poll_interval_seconds,
                ))),
            });
        }
        self.cache.retain(|name, _| wanted.contains(name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn server(ns: &str) -> Server {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sovereign.io/v1alpha1",
            "kind": "Server",
            "metadata": {"name": "hn1-r01-s01"},
            "spec": {
                "rack": "hn1-r01",
                "bmc": {
                    "address": "https://10.20.1.1",
                    "credentialsSecretRef": {"name": "bmc-hn1-r01-s01", "namespace": ns},
                    "caBundle": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                }
            }
        }))
        .unwrap()
    }

    fn secret(keys: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(
                keys.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn endpoints_come_from_the_spec_and_the_secret() {
        let s = secret(&[("username", b"sovereign-ro"), ("password", b"pw-1\n")]);
        let ep = endpoint_for(
            &server("sovereign-system"),
            Some(&s),
            "sovereign-system",
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(ep.address, "https://10.20.1.1");
        assert_eq!(ep.username, "sovereign-ro");
        assert_eq!(ep.password, "pw-1");
        assert!(ep.ca_bundle_pem.unwrap().starts_with("-----BEGIN"));
        assert!(!ep.insecure_skip_verify);
    }

    #[test]
    fn missing_or_foreign_secrets_are_that_servers_error() {
        let t = Duration::from_secs(30);
        let err = |srv: &Server, s: Option<&Secret>| {
            endpoint_for(srv, s, "sovereign-system", t).unwrap_err()
        };
        assert_eq!(
            err(&server("sovereign-system"), None),
            "credentials Secret sovereign-system/bmc-hn1-r01-s01 not found"
        );
        assert_eq!(
            err(
                &server("sovereign-system"),
                Some(&secret(&[("username", b"u")]))
            ),
            "credentials Secret sovereign-system/bmc-hn1-r01-s01 has no \"password\" key"
        );
        let s = secret(&[("username", b"u"), ("password", b"p")]);
        assert!(err(&server("tenant-a"), Some(&s)).contains("outside the collector's namespace"));
        let bad = secret(&[("username", b"u"), ("password", &[0xff, 0xfe])]);
        assert!(err(&server("sovereign-system"), Some(&bad)).contains("not UTF-8"));
    }
}
