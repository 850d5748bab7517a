//! Light polls (`redfish::refresh`): on every mockup tree they read what a full poll reads
//! (health and readings), in far fewer requests on a many-chassis GPU server, and they see a
//! change the moment the BMC reports it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sovereign_agent::convert;
use sovereign_agent::mockbmc::{self, MockBmc, endpoint, mockups, trees};
use sovereign_agent::redfish::{self, BmcSample, HttpRedfish};
use sovereign_agent::transport::RetryHint;
use sovereign_telemetry_api::proto::{BmcSummary, sample::Body};

async fn start(m: MockBmc) -> (mockbmc::Running, Arc<HttpRedfish>, RetryHint) {
    let bmc = mockbmc::start(m).await.unwrap();
    let ep = endpoint(bmc.url());
    let hint = RetryHint::default();
    let client = Arc::new(redfish::connect_hinted(&ep, &hint).unwrap());
    (bmc, client, hint)
}

/// A full poll as the poller makes it from the second on (the first learns `$expand`);
/// `requests` counts only that one.
async fn full(client: &Arc<HttpRedfish>, hint: &RetryHint, requests: &AtomicU64) -> BmcSample {
    redfish::collect_with(client.clone(), true, false)
        .await
        .unwrap();
    requests.store(0, Ordering::Relaxed);
    redfish::collect_with(client.clone(), true, hint.expands())
        .await
        .unwrap()
}

