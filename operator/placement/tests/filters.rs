//! Every filter's refusal, in the words a person reads, plus strategy order and re-placement.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use sovereign_crds::{Classification, Spread};
use sovereign_placement::model::{RackInput, ServerInput};
use sovereign_placement::{
    Class, Inventory, Placer, Request, Resources, Site, Strategy, TenantPolicy, Unhealthy,
};

const GI: u64 = 1 << 30;

fn cap() -> Resources {
    Resources::ZERO
        .with(Class::Cpu, 32_000)
        .with(Class::Memory, 256 * GI)
        .with(Class::Nvme, 4096 * GI)
}

fn site(name: &str, j: &str, tier: u8) -> Site {
    Site {
        name: name.into(),
        jurisdiction: j.into(),
        security_tier: tier,
    }
}

fn rack(name: &str, site: &str) -> RackInput {
    RackInput {
        name: name.into(),
        site: site.into(),
        power_budget_watts: 10_000,
        measured_watts: 2_000,
    }
}

fn server(name: &str, rack: &str) -> ServerInput {
    ServerInput {
        name: name.into(),
        rack: rack.into(),
        node: None,
        capacity: cap(),
        unhealthy: None,
        encryption_capable: true,
    }
}

/// Two VN sites (tier 4 and 3) with two racks of two servers each, one TH site.
fn fleet() -> Vec<ServerInput> {
    let mut servers = Vec::new();
    for r in ["hn-r1", "hn-r2", "hcm-r1", "hcm-r2", "bkk-r1"] {
        for s in 1..=2 {
            servers.push(server(&format!("{r}-s{s}"), r));
        }
    }
    servers
}

fn placer_with(servers: Vec<ServerInput>, strategy: Strategy) -> Placer {
    let inv = Inventory::build(
        vec![
            site("hn", "VN", 4),
            site("hcm", "VN", 3),
            site("bkk", "TH", 4),
        ],
        vec![
            rack("hn-r1", "hn"),
            rack("hn-r2", "hn"),
            rack("hcm-r1", "hcm"),
            rack("hcm-r2", "hcm"),
            rack("bkk-r1", "bkk"),
        ],
        servers,
    )
    .unwrap();
    Placer::new(inv, strategy)
}

fn tenant(j: &[&str], class: Classification) -> TenantPolicy {
    TenantPolicy {
        name: "moh".into(),
        jurisdictions: j.iter().map(|s| (*s).to_owned()).collect(),
        sites: None,
        classification: class,
        quota: None,
    }
}

fn volume(name: &str, t: TenantPolicy, gib: u64, replicas: u8, spread: Spread) -> Request {
    Request {
        consumer: format!("StorageVolume/moh/{name}"),
        tenant: t,
        per_replica: Resources::ZERO.with(Class::Nvme, gib * GI),
        replicas,
        spread,
        encrypted: true,
        watts_per_replica: 10,
    }
}

fn refusal(p: &mut Placer, req: &Request) -> String {
    p.place(req).expect_err("expected a refusal").to_string()
}

#[test]
fn residency_refuses_other_jurisdictions() {
    let mut p = placer_with(fleet(), Strategy::Spread);
    let req = volume(
        "v",
        tenant(&["SG"], Classification::Public),
        10,
        1,
        Spread::Server,
    );
    assert_eq!(
        refusal(&mut p, &req),
        "0/10 servers fit: 10 outside jurisdiction SG"
    );
    // A VN tenant is never placed in TH even when VN is full.
    let req = volume(
        "big",
        tenant(&["VN"], Classification::Public),
        4097,
        1,
        Spread::Server,
    );
    assert_eq!(
        refusal(&mut p, &req),
        "0/10 servers fit: 8 insufficient nvme storage, 2 outside jurisdiction VN"
    );
}

#[test]
fn site_allow_list() {
    let mut p = placer_with(fleet(), Strategy::Spread);
    let mut t = tenant(&["VN", "TH"], Classification::Public);
    t.sites = Some(vec!["bkk".into()]);
    let req = volume("v", t, 10, 2, Spread::Rack);
    assert_eq!(
        refusal(&mut p, &req),
        "0/10 servers fit replica 2 of 2: 8 at a site the tenant does not allow, 1 already holding a replica, \
         1 in a rack already holding a replica"
    );
}

#[test]
fn classification_needs_site_tier() {
    let mut p = placer_with(fleet(), Strategy::Spread);
    let req = volume(
        "v",
        tenant(&["VN"], Classification::Secret),
        10,
        3,
        Spread::Rack,
    );
    assert_eq!(
        refusal(&mut p, &req),
        "0/10 servers fit replica 3 of 3: 4 at a site below security tier 4, 2 outside jurisdiction VN, \
         2 already holding a replica, 2 in a rack already holding a replica"
    );
}

