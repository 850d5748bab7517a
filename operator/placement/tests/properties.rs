//! Invariants of placement, property-tested: 6 properties x 20,000 cases = 120,000 cases.
//!
//! Each case builds a small random fleet (1-3 sites, 1-3 racks each, 1-4 servers each, some
//! unhealthy, two jurisdictions) and runs a random sequence of place / release / re-place
//! / scale operations with requests scaled so servers really fill up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may panic

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use sovereign_crds::Spread;
use sovereign_placement::synthetic::{FleetSpec, Rng, fleet, request, tenants};
use sovereign_placement::{
    Class, Decision, Inventory, Placer, Request, Resources, Strategy, TenantPolicy,
};

const CASES: u32 = 20_000;

#[derive(Clone, Debug)]
struct Scenario {
    spec: FleetSpec,
    seed: u64,
    strategy: Strategy,
    ops: Vec<(u8, u64)>,
}

fn scenario() -> impl proptest::strategy::Strategy<Value = Scenario> {
    (
        1usize..=3,
        1usize..=3,
        1usize..=4,
        0u64..30,
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec((0u8..12, any::<u64>()), 1..16),
    )
        .prop_map(
            |(sites, racks, servers, unhealthy, seed, pack, ops)| Scenario {
                spec: FleetSpec {
                    sites,
                    racks_per_site: racks,
                    servers_per_rack: servers,
                    jurisdictions: vec!["VN".into(), "TH".into()],
                    unhealthy_percent: unhealthy,
                    uniform: false,
                },
                seed,
                strategy: if pack {
                    Strategy::Pack
                } else {
                    Strategy::Spread
                },
                ops,
            },
        )
}

fn tenant_set(spec: &FleetSpec, seed: u64) -> Vec<TenantPolicy> {
    let mut rng = Rng::new(seed);
    let mut ts = tenants(spec, 4, seed);
    for t in &mut ts {
        if rng.chance(50) {
            let mut q = Resources([u64::MAX; 6]);
            q.set(Class::Cpu, (8 + rng.below(120)) * 1000);
            q.set(Class::Nvme, (1 + rng.below(20)) << 40);
            t.quota = Some(q);
        }
    }
    ts
}

/// A request scaled by 1-8x so small fleets fill up.
fn scaled(rng: &mut Rng, ts: &[TenantPolicy], id: u64) -> Request {
    let mut r = request(rng, ts, id);
    r.per_replica = r.per_replica.times(1 + rng.below(8));
    r
}

/// Runs the ops, calling `check` after every successful placement or re-placement with the
/// replicas that were placed just now (all of them, or the one re-placed).
fn run(s: &Scenario, mut check: impl FnMut(&Placer, &Request, &Decision, &[u8])) -> Placer {
    run_on(s, fleet(&s.spec, s.seed), &mut check)
}

fn run_on(
    s: &Scenario,
    inv: Inventory,
    check: &mut impl FnMut(&Placer, &Request, &Decision, &[u8]),
) -> Placer {
    let mut p = Placer::new(inv, s.strategy);
    let ts = tenant_set(&s.spec, s.seed ^ 1);
    let mut rng = Rng::new(s.seed ^ 2);
    let mut placed: Vec<Request> = Vec::new();
    for (i, &(kind, arg)) in s.ops.iter().enumerate() {
        match kind {
            0..=5 => {
                let req = scaled(&mut rng, &ts, i as u64);
                if let Ok(d) = p.place(&req) {
                    let all: Vec<u8> = (0..req.replicas).collect();
                    check(&p, &req, &d, &all);
                    placed.push(req);
                }
            }
            6 | 7 if !placed.is_empty() => {
                let req = placed.remove(usize::try_from(arg % placed.len() as u64).unwrap());
                assert!(p.release(&req.consumer).is_some());
            }
            8 | 9 if !placed.is_empty() => {
                let req = placed[usize::try_from(arg % placed.len() as u64).unwrap()].clone();
                let replica = u8::try_from(arg % u64::from(req.replicas)).unwrap();
                let failed =
                    p.allocation(&req.consumer).unwrap().slots[usize::from(replica)].server;
                p.set_health(failed, Some(sovereign_placement::Unhealthy::Maintenance));
                if p.replace(&req, replica).is_ok() {
                    check(&p, &req, &decision_of(&p, &req), &[replica]);
                }
            }
            // Scale to 1-4 replicas: new ones keep the others' domains; fewer give capacity back.
            _ if !placed.is_empty() => {
                let k = usize::try_from(arg % placed.len() as u64).unwrap();
                let mut req = placed[k].clone();
                let want = u8::try_from(arg % 4 + 1).unwrap();
                let had = req.replicas;
                req.replicas = want;
                if want < had {
                    assert_eq!(
                        p.shrink(&req.consumer, usize::from(want)),
                        usize::from(had - want)
                    );
                    check(&p, &req, &decision_of(&p, &req), &[]);
                    placed[k] = req;
                } else if let Ok(new) = p.grow(&req) {
                    let fresh: Vec<u8> = new.iter().map(|pl| pl.replica).collect();
                    assert_eq!(fresh, (had..want).collect::<Vec<u8>>());
                    check(&p, &req, &decision_of(&p, &req), &fresh);
                    placed[k] = req;
                } else {
                    assert_eq!(
                        p.allocation(&req.consumer).unwrap().slots.len(),
                        usize::from(had),
                        "a refused scale-up changes nothing"
                    );
                }
            }
            _ => {}
        }
    }
    p
}

