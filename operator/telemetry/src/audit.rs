//! The operator's audit records (tracing events with target [`AUDIT_TARGET`]: every placement
//! decision, refusal, move and release) exported as OTLP logs when an endpoint is configured,
//! beside the process's own log. Only those records leave: the rest of the log stays local.

use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;

use crate::export::{ExportError, OtlpConfig, tonic_exporter};

/// Target of the audit records.
pub const AUDIT_TARGET: &str = "sovereign::audit";

/// Where audit records go: `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (None: not exported).
pub fn config_from_env(service_name: &str) -> Option<OtlpConfig> {
    OtlpConfig::from_env_for(
        &[
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ],
        service_name,
    )
}

/// Exports audit records over OTLP/gRPC in batches; flushes what is left on drop.
pub struct AuditLogs {
    provider: SdkLoggerProvider,
}

impl std::fmt::Debug for AuditLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLogs").finish_non_exhaustive()
    }
}

impl AuditLogs {
    /// Starts the exporter. Must be called inside a Tokio runtime (the gRPC channel lives on
    /// it).
    pub fn start(config: &OtlpConfig) -> Result<Self, ExportError> {
        let exporter = tonic_exporter(
            opentelemetry_otlp::LogExporter::builder().with_tonic(),
            config,
        )?
        .build()
        .map_err(|e| ExportError::Build(e.to_string()))?;
        let provider = SdkLoggerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Self { provider })
    }

    /// A tracing layer that hands the audit records, and only them, to the exporter.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        OpenTelemetryTracingBridge::new(&self.provider).with_filter(
            Targets::new().with_target(AUDIT_TARGET, tracing::level_filters::LevelFilter::INFO),
        )
    }

    /// Exports what is queued now (blocking: call from a blocking thread).
    pub fn flush(&self) -> Result<(), ExportError> {
        self.provider
            .force_flush()
            .map_err(|e| ExportError::Build(e.to_string()))
    }
}

impl Drop for AuditLogs {
    fn drop(&mut self) {
        // Shutdown blocks until the last export finished, which needs the Tokio runtime the
        // caller may be running on: shut down on a thread of its own.
        let provider = self.provider.clone();
        std::thread::spawn(move || {
            if let Err(e) = provider.shutdown() {
                tracing::debug!(error = %e, "OTLP audit log exporter shutdown");
            }
        });
    }
}