fn summary(s: &BmcSample) -> BmcSummary {
    match convert::bmc("t", s).body {
        Some(Body::Bmc(mut b)) => {
            b.warnings.clear();
            // Logs are read by full polls only.
            b.new_events.clear();
            b
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_light_poll_reads_what_a_full_poll_reads_on_every_tree() {
    if !sovereign_agent::mockbmc::have_mockups(
        "a_light_poll_reads_what_a_full_poll_reads_on_every_tree",
    ) {
        return;
    }
    let mut checked = 0;
    for tree in trees() {
        for expand in [false, true] {
            let mut m = MockBmc::new(mockups().join(&tree));
            m.expand = expand;
            let requests = m.requests.clone();
            let (_bmc, client, hint) = start(m).await;
            let base = full(&client, &hint, &requests).await;
            let full_requests = requests.swap(0, Ordering::Relaxed);
            let light = redfish::refresh(&*client, &base, hint.expands())
                .await
                .unwrap_or_else(|e| panic!("{tree}: {e}"));
            let light_requests = requests.load(Ordering::Relaxed);
            assert!(light.light);
            assert!(
                light.errors.is_empty(),
                "{tree} (expand {expand}): {:?}",
                light.errors
            );
            assert!(!light.stale_plan, "{tree} (expand {expand})");
            assert_eq!(summary(&light), summary(&base), "{tree} (expand {expand})");
            assert!(
                light_requests <= full_requests,
                "{tree} (expand {expand}): {light_requests} requests light, {full_requests} full"
            );
            if tree == "vendor/nvidia-viking" && expand {
                eprintln!(
                    "{tree}: {full_requests} requests a full poll, {light_requests} a light one"
                );
                // 4 in flight at 3 s per request: under 55 s means under ~70 requests.
                assert!(light_requests <= 60, "{light_requests}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 2 * 35, "{checked} trees");
}

/// Edits one JSON document of a tree copy.
fn edit(root: &Path, doc: &str, change: impl FnOnce(&mut serde_json::Value)) {
    let path = root.join(doc).join("index.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    change(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn copy_tree(tree: &str, name: &str) -> PathBuf {
    let dest = std::env::temp_dir().join(format!("sovereign-light-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dest);
    let ok = std::process::Command::new("cp")
        .arg("-r")
        .arg(mockups().join(tree))
        .arg(&dest)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    dest
}

#[tokio::test]
async fn a_light_poll_sees_new_readings_health_and_intrusion() {
    if !sovereign_agent::mockbmc::have_mockups(
        "a_light_poll_sees_new_readings_health_and_intrusion",
    ) {
        return;
    }
    // A rack server: power, a temperature and an intrusion change between two polls.
    let dir = copy_tree("dmtf/public-rackmount1", "rack");
    let m = MockBmc::new(&dir);
    let requests = m.requests.clone();
    let (_bmc, client, hint) = start(m).await;
    let base = full(&client, &hint, &requests).await;
    let before = summary(&base);
    assert_eq!(
        (before.consumed_watts, before.intrusion.as_str()),
        (Some(344.0), "")
    );
    let root = mockbmc::service_root(&dir);
    edit(&root, "Chassis/1U/Power", |v| {
        v["PowerControl"][0]["PowerConsumedWatts"] = 512.into();
    });
    edit(&root, "Chassis/1U", |v| {
        v["PhysicalSecurity"] = serde_json::json!({"IntrusionSensor": "HardwareIntrusion"});
    });
    let light = redfish::refresh(&*client, &base, hint.expands())
        .await
        .unwrap();
    let after = summary(&light);
    assert_eq!(after.consumed_watts, Some(512.0));
    assert_eq!(after.intrusion, "HardwareIntrusion");
    assert_eq!(
        after.health,
        sovereign_telemetry_api::proto::Health::Critical as i32
    );
    let _ = std::fs::remove_dir_all(&dir);

    // The DGX H100, chassis statuses in one expanded request: a GPU's power and an ERoT's health.
    let dir = copy_tree("vendor/nvidia-viking", "dgx");
    let mut m = MockBmc::new(&dir);
    m.expand = true;
    let requests = m.requests.clone();
    let (_bmc, client, hint) = start(m).await;
    let base = full(&client, &hint, &requests).await;
    let gpu1 = |s: &BmcSummary| {
        s.gpus
            .iter()
            .find(|g| g.id.ends_with("SXM_1"))
            .and_then(|g| g.power_watts)
    };
    assert_eq!(gpu1(&summary(&base)), Some(71.706));
    let root = mockbmc::service_root(&dir);
    edit(&root, "Chassis/HGX_GPU_SXM_1/EnvironmentMetrics", |v| {
        v["PowerWatts"]["Reading"] = 655.5.into();
    });
    edit(&root, "Chassis/HGX_ERoT_GPU_SXM_3", |v| {
        v["Status"]["Health"] = "Critical".into();
        v["Status"]["Conditions"] = serde_json::json!([{
            "Message": "ERoT firmware strap mismatch", "MessageId": "X.1", "Severity": "Critical"
        }]);
    });
    let light = redfish::refresh(&*client, &base, hint.expands())
        .await
        .unwrap();
    let after = summary(&light);
    assert_eq!(gpu1(&after), Some(655.5));
    assert_eq!(
        after.health,
        sovereign_telemetry_api::proto::Health::Critical as i32
    );
    assert!(
        after.health_reason.contains("strap mismatch"),
        "{}",
        after.health_reason
    );
    // A chassis that is gone makes the next poll a full one.
    std::fs::remove_dir_all(root.join("Chassis/HGX_PCIeRetimer_7")).unwrap();
    edit(&root, "Chassis", |v| {
        let m = v["Members"].as_array_mut().unwrap();
        m.retain(|x| {
            !x["@odata.id"]
                .as_str()
                .unwrap()
                .ends_with("HGX_PCIeRetimer_7")
        });
        v["Members@odata.count"] = m.len().into();
    });
    let light = redfish::refresh(&*client, &base, hint.expands())
        .await
        .unwrap();
    assert!(light.stale_plan);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gpu_server_is_polled_light_with_full_polls_in_the_background() {
    use sovereign_agent::poller::{Fleet, PollConfig};
    use std::time::Instant;
    if !sovereign_agent::mockbmc::have_mockups(
        "a_slow_gpu_server_is_polled_light_with_full_polls_in_the_background",
    ) {
        return;
    }
    // The DGX at 40 ms per request: its whole tree (262 requests) outlives a 1.5 s deadline,
    // its light poll (44 requests, 4 at a time) does not.
    let mut dgx = MockBmc::new(mockups().join("vendor/nvidia-viking"));
    dgx.expand = true;
    dgx.latency = Duration::from_millis(40);
    let paths = dgx.paths.clone();
    let dgx = mockbmc::start(dgx).await.unwrap();
    let rack = mockbmc::start(MockBmc::new(mockups().join("dmtf/public-rackmount1")))
        .await
        .unwrap();
    let ep = endpoint;
    let config = PollConfig {
        deadline: Duration::from_millis(1500),
        full_every: 3,
        ..PollConfig::default()
    };
    let mut fleet = Fleet::new(
        vec![
            ("dgx".into(), ep(dgx.url())),
            ("rack".into(), ep(rack.url())),
        ],
        config,
    );
    let first = fleet.poll_cycle(Instant::now()).await;
    assert_eq!(first.pending, ["dgx"], "{first:?}");
    let rack_first = &first.outcomes[0];
    assert_eq!(rack_first.name, "rack");
    assert!(!rack_first.result.as_ref().unwrap().light);

    // Cycles go on while the DGX's first full poll runs in the background; then it is read light.
    let mut light_polls = 0;
    let mut full_reads_of_logs = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = fleet.poll_cycle(Instant::now()).await;
        let rack = r.outcomes.iter().find(|o| o.name == "rack").unwrap();
        assert!(
            !rack.result.as_ref().unwrap().light,
            "a fast BMC stays on full polls"
        );
        if let Some(o) = r.outcomes.iter().find(|o| o.name == "dgx") {
            let sample = o.result.as_ref().unwrap();
            assert!(sample.light);
            assert!(o.elapsed < Duration::from_millis(1500), "{:?}", o.elapsed);
            assert!(
                summary(sample).consumed_watts.is_some(),
                "readings in every light poll"
            );
            light_polls += 1;
        }
        full_reads_of_logs = paths
            .lock()
            .unwrap()
            .get("/redfish/v1/Managers/BMC/LogServices")
            .copied()
            .unwrap_or(0);
        if light_polls >= 6 && full_reads_of_logs >= 2 {
            break;
        }
    }
    assert!(light_polls >= 6, "{light_polls} light polls");
    // Logs and inventory are read again by the periodic full poll in the background.
    assert!(full_reads_of_logs >= 2, "{full_reads_of_logs}");
    fleet.logout().await;
}
