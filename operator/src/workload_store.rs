//! Workloads held compact, and the staging store their controllers run on.
//!
//! kube-runtime's reflector `Store` keeps each object behind an `Arc` with an `ObjectMeta` (360
//! bytes even with only a name set) and a key of its own strings: about 900 bytes a workload
//! even packed, the largest part of the operator's memory at 20,000 workloads. Here a workload
//! is a [`Compact`]: `namespace/name`, packed JSON and where its replicas are.
//!
//! The workload controllers still run on kube-runtime's `applier` (scheduler, debounce,
//! concurrency, backoff), which reads objects from a `Store`: a *staging* one. A trigger copies
//! its workload in before the request reaches the scheduler ([`WorkloadStore::stage`]); a
//! reconcile that settles (`await_change`) with no trigger since it began takes it out again
//! ([`WorkloadStore::settled`]); one that fails or asks to be requeued leaves it in. Only
//! workloads with work pending are held whole.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::{SinkExt as _, StreamExt as _};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use sovereign_telemetry::cluster::readable;

use crate::packed::{Compact, Packed, PackedWorkload};

/// A subscriber's feed of workloads to look at: each one applied (created or changed), and all
/// of them after each (re)list. Deletions are not fed (see [`Observed`]).
pub type Subscription<K> = futures::channel::mpsc::Receiver<ObjectRef<Packed<K>>>;

/// What the watch tells a book-keeper once the store shows it.
#[derive(Debug)]
pub enum Observed<'a, K: PackedWorkload> {
    Deleted(&'a Compact<K>),
    Relisted,
}

/// References queued per subscription before the watch waits for its reader.
const BUFFER: usize = 1024;

/// A held workload, found by its `namespace/name`.
struct Entry<K: PackedWorkload>(Arc<Compact<K>>);

impl<K: PackedWorkload> Borrow<str> for Entry<K> {
    fn borrow(&self) -> &str {
        self.0.id()
    }
}

impl<K: PackedWorkload> Hash for Entry<K> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.id().hash(h);
    }
}

impl<K: PackedWorkload> PartialEq for Entry<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl<K: PackedWorkload> Eq for Entry<K> {}

struct Inner<K: PackedWorkload> {
    held: HashSet<Entry<K>>,
    /// Staged workloads and the trigger that staged each last.
    staged: HashMap<Box<str>, u64>,
    triggers: u64,
    staging: Writer<Packed<K>>,
}

/// Staged workloads below which a staging store grown by a burst is rebuilt to their size.
const SPARSE: usize = 4096;

impl<K: PackedWorkload> Inner<K> {
    fn unstage(&mut self, id: &str) {
        if self.staged.remove(id).is_some() {
            let (ns, name) = id.split_once('/').unwrap_or(("", id));
            self.staging
                .apply_watcher_event(&watcher::Event::Delete(Packed::named(ns, name)));
            self.shrink_if_sparse();
        }
    }

    /// Hash tables keep the size a burst gave them (thousands of workloads staged at once):
    /// once an eighth of that is left, the staging store is re-listed from what is staged (a
    /// fresh table) and the trigger index shrunk. Amortised: it takes another burst to grow
    /// them again.
    fn shrink_if_sparse(&mut self) {
        let capacity = self.staged.capacity();
        if capacity < SPARSE || self.staged.len() > capacity / 8 {
            return;
        }
        self.staged.shrink_to_fit();
        self.staging.apply_watcher_event(&watcher::Event::Init);
        for id in self.staged.keys() {
            if let Some(held) = self.held.get(&**id) {
                self.staging
                    .apply_watcher_event(&watcher::Event::InitApply(held.0.to_packed()));
            }
        }
        self.staging.apply_watcher_event(&watcher::Event::InitDone);
    }
}

/// Every workload of kind `K`, compact (see the module's docs).
pub struct WorkloadStore<K: PackedWorkload> {
    inner: Arc<RwLock<Inner<K>>>,
    staging: Store<Packed<K>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<K: PackedWorkload> std::fmt::Debug for WorkloadStore<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadStore")
            .field("kind", &K::kind(&()))
            .field("held", &self.len())
            .field("staged", &self.staged_len())
            .finish()
    }
}

