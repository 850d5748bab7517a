//! The operator's telemetry front: the agents' gRPC stream (TLS, TokenReview, per-agent
//! roles), the hub of latest samples, `/metrics` and OTLP, labelled from the inventory.
//! Status writing and placement read the hub (operator issue).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use sovereign_crds::Rack;

use crate::packed::PackedServer;
use sovereign_telemetry::cluster::mirror;
use sovereign_telemetry::export::{self, Otlp, OtlpConfig};
use sovereign_telemetry::metrics::{Metrics, Placement};
use sovereign_telemetry::{Hub, ServerTls, TokenReviewVerifier};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Audience agents' projected tokens are issued for; tokens for other audiences are refused.
pub const AUDIENCE: &str = "sovereign-telemetry";

/// Why the telemetry front could not run.
#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error(
        "the telemetry endpoint needs --tls-cert-file and --tls-key-file (agents send tokens), \
         or --plaintext-telemetry behind a TLS-terminating mesh"
    )]
    NoTls,
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the inventory watch ended before its first list")]
    Inventory,
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error("telemetry gRPC server: {0}")]
    Serve(#[from] sovereign_telemetry::ServeError),
}

/// How the front is served.
#[derive(Clone, Debug)]
pub struct TelemetryOptions {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Certificate and key files (PEM), reread only at start.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Explicit opt-out of TLS.
    pub plaintext: bool,
    /// Usernames of BMC collectors (Redfish samples for any server).
    pub collectors: Vec<String>,
    /// Usernames of node agents (OS samples for their own node).
    pub node_agents: Vec<String>,
}

impl TelemetryOptions {
    /// Refuses a configuration that would take tokens over plaintext without an explicit
    /// opt-out (checked before anything is changed in the cluster).
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if self.tls.is_none() && !self.plaintext {
            return Err(TelemetryError::NoTls);
        }
        Ok(())
    }
}

/// Server → rack → site, from the watched inventory.
#[derive(Clone)]
pub struct Locator {
    servers: Store<PackedServer>,
    racks: Store<Rack>,
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locator")
            .field("servers", &self.servers.len())
            .field("racks", &self.racks.len())
            .finish()
    }
}

impl Locator {
    pub fn new(servers: Store<PackedServer>, racks: Store<Rack>) -> Self {
        Self { servers, racks }
    }

    /// Waits for the first full list of servers and racks.
    pub async fn ready(&self) -> Result<(), TelemetryError> {
        self.servers
            .wait_until_ready()
            .await
            .map_err(|_| TelemetryError::Inventory)?;
        self.racks
            .wait_until_ready()
            .await
            .map_err(|_| TelemetryError::Inventory)
    }

    /// Where a sample's server stands. Node agents publish under their node name, which maps
    /// to the Server whose `spec.nodeName` it is. Unknown names get empty rack and site.
    pub fn placement(&self, name: &str) -> Placement {
        let server = self.servers.get(&ObjectRef::new(name)).or_else(|| {
            self.servers
                .find(|s| s.brief().node.as_deref() == Some(name))
        });
        let Some(server) = server else {
            return Placement {
                server: name.to_owned(),
                rack: String::new(),
                site: String::new(),
            };
        };
        let rack = server.brief().rack.to_string();
        let site = self
            .racks
            .get(&ObjectRef::new(&rack))
            .map(|r| r.spec.site.clone())
            .unwrap_or_default();
        Placement {
            server: server.name_any(),
            rack,
            site,
        }
    }
}

fn read(path: &PathBuf) -> Result<String, TelemetryError> {
    std::fs::read_to_string(path).map_err(|source| TelemetryError::Read {
        path: path.clone(),
        source,
    })
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, TelemetryError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })
}

/// The telemetry front, started: the hub of latest samples (for status writing and placement:
/// [`Front::hub`]) and what serving needs.
pub struct Front {
    hub: Arc<Hub>,
    locator: Locator,
    metrics: Arc<Metrics>,
    verifier: Arc<TokenReviewVerifier>,
    tls: Option<ServerTls>,
    options: TelemetryOptions,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("hub", &self.hub)
            .field("locator", &self.locator)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Front {
    /// Checks the options, reads the TLS files and starts the inventory watches; `serve` waits
    /// for their first list before it takes samples.
    pub fn start(client: kube::Client, options: TelemetryOptions) -> Result<Self, TelemetryError> {
        let servers = mirror(
            Api::<PackedServer>::all(client.clone()),
            watcher::Config::default(),
            "Server",
        );
        let racks = mirror(
            Api::<Rack>::all(client.clone()),
            watcher::Config::default(),
            "Rack",
        );
        Self::start_with(client, options, servers, racks)
    }

    /// [`Front::start`] on stores the caller already keeps (the operator's controllers share
    /// theirs, so a large fleet is held once).
    pub fn start_with(
        client: kube::Client,
        options: TelemetryOptions,
        servers: Store<PackedServer>,
        racks: Store<Rack>,
    ) -> Result<Self, TelemetryError> {
        options.validate()?;
        let tls = match (&options.tls, options.plaintext) {
            (Some((cert, key)), _) => {
                // Read now so a missing file fails at start, not at the first handshake.
                read(cert)?;
                read(key)?;
                Some(ServerTls::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    every: sovereign_telemetry::tls::RELOAD_EVERY,
                })
            }
            (None, true) => {
                tracing::warn!("telemetry endpoint without TLS (--plaintext-telemetry)");
                None
            }
            (None, false) => return Err(TelemetryError::NoTls),
        };
        let locator = Locator::new(servers, racks);
        let metrics = Arc::new(Metrics::new());
        let placement = locator.clone();
        let hub = Arc::new(
            Hub::default().with_metrics(metrics.clone(), move |name| placement.placement(name)),
        );
        let verifier = Arc::new(TokenReviewVerifier::new(
            client,
            AUDIENCE,
            options.collectors.clone(),
            options.node_agents.clone(),
        ));
        Ok(Self {
            hub,
            locator,
            metrics,
            verifier,
            tls,
            options,
        })
    }

