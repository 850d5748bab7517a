//! Every accepted sample as Prometheus metrics, labelled with server, rack and site.
//!
//! Only the latest value per server is kept (gauges); time series are the scraper's job. Servers
//! the operator no longer knows are removed with [`Metrics::forget`] so series do not pile up.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::proto::{Sample, Source, sample::Body};

/// Where a server stands.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Placement {
    pub server: String,
    pub rack: String,
    pub site: String,
}

/// One GPU of a server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GpuAt {
    server: String,
    rack: String,
    site: String,
    gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failed {
    server: String,
    rack: String,
    site: String,
    class: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The per-server metrics, the same in Prometheus and OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    PowerWatts,
    InletCelsius,
    CpuMaxCelsius,
    Health,
    Intrusion,
    DrivesFailurePredicted,
    DriveLifeLeftMinPercent,
    BmcUnreadable,
    Load1,
    CpuUsagePercent,
    MemoryUsedBytes,
    SampleTimestampSeconds,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::PowerWatts,
        Metric::InletCelsius,
        Metric::CpuMaxCelsius,
        Metric::Health,
        Metric::Intrusion,
        Metric::DrivesFailurePredicted,
        Metric::DriveLifeLeftMinPercent,
        Metric::BmcUnreadable,
        Metric::Load1,
        Metric::CpuUsagePercent,
        Metric::MemoryUsedBytes,
        Metric::SampleTimestampSeconds,
    ];

    /// Name without the `sovereign_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            Metric::PowerWatts => "server_power_watts",
            Metric::InletCelsius => "server_inlet_celsius",
            Metric::CpuMaxCelsius => "server_cpu_max_celsius",
            Metric::Health => "server_health",
            Metric::Intrusion => "server_intrusion",
            Metric::DrivesFailurePredicted => "server_drives_failure_predicted",
            Metric::DriveLifeLeftMinPercent => "server_drive_life_left_min_percent",
            Metric::BmcUnreadable => "server_bmc_unreadable",
            Metric::Load1 => "server_load1",
            Metric::CpuUsagePercent => "server_cpu_usage_percent",
            Metric::MemoryUsedBytes => "server_memory_used_bytes",
            Metric::SampleTimestampSeconds => "server_sample_timestamp_seconds",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Metric::PowerWatts => "Power the server draws, from its BMC",
            Metric::InletCelsius => "Inlet air temperature, from the BMC",
            Metric::CpuMaxCelsius => "Hottest CPU temperature, from the BMC",
            Metric::Health => "Rolled-up health: 0 unknown, 1 OK, 2 warning, 3 critical",
            Metric::Intrusion => "1 when the chassis reports intrusion or tampering",
            Metric::DrivesFailurePredicted => "Drives predicting their own failure",
            Metric::DriveLifeLeftMinPercent => "Lowest predicted media life left of any drive",
            Metric::BmcUnreadable => "1 while the BMC cannot be read, by failure class",
            Metric::Load1 => "One-minute load average, from the node agent",
            Metric::CpuUsagePercent => "CPU in use, from the node agent",
            Metric::MemoryUsedBytes => "Memory in use, from the node agent",
            Metric::SampleTimestampSeconds => "When the latest sample was observed",
        }
    }

    /// Which source reports it (None: every sample).
    fn source(self) -> Option<Source> {
        match self {
            Metric::Load1 | Metric::CpuUsagePercent | Metric::MemoryUsedBytes => Some(Source::Os),
            Metric::SampleTimestampSeconds => None,
            _ => Some(Source::Redfish),
        }
    }
}

/// One value a sample gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub metric: Metric,
    pub value: f64,
    /// Failure class, for [`Metric::BmcUnreadable`].
    pub class: Option<String>,
}