/// The consumer's whole allocation as a decision (replica k is slot k).
fn decision_of(p: &Placer, req: &Request) -> Decision {
    let slots = &p.allocation(&req.consumer).unwrap().slots;
    let placements = slots
        .iter()
        .enumerate()
        .map(|(k, sl)| {
            let srv = &p.inventory().servers[sl.server];
            sovereign_placement::Placement {
                replica: u8::try_from(k).unwrap(),
                server: srv.name.clone(),
                rack: p.inventory().racks[srv.rack].name.clone(),
                site: p.inventory().sites[srv.site].name.clone(),
                node: None,
                utilisation_ppm: 0,
            }
        })
        .collect();
    Decision {
        consumer: req.consumer.clone(),
        placements,
    }
}

fn ledger_totals(p: &Placer) -> (Vec<Resources>, Vec<Resources>, Vec<Resources>, Vec<u64>) {
    let inv = p.inventory();
    (
        (0..inv.servers.len()).map(|i| p.used(i)).collect(),
        (0..inv.racks.len()).map(|i| p.rack_used(i)).collect(),
        (0..inv.sites.len()).map(|i| p.site_used(i)).collect(),
        (0..inv.racks.len()).map(|i| p.rack_watts(i)).collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    /// Never over capacity (servers), power budget (racks) or quota (tenants); and the ledger's
    /// aggregates always equal the sum of its allocations.
    #[test]
    fn never_over_capacity_and_ledger_adds_up(s in scenario()) {
        let p = run(&s, |p, req, _, _| {
            let inv = p.inventory();
            for (i, srv) in inv.servers.iter().enumerate() {
                assert!(p.used(i).exceeds(&srv.capacity).is_none(), "{} over capacity", srv.name);
            }
            for (i, rack) in inv.racks.iter().enumerate() {
                assert!(p.rack_watts(i) <= rack.power_budget_watts.max(rack.measured_watts), "{} over power", rack.name);
            }
            if let Some(q) = &req.tenant.quota {
                assert!(p.tenant_used(&req.tenant.name).exceeds(q).is_none(), "quota exceeded");
            }
        });
        let inv = p.inventory();
        let mut servers = vec![Resources::ZERO; inv.servers.len()];
        for (_, a) in p.allocations() {
            for slot in &a.slots {
                servers[slot.server] = servers[slot.server].plus(&slot.resources);
            }
        }
        let mut racks = vec![Resources::ZERO; inv.racks.len()];
        for (i, srv) in inv.servers.iter().enumerate() {
            prop_assert_eq!(servers[i], p.used(i));
            racks[srv.rack] = racks[srv.rack].plus(&servers[i]);
        }
        for (i, r) in racks.iter().enumerate() {
            prop_assert_eq!(*r, p.rack_used(i));
        }
    }

    /// Never outside residency or below the classification's site tier, never on an unhealthy
    /// server, encrypted volumes only on self-encrypting drives.
    #[test]
    fn never_outside_policy(s in scenario()) {
        run(&s, |p, req, d, fresh| {
            let inv = p.inventory();
            for pl in d.placements.iter().filter(|pl| fresh.contains(&pl.replica)) {
                let i = inv.server_by_name(&pl.server).unwrap();
                let srv = &inv.servers[i];
                let site = &inv.sites[srv.site];
                assert!(req.tenant.jurisdictions.contains(&site.jurisdiction), "{} outside residency", site.name);
                if let Some(allowed) = &req.tenant.sites {
                    assert!(allowed.contains(&site.name), "{} not allowed", site.name);
                }
                assert!(site.security_tier >= req.tenant.classification.min_security_tier());
                assert!(srv.unhealthy.is_none(), "{} unhealthy", srv.name);
                assert!(!req.encrypted || srv.encryption_capable);
            }
        });
    }

    /// Replicas never share a failure domain narrower than requested, also after re-placement.
    #[test]
    fn replicas_never_share_a_domain(s in scenario()) {
        run(&s, |p, req, d, _| {
            let inv = p.inventory();
            assert_eq!(d.placements.len(), usize::from(req.replicas));
            let servers: Vec<usize> = d.placements.iter().map(|pl| inv.server_by_name(&pl.server).unwrap()).collect();
            let domain = |i: usize| match req.spread {
                Spread::Server => i,
                Spread::Rack => inv.servers[i].rack,
                Spread::Site => inv.servers[i].site,
            };
            let mut domains: Vec<usize> = servers.iter().map(|&i| domain(i)).collect();
            domains.sort_unstable();
            domains.dedup();
            assert_eq!(domains.len(), servers.len(), "{:?} share a {:?}", d.placements, req.spread);
        });
    }

    /// Releasing an allocation restores every aggregate exactly.
    #[test]
    fn release_restores_capacity_exactly(s in scenario(), extra in any::<u64>()) {
        let mut p = run(&s, |_, _, _, _| {});
        let before = ledger_totals(&p);
        let ts = tenant_set(&s.spec, s.seed ^ 1);
        let req = scaled(&mut Rng::new(extra), &ts, 1_000_000);
        let tenant_before = p.tenant_used(&req.tenant.name);
        if p.place(&req).is_ok() {
            prop_assert!(p.release(&req.consumer).is_some());
        }
        prop_assert_eq!(ledger_totals(&p), before);
        prop_assert_eq!(p.tenant_used(&req.tenant.name), tenant_before);
    }

    /// Scaling a placed workload up and back down restores every aggregate exactly.
    #[test]
    fn scaling_up_and_back_restores_capacity_exactly(s in scenario(), extra in any::<u64>()) {
        let mut p = run(&s, |_, _, _, _| {});
        let ts = tenant_set(&s.spec, s.seed ^ 1);
        let mut req = scaled(&mut Rng::new(extra), &ts, 1_000_000);
        req.replicas = 1;
        if p.place(&req).is_ok() {
            let before = ledger_totals(&p);
            let tenant_before = p.tenant_used(&req.tenant.name);
            req.replicas = u8::try_from(extra % 3 + 2).unwrap();
            if let Ok(new) = p.grow(&req) {
                prop_assert_eq!(new.len(), usize::from(req.replicas) - 1);
                prop_assert_eq!(p.shrink(&req.consumer, 1), new.len());
            }
            prop_assert_eq!(ledger_totals(&p), before);
            prop_assert_eq!(p.tenant_used(&req.tenant.name), tenant_before);
        }
    }

    /// Same inputs, same answer: even when the inventory arrives in another order.
    #[test]
    fn decisions_are_deterministic(s in scenario()) {
        let mut a: Vec<String> = Vec::new();
        let mut b: Vec<String> = Vec::new();
        run(&s, |_, _, d, _| a.push(format!("{d:?}")));
        let inv = fleet(&s.spec, s.seed);
        let mut sites = inv.sites.clone();
        sites.reverse();
        let racks: Vec<_> = inv.racks.iter().rev().map(|r| sovereign_placement::model::RackInput {
            name: r.name.clone(), site: inv.sites[r.site].name.clone(),
            power_budget_watts: r.power_budget_watts, measured_watts: r.measured_watts }).collect();
        let servers: Vec<_> = inv.servers.iter().rev().map(|x| sovereign_placement::model::ServerInput {
            name: x.name.clone(), rack: inv.racks[x.rack].name.clone(), node: x.node.clone(),
            capacity: x.capacity, unhealthy: x.unhealthy, encryption_capable: x.encryption_capable }).collect();
        let shuffled = sovereign_placement::Inventory::build(sites, racks, servers).unwrap();
        prop_assert_eq!(&shuffled.servers, &inv.servers);
        run_on(&s, shuffled, &mut |_, _, d: &Decision, _: &[u8]| b.push(format!("{d:?}")));
        prop_assert_eq!(a, b);
    }
}
