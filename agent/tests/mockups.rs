//! The collector against every mockup tree in ../shared/redfish-mockups, served over HTTP by the
//! mock BMC, read with nv-redfish's real HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sovereign_agent::mockbmc::{self, MockBmc, endpoint, mockups};
use sovereign_agent::redfish::{self, BmcSample, Endpoint, Health};

/// Every tree with a service root: dmtf/*, vendor/*, variants/*.
pub fn trees() -> Vec<PathBuf> {
    mockbmc::trees().iter().map(|t| mockups().join(t)).collect()
}

async fn read(tree: &Path) -> Result<BmcSample, redfish::RedfishError> {
    read_from(MockBmc::new(tree)).await
}

/// Collects once from `m`, served on loopback.
async fn read_from(m: MockBmc) -> Result<BmcSample, redfish::RedfishError> {
    let bmc = mockbmc::start(m).await.unwrap();
    let ep = endpoint(bmc.url());
    let hint = sovereign_agent::transport::RetryHint::default();
    let client = redfish::connect_hinted(&ep, &hint).unwrap();
    redfish::collect(Arc::new(client)).await.map(|mut s| {
        s.warnings = hint.take_dropped();
        s
    })
}

#[tokio::test]
async fn every_mockup_tree_is_read() {
    if !sovereign_agent::mockbmc::have_mockups("every_mockup_tree_is_read") {
        return;
    }
    let trees = trees();
    assert!(
        trees.len() >= 30,
        "expected the shared mockups, found {}",
        trees.len()
    );
    let mut section_errors = Vec::new();
    let mut warnings = Vec::new();
    for tree in &trees {
        let name = tree.strip_prefix(mockups()).unwrap().display().to_string();
        let s = read(tree).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        warnings.extend(s.warnings.iter().map(|w| format!("{name}: {w}")));
        for e in &s.errors {
            assert!(
                !e.reason.is_empty() && e.reason.len() <= 260,
                "{name}: {e:?}"
            );
            section_errors.push(format!("{name}: {}: {}", e.section, e.reason));
        }
    }
    // With the repairs in `redfish::REPAIRS` and the transport's loosening, no section fails;
    // what had to be dropped or filled in is a warning with its URI. The DMTF power-shelf
    // mockup's PowerSubsystem link points at its Sensors collection (which has no Id).
    assert!(section_errors.is_empty(), "{section_errors:#?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("dmtf/public-power-shelf: ")
                && w.contains("/redfish/v1/Chassis/PowerShelf/Sensors: Id missing, filled in")),
        "{warnings:#?}"
    );
}

async fn tree(name: &str) -> BmcSample {
    read(&mockups().join(name)).await.unwrap()
}

#[tokio::test]
async fn rackmount_inventory_power_and_thermal() {
    if !sovereign_agent::mockbmc::have_mockups("rackmount_inventory_power_and_thermal") {
        return;
    }
    let s = tree("dmtf/public-rackmount1").await;
    let sys = &s.systems[0];
    assert_eq!(sys.manufacturer.as_deref(), Some("Contoso"));
    assert_eq!(sys.serial_number.as_deref(), Some("437XR1138R2"));
    assert_eq!(sys.power_state.as_deref(), Some("On"));
    assert_eq!(
        (sys.processor_count, sys.logical_processors, sys.memory_gib),
        (Some(2), Some(16), Some(96.0))
    );
    assert_eq!(sys.health_rollup, Health::Warning);
    let ch = &s.chassis[0];
    assert_eq!(ch.consumed_watts, Some(344.0));
    assert_eq!(ch.inlet_celsius, Some(25.0));
    assert_eq!(ch.cpu_max_celsius, Some(41.0));
    assert_eq!(ch.fans.len(), 2);
    assert_eq!(ch.power_supplies[0].health, Health::Warning);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}

