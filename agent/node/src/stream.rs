//! The stream to the operator, as both agents configure it on their command line.

use std::path::PathBuf;
use std::time::Duration;

use sovereign_telemetry_api::publisher::{self, Publisher, PublisherConfig};

/// Where and how samples are streamed.
#[derive(clap::Args, Debug)]
pub struct StreamArgs {
    /// Operator telemetry endpoint, e.g. https://sovereign-operator.sovereign-system:8443
    /// (http:// only inside a TLS-terminating mesh: the token travels with every stream).
    #[arg(long, env = "SOVEREIGN_OPERATOR")]
    pub operator: String,
    /// PEM CA bundle the operator's certificate must chain to (https endpoints); without it
    /// the system roots are used. The certificate is always verified.
    #[arg(long, env = "SOVEREIGN_OPERATOR_CA_FILE")]
    pub operator_ca_file: Option<PathBuf>,
    /// Projected ServiceAccount token (audience sovereign-telemetry); re-read on every connect.
    #[arg(
        long,
        env = "SOVEREIGN_TOKEN_FILE",
        default_value = "/var/run/secrets/sovereign/token"
    )]
    pub token_file: PathBuf,
    /// Samples held while the operator is unreachable.
    #[arg(long, default_value_t = 4096)]
    pub buffer: usize,
}

/// Starts the publisher `args` describe; the token file is re-read on every connect (projected
/// tokens rotate).
pub fn start(
    args: &StreamArgs,
) -> Result<(Publisher, tokio::task::JoinHandle<()>), Box<dyn std::error::Error>> {
    let token_file = args.token_file.clone();
    let ca_pem = match &args.operator_ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading the operator CA {}: {e}", path.display()))?,
        ),
        None => None,
    };
    Ok(publisher::start(
        PublisherConfig {
            endpoint: args.operator.clone(),
            buffer: args.buffer,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_mins(2),
            connect_timeout: Duration::from_secs(10),
            ca_pem,
        },
        move || {
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|t| t.trim().to_owned())
        },
    ))
}
