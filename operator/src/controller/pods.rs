//! The Pods the instance controller made, as far as it decides on them (node, running,
//! terminating, which template), kept from the watch that also wakes their owners. Reading a
//! replica's Pod used to be a GET per replica per reconcile: 2.2 GETs per instance placed, each
//! a quorum read of etcd, on the API server the placement throughput is bound by. A compact
//! entry instead of the whole Pod keeps 20,000 instances' Pods at a few MB.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use tokio::sync::watch;

use super::stable_hash;

/// What the instance controller reads of one of its Pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodBrief {
    /// The node it is bound to (shared by every Pod the index holds on that node).
    pub node: Option<Arc<str>>,
    /// `status.phase` is Running.
    pub running: bool,
    /// Deletion has begun.
    pub terminating: bool,
    /// [`template`] of its `main` container (None: it has none).
    pub template: Option<u64>,
}

impl PodBrief {
    pub fn of(pod: &Pod) -> Self {
        Self::interned(pod, &mut HashSet::new())
    }

    /// With the node's name taken from (or added to) `nodes`.
    fn interned(pod: &Pod, nodes: &mut HashSet<Arc<str>>) -> Self {
        let main = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|k| k.name == "main"));
        Self {
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .map(|n| {
                    if let Some(shared) = nodes.get(n) {
                        return shared.clone();
                    }
                    let shared: Arc<str> = n.into();
                    nodes.insert(shared.clone());
                    shared
                }),
            running: pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Running"),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            template: main.map(|m| {
                template(
                    m.image.as_deref().unwrap_or_default(),
                    m.command.as_deref().unwrap_or_default(),
                    m.args.as_deref().unwrap_or_default(),
                )
            }),
        }
    }
}

/// A digest of what a Pod is replaced for when it changes (image, command, args).
pub fn template(image: &str, command: &[String], args: &[String]) -> u64 {
    // Lengths first, so no two different lists digest the same bytes.
    let mut bytes = Vec::with_capacity(64);
    for part in std::iter::once(image)
        .chain([""])
        .chain(command.iter().map(String::as_str))
        .chain([""])
        .chain(args.iter().map(String::as_str))
    {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part.as_bytes());
    }
    bytes.extend_from_slice(&(command.len() as u64).to_le_bytes());
    stable_hash(&bytes)
}

/// `namespace/name`: one allocation per Pod (20,000 instances' Pods are held).
type Key = Box<str>;

fn key_of(namespace: &str, name: &str) -> Key {
    format!("{namespace}/{name}").into()
}

#[derive(Default)]
struct State {
    pods: HashMap<Key, PodBrief>,
    /// A re-list in progress: what it has listed so far (replaces `pods` when done).
    relist: Option<HashMap<Key, PodBrief>>,
    /// Node names, held once (a few thousand nodes for tens of thousands of Pods). Only
    /// grows with the nodes Pods were ever bound to; cleared with each re-list.
    nodes: HashSet<Arc<str>>,
}

/// The index; `ready` once the first list is in.
pub struct PodIndex {
    state: Mutex<State>,
    ready: watch::Sender<bool>,
}

impl Default for PodIndex {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            ready: watch::Sender::new(false),
        }
    }
}

impl std::fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIndex")
            .field("pods", &self.lock().pods.len())
            .finish_non_exhaustive()
    }
}

fn key(pod: &Pod) -> Option<Key> {
    Some(key_of(
        pod.metadata.namespace.as_deref()?,
        pod.metadata.name.as_deref()?,
    ))
}

impl PodIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One Pod as last seen (None: none, or deleted).
    pub fn get(&self, namespace: &str, name: &str) -> Option<PodBrief> {
        self.lock().pods.get(&key_of(namespace, name)).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows one watch event.
    pub fn apply(&self, event: &watcher::Event<Pod>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        match event {
            watcher::Event::Init => {
                state.relist = Some(HashMap::new());
                state.nodes.retain(|n| Arc::strong_count(n) > 1);
            }
            watcher::Event::InitApply(p) => {
                if let (Some(k), Some(relist)) = (key(p), state.relist.as_mut()) {
                    relist.insert(k, PodBrief::interned(p, &mut state.nodes));
                }
            }
            watcher::Event::InitDone => {
                if let Some(relist) = state.relist.take() {
                    state.pods = relist;
                }
                drop(guard);
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(p) => {
                if let Some(k) = key(p) {
                    let brief = PodBrief::interned(p, &mut state.nodes);
                    state.pods.insert(k, brief);
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(k) = key(p) {
                    state.pods.remove(&k);
                }
            }
        }
    }

    /// Waits until the first list is in.
    pub async fn wait_until_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// The watch of `pods` that keeps this index, as the objects it touched (to wake their
    /// owners).
    pub fn follow(
        self: std::sync::Arc<Self>,
        pods: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Send + 'static,
    ) -> impl Stream<Item = Result<Pod, watcher::Error>> + Send + 'static {
        pods.flat_map(move |event| {
            let touched = match event {
                Ok(e) => {
                    self.apply(&e);
                    match e {
                        watcher::Event::Apply(p)
                        | watcher::Event::Delete(p)
                        | watcher::Event::InitApply(p) => vec![Ok(p)],
                        watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
                    }
                }
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(touched)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, image: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "t"},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": image}]},
        }))
        .unwrap()
    }

    #[test]
    fn follows_applies_deletes_and_relists() {
        let index = PodIndex::default();
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod("a", Some("n1"), "img:1")));
        // Not visible before the list is complete.
        assert_eq!(index.get("t", "a"), None);
        index.apply(&watcher::Event::InitDone);
        let a = index.get("t", "a").unwrap();
        assert_eq!(a.node.as_deref(), Some("n1"));
        assert_eq!(a.template, Some(template("img:1", &[], &[])));
        assert!(!a.running && !a.terminating);

        index.apply(&watcher::Event::Apply(pod("b", None, "img:2")));
        index.apply(&watcher::Event::Delete(pod("a", Some("n1"), "img:1")));
        assert_eq!(index.get("t", "a"), None);
        assert_eq!(index.get("t", "b").unwrap().node, None);

        // A re-list forgets what it does not list (a delete missed while disconnected).
        index.apply(&watcher::Event::Init);
        index.apply(&watcher::Event::InitApply(pod("c", Some("n2"), "img:1")));
        index.apply(&watcher::Event::InitDone);
        assert_eq!(index.get("t", "b"), None);
        assert!(index.get("t", "c").is_some());
        assert_eq!(index.len(), 1);

        // Pods on one node share its name.
        index.apply(&watcher::Event::Apply(pod("d", Some("n2"), "img:1")));
        let (c, d) = (index.get("t", "c").unwrap(), index.get("t", "d").unwrap());
        assert!(Arc::ptr_eq(
            c.node.as_ref().unwrap(),
            d.node.as_ref().unwrap()
        ));
        assert_eq!(
            index.get("t/c", ""),
            None,
            "namespace and name are not confused"
        );
    }

    #[test]
    fn template_tells_image_command_and_args_apart() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let base = template("img", &s(&["run"]), &s(&["--x"]));
        assert_eq!(base, template("img", &s(&["run"]), &s(&["--x"])));
        assert_ne!(base, template("img2", &s(&["run"]), &s(&["--x"])));
        assert_ne!(base, template("img", &s(&["run", "--x"]), &[]));
        assert_ne!(base, template("img", &[], &s(&["run", "--x"])));
        assert_ne!(base, template("img", &s(&["run"]), &s(&["--y"])));
    }
}
