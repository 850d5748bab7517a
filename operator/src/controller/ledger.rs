//! The process-wide placement ledger: the placement engine's capacity books, built from the
//! cluster (Sites, Racks, Servers, Tenants, and every StorageVolume's and ComputeInstance's
//! `status.replicas`) and kept current. Crash safety comes from the order of the shells: a
//! placement is written to the object's status before anything is materialised, so a restarted
//! operator rebuilds the same books from the API and resumes instead of placing again.
//!
//! Rebuilt when the inventory changes (any Server, Rack, Site or Tenant resourceVersion); the
//! operator's own placements are kept as pending until the watch shows them in status, so a
//! rebuild in between never forgets them (that would count capacity as free twice).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kube::Resource as _;
use sovereign_placement::from_crds::{self, HealthPolicy, PowerModel, TenantPolicyWithNamespaces};
use sovereign_placement::{CapacityPolicy, Decision, Placer, Refusal, Request, Slot, Strategy};

use super::Context;

/// How placements are made (operator flags).
#[derive(Clone, Debug)]
pub struct LedgerOptions {
    pub strategy: Strategy,
    pub capacity: CapacityPolicy,
    pub power: PowerModel,
    /// Telemetry older than this makes a server unschedulable for placement.
    pub stale_after_seconds: i64,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            strategy: Strategy::Spread,
            capacity: CapacityPolicy::default(),
            power: PowerModel::default(),
            stale_after_seconds: 300,
        }
    }
}

#[derive(Debug)]
struct Pending {
    tenant: String,
    servers: Vec<String>,
    request: Request,
}

#[derive(Debug, Default)]
struct State {
    placer: Option<Placer>,
    /// `inventory_changes` when the books were last checked against the inventory.
    fingerprint: u64,
    tenants: Vec<TenantPolicyWithNamespaces>,
    pending: HashMap<String, Pending>,
    /// The lease's channel as this ledger last saw it (None: no election, or not built yet).
    leadership: Option<tokio::sync::watch::Receiver<bool>>,
    /// A workload watch re-listed: deletions it missed are not in the books' past events, so
    /// the next change rebuilds them from the stores.
    relisted: bool,
}

/// The ledger; one per process, used by the leader only.
#[derive(Debug)]
pub struct Ledger {
    state: Mutex<State>,
    pub options: LedgerOptions,
    /// Bumped by the Server, Rack, Site and Tenant watches on every event (after their stores
    /// show it): whether the inventory may have changed, in O(1). Hashing every name and
    /// version instead cost each placement O(fleet) — at 5,000 servers 40 % of the operator's
    /// CPU in a burst, taken from the API server on a small control plane.
    inventory_changes: AtomicU64,
}