/// What a sample says, as metric values (absent readings give none).
#[allow(clippy::cast_precision_loss)] // byte counts and Unix ms stay exact in f64 up to 2^53
pub fn readings(sample: &Sample) -> Vec<Reading> {
    let r = |metric, value| Reading {
        metric,
        value,
        class: None,
    };
    let mut out = vec![r(
        Metric::SampleTimestampSeconds,
        sample.observed_at_unix_ms as f64 / 1000.0,
    )];
    match &sample.body {
        Some(Body::Bmc(b)) => {
            let optional = [
                (Metric::PowerWatts, b.consumed_watts),
                (Metric::InletCelsius, b.inlet_celsius),
                (Metric::CpuMaxCelsius, b.cpu_max_celsius),
                (
                    Metric::DriveLifeLeftMinPercent,
                    b.min_drive_life_left_percent,
                ),
            ];
            out.extend(optional.into_iter().filter_map(|(m, v)| v.map(|v| r(m, v))));
            out.push(r(Metric::Health, f64::from(b.health)));
            out.push(r(
                Metric::Intrusion,
                f64::from(u8::from(!b.intrusion.is_empty() && b.intrusion != "Normal")),
            ));
            out.push(r(
                Metric::DrivesFailurePredicted,
                f64::from(b.drives_failure_predicted),
            ));
        }
        Some(Body::Failure(f)) => out.push(Reading {
            metric: Metric::BmcUnreadable,
            value: 1.0,
            class: Some(f.class.clone()),
        }),
        Some(Body::Os(o)) => {
            out.push(r(Metric::Load1, o.load1));
            out.push(r(Metric::CpuUsagePercent, f64::from(o.cpu_usage_percent)));
            out.push(r(Metric::MemoryUsedBytes, o.memory_used_bytes as f64));
        }
        None => {}
    }
    out
}

