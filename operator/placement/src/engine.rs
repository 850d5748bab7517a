//! The placer: a capacity ledger plus the decision procedure.
//!
//! Fast path: eligible servers sit in one ordered set keyed by their dominant utilisation; a
//! decision walks it (ascending for Spread, descending for Pack) and takes the first server that
//! passes every filter. Slow path, only when nothing fits: every server is run through the same
//! [`Placer::check`] to count why each one was removed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use sovereign_crds::Spread;

use crate::model::{Inventory, Request, Strategy, Unhealthy};
use crate::resources::{Class, Resources};

/// Why one server cannot take one replica. Ordered as the filters run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Reason {
    /// Site is in a jurisdiction the tenant does not allow.
    OutsideJurisdiction,
    /// Site is not on the tenant's site allow-list.
    SiteNotAllowed,
    /// Site security tier is below what the classification needs.
    SecurityTierBelow,
    Unhealthy(Unhealthy),
    /// Already holds a replica of this request.
    HoldsReplica,
    SameRack,
    SameSite,
    NoEncryption,
    Insufficient(Class),
    RackPowerBudget,
}

impl Reason {
    /// Number of distinct reasons, for counting in a fixed array.
    const COUNT: usize = 21;

    fn slot(self) -> usize {
        match self {
            Reason::OutsideJurisdiction => 0,
            Reason::SiteNotAllowed => 1,
            Reason::SecurityTierBelow => 2,
            Reason::Unhealthy(u) => 3 + u as usize,
            Reason::HoldsReplica => 10,
            Reason::SameRack => 11,
            Reason::SameSite => 12,
            Reason::NoEncryption => 13,
            Reason::Insufficient(c) => 14 + c as usize,
            Reason::RackPowerBudget => 20,
        }
    }

    /// Words for a refusal; `jurisdictions` and `min_tier` come from the request.
    pub fn describe(self, jurisdictions: &str, min_tier: u8) -> String {
        match self {
            Reason::OutsideJurisdiction => format!("outside jurisdiction {jurisdictions}"),
            Reason::SiteNotAllowed => "at a site the tenant does not allow".into(),
            Reason::SecurityTierBelow => format!("at a site below security tier {min_tier}"),
            Reason::Unhealthy(u) => u.to_string(),
            Reason::HoldsReplica => "already holding a replica".into(),
            Reason::SameRack => "in a rack already holding a replica".into(),
            Reason::SameSite => "at a site already holding a replica".into(),
            Reason::NoEncryption => "without self-encrypting drives".into(),
            Reason::Insufficient(c) => format!("insufficient {}", c.describe()),
            Reason::RackPowerBudget => "rack power budget exceeded".into(),
        }
    }
}

/// Where one replica goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub replica: u8,
    pub server: String,
    pub rack: String,
    pub site: String,
    pub node: Option<String>,
    /// The server's dominant utilisation before this replica, in parts per million (its score).
    pub utilisation_ppm: u32,
}

/// A successful decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub consumer: String,
    pub placements: Vec<Placement>,
}