#[test]
fn unhealthy_servers_are_counted_by_reason() {
    let mut servers = fleet();
    servers[0].unhealthy = Some(Unhealthy::Maintenance);
    servers[1].unhealthy = Some(Unhealthy::IntrusionDetected);
    servers[2].unhealthy = Some(Unhealthy::Maintenance);
    servers[3].unhealthy = Some(Unhealthy::TelemetryStale);
    servers[4].unhealthy = Some(Unhealthy::BmcUnreachable);
    servers[5].unhealthy = Some(Unhealthy::HealthCritical);
    servers[6].unhealthy = Some(Unhealthy::NotReady);
    servers[7].unhealthy = Some(Unhealthy::NotReady);
    let mut p = placer_with(servers, Strategy::Spread);
    let req = volume(
        "v",
        tenant(&["VN"], Classification::Public),
        10,
        1,
        Spread::Server,
    );
    // Servers sort by name: bkk (2), hcm-r1 (2), hcm-r2 (2), hn-r1 (2), hn-r2 (2).
    assert_eq!(
        refusal(&mut p, &req),
        "0/10 servers fit: 8 unhealthy (2 in maintenance, 2 not ready, 1 chassis intrusion, 1 BMC unreachable, \
         1 telemetry stale, 1 health critical), 2 outside jurisdiction VN"
    );
}

#[test]
fn spread_rack_and_site_domains() {
    let mut p = placer_with(fleet(), Strategy::Spread);
    let d = p
        .place(&volume(
            "r",
            tenant(&["VN"], Classification::Public),
            10,
            4,
            Spread::Rack,
        ))
        .unwrap();
    let racks: std::collections::BTreeSet<_> =
        d.placements.iter().map(|x| x.rack.clone()).collect();
    assert_eq!(racks.len(), 4, "four replicas in four racks: {d:?}");
    assert_eq!(
        refusal(
            &mut p,
            &volume(
                "r5",
                tenant(&["VN"], Classification::Public),
                10,
                5,
                Spread::Rack
            )
        ),
        "0/10 servers fit replica 5 of 5: 4 already holding a replica, 4 in a rack already holding a replica, \
         2 outside jurisdiction VN"
    );
    assert_eq!(
        refusal(
            &mut p,
            &volume(
                "s3",
                tenant(&["VN"], Classification::Public),
                10,
                3,
                Spread::Site
            )
        ),
        "0/10 servers fit replica 3 of 3: 6 at a site already holding a replica, 2 outside jurisdiction VN, \
         2 already holding a replica"
    );
}

#[test]
fn encryption_needs_self_encrypting_drives() {
    let mut servers = fleet();
    for s in &mut servers {
        s.encryption_capable = s.name.starts_with("hn-r1");
    }
    let mut p = placer_with(servers, Strategy::Spread);
    let req = volume(
        "v",
        tenant(&["VN"], Classification::Public),
        10,
        3,
        Spread::Server,
    );
    assert_eq!(
        refusal(&mut p, &req),
        "0/10 servers fit replica 3 of 3: 6 without self-encrypting drives, 2 outside jurisdiction VN, \
         2 already holding a replica"
    );
    let mut plain = req.clone();
    plain.encrypted = false;
    assert!(
        p.place(&plain).is_ok(),
        "unencrypted volumes may use any drive"
    );
}

#[test]
fn insufficient_capacity_names_the_class() {
    let mut p = placer_with(fleet(), Strategy::Spread);
    let mut req = volume(
        "cpu",
        tenant(&["VN"], Classification::Public),
        0,
        1,
        Spread::Server,
    );
    req.per_replica = Resources::ZERO.with(Class::Cpu, 33_000);
    assert_eq!(
        refusal(&mut p, &req),
        "0/10 servers fit: 8 insufficient cpu, 2 outside jurisdiction VN"
    );
    req.per_replica = Resources::ZERO.with(Class::Gpu, 1);
    assert_eq!(
        refusal(&mut p, &req),
        "0/10 servers fit: 8 insufficient gpus, 2 outside jurisdiction VN"
    );
}

#[test]
fn rack_power_headroom() {
    let mut p = placer_with(fleet(), Strategy::Spread);
    // Budget 10 kW, measured 2 kW: two replicas of 4.5 kW cannot share a rack, a third cannot fit.
    let mut req = volume(
        "hot",
        tenant(&["VN"], Classification::Public),
        1,
        1,
        Spread::Server,
    );
    req.watts_per_replica = 4_500;
    for i in 0..4 {
        let mut r = req.clone();
        r.consumer = format!("hot-{i}");
        p.place(&r).unwrap();
    }
    for rack in 0..p.inventory().racks.len() {
        assert!(
            p.rack_watts(rack) <= 10_000,
            "rack {rack} over budget: {}",
            p.rack_watts(rack)
        );
    }
    req.consumer = "hot-4".into();
    req.watts_per_replica = 8_500;
    assert_eq!(
        refusal(&mut p, &req),
        "0/10 servers fit: 8 rack power budget exceeded, 2 outside jurisdiction VN"
    );
}

