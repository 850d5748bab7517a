//! The agent side: samples go into a bounded buffer; a task keeps one stream open to the
//! operator, reconnecting with capped exponential backoff. When the buffer is full the newest
//! sample is dropped and counted (telemetry is periodic: the next one replaces it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::proto::{Sample, telemetry_client::TelemetryClient};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Handle agents push samples into.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<Sample>,
    stats: Arc<Stats>,
}

/// Counters for the agent's own metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub dropped: AtomicU64,
    pub sent: AtomicU64,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
}

impl Publisher {
    /// Queues a sample; false (and counted) when the buffer is full.
    pub fn offer(&self, sample: Sample) -> bool {
        let ok = self.tx.try_send(sample).is_ok();
        if !ok {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// Where and how to stream.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// e.g. `http://sovereign-operator.sovereign-system:8443`.
    pub endpoint: String,
    /// Samples held while disconnected.
    pub buffer: usize,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub connect_timeout: Duration,
    /// PEM CA bundle the operator's certificate must chain to, for `https://` endpoints;
    /// None trusts the system roots. The certificate is always verified.
    pub ca_pem: Option<String>,
}

/// Starts the streaming task. `token` is called on every (re)connect, so rotated ServiceAccount
/// tokens are picked up. The task ends when every `Publisher` handle is dropped.
pub fn start<F>(config: PublisherConfig, token: F) -> (Publisher, tokio::task::JoinHandle<()>)
where
    F: Fn() -> Option<String> + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(config.buffer.max(1));
    let stats = Arc::new(Stats::default());
    let task = tokio::spawn(run(config, token, rx, stats.clone()));
    (Publisher { tx, stats }, task)
}

async fn run<F>(
    config: PublisherConfig,
    token: F,
    mut rx: mpsc::Receiver<Sample>,
    stats: Arc<Stats>,
) where
    F: Fn() -> Option<String> + Send + Sync + 'static,
{
    let mut failures: u32 = 0;
    // A sample taken from the buffer but not yet sent when a stream broke is sent first next time.
    let mut carried: Option<Sample> = None;
    loop {
        if failures > 0 {
            let exp = failures.saturating_sub(1).min(16);
            let delay = config
                .backoff_base
                .saturating_mul(1u32 << exp)
                .min(config.backoff_cap);
            tokio::time::sleep(delay).await;
        }
        if carried.is_none() {
            // Wait for something to send before connecting; end when all handles are gone.
            match rx.recv().await {
                Some(s) => carried = Some(s),
                None => return,
            }
        }
        let sent_before = stats.sent.load(Ordering::Relaxed);
        match stream_once(&config, &token, &mut rx, &mut carried, &stats).await {
            Ok(()) => return,
            Err(e) => {
                // A stream that delivered samples worked: back off afresh from the base.
                if stats.sent.load(Ordering::Relaxed) > sent_before {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                stats.failures.fetch_add(1, Ordering::Relaxed);
                if is_not_leader(&e) {
                    tracing::debug!(
                        failures,
                        "reached an operator replica that does not lead; reconnecting"
                    );
                } else {
                    tracing::warn!(error = %e, failures, "telemetry stream to the operator broke; reconnecting");
                }
            }
        }
    }
}

fn is_not_leader(e: &BoxError) -> bool {
    e.downcast_ref::<tonic::Status>()
        .is_some_and(|s| s.code() == tonic::Code::Unavailable && s.message() == crate::NOT_LEADER)
}

async fn stream_once<F>(
    config: &PublisherConfig,
    token: &F,
    rx: &mut mpsc::Receiver<Sample>,
    carried: &mut Option<Sample>,
    stats: &Stats,
) -> Result<(), BoxError>
where
    F: Fn() -> Option<String> + Sync,
{
    let mut endpoint =
        Endpoint::from_shared(config.endpoint.clone())?.connect_timeout(config.connect_timeout);
    if config.endpoint.starts_with("https://") {
        let tls = match &config.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_enabled_roots(),
        };
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await?;
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let bearer: MetadataValue<_> = format!(
        "Bearer {}",
        token().ok_or("no ServiceAccount token to present")?
    )
    .parse()?;
    let mut client =
        TelemetryClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        });
    let (inner_tx, inner_rx) = mpsc::channel::<Sample>(16);
    let call = client.publish(ReceiverStream::new(inner_rx));
    tokio::pin!(call);
    let ended =
        |done: Result<tonic::Response<crate::proto::PublishSummary>, tonic::Status>| -> BoxError {
            match done {
                Ok(_) => "operator closed the stream".into(),
                Err(err) => Box::new(err),
            }
        };
    loop {
        let next = if let Some(s) = carried.take() {
            s
        } else {
            tokio::select! {
                // The operator answered or failed while we were idle: the stream is over.
                done = &mut call => return Err(ended(done)),
                msg = rx.recv() => {
                    let Some(s) = msg else {
                        // Every handle dropped: finish the stream cleanly.
                        drop(inner_tx);
                        return call.await.map(drop).map_err(|e| Box::new(e) as BoxError);
                    };
                    s
                }
            }
        };
        tokio::select! {
            done = &mut call => {
                *carried = Some(next);
                return Err(ended(done));
            }
            sent = inner_tx.send(next.clone()) => {
                if sent.is_err() {
                    *carried = Some(next);
                    return Err("stream closed".into());
                }
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
