//! The operator's controllers: each a pure core (decide) and a thin shell (read from reflector
//! stores, apply with server-side apply under one field manager, patch status only when the
//! decision says it is worth it). Only the Lease holder writes; followers keep warm caches.

pub mod compute;
pub mod conditions;
pub mod hardware;
pub mod ledger;
pub mod materialise;
pub mod metrics;
pub mod moves;
pub mod pods;
pub mod rollup;
mod scale;
pub mod server_status;
pub mod storage;
pub mod tenant;
pub mod tenants;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use sovereign_crds::{Rack, Site};
use sovereign_telemetry::hub::Hub;
use thiserror::Error;

use tokio::sync::watch;

pub use metrics::ControllerMetrics;
pub use server_status::StatusPolicy;

/// FNV-1a: stable across processes, releases and toolchains (std's hasher is not), for names and
/// fingerprints that outlive the process.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Errors of one reconcile, by stage, each with a condition/Event reason and a metric label.
#[derive(Debug, Error)]
pub enum Error {
    #[error("object has no name")]
    NoName,
    #[error("writing status of {kind} {name}: {source}")]
    StatusWrite {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("tainting node {node}: {source}")]
    Taint {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {what}: {source}")]
    Delete {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("deletion waits for StorageVolumes to go: {}", .0.join(", "))]
    DeletionBlocked(Vec<String>),
    #[error(transparent)]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
    #[error("placement ledger: {0}")]
    Ledger(String),
    #[error("serialising status: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the Pod watch has not listed Pods yet (RBAC to list and watch Pods?)")]
    PodsNotListed,
    #[error(transparent)]
    Unpack(#[from] crate::packed::PackError),
}

impl Error {
    /// CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoName => "InvalidObject",
            Self::StatusWrite { .. } => "StatusWriteFailed",
            Self::Taint { .. } => "NodeTaintFailed",
            Self::Apply { .. } => "ApplyFailed",
            Self::Delete { .. } => "DeleteFailed",
            Self::DeletionBlocked(_) => "DeletionBlocked",
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.reason(),
                _ => "FinalizerFailed",
            },
            Self::Ledger(_) => "LedgerUnavailable",
            Self::Json(_) | Self::Unpack(_) => "InternalError",
            Self::PodsNotListed => "PodsNotListed",
        }
    }

    /// Label value for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoName => "invalid_object",
            Self::StatusWrite { .. } => "status_write",
            Self::Taint { .. } => "node_taint",
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::DeletionBlocked(_) => "deletion_blocked",
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.metric_label(),
                _ => "finalizer",
            },
            Self::Ledger(_) => "ledger",
            Self::Json(_) | Self::Unpack(_) => "internal",
            Self::PodsNotListed => "pods_not_listed",
        }
    }

    /// Expected waits (a tenant held by its volumes) are not failures worth a warning.
    pub fn is_wait(&self) -> bool {
        self.reason() == "DeletionBlocked"
    }

    /// A conflict or a vanished object: retry soon rather than back off long.
    fn is_conflict(&self) -> bool {
        match self {
            Self::StatusWrite {
                source: kube::Error::Api(s),
                ..
            }
            | Self::Taint {
                source: kube::Error::Api(s),
                ..
            }
            | Self::Apply {
                source: kube::Error::Api(s),
                ..
            } => s.code == 409,
            Self::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.is_conflict(),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Who may write: the Lease holder. `None` means leader election is off (a single replica).
#[derive(Clone, Debug)]
pub struct Leadership(Option<watch::Receiver<bool>>);

impl Leadership {
    /// Always leading (no election: one replica, or tests).
    pub fn always() -> Self {
        Self(None)
    }

    /// Following the lease manager's channel.
    pub fn from_lease(rx: watch::Receiver<bool>) -> Self {
        Self(Some(rx))
    }

    pub fn is_leader(&self) -> bool {
        self.0.as_ref().is_none_or(|rx| *rx.borrow())
    }

    /// A receiver of its own, to notice hand-overs (None: no election).
    pub fn subscribe(&self) -> Option<watch::Receiver<bool>> {
        self.0.clone()
    }
}

/// What every reconcile reads and writes through.
#[derive(Clone)]
pub struct Context {
    pub client: kube::Client,
    pub hub: Arc<Hub>,
    pub servers: Store<crate::packed::PackedServer>,
    pub racks: Store<Rack>,
    pub sites: Store<Site>,
    pub nodes: Arc<crate::node_taints::NodeIndex>,
    pub namespaces: Store<k8s_openapi::api::core::v1::Namespace>,
    /// Workloads, compact (see [`crate::workload_store`]): a reconcile unpacks the one it
    /// works on.
    pub volumes: crate::workload_store::WorkloadStore<sovereign_crds::StorageVolume>,
    pub instances: crate::workload_store::WorkloadStore<sovereign_crds::ComputeInstance>,
    pub tenants: Store<sovereign_crds::Tenant>,
    /// The instance controller's Pods (from its Pod watch).
    pub pods: Arc<pods::PodIndex>,
    pub ledger: Arc<ledger::Ledger>,
    pub moves: Arc<moves::MoveLimiter>,
    pub recorder: Recorder,
    pub metrics: Arc<ControllerMetrics>,
    pub policy: StatusPolicy,
    pub leader: Leadership,
    /// Statuses this process wrote that its stores have not shown yet.
    pub written: Arc<WrittenStatus<sovereign_crds::ServerStatus>>,
    pub written_racks: Arc<WrittenStatus<sovereign_crds::RackStatus>>,
    pub written_sites: Arc<WrittenStatus<sovereign_crds::SiteStatus>>,
    /// Digests of StorageVolume and ComputeInstance statuses written, as above.
    pub written_workloads: Arc<WrittenStatus<u64>>,
    /// When each rack's status was last written by this process.
    pub rack_writes: Arc<LastWrites>,
    /// When each tenant's status was last written by this process.
    pub tenant_writes: Arc<LastWrites>,
    /// Tenants whose namespaced objects are applied for their current spec.
    pub applied_tenants: Arc<tenants::AppliedTenants>,
}

/// The status last written per object, keyed by the resourceVersion the object had before the
/// write. Until the store shows a newer version, decisions compare against what was written,
/// not the store's stale copy: otherwise a sample arriving in that window writes the same
/// "first status" or condition change again (the fleet bench counted 1,570 first statuses for
/// 1,000 servers; a rack was rewritten every few seconds on a 5,000-server fleet). An entry
/// lives only for the store's lag: it goes when read against a newer version, or when older
/// than [`WRITTEN_LAG`] (a workload is often not reconciled again after its last write, and
/// 20,000 of them kept 2.7 MB of entries nobody would read).
#[derive(Debug)]
pub struct WrittenStatus<S>(std::sync::Mutex<Written<S>>);

/// How long a store may lag behind a write this process made (it is usually milliseconds;
/// an entry dropped early costs at most one redundant write).
pub const WRITTEN_LAG: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug)]
pub struct Written<S> {
    entries: std::collections::HashMap<String, (String, S, std::time::Instant)>,
    /// Entries are swept when there are this many (twice what the last sweep left): amortised
    /// O(1) per write.
    sweep_at: usize,
    lag: std::time::Duration,
}

