//! The chart's Grafana dashboard renders (behind its value), is valid JSON, and every metric it
//! queries is one the operator or its telemetry front actually exports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::collections::BTreeSet;

use sovereign_telemetry::proto::{BmcSummary, Failure, Gpu, Sample, Source, sample::Body};
use sovereign_tests::chart::{self, ci_values, find};

/// `sovereign_...` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sovereign_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_queries_only_metrics_that_exist() {
    let Some(helm) = chart::helm() else { return };
    let off = chart::render(&helm, &["-f", &ci_values("default")]).unwrap();
    assert!(
        find(&off, "ConfigMap", "sovereign-dashboard").is_none(),
        "off by default"
    );
    let objects = chart::render(
        &helm,
        &[
            "-f",
            &ci_values("default"),
            "--set",
            "dashboard.enabled=true",
        ],
    )
    .unwrap();
    let cm = find(&objects, "ConfigMap", "sovereign-dashboard").unwrap();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: serde_json::Value =
        serde_json::from_str(cm["data"]["sovereign-fleet.json"].as_str().unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{}", panels.len());
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "power vs budget",
        "Inlet",
        "intrusion",
        "Drive wear",
        "GPU",
        "Capacity",
        "refusals",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel for {wanted}: {titles:?}"
        );
    }
    // Families without samples are not exposed: give every exporter one of each.
    let operator = sovereign_operator::controller::metrics::ControllerMetrics::new();
    let capacity: sovereign_crds::ResourceSet =
        serde_json::from_value(serde_json::json!({"cpu": "64", "memory": "256Gi"})).unwrap();
    operator.rack("r1", "s1", Some(1000.0), 12000.0, Some(22.0));
    operator.site("s1", Some(&capacity), Some(&capacity));
    operator.decision("StorageVolume", "Placed");
    operator.write("Server", "heartbeat");
    operator.error("server", "ApplyStatus");
    drop(operator.start("server"));
    let telemetry = sovereign_telemetry::metrics::Metrics::new();
    let at = sovereign_telemetry::metrics::Placement {
        server: "s".into(),
        rack: "r1".into(),
        site: "s1".into(),
    };
    telemetry.observe(
        &Sample {
            server: "s".into(),
            source: Source::Redfish as i32,
            body: Some(Body::Bmc(BmcSummary {
                consumed_watts: Some(1.0),
                inlet_celsius: Some(1.0),
                cpu_max_celsius: Some(1.0),
                min_drive_life_left_percent: Some(1.0),
                gpus: vec![Gpu {
                    id: "g".into(),
                    power_watts: Some(1.0),
                    temperature_celsius: Some(1.0),
                    ..Gpu::default()
                }],
                ..BmcSummary::default()
            })),
            ..Sample::default()
        },
        &at,
    );
    let failed = sovereign_telemetry::metrics::Placement {
        server: "f".into(),
        ..at.clone()
    };
    telemetry.observe(
        &Sample {
            server: "f".into(),
            source: Source::Redfish as i32,
            body: Some(Body::Failure(Failure {
                class: "BmcTimeout".into(),
                reason: "slow".into(),
            })),
            ..Sample::default()
        },
        &failed,
    );
    let exported = format!("{}{}", operator.encode(), telemetry.encode());
    let mut queried = BTreeSet::new();
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            queried.extend(metric_names(t["expr"].as_str().unwrap()));
        }
    }
    assert!(!queried.is_empty());
    for name in &queried {
        // Counters are exposed with `_total`; the family's TYPE line names it without.
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            exported.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which nothing exports:\n{exported}"
        );
    }
}
