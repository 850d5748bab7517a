//! Sovereign operator library: everything the `sovereign-operator` binary does, testable.
//!
//! Installing and checking the Sovereign CRDs, summarising the inventory, `plan` (placement
//! from YAML files, no cluster needed), the telemetry front and the controllers (`runtime`).

pub mod ca_publish;
pub mod controller;
pub mod crds;
pub mod inventory;
pub mod node_taints;
pub mod packed;
mod packed_samples;
pub mod plan;
pub mod plugin;
pub mod runtime;
pub mod telemetry;
pub mod workload_store;

use thiserror::Error;

/// Field manager for every server-side apply the operator makes, so ownership is clear.
pub const FIELD_MANAGER: &str = "sovereign-operator";

/// Errors of the operator's cluster operations.
#[derive(Debug, Error)]
pub enum Error {
    #[error("no cluster reachable through KUBECONFIG or in-cluster config: {0}")]
    NoCluster(#[source] kube::Error),
    #[error("Kubernetes API call failed ({context}): {source}")]
    Api {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("CRD {name} did not become Established within {seconds} s")]
    NotEstablished { name: String, seconds: u64 },
    #[error("CRDs missing or outdated: {0}")]
    CrdsOutOfDate(String),
}

/// Connects with the default configuration (KUBECONFIG, then in-cluster) and checks the API
/// server answers, so "no cluster" is reported once, clearly, instead of per call.
pub async fn connect() -> Result<kube::Client, Error> {
    let client = kube::Client::try_default()
        .await
        .map_err(Error::NoCluster)?;
    client.apiserver_version().await.map_err(Error::NoCluster)?;
    Ok(client)
}