/// Why a request was refused, in the scheduler's words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Refusal {
    /// The tenant's quota would be exceeded.
    Quota {
        consumer: String,
        tenant: String,
        class: Class,
        requested: u64,
        in_use: u64,
        quota: u64,
    },
    /// No server fits one of the replicas; `removed` counts, per filter, the servers it removed.
    NoFit {
        consumer: String,
        replica: u8,
        replicas: u8,
        total: usize,
        removed: Vec<(Reason, usize)>,
        /// The tenant's jurisdictions and the tier its classification needs, for the words.
        jurisdictions: String,
        min_tier: u8,
    },
    /// The consumer already has an allocation (release it first) or has none to re-place.
    Ledger { consumer: String, message: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Quota {
                tenant,
                class,
                requested,
                in_use,
                quota,
                ..
            } => write!(
                f,
                "tenant {tenant} quota exceeded for {}: requested {}, in use {}, quota {}",
                class.describe(),
                crate::resources::human(*class, *requested),
                crate::resources::human(*class, *in_use),
                crate::resources::human(*class, *quota)
            ),
            Refusal::NoFit {
                replica,
                replicas,
                total,
                removed,
                jurisdictions,
                min_tier,
                ..
            } => {
                write!(f, "0/{total} servers fit")?;
                if *replicas > 1 {
                    write!(f, " replica {} of {replicas}", replica + 1)?;
                }
                // Unhealthy servers are one entry (with the breakdown) ranked by their total.
                let removed: Vec<&(Reason, usize)> =
                    removed.iter().filter(|(_, n)| *n > 0).collect();
                let unhealthy: Vec<String> = removed
                    .iter()
                    .filter(|(r, _)| matches!(r, Reason::Unhealthy(_)))
                    .map(|(r, n)| format!("{n} {}", r.describe(jurisdictions, *min_tier)))
                    .collect();
                let unhealthy_total: usize = removed
                    .iter()
                    .filter(|(r, _)| matches!(r, Reason::Unhealthy(_)))
                    .map(|(_, n)| n)
                    .sum();
                let mut entries: Vec<(usize, usize, String)> = removed
                    .iter()
                    .filter(|(r, _)| !matches!(r, Reason::Unhealthy(_)))
                    .map(|(r, n)| {
                        (
                            *n,
                            r.slot(),
                            format!("{n} {}", r.describe(jurisdictions, *min_tier)),
                        )
                    })
                    .collect();
                if unhealthy_total > 0 {
                    let text = format!("{unhealthy_total} unhealthy ({})", unhealthy.join(", "));
                    entries.push((
                        unhealthy_total,
                        Reason::Unhealthy(Unhealthy::Maintenance).slot(),
                        text,
                    ));
                }
                entries.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                let parts: Vec<String> = entries.into_iter().map(|(_, _, t)| t).collect();
                if !parts.is_empty() {
                    write!(f, ": {}", parts.join(", "))?;
                }
                Ok(())
            }
            Refusal::Ledger { message, .. } => f.write_str(message),
        }
    }
}

/// One replica's share of the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub server: usize,
    pub resources: Resources,
    pub watts: u64,
}

/// A consumer's allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Shared by the tenant's allocations (tens of thousands of them name a few tenants).
    pub tenant: Arc<str>,
    pub slots: Vec<Slot>,
}

/// The placement engine: inventory, ledger and index. Pure: no I/O, no clock.
#[derive(Clone, Debug)]
pub struct Placer {
    inv: Inventory,
    strategy: Strategy,
    used: Vec<Resources>,
    rack_used: Vec<Resources>,
    rack_watts: Vec<u64>,
    site_used: Vec<Resources>,
    tenant_used: HashMap<String, Resources>,
    /// Consumer → allocation; keys without growth slack (one per workload).
    allocations: HashMap<Box<str>, Allocation>,
    /// Tenant names the allocations share.
    tenant_names: HashSet<Arc<str>>,
    keys: Vec<u32>,
    order: BTreeSet<(u32, u32)>,
    /// Servers of each site, for explaining refusals site by site.
    site_servers: Vec<Vec<usize>>,
}

/// Per-request facts computed once, and the replicas chosen so far.
struct Ctx<'a> {
    req: &'a Request,
    site_verdict: Vec<Option<Reason>>,
    chosen: Vec<usize>,
    /// Servers that may not take this replica but whose failure domains stay free (the server
    /// a replica is leaving).
    excluded: Vec<usize>,
}

