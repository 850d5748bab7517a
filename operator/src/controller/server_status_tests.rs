use super::*;
use sovereign_telemetry::proto::{BmcSummary, Failure, Source};

const T0: i64 = 1_800_000_000_000;

fn server(status: Option<ServerStatus>) -> Server {
    let mut s: Server = serde_json::from_value(serde_json::json!({
        "apiVersion": "sovereign.io/v1alpha1", "kind": "Server",
        "metadata": {"name": "hn1-r01-s01", "generation": 1},
        "spec": {
            "rack": "hn1-r01", "nodeName": "worker-1",
            "bmc": {
                "address": "https://10.0.0.1",
                "credentialsSecretRef": {"name": "bmc", "namespace": "sovereign-system"},
                "insecureSkipVerify": true, "pollIntervalSeconds": 15
            },
            "capacity": {"cpu": 8, "memory": "64Gi", "gpus": 2}
        }
    }))
    .unwrap();
    s.status = status;
    s
}

fn bmc(at: i64, watts: f64, inlet: f64, intrusion: &str) -> Sample {
    Sample {
        server: "hn1-r01-s01".into(),
        source: Source::Redfish as i32,
        observed_at_unix_ms: at,
        body: Some(Body::Bmc(BmcSummary {
            health: proto::Health::Ok as i32,
            power_state: "On".into(),
            consumed_watts: Some(watts),
            inlet_celsius: Some(inlet),
            cpu_max_celsius: Some(55.0),
            intrusion: intrusion.into(),
            manufacturer: "Dell Inc.".into(),
            logical_processors: 64,
            memory_bytes: Some(512 << 30),
            drive_list: vec![proto::Drive {
                id: "nvme0".into(),
                tier: "nvme".into(),
                capacity_bytes: Some(3_840_000_000_000),
                health: proto::Health::Ok as i32,
                life_left_percent: Some(97.0),
                failure_predicted: false,
                encryption_capable: true,
            }],
            ..BmcSummary::default()
        })),
    }
}

fn now(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap()
}

fn policy() -> StatusPolicy {
    StatusPolicy::default()
}

/// The status after a first sample, as the API server would store it.
fn settled(sample: &Sample) -> ServerStatus {
    let d = decide(
        &server(None),
        Observed {
            bmc: Some(sample),
            os: None,
            allocated: None,
        },
        now(sample.observed_at_unix_ms),
        &policy(),
    );
    assert_eq!(d.write, Some("first status"));
    d.status
}

fn cond<'a>(s: &'a ServerStatus, t: &str) -> &'a sovereign_crds::Condition {
    conditions::find(&s.conditions, t).unwrap()
}

#[test]
fn healthy_sample_makes_a_ready_schedulable_server_with_measured_capacity() {
    let s = settled(&bmc(T0, 500.0, 24.0, "Normal"));
    for t in [
        "Reachable",
        "Healthy",
        "Secure",
        "TelemetryFresh",
        "Schedulable",
        "Ready",
    ] {
        assert_eq!(cond(&s, t).status, ConditionStatus::True, "{t}");
    }
    let cap = s.capacity.unwrap();
    assert_eq!(
        cap.cpu.unwrap().0,
        "64",
        "measured cores win over the declared 8"
    );
    assert_eq!(cap.memory.unwrap().0, (512u64 << 30).to_string());
    assert_eq!(
        cap.gpus,
        Some(2),
        "GPUs not reported by the BMC come from spec.capacity"
    );
    assert_eq!(cap.storage.unwrap().nvme.unwrap().0, "3840000000000");
    assert_eq!(s.power.unwrap().consumed_watts, Some(500));
}

#[test]
fn intrusion_makes_the_server_insecure_unschedulable_and_evicts() {
    let stored = settled(&bmc(T0, 500.0, 24.0, "Normal"));
    let d = decide(
        &server(Some(stored)),
        Observed {
            bmc: Some(&bmc(T0 + 15_000, 500.0, 24.0, "HardwareIntrusion")),
            os: None,
            allocated: None,
        },
        now(T0 + 15_000),
        &policy(),
    );
    assert_eq!(d.write, Some("condition changed"));
    assert_eq!(cond(&d.status, "Secure").status, ConditionStatus::False);
    assert_eq!(cond(&d.status, "Schedulable").reason, "ChassisIntrusion");
    assert_eq!(cond(&d.status, "Ready").status, ConditionStatus::False);
    assert_eq!(
        d.taint,
        Some(Taint {
            reason: "ChassisIntrusion".into(),
            effect: "NoExecute"
        })
    );
    assert!(d.transitions.iter().any(|t| t.type_ == "Secure"));
}