/// The telemetry metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// One family per [`Metric`], in `Metric::ALL` order (BmcUnreadable's stays empty).
    families: Vec<Family<Placement, FloatGauge>>,
    bmc_failure: Family<Failed, FloatGauge>,
    gpu_power: Family<GpuAt, FloatGauge>,
    gpu_temperature: Family<GpuAt, FloatGauge>,
    /// GPU series per server, to remove them when the server's GPUs change or it goes.
    gpus: std::sync::Mutex<std::collections::HashMap<String, Vec<GpuAt>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn index(m: Metric) -> usize {
    Metric::ALL.iter().position(|x| *x == m).unwrap_or(0)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sovereign");
        let families: Vec<Family<Placement, FloatGauge>> =
            Metric::ALL.iter().map(|_| Family::default()).collect();
        let bmc_failure = Family::<Failed, FloatGauge>::default();
        for (m, f) in Metric::ALL.iter().zip(&families) {
            if *m == Metric::BmcUnreadable {
                registry.register(m.name(), m.help(), bmc_failure.clone());
            } else {
                registry.register(m.name(), m.help(), f.clone());
            }
        }
        let gpu_power = Family::<GpuAt, FloatGauge>::default();
        let gpu_temperature = Family::<GpuAt, FloatGauge>::default();
        registry.register(
            "gpu_power_watts",
            "Power one GPU draws, from the BMC",
            gpu_power.clone(),
        );
        registry.register(
            "gpu_temperature_celsius",
            "Temperature of one GPU, from the BMC",
            gpu_temperature.clone(),
        );
        Self {
            registry,
            families,
            bmc_failure,
            gpu_power,
            gpu_temperature,
            gpus: std::sync::Mutex::default(),
        }
    }

    /// Replaces a server's GPU series with those of a BMC summary.
    fn observe_gpus(&self, sample: &Sample, at: &Placement) {
        let mut known = self
            .gpus
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for old in known.remove(&at.server).unwrap_or_default() {
            self.gpu_power.remove(&old);
            self.gpu_temperature.remove(&old);
        }
        let Some(Body::Bmc(b)) = &sample.body else {
            return;
        };
        let mut now = Vec::new();
        for g in &b.gpus {
            let key = GpuAt {
                server: at.server.clone(),
                rack: at.rack.clone(),
                site: at.site.clone(),
                gpu: g.id.clone(),
            };
            if let Some(w) = g.power_watts {
                self.gpu_power.get_or_create(&key).set(w);
            }
            if let Some(c) = g.temperature_celsius {
                self.gpu_temperature.get_or_create(&key).set(c);
            }
            now.push(key);
        }
        if !now.is_empty() {
            known.insert(at.server.clone(), now);
        }
    }

    /// Records an accepted sample: replaces every series of its source for that server, so a
    /// value the BMC stopped reporting does not linger.
    pub fn observe(&self, sample: &Sample, at: &Placement) {
        let source = Source::try_from(sample.source).ok();
        for m in Metric::ALL {
            if m.source().is_some() && m.source() == source {
                self.families[index(m)].remove(at);
            }
        }
        if source == Some(Source::Redfish) {
            self.bmc_failure.clear_matching(at);
            self.observe_gpus(sample, at);
        }
        for reading in readings(sample) {
            match reading.class {
                Some(class) => {
                    let key = Failed {
                        server: at.server.clone(),
                        rack: at.rack.clone(),
                        site: at.site.clone(),
                        class,
                    };
                    self.bmc_failure.get_or_create(&key).set(reading.value);
                }
                None => {
                    self.families[index(reading.metric)]
                        .get_or_create(at)
                        .set(reading.value);
                }
            }
        }
    }

    /// Drops every series of a server that no longer exists.
    pub fn forget(&self, at: &Placement) {
        for f in &self.families {
            f.remove(at);
        }
        self.observe_gpus(
            &Sample {
                server: at.server.clone(),
                ..Sample::default()
            },
            at,
        );
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

impl ClearMatching for Family<Failed, FloatGauge> {
    fn clear_matching(&self, at: &Placement) {
        for class in [
            "BmcUnauthorized",
            "BmcForbidden",
            "BmcNotRedfish",
            "BmcUnavailable",
            "BmcServerError",
            "BmcProtocolError",
            "BmcUnreachable",
            "BmcTlsError",
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
        assert!(text.contains(r#"sovereign_server_bmc_unreadable{server="hn1-r01-s01",rack="hn1-r01",site="hn1",class="BmcTimeout"} 1.0"#), "{text}");
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
            r#"sovereign_server_intrusion{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 1.0"#
        ));
        assert!(text.contains(
            r#"sovereign_server_health{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 3.0"#
        ));
        assert!(
            !text.contains("class=\"BmcTimeout\"} 1"),
            "a readable BMC clears its failure series"
        );
        m.forget(&at());
        assert!(!m.encode().contains("hn1-r01-s01"));
    }

    #[test]
    fn gpus_are_series_of_their_own_and_go_with_them() {
        use crate::proto::Gpu;
        let m = Metrics::new();
        let gpu = |id: &str, w: f64| Gpu {
            id: id.into(),
            power_watts: Some(w),
            temperature_celsius: Some(30.0),
            ..Gpu::default()
        };
        let sample = |gpus: Vec<Gpu>| Sample {
            server: "dgx-01".into(),
            source: Source::Redfish as i32,
            body: Some(Body::Bmc(BmcSummary {
                gpus,
                ..BmcSummary::default()
            })),
            ..Sample::default()
        };
        m.observe(
            &sample(vec![gpu("GPU_SXM_1", 71.7), gpu("GPU_SXM_2", 73.8)]),
            &at(),
        );
        let text = m.encode();
        assert!(text.contains(r#"sovereign_gpu_power_watts{server="hn1-r01-s01",rack="hn1-r01",site="hn1",gpu="GPU_SXM_2"} 73.8"#), "{text}");
        // A GPU the BMC no longer lists loses its series.
        m.observe(&sample(vec![gpu("GPU_SXM_1", 70.0)]), &at());
        let text = m.encode();
        assert!(!text.contains("GPU_SXM_2"), "{text}");
        assert!(text.contains(r#"gpu="GPU_SXM_1"} 70.0"#), "{text}");
        m.forget(&at());
        assert!(!m.encode().contains("GPU_SXM_1"));
    }
}
