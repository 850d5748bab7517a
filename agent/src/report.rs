//! Rendering samples for people (tables) and machines (JSON/YAML).

use std::fmt::Write as _;

use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use serde::Serialize;

use crate::os::OsSample;
use crate::redfish::BmcSample;

/// What `collect --once` prints.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Collected {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcSample>,
    /// Set when the BMC could not be read at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bmc_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<OsSample>,
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| x.to_string())
}

fn gib(bytes: u64) -> String {
    format!(
        "{:.1} GiB",
        f64::from(u32::try_from(bytes >> 20).unwrap_or(u32::MAX)) / 1024.0
    )
}

/// Tables for a terminal.
pub fn render_table(c: &Collected) -> String {
    let mut out = String::new();
    if let Some(e) = &c.bmc_error {
        let _ = write!(out, "BMC: unreadable: {e}\n\n");
    }
    if let Some(b) = &c.bmc {
        let _ = writeln!(
            out,
            "BMC vendor {} — overall health {:?}",
            or_dash(b.vendor.as_deref()),
            b.overall_health()
        );
        let mut t = table(&[
            "SYSTEM",
            "MANUFACTURER",
            "MODEL",
            "SERIAL",
            "BIOS",
            "POWER",
            "CPUS",
            "THREADS",
            "MEMORY",
            "HEALTH",
        ]);
        for s in &b.systems {
            t.add_row(vec![
                s.id.clone(),
                or_dash(s.manufacturer.as_deref()),
                or_dash(s.model.as_deref()),
                or_dash(s.serial_number.as_deref()),
                or_dash(s.bios_version.as_deref()),
                or_dash(s.power_state.as_deref()),
                or_dash(s.processor_count),
                or_dash(s.logical_processors),
                or_dash(s.memory_gib.map(|g| format!("{g} GiB"))),
                format!("{:?}/{:?}", s.health, s.health_rollup),
            ]);
        }
        let _ = writeln!(out, "{t}");
        let mut t = table(&[
            "CHASSIS",
            "HEALTH",
            "INTRUSION",
            "INLET °C",
            "CPU °C",
            "WATTS",
            "FANS",
            "PSUS",
        ]);
        for ch in &b.chassis {
            let bad_psus = ch
                .power_supplies
                .iter()
                .filter(|p| p.health != crate::redfish::Health::Ok)
                .count();
            t.add_row(vec![
                ch.id.clone(),
                format!("{:?}", ch.health),
                or_dash(ch.intrusion.as_deref()),
                or_dash(ch.inlet_celsius),
                or_dash(ch.cpu_max_celsius),
                or_dash(ch.consumed_watts),
                ch.fans.len().to_string(),
                format!("{} ({} not OK)", ch.power_supplies.len(), bad_psus),
            ]);
        }
        let _ = writeln!(out, "{t}");
        // The server as a whole, by the rules in `readings` (which rule gave the power, too).
        let power = crate::readings::server_power(b);
        let _ = writeln!(
            out,
            "Server: {} W ({}), inlet {} °C, hottest CPU {} °C\n",
            or_dash(power.map(|(w, _)| (w * 10.0).round() / 10.0)),
            power.map_or_else(|| "no reading".to_string(), |(_, src)| format!("{src:?}")),
            or_dash(crate::readings::server_inlet(b)),
            or_dash(crate::readings::server_cpu_max(b)),
        );
        for w in &b.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let reason = crate::convert::health_reason(b);
        if !reason.is_empty() {
            let _ = writeln!(out, "Why {:?}: {reason}\n", b.overall_health());
        }
        let fans: Vec<_> = b.chassis.iter().flat_map(|c| &c.fans).collect();
        if !fans.is_empty() {
            let rpm: Vec<f64> = fans
                .iter()
                .filter(|f| f.unit.eq_ignore_ascii_case("RPM"))
                .filter_map(|f| f.value)
                .collect();
            let _ = writeln!(
                out,
                "Fans: {} ({} not OK){}\n",
                fans.len(),
                fans.iter()
                    .filter(|f| !matches!(
                        f.health,
                        crate::redfish::Health::Ok | crate::redfish::Health::Unknown
                    ))
                    .count(),
                match (
                    rpm.iter().copied().reduce(f64::min),
                    rpm.iter().copied().reduce(f64::max)
                ) {
                    (Some(lo), Some(hi)) => format!(", {lo}–{hi} RPM"),
                    _ => String::new(),
                }
            );
        }
        let psus: Vec<_> = b.chassis.iter().flat_map(|c| &c.power_supplies).collect();
        if !psus.is_empty() {
            let mut t = table(&["POWER SUPPLY", "HEALTH", "INPUT W", "BMC SAYS"]);
            for p in psus {
                t.add_row(vec![
                    p.name.clone(),
                    format!("{:?}", p.health),
                    or_dash(p.input_watts),
                    p.conditions.join("; "),
                ]);
            }
            let _ = writeln!(out, "{t}");
        }
        // The newest warnings and criticals, newest last (as the logs keep them).
        let serious: Vec<_> = b
            .events
            .iter()
            .filter(|e| matches!(e.severity.as_deref(), Some("Warning" | "Critical")))
            .collect();
        if !serious.is_empty() {
            let mut t = table(&["LOG", "CREATED", "SEVERITY", "MESSAGE"]);
            for e in serious.iter().skip(serious.len().saturating_sub(8)) {
                t.add_row(vec![
                    e.log.clone(),
                    or_dash(e.created.as_deref()),
                    or_dash(e.severity.as_deref()),
                    or_dash(e.message.as_deref()),
                ]);
            }
            let _ = writeln!(out, "{t}");
        }
        let gpus = crate::readings::gpus(b);
        if !gpus.is_empty() {
            let mut t = table(&["GPU", "MODEL", "HEALTH", "WATTS", "TEMP °C"]);
            for g in gpus {
                t.add_row(vec![
                    g.id,
                    or_dash(g.model.as_deref()),
                    format!("{:?}", g.health),
                    or_dash(g.power_watts.map(|w| (w * 10.0).round() / 10.0)),
                    or_dash(g.temperature_celsius.map(|c| (c * 10.0).round() / 10.0)),
                ]);
            }
            let _ = writeln!(out, "{t}");
        }
        if !b.drives.is_empty() {
            let mut t = table(&[
                "DRIVE",
                "MODEL",
                "MEDIA",
                "PROTOCOL",
                "CAPACITY",
                "HEALTH",
                "LIFE LEFT",
                "FAILURE PREDICTED",
                "SED",
            ]);
            for d in &b.drives {
                t.add_row(vec![
                    d.id.clone(),
                    or_dash(d.model.as_deref()),
                    or_dash(d.media_type.as_deref()),
                    or_dash(d.protocol.as_deref()),
                    or_dash(d.capacity_bytes.map(gib)),
                    format!("{:?}", d.health),
                    or_dash(d.life_left_percent.map(|p| format!("{p}%"))),
                    d.failure_predicted.to_string(),
                    d.encryption_capable.to_string(),
                ]);
            }
            let _ = writeln!(out, "{t}");
        }
        for e in &b.errors {
            let _ = writeln!(out, "unreadable: {}: {}", e.section, e.reason);
        }
    }
    if let Some(o) = &c.os {
        let mut t = table(&["OS", "VALUE"]);
        let rows: Vec<(&str, String)> = vec![
            ("hostname", or_dash(o.hostname.as_deref())),
            ("os", or_dash(o.os_version.as_deref())),
            ("kernel", or_dash(o.kernel.as_deref())),
            ("uptime", format!("{} s", o.uptime_seconds)),
            (
                "load 1/5/15",
                format!("{:.2} {:.2} {:.2}", o.load1, o.load5, o.load15),
            ),
            (
                "cpu",
                format!("{} cpus, {:.1}% busy", o.cpu_count, o.cpu_usage_percent),
            ),
            (
                "memory",
                format!(
                    "{} used of {} ({} available)",
                    gib(o.memory_used_bytes),
                    gib(o.memory_total_bytes),
                    gib(o.memory_available_bytes)
                ),
            ),
            (
                "swap",
                format!(
                    "{} used of {}",
                    gib(o.swap_used_bytes),
                    gib(o.swap_total_bytes)
                ),
            ),
        ];
        for (k, v) in rows {
            t.add_row(vec![k.to_owned(), v]);
        }
        for d in &o.disks {
            t.add_row(vec![
                format!("disk {}", d.mount_point),
                format!(
                    "{} free of {} ({})",
                    gib(d.available_bytes),
                    gib(d.total_bytes),
                    d.file_system
                ),
            ]);
        }
        for n in &o.networks {
            t.add_row(vec![
                format!("net {}", n.interface),
                format!(
                    "rx {} B, tx {} B, errors {}/{}",
                    n.received_bytes, n.transmitted_bytes, n.receive_errors, n.transmit_errors
                ),
            ]);
        }
        for s in &o.temperatures {
            t.add_row(vec![
                format!("temp {}", s.label),
                format!("{:.1} °C", s.celsius),
            ]);
        }
        let _ = writeln!(out, "{t}");
    }
    out
}
