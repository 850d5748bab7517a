//! Every accepted sample as Prometheus metrics, labelled with server, rack and site.
//!
//! Only the latest value per server is kept (gauges); time series are the scraper's job. Servers
//! the operator no longer knows are removed with [`Metrics::forget`] so series do not pile up.

use std::sync::atomic::AtomicU64;

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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

/// The latest values of one server, by source.
#[derive(Debug)]
struct ServerValues {
    at: Placement,
    bmc: Vec<(Metric, f64)>,
    os: Vec<(Metric, f64)>,
    /// When the newest sample (of either source) was observed.
    sampled: Option<f64>,
}

impl ServerValues {
    fn value(&self, m: Metric) -> Option<f64> {
        if m == Metric::SampleTimestampSeconds {
            return self.sampled;
        }
        self.bmc
            .iter()
            .chain(&self.os)
            .find(|(x, _)| *x == m)
            .map(|(_, v)| *v)
    }
}

/// The per-server series, encoded from one map at each scrape: one small record per server
/// instead of a labelled gauge per server and metric (on a 5,000-server fleet the families
/// were the largest part of the operator's memory after its caches).
#[derive(Debug, Default)]
struct ServerSeries(std::sync::Mutex<BTreeMap<String, ServerValues>>);

impl ServerSeries {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ServerValues>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Collector for ServerSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let map = self.lock();
        for m in Metric::ALL {
            if m == Metric::BmcUnreadable {
                continue;
            }
            let mut family =
                encoder.encode_descriptor(m.name(), m.help(), None, MetricType::Gauge)?;
            for values in map.values() {
                if let Some(v) = values.value(m) {
                    ConstGauge::new(v).encode(family.encode_family(&values.at)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The telemetry metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Every per-server [`Metric`] but `BmcUnreadable` (which has a class label).
    servers: Arc<ServerSeries>,
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

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sovereign");
        let servers = Arc::new(ServerSeries::default());
        registry.register_collector(Box::new(servers.clone()));
        let bmc_failure = Family::<Failed, FloatGauge>::default();
        registry.register(
            Metric::BmcUnreadable.name(),
            Metric::BmcUnreadable.help(),
            bmc_failure.clone(),
        );
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
            servers,
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
        if source == Some(Source::Redfish) {
            self.bmc_failure.clear_matching(at);
            self.observe_gpus(sample, at);
        }
        let mut values = Vec::new();
        let mut sampled = None;
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
                None if reading.metric == Metric::SampleTimestampSeconds => {
                    sampled = Some(reading.value);
                }
                None => values.push((reading.metric, reading.value)),
            }
        }
        let mut map = self.servers.lock();
        let entry = map
            .entry(at.server.clone())
            .or_insert_with(|| ServerValues {
                at: at.clone(),
                bmc: Vec::new(),
                os: Vec::new(),
                sampled: None,
            });
        if entry.at != *at {
            entry.at = at.clone();
        }
        // Held per server until the next sample: no growth slack (thousands of servers).
        values.shrink_to_fit();
        // Every value of this source is replaced, so one the BMC stopped reporting goes.
        match source {
            Some(Source::Redfish) => entry.bmc = values,
            Some(Source::Os) => entry.os = values,
            _ => {}
        }
        if sampled.is_some() {
            entry.sampled = sampled;
        }
    }

    /// Drops every series of a server that no longer exists.
    pub fn forget(&self, at: &Placement) {
        self.servers.lock().remove(&at.server);
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

    #[test]
    fn each_source_replaces_only_its_own_values() {
        use crate::proto::OsSummary;
        let m = Metrics::new();
        let bmc = |watts: Option<f64>| Sample {
            server: "hn1-r01-s01".into(),
            source: Source::Redfish as i32,
            observed_at_unix_ms: 1_800_000_000_000,
            body: Some(Body::Bmc(BmcSummary {
                consumed_watts: watts,
                ..BmcSummary::default()
            })),
        };
        let os = Sample {
            source: Source::Os as i32,
            observed_at_unix_ms: 1_800_000_015_000,
            body: Some(Body::Os(OsSummary {
                load1: 2.5,
                ..OsSummary::default()
            })),
            ..bmc(None)
        };
        m.observe(&bmc(Some(410.0)), &at());
        m.observe(&os, &at());
        let text = m.encode();
        assert!(text.contains(r#"sovereign_server_power_watts{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 410.0"#), "{text}");
        assert!(
            text.contains(
                r#"sovereign_server_load1{server="hn1-r01-s01",rack="hn1-r01",site="hn1"} 2.5"#
            ),
            "{text}"
        );
        // One series per server for the timestamp: the newest sample's.
        assert_eq!(
            text.matches("sovereign_server_sample_timestamp_seconds{")
                .count(),
            1
        );
        assert!(text.contains("} 1800000015.0"), "{text}");
        // The BMC stops reporting power: its series goes, the node agent's stays.
        m.observe(&bmc(None), &at());
        let text = m.encode();
        assert!(!text.contains("sovereign_server_power_watts{"), "{text}");
        assert!(text.contains("sovereign_server_load1{"), "{text}");
    }
}