#[test]
fn tenant_quota() {
    let mut p = placer_with(fleet(), Strategy::Spread);
    let mut t = tenant(&["VN"], Classification::Public);
    t.quota = Some(Resources([u64::MAX; 6]).with(Class::Nvme, 100 * GI));
    p.place(&volume("a", t.clone(), 60, 1, Spread::Server))
        .unwrap();
    assert_eq!(
        refusal(&mut p, &volume("b", t.clone(), 30, 2, Spread::Server)),
        "tenant moh quota exceeded for nvme storage: requested 60Gi, in use 60Gi, quota 100Gi"
    );
    p.release("StorageVolume/moh/a").unwrap();
    assert!(
        p.place(&volume("b", t, 30, 2, Spread::Server)).is_ok(),
        "released quota is usable again"
    );
}

#[test]
fn strategies_order_candidates() {
    let mut spread = placer_with(fleet(), Strategy::Spread);
    let mut pack = placer_with(fleet(), Strategy::Pack);
    let t = tenant(&["VN"], Classification::Public);
    for p in [&mut spread, &mut pack] {
        p.place(&volume("seed", t.clone(), 2048, 1, Spread::Server))
            .unwrap();
    }
    let first = |p: &mut Placer| {
        p.place(&volume("next", t.clone(), 10, 1, Spread::Server))
            .unwrap()
            .placements[0]
            .server
            .clone()
    };
    let seeded = |p: &Placer| p.allocation("StorageVolume/moh/seed").unwrap().slots[0].server;
    let pack_seed = pack.inventory().servers[seeded(&pack)].name.clone();
    assert_eq!(
        first(&mut pack),
        pack_seed,
        "pack fills the used server first"
    );
    let spread_seed = spread.inventory().servers[seeded(&spread)].name.clone();
    assert_ne!(
        first(&mut spread),
        spread_seed,
        "spread avoids the used server"
    );
}

#[test]
fn replacing_a_replica_keeps_the_other_domains() {
    let mut p = placer_with(fleet(), Strategy::Spread);
    let req = volume(
        "r",
        tenant(&["VN"], Classification::Public),
        100,
        3,
        Spread::Rack,
    );
    let d = p.place(&req).unwrap();
    let failed = p
        .inventory()
        .server_by_name(&d.placements[1].server)
        .unwrap();
    p.set_health(failed, Some(Unhealthy::IntrusionDetected));
    let moved = p.replace(&req, 1).unwrap();
    assert_ne!(moved.server, d.placements[1].server);
    let keep: Vec<&str> = [&d.placements[0], &d.placements[2]]
        .iter()
        .map(|x| x.rack.as_str())
        .collect();
    assert!(
        !keep.contains(&moved.rack.as_str()),
        "new replica shares a rack: {moved:?} vs {keep:?}"
    );
    let alloc = p.allocation(&req.consumer).unwrap();
    assert_eq!(alloc.slots.len(), 3);
    assert_eq!(
        p.used(failed),
        Resources::ZERO,
        "the failed server's share was released"
    );
}

#[test]
fn a_refused_request_changes_nothing() {
    let mut p = placer_with(fleet(), Strategy::Spread);
    let before: Vec<Resources> = (0..10).map(|i| p.used(i)).collect();
    let req = volume(
        "r5",
        tenant(&["VN"], Classification::Public),
        10,
        5,
        Spread::Rack,
    );
    assert!(p.place(&req).is_err());
    let after: Vec<Resources> = (0..10).map(|i| p.used(i)).collect();
    assert_eq!(before, after);
    assert!(p.allocation(&req.consumer).is_none());
}

#[test]
fn a_replica_may_move_within_the_rack_it_leaves() {
    // Four replicas spread over the four VN racks: the failed replica's rack is the only one
    // left, and its other server is a compliant home (the failed server is excluded, its rack
    // is not).
    let mut p = placer_with(fleet(), Strategy::Spread);
    let req = volume(
        "r4",
        tenant(&["VN"], Classification::Public),
        100,
        4,
        Spread::Rack,
    );
    let d = p.place(&req).unwrap();
    let failed = p
        .inventory()
        .server_by_name(&d.placements[0].server)
        .unwrap();
    p.set_health(failed, Some(Unhealthy::IntrusionDetected));
    let moved = p.replace(&req, 0).unwrap();
    assert_eq!(moved.rack, d.placements[0].rack);
    assert_ne!(moved.server, d.placements[0].server);
}