#[tokio::test]
async fn vendor_captures() {
    if !sovereign_agent::mockbmc::have_mockups("vendor_captures") {
        return;
    }
    let dell = tree("vendor/dell").await;
    assert_eq!(dell.vendor.as_deref(), Some("Dell"));
    assert_eq!(dell.systems[0].model.as_deref(), Some("PowerEdge R750"));
    assert_eq!(dell.chassis[0].intrusion.as_deref(), Some("Normal"));
    assert_eq!(dell.chassis[0].consumed_watts, Some(614.0));
    assert_eq!(dell.drives.len(), 3);
    assert!(
        dell.drives
            .iter()
            .all(|d| d.capacity_bytes == Some(1_920_383_410_176))
    );
    assert_eq!(dell.overall_health(), Health::Ok);

    let hpe = tree("vendor/hpe").await;
    assert_eq!(hpe.vendor.as_deref(), Some("HPE"));
    assert_eq!(hpe.chassis[0].consumed_watts, Some(531.0));
    assert_eq!(hpe.chassis[0].temperatures.len(), 53);
    let bad: Vec<_> = hpe.drives.iter().filter(|d| d.failure_predicted).collect();
    assert_eq!(bad.len(), 1, "one HPE drive predicts failure");
    assert_eq!(bad[0].health, Health::Critical);
    assert_eq!(hpe.overall_health(), Health::Critical);

    let lenovo = tree("vendor/lenovo").await;
    assert_eq!(lenovo.systems[0].memory_gib, Some(1024.0));
    // PowerControl[0], the whole server; the CPU (99 W) and memory (14 W) sub-systems beside it
    // are parts of it, not added.
    assert_eq!(lenovo.chassis[0].consumed_watts, Some(708.0));
    assert_eq!(lenovo.chassis[0].inlet_celsius, Some(19.0));

    let smc = tree("vendor/supermicro").await;
    assert_eq!(smc.vendor, None, "Supermicro's service root has no Vendor");
    assert_eq!(smc.drives.len(), 8);
    assert_eq!(smc.chassis[0].power_supplies.len(), 8);
}

#[tokio::test]
async fn intrusion_makes_a_server_critical() {
    if !sovereign_agent::mockbmc::have_mockups("intrusion_makes_a_server_critical") {
        return;
    }
    for t in ["variants/rackmount1-intrusion", "variants/dell-intrusion"] {
        let s = tree(t).await;
        assert!(
            s.chassis
                .iter()
                .any(|c| c.intrusion.as_deref() == Some("HardwareIntrusion")),
            "{t}"
        );
        assert_eq!(s.overall_health(), Health::Critical, "{t}");
    }
}

#[tokio::test]
async fn worn_drive_is_reported() {
    if !sovereign_agent::mockbmc::have_mockups("worn_drive_is_reported") {
        return;
    }
    let s = tree("variants/localstorage-wearout").await;
    let worn: Vec<_> = s
        .drives
        .iter()
        .filter(|d| d.life_left_percent == Some(3.0))
        .collect();
    assert_eq!(worn.len(), 1);
    assert!(worn[0].failure_predicted);
    assert_eq!(worn[0].health, Health::Warning);
    assert!(
        worn[0].encryption_capable,
        "SED drives report EncryptionAbility"
    );
    assert_eq!(s.overall_health(), Health::Warning);
}

fn documents(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        let p = e.path();
        if p.is_dir() {
            documents(&p, out);
        } else if p.file_name().is_some_and(|n| n == "index.json") {
            out.push(p);
        }
    }
}

// Documents the collector never reads, whose drift nv-redfish's types refuse: Dell's OEM
// PowerMetrics (typed EnvironmentMetrics, RelatedItem is a JSON array inside a string) and
// a composition capabilities object without @odata.id.
const KNOWN: &[&str] = &[
    "dmtf/public-constrained-composition/Systems/ConstrainedCompositionCapabilities/index.json",
    "variants/dell-intrusion/redfish/v1/Systems/System.Embedded.1/Processors/Video.Slot.2-1/Oem/Dell/PowerMetrics/index.json",
    "vendor/dell/redfish/v1/Systems/System.Embedded.1/Processors/Video.Slot.2-1/Oem/Dell/PowerMetrics/index.json",
];

