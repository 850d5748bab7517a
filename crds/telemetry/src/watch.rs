//! Watching objects the same way in the operator and the BMC collector: a reflector store kept
//! filled, retried with backoff, managed fields trimmed.

use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

/// A store of `K` kept filled by a watch (retried with backoff; errors are logged with `what`).
/// Callers wait for `Store::wait_until_ready` before trusting it.
pub fn mirror<K>(api: Api<K>, config: watcher::Config, what: &'static str) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
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
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
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
