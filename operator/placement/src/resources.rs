//! Resource vectors in exact integer units.

use std::fmt;

use serde::Serialize;
use sovereign_crds::quantity::QuantityError;
use sovereign_crds::{ResourceSet, StorageTier};

/// A resource class, as OpenStack Placement calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Class {
    /// CPU in millicores.
    Cpu,
    /// Memory in bytes.
    Memory,
    /// Whole GPUs.
    Gpu,
    /// NVMe storage in bytes.
    Nvme,
    /// SSD storage in bytes.
    Ssd,
    /// HDD storage in bytes.
    Hdd,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Cpu,
        Class::Memory,
        Class::Gpu,
        Class::Nvme,
        Class::Ssd,
        Class::Hdd,
    ];

    pub fn for_tier(tier: StorageTier) -> Self {
        match tier {
            StorageTier::Nvme => Class::Nvme,
            StorageTier::Ssd => Class::Ssd,
            StorageTier::Hdd => Class::Hdd,
        }
    }

    /// Words used in refusals ("insufficient nvme storage").
    pub fn describe(self) -> &'static str {
        match self {
            Class::Cpu => "cpu",
            Class::Memory => "memory",
            Class::Gpu => "gpus",
            Class::Nvme => "nvme storage",
            Class::Ssd => "ssd storage",
            Class::Hdd => "hdd storage",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Amounts per class. Integer units so allocating and releasing is exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Resources(pub [u64; 6]);

impl Resources {
    pub const ZERO: Resources = Resources([0; 6]);

    pub fn get(&self, c: Class) -> u64 {
        self.0[c.index()]
    }

    pub fn set(&mut self, c: Class, v: u64) {
        self.0[c.index()] = v;
    }

    #[must_use]
    pub fn with(mut self, c: Class, v: u64) -> Self {
        self.set(c, v);
        self
    }

    /// Element-wise sum; saturates (capacities near u64::MAX are not physical).
    #[must_use]
    pub fn plus(&self, o: &Resources) -> Resources {
        let mut r = *self;
        for (a, b) in r.0.iter_mut().zip(o.0) {
            *a = a.saturating_add(b);
        }
        r
    }

    /// Element-wise difference, floored at zero.
    #[must_use]
    pub fn minus(&self, o: &Resources) -> Resources {
        let mut r = *self;
        for (a, b) in r.0.iter_mut().zip(o.0) {
            *a = a.saturating_sub(b);
        }
        r
    }

    #[must_use]
    pub fn times(&self, n: u64) -> Resources {
        let mut r = *self;
        for a in &mut r.0 {
            *a = a.saturating_mul(n);
        }
        r
    }

    /// The first class where `self` exceeds `limit`, if any.
    pub fn exceeds(&self, limit: &Resources) -> Option<Class> {
        Class::ALL.into_iter().find(|&c| self.get(c) > limit.get(c))
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&v| v == 0)
    }

    /// Builds a vector from the API's resource set (absent means zero).
    pub fn from_set(set: &ResourceSet) -> Result<Resources, QuantityError> {
        let mut r = Resources::ZERO;
        if let Some(q) = &set.cpu {
            r.set(Class::Cpu, q.parse()?.to_milli()?);
        }
        if let Some(q) = &set.memory {
            r.set(Class::Memory, q.parse()?.to_units()?);
        }
        r.set(Class::Gpu, u64::from(set.gpus.unwrap_or(0)));
        if let Some(st) = &set.storage {
            for (class, q) in [
                (Class::Nvme, &st.nvme),
                (Class::Ssd, &st.ssd),
                (Class::Hdd, &st.hdd),
            ] {
                if let Some(q) = q {
                    r.set(class, q.parse()?.to_units()?);
                }
            }
        }
        Ok(r)
    }
}

