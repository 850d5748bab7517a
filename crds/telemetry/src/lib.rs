//! The agent ↔ operator telemetry protocol, and everything an agent needs to speak it.
//!
//! - [`proto`]: the messages and the gRPC client (`proto/telemetry.proto`).
//! - [`publisher`]: a bounded buffer and one stream that reconnects with backoff.
//! - [`shutdown_signal`]: SIGTERM or Ctrl-C.
//! - `watch` (feature): Kubernetes watch helpers for the BMC collector and the operator.
//!
//! The operator's side (hub, TokenReview authentication, exports) lives in
//! `sovereign-telemetry`; a node agent links only this crate (as NFD keeps its gRPC API beside
//! its CRDs).

pub mod publisher;
#[cfg(feature = "watch")]
pub mod watch;

pub mod proto {
    #![allow(
        clippy::pedantic,
        clippy::large_enum_variant,
        missing_debug_implementations
    )] // generated code
    tonic::include_proto!("sovereign.telemetry.v1");
}

/// The gRPC `UNAVAILABLE` message of an operator replica that does not hold the Lease: samples
/// go to the leader (the one that writes status), so an agent reconnects; each connection goes
/// through the Service afresh, which sends it to a replica at random.
pub const NOT_LEADER: &str = "not the leader";

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
