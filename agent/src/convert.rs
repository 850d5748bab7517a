//! Samples as sent to the operator: a small summary per server (full detail stays in metrics).

use sovereign_telemetry_api::proto::{self, BmcSummary, Failure, Source, sample::Body};

use crate::poller::PollError;
use crate::readings;
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

/// Media tier as Sovereign schedules it: NVMe flash, other flash, spinning disk.
fn tier(media_type: Option<&str>, protocol: Option<&str>) -> String {
    let nvme = protocol.is_some_and(|p| p.eq_ignore_ascii_case("NVMe"));
    match media_type {
        Some(m) if m.eq_ignore_ascii_case("HDD") => "hdd",
        Some(m) if m.eq_ignore_ascii_case("SSD") && nvme => "nvme",
        Some(m) if m.eq_ignore_ascii_case("SSD") => "ssd",
        None if nvme => "nvme",
        _ => "",
    }
    .to_owned()
}

/// The BMC's own words for a component, in parentheses (nothing when it gave none).
fn said(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" ({})", conditions.join("; "))
    }
}

/// The worst component and why, in words (empty when everything is OK or unknown).
pub fn health_reason(s: &BmcSample) -> String {
    let worst = s.overall_health();
    if matches!(worst, Health::Ok | Health::Unknown) {
        return String::new();
    }
    let mut parts = Vec::new();
    for c in &s.chassis {
        if let Some(i) = c.intrusion.as_deref().filter(|i| *i != "Normal") {
            parts.push(format!("chassis {} intrusion sensor: {i}", c.id));
        }
        if c.health == worst {
            parts.push(format!(
                "chassis {}: {:?}{}",
                c.id,
                c.health,
                said(&c.conditions)
            ));
        }
        for p in c.power_supplies.iter().filter(|p| p.health == worst) {
            parts.push(format!(
                "power supply {}: {:?}{}",
                p.name,
                p.health,
                said(&p.conditions)
            ));
        }
        for f in c.fans.iter().filter(|f| f.health == worst) {
            parts.push(format!("fan {}: {:?}", f.name, f.health));
        }
    }
    for sys in &s.systems {
        if sys.health == worst || sys.health_rollup == worst {
            parts.push(format!(
                "system {}: {worst:?}{}",
                sys.id,
                said(&sys.conditions)
            ));
        }
    }
    for d in s.drives.iter().filter(|d| d.health == worst) {
        let predicted = if d.failure_predicted {
            " (failure predicted)"
        } else {
            ""
        };
        parts.push(format!("drive {}: {:?}{predicted}", d.id, d.health));
    }
    parts.truncate(4);
    parts.join("; ")
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
        // By meaning, not position: the rules are in `readings`.
        consumed_watts: readings::server_power(s).map(|(w, _)| w),
        inlet_celsius: readings::server_inlet(s),
        cpu_max_celsius: readings::server_cpu_max(s),
        intrusion,
        drives: count(s.drives.len()),
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
        bios_version: system
            .and_then(|x| x.bios_version.clone())
            .unwrap_or_default(),
        processor_model: system
            .and_then(|x| x.processor_model.clone())
            .unwrap_or_default(),
        processor_count: system
            .and_then(|x| x.processor_count)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_default(),
        logical_processors: system
            .and_then(|x| x.logical_processors)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_default(),
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        memory_bytes: system
            .and_then(|x| x.memory_gib)
            .filter(|g| g.is_finite() && *g > 0.0)
            .map(|g| (g * 1024.0 * 1024.0 * 1024.0) as u64),
        drive_list: s
            .drives
            .iter()
            .map(|d| proto::Drive {
                id: d.id.clone(),
                tier: tier(d.media_type.as_deref(), d.protocol.as_deref()),
                capacity_bytes: d.capacity_bytes,
                health: health(d.health),
                life_left_percent: d.life_left_percent,
                failure_predicted: d.failure_predicted,
                encryption_capable: d.encryption_capable,
            })
            .collect(),
        // By name: sensors read in parallel arrive in any order, and an order that changes
        // between polls would read as a change to the status.
        fans: by_name(
            s.chassis
                .iter()
                .flat_map(|c| &c.fans)
                .map(|f| proto::Component {
                    name: f.name.clone(),
                    health: health(f.health),
                })
                .collect(),
        ),
        power_supplies: s
            .chassis
            .iter()
            .flat_map(|c| &c.power_supplies)
            .map(|p| proto::Component {
                name: p.name.clone(),
                health: health(p.health),
            })
            .collect(),
        health_reason: health_reason(s),
        warnings: s.warnings.iter().take(16).cloned().collect(),
        gpus: readings::gpus(s)
            .into_iter()
            .map(|g| proto::Gpu {
                id: g.id,
                model: g.model.unwrap_or_default(),
                health: health(g.health),
                power_watts: g.power_watts,
                temperature_celsius: g.temperature_celsius,
            })
            .collect(),
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

fn by_name(mut components: Vec<proto::Component>) -> Vec<proto::Component> {
    components.sort_by(|a, b| a.name.cmp(&b.name));
    components
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redfish::ChassisSample;

    #[test]
    fn intrusion_is_never_averaged_away() {
        let s = BmcSample {
            systems: vec![crate::redfish::SystemSample {
                chassis: vec!["b".into()],
                ..crate::redfish::SystemSample::default()
            }],
            chassis: vec![
                ChassisSample {
                    id: "a".into(),
                    intrusion: Some("Normal".into()),
                    power_control_watts: Some(300.0),
                    ..ChassisSample::default()
                },
                ChassisSample {
                    id: "b".into(),
                    intrusion: Some("HardwareIntrusion".into()),
                    power_control_watts: Some(310.0),
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