/// What a workload asks of the ledger.
#[derive(Clone, Copy, Debug)]
pub enum Workload<'a> {
    Volume(&'a sovereign_crds::StorageVolume),
    Instance(&'a sovereign_crds::ComputeInstance),
}

impl Workload<'_> {
    fn request(
        self,
        tenants: &[TenantPolicyWithNamespaces],
        power: &PowerModel,
    ) -> Result<Request, from_crds::ConvertError> {
        match self {
            Self::Volume(v) => from_crds::volume_request(v, tenants, power),
            Self::Instance(c) => from_crds::instance_request(c, tenants, power),
        }
    }

    fn servers(self) -> Vec<String> {
        match self {
            Self::Volume(v) => v
                .status
                .as_ref()
                .map(|s| s.replicas.iter().map(|r| r.server.clone()).collect())
                .unwrap_or_default(),
            Self::Instance(c) => c
                .status
                .as_ref()
                .map(|s| s.replicas.iter().map(|r| r.server.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// The ledger's name for it (kind/namespace/name).
    pub fn consumer(self) -> String {
        match self {
            Self::Volume(v) => from_crds::consumer("StorageVolume", &v.metadata),
            Self::Instance(c) => from_crds::consumer("ComputeInstance", &c.metadata),
        }
    }
}

/// A workload watch event the ledger follows.
#[derive(Clone, Copy, Debug)]
pub enum Followed<'a> {
    /// A workload, by its consumer name (kind/namespace/name).
    Deleted(&'a str),
    Relisted,
}

/// Why the ledger could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("building the inventory: {0}")]
    Inventory(String),
    #[error("{0}")]
    Request(String),
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` takes
fn unreadable(e: crate::packed::PackError) -> LedgerError {
    LedgerError::Inventory(e.to_string())
}

fn slots(placer: &Placer, req: &Request, servers: &[String]) -> Option<Vec<Slot>> {
    servers
        .iter()
        .map(|name| {
            placer.inventory().server_by_name(name).map(|server| Slot {
                server,
                resources: req.per_replica,
                watts: req.watts_per_replica,
            })
        })
        .collect()
}

/// Forgets pending decisions the watch now shows in status (a rebuild would read them there).
fn prune_pending(ctx: &Context, state: &mut State) {
    state.pending.retain(|consumer, p| {
        let mut parts = consumer.splitn(3, '/');
        let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let spots = |s: &[crate::packed::Spot]| -> Vec<String> {
            s.iter().map(|s| s.server.to_string()).collect()
        };
        let shown = match kind {
            "StorageVolume" => ctx.volumes.get(ns, name).map(|v| spots(v.spots())),
            "ComputeInstance" => ctx.instances.get(ns, name).map(|c| spots(c.spots())),
            _ => None,
        };
        shown.as_ref() != Some(&p.servers)
    });
}

/// Holds a consumer's allocation as pending until the watch shows its status with the same
/// servers (a rebuild in between must not forget a change only this process knows).
fn hold(state: &mut State, request: Request) {
    let Some(placer) = state.placer.as_ref() else {
        return;
    };
    let servers: Vec<String> = placer
        .allocation(&request.consumer)
        .map(|a| {
            a.slots
                .iter()
                .map(|s| placer.inventory().servers[s.server].name.clone())
                .collect()
        })
        .unwrap_or_default();
    state.pending.insert(
        request.consumer.clone(),
        Pending {
            tenant: request.tenant.name.clone(),
            servers,
            request,
        },
    );
}

impl Ledger {
    pub fn new(options: LedgerOptions) -> Self {
        Self {
            state: Mutex::new(State::default()),
            options,
            inventory_changes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Rebuilds the books when what placement reads (the inventory: servers' capacity, health
    /// and racks' power; the tenants' policies) changed since the last build, or leadership
    /// changed hands (another leader may have placed meanwhile). Status writes that change
    /// nothing placement reads (a heartbeat, the allocation this ledger published, a tenant's
    /// usage) only move the fingerprint: rebuilding on each of them made every placement
    /// re-read every workload.
    fn refresh(&self, ctx: &Context, state: &mut State) -> Result<(), LedgerError> {
        if state.placer.is_none() {
            state.leadership = ctx.leader.subscribe();
        }
        let handed_over = state.leadership.as_mut().is_some_and(|rx| {
            let changed = rx.has_changed().unwrap_or(false);
            rx.mark_unchanged();
            changed
        });
        let handed_over = handed_over || std::mem::take(&mut state.relisted);
        // Read before the stores: a change landing while the books are built is seen next time.
        let fp = self.inventory_changes.load(Ordering::Acquire);
        if state.placer.is_some() && fp == state.fingerprint && !handed_over {
            prune_pending(ctx, state);
            return Ok(());
        }
        let now_unix = k8s_openapi::jiff::Timestamp::now().as_second();
        let health = HealthPolicy {
            now_unix,
            stale_after_seconds: self.options.stale_after_seconds,
            assume_healthy_without_telemetry: false,
        };
        let inventory = from_crds::inventory_of(
            &ctx.sites.state(),
            &ctx.racks.state(),
            ctx.servers
                .state()
                .iter()
                .map(|s| (s.meta().name.as_deref().unwrap_or_default(), s.brief())),
            &self.options.capacity,
            &health,
        )
        .map_err(|e| LedgerError::Inventory(e.to_string()))?;
        let tenants = from_crds::tenants(&ctx.tenants.state())
            .map_err(|e| LedgerError::Inventory(e.to_string()))?;
        let unchanged = state
            .placer
            .as_ref()
            .is_some_and(|p| *p.inventory() == inventory && state.tenants == tenants);
        if unchanged && !handed_over {
            state.fingerprint = fp;
            prune_pending(ctx, state);
            return Ok(());
        }
        // The old books go before the new ones are built: both at once doubled the ledger's
        // memory at each rebuild (20,000 workloads: ~10 MB more at the operator's peak).
        state.placer = None;
        let mut placer = Placer::new(inventory, self.options.strategy);
        let mut recorded = std::collections::HashSet::new();
        // Unpacked one at a time: the books are all that is kept of each.
        let mut book = |consumer: String, servers: Vec<String>, w: Option<Workload<'_>>| {
            // Our own newer decision (a placement or a move) wins until the watch shows it.
            if let Some(p) = state.pending.get(&consumer) {
                if p.servers != servers {
                    return;
                }
                state.pending.remove(&consumer);
            }
            // Not placed: holds nothing.
            let Some(w) = w.filter(|_| !servers.is_empty()) else {
                return;
            };
            let Ok(req) = w.request(&tenants, &self.options.power) else {
                return;
            };
            match slots(&placer, &req, &servers) {
                Some(s) => {
                    let _ = placer.record(&req.consumer, &req.tenant.name, s);
                    recorded.insert(req.consumer.clone());
                }
                None => {
                    tracing::warn!(consumer = %req.consumer, ?servers, "replica on a server not in the inventory; not counted");
                }
            }
        };
        // A workload with no replicas is not unpacked.
        for v in ctx.volumes.state() {
            if v.spots().is_empty() {
                book(v.consumer(), Vec::new(), None);
            } else {
                let v = v.unpack().map_err(unreadable)?;
                let w = Workload::Volume(&v);
                book(w.consumer(), w.servers(), Some(w));
            }
        }
        for c in ctx.instances.state() {
            if c.spots().is_empty() {
                book(c.consumer(), Vec::new(), None);
            } else {
                let c = c.unpack().map_err(unreadable)?;
                let w = Workload::Instance(&c);
                book(w.consumer(), w.servers(), Some(w));
            }
        }
        // Our own placements the watch has not shown yet.
        state
            .pending
            .retain(|consumer, _| !recorded.contains(consumer));
        for (consumer, p) in &state.pending {
            if let Some(s) = slots(&placer, &p.request, &p.servers) {
                let _ = placer.record(consumer, &p.tenant, s);
            }
        }
        state.placer = Some(placer);
        state.tenants = tenants;
        state.fingerprint = fp;
        Ok(())
    }

    /// Runs one change of a workload's allocation on fresh books: `change` answers and says
    /// whether the books changed; a change is held as pending until the caller's status write
    /// shows up in the watch.
    fn change<T>(
        &self,
        ctx: &Context,
        w: Workload<'_>,
        change: impl FnOnce(&mut Placer, &Request) -> (T, bool),
    ) -> Result<T, LedgerError> {
        let mut state = self.lock();
        self.refresh(ctx, &mut state)?;
        let req = w
            .request(&state.tenants, &self.options.power)
            .map_err(|e| LedgerError::Request(e.to_string()))?;
        let Some(placer) = state.placer.as_mut() else {
            return Err(LedgerError::Inventory("no inventory".into()));
        };
        let (answer, changed) = change(placer, &req);
        if changed {
            hold(&mut state, req);
        }
        Ok(answer)
    }

    /// Places a workload that has no replicas yet, or says why not.
    pub fn place(
        &self,
        ctx: &Context,
        w: Workload<'_>,
    ) -> Result<Result<Decision, Refusal>, LedgerError> {
        self.change(ctx, w, |placer, req| {
            // Already in the books (a status write that failed after placing): place afresh.
            placer.release(&req.consumer);
            let decision = placer.place(req);
            let placed = decision.is_ok();
            (decision, placed)
        })
    }

    /// Moves one replica off its server within the same policy (residency, tier, spread,
    /// capacity): the new server, or why none qualifies (then nothing changes).
    pub fn replace(
        &self,
        ctx: &Context,
        w: Workload<'_>,
        replica: u8,
    ) -> Result<Result<sovereign_placement::Placement, Refusal>, LedgerError> {
        self.change(ctx, w, |placer, req| {
            let moved = placer.replace(req, replica);
            let changed = moved.is_ok();
            (moved, changed)
        })
    }

    /// Adds replicas to the `have` the status records, up to the spec's count, within the same
    /// policy and keeping the others' failure domains: the new placements, or why not. Replicas
    /// the books hold beyond `have` (a grow whose status write failed) are dropped first, so a
    /// retry places afresh instead of holding capacity no status names.
    pub fn grow(
        &self,
        ctx: &Context,
        w: Workload<'_>,
        have: usize,
    ) -> Result<Result<Vec<sovereign_placement::Placement>, Refusal>, LedgerError> {
        self.change(ctx, w, |placer, req| {
            let dropped = placer.shrink(&req.consumer, have) > 0;
            let grown = placer.grow(req);
            let changed = dropped || grown.is_ok();
            (grown, changed)
        })
    }

    /// Gives back the capacity of replicas from index `keep` on (their children are gone).
    pub fn shrink(&self, ctx: &Context, w: Workload<'_>, keep: usize) -> Result<(), LedgerError> {
        self.change(ctx, w, |placer, req| {
            ((), placer.shrink(&req.consumer, keep) > 0)
        })
    }

    /// Gives a workload's capacity back (deleted, or its status write was refused).
    pub fn release(&self, consumer: &str) {
        let mut state = self.lock();
        state.pending.remove(consumer);
        if let Some(p) = state.placer.as_mut() {
            p.release(consumer);
        }
    }

    /// An inventory object (Server, Rack, Site, Tenant) changed in its store.
    pub fn inventory_changed(&self) {
        self.inventory_changes.fetch_add(1, Ordering::Release);
    }

    /// Follows a workload watch (after its store shows the event): a deleted workload's
    /// capacity is given back — ComputeInstances carry no finalizer, their Pods go by garbage
    /// collection — and a re-list, which may have dropped deletions it never reported, makes
    /// the next change rebuild the books from the stores.
    pub fn follow(&self, event: Followed<'_>) {
        match event {
            Followed::Deleted(consumer) => self.release(consumer),
            Followed::Relisted => self.lock().relisted = true,
        }
    }

    /// What is allocated on one server (None before the first build or for an unknown server).
    pub fn server_used(&self, server: &str) -> Option<sovereign_placement::Resources> {
        let state = self.lock();
        let placer = state.placer.as_ref()?;
        placer
            .inventory()
            .server_by_name(server)
            .map(|i| placer.used(i))
    }

    /// Capacity used per tenant, for Tenant status (None before the first build).
    pub fn tenant_used(&self, tenant: &str) -> Option<sovereign_placement::Resources> {
        let state = self.lock();
        state.placer.as_ref().map(|p| p.tenant_used(tenant))
    }

    /// Consumers in the books (for the crash test's balance check).
    pub fn consumers(&self) -> Vec<String> {
        let state = self.lock();
        state
            .placer
            .as_ref()
            .map(|p| p.allocations().map(|(c, _)| c.to_owned()).collect())
            .unwrap_or_default()
    }
}
