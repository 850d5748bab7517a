//! The collector's own metrics (`/metrics`), for alerting on the collector itself: how long
//! cycles take against the interval, BMCs failing by class, samples dropped on the way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sovereign_telemetry_api::publisher::Stats;

use crate::poller::CycleReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Class {
    class: String,
}

/// Counters and gauges of one collector.
#[derive(Debug)]
pub struct CollectorMetrics {
    registry: Registry,
    bmcs: Gauge,
    cycle_seconds: Gauge<f64, AtomicU64>,
    polls_ok: Counter,
    failures: Family<Class, Counter>,
    backing_off: Gauge,
    not_due: Gauge,
    pending: Gauge,
    light_polls: Counter,
    sent: Gauge,
    dropped: Gauge,
    stream_failures: Gauge,
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CollectorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sovereign_collector");
        let m = Self {
            registry: Registry::default(),
            bmcs: Gauge::default(),
            cycle_seconds: Gauge::default(),
            polls_ok: Counter::default(),
            failures: Family::default(),
            backing_off: Gauge::default(),
            not_due: Gauge::default(),
            pending: Gauge::default(),
            light_polls: Counter::default(),
            sent: Gauge::default(),
            dropped: Gauge::default(),
            stream_failures: Gauge::default(),
        };
        registry.register("bmcs", "BMCs in the fleet", m.bmcs.clone());
        registry.register(
            "cycle_seconds",
            "Duration of the last poll cycle (alert when near the interval)",
            m.cycle_seconds.clone(),
        );
        registry.register(
            "polls_ok",
            "BMC polls that gave a sample",
            m.polls_ok.clone(),
        );
        registry.register(
            "poll_failures",
            "BMC polls that failed, by failure class",
            m.failures.clone(),
        );
        registry.register(
            "backing_off",
            "BMCs skipped in the last cycle while backing off",
            m.backing_off.clone(),
        );
        registry.register(
            "not_due",
            "BMCs skipped in the last cycle because their poll interval had not passed",
            m.not_due.clone(),
        );
        registry.register(
            "first_poll_pending",
            "BMCs whose first full poll is still running past its cycle (slow or very large BMCs)",
            m.pending.clone(),
        );
        registry.register(
            "light_polls",
            "BMC polls that read health and readings only (slow BMCs between full polls)",
            m.light_polls.clone(),
        );
        registry.register(
            "samples_sent",
            "Samples streamed to the operator",
            m.sent.clone(),
        );
        registry.register(
            "samples_dropped",
            "Samples dropped because the buffer was full (operator unreachable)",
            m.dropped.clone(),
        );
        registry.register(
            "stream_failures",
            "Broken or refused streams to the operator",
            m.stream_failures.clone(),
        );
        Self { registry, ..m }
    }

    /// Records a finished cycle and the publisher's counters.
    pub fn record(&self, bmcs: usize, report: &CycleReport, took: Duration, stream: &Stats) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let counter = |a: &AtomicU64| i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        self.bmcs.set(gauge(bmcs));
        self.cycle_seconds.set(took.as_secs_f64());
        for o in &report.outcomes {
            match &o.result {
                Ok(sample) => {
                    self.polls_ok.inc();
                    if sample.light {
                        self.light_polls.inc();
                    }
                }
                Err(e) => {
                    self.failures
                        .get_or_create(&Class {
                            class: e.class().to_string(),
                        })
                        .inc();
                }
            }
        }
        self.backing_off.set(gauge(report.skipped.len()));
        self.not_due.set(gauge(report.not_due));
        self.pending.set(gauge(report.pending.len()));
        self.sent.set(counter(&stream.sent));
        self.dropped.set(counter(&stream.dropped));
        self.stream_failures.set(counter(&stream.failures));
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<CollectorMetrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poller::{Outcome, PollError};

    #[test]
    fn cycles_become_counters_by_class() {
        let m = CollectorMetrics::new();
        let report = CycleReport {
            outcomes: vec![Outcome {
                name: "hn1-r01-s01".into(),
                result: Err(PollError::Timeout(Duration::from_secs(55))),
                elapsed: Duration::from_secs(55),
            }],
            skipped: vec!["hn1-r01-s02".into()],
            not_due: 3,
            pending: vec!["dgx-01".into()],
        };
        let stats = Stats::default();
        stats.dropped.store(7, Ordering::Relaxed);
        m.record(10, &report, Duration::from_millis(55_500), &stats);
        m.record(10, &report, Duration::from_millis(55_500), &stats);
        let text = m.encode();
        for line in [
            "sovereign_collector_bmcs 10",
            "sovereign_collector_cycle_seconds 55.5",
            r#"sovereign_collector_poll_failures_total{class="BmcTimeout"} 2"#,
            "sovereign_collector_backing_off 1",
            "sovereign_collector_not_due 3",
            "sovereign_collector_first_poll_pending 1",
            "sovereign_collector_samples_dropped 7",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
