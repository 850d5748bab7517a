//! Every accepted sample as Prometheus metrics, labelled with server, rack and site.
//!
//! Only the latest value per server is kept (gauges); time series are the scraper's job. Servers
//! the operator no longer knows are removed with [`Metrics::forget`] so series do not pile up.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::proto::{Sample, sample::Body};

/// Where a server stands.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Placement {
    pub server: String,
    pub rack: String,
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failed {
    server: String,
    rack: String,
    site: String,
    class: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The telemetry metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    watts: Family<Placement, FloatGauge>,
    inlet: Family<Placement, FloatGauge>,
    cpu_temp: Family<Placement, FloatGauge>,
    health: Family<Placement, Gauge>,
    intrusion: Family<Placement, Gauge>,
    drives_failing: Family<Placement, Gauge>,
    drive_life: Family<Placement, FloatGauge>,
    bmc_failure: Family<Failed, Gauge>,
    load1: Family<Placement, FloatGauge>,
    memory_used: Family<Placement, Gauge>,
    observed: Family<Placement, FloatGauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sovereign");
        let m = Self {
            watts: Family::default(),
            inlet: Family::default(),
            cpu_temp: Family::default(),
            health: Family::default(),
            intrusion: Family::default(),
            drives_failing: Family::default(),
            drive_life: Family::default(),
            bmc_failure: Family::default(),
            load1: Family::default(),
            memory_used: Family::default(),
            observed: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "server_power_watts",
            "Power the server draws, from its BMC",
            m.watts.clone(),
        );
        registry.register(
            "server_inlet_celsius",
            "Inlet air temperature, from the BMC",
            m.inlet.clone(),
        );
        registry.register(
            "server_cpu_max_celsius",
            "Hottest CPU temperature, from the BMC",
            m.cpu_temp.clone(),
        );
        registry.register(
            "server_health",
            "Rolled-up health: 0 unknown, 1 OK, 2 warning, 3 critical",
            m.health.clone(),
        );
        registry.register(
            "server_intrusion",
            "1 when the chassis reports intrusion or tampering",
            m.intrusion.clone(),
        );
        registry.register(
            "server_drives_failure_predicted",
            "Drives predicting their own failure",
            m.drives_failing.clone(),
        );
        registry.register(
            "server_drive_life_left_min_percent",
            "Lowest predicted media life left of any drive",
            m.drive_life.clone(),
        );
        registry.register(
            "server_bmc_unreadable",
            "1 while the BMC cannot be read, by failure class",
            m.bmc_failure.clone(),
        );
        registry.register(
            "server_load1",
            "One-minute load average, from the node agent",
            m.load1.clone(),
        );
        registry.register(
            "server_memory_used_bytes",
            "Memory in use, from the node agent",
            m.memory_used.clone(),
        );
        registry.register(
            "server_sample_timestamp_seconds",
            "When the latest sample was observed",
            m.observed.clone(),
        );
        Self { registry, ..m }
    }

    /// Records an accepted sample.
    pub fn observe(&self, sample: &Sample, at: &Placement) {
        #[allow(clippy::cast_precision_loss)]
        // Unix milliseconds fit f64 exactly until year 287,000
        self.observed
            .get_or_create(at)
            .set(sample.observed_at_unix_ms as f64 / 1000.0);
        match &sample.body {
            Some(Body::Bmc(b)) => {
                self.bmc_failure.clear_matching(at);
                if let Some(w) = b.consumed_watts {
                    self.watts.get_or_create(at).set(w);
                }
                if let Some(c) = b.inlet_celsius {
                    self.inlet.get_or_create(at).set(c);
                }
                if let Some(c) = b.cpu_max_celsius {
                    self.cpu_temp.get_or_create(at).set(c);
                }
                self.health.get_or_create(at).set(i64::from(b.health));
                self.intrusion.get_or_create(at).set(i64::from(
                    !b.intrusion.is_empty() && b.intrusion != "Normal",
                ));
                self.drives_failing
                    .get_or_create(at)
                    .set(i64::from(b.drives_failure_predicted));
                if let Some(l) = b.min_drive_life_left_percent {
                    self.drive_life.get_or_create(at).set(l);
                }
            }
            Some(Body::Failure(f)) => {
                self.bmc_failure.clear_matching(at);
                let key = Failed {
                    server: at.server.clone(),
                    rack: at.rack.clone(),
                    site: at.site.clone(),
                    class: f.class.clone(),
                };
                self.bmc_failure.get_or_create(&key).set(1);
            }
            Some(Body::Os(o)) => {
                self.load1.get_or_create(at).set(o.load1);
                self.memory_used
                    .get_or_create(at)
                    .set(i64::try_from(o.memory_used_bytes).unwrap_or(i64::MAX));
            }
            None => {}
        }
    }

    /// Drops every series of a server that no longer exists.
    pub fn forget(&self, at: &Placement) {
        for f in [
            &self.watts,
            &self.inlet,
            &self.cpu_temp,
            &self.drive_life,
            &self.load1,
            &self.observed,
        ] {
            f.remove(at);
        }
        for f in [
            &self.health,
            &self.intrusion,
            &self.drives_failing,
            &self.memory_used,
        ] {
            f.remove(at);
        }
        self.bmc_failure.clear_matching(at);
    }

    /// Prometheus text exposition (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

trait ClearMatching {
    fn clear_matching(&self, at: &Placement);
}

impl ClearMatching for Family<Failed, Gauge> {
    fn clear_matching(&self, at: &Placement) {
        for class in [
            "BmcUnauthorized",
            "BmcForbidden",
            "BmcNotRedfish",
            "BmcUnavailable",
            "BmcServerError",
            "BmcProtocolError",
            "BmcUnreachable",
            "BmcTimeout",
            "BmcConfigInvalid",
        ] {
            self.remove(&Failed {
                server: at.server.clone(),
                rack: at.rack.clone(),
                site: at.site.clone(),
                class: class.to_owned(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BmcSummary, Failure, Source};

    fn at() -> Placement {
        Placement {
            server: "hn1-r01-s01".into(),
            rack: "hn1-r01".into(),
            site: "hn1".into(),
        }
    }

    #[test]
    fn samples_become_labelled_series_and_failures_clear() {
        let m = Metrics::new();
        let failing = Sample {
            server: "hn1-r01-s01".into(),
            source: Source::Redfish as i32,
            observed_at_unix_ms: 1_800_000_000_000,
            body: Some(Body::Failure(Failure {
                class: "BmcTimeout".into(),
                reason: "slow".into(),
            })),
        };
        m.observe(&failing, &at());
        let text = m.encode();
        assert!(text.contains(r#"sovereign_server_bmc_unreadable{server="hn1-r01-s01",rack="hn1-r01",site="hn1",class="BmcTimeout"} 1"#), "{text}");
        let ok = Sample {
            body: Some(Body::Bmc(BmcSummary {
                consumed_watts: Some(344.0),
                inlet_celsius: Some(25.0),
                intrusion: "HardwareIntrusion".into(),
                health: 3,
                ..BmcSummary::default()
            })),
            ..failing
        };
        m.observe(&ok, &at());
        let text = m.encode();
        assert!(text.contains(r#"sovereign_server_power_watts{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 344.0"#), "{text}");
        assert!(text.contains(
            r#"sovereign_server_intrusion{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 1"#
        ));
        assert!(text.contains(
            r#"sovereign_server_health{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 3"#
        ));
        assert!(
            !text.contains("class=\"BmcTimeout\"} 1"),
            "a readable BMC clears its failure series"
        );
        m.forget(&at());
        assert!(!m.encode().contains("hn1-r01-s01"));
    }
}