#[test]
fn small_power_and_temperature_moves_are_not_written() {
    let stored = settled(&bmc(T0, 500.0, 24.0, "Normal"));
    let run = |watts: f64, inlet: f64| {
        decide(
            &server(Some(stored.clone())),
            Observed {
                bmc: Some(&bmc(T0 + 15_000, watts, inlet, "Normal")),
                os: None,
                allocated: None,
            },
            now(T0 + 15_000),
            &policy(),
        )
        .write
    };
    // max(5 % of 500 W, 20 W) = 25 W.
    assert_eq!(run(524.0, 24.0), None);
    assert_eq!(run(526.0, 24.0), Some("power moved"));
    assert_eq!(run(474.0, 24.0), Some("power moved"));
    assert_eq!(run(500.0, 25.9), None);
    assert_eq!(run(500.0, 26.2), Some("temperature moved"));
}

#[test]
fn silence_turns_telemetry_stale_by_the_operators_clock() {
    let stored = settled(&bmc(T0, 500.0, 24.0, "Normal"));
    // Poll interval 15 s: stale after 45 s. No new sample at all.
    let fresh = decide(
        &server(Some(stored.clone())),
        Observed::default(),
        now(T0 + 40_000),
        &policy(),
    );
    assert_eq!(fresh.write, None);
    assert_eq!(fresh.requeue_after, Duration::from_millis(5_500));
    let stale = decide(
        &server(Some(stored)),
        Observed::default(),
        now(T0 + 46_000),
        &policy(),
    );
    assert_eq!(stale.write, Some("condition changed"));
    assert_eq!(
        cond(&stale.status, "TelemetryFresh").reason,
        "TelemetryStale"
    );
    assert_eq!(cond(&stale.status, "Schedulable").reason, "TelemetryStale");
    assert_eq!(stale.taint.unwrap().effect, "NoSchedule");
}

#[test]
fn unchanged_readings_are_written_on_the_heartbeat_only() {
    let stored = settled(&bmc(T0, 500.0, 24.0, "Normal"));
    let at = |ms: i64| {
        decide(
            &server(Some(stored.clone())),
            Observed {
                bmc: Some(&bmc(T0 + ms, 500.0, 24.0, "Normal")),
                os: None,
                allocated: None,
            },
            now(T0 + ms),
            &policy(),
        )
        .write
    };
    // Never before the policy's 5 minutes; by 6 (the name's spread) at the latest.
    assert_eq!(at(299_000), None);
    assert_eq!(at(360_000), Some("heartbeat"));
    let beat = policy().heartbeat_for("hn1-r01-s01");
    let ms = i64::try_from(beat.as_millis()).unwrap();
    assert_eq!(at(ms - 1), None);
    assert_eq!(at(ms), Some("heartbeat"));
}

#[test]
fn heartbeats_of_a_fleet_are_spread_over_a_fifth_of_the_period() {
    let p = policy();
    let beats: std::collections::BTreeSet<u128> = (0..200)
        .map(|i| {
            p.heartbeat_for(&format!("hn1-r{:02}-s{:02}", i / 40, i % 40))
                .as_millis()
        })
        .collect();
    assert!(beats.iter().all(|b| (300_000..360_000).contains(b)));
    // Spread, not bunched: 200 servers land on many distinct instants over the minute.
    assert!(beats.len() > 150, "{} distinct heartbeats", beats.len());
    assert!(beats.first().unwrap() < &312_000 && beats.last().unwrap() > &348_000);
}

#[test]
fn a_failing_bmc_is_unreachable_with_its_class_and_keeps_its_last_readings() {
    let stored = settled(&bmc(T0, 500.0, 24.0, "Normal"));
    let failure = Sample {
        server: "hn1-r01-s01".into(),
        source: Source::Redfish as i32,
        observed_at_unix_ms: T0 + 15_000,
        body: Some(Body::Failure(Failure {
            class: "BmcTimeout".into(),
            reason: "no answer within 10 s".into(),
        })),
    };
    let d = decide(
        &server(Some(stored)),
        Observed {
            bmc: Some(&failure),
            os: None,
            allocated: None,
        },
        now(T0 + 15_000),
        &policy(),
    );
    assert_eq!(cond(&d.status, "Reachable").reason, "BmcTimeout");
    assert_eq!(cond(&d.status, "Schedulable").reason, "BmcUnreachable");
    assert_eq!(d.status.power.unwrap().consumed_watts, Some(500));
    assert_eq!(d.status.health, Health::Unknown);
}

