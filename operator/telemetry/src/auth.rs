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
}

/// Why a token was refused.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error("token not valid")]
    Invalid,
    #[error("{0} may not publish telemetry")]
    NotAllowed(String),
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
    pub fn new(tokens: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(
            tokens
                .into_iter()
                .map(|(t, u)| (t, Identity { username: u }))
                .collect(),
        )
    }
}

impl TokenVerifier for StaticTokens {
    async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.0.get(token).cloned().ok_or(AuthError::Invalid)
    }
}

/// Kubernetes ServiceAccount tokens, checked with the TokenReview API for the telemetry audience,
/// then against the service accounts allowed to publish.
#[derive(Clone)]
pub struct TokenReviewVerifier {
    client: kube::Client,
    audience: String,
    allowed: Vec<String>,
}

impl std::fmt::Debug for TokenReviewVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewVerifier")
            .field("audience", &self.audience)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl TokenReviewVerifier {
    /// `allowed`: usernames such as `system:serviceaccount:sovereign-system:sovereign-agent`.
    pub fn new(client: kube::Client, audience: impl Into<String>, allowed: Vec<String>) -> Self {
        Self {
            client,
            audience: audience.into(),
            allowed,
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
        let username = status
            .user
            .and_then(|u| u.username)
            .ok_or(AuthError::Invalid)?;
        if !self.allowed.contains(&username) {
            return Err(AuthError::NotAllowed(username));
        }
        Ok(Identity { username })
    }
}
