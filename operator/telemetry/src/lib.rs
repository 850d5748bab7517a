//! Agent → operator telemetry over gRPC.
//!
//! - [`proto`]: the protocol (`proto/telemetry.proto`).
//! - [`Hub`]: the operator side's state: the latest sample per server and source, and change
//!   notifications, for status writing and placement.
//! - [`serve`] / [`TelemetryService`]: the gRPC server; every stream is authenticated with a
//!   bearer token checked by a [`TokenVerifier`] (Kubernetes TokenReview in clusters).
//! - [`publisher`]: the agent side, re-exported from `sovereign-telemetry-api` (the protocol's
//!   own crate, which is all a node agent links).

pub mod audit;
pub mod auth;
pub mod cluster;
pub mod export;
pub mod hub;
pub mod metrics;
pub mod tls;

pub use tls::ServerTls;

/// The agents' side, from `sovereign-telemetry-api` (re-exported: tests and benches publish).
pub use sovereign_telemetry_api::publisher;

/// The protocol's messages (`sovereign-telemetry-api`) and, generated here, its server.
pub mod proto {
    pub use sovereign_telemetry_api::proto::*;

    mod server {
        #![allow(
            clippy::pedantic,
            clippy::large_enum_variant,
            missing_debug_implementations
        )] // generated code
        tonic::include_proto!("sovereign.telemetry.v1");
    }
    pub use server::telemetry_server;
}

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

pub use auth::{AuthError, Identity, StaticTokens, TokenReviewVerifier, TokenVerifier};
pub use hub::{Hub, Rejection};
pub use proto::{PublishSummary, Sample};

/// The gRPC service: authenticates each stream, then hands samples to the hub. With a
/// leadership channel it takes samples only while leading: a replica that does not lead refuses
/// streams with `UNAVAILABLE` ([`NOT_LEADER`]) and ends its open ones when it stops leading, so
/// agents reconnect until they reach the replica that writes status.
#[derive(Debug)]
pub struct TelemetryService<V> {
    hub: Arc<Hub>,
    verifier: Arc<V>,
    leading: Option<tokio::sync::watch::Receiver<bool>>,
}

pub use sovereign_telemetry_api::NOT_LEADER;

impl<V: TokenVerifier> TelemetryService<V> {
    pub fn new(hub: Arc<Hub>, verifier: Arc<V>) -> Self {
        Self {
            hub,
            verifier,
            leading: None,
        }
    }

    /// Takes samples only while `leading` says so.
    #[must_use]
    pub fn leading(mut self, leading: Option<tokio::sync::watch::Receiver<bool>>) -> Self {
        self.leading = leading;
        self
    }
}

/// Resolves when leadership is lost (never without an election, or once it ended).
async fn lost(leading: Option<&mut tokio::sync::watch::Receiver<bool>>) {
    if let Some(rx) = leading
        && rx.wait_for(|l| !*l).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

fn bearer<T>(req: &Request<T>) -> Result<&str, Status> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

#[tonic::async_trait]
impl<V: TokenVerifier> proto::telemetry_server::Telemetry for TelemetryService<V> {
    async fn publish(
        &self,
        req: Request<Streaming<Sample>>,
    ) -> Result<Response<PublishSummary>, Status> {
        // Before authenticating: a follower costs the API server no TokenReview.
        let mut leading = self.leading.clone();
        if leading.as_ref().is_some_and(|rx| !*rx.borrow()) {
            return Err(Status::unavailable(NOT_LEADER));
        }
        let identity = self
            .verifier
            .verify(bearer(&req)?)
            .await
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let mut stream = req.into_inner();
        let mut summary = PublishSummary::default();
        loop {
            let sample = tokio::select! {
                message = stream.message() => match message? {
                    Some(sample) => sample,
                    None => break,
                },
                () = lost(leading.as_mut()) => return Err(Status::unavailable(NOT_LEADER)),
            };
            match self.hub.accept(sample, &identity) {
                Ok(()) => summary.accepted += 1,
                Err(rejection) => {
                    summary.rejected += 1;
                    tracing::debug!(agent = %identity.username, %rejection, "sample rejected");
                }
            }
        }
        Ok(Response::new(summary))
    }
}

/// Serves the telemetry service on `listener` until `shutdown` resolves, over plain HTTP/2
/// (tests, or behind a TLS-terminating mesh). Prefer [`serve_tls`]: agents send bearer tokens.
pub async fn serve<V: TokenVerifier>(
    listener: TcpListener,
    hub: Arc<Hub>,
    verifier: Arc<V>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_tls(
        listener,
        TelemetryService::new(hub, verifier),
        None,
        shutdown,
    )
    .await
}

/// Serves `service` (see [`TelemetryService::leading`]), over TLS when `tls` is given.
pub async fn serve_tls<V: TokenVerifier>(
    listener: TcpListener,
    service: TelemetryService<V>,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let service = proto::telemetry_server::TelemetryServer::new(service)
        // Samples are small; refuse anything that is not.
        .max_decoding_message_size(64 * 1024);
    let router = tonic::transport::Server::builder().add_service(service);
    match tls {
        Some(tls) => {
            let acceptor = tls::acceptor(&tls)?;
            router
                .serve_with_incoming_shutdown(tls::incoming(listener, acceptor), shutdown)
                .await?;
        }
        None => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await?;
        }
    }
    Ok(())
}

/// Why the telemetry server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}