#[test]
fn maintenance_wins_over_everything_and_taints_noschedule() {
    let stored = settled(&bmc(T0, 500.0, 24.0, "Normal"));
    let mut s = server(Some(stored));
    s.spec.maintenance = true;
    s.spec.maintenance_reason = Some("CHG-1234 DIMM swap".into());
    let d = decide(&s, Observed::default(), now(T0 + 1_000), &policy());
    let c = cond(&d.status, "Schedulable");
    assert_eq!(
        (c.reason.as_str(), c.message.as_str()),
        ("Maintenance", "CHG-1234 DIMM swap")
    );
    assert_eq!(d.taint.unwrap().effect, "NoSchedule");
}

#[test]
fn an_older_sample_never_steps_the_status_back() {
    let stored = settled(&bmc(T0, 500.0, 24.0, "HardwareIntrusion"));
    let d = decide(
        &server(Some(stored)),
        Observed {
            bmc: Some(&bmc(T0 - 1_000, 500.0, 24.0, "Normal")),
            os: None,
            allocated: None,
        },
        now(T0 + 1_000),
        &policy(),
    );
    assert_eq!(cond(&d.status, "Secure").status, ConditionStatus::False);
    assert_eq!(d.write, None);
}

#[test]
fn no_telemetry_at_all_is_unschedulable_with_a_reason() {
    let d = decide(&server(None), Observed::default(), now(T0), &policy());
    assert_eq!(cond(&d.status, "Schedulable").reason, "NoTelemetry");
    assert_eq!(
        cond(&d.status, "Reachable").status,
        ConditionStatus::Unknown
    );
    assert_eq!(d.write, Some("first status"));
}

#[test]
fn a_new_allocation_is_written_allocation_every_after_the_stored_reading_and_an_unknown_one_kept() {
    let every = i64::try_from(policy().allocation_every.as_millis()).unwrap();
    let stored = settled(&bmc(T0, 500.0, 24.0, "Normal"));
    let alloc = ResourceSet {
        cpu: Some(Quantity::new("8")),
        ..ResourceSet::default()
    };
    let soon = bmc(T0 + every / 4, 500.0, 24.0, "Normal");
    let held = decide(
        &server(Some(stored.clone())),
        Observed {
            bmc: Some(&soon),
            allocated: Some(Some(alloc.clone())),
            ..Observed::default()
        },
        now(T0 + every / 4),
        &policy(),
    );
    assert_eq!(held.write, None, "held within allocation_every");
    let later = bmc(T0 + every, 500.0, 24.0, "Normal");
    let d = decide(
        &server(Some(stored.clone())),
        Observed {
            bmc: Some(&later),
            allocated: Some(Some(alloc.clone())),
            ..Observed::default()
        },
        now(T0 + every),
        &policy(),
    );
    assert_eq!(d.write, Some("allocation changed"));
    assert_eq!(d.status.allocated, Some(alloc));
    let kept = decide(
        &server(Some(d.status.clone())),
        Observed::default(),
        now(T0 + every + 1_000),
        &policy(),
    );
    assert_eq!(
        kept.write, None,
        "no ledger yet: the stored allocation stands"
    );
}

#[test]
fn the_ledger_trusts_a_stored_reading_for_a_heartbeat_and_the_stale_window() {
    // The newest heartbeat of any server is at most 6 min old; the ledger's window is longer.
    let p = policy();
    let beat_max = (0..50)
        .map(|i| p.heartbeat_for(&format!("server-{i}")))
        .max()
        .unwrap();
    let window = p.ledger_stale_after_seconds();
    assert!(
        u64::try_from(window).unwrap() > beat_max.as_secs(),
        "{window} s vs heartbeat {beat_max:?}"
    );
    let custom = StatusPolicy {
        stale_after: Some(Duration::from_mins(3)),
        ..policy()
    };
    assert_eq!(custom.ledger_stale_after_seconds(), 360 + 180);
}