#[test]
fn every_document_of_a_kind_we_read_decodes() {
    use sovereign_agent::redfish::{DocumentKind, parse_document};
    if !sovereign_agent::mockbmc::have_mockups("every_document_of_a_kind_we_read_decodes") {
        return;
    }
    let mut files = Vec::new();
    documents(&mockups(), &mut files);
    let mut decoded = 0;
    let mut failures = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        // "#Chassis.v1_22_0.Chassis" -> "Chassis"
        let Some(ty) = v["@odata.type"].as_str().and_then(|t| t.rsplit('.').next()) else {
            continue;
        };
        let Some(kind) = DocumentKind::ALL
            .into_iter()
            .find(|k| format!("{k:?}") == ty)
        else {
            continue;
        };
        decoded += 1;
        if let Err(e) = parse_document(kind, &bytes) {
            failures.push(format!(
                "{}: {e}",
                f.strip_prefix(mockups()).unwrap().display()
            ));
        }
    }
    assert!(decoded > 500, "only {decoded} documents of our kinds found");
    let unexpected: Vec<&String> = failures
        .iter()
        .filter(|f| !KNOWN.iter().any(|k| f.starts_with(k)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} of {decoded} failed:\n{unexpected:#?}",
        unexpected.len()
    );
    assert_eq!(
        failures.len(),
        KNOWN.len(),
        "a known failure now decodes: update KNOWN"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().filter_map(Result::ok) {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn subsystem_only_platforms_use_sensors_and_power_subsystem() {
    if !sovereign_agent::mockbmc::have_mockups(
        "subsystem_only_platforms_use_sensors_and_power_subsystem",
    ) {
        return;
    }
    // The DMTF rack-mount server without its legacy Thermal and Power links.
    let dir = std::env::temp_dir().join(format!("sovereign-subsystem-only-{}", std::process::id()));
    copy_tree(&mockups().join("dmtf/public-rackmount1"), &dir);
    let chassis = dir.join("Chassis/1U/index.json");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&chassis).unwrap()).unwrap();
    let o = doc.as_object_mut().unwrap();
    assert!(o.remove("Thermal").is_some() && o.remove("Power").is_some());
    std::fs::write(&chassis, serde_json::to_vec(&doc).unwrap()).unwrap();

    let s = read(&dir).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let ch = &s.chassis[0];
    assert!(
        ch.temperatures.len() >= 3,
        "temperatures from Sensors: {:?}",
        ch.temperatures
    );
    assert!(
        ch.inlet_celsius.is_some(),
        "inlet from an Intake sensor: {:?}",
        ch.temperatures
    );
    assert!(!ch.power_supplies.is_empty(), "PSUs from PowerSubsystem");
    assert!(ch.consumed_watts.is_some(), "watts from EnvironmentMetrics");
}

#[tokio::test]
async fn event_logs_are_read() {
    if !sovereign_agent::mockbmc::have_mockups("event_logs_are_read") {
        return;
    }
    let dell = tree("vendor/dell").await;
    let sel: Vec<_> = dell
        .events
        .iter()
        .filter(|e| e.log == "Managers/iDRAC.Embedded.1/Sel")
        .collect();
    assert!(!sel.is_empty(), "Dell SEL entries");
    assert!(
        sel.iter()
            .all(|e| e.created.is_some() && e.severity.is_some()),
        "{sel:?}"
    );
    let rack = tree("dmtf/public-rackmount1").await;
    let log1: Vec<_> = rack
        .events
        .iter()
        .filter(|e| e.log == "Systems/437XR1138R2/Log1")
        .collect();
    assert_eq!(log1.len(), 2);
    assert_eq!(
        log1[0].message.as_deref(),
        Some("Temperature threshold exceeded")
    );
    assert_eq!(log1[0].severity.as_deref(), Some("Critical"));
}

/// Dell's SEL (5 entries, newest first) served 2 a page, inline or as links only: every entry
/// is read from every page, oldest first.
#[tokio::test]
async fn paged_event_logs_are_read_across_pages() {
    if !sovereign_agent::mockbmc::have_mockups("paged_event_logs_are_read_across_pages") {
        return;
    }
    let dell = mockups().join("vendor/dell");
    for links_only in [false, true] {
        let mut m = MockBmc::new(&dell);
        m.page_size = Some(2);
        m.links_only = links_only;
        let sample = read_from(m).await.unwrap();
        let ids: Vec<&str> = sample
            .events
            .iter()
            .filter(|e| e.log == "Managers/iDRAC.Embedded.1/Sel")
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(
            ids,
            ["1020", "1021", "1022", "1023", "1024"],
            "links_only={links_only}"
        );
    }
}

#[tokio::test]
async fn the_poller_reports_only_new_event_log_entries() {
    use sovereign_agent::poller::{Fleet, PollConfig};
    if !sovereign_agent::mockbmc::have_mockups("the_poller_reports_only_new_event_log_entries") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sovereign-sel-{}", std::process::id()));
    copy_tree(&mockups().join("dmtf/public-rackmount1"), &dir);
    let bmc = mockbmc::start(MockBmc::new(&dir)).await.unwrap();
    let ep = Endpoint {
        address: bmc.url(),
        username: "root".into(),
        password: "calvin".into(),
        ca_bundle_pem: None,
        insecure_skip_verify: false,
        timeout: Duration::from_secs(10),
    };
    let mut fleet = Fleet::new(vec![("s1".into(), ep)], PollConfig::default());
    let events = |r: &sovereign_agent::poller::CycleReport| {
        r.outcomes[0].result.as_ref().unwrap().events.clone()
    };

    let first = fleet.poll_cycle(std::time::Instant::now()).await;
    assert!(
        events(&first).is_empty(),
        "the first poll is the baseline, not a replay of history"
    );

    // The BMC logs a new entry.
    let entries = dir.join("Systems/437XR1138R2/LogServices/Log1/Entries");
    let mut collection: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entries.join("index.json")).unwrap()).unwrap();
    let mut entry = collection["Members"][1].clone();
    entry["Id"] = "3".into();
    entry["@odata.id"] = "/redfish/v1/Systems/437XR1138R2/LogServices/Log1/Entries/3".into();
    entry["Created"] = "2026-11-24T01:00:00Z".into();
    entry["Message"] = "Chassis intrusion detected".into();
    collection["Members"]
        .as_array_mut()
        .unwrap()
        .push(entry.clone());
    collection["Members@odata.count"] = 3.into();
    std::fs::create_dir_all(entries.join("3")).unwrap();
    std::fs::write(
        entries.join("3/index.json"),
        serde_json::to_vec(&entry).unwrap(),
    )
    .unwrap();
    std::fs::write(
        entries.join("index.json"),
        serde_json::to_vec(&collection).unwrap(),
    )
    .unwrap();

    let second = fleet.poll_cycle(std::time::Instant::now()).await;
    let new = events(&second);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0].id, "3");
    assert_eq!(
        new[0].message.as_deref(),
        Some("Chassis intrusion detected")
    );
    let third = fleet.poll_cycle(std::time::Instant::now()).await;
    assert!(events(&third).is_empty(), "reported once");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// One malformed or non-standard field costs that field, never its section or siblings, and is