impl Placer {
    pub fn new(inv: Inventory, strategy: Strategy) -> Self {
        let n = inv.servers.len();
        let mut p = Placer {
            used: vec![Resources::ZERO; n],
            rack_used: vec![Resources::ZERO; inv.racks.len()],
            rack_watts: vec![0; inv.racks.len()],
            site_used: vec![Resources::ZERO; inv.sites.len()],
            tenant_used: HashMap::new(),
            allocations: HashMap::new(),
            tenant_names: HashSet::new(),
            keys: vec![0; n],
            order: BTreeSet::new(),
            site_servers: site_servers(&inv),
            inv,
            strategy,
        };
        for i in 0..n {
            p.reindex(i);
        }
        p
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inv
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn used(&self, server: usize) -> Resources {
        self.used[server]
    }

    pub fn rack_used(&self, rack: usize) -> Resources {
        self.rack_used[rack]
    }

    pub fn site_used(&self, site: usize) -> Resources {
        self.site_used[site]
    }

    pub fn rack_watts(&self, rack: usize) -> u64 {
        self.inv.racks[rack].measured_watts + self.rack_watts[rack]
    }

    pub fn tenant_used(&self, tenant: &str) -> Resources {
        self.tenant_used.get(tenant).copied().unwrap_or_default()
    }

    pub fn allocation(&self, consumer: &str) -> Option<&Allocation> {
        self.allocations.get(consumer)
    }

    pub fn allocations(&self) -> impl Iterator<Item = (&str, &Allocation)> {
        self.allocations.iter().map(|(c, a)| (&**c, a))
    }

    /// Dominant utilisation (the most-used class) in parts per million.
    fn key(&self, i: usize) -> u32 {
        let cap = &self.inv.servers[i].capacity;
        let used = &self.used[i];
        Class::ALL
            .into_iter()
            .filter(|&c| cap.get(c) > 0)
            .map(|c| u128::from(used.get(c)) * 1_000_000 / u128::from(cap.get(c)))
            .max()
            .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX))
    }

    fn reindex(&mut self, i: usize) {
        let idx = u32::try_from(i).unwrap_or(u32::MAX);
        self.order.remove(&(self.keys[i], idx));
        self.keys[i] = self.key(i);
        if self.inv.servers[i].unhealthy.is_none() {
            self.order.insert((self.keys[i], idx));
        }
    }

    /// Marks a server healthy (None) or not; unhealthy servers receive no new replicas.
    pub fn set_health(&mut self, server: usize, unhealthy: Option<Unhealthy>) {
        self.inv.servers[server].unhealthy = unhealthy;
        self.reindex(server);
    }

    fn site_verdict(&self, req: &Request) -> Vec<Option<Reason>> {
        let min_tier = req.tenant.classification.min_security_tier();
        self.inv
            .sites
            .iter()
            .map(|site| {
                if !req.tenant.jurisdictions.contains(&site.jurisdiction) {
                    Some(Reason::OutsideJurisdiction)
                } else if req
                    .tenant
                    .sites
                    .as_ref()
                    .is_some_and(|allowed| !allowed.contains(&site.name))
                {
                    Some(Reason::SiteNotAllowed)
                } else if site.security_tier < min_tier {
                    Some(Reason::SecurityTierBelow)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Runs every filter on one server for the next replica of `ctx`.
    fn check(&self, i: usize, ctx: &Ctx<'_>) -> Result<(), Reason> {
        let s = &self.inv.servers[i];
        if let Some(r) = ctx.site_verdict[s.site] {
            return Err(r);
        }
        if let Some(u) = s.unhealthy {
            return Err(Reason::Unhealthy(u));
        }
        if ctx.chosen.contains(&i) || ctx.excluded.contains(&i) {
            return Err(Reason::HoldsReplica);
        }
        let shares = |domain: fn(&crate::model::Server) -> usize| {
            ctx.chosen
                .iter()
                .any(|&c| domain(&self.inv.servers[c]) == domain(s))
        };
        if ctx.req.spread == Spread::Rack && shares(|x| x.rack) {
            return Err(Reason::SameRack);
        }
        if ctx.req.spread == Spread::Site && shares(|x| x.site) {
            return Err(Reason::SameSite);
        }
        if ctx.req.encrypted && !s.encryption_capable {
            return Err(Reason::NoEncryption);
        }
        let free = s.capacity.minus(&self.used[i]);
        if let Some(c) = ctx.req.per_replica.exceeds(&free) {
            return Err(Reason::Insufficient(c));
        }
        let same_rack = ctx
            .chosen
            .iter()
            .filter(|&&c| self.inv.servers[c].rack == s.rack)
            .count() as u64;
        let rack = &self.inv.racks[s.rack];
        let draw = rack.measured_watts
            + self.rack_watts[s.rack]
            + (same_rack + 1) * ctx.req.watts_per_replica;
        if draw > rack.power_budget_watts {
            return Err(Reason::RackPowerBudget);
        }
        Ok(())
    }

    /// Fast path: the first eligible server in strategy order that passes every filter.
    fn first_fit(&self, ctx: &Ctx<'_>) -> Option<usize> {
        let pass = |&(_, idx): &(u32, u32)| {
            let i = idx as usize;
            ctx.site_verdict[self.inv.servers[i].site].is_none() && self.check(i, ctx).is_ok()
        };
        match self.strategy {
            Strategy::Spread => self.order.iter().find(|e| pass(e)),
            Strategy::Pack => self.order.iter().rev().find(|e| pass(e)),
        }
        .map(|&(_, idx)| idx as usize)
    }

    /// Slow path: counts, per filter, the servers it removed. A site refused as a whole counts
    /// all its servers at once; the others are checked one by one.
    fn explain(&self, ctx: &Ctx<'_>) -> Vec<(Reason, usize)> {
        let mut counts = [0usize; Reason::COUNT];
        let mut example: [Option<Reason>; Reason::COUNT] = [None; Reason::COUNT];
        let mut tally = |r: Reason, n: usize| {
            counts[r.slot()] += n;
            example[r.slot()] = Some(r);
        };
        for (site, servers) in self.site_servers.iter().enumerate() {
            if let Some(r) = ctx.site_verdict[site] {
                tally(r, servers.len());
                continue;
            }
            for &i in servers {
                if let Err(r) = self.check(i, ctx) {
                    tally(r, 1);
                }
            }
        }
        let mut v: Vec<(Reason, usize)> = example
            .iter()
            .zip(counts)
            .filter_map(|(r, n)| r.map(|r| (r, n)))
            .collect();
        // Biggest cause first; ties in filter order, so the text is deterministic.
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    fn quota_check(&self, req: &Request, replicas: u64) -> Result<(), Refusal> {
        let Some(quota) = &req.tenant.quota else {
            return Ok(());
        };
        let in_use = self.tenant_used(&req.tenant.name);
        let want = req.per_replica.times(replicas);
        match in_use.plus(&want).exceeds(quota) {
            None => Ok(()),
            Some(class) => Err(Refusal::Quota {
                consumer: req.consumer.clone(),
                tenant: req.tenant.name.clone(),
                class,
                requested: want.get(class),
                in_use: in_use.get(class),
                quota: quota.get(class),
            }),
        }
    }

    /// Chooses servers for `indices` replicas, keeping the domains of `kept` servers.
    fn choose(
        &self,
        req: &Request,
        kept: Vec<usize>,
        excluded: Vec<usize>,
        indices: &[u8],
    ) -> Result<Vec<usize>, Refusal> {
        let mut ctx = Ctx {
            req,
            site_verdict: self.site_verdict(req),
            chosen: kept,
            excluded,
        };
        let mut picked = Vec::with_capacity(indices.len());
        for &replica in indices {
            match self.first_fit(&ctx) {
                Some(i) => {
                    ctx.chosen.push(i);
                    picked.push(i);
                }
                None => {
                    return Err(Refusal::NoFit {
                        consumer: req.consumer.clone(),
                        replica,
                        replicas: req.replicas,
                        total: self.inv.servers.len(),
                        removed: self.explain(&ctx),
                        jurisdictions: req.tenant.jurisdictions.join("/"),
                        min_tier: req.tenant.classification.min_security_tier(),
                    });
                }
            }
        }
        Ok(picked)
    }

    fn placement(&self, replica: u8, i: usize) -> Placement {
        let s = &self.inv.servers[i];
        Placement {
            replica,
            server: s.name.clone(),
            rack: self.inv.racks[s.rack].name.clone(),
            site: self.inv.sites[s.site].name.clone(),
            node: s.node.clone(),
            utilisation_ppm: self.keys[i],
        }
    }

    /// Decides without committing.
    pub fn plan(&self, req: &Request) -> Result<Decision, Refusal> {
        if self.allocations.contains_key(req.consumer.as_str()) {
            return Err(Refusal::Ledger {
                consumer: req.consumer.clone(),
                message: format!("{} is already placed; release it first", req.consumer),
            });
        }
        self.quota_check(req, u64::from(req.replicas))?;
        let indices: Vec<u8> = (0..req.replicas).collect();
        let picked = self.choose(req, Vec::new(), Vec::new(), &indices)?;
        let placements = picked
            .iter()
            .zip(indices)
            .map(|(&i, r)| self.placement(r, i))
            .collect();
        Ok(Decision {
            consumer: req.consumer.clone(),
            placements,
        })
    }

    /// Decides and commits all replicas, or nothing.
    pub fn place(&mut self, req: &Request) -> Result<Decision, Refusal> {
        let decision = self.plan(req)?;
        let slots = decision
            .placements
            .iter()
            .map(|p| Slot {
                server: self.inv.server_index[&p.server],
                resources: req.per_replica,
                watts: req.watts_per_replica,
            })
            .collect();
        self.commit(&req.consumer, &req.tenant.name, slots);
        Ok(decision)
    }

    /// Records an allocation that already exists (read from the cluster), even if it no longer
    /// fits: the ledger must reflect reality before anything new is placed.
    pub fn record(
        &mut self,
        consumer: &str,
        tenant: &str,
        slots: Vec<Slot>,
    ) -> Result<(), Refusal> {
        if self.allocations.contains_key(consumer) {
            return Err(Refusal::Ledger {
                consumer: consumer.to_owned(),
                message: format!("{consumer} is recorded twice"),
            });
        }
        self.commit(consumer, tenant, slots);
        Ok(())
    }

    fn add_slot(&mut self, tenant: &str, slot: &Slot) {
        let s = &self.inv.servers[slot.server];
        let (rack, site) = (s.rack, s.site);
        self.used[slot.server] = self.used[slot.server].plus(&slot.resources);
        self.rack_used[rack] = self.rack_used[rack].plus(&slot.resources);
        self.site_used[site] = self.site_used[site].plus(&slot.resources);
        self.rack_watts[rack] += slot.watts;
        let t = self.tenant_used.entry(tenant.to_owned()).or_default();
        *t = t.plus(&slot.resources);
        self.reindex(slot.server);
    }

    fn remove_slot(&mut self, tenant: &str, slot: &Slot) {
        let s = &self.inv.servers[slot.server];
        let (rack, site) = (s.rack, s.site);
        self.used[slot.server] = self.used[slot.server].minus(&slot.resources);
        self.rack_used[rack] = self.rack_used[rack].minus(&slot.resources);
        self.site_used[site] = self.site_used[site].minus(&slot.resources);
        self.rack_watts[rack] = self.rack_watts[rack].saturating_sub(slot.watts);
        if let Some(t) = self.tenant_used.get_mut(tenant) {
            *t = t.minus(&slot.resources);
            if t.is_zero() {
                self.tenant_used.remove(tenant);
            }
        }
        self.reindex(slot.server);
    }

    fn commit(&mut self, consumer: &str, tenant: &str, slots: Vec<Slot>) {
        for slot in &slots {
            self.add_slot(tenant, slot);
        }
        let tenant = if let Some(t) = self.tenant_names.get(tenant) {
            t.clone()
        } else {
            let t: Arc<str> = tenant.into();
            self.tenant_names.insert(t.clone());
            t
        };
        self.allocations
            .insert(consumer.into(), Allocation { tenant, slots });
    }

    /// Releases a consumer's allocation, restoring capacity exactly.
    pub fn release(&mut self, consumer: &str) -> Option<Allocation> {
        let alloc = self.allocations.remove(consumer)?;
        for slot in &alloc.slots {
            self.remove_slot(&alloc.tenant, slot);
        }
        Some(alloc)
    }

    /// Adds replicas to a consumer's allocation up to `req.replicas` (a scale-up), keeping the
    /// failure domains of the replicas it has; all the new ones or none. Returns the new
    /// placements (none when it already has as many).
    pub fn grow(&mut self, req: &Request) -> Result<Vec<Placement>, Refusal> {
        let alloc = self
            .allocations
            .get(req.consumer.as_str())
            .ok_or_else(|| Refusal::Ledger {
                consumer: req.consumer.clone(),
                message: format!("{} has no allocation to grow", req.consumer),
            })?;
        let have = alloc.slots.len();
        let tenant = alloc.tenant.clone();
        let kept: Vec<usize> = alloc.slots.iter().map(|s| s.server).collect();
        let indices: Vec<u8> = (have..usize::from(req.replicas))
            .filter_map(|i| u8::try_from(i).ok())
            .collect();
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        self.quota_check(req, indices.len() as u64)?;
        let picked = self.choose(req, kept, Vec::new(), &indices)?;
        let mut placements = Vec::with_capacity(picked.len());
        for (&i, &replica) in picked.iter().zip(&indices) {
            let slot = Slot {
                server: i,
                resources: req.per_replica,
                watts: req.watts_per_replica,
            };
            self.add_slot(&tenant, &slot);
            if let Some(a) = self.allocations.get_mut(req.consumer.as_str()) {
                a.slots.push(slot);
            }
            placements.push(self.placement(replica, i));
        }
        Ok(placements)
    }

    /// Drops a consumer's replicas from index `keep` on (a scale-down), restoring their
    /// capacity exactly. Returns how many were dropped.
    pub fn shrink(&mut self, consumer: &str, keep: usize) -> usize {
        let Some(alloc) = self.allocations.get_mut(consumer) else {
            return 0;
        };
        if alloc.slots.len() <= keep {
            return 0;
        }
        let tenant = alloc.tenant.clone();
        let dropped = alloc.slots.split_off(keep);
        for slot in &dropped {
            self.remove_slot(&tenant, slot);
        }
        dropped.len()
    }

    /// Moves one replica (its server failed or is being drained) within the same policy,
    /// keeping the other replicas where they are and their failure domains taken.
    pub fn replace(&mut self, req: &Request, replica: u8) -> Result<Placement, Refusal> {
        let ledger = |message: String| Refusal::Ledger {
            consumer: req.consumer.clone(),
            message,
        };
        let alloc = self
            .allocations
            .get(req.consumer.as_str())
            .cloned()
            .ok_or_else(|| ledger(format!("{} has no allocation to re-place", req.consumer)))?;
        let k = usize::from(replica);
        let old = alloc
            .slots
            .get(k)
            .cloned()
            .ok_or_else(|| ledger(format!("replica {replica} does not exist")))?;
        // The other replicas keep their failure domains taken; the old server itself is
        // excluded, but its rack and site are not (the replica is leaving them).
        let others: Vec<usize> = alloc
            .slots
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != k)
            .map(|(_, s)| s.server)
            .collect();
        self.remove_slot(&alloc.tenant, &old);
        let result = self.choose(req, others, vec![old.server], &[replica]);
        match result {
            Ok(picked) => {
                let new = Slot {
                    server: picked[0],
                    resources: old.resources,
                    watts: old.watts,
                };
                let placement = self.placement(replica, new.server);
                self.add_slot(&alloc.tenant, &new);
                if let Some(a) = self.allocations.get_mut(req.consumer.as_str()) {
                    a.slots[k] = new;
                }
                Ok(placement)
            }
            Err(refusal) => {
                self.add_slot(&alloc.tenant, &old);
                Err(refusal)
            }
        }
    }
}

fn site_servers(inv: &Inventory) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); inv.sites.len()];
    for (i, s) in inv.servers.iter().enumerate() {
        out[s.site].push(i);
    }
    out
}
