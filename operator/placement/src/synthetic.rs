//! Deterministic synthetic fleets and requests for benchmarks and property tests.
//!
//! SplitMix64 is written out (ten lines) so a seed gives the same fleet on every machine and
//! every `rand` release, which keeps benchmark figures comparable between sessions.

use sovereign_crds::{Classification, Spread};

use crate::model::{Inventory, RackInput, Request, ServerInput, Site, TenantPolicy, Unhealthy};
use crate::resources::{Class, Resources};

const GI: u64 = 1 << 30;
const TI: u64 = 1 << 40;

/// SplitMix64 pseudo-random numbers.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Shape of a generated fleet.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    pub sites: usize,
    pub racks_per_site: usize,
    pub servers_per_rack: usize,
    /// Jurisdiction of site i is `jurisdictions[i % len]`.
    pub jurisdictions: Vec<String>,
    /// Percent of servers that are unhealthy.
    pub unhealthy_percent: u64,
    /// Every server the same compute shape (for packing measurements).
    pub uniform: bool,
}

impl FleetSpec {
    /// The benchmark fleet: 4 sites x 50 racks x 25 servers = 5,000 servers, three sites in VN
    /// and one in TH.
    pub fn benchmark() -> Self {
        Self {
            sites: 4,
            racks_per_site: 50,
            servers_per_rack: 25,
            jurisdictions: vec!["VN".into(), "VN".into(), "VN".into(), "TH".into()],
            unhealthy_percent: 3,
            uniform: false,
        }
    }
}

/// Server shapes: compute, GPU and storage-heavy.
fn shape(rng: &mut Rng, uniform: bool) -> (Resources, bool) {
    let compute = Resources::ZERO
        .with(Class::Cpu, 64_000)
        .with(Class::Memory, 512 * GI)
        .with(Class::Nvme, 15 * TI);
    if uniform {
        return (compute, true);
    }
    match rng.below(10) {
        0 => (
            Resources::ZERO
                .with(Class::Cpu, 96_000)
                .with(Class::Memory, 1024 * GI)
                .with(Class::Gpu, 4)
                .with(Class::Nvme, 7 * TI),
            true,
        ),
        1 | 2 => (
            Resources::ZERO
                .with(Class::Cpu, 48_000)
                .with(Class::Memory, 384 * GI)
                .with(Class::Ssd, 30 * TI)
                .with(Class::Hdd, 200 * TI),
            rng.chance(50),
        ),
        _ => (compute, rng.chance(90)),
    }
}

/// Generates a fleet.
pub fn fleet(spec: &FleetSpec, seed: u64) -> Inventory {
    let mut rng = Rng::new(seed);
    let mut sites = Vec::new();
    let mut racks = Vec::new();
    let mut servers = Vec::new();
    let reasons = [
        Unhealthy::Maintenance,
        Unhealthy::TelemetryStale,
        Unhealthy::BmcUnreachable,
        Unhealthy::IntrusionDetected,
        Unhealthy::HealthCritical,
    ];
    for s in 0..spec.sites {
        let site = format!("site-{s:02}");
        let tier = u8::try_from(4 - s % 2).unwrap_or(4);
        sites.push(Site {
            name: site.clone(),
            jurisdiction: spec.jurisdictions[s % spec.jurisdictions.len()].clone(),
            security_tier: tier,
        });
        for r in 0..spec.racks_per_site {
            let rack = format!("{site}-r{r:03}");
            racks.push(RackInput {
                name: rack.clone(),
                site: site.clone(),
                power_budget_watts: 40_000,
                measured_watts: 4_000 + rng.below(4_000),
            });
            for v in 0..spec.servers_per_rack {
                let (capacity, encryption_capable) = shape(&mut rng, spec.uniform);
                let unhealthy = rng
                    .chance(spec.unhealthy_percent)
                    .then(|| reasons[usize::try_from(rng.below(5)).unwrap_or(0)]);
                servers.push(ServerInput {
                    name: format!("{rack}-s{v:02}"),
                    rack: rack.clone(),
                    node: Some(format!("{rack}-s{v:02}.node")),
                    capacity,
                    unhealthy,
                    encryption_capable,
                });
            }
        }
    }
    // Names are unique and every reference resolves by construction.
    Inventory::build(sites, racks, servers).unwrap_or_default()
}

/// A mix of tenants: residency in one or both jurisdictions, some pinned to sites, all four
/// classifications.
pub fn tenants(spec: &FleetSpec, count: usize, seed: u64) -> Vec<TenantPolicy> {
    let mut rng = Rng::new(seed);
    let classes = [
        Classification::Public,
        Classification::Internal,
        Classification::Confidential,
        Classification::Secret,
    ];
    let mut js: Vec<String> = spec.jurisdictions.clone();
    js.sort();
    js.dedup();
    (0..count)
        .map(|i| {
            let classification = classes[usize::try_from(rng.below(4)).unwrap_or(0)];
            let jurisdictions = match rng.below(4) {
                0 => js.clone(),
                // Secret tenants live where the tier-4 sites are (site 0's jurisdiction).
                _ if classification == Classification::Secret => {
                    vec![spec.jurisdictions[0].clone()]
                }
                _ => vec![js[usize::try_from(rng.below(js.len() as u64)).unwrap_or(0)].clone()],
            };
            // Secret tenants are pinned to tier-4 sites (even indices); a few others pin too.
            let sites = (classification == Classification::Secret || rng.chance(15)).then(|| {
                let s = rng.below(spec.sites as u64) & !1;
                vec![
                    format!("site-{s:02}"),
                    format!("site-{:02}", (s + 2) % spec.sites as u64),
                ]
            });
            TenantPolicy {
                name: format!("tenant-{i:03}"),
                jurisdictions,
                sites,
                classification,
                quota: None,
            }
        })
        .collect()
}

/// One request: half compute instances, half volumes, 1-3 replicas with mixed spread.
pub fn request(rng: &mut Rng, tenants: &[TenantPolicy], id: u64) -> Request {
    let tenant = tenants[usize::try_from(rng.below(tenants.len() as u64)).unwrap_or(0)].clone();
    let replicas = u8::try_from(1 + rng.below(3)).unwrap_or(1);
    // Site spread only for tenants allowed more than one jurisdiction (several sites).
    let spread = match (replicas, rng.below(3)) {
        (1, _) | (_, 0) => Spread::Server,
        (_, 2) if tenant.jurisdictions.len() > 1 => Spread::Site,
        _ => Spread::Rack,
    };
    let (consumer, per_replica, encrypted) = if rng.chance(50) {
        let cores = 1 + rng.below(8);
        let mut r = Resources::ZERO
            .with(Class::Cpu, cores * 1000)
            .with(Class::Memory, cores * (2 + rng.below(6)) * GI);
        if rng.chance(3) {
            r.set(Class::Gpu, 1);
        }
        (format!("ComputeInstance/{}/ci-{id}", tenant.name), r, false)
    } else {
        let class = match rng.below(10) {
            0..=5 => Class::Nvme,
            6..=7 => Class::Ssd,
            _ => Class::Hdd,
        };
        let size = (50 + rng.below(950)) * GI;
        (
            format!("StorageVolume/{}/vol-{id}", tenant.name),
            Resources::ZERO.with(class, size),
            rng.chance(70),
        )
    };
    Request {
        consumer,
        tenant,
        watts_per_replica: per_replica.get(Class::Cpu) / 1000 * 8
            + per_replica.get(Class::Gpu) * 350,
        per_replica,
        replicas: if spread == Spread::Site {
            replicas.min(2)
        } else {
            replicas
        },
        spread,
        encrypted,
    }
}
