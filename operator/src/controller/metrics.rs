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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RackLabel {
    rack: String,
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteClass {
    site: String,
    class: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// A resource set per class in base units (cores, bytes, GPUs), for the capacity gauges.
fn classes(set: Option<&sovereign_crds::ResourceSet>) -> Vec<(&'static str, f64)> {
    let Some(set) = set else {
        return Vec::new();
    };
    #[allow(clippy::cast_precision_loss)] // capacities stay far below 2^53 in these units
    let units = |q: Option<&sovereign_crds::Quantity>, milli: bool| {
        q.and_then(|q| q.parse().ok()).and_then(|p| {
            if milli {
                p.to_milli().ok().map(|m| m as f64 / 1000.0)
            } else {
                p.to_units().ok().map(|u| u as f64)
            }
        })
    };
    let storage = set.storage.as_ref();
    [
        ("cpu_cores", units(set.cpu.as_ref(), true)),
        ("memory_bytes", units(set.memory.as_ref(), false)),
        ("gpus", set.gpus.map(f64::from)),
        (
            "nvme_bytes",
            units(storage.and_then(|s| s.nvme.as_ref()), false),
        ),
        (
            "ssd_bytes",
            units(storage.and_then(|s| s.ssd.as_ref()), false),
        ),
        (
            "hdd_bytes",
            units(storage.and_then(|s| s.hdd.as_ref()), false),
        ),
    ]
    .into_iter()
    .filter_map(|(c, v)| v.map(|v| (c, v)))
    .collect()
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
    rack_power: Family<RackLabel, FloatGauge>,
    rack_budget: Family<RackLabel, FloatGauge>,
    rack_inlet: Family<RackLabel, FloatGauge>,
    site_capacity: Family<SiteClass, FloatGauge>,
    site_allocated: Family<SiteClass, FloatGauge>,
    decisions: Family<DecisionLabel, Counter>,
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
        // The fleet as the roll-ups see it, for dashboards: power against budget per rack,
        // capacity and allocation per site (the ledger's).
        let rack_power = Family::<RackLabel, FloatGauge>::default();
        let rack_budget = Family::<RackLabel, FloatGauge>::default();
        let rack_inlet = Family::<RackLabel, FloatGauge>::default();
        let site_capacity = Family::<SiteClass, FloatGauge>::default();
        let site_allocated = Family::<SiteClass, FloatGauge>::default();
        registry.register(
            "rack_power_watts",
            "Measured power of a rack's servers",
            rack_power.clone(),
        );
        registry.register(
            "rack_power_budget_watts",
            "A rack's power budget (spec)",
            rack_budget.clone(),
        );
        registry.register(
            "rack_inlet_celsius",
            "Hottest inlet of a rack's servers",
            rack_inlet.clone(),
        );
        registry.register(
            "site_capacity",
            "A site's schedulable capacity by class (cpu_cores, memory_bytes, gpus, nvme/ssd/hdd_bytes)",
            site_capacity.clone(),
        );
        registry.register(
            "site_allocated",
            "What the placement ledger has allocated on a site, by class",
            site_allocated.clone(),
        );
        let decisions = Family::<DecisionLabel, Counter>::default();
        // Counted from zero, so a replica that has decided nothing yet (a new leader) answers
        // rate() with 0 rather than no series at all.
        for kind in ["StorageVolume", "ComputeInstance"] {
            let _zero = decisions.get_or_create(&DecisionLabel {
                kind: kind.to_owned(),
                outcome: "Placed".to_owned(),
            });
        }
        registry.register(
            "placement_decisions",
            "Placement decisions by kind and outcome (Placed, or the refusal's reason)",
            decisions.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            writes,
            in_flight,
            leader,
            rack_power,
            rack_budget,
            rack_inlet,
            site_capacity,
            site_allocated,
            decisions,
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

    /// A rack's roll-up, as gauges (absent readings remove their series).
    pub fn rack(
        &self,
        rack: &str,
        site: &str,
        power: Option<f64>,
        budget: f64,
        inlet: Option<f64>,
    ) {
        let key = RackLabel {
            rack: rack.to_owned(),
            site: site.to_owned(),
        };
        self.rack_budget.get_or_create(&key).set(budget);
        for (family, value) in [(&self.rack_power, power), (&self.rack_inlet, inlet)] {
            match value {
                Some(v) => {
                    family.get_or_create(&key).set(v);
                }
                None => {
                    family.remove(&key);
                }
            }
        }
    }

    /// A site's capacity and allocation, as gauges per class.
    pub fn site(
        &self,
        site: &str,
        capacity: Option<&sovereign_crds::ResourceSet>,
        allocated: Option<&sovereign_crds::ResourceSet>,
    ) {
        for (family, set) in [
            (&self.site_capacity, capacity),
            (&self.site_allocated, allocated),
        ] {
            for (class, value) in classes(set) {
                family
                    .get_or_create(&SiteClass {
                        site: site.to_owned(),
                        class: class.to_owned(),
                    })
                    .set(value);
            }
        }
    }

    /// One placement decision: `outcome` is `Placed` or the refusal's reason.
    pub fn decision(&self, kind: &str, outcome: &str) {
        self.decisions
            .get_or_create(&DecisionLabel {
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
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