    /// The latest samples and change notifications.
    pub fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    /// Server → rack → site from the watched inventory.
    pub fn locator(&self) -> &Locator {
        &self.locator
    }

    /// Serves the stream, `/metrics` and OTLP until `shutdown` resolves; with `leading`, takes
    /// samples only while this replica holds the Lease (agents reconnect to the one that does).
    pub async fn serve(
        self,
        leading: Option<tokio::sync::watch::Receiver<bool>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), TelemetryError> {
        let Self {
            hub,
            locator,
            metrics,
            verifier,
            tls,
            options,
        } = self;
        // Samples taken before the first list would be labelled without rack and site.
        locator.ready().await?;
        let stop = CancellationToken::new();
        let metrics_listener = bind(options.metrics_addr).await?;
        let metrics_task = tokio::spawn(export::serve_metrics(
            metrics_listener,
            metrics,
            stop.clone().cancelled_owned(),
        ));
        let _otlp = match OtlpConfig::from_env("sovereign-operator") {
            Some(config) => {
                tracing::info!(endpoint = %config.endpoint, "pushing telemetry over OTLP");
                Some(Otlp::start(&config, &hub, move |name| {
                    locator.placement(name)
                })?)
            }
            None => None,
        };
        let grpc_listener = bind(options.grpc_addr).await?;
        tracing::info!(grpc = %options.grpc_addr, metrics = %options.metrics_addr, tls = tls.is_some(), "telemetry front up");
        let grpc = sovereign_telemetry::serve_tls(
            grpc_listener,
            sovereign_telemetry::TelemetryService::new(hub, verifier).leading(leading),
            tls,
            stop.clone().cancelled_owned(),
        );
        let result = tokio::select! {
            r = grpc => r.map_err(TelemetryError::from),
            () = shutdown => Ok(()),
        };
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), metrics_task).await;
        result
    }
}

/// Starts and serves the front until `shutdown` resolves.
pub async fn serve(
    client: kube::Client,
    options: TelemetryOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    Front::start(client, options)?.serve(None, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::Packed;
    use kube::runtime::watcher::Event;
    use sovereign_crds::Server;

    fn server(name: &str, rack: &str, node: Option<&str>) -> Server {
        let mut s: Server = serde_json::from_value(serde_json::json!({
            "apiVersion": "sovereign.io/v1alpha1",
            "kind": "Server",
            "metadata": {"name": name},
            "spec": {
                "rack": rack,
                "bmc": {
                    "address": "https://10.0.0.1",
                    "credentialsSecretRef": {"name": "bmc", "namespace": "sovereign-system"},
                    "insecureSkipVerify": true
                }
            }
        }))
        .unwrap();
        s.spec.node_name = node.map(str::to_owned);
        s
    }

    fn rack(name: &str, site: &str) -> Rack {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "sovereign.io/v1alpha1",
            "kind": "Rack",
            "metadata": {"name": name},
            "spec": {"site": site, "powerBudgetWatts": 12000, "maxInletCelsius": 32}
        }))
        .unwrap()
    }

    #[test]
    fn samples_are_placed_by_server_or_node_name() {
        let (servers, mut sw) = kube::runtime::reflector::store();
        let (racks, mut rw) = kube::runtime::reflector::store();
        sw.apply_watcher_event(&Event::Apply(
            Packed::pack(server("hn1-r01-s01", "hn1-r01", Some("worker-7"))).unwrap(),
        ));
        rw.apply_watcher_event(&Event::Apply(rack("hn1-r01", "hn1")));
        let locator = Locator::new(servers, racks);
        let want = Placement {
            server: "hn1-r01-s01".into(),
            rack: "hn1-r01".into(),
            site: "hn1".into(),
        };
        assert_eq!(locator.placement("hn1-r01-s01"), want);
        assert_eq!(locator.placement("worker-7"), want);
        assert_eq!(
            locator.placement("unknown"),
            Placement {
                server: "unknown".into(),
                rack: String::new(),
                site: String::new()
            }
        );
    }
}
