//! Samples as sent to the operator: a small summary per server (full detail stays in metrics).

use sovereign_telemetry::proto::{self, BmcSummary, Failure, OsSummary, Source, sample::Body};

use crate::os::OsSample;
use crate::poller::PollError;
use crate::redfish::{BmcSample, Health};

fn health(h: Health) -> i32 {
    (match h {
        Health::Ok => proto::Health::Ok,
        Health::Warning => proto::Health::Warning,
        Health::Critical => proto::Health::Critical,
        Health::Unknown => proto::Health::Unknown,
    }) as i32
}

fn millis(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn max(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.reduce(f64::max)
}

/// Summary of one BMC poll for `server`.
pub fn bmc(server: &str, s: &BmcSample) -> proto::Sample {
    let system = s.systems.first();
    // A chassis reporting anything but Normal wins: intrusion must never be averaged away.
    let intrusion = s
        .chassis
        .iter()
        .filter_map(|c| c.intrusion.clone())
        .max_by_key(|i| i != "Normal")
        .unwrap_or_default();
    let summary = BmcSummary {
        health: health(s.overall_health()),
        power_state: system
            .and_then(|x| x.power_state.clone())
            .unwrap_or_default(),
        // The enclosure chassis of a server repeats the system chassis' readings: take the
        // largest, not the sum.
        consumed_watts: max(s.chassis.iter().filter_map(|c| c.consumed_watts)),
        inlet_celsius: max(s.chassis.iter().filter_map(|c| c.inlet_celsius)),
        cpu_max_celsius: max(s.chassis.iter().filter_map(|c| c.cpu_max_celsius)),
        intrusion,
        drives: u32::try_from(s.drives.len()).unwrap_or(u32::MAX),
        drives_failure_predicted: u32::try_from(
            s.drives.iter().filter(|d| d.failure_predicted).count(),
        )
        .unwrap_or(u32::MAX),
        min_drive_life_left_percent: s
            .drives
            .iter()
            .filter_map(|d| d.life_left_percent)
            .reduce(f64::min),
        drives_encryption_capable: u32::try_from(
            s.drives.iter().filter(|d| d.encryption_capable).count(),
        )
        .unwrap_or(u32::MAX),
        manufacturer: system
            .and_then(|x| x.manufacturer.clone())
            .unwrap_or_default(),
        model: system.and_then(|x| x.model.clone()).unwrap_or_default(),
        serial_number: system
            .and_then(|x| x.serial_number.clone())
            .unwrap_or_default(),
        unreadable: s
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.section, e.class))
            .collect(),
        new_events: s
            .events
            .iter()
            .map(|e| proto::Event {
                log: e.log.clone(),
                id: e.id.clone(),
                created: e.created.clone().unwrap_or_default(),
                severity: e.severity.clone().unwrap_or_default(),
                message: e.message.clone().unwrap_or_default(),
                message_id: e.message_id.clone().unwrap_or_default(),
            })
            .collect(),
    };
    proto::Sample {
        server: server.to_owned(),
        source: Source::Redfish as i32,
        observed_at_unix_ms: millis(s.observed_at_unix_ms),
        body: Some(Body::Bmc(summary)),
    }
}

/// A BMC that could not be read this cycle.
pub fn failure(server: &str, e: &PollError, observed_at_unix_ms: u64) -> proto::Sample {
    proto::Sample {
        server: server.to_owned(),
        source: Source::Redfish as i32,
        observed_at_unix_ms: millis(observed_at_unix_ms),
        body: Some(Body::Failure(Failure {
            class: e.class().to_string(),
            reason: e.to_string(),
        })),
    }
}

/// Summary of one OS sample for `server`.
pub fn os(server: &str, s: &OsSample) -> proto::Sample {
    proto::Sample {
        server: server.to_owned(),
        source: Source::Os as i32,
        observed_at_unix_ms: millis(s.observed_at_unix_ms),
        body: Some(Body::Os(OsSummary {
            kernel: s.kernel.clone().unwrap_or_default(),
            os_version: s.os_version.clone().unwrap_or_default(),
            uptime_seconds: s.uptime_seconds,
            load1: s.load1,
            cpu_usage_percent: s.cpu_usage_percent,
            memory_total_bytes: s.memory_total_bytes,
            memory_used_bytes: s.memory_used_bytes,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redfish::ChassisSample;

    #[test]
    fn intrusion_is_never_averaged_away() {
        let s = BmcSample {
            chassis: vec![
                ChassisSample {
                    id: "a".into(),
                    intrusion: Some("Normal".into()),
                    consumed_watts: Some(300.0),
                    ..ChassisSample::default()
                },
                ChassisSample {
                    id: "b".into(),
                    intrusion: Some("HardwareIntrusion".into()),
                    consumed_watts: Some(310.0),
                    ..ChassisSample::default()
                },
            ],
            ..BmcSample::default()
        };
        let Some(Body::Bmc(b)) = bmc("s1", &s).body else {
            panic!("bmc body")
        };
        assert_eq!(b.intrusion, "HardwareIntrusion");
        assert_eq!(b.consumed_watts, Some(310.0));
        assert_eq!(b.health, proto::Health::Critical as i32);
    }
}