impl<S> Default for WrittenStatus<S> {
    fn default() -> Self {
        Self::with_lag(WRITTEN_LAG)
    }
}

impl<S> WrittenStatus<S> {
    /// Entries kept for `lag` at most.
    pub fn with_lag(lag: std::time::Duration) -> Self {
        Self(std::sync::Mutex::new(Written {
            entries: std::collections::HashMap::new(),
            sweep_at: 64,
            lag,
        }))
    }
}

impl<S: Clone> WrittenStatus<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Written<S>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What to decide against: the written status while the store still shows the version the
    /// write replaced, else nothing (the store is current; its entry is dropped).
    pub fn pending(&self, name: &str, store_version: Option<&str>) -> Option<S> {
        let mut w = self.lock();
        match w.entries.get(name) {
            Some((before, status, at))
                if Some(before.as_str()) == store_version && at.elapsed() < w.lag =>
            {
                Some(status.clone())
            }
            Some(_) => {
                w.entries.remove(name);
                None
            }
            None => None,
        }
    }

    /// Records a status written over the object at `before` (its resourceVersion then).
    pub fn record(&self, name: &str, before: Option<&str>, status: &S) {
        let Some(before) = before else { return };
        let mut w = self.lock();
        let now = std::time::Instant::now();
        w.entries
            .insert(name.to_owned(), (before.to_owned(), status.clone(), now));
        if w.entries.len() >= w.sweep_at {
            let lag = w.lag;
            w.entries
                .retain(|_, (_, _, at)| now.duration_since(*at) < lag);
            w.entries.shrink_to_fit();
            w.sweep_at = (w.entries.len() * 2).max(64);
        }
    }

    /// Entries held (for tests).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A namespaced object the controllers read and write through the API (workloads, tenants'