impl<K: PackedWorkload> Clone for WorkloadStore<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            staging: self.staging.clone(),
            ready: self.ready.clone(),
        }
    }
}

fn id_of<K>(r: &ObjectRef<K>) -> String
where
    K: kube::Resource,
{
    format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name)
}

impl<K: PackedWorkload> WorkloadStore<K> {
    /// An empty store; `ready` tells when its first list is in.
    fn new(ready: tokio::sync::watch::Receiver<bool>) -> Self {
        let mut staging = Writer::default();
        // The staging store is complete from the start: what is not in it has no work pending.
        staging.apply_watcher_event(&watcher::Event::Init);
        staging.apply_watcher_event(&watcher::Event::InitDone);
        Self {
            staging: staging.as_reader(),
            inner: Arc::new(RwLock::new(Inner {
                held: HashSet::new(),
                staged: HashMap::new(),
                triggers: 0,
                staging,
            })),
            ready,
        }
    }

    /// A store holding `objects`, as if listed (tests and benches: no watch).
    pub fn listed(objects: impl IntoIterator<Item = Packed<K>>) -> Self {
        let store = Self::new(tokio::sync::watch::channel(true).1);
        let mut relist = None;
        let mut ignore = |_: Observed<'_, K>| {};
        store.apply(watcher::Event::Init, &mut relist, &mut ignore);
        for o in objects {
            store.apply(watcher::Event::InitApply(o), &mut relist, &mut ignore);
        }
        store.apply(watcher::Event::InitDone, &mut relist, &mut ignore);
        store
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner<K>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner<K>> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the first complete list.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Compact<K>>> {
        let id = format!("{namespace}/{name}");
        self.read().held.get(id.as_str()).map(|e| e.0.clone())
    }

    /// Every workload held.
    pub fn state(&self) -> Vec<Arc<Compact<K>>> {
        self.read().held.iter().map(|e| e.0.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.read().held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the controller's applier reads: the workloads with work pending.
    pub fn staging(&self) -> Store<Packed<K>> {
        self.staging.clone()
    }

    /// Copies the workload `r` names into the staging store before its request is queued;
    /// false when it is not held (deleted: nothing to reconcile).
    pub fn stage(&self, r: &ObjectRef<Packed<K>>) -> bool {
        let id = id_of(r);
        let mut inner = self.write();
        let Some(held) = inner.held.get(id.as_str()).map(|e| e.0.clone()) else {
            return false;
        };
        inner.triggers += 1;
        let trigger = inner.triggers;
        inner.staged.insert(id.into_boxed_str(), trigger);
        inner
            .staging
            .apply_watcher_event(&watcher::Event::Apply(held.to_packed()));
        true
    }

    /// The trigger that staged `obj` last (read when its reconcile begins).
    pub fn trigger_of(&self, obj: &Packed<K>) -> Option<u64> {
        let id = id_of(&ObjectRef::from(obj));
        self.read().staged.get(id.as_str()).copied()
    }

    /// A reconcile of `obj` begun after `trigger` settled: unless another trigger staged it
    /// since (its request is queued), it leaves the staging store.
    pub fn settled(&self, obj: &Packed<K>, trigger: u64) {
        let id = id_of(&ObjectRef::from(obj));
        let mut inner = self.write();
        if inner.staged.get(id.as_str()) == Some(&trigger) {
            inner.unstage(&id);
        }
    }

    /// Workloads staged now (tests and benches).
    pub fn staged_len(&self) -> usize {
        self.read().staged.len()
    }

    /// Applies one watch event; returns the workloads subscribers must look at.
    fn apply(
        &self,
        event: watcher::Event<Packed<K>>,
        relist: &mut Option<HashSet<Entry<K>>>,
        observe: &mut impl FnMut(Observed<'_, K>),
    ) -> Vec<Arc<Compact<K>>> {
        match event {
            watcher::Event::Init => {
                *relist = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(p) => {
                relist
                    .get_or_insert_with(HashSet::new)
                    .replace(Entry(Arc::new(Compact::new(p))));
                Vec::new()
            }
            watcher::Event::InitDone => {
                let all: Vec<Arc<Compact<K>>> = {
                    let mut inner = self.write();
                    inner.held = relist.take().unwrap_or_default();
                    let gone: Vec<Box<str>> = inner
                        .staged
                        .keys()
                        .filter(|id| !inner.held.contains(&***id))
                        .cloned()
                        .collect();
                    for id in gone {
                        inner.unstage(&id);
                    }
                    inner.held.iter().map(|e| e.0.clone()).collect()
                };
                observe(Observed::Relisted);
                all
            }
            watcher::Event::Apply(p) => {
                let c = Arc::new(Compact::new(p));
                self.write().held.replace(Entry(c.clone()));
                vec![c]
            }
            watcher::Event::Delete(p) => {
                let c = Compact::new(p);
                {
                    let mut inner = self.write();
                    inner.held.remove(c.id());
                    inner.unstage(c.id());
                }
                observe(Observed::Deleted(&c));
                Vec::new()
            }
        }
    }
}

/// Watches every workload of kind `K` into a [`WorkloadStore`], with `N` subscriptions (each
/// must be read, or the watch waits for it once its buffer is full). `observe` sees deletions
/// and re-lists once the store shows them. Objects that do not decode are left out with a
/// warning (see `sovereign_telemetry::cluster::readable`).
pub fn watch<K: PackedWorkload, const N: usize>(
    client: kube::Client,
    what: &'static str,
    mut observe: impl FnMut(Observed<'_, K>) + Send + 'static,
) -> (WorkloadStore<K>, [Subscription<K>; N]) {
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let store = WorkloadStore::new(ready_rx);
    let mut senders = Vec::with_capacity(N);
    let subscriptions = std::array::from_fn(|_| {
        let (tx, rx) = futures::channel::mpsc::channel(BUFFER);
        senders.push(tx);
        rx
    });
    let api = Api::<DeserializeGuard<Packed<K>>>::all(client);
    let held = store.clone();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut relist = None;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, watch = what, "watch error; retrying");
                    continue;
                }
            };
            let held_copy = |r: &ObjectRef<Packed<K>>| {
                held.get(r.namespace.as_deref().unwrap_or_default(), &r.name)
                    .map(|c| c.to_packed())
            };
            let Some(event) = readable(event, held_copy, what) else {
                continue;
            };
            let relisted = matches!(event, watcher::Event::InitDone);
            let touched = held.apply(event, &mut relist, &mut observe);
            if relisted {
                let _ = ready_tx.send(true);
            }
            for c in touched {
                let r = c.object_ref();
                for tx in &mut senders {
                    // A reader gone (its controller stopped) is skipped.
                    let _ = tx.send(r.clone()).await;
                }
            }
        }
    });
    (store, subscriptions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sovereign_crds::StorageVolume;

    fn volume(name: &str, server: &str) -> Packed<StorageVolume> {
        serde_json::from_value(json!({
            "apiVersion": "sovereign.io/v1alpha1", "kind": "StorageVolume",
            "metadata": {"name": name, "namespace": "t", "resourceVersion": "1"},
            "spec": {"size": "1Gi", "tier": "ssd"},
            "status": {"phase": "Bound", "replicas": [{"index": 0, "server": server, "rack": "r1", "site": "x", "state": "Ready"}]}
        }))
        .unwrap()
    }

    #[test]
    fn holds_workloads_compact_and_stages_only_those_with_work_pending() {
        let store = WorkloadStore::listed([volume("a", "s1"), volume("b", "s2")]);
        assert_eq!(store.len(), 2);
        let a = store.get("t", "a").unwrap();
        assert_eq!(&*a.spots()[0].server, "s1");
        assert_eq!(
            a.unpack().unwrap().metadata.resource_version.as_deref(),
            Some("1")
        );
        assert!(
            store.staging().is_empty(),
            "nothing staged before a trigger"
        );

        let r = a.object_ref();
        assert!(store.stage(&r));
        let staged = store.staging().get(&r).unwrap();
        let trigger = store.trigger_of(&staged).unwrap();
        assert_eq!(staged.unpack().unwrap(), a.unpack().unwrap());
        store.settled(&staged, trigger);
        assert!(
            store.staging().is_empty(),
            "settled: out of the staging store"
        );
        assert!(
            !store.stage(&ObjectRef::new("gone").within("t")),
            "not held: not staged"
        );
    }

    #[test]
    fn a_trigger_during_a_reconcile_keeps_the_workload_staged_for_the_next_one() {
        let store = WorkloadStore::listed([volume("a", "s1")]);
        let r = store.get("t", "a").unwrap().object_ref();
        store.stage(&r);
        let first = store.staging().get(&r).unwrap();
        let began = store.trigger_of(&first).unwrap();
        // A change arrives while the first reconcile runs: its request waits in the queue.
        let mut relist = None;
        store.apply(
            watcher::Event::Apply(volume("a", "s9")),
            &mut relist,
            &mut |_| {},
        );
        store.stage(&r);
        store.settled(&first, began);
        let second = store
            .staging()
            .get(&r)
            .expect("still staged for the queued request");
        assert_eq!(&*second.spots()[0].server, "s9", "the latest version");
        let began = store.trigger_of(&second).unwrap();
        store.settled(&second, began);
        assert_eq!(store.staged_len(), 0);
    }

    #[test]
    fn a_staging_store_grown_by_a_burst_is_rebuilt_once_mostly_settled() {
        let n = 2 * SPARSE;
        let store = WorkloadStore::listed((0..n).map(|i| volume(&format!("v{i}"), "s1")));
        let refs: Vec<_> = store.state().iter().map(|c| c.object_ref()).collect();
        for r in &refs {
            assert!(store.stage(r));
        }
        let grown = store.read().staged.capacity();
        // All but a few settle; those few stay readable throughout.
        for r in &refs[10..] {
            let staged = store.staging().get(r).unwrap();
            let trigger = store.trigger_of(&staged).unwrap();
            store.settled(&staged, trigger);
        }
        assert_eq!(store.staged_len(), 10);
        assert!(store.read().staged.capacity() < grown / 8, "shrunk");
        for r in &refs[..10] {
            let staged = store
                .staging()
                .get(r)
                .expect("still staged after the rebuild");
            assert!(store.trigger_of(&staged).is_some());
        }
        assert_eq!(store.staging().len(), 10);
    }

    #[test]
    fn deletions_and_relists_drop_held_and_staged_copies_and_are_observed() {
        let store = WorkloadStore::listed([volume("a", "s1"), volume("b", "s1")]);
        store.stage(&ObjectRef::new("a").within("t"));
        store.stage(&ObjectRef::new("b").within("t"));
        let mut seen = Vec::new();
        let mut relist = None;
        let mut observe = |o: Observed<'_, StorageVolume>| {
            seen.push(match o {
                Observed::Deleted(c) => c.consumer(),
                Observed::Relisted => "relisted".to_owned(),
            });
        };
        store.apply(
            watcher::Event::Delete(volume("a", "s1")),
            &mut relist,
            &mut observe,
        );
        assert!(store.get("t", "a").is_none());
        assert_eq!(store.staged_len(), 1);
        // "b" was deleted while the watch was down: the re-list leaves it out.
        store.apply(watcher::Event::Init, &mut relist, &mut observe);
        store.apply(
            watcher::Event::InitApply(volume("c", "s1")),
            &mut relist,
            &mut observe,
        );
        store.apply(watcher::Event::InitDone, &mut relist, &mut observe);
        assert_eq!(seen, ["StorageVolume/t/a", "relisted"]);
        assert_eq!(store.len(), 1);
        assert_eq!(store.staged_len(), 0);
        assert!(store.staging().is_empty());
    }
}
