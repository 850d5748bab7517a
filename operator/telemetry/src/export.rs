//! Exports of the telemetry: Prometheus text on `/metrics` (scraped), and OTLP (pushed) when an
//! endpoint is configured. Both carry the same [`Metric`]s with `server`, `rack` and `site`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use thiserror::Error;
use tokio::net::TcpListener;

use crate::hub::Hub;
use crate::metrics::{Metric, Metrics, Placement, readings};

/// What `/metrics` answers with: the OpenMetrics text prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics` (Prometheus/OpenMetrics text) and `/healthz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS)], metrics.encode()) }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .fallback(|| async { StatusCode::NOT_FOUND.into_response() })
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Why OTLP export could not start.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("OTLP endpoint {0:?} must be an http:// or https:// URL")]
    Endpoint(String),
    #[error("building the OTLP exporter: {0}")]
    Build(String),
}

/// Where and how often to push.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// gRPC endpoint of an OpenTelemetry collector, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// `service.name` of the resource.
    pub service_name: String,
}

impl OtlpConfig {
    /// From the standard variables: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; None when neither is set (export off).
    pub fn from_env(service_name: &str) -> Option<Self> {
        Self::from_env_for(
            &[
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ],
            service_name,
        )
    }

    /// From the first of `variables` that is set (a signal's own endpoint, then the common one).
    pub fn from_env_for(variables: &[&str], service_name: &str) -> Option<Self> {
        let endpoint = variables
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|e| !e.is_empty()))?;
        let interval = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::from_mins(1), Duration::from_millis);
        Some(Self {
            endpoint,
            interval,
            timeout: Duration::from_secs(10),
            service_name: service_name.to_owned(),
        })
    }
}

/// An OTLP/gRPC exporter builder (metrics or logs) aimed at `config`: an http(s) URL, TLS verified
/// against the system roots for https (there is no switch to skip verification).
pub(crate) fn tonic_exporter<B>(builder: B, config: &OtlpConfig) -> Result<B, ExportError>
where
    B: opentelemetry_otlp::WithExportConfig + opentelemetry_otlp::WithTonicConfig,
{
    if !(config.endpoint.starts_with("http://") || config.endpoint.starts_with("https://")) {
        return Err(ExportError::Endpoint(config.endpoint.clone()));
    }
    let mut builder = builder
        .with_endpoint(config.endpoint.clone())
        .with_timeout(config.timeout);
    if config.endpoint.starts_with("https://") {
        builder =
            builder.with_tls_config(tonic::transport::ClientTlsConfig::new().with_enabled_roots());
    }
    Ok(builder)
}

/// Pushes the hub's latest samples over OTLP/gRPC every interval; stops on drop.
pub struct Otlp {
    provider: SdkMeterProvider,
}

impl std::fmt::Debug for Otlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otlp").finish_non_exhaustive()
    }
}

impl Otlp {
    /// Starts pushing. Each export reads the hub's latest samples (observable gauges), so a
    /// server the hub no longer holds is no longer exported. Must be called inside a Tokio
    /// runtime (the gRPC channel lives on it); [`Otlp::flush`] blocks, so call it from a
    /// blocking thread.
    pub fn start(
        config: &OtlpConfig,
        hub: &Arc<Hub>,
        locate: impl Fn(&str) -> Placement + Send + Sync + 'static,
    ) -> Result<Self, ExportError> {
        let exporter = tonic_exporter(
            opentelemetry_otlp::MetricExporter::builder().with_tonic(),
            config,
        )?
        .build()
        .map_err(|e| ExportError::Build(e.to_string()))?;
        let reader = PeriodicReader::builder(exporter)
            .with_interval(config.interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let meter = provider.meter("sovereign-telemetry");
        let locate: Arc<dyn Fn(&str) -> Placement + Send + Sync> = Arc::new(locate);
        for metric in Metric::ALL {
            let hub = hub.clone();
            let locate = locate.clone();
            // The instrument lives as long as the provider; the handle is not needed.
            let _gauge = meter
                .f64_observable_gauge(format!("sovereign_{}", metric.name()))
                .with_description(metric.help())
                .with_callback(move |observer| {
                    for sample in hub.snapshot() {
                        let at = locate(&sample.server);
                        for r in readings(&sample).into_iter().filter(|r| r.metric == metric) {
                            let mut attributes = vec![
                                KeyValue::new("server", at.server.clone()),
                                KeyValue::new("rack", at.rack.clone()),
                                KeyValue::new("site", at.site.clone()),
                            ];
                            if let Some(class) = r.class {
                                attributes.push(KeyValue::new("class", class));
                            }
                            observer.observe(r.value, &attributes);
                        }
                    }
                })
                .build();
        }
        Ok(Self { provider })
    }

    /// Pushes now (blocking: call from a blocking thread).
    pub fn flush(&self) -> Result<(), ExportError> {
        self.provider
            .force_flush()
            .map_err(|e| ExportError::Build(e.to_string()))
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        // Shutdown blocks until the last export finished, and that export needs the Tokio
        // runtime the caller may be running on: shut down on a thread of its own.
        let provider = self.provider.clone();
        std::thread::spawn(move || {
            if let Err(e) = provider.shutdown() {
                tracing::debug!(error = %e, "OTLP exporter shutdown");
            }
        });
    }
}
