//! The per-tree truth table: on every tree in ../shared/redfish-mockups, the summary the agent
//! sends (server power, inlet, hottest CPU, fans, PSUs, drives, GPUs, health) equals values
//! read off the tree's JSON by hand (the note on each row says where they come from).
//! `TRUTH_PRINT=1 cargo test -p sovereign-agent --test truth -- --nocapture` prints the rows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::sync::Arc;

use sovereign_agent::convert;
use sovereign_agent::mockbmc::{self, MockBmc, endpoint, mockups, trees};
use sovereign_agent::redfish;
use sovereign_telemetry_api::proto::{BmcSummary, Health, sample::Body};

async fn summary(tree: &str) -> BmcSummary {
    let bmc = mockbmc::start(MockBmc::new(mockups().join(tree)))
        .await
        .unwrap();
    let ep = endpoint(bmc.url());
    let client = redfish::connect(&ep).unwrap();
    let s = redfish::collect(Arc::new(client)).await.unwrap();
    match convert::bmc("t", &s).body {
        Some(Body::Bmc(b)) => b,
        other => panic!("{tree}: {other:?}"),
    }
}

/// One row: what the tree says.
struct Truth {
    tree: &'static str,
    watts: Option<f64>,
    inlet: Option<f64>,
    cpu: Option<f64>,
    fans: usize,
    psus: usize,
    drives: Option<u32>,
    gpus: usize,
    health: Health,
}

fn row(b: &BmcSummary) -> String {
    format!(
        "watts {:?} inlet {:?} cpu {:?} fans {} psus {} drives {} gpus {} health {:?}",
        b.consumed_watts,
        b.inlet_celsius,
        b.cpu_max_celsius,
        b.fans.len(),
        b.power_supplies.len(),
        b.drives,
        b.gpus.len(),
        b.health()
    )
}