impl Resources {
    /// The API's resource set for this vector (exact: cores or millicores, bytes); zero
    /// classes are left out.
    pub fn to_set(&self) -> ResourceSet {
        // Bytes in the largest binary unit that keeps them exact (16Gi, not 17179869184).
        let q = |v: u64| {
            (v > 0).then(|| {
                let text = [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")]
                    .iter()
                    .find(|(shift, _)| v.is_multiple_of(1u64 << shift))
                    .map_or_else(
                        || v.to_string(),
                        |(shift, unit)| format!("{}{unit}", v >> shift),
                    );
                sovereign_crds::Quantity::new(text)
            })
        };
        let cpu = self.get(Class::Cpu);
        let storage = sovereign_crds::TieredStorage {
            nvme: q(self.get(Class::Nvme)),
            ssd: q(self.get(Class::Ssd)),
            hdd: q(self.get(Class::Hdd)),
        };
        ResourceSet {
            cpu: (cpu > 0).then(|| {
                sovereign_crds::Quantity::new(if cpu.is_multiple_of(1000) {
                    (cpu / 1000).to_string()
                } else {
                    format!("{cpu}m")
                })
            }),
            memory: q(self.get(Class::Memory)),
            gpus: u32::try_from(self.get(Class::Gpu)).ok().filter(|g| *g > 0),
            storage: (storage != sovereign_crds::TieredStorage::default()).then_some(storage),
        }
    }
}

/// Human units: cores, GiB, TiB.
pub fn human(c: Class, v: u64) -> String {
    const GI: u64 = 1 << 30;
    const TI: u64 = 1 << 40;
    match c {
        _ if v == 0 => "0".to_owned(),
        Class::Cpu if v.is_multiple_of(1000) => format!("{}", v / 1000),
        Class::Cpu => format!("{v}m"),
        Class::Gpu => v.to_string(),
        // Tenths of a TiB, rounded down: display only.
        _ if v >= TI => format!("{}.{}Ti", v / TI, (v % TI) * 10 / TI),
        _ => format!("{}Gi", v.div_ceil(GI)),
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Class::ALL
            .into_iter()
            .filter(|&c| self.get(c) > 0)
            .map(|c| format!("{} {}", c.describe(), human(c, self.get(c))))
            .collect();
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// How raw capacity becomes schedulable capacity: `(total - reserved) * allocation_ratio`,
/// per class, as in OpenStack Placement.
#[derive(Clone, Debug, PartialEq)]
pub struct CapacityPolicy {
    /// Over-commit ratio per class, in thousandths (1000 = no over-commit).
    pub allocation_ratio_milli: [u64; 6],
    /// Reserved on every server in addition to the server's own `spec.reserved`.
    pub reserved: Resources,
}

impl Default for CapacityPolicy {
    fn default() -> Self {
        // Sovereign workloads get dedicated resources: no over-commit unless configured.
        Self {
            allocation_ratio_milli: [1000; 6],
            reserved: Resources::ZERO,
        }
    }
}

impl CapacityPolicy {
    /// Schedulable capacity of a server with `total` raw capacity and its own `reserved`.
    pub fn schedulable(&self, total: &Resources, reserved: &Resources) -> Resources {
        let mut out = total.minus(&reserved.plus(&self.reserved));
        for (v, ratio) in out.0.iter_mut().zip(self.allocation_ratio_milli) {
            let scaled = u128::from(*v) * u128::from(ratio) / 1000;
            *v = u64::try_from(scaled).unwrap_or(u64::MAX);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_semantics_for_capacity() {
        let total = Resources::ZERO
            .with(Class::Cpu, 64_000)
            .with(Class::Memory, 512 << 30);
        let reserved = Resources::ZERO
            .with(Class::Cpu, 2_000)
            .with(Class::Memory, 16 << 30);
        let mut policy = CapacityPolicy::default();
        assert_eq!(
            policy.schedulable(&total, &reserved).get(Class::Cpu),
            62_000
        );
        policy.allocation_ratio_milli[Class::Cpu as usize] = 4000;
        policy.reserved = Resources::ZERO.with(Class::Cpu, 1_000);
        // (64 - 2 - 1) * 4 = 244 cores
        assert_eq!(
            policy.schedulable(&total, &reserved).get(Class::Cpu),
            244_000
        );
        assert_eq!(
            policy.schedulable(&total, &reserved).get(Class::Memory),
            496 << 30
        );
    }

    #[test]
    fn exceeds_names_the_first_short_class() {
        let limit = Resources::ZERO
            .with(Class::Cpu, 4_000)
            .with(Class::Nvme, 100);
        let want = Resources::ZERO
            .with(Class::Cpu, 2_000)
            .with(Class::Nvme, 200);
        assert_eq!(want.exceeds(&limit), Some(Class::Nvme));
        assert_eq!(limit.exceeds(&limit), None);
    }
}
