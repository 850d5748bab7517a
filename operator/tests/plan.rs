//! `plan` on the foundation's samples and on inventories with existing placements.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use std::path::PathBuf;

use sovereign_operator::plan::{Options, apply_allocation_ratio, load, plan, render_table};
use sovereign_placement::from_crds::{HealthPolicy, PowerModel};
use sovereign_placement::{CapacityPolicy, Strategy};

fn samples() -> PathBuf {
    sovereign_crds::crd_dir().join("samples/valid")
}

fn options(assume_healthy: bool, strategy: Strategy) -> Options {
    Options {
        strategy,
        health: HealthPolicy {
            now_unix: 1_800_000_000,
            stale_after_seconds: 300,
            assume_healthy_without_telemetry: assume_healthy,
        },
        capacity: CapacityPolicy::default(),
        power: PowerModel::default(),
    }
}

#[test]
fn every_sample_request_is_placed_within_policy() {
    let objects = load(&[samples()]).unwrap();
    assert_eq!(
        (
            objects.sites.len(),
            objects.racks.len(),
            objects.servers.len()
        ),
        (2, 4, 12)
    );
    for strategy in [Strategy::Spread, Strategy::Pack] {
        let report = plan(&objects, &options(true, strategy)).unwrap();
        let refused: Vec<_> = report
            .placements
            .iter()
            .filter(|r| r.outcome == "refused")
            .collect();
        assert!(refused.is_empty(), "{strategy:?}: {refused:#?}");
        // 3 + 2 + 1 volume replicas, 3 + 1 + 2 instance replicas.
        assert_eq!(report.placements.len(), 12);
        for r in &report.placements {
            // gdt is Secret and pinned to hn1; nothing lands on the server in maintenance.
            if r.tenant == "gdt" {
                assert_eq!(r.site.as_deref(), Some("hn1"), "{r:?}");
            }
            assert_ne!(
                r.server.as_deref(),
                Some("hcm1-r01-s03"),
                "placed on a server in maintenance"
            );
        }
        let racks: std::collections::BTreeSet<_> = report
            .placements
            .iter()
            .filter(|r| r.workload.ends_with("/patient-records"))
            .map(|r| r.rack.clone())
            .collect();
        assert_eq!(racks.len(), 3, "patient-records asks for spread Rack");
        let table = render_table(&report);
        assert!(
            table.contains("hn1-r01") && table.contains("POWER W"),
            "{table}"
        );
    }
}

#[test]
fn without_telemetry_nothing_is_schedulable_and_the_refusal_says_why() {
    let objects = load(&[samples()]).unwrap();
    let report = plan(&objects, &options(false, Strategy::Spread)).unwrap();
    let first = report
        .placements
        .iter()
        .find(|r| r.workload == "StorageVolume/moh-records/patient-records")
        .unwrap();
    assert_eq!(first.outcome, "refused");
    assert_eq!(
        first.reason.as_deref(),
        Some(
            "0/12 servers fit replica 1 of 3: 12 unhealthy (11 telemetry stale, 1 in maintenance)"
        )
    );
}

#[test]
fn existing_replicas_are_recorded_not_moved() {
    let dir = std::env::temp_dir().join(format!("sovereign-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "10-sites.yaml",
        "20-racks.yaml",
        "40-servers.yaml",
        "50-tenants.yaml",
    ] {
        std::fs::copy(samples().join(f), dir.join(f)).unwrap();
    }
    // A volume already placed (status written by the operator) that fills most of hn1-r01-s01.
    std::fs::write(
        dir.join("60-placed.yaml"),
        r"
apiVersion: sovereign.io/v1alpha1
kind: StorageVolume
metadata: {name: archive, namespace: vnshop}
spec: {size: 29Ti, tier: nvme, replicas: 1}
status:
  phase: Bound
  replicas:
  - {index: 0, server: hn1-r01-s01, rack: hn1-r01, site: hn1, state: Ready}
---
apiVersion: sovereign.io/v1alpha1
kind: StorageVolume
metadata: {name: next, namespace: vnshop}
spec: {size: 2Ti, tier: nvme, replicas: 1}
",
    )
    .unwrap();
    let objects = load(std::slice::from_ref(&dir)).unwrap();
    let report = plan(&objects, &options(true, Strategy::Pack)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let archive = report
        .placements
        .iter()
        .find(|r| r.workload.ends_with("/archive"))
        .unwrap();
    assert_eq!(
        (archive.outcome.as_str(), archive.server.as_deref()),
        ("existing", Some("hn1-r01-s01"))
    );
    let next = report
        .placements
        .iter()
        .find(|r| r.workload.ends_with("/next"))
        .unwrap();
    assert_eq!(next.outcome, "placed", "{next:?}");
    // Pack prefers the fullest server, but 2Ti no longer fits on hn1-r01-s01 (30Ti, 29Ti used).
    assert_ne!(next.server.as_deref(), Some("hn1-r01-s01"));
}

#[test]
fn unreadable_input_is_a_clear_error() {
    let err = load(&[PathBuf::from("/nonexistent/inventory.yaml")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("reading /nonexistent/inventory.yaml"),
        "{err}"
    );
}

#[test]
fn allocation_ratios_scale_capacity() {
    let objects = load(&[samples()]).unwrap();
    let base = plan(&objects, &options(true, Strategy::Pack)).unwrap();
    let mut opts = options(true, Strategy::Pack);
    apply_allocation_ratio(&mut opts.capacity, "cpu=2").unwrap();
    let doubled = plan(&objects, &opts).unwrap();
    let site = |r: &sovereign_operator::plan::Report| {
        r.capacity
            .iter()
            .find(|c| c.site == "hn1" && c.rack.is_none())
            .unwrap()
            .cpu
            .clone()
    };
    // hn1: 3 x (64 - 2) + 3 x (96 - 2) = 468 cores schedulable; doubled = 936.
    assert!(site(&base).ends_with("/468"), "{}", site(&base));
    assert!(site(&doubled).ends_with("/936"), "{}", site(&doubled));
    assert!(
        apply_allocation_ratio(&mut opts.capacity, "disk=2")
            .unwrap_err()
            .contains("classes are")
    );
    assert!(
        apply_allocation_ratio(&mut opts.capacity, "cpu")
            .unwrap_err()
            .contains("CLASS=RATIO")
    );
}