#[tokio::test]
async fn every_tree_reads_as_its_json_says() {
    if !sovereign_agent::mockbmc::have_mockups("every_tree_reads_as_its_json_says") {
        return;
    }
    let print = std::env::var("TRUTH_PRINT").is_ok();
    let table = truth();
    let mut wrong = Vec::new();
    for tree in trees() {
        let b = summary(&tree).await;
        if print {
            println!("{tree}: {}", row(&b));
        }
        let Some(t) = table.iter().find(|t| t.tree == tree) else {
            wrong.push(format!("{tree}: no row in the truth table ({})", row(&b)));
            continue;
        };
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() < 0.01,
            (None, None) => true,
            _ => false,
        };
        let ok = close(b.consumed_watts, t.watts)
            && close(b.inlet_celsius, t.inlet)
            && close(b.cpu_max_celsius, t.cpu)
            && b.fans.len() == t.fans
            && b.power_supplies.len() == t.psus
            && t.drives.is_none_or(|d| d == b.drives)
            && b.gpus.len() == t.gpus
            && b.health() == t.health;
        if !ok {
            wrong.push(format!(
                "{tree}:\n  got  {}\n  want watts {:?} inlet {:?} cpu {:?} fans {} psus {} drives {:?} gpus {} health {:?}",
                row(&b),
                t.watts,
                t.inlet,
                t.cpu,
                t.fans,
                t.psus,
                t.drives,
                t.gpus,
                t.health
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[allow(clippy::too_many_arguments)]
fn t(
    tree: &'static str,
    watts: Option<f64>,
    inlet: Option<f64>,
    cpu: Option<f64>,
    fans: usize,
    psus: usize,
    drives: Option<u32>,
    gpus: usize,
    health: Health,
) -> Truth {
    Truth {
        tree,
        watts,
        inlet,
        cpu,
        fans,
        psus,
        drives,
        gpus,
        health,
    }
}

/// Checked against the JSON by hand: the vendor and GPU rows value by value (DGX: `PWR_SYSTEM`
/// 1,950 W, `TEMP_AMBIENT` 22 °C, legacy `TEMP_CPU0`/`TEMP_CPU1` 31 °C (not the DIMM banks `TEMP_CPU0_EFGH` 38 °C; the CPU board's Sensors repeat the DGX's and are not read), 36 legacy fans, PSU0-5 under
/// PowerSubsystem, GPU_SXM_1-8; GH200: processor modules 165.805 + 144.309 W with their GPUs
/// inside them not added again, coldest HGX inlet 29.996 °C, CPU TempAvg 38.281 °C (TempLimit
/// excluded), FAN_1-8 F/R as Sensors; Lenovo: PowerControl[0] 708 W beside its CPU and memory
/// sub-systems; Supermicro: `CPU1 Temp`/`CPU2 Temp` 29 °C, not `CPU2_VRMHV Temp` 45 °C (a voltage
/// regulator); compose mockup: the first system's chassis, 559 W, not the eight servers' sum).
/// DMTF rack servers: SATA Bay 1 and 2 under SimpleStorage (3 and 4 `Absent`; Bay 2 Warning).
/// DGX drives: its ten NVMe devices under SimpleStorage (controller 2's five are the BMC's
/// virtual media, not disks). `None` for drives would mean "not compared".
fn truth() -> Vec<Truth> {
    vec![
        t(
            "dmtf/public-acd",
            Some(344.0),
            Some(25.0),
            Some(41.0),
            2,
            1,
            Some(2),
            0,
            Health::Warning,
        ),
        t(
            "dmtf/public-applications",
            None,
            None,
            None,
            0,
            0,
            Some(4),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-bladed",
            None,
            Some(24.0),
            Some(77.0),
            8,
            2,
            Some(8),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-bladed-partitions",
            None,
            Some(25.0),
            Some(42.0),
            2,
            2,
            Some(2),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-cables",
            None,
            None,
            None,
            0,
            0,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-catfish",
            Some(224.0),
            Some(25.0),
            Some(46.0),
            2,
            0,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-composability",
            None,
            Some(24.0),
            None,
            4,
            2,
            Some(7),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-compose-action",
            Some(559.0),
            None,
            None,
            0,
            0,
            Some(26),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-constrained-composition",
            None,
            Some(24.0),
            None,
            4,
            2,
            Some(3),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-cooling-unit",
            None,
            None,
            None,
            0,
            0,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-cxl",
            None,
            Some(25.0),
            None,
            2,
            0,
            Some(0),
            1,
            Health::Ok,
        ),
        t(
            "dmtf/public-cxl-multiswitch",
            None,
            None,
            None,
            0,
            0,
            Some(0),
            1,
            Health::Ok,
        ),
        t(
            "dmtf/public-expansion-box",
            None,
            Some(24.0),
            None,
            4,
            2,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-iiot",
            None,
            None,
            Some(51.0),
            0,
            0,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-liquid-cooled-server",
            Some(374.0),
            Some(22.5),
            Some(37.0),
            0,
            2,
            Some(2),
            0,
            Health::Warning,
        ),
        t(
            "dmtf/public-localstorage",
            Some(344.0),
            Some(25.0),
            Some(41.0),
            2,
            1,
            Some(4),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-mpf",
            Some(344.0),
            Some(25.0),
            Some(41.0),
            2,
            1,
            Some(4),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-nvmeof-jbof",
            Some(1795.0),
            Some(25.0),
            None,
            2,
            2,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-oem-examples",
            None,
            None,
            None,
            0,
            0,
            Some(0),
            0,
            Health::Unknown,
        ),
        t(
            "dmtf/public-pdu",
            None,
            None,
            None,
            0,
            0,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-pmem-configuration",
            None,
            None,
            None,
            0,
            0,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-power-shelf",
            None,
            None,
            None,
            0,
            0,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-rackmount1",
            Some(344.0),
            Some(25.0),
            Some(41.0),
            2,
            1,
            Some(2),
            0,
            Health::Warning,
        ),
        t(
            "dmtf/public-sasfabric",
            None,
            Some(25.0),
            Some(41.0),
            4,
            2,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-smartnic",
            Some(374.0),
            Some(22.5),
            Some(37.0),
            0,
            2,
            Some(3),
            0,
            Health::Warning,
        ),
        t(
            "dmtf/public-telemetry",
            Some(8000.0),
            Some(25.0),
            Some(21.0),
            8,
            12,
            Some(0),
            0,
            Health::Ok,
        ),
        t(
            "dmtf/public-tower",
            Some(926.0),
            Some(25.0),
            Some(41.0),
            2,
            2,
            Some(18),
            2,
            Health::Ok,
        ),
        t(
            "variants/dell-intrusion",
            Some(614.0),
            Some(25.0),
            Some(39.0),
            6,
            2,
            Some(3),
            1,
            Health::Critical,
        ),
        t(
            "variants/localstorage-wearout",
            Some(344.0),
            Some(25.0),
            Some(41.0),
            2,
            1,
            Some(4),
            0,
            Health::Warning,
        ),
        t(
            "variants/rackmount1-intrusion",
            Some(344.0),
            Some(25.0),
            Some(41.0),
            2,
            1,
            Some(2),
            0,
            Health::Critical,
        ),
        t(
            "vendor/dell",
            Some(614.0),
            Some(25.0),
            Some(39.0),
            6,
            2,
            Some(3),
            1,
            Health::Ok,
        ),
        t(
            "vendor/hpe",
            Some(531.0),
            Some(20.0),
            Some(46.0),
            6,
            2,
            Some(18),
            0,
            Health::Critical,
        ),
        t(
            "vendor/lenovo",
            Some(708.0),
            Some(19.0),
            Some(30.0),
            10,
            4,
            Some(4),
            8,
            Health::Ok,
        ),
        t(
            "vendor/nvidia-gh200",
            Some(310.114),
            Some(29.996),
            Some(38.281),
            16,
            0,
            Some(0),
            2,
            Health::Ok,
        ),
        t(
            "vendor/nvidia-viking",
            Some(1950.0),
            Some(22.0),
            Some(31.0),
            36,
            6,
            Some(10),
            8,
            Health::Ok,
        ),
        t(
            "vendor/supermicro",
            Some(2161.0),
            Some(21.0),
            Some(29.0),
            6,
            8,
            Some(8),
            0,
            Health::Ok,
        ),
    ]
}

/// A component's own words reach the health reason: the DMTF rack server's system is Warning
/// because of a sensor above its caution threshold (its legacy PSU entry gives no words).
#[tokio::test]
async fn the_health_reason_carries_the_bmcs_words() {
    if !sovereign_agent::mockbmc::have_mockups("the_health_reason_carries_the_bmcs_words") {
        return;
    }
    let b = summary("dmtf/public-rackmount1").await;
    assert_eq!(b.health(), Health::Warning);
    assert!(
        b.health_reason.contains(
            "Sensor 'CPU1 Temp' reading of 44 (Cel) is above the 42 upper caution threshold."
        ),
        "{}",
        b.health_reason
    );
    assert!(
        b.health_reason
            .contains("power supply Power Supply Bay: Warning"),
        "{}",
        b.health_reason
    );
}

/// A BMC that expands collections (every vendor tree advertises it): the poller's second poll
/// reads each chassis' `Sensors` inline. Same readings as one sensor at a time, in fewer
/// requests (the DGX H100: its per-sensor pass disappears).
#[tokio::test]
async fn expanded_sensors_give_the_same_readings_in_fewer_requests() {
    use std::sync::atomic::Ordering;
    if !sovereign_agent::mockbmc::have_mockups(
        "expanded_sensors_give_the_same_readings_in_fewer_requests",
    ) {
        return;
    }
    for tree in trees().iter().filter(|t| !t.starts_with("dmtf/")) {
        let plain = MockBmc::new(mockups().join(tree));
        let plain_requests = plain.requests.clone();
        let expected = summary_of(plain, false).await;
        let before = plain_requests.load(Ordering::Relaxed);
        let mut expanding = MockBmc::new(mockups().join(tree));
        expanding.expand = true;
        let requests = expanding.requests.clone();
        let got = summary_of(expanding, true).await;
        assert_eq!(got, expected, "{tree}");
        let used = requests.load(Ordering::Relaxed);
        assert!(
            used <= before,
            "{tree}: {used} requests expanded, {before} one by one"
        );
        if tree == "vendor/nvidia-viking" {
            // 389 → 262 here: the per-sensor pass is gone; logs and subsystems remain.
            assert!(
                used + 100 < before,
                "{tree}: {used} requests expanded, {before} one by one"
            );
            eprintln!("{tree}: {before} requests a poll one by one, {used} expanded");
        }
    }
}

/// The summary of the second of two polls, as the poller makes them (the first learns from the
/// service root whether the BMC expands); `requests` counts only the second.
async fn summary_of(m: MockBmc, expand: bool) -> BmcSummary {
    use std::sync::atomic::Ordering;
    let counter = m.requests.clone();
    let bmc = mockbmc::start(m).await.unwrap();
    let ep = endpoint(bmc.url());
    let hint = sovereign_agent::transport::RetryHint::default();
    let client = Arc::new(redfish::connect_hinted(&ep, &hint).unwrap());
    let first = redfish::collect_with(client.clone(), true, false)
        .await
        .unwrap();
    assert!(!first.expand_refused);
    counter.store(0, Ordering::Relaxed);
    let s = redfish::collect_with(client, true, expand && hint.expands())
        .await
        .unwrap();
    match convert::bmc("t", &s).body {
        Some(Body::Bmc(mut b)) => {
            b.warnings.clear();
            b
        }
        other => panic!("{other:?}"),
    }
}
