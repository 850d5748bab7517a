//! Authenticating agents: bearer tokens checked by a verifier.

use std::collections::HashMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use thiserror::Error;

/// Who an agent is, as its token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// e.g. `system:serviceaccount:sovereign-system:sovereign-collector`.
    pub username: String,
    pub role: Role,
}

/// What an agent may publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The BMC collector: Redfish samples for any server.
    Collector,
    /// A node agent: OS samples for its own node only, so a compromised tenant node cannot
    /// report another server healthy or sick.
    Node { node: String },
    /// Anything: tests and local development only ([`TokenReviewVerifier`] never grants it).
    Unrestricted,
}

impl Identity {
    pub fn collector(username: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            role: Role::Collector,
        }
    }

    pub fn node(username: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            role: Role::Node { node: node.into() },
        }
    }

    pub fn unrestricted(username: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            role: Role::Unrestricted,
        }
    }
}

/// The node a bound ServiceAccount token was issued for (Kubernetes 1.30+ adds it to the
/// TokenReview's user extra for tokens of pods).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Why a token was refused.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error("token not valid")]
    Invalid,
    #[error("{0} may not publish telemetry")]
    NotAllowed(String),
    #[error("{0} is a node agent but its token is not bound to a node (needs Kubernetes 1.30+)")]
    NoNode(String),
    #[error("token review failed: {0}")]
    Review(String),
}

/// Checks a bearer token.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(&self, token: &str) -> impl Future<Output = Result<Identity, AuthError>> + Send;
}

/// Fixed tokens: for tests and single-binary development.
#[derive(Debug, Default)]
pub struct StaticTokens(HashMap<String, Identity>);

impl StaticTokens {
    pub fn new(tokens: impl IntoIterator<Item = (String, Identity)>) -> Self {
        Self(tokens.into_iter().collect())
    }
}

impl TokenVerifier for StaticTokens {
    async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.0.get(token).cloned().ok_or(AuthError::Invalid)
    }
}

/// Kubernetes ServiceAccount tokens, checked with the TokenReview API for the telemetry audience,
/// then against the service accounts allowed to publish: collectors, and node agents whose
/// token is bound to a pod on a node.
#[derive(Clone)]
pub struct TokenReviewVerifier {
    client: kube::Client,
    audience: String,
    collectors: Vec<String>,
    nodes: Vec<String>,
}

impl std::fmt::Debug for TokenReviewVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewVerifier")
            .field("audience", &self.audience)
            .field("collectors", &self.collectors)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl TokenReviewVerifier {
    /// Usernames such as `system:serviceaccount:sovereign-system:sovereign-collector` (BMC
    /// collectors) and `...:sovereign-agent` (node agents).
    pub fn new(
        client: kube::Client,
        audience: impl Into<String>,
        collectors: Vec<String>,
        nodes: Vec<String>,
    ) -> Self {
        Self {
            client,
            audience: audience.into(),
            collectors,
            nodes,
        }
    }
}

impl TokenVerifier for TokenReviewVerifier {
    async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Review(e.to_string()))?;
        let status = answer.status.ok_or(AuthError::Invalid)?;
        if status.authenticated != Some(true) {
            return Err(AuthError::Invalid);
        }
        let user = status.user.ok_or(AuthError::Invalid)?;
        let username = user.username.ok_or(AuthError::Invalid)?;
        identity_of(&self.collectors, &self.nodes, username, user.extra.as_ref())
    }
}

/// The role a reviewed user gets.
fn identity_of(
    collectors: &[String],
    nodes: &[String],
    username: String,
    extra: Option<&std::collections::BTreeMap<String, Vec<String>>>,
) -> Result<Identity, AuthError> {
    if collectors.contains(&username) {
        return Ok(Identity::collector(username));
    }
    if !nodes.contains(&username) {
        return Err(AuthError::NotAllowed(username));
    }
    match extra
        .and_then(|e| e.get(NODE_NAME_EXTRA))
        .map(Vec::as_slice)
    {
        Some([node]) if !node.is_empty() => Ok(Identity::node(username, node.clone())),
        _ => Err(AuthError::NoNode(username)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLLECTOR: &str = "system:serviceaccount:sovereign-system:sovereign-collector";
    const AGENT: &str = "system:serviceaccount:sovereign-system:sovereign-agent";

    fn check(username: &str, extra: Option<(&str, &[&str])>) -> Result<Identity, AuthError> {
        let extra = extra.map(|(k, v)| {
            std::collections::BTreeMap::from([(
                k.to_owned(),
                v.iter().map(|s| (*s).to_owned()).collect(),
            )])
        });
        identity_of(
            &[COLLECTOR.to_owned()],
            &[AGENT.to_owned()],
            username.to_owned(),
            extra.as_ref(),
        )
    }

    #[test]
    fn roles_come_from_the_service_account_and_the_bound_node() {
        assert_eq!(check(COLLECTOR, None).unwrap().role, Role::Collector);
        assert_eq!(
            check(AGENT, Some((NODE_NAME_EXTRA, &["hn1-r01-s01"])))
                .unwrap()
                .role,
            Role::Node {
                node: "hn1-r01-s01".into()
            }
        );
        assert!(matches!(check(AGENT, None), Err(AuthError::NoNode(_))));
        assert!(matches!(
            check(AGENT, Some((NODE_NAME_EXTRA, &["a", "b"]))),
            Err(AuthError::NoNode(_))
        ));
        assert!(matches!(
            check("system:serviceaccount:tenant-a:default", None),
            Err(AuthError::NotAllowed(_))
        ));
    }
}
