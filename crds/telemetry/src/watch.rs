//! Watching objects the same way in the operator and the BMC collector: a reflector store kept
//! filled, retried with backoff, managed fields trimmed.

use futures::StreamExt as _;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

/// What a watched kind must be: a cluster-wide listable resource that decodes, clones and
/// crosses tasks.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A store of `K` kept filled by a watch (retried with backoff; errors are logged with `what`).
/// Callers wait for `Store::wait_until_ready` before trusting it.
pub fn mirror<K>(api: Api<K>, config: watcher::Config, what: &'static str) -> Store<K>
where
    K: Watched,
{
    mirror_trimmed(api, config, what, |_| {})
}

/// Drops what no reader of a mirror needs: managed fields are often half of an object's size
/// (every writer's field set), and large fleets are held in memory.
fn trim_meta<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// [`mirror`] that trims each object before storing it (drop status or managed fields the
/// caller never reads, so large fleets cost less memory).
pub fn mirror_trimmed<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    mut trim: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: Watched,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |obj| {
            trim_meta(obj);
            trim(obj);
        })
        .reflect(writer)
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, watch = what, "watch error; retrying");
            }
        }
    });
    store
}

/// One watch whose objects several controllers read: one copy of each object in memory and one
/// decode per event, however many controllers react to it (a controller's own `Controller::new`
/// watch would keep a second full copy of a large fleet).
///
/// Objects that do not decode as `K` (written by an older or newer version, or by hand through
/// a looser schema) are left out with a warning naming them, and one that turns unreadable is
/// removed: a single bad object never stalls the watch and with it every controller reading it.
///
/// Returns the store and `N` subscriptions; every subscription must be polled (a controller's
/// trigger), or the watch waits for it once its buffer is full.
pub fn shared_mirror<K, const N: usize>(
    client: kube::Client,
    config: watcher::Config,
    what: &'static str,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> Option<(Store<K>, [ReflectHandle<K>; N])>
where
    K: Watched,
{
    shared_mirror_observed(client, config, what, trim, |_| {})
}

/// [`shared_mirror`] that also hands each event to `observe` once the store shows it (a
/// deletion is gone from the store, a re-list's `InitDone` has replaced it): for readers that
/// keep books of their own from the same objects.
pub fn shared_mirror_observed<K, const N: usize>(
    client: kube::Client,
    config: watcher::Config,
    what: &'static str,
    mut trim: impl FnMut(&mut K) + Send + 'static,
    mut observe: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Option<(Store<K>, [ReflectHandle<K>; N])>
where
    K: Watched,
{
    let (store, writer) = reflector::store_shared(SHARED_BUFFER);
    let handles: Vec<ReflectHandle<K>> =
        (0..N).map(|_| writer.subscribe()).collect::<Option<_>>()?;
    let handles: [ReflectHandle<K>; N] = handles.try_into().ok()?;
    let api = Api::<DeserializeGuard<K>>::all(client);
    let reader = store.clone();
    let stream = watcher(api, config)
        .default_backoff()
        .filter_map(move |event| {
            let readable = event
                .map(|e| readable(e, |k| reader.get(k).map(|o| (*o).clone()), what))
                .transpose();
            std::future::ready(readable)
        })
        .modify(move |obj| {
            trim_meta(obj);
            trim(obj);
        })
        .reflect_shared(writer)
        .inspect(move |event| {
            if let Ok(e) = event {
                observe(e);
            }
        });
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, watch = what, "watch error; retrying");
            }
        }
    });
    Some((store, handles))
}

/// Events queued per subscription before the watch waits for the slowest reader.
const SHARED_BUFFER: usize = 1024;

/// The watch event for readers of `K`: unreadable objects left out (and removed from the store
/// when an earlier version of them was readable: `held` finds it).
pub fn readable<K>(
    event: watcher::Event<DeserializeGuard<K>>,
    held: impl Fn(&ObjectRef<K>) -> Option<K>,
    what: &'static str,
) -> Option<watcher::Event<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let unreadable = |invalid: InvalidObject| {
        let name = invalid.metadata.name.clone().unwrap_or_default();
        let namespace = invalid.metadata.namespace.clone();
        tracing::warn!(kind = what, name = %name, namespace = ?namespace, error = %invalid.error,
            "object does not decode; left out until it is fixed");
        let mut key = ObjectRef::<K>::new(&name);
        if let Some(ns) = &namespace {
            key = key.within(ns);
        }
        held(&key)
    };
    match event {
        watcher::Event::Init => Some(watcher::Event::Init),
        watcher::Event::InitDone => Some(watcher::Event::InitDone),
        watcher::Event::InitApply(DeserializeGuard(Ok(k))) => Some(watcher::Event::InitApply(k)),
        // A re-list rebuilds the store from what it is given: leaving it out removes it.
        watcher::Event::InitApply(DeserializeGuard(Err(invalid))) => {
            unreadable(invalid);
            None
        }
        watcher::Event::Apply(DeserializeGuard(Ok(k))) => Some(watcher::Event::Apply(k)),
        watcher::Event::Delete(DeserializeGuard(Ok(k))) => Some(watcher::Event::Delete(k)),
        // Turned unreadable, or deleted while unreadable: its last readable copy goes.
        watcher::Event::Apply(DeserializeGuard(Err(invalid)))
        | watcher::Event::Delete(DeserializeGuard(Err(invalid))) => {
            unreadable(invalid).map(watcher::Event::Delete)
        }
    }
}
