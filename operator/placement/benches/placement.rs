//! Placement benchmark: `cargo bench -p sovereign-placement --bench placement`.
//!
//! Fleet: 5,000 servers (4 sites x 50 racks x 25), 50,000 existing allocations, then a stream of
//! mixed requests (residency, classification, spread, encryption) with churn that keeps the
//! ledger at 50,000 allocations. Prints decisions/s, p50/p99 latency, and packing quality
//! (servers used vs the lower bound) for the pack strategy on an empty uniform fleet.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use sovereign_placement::synthetic::{FleetSpec, Rng, fleet, request, tenants};
use sovereign_placement::{Class, Placer, Reason, Refusal, Resources, Strategy};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn throughput(strategy: Strategy, decisions: u64) {
    let spec = FleetSpec::benchmark();
    let inv = fleet(&spec, 1);
    let servers = inv.servers.len();
    let tenants = tenants(&spec, 40, 2);
    let mut placer = Placer::new(inv, strategy);
    let mut rng = Rng::new(3);
    let mut live = VecDeque::new();
    let mut id = 0u64;
    let setup = Instant::now();
    while live.len() < 50_000 {
        id += 1;
        let req = request(&mut rng, &tenants, id);
        if placer.place(&req).is_ok() {
            live.push_back(req.consumer);
        }
    }
    let setup = setup.elapsed();
    let inv = placer.inventory();
    let cap = inv
        .servers
        .iter()
        .fold(Resources::ZERO, |a, s| a.plus(&s.capacity));
    let used = (0..inv.sites.len()).fold(Resources::ZERO, |a, s| a.plus(&placer.site_used(s)));
    let pct = |c: Class| {
        #[allow(clippy::cast_precision_loss)]
        let v = used.get(c) as f64 * 100.0 / cap.get(c).max(1) as f64;
        v
    };
    let load = format!(
        "cpu {:.0}%, memory {:.0}%, gpus {:.0}%, nvme {:.0}%, ssd {:.0}%, hdd {:.0}%",
        pct(Class::Cpu),
        pct(Class::Memory),
        pct(Class::Gpu),
        pct(Class::Nvme),
        pct(Class::Ssd),
        pct(Class::Hdd)
    );
    let mut latencies = Vec::with_capacity(usize::try_from(decisions).unwrap_or(0));
    let (mut ok, mut refused_fit, mut refused_other) = (0u64, 0u64, 0u64);
    let mut refusal_time = Duration::ZERO;
    let mut busy = Duration::ZERO;
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..decisions {
        id += 1;
        let req = request(&mut rng, &tenants, id);
        let t = Instant::now();
        let result = placer.place(&req);
        let dt = t.elapsed();
        latencies.push(dt);
        busy += dt;
        match result {
            Ok(_) => {
                ok += 1;
                live.push_back(req.consumer);
                // Churn: keep the ledger at 50,000 allocations.
                if let Some(old) = live.pop_front() {
                    let t = Instant::now();
                    placer.release(&old);
                    busy += t.elapsed();
                }
            }
            Err(Refusal::NoFit {
                removed,
                jurisdictions,
                min_tier,
                ..
            }) => {
                refused_fit += 1;
                refusal_time += dt;
                // The filter that removed the most servers that a site-level filter did not.
                let main = removed
                    .iter()
                    .find(|(r, _)| {
                        !matches!(
                            r,
                            Reason::OutsideJurisdiction
                                | Reason::SiteNotAllowed
                                | Reason::SecurityTierBelow
                        )
                    })
                    .map_or_else(
                        || "site policy".to_owned(),
                        |(r, _)| r.describe(&jurisdictions, min_tier),
                    );
                *causes.entry(main).or_insert(0u64) += 1;
            }
            Err(_) => refused_other += 1,
        }
    }
    latencies.sort();
    #[allow(clippy::cast_precision_loss)]
    let per_sec = decisions as f64 / latencies.iter().sum::<Duration>().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let with_release = decisions as f64 / busy.as_secs_f64();
    println!(
        "strategy {strategy:?}: {servers} servers, {} allocations live",
        live.len()
    );
    println!(
        "  setup: 50,000 allocations placed in {:.2} s; fleet load {load}",
        setup.as_secs_f64()
    );
    println!(
        "  decisions: {decisions} ({ok} placed, {refused_fit} refused no-fit, {refused_other} refused other)"
    );
    println!("  throughput: {per_sec:.0} decisions/s ({with_release:.0}/s counting releases)");
    println!(
        "  latency: p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        percentile(&latencies, 0.50).as_secs_f64() * 1e6,
        percentile(&latencies, 0.99).as_secs_f64() * 1e6,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e6)
    );
    if refused_fit > 0 {
        #[allow(clippy::cast_precision_loss)]
        let mean = refusal_time.as_secs_f64() / refused_fit as f64 * 1e6;
        println!(
            "  refusals with full per-filter explanation: mean {mean:.1} us; main causes {causes:?}"
        );
    }
}

fn packing(strategy: Strategy) {
    // An empty uniform fleet of 1,000 servers (64 cores, 512 GiB); compute requests of 1-16 cores
    // with 2-12 GiB per core (cpu binds on some servers, memory on others), until 60% of the cpu
    // is asked for.
    let spec = FleetSpec {
        sites: 1,
        racks_per_site: 40,
        servers_per_rack: 25,
        jurisdictions: vec!["VN".into()],
        unhealthy_percent: 0,
        uniform: true,
    };
    let inv = fleet(&spec, 7);
    let cap = inv.servers[0].capacity;
    let n = inv.servers.len();
    let mut placer = Placer::new(inv, strategy);
    let tenant = tenants(&spec, 1, 8).remove(0);
    let tenant = sovereign_placement::TenantPolicy {
        classification: sovereign_crds::Classification::Public,
        sites: None,
        ..tenant
    };
    let mut rng = Rng::new(9);
    let mut demand = Resources::ZERO;
    let mut i = 0u64;
    #[allow(clippy::cast_possible_truncation)]
    let target = cap.get(Class::Cpu) * n as u64 * 6 / 10;
    while demand.get(Class::Cpu) < target {
        i += 1;
        let cores = 1 + rng.below(16);
        let per_replica = Resources::ZERO
            .with(Class::Cpu, cores * 1000)
            .with(Class::Memory, cores * (2 + rng.below(11)) * (1 << 30));
        let req = sovereign_placement::Request {
            consumer: format!("ci-{i}"),
            tenant: tenant.clone(),
            per_replica,
            replicas: 1,
            spread: sovereign_crds::Spread::Server,
            encrypted: false,
            watts_per_replica: 0,
        };
        if placer.place(&req).is_ok() {
            demand = demand.plus(&per_replica);
        }
    }
    let used = (0..n).filter(|&s| !placer.used(s).is_zero()).count();
    let bound = Class::ALL
        .into_iter()
        .filter(|&c| cap.get(c) > 0)
        .map(|c| demand.get(c).div_ceil(cap.get(c)))
        .max()
        .unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let ratio = used as f64 / bound as f64;
    println!(
        "packing ({strategy:?}): {i} requests, {used} servers used, lower bound {bound}, ratio {ratio:.3} (target <= 1.222)"
    );
}

fn main() {
    let decisions = std::env::args()
        .skip_while(|a| a != "--decisions")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    throughput(Strategy::Spread, decisions);
    throughput(Strategy::Pack, decisions);
    packing(Strategy::Pack);
    packing(Strategy::Spread);
}
