//! The controllers' own metrics (one registry, served on the admin port's /metrics):
//! reconciles by result, errors by stage, durations, status writes by reason, in-flight work.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    controller: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    controller: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabel {
    kind: String,
    why: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
}

/// Counters and histograms of every controller.
#[derive(Debug)]
pub struct ControllerMetrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    duration: Family<ControllerLabel, Histogram, fn() -> Histogram>,
    writes: Family<WriteLabel, Counter>,
    in_flight: Family<ControllerLabel, Gauge>,
    leader: Gauge,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sovereign_operator");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let duration =
            Family::<ControllerLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let writes = Family::<WriteLabel, Counter>::default();
        let in_flight = Family::<ControllerLabel, Gauge>::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Reconciles by controller and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by controller and stage",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            duration.clone(),
        );
        registry.register(
            "status_writes",
            "Status writes by kind and reason",
            writes.clone(),
        );
        registry.register(
            "reconciles_in_flight",
            "Reconciles running now (the work queue's depth being served)",
            in_flight.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            writes,
            in_flight,
            leader,
        }
    }

    /// Marks a reconcile started; the guard records its duration and result when dropped.
    pub fn start(&self, controller: &'static str) -> ReconcileGuard<'_> {
        self.in_flight
            .get_or_create(&ControllerLabel {
                controller: controller.to_owned(),
            })
            .inc();
        ReconcileGuard {
            metrics: self,
            controller,
            started: std::time::Instant::now(),
            result: "skipped",
        }
    }

    pub fn error(&self, controller: &str, label: &str) {
        self.errors
            .get_or_create(&ErrorLabel {
                controller: controller.to_owned(),
                error: label.to_owned(),
            })
            .inc();
    }

    pub fn write(&self, kind: &str, why: &str) {
        self.writes
            .get_or_create(&WriteLabel {
                kind: kind.to_owned(),
                why: why.to_owned(),
            })
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Status writes so far for a kind (all reasons).
    pub fn writes_for(&self, kind: &str) -> u64 {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text.lines()
            .filter(|l| l.starts_with("sovereign_operator_status_writes_total{"))
            .filter(|l| l.contains(&format!("kind=\"{kind}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Records one reconcile's duration and result.
#[derive(Debug)]
pub struct ReconcileGuard<'a> {
    metrics: &'a ControllerMetrics,
    controller: &'static str,
    started: std::time::Instant,
    result: &'static str,
}

impl ReconcileGuard<'_> {
    pub fn result(&mut self, result: &'static str) {
        self.result = result;
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for ReconcileGuard<'_> {
    fn drop(&mut self) {
        let label = ControllerLabel {
            controller: self.controller.to_owned(),
        };
        self.metrics.in_flight.get_or_create(&label).dec();
        self.metrics
            .duration
            .get_or_create(&label)
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .reconciles
            .get_or_create(&ResultLabel {
                controller: self.controller.to_owned(),
                result: self.result.to_owned(),
            })
            .inc();
    }
}