/// children).
pub trait Namespaced:
    kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
{
}

/// When objects were last written (in memory: after a restart the first change is written).
#[derive(Debug, Default)]
pub struct LastWrites(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl LastWrites {
    /// How long until `every` has passed since `name` was last written; None when it has.
    pub fn too_soon(&self, name: &str, every: std::time::Duration) -> Option<std::time::Duration> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = map.get(name)?.elapsed();
        every.checked_sub(since).filter(|left| !left.is_zero())
    }

    pub fn wrote(&self, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), std::time::Instant::now());
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("servers", &self.servers.len())
            .field("leader", &self.leader.is_leader())
            .finish_non_exhaustive()
    }
}

/// The Event reporter of this process.
pub fn reporter() -> Reporter {
    Reporter {
        controller: crate::FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// Retry after an error: soon for conflicts (someone else wrote first), else 5 s plus up to
/// 5 s of jitter so a burst of failures (API server restart) does not come back in lockstep.
pub fn backoff(error: &Error) -> Action {
    if error.is_conflict() {
        return Action::requeue(Duration::from_millis(200 + fastrand::u64(0..300)));
    }
    Action::requeue(Duration::from_millis(5_000 + fastrand::u64(0..5_000)))
}

#[cfg(test)]
mod written_tests {
    use super::WrittenStatus;
    use sovereign_crds::{Health, ServerStatus};
    use std::time::Duration;

    #[test]
    fn a_write_stands_in_for_the_store_until_the_store_shows_it() {
        let w = WrittenStatus::default();
        let status = ServerStatus {
            health: Health::Ok,
            ..ServerStatus::default()
        };
        w.record("s1", Some("100"), &status);
        // The store still has the version our write replaced: decide against the write.
        assert_eq!(w.pending("s1", Some("100")), Some(status.clone()));
        // The store caught up (a newer version): the store wins, and the entry is gone.
        assert_eq!(w.pending("s1", Some("101")), None);
        assert_eq!(w.pending("s1", Some("100")), None);
        assert_eq!(w.pending("other", Some("1")), None);
    }

    #[test]
    fn entries_nobody_reads_again_do_not_accumulate() {
        let w = WrittenStatus::<u64>::with_lag(Duration::ZERO);
        for i in 0..10_000_u64 {
            w.record(&format!("workload-{i}"), Some("1"), &i);
        }
        assert!(w.len() < 64, "{} entries held", w.len());
        w.record("x", Some("1"), &1);
        assert_eq!(
            w.pending("x", Some("1")),
            None,
            "past the lag it is not trusted"
        );

        let kept = WrittenStatus::<u64>::default();
        for i in 0..1_000_u64 {
            kept.record(&format!("workload-{i}"), Some("1"), &i);
        }
        assert_eq!(kept.len(), 1_000, "within the lag every entry is kept");
    }
}