/// reported with its URI: a `UUID` that is not one, members without `Name`, a Storage
/// collection without `Members` (copies of the DMTF local-storage server).
#[tokio::test]
async fn a_bad_field_costs_that_field_only() {
    if !sovereign_agent::mockbmc::have_mockups("a_bad_field_costs_that_field_only") {
        return;
    }
    let tree = std::env::temp_dir().join(format!("sovereign-loose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    copy_tree(&mockups().join("dmtf/public-localstorage"), &tree);
    let healthy = read(&mockups().join("dmtf/public-localstorage"))
        .await
        .unwrap();
    let system = tree.join("Systems/437XR1138R2/index.json");
    edit_json(&system, |v| v["UUID"] = "not-a-uuid".into());
    let chassis = tree.join("Chassis/1U/index.json");
    edit_json(&chassis, |v| {
        v.as_object_mut().unwrap().remove("Name");
    });
    let cpu = tree.join("Systems/437XR1138R2/Processors/CPU1/index.json");
    edit_json(&cpu, |v| {
        v.as_object_mut().unwrap().remove("Name");
    });
    let s = read(&tree).await.unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    // Everything else is still read: the system (its inventory), the chassis (readings), drives.
    assert_eq!(s.systems.len(), 1);
    assert_eq!(s.systems[0].model, healthy.systems[0].model);
    assert_eq!(s.systems[0].memory_gib, healthy.systems[0].memory_gib);
    assert_eq!(s.chassis.len(), healthy.chassis.len());
    // A chassis without Name is a known quirk the repairs fill in from its Id.
    assert_eq!(s.chassis[0].name, "1U");
    assert_eq!(
        s.chassis[0].consumed_watts,
        healthy.chassis[0].consumed_watts
    );
    assert_eq!(s.drives.len(), healthy.drives.len());
    let said = s.warnings.join("\n");
    assert!(
        said.contains("/redfish/v1/Systems/437XR1138R2: UUID dropped"),
        "{said}"
    );
    assert!(
        said.contains("/redfish/v1/Systems/437XR1138R2/Processors/CPU1: Name missing, filled in"),
        "{said}"
    );

    // A Storage collection without Members: no drives from it, the rest as before.
    let storage = tree.join("Systems/437XR1138R2/Storage/index.json");
    edit_json(&storage, |v| {
        v.as_object_mut().unwrap().remove("Members");
    });
    let s = read(&tree).await.unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.chassis.len(), healthy.chassis.len());
    assert_eq!(s.systems[0].model, healthy.systems[0].model);
    std::fs::remove_dir_all(&tree).unwrap();
}
